//! Personalised prediction: a client predicts with a mix of experts — its own purely local
//! model, the shared (global) model, the shared model adapted to the local label prior, and
//! the shared model with a per-class bias learnt online on this device ([`LocalBias`], a
//! one-layer local head on the global model's log-probabilities: under label shift it learns
//! `log π_local/π_global` without knowing the global prior) — whose weights are learnt online
//! by Hedge, exactly as HBP learns its head weights α.
//!
//! With `E` experts and mixing weights `w` (a distribution), the prediction for a sample is
//! `p = Σ_e w_e · p_e`; after the label `y` is seen every expert pays its log loss
//! `ℓ_e = −ln p_e(y)` and `w_e ← w_e · β^{ℓ_e}`, floored at `floor` and renormalised. Hedge's
//! regret bound makes the mix about as good as the best expert on this device's stream (and a
//! probability mix is often better than either): joining the fleet cannot make a device's
//! prediction much worse than learning alone, and a good global model makes it better.
//!
//! [`PersonalConfig`] is the one source of the defaults; [`Mixer`] keeps its weights on the
//! model's device so that a step needs no read-back.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::hbp::ModelError;
use crate::hbp::math::{PROBABILITY_FLOOR, hedge_step};
use crate::hbp::model::read;

/// The experts of the mix, in the order of the mixing weights.
pub const EXPERTS: [&str; 4] = ["local", "global", "global×local prior", "global+local bias"];

/// How a client personalises its predictions and calibrates its shared model's steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PersonalConfig {
    /// Keep a purely local model and predict with the Hedge mix of [`EXPERTS`]; when off,
    /// the client predicts with the shared model alone.
    pub enabled: bool,
    /// Hedge discount of the mixing weights, in (0, 1): `w_e ← w_e · β^{ℓ_e}`.
    pub beta: f32,
    /// Floor on each mixing weight, in [0, 1/E): a weight can recover when the stream changes.
    pub floor: f32,
    /// FedLC logit calibration strength τ ≥ 0 for the shared model's steps: they are taken
    /// on `softmax(z − τ·n_c^{−1/4})` with the running local class counts `n_c`; 0 is off.
    pub calibration_tau: f32,
    /// Learning rate of the [`LocalBias`] expert, in (0, 10].
    pub bias_lr: f32,
}

impl Default for PersonalConfig {
    fn default() -> Self {
        Self { enabled: true, beta: 0.9, floor: 0.01, calibration_tau: 1.0, bias_lr: 0.05 }
    }
}

/// Why a [`PersonalConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{what} must be in {range}, got {value}")]
pub struct PersonalConfigError {
    /// The setting.
    pub what: &'static str,
    /// Its range, in words.
    pub range: &'static str,
    /// The value given.
    pub value: f32,
}

impl PersonalConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), PersonalConfigError> {
        let floor_max = 1.0 / EXPERTS.len() as f32;
        let checks = [
            ("the mixing beta", "(0, 1)", self.beta, self.beta > 0.0 && self.beta < 1.0),
            ("the mixing floor", "[0, 1/4)", self.floor, self.floor >= 0.0 && self.floor < floor_max),
            ("the local bias learning rate", "(0, 10]", self.bias_lr, self.bias_lr > 0.0 && self.bias_lr <= 10.0),
            ("the calibration tau", "[0, 100]", self.calibration_tau, (0.0..=100.0).contains(&self.calibration_tau)),
        ];
        match checks.into_iter().find(|(_, _, _, ok)| !ok) {
            Some((what, range, value, _)) => Err(PersonalConfigError { what, range, value }),
            None => Ok(()),
        }
    }

    /// The FedLC offset `−τ·max(n_c, 1)^{−1/4}` of every class, or `None` when τ is 0.
    pub fn calibration_offset(&self, counts: &[u64]) -> Option<Vec<f32>> {
        (self.calibration_tau > 0.0)
            .then(|| counts.iter().map(|&n| -self.calibration_tau * (n.max(1) as f32).powf(-0.25)).collect())
    }
}

/// The local label prior `(n_c + 1) / (n + C)` (Laplace-smoothed running class frequencies).
pub fn label_prior(counts: &[u64]) -> Vec<f32> {
    let total: u64 = counts.iter().sum();
    let denominator = (total + counts.len() as u64) as f32;
    counts.iter().map(|&n| (n + 1) as f32 / denominator).collect()
}

/// Hedge over experts' class probabilities, with its weights on the device.
#[derive(Debug, Clone)]
pub struct Mixer {
    weights: Tensor<1>,
    ln_beta: f32,
    floor: f32,
}

impl Mixer {
    /// Uniform weights over `experts`.
    pub fn new(experts: usize, config: &PersonalConfig, device: &Device) -> Self {
        let uniform = vec![1.0 / experts.max(1) as f32; experts.max(1)];
        Self::from_weights(&uniform, config, device)
    }

