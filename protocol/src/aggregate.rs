//! Aggregation of client updates into the next global model.
//!
//! An [`Aggregator`] is told the round's base model ([`Aggregator::begin`]), folds each
//! accepted update in as it arrives ([`Aggregator::fold`]) and produces the next global
//! parameters once the round closes ([`Aggregator::finish`]).
//!
//! Every strategy is a [`Federated`] aggregator made of three parts:
//!
//! - the update hygiene ([`Hygiene`]): a delta with NaN/∞ or the wrong layout is refused, its
//!   L2 norm is optionally clipped, and a norm above an outlier bound is flagged in the
//!   returned [`Folded`] (the coordinator logs it) without refusing the update;
//! - a [`Reducer`] turning the round's deltas into its pseudo-gradient Δ: the streaming,
//!   sample-weighted [`WeightedMean`] (memory O(model) whatever the number of clients), or a
//!   robust reducer holding every delta of the round up to a cap ([`Median`],
//!   [`TrimmedMean`], [`Krum`]; memory `cap × model × 4` bytes);
//! - a [`ServerOptimizer`] (Reddi et al., "Adaptive Federated Optimization", ICLR 2021)
//!   turning Δ into the step `d`, applied as `x ← x + η_s·d`: [`Sgd`] (FedAvg), [`Momentum`]
//!   (FedAvgM), [`Adagrad`], [`Adam`], [`Yogi`]. Their state (m, v) persists across rounds;
//! - a [`StepSize`]: the factor on η_s each round (fixed, the number of participants, or
//!   FedExP's adaptive extrapolation).
//!
//! [`StrategyConfig`] names a strategy and its options and builds the aggregator.
//! [`Buffered`] is the sans-IO core of asynchronous buffered aggregation (FedBuff), driven by
//! the round state machine in asynchronous mode; [`StrategyConfig::build_buffered`] makes one.

use crate::params::{Fingerprint, ParameterError, ParameterVector};
use crate::wire::Cohort;

mod buffered;
mod federated;
mod krum;
mod mean;
mod optimizer;
mod robust;
mod step_size;
mod strategy;

pub use buffered::{Buffered, staleness_weight};
pub use federated::{FedAvg, Federated, Folded, Hygiene};
pub use krum::Krum;
pub use mean::WeightedMean;
pub use optimizer::{Adagrad, Adam, Momentum, ServerOptimizer, Sgd, Yogi};
pub use robust::{HeldUpdates, Median, TrimmedMean};
pub use step_size::{FEDEXP_EPSILON, StepSize, fedexp};
pub use strategy::{ServerStep, StrategyConfig, StrategyError, StrategyKind};

/// Why an update or a round's aggregate was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AggregateError {
    /// `fold` or `finish` was called before `begin`.
    #[error("no round has begun")]
    NotStarted,
    /// The update claims to rest on zero samples, so it has no weight.
    #[error("update has zero samples")]
    ZeroSamples,
    /// The delta does not fit the base model (version, layout, length) or holds NaN/∞.
    #[error("update refused: {0}")]
    Parameters(#[from] ParameterError),
    /// The total sample count of the round overflowed `u64`.
    #[error("total sample count overflows")]
    SampleOverflow,
    /// A cohort's figures are impossible (a negative or non-finite mean squared norm), or
    /// lack what the root's differential privacy needs (a finite expected size).
    #[error(
        "cohort figures refused: the mean squared norm must be finite and not negative, and under differential \
         privacy the expected cohort size finite and not negative, their sum positive"
    )]
    BadCohort,
    /// `finish` was called with no update folded in.
    #[error("no update to aggregate")]
    Empty,
    /// `finish` was given another base than `begin`.
    #[error("finish was given another base model than begin")]
    BaseChanged,
    /// The aggregate itself is not finite (the updates were finite but too large).
    #[error("aggregated parameter {index} is not finite")]
    ResultNotFinite {
        /// Position of the first offending value.
        index: usize,
    },
    /// A robust strategy already holds as many updates as it may this round.
    #[error("this round already holds {cap} updates, the most a robust strategy keeps (max_held_updates)")]
    HeldUpdatesFull {
        /// The cap.
        cap: usize,
    },
    /// Krum needs more updates than `2f + 2` to score them.
    #[error("krum with {byzantine} Byzantine clients needs more than {} updates, got {updates}", 2 * byzantine + 2)]
    TooFewForKrum {
        /// Updates of the round.
        updates: usize,
        /// The assumed number of Byzantine clients f.
        byzantine: usize,
    },
    /// An asynchronous buffer already holds its K updates; apply it first.
    #[error("the buffer already holds its {size} updates")]
    BufferFull {
        /// K.
        size: usize,
    },
    /// An update rests on a model version older than the staleness bound allows.
    #[error("update is {staleness} versions stale, at most {max} accepted")]
    TooStale {
        /// Current version − base version.
        staleness: u64,
        /// The bound.
        max: u64,
    },
    /// An update claims to rest on a model version that does not exist yet.
    #[error("update rests on model version {base}, newer than the current {current}")]
    FutureBase {
        /// The version named by the update.
        base: u64,
        /// The current version.
        current: u64,
    },
    /// Multi-Krum was asked to average more updates than `n − f`.
    #[error("multi-krum averages {select} updates, but only {updates} − {byzantine} may be selected")]
    TooManyToSelect {
        /// Updates to average (m).
        select: usize,
        /// Updates of the round.
        updates: usize,
        /// The assumed number of Byzantine clients f.
        byzantine: usize,
    },
}

