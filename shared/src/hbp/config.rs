//! Hyper-parameters and shape of a Hedge Backpropagation network.

use serde::{Deserialize, Serialize};

/// Shape and hyper-parameters of an HBP learner (Sahoo et al., IJCAI 2018, Algorithm 1).
///
/// The defaults are the paper's and the NumPy reference's: 19 hidden ReLU layers of 100
/// units, η = 0.01, β = 0.99, s = 0.2, a classifier head on the input and on every hidden
/// layer, one sample at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HbpConfig {
    /// Number of input features `d`.
    pub inputs: usize,
    /// Number of classes `C` (labels are `0..C`).
    pub classes: usize,
    /// Number of hidden layers `L`.
    pub hidden_layers: usize,
    /// Units per hidden layer.
    pub width: usize,
    /// SGD learning rate η.
    pub learning_rate: f32,
    /// Hedge discount β in (0, 1): α_l ← α_l · β^{loss_l}.
    pub beta: f32,
    /// Smoothing s: every α_l is floored at s / L before normalisation.
    pub smoothing: f32,
    /// Whether a classifier head also reads the raw input (the paper's l = 0 head).
    pub input_head: bool,
    /// Seed of the Glorot-uniform initialisation.
    pub seed: u64,
}

impl HbpConfig {
    /// The paper's defaults for a stream of `inputs` features and `classes` classes.
    pub fn new(inputs: usize, classes: usize) -> Self {
        Self {
            inputs,
            classes,
            hidden_layers: 19,
            width: 100,
            learning_rate: 0.01,
            beta: 0.99,
            smoothing: 0.2,
            input_head: true,
            seed: 0,
        }
    }

    /// Number of classifier heads (L + 1 with the input head, L without).
    pub fn heads(&self) -> usize {
        self.hidden_layers + usize::from(self.input_head)
    }
}
