//! Configuration of the coordinator's rounds.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::aggregate::{StrategyConfig, StrategyError};

/// Longest duration accepted in a [`CoordinatorConfig`]: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Which updates a round accepts, by how far their base lags the current model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StalenessPolicy {
    /// Only updates for the current round computed from the current model version.
    #[default]
    CurrentOnly,
}

/// How updates are gathered into new models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Rounds: sample clients, wait for their updates (quorum, deadline), aggregate, commit.
    #[default]
    Sync,
    /// FedBuff (Nguyen et al., AISTATS 2022): no round barrier. Every joined client is asked
    /// for an update as soon as it joins and again once its previous one was folded (or its
    /// request's deadline, `round_deadline`, passed); updates are weighted by their staleness
    /// and the buffer is applied, as a new model version, after `buffer_size` of them.
    Async {
        /// Updates buffered before each new model version (K ≥ 1).
        buffer_size: usize,
        /// Staleness (current version − base version) beyond which an update is refused.
        max_staleness: u64,
    },
}

/// How the coordinator runs rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// Quorum: joined clients needed to start a round and updates needed to commit one.
    pub min_clients: usize,
    /// Fraction of joined clients sampled per round (at least `min_clients` are).
    pub sample_fraction: f64,
    /// Time from a round's start after which it commits or fails with what it has.
    pub round_deadline: Duration,
    /// Pause before each round once a quorum is joined: lets more clients gather before
    /// the first round, paces the later ones (counted from the previous round's end).
    pub round_interval: Duration,
    /// Time a new connection has to send `Join` before it is closed.
    pub join_timeout: Duration,
    /// Seed of the deterministic client sampling (combined with the round number).
    pub seed: u64,
    /// Which updates are accepted.
    pub staleness: StalenessPolicy,
    /// Accepted auth tokens; `None` lets any client join.
    pub auth_tokens: Option<BTreeSet<String>>,
    /// The aggregation strategy and its options.
    pub aggregation: StrategyConfig,
    /// Synchronous rounds or asynchronous buffered aggregation.
    pub mode: Mode,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            min_clients: 2,
            sample_fraction: 1.0,
            round_deadline: Duration::from_secs(60),
            round_interval: Duration::ZERO,
            join_timeout: Duration::from_secs(10),
            seed: 0,
            staleness: StalenessPolicy::CurrentOnly,
            auth_tokens: None,
            aggregation: StrategyConfig::default(),
            mode: Mode::Sync,
        }
    }
}

/// Why a [`CoordinatorConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A quorum of zero would commit empty rounds.
    #[error("min_clients must be at least 1")]
    ZeroQuorum,
    /// The fraction must lie in (0, 1].
    #[error("sample_fraction must be in (0, 1], got {0}")]
    SampleFraction(f64),
    /// A zero deadline would end every round at once.
    #[error("round_deadline must be positive")]
    ZeroDeadline,
    /// A duration exceeds [`MAX_DURATION`] (adding it to an instant could overflow).
    #[error("{0} exceeds a year")]
    TooLong(&'static str),
    /// The aggregation options are out of range.
    #[error("aggregation: {0}")]
    Strategy(#[from] StrategyError),
    /// A robust strategy could never hold a quorum of updates.
    #[error("max_held_updates ({cap}) is below min_clients ({min_clients}): no round could commit")]
    HeldCapBelowQuorum {
        /// The cap on held updates.
        cap: usize,
        /// The quorum.
        min_clients: usize,
    },
    /// An asynchronous buffer must hold at least one update.
    #[error("buffer_size must be at least 1")]
    ZeroBuffer,
    /// Asynchronous aggregation folds updates as they come; a robust strategy needs them all.
    #[error("strategy {0} holds every update of a round; asynchronous mode needs a mean-based strategy")]
    AsyncRobust(crate::aggregate::StrategyKind),
}

impl CoordinatorConfig {
    /// Checks the values' ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_clients == 0 {
            return Err(ConfigError::ZeroQuorum);
        }
        if !(self.sample_fraction > 0.0 && self.sample_fraction <= 1.0) {
            return Err(ConfigError::SampleFraction(self.sample_fraction));
        }
        if self.round_deadline.is_zero() {
            return Err(ConfigError::ZeroDeadline);
        }
        self.aggregation.validate()?;
        if let Mode::Async { buffer_size, .. } = self.mode {
            if buffer_size == 0 {
                return Err(ConfigError::ZeroBuffer);
            }
            if self.aggregation.kind.is_robust() {
                return Err(ConfigError::AsyncRobust(self.aggregation.kind));
            }
        }
        let cap = self.aggregation.max_held_updates;
        if self.mode == Mode::Sync && self.aggregation.kind.is_robust() && cap < self.min_clients {
            return Err(ConfigError::HeldCapBelowQuorum { cap, min_clients: self.min_clients });
        }
        let durations = [
            ("round_deadline", self.round_deadline),
            ("round_interval", self.round_interval),
            ("join_timeout", self.join_timeout),
        ];
        match durations.into_iter().find(|(_, duration)| *duration > MAX_DURATION) {
            Some((name, _)) => Err(ConfigError::TooLong(name)),
            None => Ok(()),
        }
    }

    /// Number of clients to sample among `joined` (0 if fewer than the quorum are joined).
    pub fn sample_size(&self, joined: usize) -> usize {
        if joined < self.min_clients {
            return 0;
        }
        let wanted = (self.sample_fraction * joined as f64).ceil() as usize;
        wanted.clamp(self.min_clients, joined)
    }
}