/// How a round is released under client-level differential privacy, set by the
/// coordinator's update pipeline before the round begins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpRelease {
    /// The mean is the sum of the (weight-1) updates over this public denominator (the
    /// expected cohort size), not over the number that arrived; a participant-scaled step
    /// counts it as the participants. `None` at the root of a tree: the sum of the expected
    /// sizes its edge aggregators report with their cohorts ([`crate::wire::Cohort::expected`]).
    pub denominator: Option<f64>,
    /// The round's clipping bound of each update, replacing the strategy's; `None` keeps the
    /// strategy's (distributed noise: the clients clipped).
    pub clip_norm: Option<f64>,
    /// Standard deviation of the Gaussian noise on the sum, replacing the strategy's; `None`
    /// adds none (distributed noise: the clients added it).
    pub noise_std: Option<f64>,
}

/// A strategy turning the updates of one round into the next global model.
pub trait Aggregator {
    /// Starts a round on `base`, discarding whatever was folded before.
    fn begin(&mut self, base: &ParameterVector);

    /// Folds one client's `delta` (its parameters minus `base`), worth `samples` samples.
    ///
    /// A refused update leaves the aggregate unchanged. An accepted one returns what the
    /// hygiene found (norm, clipping, outlier flag).
    fn fold(&mut self, delta: &ParameterVector, samples: u64) -> Result<Folded, AggregateError>;

    /// Folds the mean of `participants` clients' deltas (secure aggregation reveals only
    /// that), worth `samples`; a per-participant step size counts them all.
    fn fold_mean(
        &mut self,
        mean: &ParameterVector,
        samples: u64,
        participants: usize,
    ) -> Result<Folded, AggregateError> {
        let _ = participants;
        self.fold(mean, samples)
    }

    /// Folds an edge aggregator's cohort `aggregate` (see [`Cohort`]), worth `samples`: it
    /// stands for `cohort.participants` updates, whose weighted sum it carries. No clip or
    /// outlier bound applies to it (they bound single updates).
    fn fold_cohort(
        &mut self,
        aggregate: &ParameterVector,
        samples: u64,
        cohort: Cohort,
    ) -> Result<Folded, AggregateError>;

    /// An edge aggregator's round end: the reduction of what was folded (the cohort's
    /// aggregate, before any server step, noise or optimiser) and what stands behind it; the
    /// aggregator must be begun again afterwards.
    fn finish_cohort(&mut self) -> Result<(Vec<f32>, Cohort), AggregateError>;

    /// Differential privacy: how the next rounds are released (`None`: the ordinary mean
    /// with the strategy's own hygiene). See [`DpRelease`]. Strategies that take no mean
    /// ignore the denominator.
    fn set_release(&mut self, release: Option<DpRelease>) {
        let _ = release;
    }

    /// Number of updates folded since `begin`.
    fn updates(&self) -> usize;

    /// Clients behind the updates folded since `begin` (an edge's cohort counts all of its
    /// clients, a secure round's mean all its survivors).
    fn participants(&self) -> usize;

    /// Total samples of the updates folded since `begin`.
    fn samples(&self) -> u64;

    /// The next global parameters; the aggregator must be begun again afterwards.
    fn finish(&mut self, base: &ParameterVector) -> Result<ParameterVector, AggregateError>;
}

/// What a round's base model pins down about acceptable deltas.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    fingerprint: Fingerprint,
    len: usize,
}

/// Turns the checked deltas of one round into its pseudo-gradient Δ.
pub trait Reducer {
    /// Starts a round on deltas of `len` values, discarding what was added before.
    fn begin(&mut self, len: usize);

    /// Takes one checked, finite delta of the begun length, to be multiplied by `scale`
    /// (1 unless it was clipped), worth `samples` (> 0) samples. A refusal changes nothing.
    fn add(&mut self, values: &[f32], scale: f64, samples: u64) -> Result<(), AggregateError>;

    /// The round's pseudo-gradient Δ (at least one delta was added); empties the reducer.
    fn reduce(&mut self) -> Result<Vec<f64>, AggregateError>;
}

#[cfg(test)]
mod tests;
