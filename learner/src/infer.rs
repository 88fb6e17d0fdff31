//! The served model: a global HBP network with the feature statistics it is served with, and
//! its forward pass in plain Rust over the flat parameter vector (no tensors to set up per
//! request): one sample per request, or a batch in one pass, packed for the CPU's vector units
//! ([`crate::packed`]).
//!
//! The pass is the learner's ([`crate::hbp`]): raw features standardised with the fleet's
//! mean and standard deviation (clipped to ±[`Z_CLIP`], zero for a feature without spread),
//! the ReLU trunk, a softmax per head and the α-weighted mix of the heads' probabilities. A
//! test checks it against [`HbpModel::predict_proba`](crate::hbp::HbpModel::predict_proba).

use flotilla_protocol::model::FeatureMoments;
pub use flotilla_protocol::model::Prediction;
use flotilla_protocol::model::hbp::{HbpConfig, layout};
use flotilla_protocol::params::{ParameterError, ParameterVector};

pub use crate::network::argmax;
use crate::network::{InputStage, Network, NetworkError};
use crate::packed::PackedNetwork;
use crate::standardize::Z_CLIP;

/// Why a predictor could not be built or a row not predicted.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The parameters do not fit the network.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// The feature statistics are for another number of features.
    #[error("feature statistics for {found} features, the model has {expected}")]
    Statistics {
        /// The model's inputs.
        expected: usize,
        /// The statistics' features.
        found: usize,
    },
    /// A row has the wrong number of features.
    #[error("row {row}: {found} features, the model takes {expected}")]
    RowLength {
        /// Index of the row in the request.
        row: usize,
        /// The model's inputs.
        expected: usize,
        /// Features given.
        found: usize,
    },
    /// The network is not plain dense layers (cannot happen for an HBP network).
    #[error("the network is not plain dense layers")]
    NotDense,
    /// A feature value is NaN or infinite.
    #[error("row {row}, feature {feature}: {value} is not a finite number")]
    NotFinite {
        /// Index of the row in the request.
        row: usize,
        /// Index of the feature.
        feature: usize,
        /// The value.
        value: f32,
    },
}

/// How raw features become the network's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardization {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature 1 / standard deviation; 0 for a feature without spread (its input is 0).
    pub inv_std: Vec<f32>,
}

impl Standardization {
    /// From pooled feature statistics (`None` over zero rows).
    pub fn from_moments(moments: &FeatureMoments) -> Option<Self> {
        let (mean, std) = moments.mean_std()?;
        Some(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv_std: std.iter().map(|&s| if s > 0.0 { (1.0 / s) as f32 } else { 0.0 }).collect(),
        })
    }

    /// The network's input stage that standardises as the learner does (clipped to ±[`Z_CLIP`]).
    pub fn input_stage(&self) -> InputStage {
        InputStage::Standardize { mean: self.mean.clone(), inv_std: self.inv_std.clone(), clip: Z_CLIP as f32 }
    }
}

/// Checks that every row has `inputs` features, all finite.
pub fn check_rows<R: AsRef<[f32]>>(inputs: usize, rows: &[R]) -> Result<(), InferError> {
    for (row, values) in rows.iter().map(AsRef::as_ref).enumerate() {
        if values.len() != inputs {
            return Err(InferError::RowLength { row, expected: inputs, found: values.len() });
        }
        if let Some(feature) = values.iter().position(|v| !v.is_finite()) {
            return Err(InferError::NotFinite { row, feature, value: values[feature] });
        }
    }
    Ok(())
}

/// A network ready to predict.
#[derive(Debug, Clone)]
pub struct Predictor {
    config: HbpConfig,
    values: Vec<f32>,
    standardization: Option<Standardization>,
    /// The network packed for SIMD: every prediction goes through it.
    packed: PackedNetwork,
}

impl Predictor {
    /// The network of `config` holding `params`, fed through `standardization` (none: the rows
    /// given are already standardised).
    pub fn new(
        config: &HbpConfig,
        params: &ParameterVector,
        standardization: Option<Standardization>,
    ) -> Result<Self, InferError> {
        // The network checks the parameters against the layout and the statistics' length.
        let input = standardization.as_ref().map_or(InputStage::Identity, Standardization::input_stage);
        let network = Network::from_hbp(config, params, input).map_err(|e| match e {
            NetworkError::Parameters(e) => InferError::Parameters(e),
            NetworkError::Statistics { expected, found } => InferError::Statistics { expected, found },
        })?;
        let packed = PackedNetwork::new(&network).ok_or(InferError::NotDense)?;
        Ok(Self { config: config.clone(), values: params.values.clone(), standardization, packed })
    }

    /// The network's shape and hyper-parameters.
    pub fn config(&self) -> &HbpConfig {
        &self.config
    }

    /// How raw rows are standardised, if they are.
    pub fn standardization(&self) -> Option<&Standardization> {
        self.standardization.as_ref()
    }

    /// The flat parameters, in `flotilla_protocol::model::hbp::layout` order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The model as JSON, for other runtimes (NumPy, a browser): the shape and
    /// hyper-parameters, the standardisation (`mean`, `inv_std`, the ±`z_clip` clip), and every
    /// parameter segment by name with its shape and row-major values.
    pub fn to_json(&self) -> serde_json::Value {
        let layout = layout(&self.config);
        let mut offset = 0;
        let segments: Vec<serde_json::Value> = layout
            .segments()
            .iter()
            .map(|segment| {
                let values = &self.values[offset..offset + segment.len()];
                offset += segment.len();
                serde_json::json!({ "name": segment.name, "shape": segment.shape, "values": values })
            })
            .collect();
        serde_json::json!({
            "format": "flotilla-hbp-json/1",
            "config": self.config,
            "standardization": self.standardization.as_ref().map(|s| serde_json::json!({
                "mean": s.mean, "inv_std": s.inv_std, "z_clip": Z_CLIP,
            })),
            "segments": segments,
        })
    }

