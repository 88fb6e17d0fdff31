//! Loading the coordinator's held-out rows; the evaluation itself is [`flotilla::evaluate`].

use std::path::Path;

use anyhow::Context;
use flotilla::data::Dataset;
use flotilla::hbp::HbpConfig;

pub use flotilla::evaluate::EvalSet;

/// Reads a labelled CSV whose shape must match `spec`.
pub fn load(path: &Path, spec: &HbpConfig) -> anyhow::Result<EvalSet> {
    let file = std::fs::File::open(path).with_context(|| format!("opening eval data {}", path.display()))?;
    let data = Dataset::from_csv(std::io::BufReader::new(file), Some(spec.classes))
        .with_context(|| format!("reading eval data {}", path.display()))?;
    EvalSet::new(&data, spec).with_context(|| format!("eval data {}", path.display()))
}
