//! Command-line options that shape the HBP learner.

use flotilla_learner::hbp::HbpConfig;

/// HBP hyper-parameters; the defaults are the paper's ([`HbpConfig::PAPER`]).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Hidden ReLU layers L.
    #[arg(long, default_value_t = HbpConfig::PAPER.hidden_layers)]
    pub hidden_layers: usize,
    /// Units per hidden layer.
    #[arg(long, default_value_t = HbpConfig::PAPER.width)]
    pub width: usize,
    /// SGD learning rate η.
    #[arg(long, default_value_t = HbpConfig::PAPER.learning_rate)]
    pub lr: f32,
    /// Hedge discount β in (0, 1).
    #[arg(long, default_value_t = HbpConfig::PAPER.beta)]
    pub beta: f32,
    /// Smoothing s: each head's weight α is floored at s/L.
    #[arg(long, default_value_t = HbpConfig::PAPER.smoothing)]
    pub smoothing: f32,
    /// Drop the classifier head on the raw input (the authors' code has none).
    #[arg(long)]
    pub no_input_head: bool,
    /// Seed of the weight initialisation (NumPy `RandomState` compatible).
    #[arg(long, default_value_t = HbpConfig::PAPER.seed)]
    pub seed: u32,
}

impl ModelArgs {
    /// The learner configuration for a stream of `inputs` features and `classes` classes.
    pub fn config(&self, inputs: usize, classes: usize) -> HbpConfig {
        HbpConfig {
            inputs,
            classes,
            hidden_layers: self.hidden_layers,
            width: self.width,
            learning_rate: self.lr,
            beta: self.beta,
            smoothing: self.smoothing,
            input_head: !self.no_input_head,
            seed: self.seed,
        }
    }
}
