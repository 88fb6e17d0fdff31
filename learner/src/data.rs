//! Labelled classification streams in CSV: a header row, numeric features, and an integer
//! label `0..C` in the last column.
//!
//! [`CsvStream`] reads rows one at a time (a client's live stream); [`Dataset::from_csv`]
//! reads a whole file (a prequential pass, a test set). Every malformed row is reported
//! with its 1-based line number; nothing here panics on bad input.

use std::io::Read;

/// Why a CSV stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file holds no header, or a header with fewer than two columns.
    #[error("line 1: expected a header with at least one feature column and a label column")]
    MissingHeader,
    /// The file has a header but no data row.
    #[error("the stream has a header but no data rows")]
    Empty,
    /// A row has a different number of cells than the header.
    #[error("line {line}: expected {expected} cells (as in the header), found {found}")]
    Ragged {
        /// 1-based line number.
        line: u64,
        /// Cells in the header.
        expected: usize,
        /// Cells in this row.
        found: usize,
    },
    /// A feature cell is not a finite number.
    #[error("line {line}, column {column}: {value:?} is not a finite number")]
    NotNumeric {
        /// 1-based line number.
        line: u64,
        /// 1-based column number.
        column: usize,
        /// The cell's text.
        value: String,
    },
    /// The label cell is not a non-negative integer.
    #[error("line {line}: label {value:?} is not a non-negative integer")]
    BadLabel {
        /// 1-based line number.
        line: u64,
        /// The cell's text.
        value: String,
    },
    /// The label is not below the number of classes.
    #[error("line {line}: label {label} is out of range for {classes} classes (labels must be 0..{classes})")]
    LabelOutOfRange {
        /// 1-based line number.
        line: u64,
        /// The label read.
        label: u32,
        /// Number of classes expected.
        classes: usize,
    },
    /// The stream's features do not match what the model expects.
    #[error("the stream has {found} feature columns, the model expects {expected}")]
    FeatureCount {
        /// Features the model expects.
        expected: usize,
        /// Features in the stream's header.
        found: usize,
    },
    /// The underlying reader or CSV syntax failed.
    #[error("line {line}: {message}")]
    Csv {
        /// 1-based line number, 0 if unknown.
        line: u64,
        /// What the CSV reader said.
        message: String,
    },
}

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Feature values, in header order.
    pub features: Vec<f32>,
    /// Class label.
    pub label: u32,
    /// 1-based line it came from.
    pub line: u64,
}

/// A row-at-a-time reader of a labelled CSV stream.
pub struct CsvStream<R: Read> {
    reader: csv::Reader<R>,
    features: usize,
    classes: Option<usize>,
    record: csv::StringRecord,
}

impl<R: Read> CsvStream<R> {
    /// Reads the header from `source`; labels must be below `classes` when it is given.
    pub fn new(source: R, classes: Option<usize>) -> Result<Self, DataError> {
        let mut reader =
            csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(source);
        let header = reader.headers().map_err(csv_error)?;
        if header.len() < 2 {
            return Err(DataError::MissingHeader);
        }
        let features = header.len() - 1;
        Ok(Self { reader, features, classes, record: csv::StringRecord::new() })
    }

    /// Number of feature columns.
    pub fn features(&self) -> usize {
        self.features
    }

    /// The next sample, `Ok(None)` at the end of what the source holds now.
    pub fn next_sample(&mut self) -> Result<Option<Sample>, DataError> {
        loop {
            if !self.reader.read_record(&mut self.record).map_err(csv_error)? {
                return Ok(None);
            }
            // Blank lines are skipped by the csv reader; a lone empty cell is a blank line too.
            if self.record.len() == 1 && self.record[0].is_empty() {
                continue;
            }
            return self.parse().map(Some);
        }
    }

    fn parse(&self) -> Result<Sample, DataError> {
        let line = self.record.position().map_or(0, csv::Position::line);
        let expected = self.features + 1;
        if self.record.len() != expected {
            return Err(DataError::Ragged { line, expected, found: self.record.len() });
        }
        let mut features = Vec::with_capacity(self.features);
        for (column, cell) in self.record.iter().take(self.features).enumerate() {
            match cell.parse::<f32>() {
                Ok(value) if value.is_finite() => features.push(value),
                _ => return Err(DataError::NotNumeric { line, column: column + 1, value: cell.to_string() }),
            }
        }
        let cell = &self.record[self.features];
        let label = parse_label(cell).ok_or_else(|| DataError::BadLabel { line, value: cell.to_string() })?;
        if let Some(classes) = self.classes
            && label as usize >= classes
        {
            return Err(DataError::LabelOutOfRange { line, label, classes });
        }
        Ok(Sample { features, label, line })
    }
}

