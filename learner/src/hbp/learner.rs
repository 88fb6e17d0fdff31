//! Prequential learning: predict a micro-batch, then learn from its labels.

use burn::tensor::{Int, Tensor, TensorData};

use super::model::HbpModel;

/// A micro-batch on the model's device: standardised features `[b, d]` and one-hot labels `[b, C]`.
pub struct Batch {
    /// Features, `[b, d]`.
    pub features: Tensor<2>,
    /// One-hot labels, `[b, C]`.
    pub targets: Tensor<2>,
}

impl HbpModel {
    /// Uploads `b` rows of `d` features (row-major) and their labels as a [`Batch`].
    ///
    /// Labels must be below the model's class count (the data readers guarantee it).
    pub fn batch(&self, features: &[f32], labels: &[u32]) -> Batch {
        let (d, c, b) = (self.config.inputs, self.config.classes, labels.len());
        debug_assert_eq!(features.len(), b * d);
        let mut one_hot = vec![0.0f32; b * c];
        for (row, label) in labels.iter().enumerate() {
            if let Some(cell) = one_hot.get_mut(row * c + *label as usize) {
                *cell = 1.0;
            }
        }
        Batch {
            features: Tensor::from_data(TensorData::new(features.to_vec(), [b, d]), &self.device),
            targets: Tensor::from_data(TensorData::new(one_hot, [b, c]), &self.device),
        }
    }

    /// Predicts the batch with the current weights, then takes one HBP step on it.
    ///
    /// Returns the predicted class of every row, made *before* the update (prequential).
    /// The result stays on the device; read it back in bulk to avoid a sync per step.
    pub fn learn(&mut self, batch: Batch) -> Tensor<1, Int> {
        let predicted = self.learn_proba(batch, None).argmax(1);
        let b = predicted.dims()[0];
        predicted.reshape([b])
    }

    /// Predicts the batch, then takes one HBP step on it, as [`Self::learn`]; returns the
    /// mixture's class probabilities `[b, C]` made *before* the update.
    ///
    /// With `offset` (`[1, C]`), the step is taken on calibrated logits `z + offset` (FedLC
    /// logit calibration): loss, gradient and hedge losses; the prediction is on the raw `z`.
    pub fn learn_proba(&mut self, batch: Batch, offset: Option<Tensor<2>>) -> Tensor<2> {
        let mut forward = self.forward(batch.features);
        let probabilities = self.mixture(&forward);
        if let Some(offset) = offset {
            Self::calibrate(&mut forward, offset);
        }
        let losses = self.head_losses(&forward, &batch.targets);
        let gradients = self.gradients(&forward, &batch.targets);
        self.apply(gradients, self.config.learning_rate);
        self.hedge(losses);
        probabilities
    }

    /// Class probabilities `[b, C]` of the hedged mixture, without learning.
    pub fn predict_proba(&self, features: Tensor<2>) -> Tensor<2> {
        let forward = self.forward(features);
        self.mixture(&forward)
    }
}