    /// Given weights (renormalised; a non-finite or negative entry counts as the floor).
    pub fn from_weights(weights: &[f32], config: &PersonalConfig, device: &Device) -> Self {
        let mut w: Vec<f32> =
            weights.iter().map(|w| if w.is_finite() { w.max(config.floor) } else { config.floor }).collect();
        let total: f32 = w.iter().sum();
        if (total - 1.0).abs() <= 1e-5 {
            // Already a distribution (e.g. read back from a saved state): kept bit for bit.
        } else if total > 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        } else {
            let n = w.len().max(1) as f32;
            w.iter_mut().for_each(|v| *v = 1.0 / n);
        }
        let len = w.len();
        Self {
            weights: Tensor::from_data(TensorData::new(w, [len]), device),
            ln_beta: config.beta.ln(),
            floor: config.floor,
        }
    }

    /// The mix `Σ_e w_e · p_e` of `experts` (`[E, b, C]` probabilities), shape `[b, C]`,
    /// made before the step; then the Hedge step on the experts' mean log loss over the
    /// batch against `targets` (one-hot `[b, C]`).
    pub fn predict_and_update(&mut self, experts: Tensor<3>, targets: &Tensor<2>) -> Tensor<2> {
        let [e, b, c] = experts.dims();
        let mixed = (experts.clone() * self.weights.clone().reshape([e, 1, 1])).sum_dim(0).reshape([b, c]);
        let chosen = (experts * targets.clone().unsqueeze_dim(0)).sum_dim(2).reshape([e, b]);
        let losses = chosen.clamp_min(PROBABILITY_FLOOR).log().neg().mean_dim(1).reshape([e]);
        self.weights = hedge_step(self.weights.clone(), losses, self.ln_beta, self.floor);
        mixed
    }

    /// The mix `Σ_e w_e · p_e` of `experts` (`[E, b, C]`), without a step.
    pub fn predict(&self, experts: Tensor<3>) -> Tensor<2> {
        let [e, b, c] = experts.dims();
        (experts * self.weights.clone().reshape([e, 1, 1])).sum_dim(0).reshape([b, c])
    }

    /// The current weights (read back from the device).
    pub fn weights(&self) -> Result<Vec<f32>, ModelError> {
        read(self.weights.clone())
    }
}

/// A per-class bias `b` on the global model's log-probabilities, learnt online on this
/// device: the expert predicts `softmax(ln p + b)` and then takes the SGD step
/// `b ← b − η·mean_rows(softmax(ln p + b) − y)` on its log loss.
#[derive(Debug, Clone)]
pub struct LocalBias {
    values: Tensor<2>,
    learning_rate: f32,
}

impl LocalBias {
    /// Zero bias over `classes` (the expert starts as the global model itself).
    pub fn new(classes: usize, config: &PersonalConfig, device: &Device) -> Self {
        Self::from_values(&vec![0.0; classes], config, device)
    }

    /// Given bias values (a non-finite one counts as 0).
    pub fn from_values(values: &[f32], config: &PersonalConfig, device: &Device) -> Self {
        let clean: Vec<f32> = values.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect();
        let len = clean.len();
        Self { values: Tensor::from_data(TensorData::new(clean, [1, len]), device), learning_rate: config.bias_lr }
    }

    /// The expert's prediction `softmax(ln p + b)` (`[b, C]`) for `probabilities` (`[b, C]`),
    /// made before the step; then the step on `targets` (one-hot `[b, C]`).
    pub fn predict_and_update(&mut self, probabilities: Tensor<2>, targets: &Tensor<2>) -> Tensor<2> {
        let [rows, _] = probabilities.dims();
        let logits = probabilities.clamp_min(PROBABILITY_FLOOR).log() + self.values.clone();
        let predicted = burn::tensor::activation::softmax(logits, 1);
        let gradient = (predicted.clone() - targets.clone()).sum_dim(0).div_scalar(rows.max(1) as f32);
        self.values = self.values.clone() - gradient.mul_scalar(self.learning_rate);
        predicted
    }

    /// The expert's prediction `softmax(ln p + b)` (`[b, C]`), without a step.
    pub fn predict(&self, probabilities: Tensor<2>) -> Tensor<2> {
        let logits = probabilities.clamp_min(PROBABILITY_FLOOR).log() + self.values.clone();
        burn::tensor::activation::softmax(logits, 1)
    }

    /// The current bias (read back from the device).
    pub fn values(&self) -> Result<Vec<f32>, ModelError> {
        read(self.values.clone())
    }
}

/// `p · prior`, renormalised per row: the Bayes correction of `p` (`[b, C]`) to a label prior.
pub fn adapt_to_prior(probabilities: Tensor<2>, prior: Tensor<2>) -> Tensor<2> {
    let weighted = probabilities * prior;
    let total = weighted.clone().sum_dim(1).clamp_min(PROBABILITY_FLOOR);
    weighted / total
}

#[cfg(test)]
mod tests;
