//! Choosing a strategy by name and options: [`StrategyConfig`] → `Box<dyn Aggregator>`.

use super::Aggregator;
use super::buffered::Buffered;
use super::federated::{Federated, Hygiene};
use super::krum::Krum;
use super::mean::WeightedMean;
use super::optimizer::{Adagrad, Adam, Momentum, ServerOptimizer, Sgd, Yogi};
use super::robust::{Median, TrimmedMean};
use super::step_size::StepSize;

/// The aggregation strategies, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum StrategyKind {
    /// `fedavg`: sample-weighted mean, `x ← x + η_s·Δ`.
    #[default]
    FedAvg,
    /// `fedavgm`: server momentum.
    FedAvgM,
    /// `fedadam`: server Adam.
    FedAdam,
    /// `fedyogi`: server Yogi.
    FedYogi,
    /// `fedadagrad`: server Adagrad.
    FedAdagrad,
    /// `median`: coordinate-wise median.
    Median,
    /// `trimmed-mean`: coordinate-wise trimmed mean.
    TrimmedMean,
    /// `krum`: the single best-scored update.
    Krum,
    /// `multi-krum`: the mean of the m best-scored updates.
    MultiKrum,
}

impl From<StrategyKind> for &'static str {
    fn from(kind: StrategyKind) -> &'static str {
        kind.name()
    }
}

impl StrategyKind {
    /// Every strategy with its name.
    pub const ALL: [(&'static str, StrategyKind); 9] = [
        ("fedavg", Self::FedAvg),
        ("fedavgm", Self::FedAvgM),
        ("fedadam", Self::FedAdam),
        ("fedyogi", Self::FedYogi),
        ("fedadagrad", Self::FedAdagrad),
        ("median", Self::Median),
        ("trimmed-mean", Self::TrimmedMean),
        ("krum", Self::Krum),
        ("multi-krum", Self::MultiKrum),
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, kind)| *kind == self).map_or("?", |(name, _)| name)
    }

    /// Whether it holds every update of the round (median, trimmed mean, Krum).
    pub fn is_robust(self) -> bool {
        matches!(self, Self::Median | Self::TrimmedMean | Self::Krum | Self::MultiKrum)
    }

    /// Whether it uses β1 (momentum).
    pub fn uses_beta1(self) -> bool {
        matches!(self, Self::FedAvgM | Self::FedAdam | Self::FedYogi)
    }

    /// β1 when none is given: 0.5 for FedAvgM (its step is already scaled by the number of
    /// participants: heavier momentum overshoots), 0.9 for FedAdam and FedYogi.
    pub fn default_beta1(self) -> f64 {
        if self == Self::FedAvgM { 0.5 } else { 0.9 }
    }

    /// Whether it uses β2 (second-moment decay).
    pub fn uses_beta2(self) -> bool {
        matches!(self, Self::FedAdam | Self::FedYogi)
    }

    /// Whether it uses τ (adaptivity).
    pub fn uses_tau(self) -> bool {
        matches!(self, Self::FedAdam | Self::FedYogi | Self::FedAdagrad)
    }

    /// Whether it uses the number of Byzantine clients f.
    pub fn uses_byzantine(self) -> bool {
        matches!(self, Self::Krum | Self::MultiKrum)
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().find(|(name, _)| *name == text).map(|(_, kind)| *kind).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(name, _)| *name).collect();
            format!("unknown strategy {text:?} (one of {})", names.join(", "))
        })
    }
}