    /// Checks that every row has the model's number of features, all finite.
    pub fn check_rows<R: AsRef<[f32]>>(&self, rows: &[R]) -> Result<(), InferError> {
        check_rows(self.config.inputs, rows)
    }

    /// Predicts every row (checked by [`Predictor::check_rows`]) in one pass.
    pub fn predict(&self, rows: &[&[f32]]) -> Result<Vec<Prediction>, InferError> {
        self.check_rows(rows)?;
        let flat: Vec<f32> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        Ok(predictions(&self.packed.forward(&flat), self.config.classes))
    }
}

/// One prediction per row of `mixed` (`c` probabilities a row).
fn predictions(mixed: &[f32], c: usize) -> Vec<Prediction> {
    mixed.chunks_exact(c).map(|p| Prediction { class: argmax(p), probabilities: p.to_vec() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|j| {
                        state = flotilla_protocol::workload::splitmix64(state);
                        // Features on very different scales, as raw data has them.
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi(j as i32 % 4)
                    })
                    .collect()
            })
            .collect()
    }

    /// The packed pass predicts what the burn learner and the plain-loop reference predict on
    /// the same rows, with and without the input head, a width that is not a whole number of
    /// vectors, a batch large enough to be spread over threads, and any batch size (tile
    /// tails): one row alone gets what it gets inside a batch.
    #[test]
    fn matches_the_burn_model_and_the_reference() {
        use crate::hbp::HbpModel;
        use burn::tensor::{Device, Tensor, TensorData};
        for input_head in [true, false] {
            let config = HbpConfig { hidden_layers: 3, width: 40, input_head, seed: 7, ..HbpConfig::new(5, 4) };
            let device = Device::flex();
            let mut model = HbpModel::new(config.clone(), &device).unwrap();
            // A few learning steps so that α and the weights are not at their initial values.
            let train = rows(200, 5, 1);
            let mut moments = FeatureMoments::new(5);
            train.iter().for_each(|r| moments.add_row(r));
            let standardization = Standardization::from_moments(&moments).unwrap();
            let stage = standardization.input_stage();
            let standardize = |row: &[f32]| stage.apply(row, row.len());
            for (i, row) in train.iter().enumerate() {
                let batch = model.batch(&standardize(row), &[(i % 4) as u32]);
                model.learn(batch);
            }
            let params = model.to_parameters().unwrap();
            let predictor = Predictor::new(&config, &params, Some(standardization.clone())).unwrap();
            let test = rows(crate::packed::PARALLEL_ROWS + 45, 5, 2);
            let refs: Vec<&[f32]> = test.iter().map(Vec::as_slice).collect();
            let batched = predictor.predict(&refs).unwrap();
            let flat: Vec<f32> = test.iter().flatten().copied().collect();
            let reference = Network::from_hbp(&config, &params, standardization.input_stage()).unwrap().forward(&flat);
            let z: Vec<f32> = test.iter().flat_map(|row| standardize(row)).collect();
            let expected = model.predict_proba(Tensor::from_data(TensorData::new(z, [test.len(), 5]), &device));
            let expected: Vec<f32> = expected.try_into_vec_as::<f32>().unwrap();
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
            for (row, ((prediction, plain), probabilities)) in
                batched.iter().zip(reference.chunks(4)).zip(expected.chunks(4)).enumerate()
            {
                assert!(
                    close(&prediction.probabilities, probabilities),
                    "row {row}: {prediction:?} vs {probabilities:?}"
                );
                assert!(close(&prediction.probabilities, plain), "row {row}: {prediction:?} vs {plain:?}");
                let best =
                    probabilities.iter().enumerate().fold((0, f32::MIN), |m, (k, &p)| if p > m.1 { (k, p) } else { m });
                // Ties within float noise may break either way; anything else must agree.
                if (prediction.probabilities[prediction.class] - best.1).abs() > 1e-6 {
                    assert_eq!(prediction.class, best.0, "row {row}");
                }
            }
            for size in [1, 2, 3, 4, 5, 63, 64, 65, 130] {
                let part = predictor.predict(&refs[..size]).unwrap();
                for (row, (small, large)) in part.iter().zip(&batched).enumerate() {
                    assert!(close(&small.probabilities, &large.probabilities), "size {size} row {row}");
                }
            }
        }
    }

    #[test]
    fn bad_rows_and_shapes_are_errors() {
        let config = HbpConfig { hidden_layers: 1, width: 4, ..HbpConfig::new(2, 2) };
        let params =
            crate::hbp::HbpModel::new(config.clone(), &burn::tensor::Device::flex()).unwrap().to_parameters().unwrap();
        let predictor = Predictor::new(&config, &params, None).unwrap();
        assert!(matches!(predictor.predict(&[&[1.0]]), Err(InferError::RowLength { row: 0, expected: 2, found: 1 })));
        let nan = [0.0, f32::NAN];
        assert!(matches!(
            predictor.predict(&[&[0.0, 0.0], &nan]),
            Err(InferError::NotFinite { row: 1, feature: 1, .. })
        ));
        let wrong = Standardization { mean: vec![0.0; 3], inv_std: vec![1.0; 3] };
        assert!(matches!(Predictor::new(&config, &params, Some(wrong)), Err(InferError::Statistics { .. })));
        let other = HbpConfig { width: 5, ..config.clone() };
        assert!(matches!(Predictor::new(&other, &params, None), Err(InferError::Parameters(_))));
        assert!(predictor.predict(&[]).unwrap().is_empty());
    }
}
