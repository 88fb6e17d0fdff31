//! The HBP step of `super::super::math`, batched over a leading client dimension.
//!
//! Every function mirrors its single-client namesake with one more leading dimension `C`:
//! matrices `[b, n]` become `[C, b, n]`, the stacked heads `[L, b, n]` become `[C, L, b, n]`,
//! and every matmul is a batched matmul over the clients (and the heads). The number of
//! tensor ops per step depends on L, never on C.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, softmax};

use super::BatchedHbp;
use crate::hbp::math::{PROBABILITY_FLOOR, hedge_step};

/// What the backward pass needs from the forward pass.
pub(super) struct Forward {
    /// Inputs `[C, b, d]`.
    inputs: Tensor<3>,
    /// Hidden activations `h_1..h_L`, each `[C, b, width]`.
    hidden: Vec<Tensor<3>>,
    /// The same activations stacked `[C, L, b, width]`.
    stacked: Tensor<4>,
    /// Every head's class probabilities `[C, K, b, classes]`, input head first when present.
    probabilities: Tensor<4>,
}

/// A gradient times the learning rate, with the shapes of [`BatchedHbp`]'s trainable tensors (α excluded).
///
/// The backward pass is linear in the logits' gradient, so η is folded into its per-head
/// scale `α_l / b`: the SGD step is then one subtraction per tensor, not a scaling pass too
/// over every weight (the batched step is bound by memory traffic on the CPU).
pub(super) struct Gradients {
    hidden_weights: Vec<Tensor<3>>,
    hidden_biases: Vec<Tensor<3>>,
    input_head: Option<(Tensor<3>, Tensor<3>)>,
    head_weights: Tensor<4>,
    head_biases: Tensor<4>,
}

impl BatchedHbp {
    /// Runs every client's layers and heads on its micro-batch; `x` is `[C, b, d]`.
    pub(super) fn forward(&self, x: Tensor<3>) -> Forward {
        let mut hidden = Vec::with_capacity(self.hidden_weights.len());
        let mut h = x.clone();
        for (weight, bias) in self.hidden_weights.iter().zip(&self.hidden_biases) {
            h = relu(h.matmul(weight.clone()) + bias.clone());
            hidden.push(h.clone());
        }
        let stacked: Tensor<4> = Tensor::stack(hidden.clone(), 1);
        let logits = stacked.clone().matmul(self.head_weights.clone()) + self.head_biases.clone();
        let mut probabilities = softmax(logits, 3);
        if let Some((weight, bias)) = &self.input_head {
            let input_probabilities = softmax(x.clone().matmul(weight.clone()) + bias.clone(), 2);
            probabilities = Tensor::cat(vec![input_probabilities.unsqueeze_dim(1), probabilities], 1);
        }
        Forward { inputs: x, hidden, stacked, probabilities }
    }

    /// Every client's hedged prediction `Σ_l α_l · softmax(head_l)`, shape `[C, b, classes]`.
    pub(super) fn mixture(&self, forward: &Forward) -> Tensor<3> {
        let [c, k, b, classes] = forward.probabilities.dims();
        (forward.probabilities.clone() * self.alpha.clone().reshape([c, k, 1, 1])).sum_dim(1).reshape([c, b, classes])
    }

    /// Each client's per-head cross-entropy averaged over its batch, `[C, K]`; `targets` is one-hot `[C, b, classes]`.
    pub(super) fn head_losses(&self, forward: &Forward, targets: &Tensor<3>) -> Tensor<2> {
        let [c, k, _, _] = forward.probabilities.dims();
        let log_p = forward.probabilities.clone().clamp_min(PROBABILITY_FLOOR).log();
        (log_p * targets.clone().unsqueeze_dim(1)).sum_dim(3).mean_dim(2).reshape([c, k]).neg()
    }

    /// `learning_rate` times the analytic gradient of every client's `J = Σ_l α_l · CE_l`
    /// (see `super::super::math`).
    pub(super) fn gradients(&self, forward: &Forward, targets: &Tensor<3>, learning_rate: f32) -> Gradients {
        let layers = self.config.hidden_layers;
        let [c, k, b, classes] = forward.probabilities.dims();
        let width = self.config.width;
        // η · ∂(α_l · mean CE_l)/∂logits_l = η α_l (p_l − y) / b, per client
        let scale = self.alpha.clone().reshape([c, k, 1, 1]).mul_scalar(learning_rate / b as f32);
        let logit_grads = (forward.probabilities.clone() - targets.clone().unsqueeze_dim(1)) * scale;
        let hidden_grads = logit_grads.clone().narrow(1, k - layers, layers);
        let input_head = self.input_head.as_ref().map(|_| {
            let g = logit_grads.narrow(1, 0, 1).reshape([c, b, classes]);
            (forward.inputs.clone().swap_dims(1, 2).matmul(g.clone()), g.sum_dim(1))
        });
        let head_weights = forward.stacked.clone().swap_dims(2, 3).matmul(hidden_grads.clone());
        let head_biases = hidden_grads.clone().sum_dim(2);
        let from_heads = hidden_grads.matmul(self.head_weights.clone().swap_dims(2, 3));
        let mut from_heads: Vec<Tensor<3>> =
            from_heads.chunk(layers, 1).into_iter().map(|t| t.reshape([c, b, width])).collect();

        let mut hidden_weights = Vec::with_capacity(layers);
        let mut hidden_biases = Vec::with_capacity(layers);
        let mut upstream: Option<Tensor<3>> = None;
        for l in (0..layers).rev() {
            let head_part = from_heads.pop().unwrap_or_else(|| Tensor::zeros([c, b, width], &self.device));
            let dh = match upstream.take() {
                Some(up) => up + head_part,
                None => head_part,
            };
            let dz = dh.mask_fill(forward.hidden[l].clone().lower_equal_elem(0.0), 0.0);
            let input = if l == 0 { forward.inputs.clone() } else { forward.hidden[l - 1].clone() };
            hidden_weights.push(input.swap_dims(1, 2).matmul(dz.clone()));
            hidden_biases.push(dz.clone().sum_dim(1));
            if l > 0 {
                upstream = Some(dz.matmul(self.hidden_weights[l].clone().swap_dims(1, 2)));
            }
        }
        hidden_weights.reverse();
        hidden_biases.reverse();
        Gradients { hidden_weights, hidden_biases, input_head, head_weights, head_biases }
    }

    /// One SGD step for every client: each trainable tensor moves by `−learning_rate · gradient`
    /// (already scaled, see [`Gradients`]).
    pub(super) fn apply(&mut self, steps: Gradients) {
        for (param, step) in self.hidden_weights.iter_mut().zip(steps.hidden_weights) {
            *param = param.clone() - step;
        }
        for (param, step) in self.hidden_biases.iter_mut().zip(steps.hidden_biases) {
            *param = param.clone() - step;
        }
        if let (Some((weight, bias)), Some((step_weight, step_bias))) = (self.input_head.as_mut(), steps.input_head) {
            *weight = weight.clone() - step_weight;
            *bias = bias.clone() - step_bias;
        }
        self.head_weights = self.head_weights.clone() - steps.head_weights;
        self.head_biases = self.head_biases.clone() - steps.head_biases;
    }

    /// Every client's hedge update: `α ← α · β^loss`, floored at `s / L`, normalised per client.
    pub(super) fn hedge(&mut self, losses: Tensor<2>) {
        let config = &self.config;
        let floor = config.smoothing / config.hidden_layers as f32;
        self.alpha = hedge_step(self.alpha.clone(), losses, config.beta.ln(), floor);
    }
}
