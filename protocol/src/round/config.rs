//! Configuration of the coordinator's rounds.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::aggregate::{StrategyConfig, StrategyError};
use crate::compress::Compression;
use crate::model::ModelSpec;
use crate::secagg::{ParamsError, SecAggParams};
use crate::wire::{CohortPrivacy, UpdateRules};

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
    /// How clients compress their updates.
    pub compression: Compression,
    /// Client-level differential privacy, if any.
    pub privacy: Option<PrivacyConfig>,
    /// Secure aggregation, if any.
    pub secure: Option<SecureConfig>,
    /// Secret key of central DP noise and of secure-aggregation session ids; central DP and
    /// secure aggregation are refused without one. The binary draws it from the operating
    /// system's generator at every start.
    pub noise_key: Option<crate::privacy::NoiseKey>,
    /// Most samples one update may claim (clients are told, in [`UpdateRules`]); a larger
    /// claim is refused. `None`: [`CoordinatorConfig::sample_cap`]'s default from the round
    /// timing.
    pub max_samples_per_update: Option<u64>,
    /// Over-selection: a synchronous round commits as soon as this many updates are accepted,
    /// without waiting for the other sampled clients (stragglers, or peers that never answer).
    /// `None`: it waits for every sampled client, up to the deadline. At least `min_clients`.
    pub round_goal: Option<usize>,
    /// Time an identity whose session was closed for misbehaviour (a protocol violation, a
    /// missed frame deadline, a send queue left to fill, unreadable or unasked-for data) may not
    /// join again. Zero: no penalty.
    pub misbehaviour_penalty: Duration,
    /// Live sessions one identity (client certificate, else auth token) may hold; a newer
    /// session closes the oldest. 0: no limit (a fleet sharing one token).
    pub sessions_per_identity: usize,
    /// Fine-tune a pruned model: weights that are zero in the global model stay zero
    /// (clients are told in [`UpdateRules::keep_pruned`]; every commit zeroes them again,
    /// whatever the server optimiser or the noise did).
    pub keep_pruned: bool,
    /// Where this coordinator stands in a tree of coordinators.
    pub hierarchy: Hierarchy,
}

/// Where a coordinator stands in a tree of coordinators (`--parent`, `--aggregator-tokens`).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Hierarchy {
    /// Clients only: every peer is a client.
    #[default]
    Flat,
    /// The root of a tree: peers joining with one of these tokens are edge aggregators, whose
    /// [`CohortUpdate`](crate::wire::ClientMessage::CohortUpdate)s are folded as the updates of
    /// every client behind them; other peers are clients.
    Root {
        /// The aggregators' tokens.
        aggregator_tokens: BTreeSet<String>,
        /// Answer a client's `Join` with a redirect to the aggregator serving the fewest
        /// redirected clients, among those that announced where they serve (clients join
        /// here while none has).
        redirect_clients: bool,
    },
    /// An edge aggregator: a coordinator to its clients and a client of its parent. It starts
    /// no round of its own: each is started by the parent's request
    /// ([`Coordinator::handle_parent_request`](crate::round::Coordinator::handle_parent_request)),
    /// on the parent's model, and ends with the cohort's aggregate for the parent instead of a
    /// new model.
    Edge {
        /// The root's differential privacy, from its rules: this aggregator samples, clips and
        /// sums its cohort for it (the root adds the noise).
        privacy: Option<CohortPrivacy>,
    },
}

impl Hierarchy {
    /// Whether this coordinator is an edge aggregator.
    pub fn is_edge(&self) -> bool {
        matches!(self, Self::Edge { .. })
    }

    /// The root's differential privacy an edge aggregator applies to its cohort.
    pub fn edge_privacy(&self) -> Option<CohortPrivacy> {
        match self {
            Self::Edge { privacy } => *privacy,
            Self::Flat | Self::Root { .. } => None,
        }
    }
}

