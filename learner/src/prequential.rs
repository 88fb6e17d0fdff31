//! Prequential (test-then-train) evaluation of an HBP model over a labelled stream.

use std::collections::BTreeMap;

use burn::tensor::{Int, Tensor};

use crate::data::Dataset;
use crate::hbp::{FusedHbp, HbpModel, ModelError};
use crate::standardize::OnlineStandardizer;

/// Counts of a prequential pass: each prediction made before its label was learnt from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrequentialScore {
    samples: u64,
    errors: u64,
    mark_every: u64,
    marks: BTreeMap<u64, f64>,
}

impl PrequentialScore {
    /// A score that also records the cumulative error every `mark_every` samples (0: never).
    pub fn new(mark_every: u64) -> Self {
        Self { mark_every, ..Self::default() }
    }

    /// Records one prediction against its label.
    pub fn record(&mut self, predicted: u32, actual: u32) {
        self.samples += 1;
        self.errors += u64::from(predicted != actual);
        if self.mark_every > 0 && self.samples.is_multiple_of(self.mark_every) {
            self.marks.insert(self.samples, self.error_pct());
        }
    }

    /// Samples scored.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Wrong predictions.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Cumulative error in percent (0 before any sample).
    pub fn error_pct(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { 100.0 * self.errors as f64 / self.samples as f64 }
    }

    /// Cumulative error in percent after every `mark_every` samples.
    pub fn marks(&self) -> &BTreeMap<u64, f64> {
        &self.marks
    }
}

/// Predictions are read back from the device once per this many micro-batches.
const READBACK_EVERY: usize = 64;

/// One prequential pass over `data` in file order, `batch` rows at a time.
///
/// Each row is standardised online (see [`OnlineStandardizer`]), predicted, and then learnt
/// from. `progress` is called with the number of rows done after every readback.
pub fn run_pass(
    model: &mut HbpModel,
    data: &Dataset,
    batch: usize,
    mark_every: u64,
    mut progress: impl FnMut(u64),
) -> Result<PrequentialScore, ModelError> {
    let batch = batch.max(1);
    let mut standardizer = OnlineStandardizer::new(data.features);
    let mut score = PrequentialScore::new(mark_every);
    let mut z = vec![0.0f32; batch * data.features];
    let mut pending: Vec<Tensor<1, Int>> = Vec::with_capacity(READBACK_EVERY);
    let mut pending_from = 0;
    for start in (0..data.len()).step_by(batch) {
        let end = (start + batch).min(data.len());
        let rows = end - start;
        for (i, out) in z.chunks_mut(data.features).take(rows).enumerate() {
            standardizer.standardize(data.row(start + i), out);
        }
        let labels = &data.labels[start..end];
        let prepared = model.batch(&z[..rows * data.features], labels);
        pending.push(model.learn(prepared));
        if pending.len() == READBACK_EVERY || end == data.len() {
            let predicted = read_labels(std::mem::take(&mut pending))?;
            for (p, y) in predicted.iter().zip(&data.labels[pending_from..end]) {
                score.record(*p, *y);
            }
            pending_from = end;
            progress(end as u64);
        }
    }
    Ok(score)
}

/// [`run_pass`] at micro-batch 1 with the fused CPU learner ([`FusedHbp`]).
pub fn run_fused(
    model: &mut FusedHbp,
    data: &Dataset,
    mark_every: u64,
    mut progress: impl FnMut(u64),
) -> PrequentialScore {
    let mut standardizer = OnlineStandardizer::new(data.features);
    let mut score = PrequentialScore::new(mark_every);
    let mut z = vec![0.0f32; data.features];
    let mut mixture = vec![0.0f32; model.config().classes];
    for row in 0..data.len() {
        standardizer.standardize(data.row(row), &mut z);
        let label = data.labels[row];
        let predicted = model.learn(&z, label as usize, &mut mixture);
        score.record(predicted as u32, label);
        if (row + 1) % (READBACK_EVERY * 16) == 0 || row + 1 == data.len() {
            progress(row as u64 + 1);
        }
    }
    score
}

/// Reads a list of predicted-label tensors back in one transfer.
pub fn read_labels(tensors: Vec<Tensor<1, Int>>) -> Result<Vec<u32>, ModelError> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let all = Tensor::cat(tensors, 0);
    let values = all.try_into_vec_as::<i64>().map_err(|e| ModelError::Readback(format!("{e:?}")))?;
    Ok(values.into_iter().map(|v| v.clamp(0, i64::from(u32::MAX)) as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_counts_and_marks() {
        let mut score = PrequentialScore::new(2);
        for (p, y) in [(0, 0), (1, 0), (1, 1), (0, 1)] {
            score.record(p, y);
        }
        assert_eq!((score.samples(), score.errors()), (4, 2));
        assert_eq!(score.error_pct(), 50.0);
        assert_eq!(score.marks().get(&2), Some(&50.0));
        assert_eq!(score.marks().get(&4), Some(&50.0));
    }
}
