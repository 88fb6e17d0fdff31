//! Forward pass, per-head losses and the analytic backward pass of HBP.
//!
//! The objective of one step is `J = Σ_l α_l · CE_l`, where `CE_l` is the cross-entropy of
//! head `l` averaged over the micro-batch. Its gradient, written out by hand, is exactly the
//! paper's Eq. 2–3: each head's weights get `α_l · ∂CE_l`, each hidden layer the sum of
//! `α_j · ∂CE_j` over the heads at or above it. One backward sweep computes all of it.

use burn::tensor::Tensor;
use burn::tensor::activation::{relu, softmax};

use super::model::HbpModel;

/// Floor on a probability before its logarithm is taken.
pub(crate) const PROBABILITY_FLOOR: f32 = 1e-12;

/// One Hedge step over the last dimension: `w ← w · β^loss` (with `ln β` given), floored at
/// `floor`, renormalised to sum to one. HBP's head weights α (one network or a stack of them)
/// and the personalised mix's expert weights all move by it.
pub(crate) fn hedge_step<const D: usize>(weights: Tensor<D>, losses: Tensor<D>, ln_beta: f32, floor: f32) -> Tensor<D> {
    let floored = (weights * losses.mul_scalar(ln_beta).exp()).clamp_min(floor);
    let total = floored.clone().sum_dim(D - 1);
    floored / total
}

/// What the backward pass needs from the forward pass.
pub(crate) struct Forward {
    /// Inputs `[b, d]`.
    inputs: Tensor<2>,
    /// Hidden activations `h_1..h_L`, each `[b, width]`.
    hidden: Vec<Tensor<2>>,
    /// The same activations stacked `[L, b, width]`.
    stacked: Tensor<3>,
    /// Every head's logits `[K, b, C]`, input head first when present.
    logits: Tensor<3>,
    /// Every head's class probabilities `[K, b, C]`, input head first when present.
    pub(crate) probabilities: Tensor<3>,
    /// The probabilities the loss and the gradient are taken on: `probabilities`, or
    /// `softmax(logits + offset)` after [`HbpModel::calibrate`].
    training: Tensor<3>,
}

/// A gradient with the shapes of [`HbpModel`]'s trainable tensors (α excluded).
pub(crate) struct Gradients {
    pub(crate) hidden_weights: Vec<Tensor<2>>,
    pub(crate) hidden_biases: Vec<Tensor<2>>,
    pub(crate) input_head: Option<(Tensor<2>, Tensor<2>)>,
    pub(crate) head_weights: Tensor<3>,
    pub(crate) head_biases: Tensor<3>,
}