/// Samples per second a device is assumed to learn at most, for the default sample cap.
pub const SANE_SAMPLES_PER_SECOND: u64 = 100;

impl CoordinatorConfig {
    /// The cap on the samples one update may claim: `max_samples_per_update`, or by default
    /// [`SANE_SAMPLES_PER_SECOND`] × (round interval + round deadline), at least 1,000.
    /// Clients are told it and claim at most this many; a larger claim can only come from a
    /// peer lying about its weight and is refused, so one peer cannot take the model over
    /// with a huge claim and the sum cannot overflow. A peer claiming exactly the cap still
    /// weighs as much as the cap allows: sample-weighted aggregation trusts the counts it is
    /// given (the robust strategies ignore them).
    pub fn sample_cap(&self) -> u64 {
        self.max_samples_per_update.unwrap_or_else(|| {
            let seconds = (self.round_interval + self.round_deadline).as_secs_f64();
            ((SANE_SAMPLES_PER_SECOND as f64 * seconds).ceil() as u64).max(1000)
        })
    }
}

/// Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): every update is
/// clipped to `clip` and weighs the same; Gaussian noise of standard deviation
/// `noise_multiplier · clip` is added to the sum, by the coordinator (central) or split over
/// the clients (distributed, for secure aggregation: each adds `z·C/√min_clients`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyConfig {
    /// Noise multiplier z.
    pub noise_multiplier: f64,
    /// L2 clipping bound C of each update.
    pub clip: f32,
    /// Where the noise is added.
    pub placement: NoisePlacement,
    /// δ of the (ε, δ) reported after each round.
    pub delta: f64,
    /// Adaptive clipping: `clip` is only the initial bound, which then tracks a quantile of
    /// the update norms (central noise only). `None`: the bound stays `clip`.
    pub adaptive: Option<AdaptiveClipping>,
}

/// Adaptive clipping (Andrew et al., 2021; see [`crate::privacy::AdaptiveClip`]): the
/// coordinator counts the updates that fit under the round's bound, noises the count (its
/// privacy cost is folded into the same noise multiplier z: the deltas get a little more
/// noise) and steps the bound geometrically towards the target quantile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClipping {
    /// γ: the fraction of updates meant to fit under the bound (0.5: the median norm).
    pub target_quantile: f64,
    /// η_C of the step `C ← C·exp(−η_C·(b̄ − γ))`.
    pub learning_rate: f64,
}

/// Where differential-privacy noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoisePlacement {
    /// The coordinator adds it to the sum of clipped updates.
    Central,
    /// Each client adds its share before sending (needed with secure aggregation).
    Distributed,
}

/// Secure aggregation (SecAgg+): every sampled client masks its clipped update with `neighbours`
/// others; a dropped client's masks are removed when `threshold` of its neighbours survive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SecureConfig {
    /// Neighbours k of each client; 0 means all the cohort (the original protocol).
    pub neighbours: usize,
    /// Shares t needed to unmask; 0 means the smallest value above half the degree.
    pub threshold: usize,
    /// Every coordinate is clipped to [−c, c] before fixed-point encoding.
    pub clip_range: f32,
    /// Fixed-point precision: values are scaled by 2^scale_bits.
    pub scale_bits: u32,
    /// How long each phase of the protocol waits for answers (the masked-input phase waits
    /// until the round deadline: learners need time).
    pub phase_timeout: Duration,
}

impl SecureConfig {
    /// The session parameters for a cohort of `cohort` clients.
    pub fn params(&self, cohort: usize) -> SecAggParams {
        let k =
            if self.neighbours == 0 { cohort.saturating_sub(1) } else { self.neighbours.min(cohort.saturating_sub(1)) };
        let base =
            SecAggParams { neighbours: k, threshold: 0, clip_range: self.clip_range, scale_bits: self.scale_bits };
        let threshold = if self.threshold == 0 { base.degree(cohort) / 2 + 1 } else { self.threshold };
        SecAggParams { threshold, ..base }
    }
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
            compression: Compression::None,
            privacy: None,
            secure: None,
            noise_key: None,
            max_samples_per_update: None,
            sessions_per_identity: 1,
            round_goal: None,
            misbehaviour_penalty: Duration::from_secs(60),
            keep_pruned: false,
            hierarchy: Hierarchy::Flat,
        }
    }
}