impl TryFrom<String> for StrategyKind {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// A strategy and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyConfig {
    /// Which strategy.
    pub kind: StrategyKind,
    /// Server learning rate η_s (every strategy): `x ← x + η_s·d`.
    pub server_lr: f64,
    /// Momentum decay β1 in [0, 1) (FedAvgM, FedAdam, FedYogi).
    pub beta1: f64,
    /// Second-moment decay β2 in [0, 1) (FedAdam, FedYogi).
    pub beta2: f64,
    /// Adaptivity τ > 0 (FedAdagrad, FedAdam, FedYogi).
    pub tau: f64,
    /// Trim fraction β in [0, 1/2) (trimmed mean).
    pub trim_fraction: f64,
    /// Assumed number of Byzantine clients f (Krum, Multi-Krum).
    pub byzantine: usize,
    /// Updates averaged by Multi-Krum; `None`: n − f.
    pub multi_krum_m: Option<usize>,
    /// L2 norm each delta is clipped to (every strategy).
    pub clip_norm: Option<f64>,
    /// L2 norm above which a delta is logged as an outlier (every strategy; not refused).
    pub outlier_norm: Option<f64>,
    /// Most updates a robust strategy holds per round; memory is this × model × 4 bytes.
    pub max_held_updates: usize,
    /// Standard deviation of Gaussian noise added to the sum of clipped updates (central DP).
    pub noise_std: Option<f64>,
    /// Secret key of that noise (from the OS generator; see [`crate::privacy::NoiseKey`]).
    pub noise_key: crate::privacy::NoiseKey,
    /// How η_s is scaled each round.
    pub step_size: StepSize,
    /// Iterate averaging of the served model: after each commit the served (evaluated,
    /// checkpointed) model becomes `ρ·served + (1 − ρ)·latest`; 0 serves the latest model.
    /// Clients keep training on the latest.
    pub serve_average: f64,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            kind: StrategyKind::FedAvg,
            server_lr: 1.0,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
            trim_fraction: 0.1,
            byzantine: 0,
            multi_krum_m: None,
            clip_norm: None,
            outlier_norm: None,
            max_held_updates: 256,
            noise_std: None,
            noise_key: crate::privacy::NoiseKey::default(),
            step_size: StepSize::Fixed,
            serve_average: 0.0,
        }
    }
}

impl StrategyConfig {
    /// What the binaries use when the user names nothing: FedAvgM (β1 0.5) whose step is
    /// scaled by the number of participants, serving an average of the iterates (ρ 0.85).
    /// Chosen from measurements on label-skewed online fleets (README, "Defaults"):
    /// `Default` stays textbook FedAvg (η_s 1, no averaging), the form the unit tests pin.
    pub fn recommended() -> Self {
        Self {
            kind: StrategyKind::FedAvgM,
            beta1: StrategyKind::FedAvgM.default_beta1(),
            step_size: StepSize::Participants,
            serve_average: 0.85,
            ..Self::default()
        }
    }
}

/// Why a [`StrategyConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StrategyError {
    /// A value that must be finite and positive is not.
    #[error("{name} must be finite and positive, got {value}")]
    NotPositive {
        /// The option.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A decay rate lies outside [0, 1).
    #[error("{name} must be in [0, 1), got {value}")]
    Decay {
        /// The option.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// The trim fraction lies outside [0, 1/2).
    #[error("trim_fraction must be in [0, 0.5), got {0}")]
    TrimFraction(f64),
    /// A robust strategy may hold no update at all.
    #[error("max_held_updates must be at least 1")]
    ZeroHeldUpdates,
    /// Multi-Krum asked to average no update.
    #[error("multi_krum_m must be at least 1")]
    ZeroMultiKrum,
}

impl StrategyConfig {
    /// Checks the values' ranges (option combinations are the caller's: every field has a value).
    pub fn validate(&self) -> Result<(), StrategyError> {
        let positive = [
            ("server_lr", Some(self.server_lr)),
            ("tau", Some(self.tau)),
            ("clip_norm", self.clip_norm),
            ("outlier_norm", self.outlier_norm),
        ];
        for (name, value) in positive {
            if let Some(value) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(StrategyError::NotPositive { name, value });
            }
        }
        for (name, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(StrategyError::Decay { name, value });
            }
        }
        if !(0.0..1.0).contains(&self.serve_average) {
            return Err(StrategyError::Decay { name: "serve_average", value: self.serve_average });
        }
        if !(0.0..0.5).contains(&self.trim_fraction) {
            return Err(StrategyError::TrimFraction(self.trim_fraction));
        }
        if self.max_held_updates == 0 {
            return Err(StrategyError::ZeroHeldUpdates);
        }
        if self.multi_krum_m == Some(0) {
            return Err(StrategyError::ZeroMultiKrum);
        }
        Ok(())
    }

    /// The aggregator (call [`StrategyConfig::validate`] first).
    pub fn build(&self) -> Box<dyn Aggregator + Send> {
        let hygiene = Hygiene {
            clip_norm: self.clip_norm,
            outlier_norm: self.outlier_norm,
            noise_std: self.noise_std,
            noise_key: self.noise_key,
        };
        let (lr, cap, step) = (self.server_lr, self.max_held_updates, self.step_size);
        let (beta1, beta2, tau) = (self.beta1, self.beta2, self.tau);
        let mean = WeightedMean::default();
        match self.kind {
            StrategyKind::FedAvg => Box::new(Federated::with(mean, Sgd, lr, hygiene).with_step_size(step)),
            StrategyKind::FedAvgM => {
                Box::new(Federated::with(mean, Momentum::new(beta1), lr, hygiene).with_step_size(step))
            }
            StrategyKind::FedAdam => {
                Box::new(Federated::with(mean, Adam::new(beta1, beta2, tau), lr, hygiene).with_step_size(step))
            }
            StrategyKind::FedYogi => {
                Box::new(Federated::with(mean, Yogi::new(beta1, beta2, tau), lr, hygiene).with_step_size(step))
            }
            StrategyKind::FedAdagrad => {
                Box::new(Federated::with(mean, Adagrad::new(tau), lr, hygiene).with_step_size(step))
            }
            StrategyKind::Median => Box::new(Federated::with(Median::new(cap), Sgd, lr, hygiene).with_step_size(step)),
            StrategyKind::TrimmedMean => Box::new(
                Federated::with(TrimmedMean::new(self.trim_fraction, cap), Sgd, lr, hygiene).with_step_size(step),
            ),
            StrategyKind::Krum => Box::new(
                Federated::with(Krum::new(self.byzantine, Some(1), cap), Sgd, lr, hygiene).with_step_size(step),
            ),
            StrategyKind::MultiKrum => Box::new(
                Federated::with(Krum::new(self.byzantine, self.multi_krum_m, cap), Sgd, lr, hygiene)
                    .with_step_size(step),
            ),
        }
    }
}