/// Accepts `3` and `3.0` (some exporters write labels as floats), nothing fractional or negative.
fn parse_label(cell: &str) -> Option<u32> {
    if let Ok(label) = cell.parse::<u32>() {
        return Some(label);
    }
    let value = cell.parse::<f64>().ok()?;
    (value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value)).then_some(value as u32)
}

fn csv_error(error: csv::Error) -> DataError {
    let line = error.position().map_or(0, csv::Position::line);
    DataError::Csv { line, message: error.to_string() }
}

/// A whole labelled stream in memory, in file order.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Number of features per row.
    pub features: usize,
    /// Number of classes: the `classes` given, or the largest label plus one.
    pub classes: usize,
    /// Row-major features, `len = rows × features`.
    pub values: Vec<f32>,
    /// One label per row.
    pub labels: Vec<u32>,
}

impl Dataset {
    /// Reads every row of `source`. With `classes` set, a label `>= classes` is an error.
    pub fn from_csv<R: Read>(source: R, classes: Option<usize>) -> Result<Self, DataError> {
        let mut stream = CsvStream::new(source, classes)?;
        let features = stream.features();
        let (mut values, mut labels) = (Vec::new(), Vec::new());
        while let Some(sample) = stream.next_sample()? {
            values.extend_from_slice(&sample.features);
            labels.push(sample.label);
        }
        let Some(largest) = labels.iter().max() else {
            return Err(DataError::Empty);
        };
        let classes = classes.unwrap_or(*largest as usize + 1).max(2);
        Ok(Self { features, classes, values, labels })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Keeps the first `rows` rows only.
    pub fn truncate(&mut self, rows: usize) {
        self.labels.truncate(rows);
        self.values.truncate(rows * self.features);
    }

    /// Features of row `index`.
    pub fn row(&self, index: usize) -> &[f32] {
        &self.values[index * self.features..(index + 1) * self.features]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Dataset, DataError> {
        Dataset::from_csv(text.as_bytes(), None)
    }

    #[test]
    fn reads_features_and_labels() {
        let data = load("f0,f1,label\n1,2.5,0\n-3,4e2,2\n\n5,6,1.0\n").unwrap();
        assert_eq!((data.features, data.classes, data.len()), (2, 3, 3));
        assert_eq!(data.row(1), &[-3.0, 400.0]);
        assert_eq!(data.labels, vec![0, 2, 1]);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let cases = [
            ("f0,f1,label\n1,2,0\n1,2\n", "line 3: expected 3 cells"),
            ("f0,f1,label\n1,x,0\n", "line 2, column 2: \"x\" is not a finite number"),
            ("f0,f1,label\n1,NaN,0\n", "line 2, column 2"),
            ("f0,f1,label\n1,2,-1\n", "line 2: label \"-1\""),
            ("f0,f1,label\n1,2,0.5\n", "line 2: label \"0.5\""),
            ("f0,f1,label\n", "no data rows"),
            ("", "header"),
            ("label\n1\n", "header"),
        ];
        for (text, expected) in cases {
            let message = load(text).unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }

    #[test]
    fn label_out_of_range_for_given_classes() {
        let err = Dataset::from_csv("a,label\n1,0\n2,3\n".as_bytes(), Some(3)).unwrap_err();
        assert_eq!(err.to_string(), "line 3: label 3 is out of range for 3 classes (labels must be 0..3)");
    }

    #[test]
    fn stream_yields_rows_then_none() {
        let mut stream = CsvStream::new("a,b,label\n1,2,0\n3,4,1\n".as_bytes(), Some(2)).unwrap();
        assert_eq!(stream.next_sample().unwrap().unwrap().line, 2);
        assert_eq!(stream.next_sample().unwrap().unwrap().features, vec![3.0, 4.0]);
        assert!(stream.next_sample().unwrap().is_none());
    }
}