/// Why a [`CoordinatorConfig`] was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A quorum of zero would commit empty rounds.
    #[error("min_clients must be at least 1")]
    ZeroQuorum,
    /// A round goal below the quorum could never commit at the goal.
    #[error("round goal {goal} is below the quorum of {min_clients}")]
    GoalBelowQuorum {
        /// The goal.
        goal: usize,
        /// The quorum.
        min_clients: usize,
    },
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
    /// The secure-aggregation parameters give no privacy or cannot work.
    #[error("secure aggregation: {0}")]
    Secure(#[from] ParamsError),
    /// A combination that cannot work, with the reason.
    #[error("{0}")]
    Incompatible(&'static str),
    /// The differential-privacy settings are out of range.
    #[error(
        "differential privacy: noise multiplier must be ≥ 0 and finite, clip > 0, δ in (0, 1), an adaptive \
         clip's quantile in [0, 1] and its learning rate ≥ 0"
    )]
    Privacy,
    /// The sample cap is zero: every update would weigh nothing.
    #[error("max_samples_per_update must be at least 1")]
    ZeroSampleCap,
}

impl CoordinatorConfig {
    /// Checks the values' ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_clients == 0 {
            return Err(ConfigError::ZeroQuorum);
        }
        if let Some(goal) = self.round_goal.filter(|goal| *goal < self.min_clients) {
            return Err(ConfigError::GoalBelowQuorum { goal, min_clients: self.min_clients });
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
        if self.max_samples_per_update == Some(0) {
            return Err(ConfigError::ZeroSampleCap);
        }
        self.validate_privacy_and_security()?;
        self.validate_hierarchy()?;
        let cap = self.aggregation.max_held_updates;
        if self.mode == Mode::Sync && self.aggregation.kind.is_robust() && cap < self.min_clients {
            return Err(ConfigError::HeldCapBelowQuorum { cap, min_clients: self.min_clients });
        }
        let durations = [
            ("round_deadline", self.round_deadline),
            ("round_interval", self.round_interval),
            ("join_timeout", self.join_timeout),
            ("misbehaviour_penalty", self.misbehaviour_penalty),
        ];
        match durations.into_iter().find(|(_, duration)| *duration > MAX_DURATION) {
            Some((name, _)) => Err(ConfigError::TooLong(name)),
            None => Ok(()),
        }
    }

    /// What a tree of coordinators cannot do: the root folds cohorts' aggregates, never
    /// single updates, and an edge aggregator releases nothing itself.
    fn validate_hierarchy(&self) -> Result<(), ConfigError> {
        let refusal = match &self.hierarchy {
            Hierarchy::Flat => None,
            Hierarchy::Root { .. } if self.aggregation.kind.is_robust() => Some(
                "a robust strategy needs each client's update, and an edge aggregator forwards its cohort's \
                 aggregate: run the robust strategy on the aggregators (they hold the updates), FedAvg at the root",
            ),
            Hierarchy::Root { .. } if self.secure.is_some() => Some(
                "secure aggregation runs per edge cohort: turn it on at the aggregators; the root then sees \
                 each cohort's sum, never a single client's update",
            ),
            Hierarchy::Root { .. } if self.privacy.is_some_and(|p| p.placement != NoisePlacement::Central) => Some(
                "in a tree the root adds the noise once to the sum of its cohorts: use central noise \
                 (--dp-noise central); the aggregators sample and clip for it",
            ),
            Hierarchy::Root { .. } if self.privacy.is_some_and(|p| p.adaptive.is_some()) => Some(
                "adaptive clipping needs the count of updates under each round's bound, and behind an \
                 aggregator the root sees only cohort sums: use a fixed --dp-clip in a tree",
            ),
            Hierarchy::Root { .. } if self.mode != Mode::Sync => {
                Some("an edge aggregator answers synchronous rounds only: use --mode sync at the root")
            }
            Hierarchy::Root { .. } if self.aggregation.clip_norm.is_some() => {
                Some("a clip norm bounds single updates; a cohort's aggregate is not one: clip at the aggregators")
            }
            Hierarchy::Root { .. } => None,
            Hierarchy::Edge { .. } if self.mode != Mode::Sync => {
                Some("an edge aggregator answers its parent's synchronous rounds: use --mode sync")
            }
            Hierarchy::Edge { .. } if self.privacy.is_some() => Some(
                "an edge aggregator takes its differential-privacy settings from its root's rules: \
                 give the --dp-* options to the root",
            ),
            Hierarchy::Edge { privacy: Some(privacy) } if !privacy.is_valid() => {
                Some("the root's differential privacy asks for a clip or sampling rate out of range")
            }
            Hierarchy::Edge { privacy: Some(_) } if self.secure.is_some() => Some(
                "under the root's differential privacy an edge clips every update, and secure aggregation \
                 shows it only the sum: run the aggregators without --secure-aggregation",
            ),
            Hierarchy::Edge { .. } => None,
        };
        refusal.map_or(Ok(()), |reason| Err(ConfigError::Incompatible(reason)))
    }

    fn validate_privacy_and_security(&self) -> Result<(), ConfigError> {
        if let Some(p) = &self.privacy
            && !(p.noise_multiplier.is_finite()
                && p.noise_multiplier >= 0.0
                && p.clip.is_finite()
                && p.clip > 0.0
                && p.delta > 0.0
                && p.delta < 1.0
                && p.adaptive.is_none_or(|a| {
                    (0.0..=1.0).contains(&a.target_quantile) && a.learning_rate.is_finite() && a.learning_rate >= 0.0
                }))
        {
            return Err(ConfigError::Privacy);
        }
        if self.privacy.is_some_and(|p| p.adaptive.is_some() && p.placement == NoisePlacement::Distributed) {
            return Err(ConfigError::Incompatible(
                "adaptive clipping needs each update's norm, and with distributed noise the coordinator sees \
                 only a secure sum: use a fixed --dp-clip, or central noise without secure aggregation",
            ));
        }
        if self.privacy.is_some() && matches!(self.mode, Mode::Async { .. }) {
            return Err(ConfigError::Incompatible(
                "differential privacy with --mode async is refused: FedBuff applies a buffer of \
                 staleness-weighted updates whenever K arrive, so neither the noise per release nor \
                 the sampling rate of the RDP accountant is defined; use --mode sync",
            ));
        }
        if self.privacy.is_some_and(|p| p.placement == NoisePlacement::Central) && self.noise_key.is_none() {
            return Err(ConfigError::Incompatible(
                "central DP needs a secret noise key (CoordinatorConfig::noise_key, drawn from the OS \
                 generator): noise from a public seed can be regenerated and subtracted",
            ));
        }
        let Some(secure) = &self.secure else {
            if self.privacy.is_some_and(|p| p.placement == NoisePlacement::Distributed) {
                return Err(ConfigError::Incompatible(
                    "distributed DP noise protects only a secure sum; use central noise without secure aggregation",
                ));
            }
            return Ok(());
        };
        if self.mode != Mode::Sync {
            return Err(ConfigError::Incompatible(
                "secure aggregation needs a cohort fixed before anyone masks (keys, shares, unmasking), while \
                 asynchronous mode weighs each update by a staleness known only when it arrives: use --mode sync",
            ));
        }
        if self.aggregation.kind.is_robust() {
            return Err(ConfigError::Incompatible(
                "robust strategies need each update; secure aggregation reveals only the sum: use a mean-based strategy",
            ));
        }
        if self.aggregation.step_size == crate::aggregate::StepSize::FedExp {
            return Err(ConfigError::Incompatible(
                "FedExP's step needs each update's norm; secure aggregation reveals only the sum: use \
                 --server-step participants or fixed",
            ));
        }
        if self.compression != Compression::None {
            return Err(ConfigError::Incompatible(
                "pairwise masks cancel only on identical, full-length vectors: secure aggregation already sends \
                 fixed-point words, and int8 or top-k compression cannot be masked",
            ));
        }
        if self.privacy.is_some_and(|p| p.placement == NoisePlacement::Central) {
            return Err(ConfigError::Incompatible(
                "with secure aggregation the coordinator sees no single update: use distributed DP noise",
            ));
        }
        // Explicit neighbours/threshold are checked on the smallest cohort a round can have.
        let cohort = self.min_clients.max(2);
        if secure.neighbours != 0 || secure.threshold != 0 {
            let params = secure.params(cohort.max(secure.neighbours + 1));
            params.validate(cohort.max(secure.neighbours + 1))?;
        } else {
            secure.params(cohort).validate(cohort)?;
        }
        if self.noise_key.is_none() {
            return Err(ConfigError::Incompatible(
                "secure aggregation needs a secret key (CoordinatorConfig::noise_key, drawn from the OS generator): \
                 session ids derived from the public seed let anyone predict who masks with whom",
            ));
        }
        Ok(())
    }

    /// Whether clients send the feature statistics of their rows with each update: in plain
    /// updates, or masked with the delta under secure aggregation (the coordinator learns
    /// only the survivors' sum); never under differential privacy, whose guarantees a
    /// client's statistics would bypass.
    pub fn takes_feature_moments(&self) -> bool {
        self.privacy.is_none() && self.hierarchy.edge_privacy().is_none()
    }

    /// Words of feature statistics a masked input of `spec` carries after the delta: under
    /// secure aggregation where clients send statistics (an HBP model's inputs), else none.
    pub fn masked_statistics_words(&self, spec: &ModelSpec) -> usize {
        match (&self.secure, spec.hbp()) {
            (Some(_), Some(hbp)) if self.takes_feature_moments() => crate::model::moments::secure_words(hbp.inputs),
            _ => 0,
        }
    }

    /// What clients are told to do with their updates.
    pub fn update_rules(&self) -> UpdateRules {
        let (clip_norm, noise_std) = match &self.privacy {
            Some(p) if p.placement == NoisePlacement::Distributed => {
                let n = self.min_clients.max(1) as f64;
                (Some(p.clip), Some((p.noise_multiplier * f64::from(p.clip) / n.sqrt()) as f32))
            }
            // Central DP: the coordinator clips; a client-side clip would only hide its norm.
            _ => (None, None),
        };
        let clip_norm = match &self.secure {
            Some(_) => clip_norm.or(self.aggregation.clip_norm.map(|c| c as f32)),
            None => clip_norm,
        };
        UpdateRules {
            clip_norm,
            noise_std,
            compression: self.compression,
            secure: self.secure.is_some(),
            max_samples: Some(self.sample_cap()),
            feature_moments: self.takes_feature_moments(),
            keep_pruned: self.keep_pruned,
            cohort_privacy: self.cohort_privacy(),
        }
    }

    /// What a root under differential privacy asks of its edge aggregators.
    fn cohort_privacy(&self) -> Option<CohortPrivacy> {
        match (&self.hierarchy, &self.privacy) {
            (Hierarchy::Root { .. }, Some(p)) => {
                Some(CohortPrivacy { clip: p.clip, sample_rate: self.sample_fraction })
            }
            _ => None,
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