/// The server optimiser of a mean-based strategy, chosen at run time (for [`Buffered`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerStep {
    /// FedAvg.
    Sgd(Sgd),
    /// FedAvgM.
    Momentum(Momentum),
    /// FedAdagrad.
    Adagrad(Adagrad),
    /// FedAdam.
    Adam(Adam),
    /// FedYogi.
    Yogi(Yogi),
}

impl ServerOptimizer for ServerStep {
    fn step(&mut self, delta: &mut [f64]) {
        match self {
            Self::Sgd(optimizer) => optimizer.step(delta),
            Self::Momentum(optimizer) => optimizer.step(delta),
            Self::Adagrad(optimizer) => optimizer.step(delta),
            Self::Adam(optimizer) => optimizer.step(delta),
            Self::Yogi(optimizer) => optimizer.step(delta),
        }
    }
}

impl StrategyConfig {
    /// A FedBuff buffer of `buffer_size` updates with this strategy's server optimiser, learning
    /// rate and hygiene; `None` for a robust strategy (it needs every update of a round at once).
    pub fn build_buffered(&self, buffer_size: usize, max_staleness: u64) -> Option<Buffered<ServerStep>> {
        let hygiene = Hygiene {
            clip_norm: self.clip_norm,
            outlier_norm: self.outlier_norm,
            noise_std: self.noise_std,
            noise_key: self.noise_key,
        };
        let (beta1, beta2, tau) = (self.beta1, self.beta2, self.tau);
        let optimizer = match self.kind {
            StrategyKind::FedAvg => ServerStep::Sgd(Sgd),
            StrategyKind::FedAvgM => ServerStep::Momentum(Momentum::new(beta1)),
            StrategyKind::FedAdagrad => ServerStep::Adagrad(Adagrad::new(tau)),
            StrategyKind::FedAdam => ServerStep::Adam(Adam::new(beta1, beta2, tau)),
            StrategyKind::FedYogi => ServerStep::Yogi(Yogi::new(beta1, beta2, tau)),
            StrategyKind::Median | StrategyKind::TrimmedMean | StrategyKind::Krum | StrategyKind::MultiKrum => {
                return None;
            }
        };
        Some(
            Buffered::new(buffer_size, max_staleness, optimizer, self.server_lr, hygiene)
                .with_step_size(self.step_size),
        )
    }
}
