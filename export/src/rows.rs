//! Rows to distil on or evaluate with: a CSV with a header whose rows hold the model's
//! features, optionally followed by a label column (ignored for distillation).

use std::io::Read;

/// Why a file of rows was refused.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    /// A row has neither the model's number of features nor one more (a label).
    #[error("line {line}: {found} cells; the model takes {inputs} features (optionally followed by a label)")]
    Width {
        /// 1-based line.
        line: u64,
        /// Cells found.
        found: usize,
        /// The model's features.
        inputs: usize,
    },
    /// A feature is not a finite number.
    #[error("line {line}, column {column}: {value:?} is not a finite number")]
    NotNumeric {
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: usize,
        /// The cell.
        value: String,
    },
    /// The CSV could not be read.
    #[error("line {line}: {message}")]
    Csv {
        /// 1-based line (0 if unknown).
        line: u64,
        /// What the reader said.
        message: String,
    },
    /// No rows.
    #[error("the file has no data rows")]
    Empty,
}

/// The features of every row (`n × inputs`, row-major): a header, then `inputs` numbers a
/// row, or `inputs + 1` cells whose last (a label) is dropped.
pub fn read_features<R: Read>(source: R, inputs: usize) -> Result<Vec<f32>, RowsError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(source);
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record
            .map_err(|e| RowsError::Csv { line: e.position().map_or(0, |p| p.line()), message: e.to_string() })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != inputs && record.len() != inputs + 1 {
            return Err(RowsError::Width { line, found: record.len(), inputs });
        }
        for (column, cell) in record.iter().take(inputs).enumerate() {
            match cell.trim().parse::<f32>() {
                Ok(v) if v.is_finite() => out.push(v),
                _ => return Err(RowsError::NotNumeric { line, column: column + 1, value: cell.to_string() }),
            }
        }
    }
    if out.is_empty() {
        return Err(RowsError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_dropped_and_bad_rows_named() {
        let rows = read_features("a,b,label\n1,2,0\n3,4\n".as_bytes(), 2).unwrap();
        assert_eq!(rows, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(read_features("a,b\n1,2,3,4\n".as_bytes(), 2), Err(RowsError::Width { line: 2, .. })));
        assert!(matches!(
            read_features("a,b\n1,x\n".as_bytes(), 2),
            Err(RowsError::NotNumeric { line: 2, column: 2, .. })
        ));
        assert!(matches!(read_features("a,b\n".as_bytes(), 2), Err(RowsError::Empty)));
    }
}
