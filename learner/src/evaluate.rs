//! Error of a model on held-out rows, standardised once with the rows' own statistics.
//!
//! The rows are standardised with the whole set's own per-feature mean and population
//! standard deviation (`z = (x − mean) / std`, 0 for a constant feature, clipped to
//! ±[`Z_CLIP`]). A coordinator never sees its clients' statistics, so this figure is
//! comparable across rounds and across learners (federated, alone, centralised) but not
//! identical to a client's online-standardised score.

use burn::tensor::Device;

use crate::data::{DataError, Dataset};
use crate::hbp::{HbpConfig, HbpModel, ModelError};
use crate::prequential::read_labels;
use crate::standardize::Z_CLIP;
use flotilla_protocol::params::ParameterVector;

/// Rows per forward pass.
const EVAL_BATCH: usize = 1024;

/// Standardised held-out rows and their labels.
#[derive(Debug, Clone)]
pub struct EvalSet {
    features: usize,
    z: Vec<f32>,
    labels: Vec<u32>,
}

impl EvalSet {
    /// The rows of `data`, which must have the feature count of `spec`, standardised.
    pub fn new(data: &Dataset, spec: &HbpConfig) -> Result<Self, DataError> {
        if data.features != spec.inputs {
            return Err(DataError::FeatureCount { expected: spec.inputs, found: data.features });
        }
        Ok(Self::standardized(data))
    }

    fn standardized(data: &Dataset) -> Self {
        let (d, n) = (data.features, data.len());
        let mut mean = vec![0.0f64; d];
        let mut square = vec![0.0f64; d];
        for row in 0..n {
            for (j, x) in data.row(row).iter().enumerate() {
                mean[j] += f64::from(*x);
                square[j] += f64::from(*x) * f64::from(*x);
            }
        }
        let std: Vec<f64> = (0..d)
            .map(|j| {
                mean[j] /= n as f64;
                (square[j] / n as f64 - mean[j] * mean[j]).max(0.0).sqrt()
            })
            .collect();
        let z = (0..n)
            .flat_map(|row| data.row(row).iter().enumerate().map(|(j, x)| (j, *x)).collect::<Vec<_>>())
            .map(
                |(j, x)| {
                    if std[j] > 0.0 { ((f64::from(x) - mean[j]) / std[j]).clamp(-Z_CLIP, Z_CLIP) as f32 } else { 0.0 }
                },
            )
            .collect();
        Self { features: d, z, labels: data.labels.clone() }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Percentage of rows the model of `spec` with `params` misclassifies.
    pub fn error_pct(&self, spec: &HbpConfig, params: &ParameterVector, device: &Device) -> Result<f64, ModelError> {
        let model = HbpModel::from_parameters(spec.clone(), params, device)?;
        self.model_error_pct(&model)
    }

    /// Percentage of rows `model` misclassifies.
    pub fn model_error_pct(&self, model: &HbpModel) -> Result<f64, ModelError> {
        let mut predictions = Vec::with_capacity(self.len().div_ceil(EVAL_BATCH));
        for start in (0..self.len()).step_by(EVAL_BATCH) {
            let end = (start + EVAL_BATCH).min(self.len());
            let batch = model.batch(&self.z[start * self.features..end * self.features], &self.labels[start..end]);
            let predicted = model.predict_proba(batch.features).argmax(1);
            predictions.push(predicted.reshape([end - start]));
        }
        let predicted = read_labels(predictions)?;
        let wrong = predicted.iter().zip(&self.labels).filter(|(p, y)| p != y).count();
        Ok(100.0 * wrong as f64 / self.len().max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardises_with_the_files_own_statistics() {
        let data = Dataset::from_csv("a,b,label\n1,5,0\n3,5,1\n".as_bytes(), Some(2)).unwrap();
        let set = EvalSet::standardized(&data);
        assert_eq!(set.z, vec![-1.0, 0.0, 1.0, 0.0]);
    }
}