impl HbpModel {
    /// Runs every layer and every head on a micro-batch `x` of shape `[b, d]`.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Forward {
        let mut hidden = Vec::with_capacity(self.hidden_weights.len());
        let mut h = x.clone();
        for (weight, bias) in self.hidden_weights.iter().zip(&self.hidden_biases) {
            h = relu(h.matmul(weight.clone()) + bias.clone());
            hidden.push(h.clone());
        }
        let stacked: Tensor<3> = Tensor::stack(hidden.clone(), 0);
        let mut logits = stacked.clone().matmul(self.head_weights.clone()) + self.head_biases.clone();
        if let Some((weight, bias)) = &self.input_head {
            let input_logits: Tensor<2> = x.clone().matmul(weight.clone()) + bias.clone();
            logits = Tensor::cat(vec![input_logits.unsqueeze_dim(0), logits], 0);
        }
        let probabilities = softmax(logits.clone(), 2);
        Forward { inputs: x, hidden, stacked, logits, training: probabilities.clone(), probabilities }
    }

    /// Logit calibration (FedLC, Zhang et al., ICML 2022): the loss, its gradient and the
    /// hedge losses of this step are taken on `softmax(z + offset)` for every head, where
    /// `offset` is `[1, C]` (FedLC: `−τ·n_c^{−1/4}` from the running local class counts);
    /// the prediction stays on the raw logits `z`.
    pub(crate) fn calibrate(forward: &mut Forward, offset: Tensor<2>) {
        forward.training = softmax(forward.logits.clone() + offset.unsqueeze_dim(0), 2);
    }

    /// The hedged prediction `F(x) = Σ_l α_l · softmax(head_l)`, shape `[b, C]`.
    pub(crate) fn mixture(&self, forward: &Forward) -> Tensor<2> {
        let k = self.config.heads();
        let [_, b, c] = forward.probabilities.dims();
        (forward.probabilities.clone() * self.alpha.clone().reshape([k, 1, 1])).sum_dim(0).reshape([b, c])
    }

    /// Each head's cross-entropy averaged over the batch, shape `[K]`; `targets` is one-hot `[b, C]`.
    pub(crate) fn head_losses(&self, forward: &Forward, targets: &Tensor<2>) -> Tensor<1> {
        let k = self.config.heads();
        let log_p = forward.training.clone().clamp_min(PROBABILITY_FLOOR).log();
        (log_p * targets.clone().unsqueeze_dim(0)).sum_dim(2).mean_dim(1).reshape([k]).neg()
    }

    /// The objective `J = Σ_l α_l · CE_l` whose gradient [`Self::gradients`] computes
    /// (on calibrated logits `z + offset` when an offset is given).
    #[cfg(test)]
    pub(crate) fn objective(&self, x: Tensor<2>, targets: &Tensor<2>, offset: Option<Tensor<2>>) -> f32 {
        let mut forward = self.forward(x);
        if let Some(offset) = offset {
            Self::calibrate(&mut forward, offset);
        }
        let losses = self.head_losses(&forward, targets);
        (losses * self.alpha.clone()).sum().into_scalar::<f32>()
    }

    /// The analytic gradient of `J` with respect to every weight and bias.
    pub(crate) fn gradients(&self, forward: &Forward, targets: &Tensor<2>) -> Gradients {
        let k = self.config.heads();
        let layers = self.config.hidden_layers;
        let [_, b, c] = forward.probabilities.dims();
        let width = self.config.width;
        // ∂(α_l · mean CE_l)/∂logits_l = α_l (p_l − y) / b
        let scale = self.alpha.clone().reshape([k, 1, 1]).div_scalar(b as f32);
        let logit_grads = (forward.training.clone() - targets.clone().unsqueeze_dim(0)) * scale;
        let first = k - layers;
        let hidden_grads = logit_grads.clone().narrow(0, first, layers);
        let input_head = self.input_head.as_ref().map(|_| {
            let g = logit_grads.narrow(0, 0, 1).reshape([b, c]);
            (forward.inputs.clone().transpose().matmul(g.clone()), g.sum_dim(0))
        });
        let head_weights = forward.stacked.clone().swap_dims(1, 2).matmul(hidden_grads.clone());
        let head_biases = hidden_grads.clone().sum_dim(1);
        let from_heads = hidden_grads.matmul(self.head_weights.clone().swap_dims(1, 2));
        let mut from_heads: Vec<Tensor<2>> =
            from_heads.chunk(layers, 0).into_iter().map(|t| t.reshape([b, width])).collect();

        let mut hidden_weights = Vec::with_capacity(layers);
        let mut hidden_biases = Vec::with_capacity(layers);
        let mut upstream: Option<Tensor<2>> = None;
        for l in (0..layers).rev() {
            let head_part = from_heads.pop().unwrap_or_else(|| Tensor::zeros([b, width], &self.device));
            let dh = match upstream.take() {
                Some(up) => up + head_part,
                None => head_part,
            };
            let dz = dh.mask_fill(forward.hidden[l].clone().lower_equal_elem(0.0), 0.0);
            let input = if l == 0 { forward.inputs.clone() } else { forward.hidden[l - 1].clone() };
            hidden_weights.push(input.transpose().matmul(dz.clone()));
            hidden_biases.push(dz.clone().sum_dim(0));
            if l > 0 {
                upstream = Some(dz.matmul(self.hidden_weights[l].clone().transpose()));
            }
        }
        hidden_weights.reverse();
        hidden_biases.reverse();
        Gradients { hidden_weights, hidden_biases, input_head, head_weights, head_biases }
    }

    /// One SGD step: every trainable tensor moves by `−learning_rate · gradient`.
    pub(crate) fn apply(&mut self, gradients: Gradients, learning_rate: f32) {
        for (param, grad) in self.hidden_weights.iter_mut().zip(gradients.hidden_weights) {
            *param = param.clone() - grad.mul_scalar(learning_rate);
        }
        for (param, grad) in self.hidden_biases.iter_mut().zip(gradients.hidden_biases) {
            *param = param.clone() - grad.mul_scalar(learning_rate);
        }
        if let (Some((weight, bias)), Some((grad_weight, grad_bias))) = (self.input_head.as_mut(), gradients.input_head)
        {
            *weight = weight.clone() - grad_weight.mul_scalar(learning_rate);
            *bias = bias.clone() - grad_bias.mul_scalar(learning_rate);
        }
        self.head_weights = self.head_weights.clone() - gradients.head_weights.mul_scalar(learning_rate);
        self.head_biases = self.head_biases.clone() - gradients.head_biases.mul_scalar(learning_rate);
    }

    /// The hedge update: `α ← α · β^loss`, floored at `s / L`, normalised to sum to one.
    pub(crate) fn hedge(&mut self, losses: Tensor<1>) {
        let config = &self.config;
        let floor = config.smoothing / config.hidden_layers as f32;
        self.alpha = hedge_step(self.alpha.clone(), losses, config.beta.ln(), floor);
    }
}
