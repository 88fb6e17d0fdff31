//! Reading a labelled CSV file (header, numeric features, integer label last) into rows that
//! can be written back out verbatim, possibly with another label.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

/// One labelled row of the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Index of the row in the source file (0 = first row after the header).
    pub index: usize,
    /// The features exactly as written in the file, comma-separated, without the label.
    pub features: String,
    /// The label, `0..classes`.
    pub label: u32,
}

/// A whole labelled CSV file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The header line.
    pub header: String,
    /// The rows in file order.
    pub rows: Vec<Row>,
    /// Number of features per row.
    pub inputs: usize,
    /// Number of classes: the largest label plus one.
    pub classes: u32,
}

impl Dataset {
    /// Reads `path`; a ragged row, a non-numeric feature or a bad label is an error naming its line.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses CSV text (see [`Dataset::read`]).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
        let Some((_, header)) = lines.next() else { bail!("the file is empty") };
        let columns = header.split(',').count();
        if columns < 2 {
            bail!("line 1: the header names {columns} column(s); at least one feature and a label are needed");
        }
        let mut rows = Vec::new();
        let mut classes = 0u32;
        for (number, line) in lines {
            let line = line.trim_end_matches('\r');
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != columns {
                bail!("line {}: {} columns where the header has {columns}", number + 1, cells.len());
            }
            let (label_cell, feature_cells) = cells.split_last().context("a row has cells")?;
            for cell in feature_cells {
                let value: f64 =
                    cell.trim().parse().with_context(|| format!("line {}: `{cell}` is not a number", number + 1))?;
                if !value.is_finite() {
                    bail!("line {}: `{cell}` is not a finite number", number + 1);
                }
            }
            let label: u32 = label_cell.trim().parse().with_context(|| {
                format!("line {}: the label `{label_cell}` is not a non-negative integer", number + 1)
            })?;
            if label > 1_000_000 {
                bail!("line {}: label {label} is implausibly large", number + 1);
            }
            classes = classes.max(label + 1);
            rows.push(Row { index: rows.len(), features: feature_cells.join(","), label });
        }
        if rows.is_empty() {
            bail!("the file has a header but no rows");
        }
        Ok(Self { header: header.trim_end_matches('\r').to_string(), rows, inputs: columns - 1, classes })
    }
}

/// CSV text of `rows` under `header`.
pub fn to_csv(header: &str, rows: &[Row]) -> String {
    let mut out = String::with_capacity(rows.len() * 32 + header.len() + 1);
    out.push_str(header);
    out.push('\n');
    for row in rows {
        let _ = writeln!(out, "{},{}", row.features, row.label);
    }
    out
}

/// Count of each label `0..classes` in `rows`.
pub fn label_counts(rows: &[Row], classes: u32) -> Vec<usize> {
    let mut counts = vec![0; classes as usize];
    for row in rows {
        if let Some(count) = counts.get_mut(row.label as usize) {
            *count += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_bad_rows_by_line() {
        let data = Dataset::parse("a,b,label\n1,2,0\n3,4.5,2\n").unwrap();
        assert_eq!((data.inputs, data.classes, data.rows.len()), (2, 3, 2));
        assert_eq!(to_csv(&data.header, &data.rows), "a,b,label\n1,2,0\n3,4.5,2\n");
        for (bad, line) in
            [("a,b,l\n1,2\n", "line 2"), ("a,b,l\n1,x,0\n", "line 2"), ("a,b,l\n1,2,0\n1,2,-1\n", "line 3")]
        {
            let error = format!("{:#}", Dataset::parse(bad).unwrap_err());
            assert!(error.contains(line), "{bad:?}: {error}");
        }
        assert!(Dataset::parse("").is_err());
        assert!(Dataset::parse("a,label\n").is_err());
    }
}
