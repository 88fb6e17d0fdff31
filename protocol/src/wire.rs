//! The wire protocol between the coordinator and its client daemons.
//!
//! A QUIC connection negotiated with [`ALPN`] carries one bidirectional stream of
//! length-prefixed frames (see [`framing`]); each frame holds exactly one bincode-encoded
//! [`ClientMessage`] (client → coordinator) or [`CoordinatorMessage`] (coordinator →
//! client).
//!
//! # Invariant: no raw data crosses the wire
//!
//! The only things a client ever reports about its local data are a model delta
//! ([`Update::delta`]), the number of samples behind it and two aggregate counters
//! ([`LocalMetrics`]). No sample, feature, label or per-sample statistic is carried by any
//! message, and new messages must keep it that way.
//!
//! # Versioning
//!
//! [`ClientMessage::Join`] and [`CoordinatorMessage::Welcome`] both carry
//! [`PROTOCOL_VERSION`]; a coordinator answers a `Join` of another version with
//! [`ErrorCode::UnsupportedVersion`] and closes the connection. The variant order of both
//! enums is part of the wire format: `Join` is variant 0 forever, so every version can read
//! another version's `Join` far enough to refuse it cleanly. New variants go at the end.

pub mod bounded;
pub mod framing;
mod split;

pub use split::encode_client_frame;

use serde::{Deserialize, Serialize};

use crate::compress::{CompressedDelta, Compression};
use crate::model::{FeatureMoments, ModelSpec};
use crate::params::{Fingerprint, ParameterVector};
use crate::secagg;

/// Version of the message set below; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 9;

/// QUIC application protocol name (ALPN) of this protocol version.
pub const ALPN: &[u8] = b"flotilla/1";

/// A message from a client daemon to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// First message of every connection: asks to take part in training.
    Join {
        /// [`PROTOCOL_VERSION`] of the client.
        protocol_version: u16,
        /// Human-readable name of the client, for logs only.
        client_name: String,
        /// Shared secret, when the coordinator requires one.
        auth_token: Option<String>,
    },
    /// The client's answer to a [`CoordinatorMessage::UpdateRequest`].
    Update(Update),
    /// Keeps an otherwise idle connection alive; carries nothing.
    Heartbeat,
    /// The client reports a problem with something the coordinator sent.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The client leaves; the connection closes after this message.
    Goodbye {
        /// Human-readable reason.
        reason: String,
    },
    /// The answer to an `UpdateRequest` when the [`UpdateRules`] ask for compression.
    CompressedUpdate(CompressedUpdate),
    /// A secure-aggregation message of `round` (the update itself travels masked, in
    /// [`secagg::ClientMessage::MaskedInput`]).
    SecAgg {
        /// The round whose session this belongs to.
        round: u64,
        /// The message.
        message: secagg::ClientMessage,
    },
    /// An edge aggregator's answer to an `UpdateRequest`: its cohort's aggregate (the
    /// sample-weighted mean of its clients' deltas, `metrics` summed over them) and what
    /// the parent needs to fold it as those clients' updates. Accepted only from a peer
    /// admitted as an aggregator.
    CohortUpdate {
        /// The cohort's aggregate, as one update weighing `metrics.samples`.
        update: Update,
        /// Who and what is behind it.
        cohort: Cohort,
    },
    /// An edge aggregator announces where clients reach it, for the root's redirects.
    /// Accepted only from a peer admitted as an aggregator.
    Serving(Endpoint),
}

/// Where clients reach a coordinator: its address and the name its certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `HOST:PORT` (UDP).
    pub address: String,
    /// The name its certificate must carry.
    pub server_name: String,
}

impl Endpoint {
    /// Longest address or name accepted, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Whether both parts are non-empty, at most [`Endpoint::MAX_LEN`] bytes and free of
    /// control characters.
    pub fn is_valid(&self) -> bool {
        [&self.address, &self.server_name]
            .iter()
            .all(|part| !part.is_empty() && part.len() <= Self::MAX_LEN && !part.chars().any(char::is_control))
    }
}

/// What an edge aggregator's update stands for, beyond its weight (`metrics.samples`, the
/// cohort's `Σ nᵢ`): the parent folds `Σ nᵢ·Δ̄` exactly as it would have folded each `nᵢ·Δᵢ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    /// Client updates behind the aggregate (the parent's participant count, and its server
    /// step, count them all).
    pub participants: u64,
    /// `Σ nᵢ·‖Δᵢ‖² / Σ nᵢ` over the cohort's updates as folded: FedExP's numerator, per
    /// sample (under secure aggregation the edge sees only the sum: `‖Δ̄‖²`).
    pub mean_sq_norm: f64,
    /// Under the root's differential privacy ([`CohortPrivacy`]): the cohort's expected size
    /// `q·N` (its `N` joined clients, each sampled at rate `q`), the edge's share of the
    /// root's public denominator. `None` without differential privacy.
    pub expected: Option<f64>,
}

/// What a root running client-level differential privacy asks of its edge aggregators
/// (sent in its [`UpdateRules`]; a client that is not an aggregator ignores it): sample each
/// client with probability `sample_rate` on secret coins, clip every update to `clip` and
/// weigh each the same, and forward the unnoised sum with the cohort's expected size. The
/// root adds the Gaussian noise once to the sum of the cohorts and accounts the release.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CohortPrivacy {
    /// L2 bound C of each client update.
    pub clip: f32,
    /// Poisson sampling rate q of each client per round.
    pub sample_rate: f64,
}

impl CohortPrivacy {
    /// Whether `clip` is positive and finite and `sample_rate` in (0, 1].
    pub fn is_valid(&self) -> bool {
        self.clip.is_finite() && self.clip > 0.0 && self.sample_rate > 0.0 && self.sample_rate <= 1.0
    }
}

impl ClientMessage {
    /// Variant index of [`ClientMessage::Join`] on the wire.
    pub const JOIN_VARIANT: u32 = 0;
    /// Variant index of [`ClientMessage::Update`] on the wire.
    pub const UPDATE_VARIANT: u32 = 1;
    /// Variant index of [`ClientMessage::SecAgg`] on the wire.
    pub const SECAGG_VARIANT: u32 = 6;
    /// Variant index of [`ClientMessage::CohortUpdate`] on the wire.
    pub const COHORT_VARIANT: u32 = 7;

    /// Whether a message of this variant index may come before `Join` (`Join`, `Heartbeat`,
    /// `Goodbye`).
    pub fn allowed_before_join(variant: u32) -> bool {
        matches!(variant, 0 | 2 | 4)
    }
}

/// How clients must prepare their updates; sent after `Welcome`, before the first model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRules {
    /// Clip each delta to this L2 norm before anything else (client-level DP, SecAgg range).
    pub clip_norm: Option<f32>,
    /// Standard deviation of the Gaussian noise each client adds to its clipped delta
    /// (distributed differential privacy; the sum over n clients carries √n times it).
    pub noise_std: Option<f32>,
    /// How deltas are compressed on the wire.
    pub compression: Compression,
    /// Whether rounds run secure aggregation: the delta is sent masked in the round's
    /// `SecAgg` session, never as an `Update`.
    pub secure: bool,
    /// Most samples one update may claim: a client claims at most this many (its metrics
    /// scaled down alike); the coordinator refuses a larger claim.
    pub max_samples: Option<u64>,
    /// Whether the coordinator takes the feature statistics of the rows behind each update
    /// ([`FeatureMoments`]; in plain updates, or masked with the delta under secure
    /// aggregation; never under differential privacy).
    pub feature_moments: bool,
    /// Fine-tuning a pruned model: every weight that is zero in the global model stays zero,
    /// so a client zeroes those coordinates of each update it sends
    /// ([`crate::params::Layout::keep_pruned`]).
    pub keep_pruned: bool,
    /// A root's differential privacy, for its edge aggregators to apply to their cohorts.
    pub cohort_privacy: Option<CohortPrivacy>,
}

impl Default for UpdateRules {
    fn default() -> Self {
        Self {
            clip_norm: None,
            noise_std: None,
            compression: Compression::None,
            secure: false,
            max_samples: None,
            feature_moments: false,
            keep_pruned: false,
            cohort_privacy: None,
        }
    }
}

/// What a learner contributes to a round: the one type from the learner to the wire (the
/// client's session wraps it in an [`Update`], compressed or masked as the rules ask).
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Local parameters minus those of the requested model version.
    pub delta: ParameterVector,
    /// Prequential counters over the samples behind the delta; `metrics.samples` is also
    /// its weight in sample-weighted aggregation (at least 1).
    pub metrics: LocalMetrics,
    /// Statistics of the raw features of those samples, for the served model's standardiser
    /// (sent only where the rules take them).
    pub moments: Option<FeatureMoments>,
    /// Set by an edge aggregator: the contribution is its cohort's aggregate (sent as a
    /// [`ClientMessage::CohortUpdate`], never clipped, noised, masked or compressed again).
    pub cohort: Option<Cohort>,
}

/// A client's contribution to one round, compressed (see [`crate::compress`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressedUpdate {
    /// The round this update answers.
    pub round: u64,
    /// The global model version the delta was computed from.
    pub base_version: u64,
    /// [`crate::params::PARAMETER_FORMAT_VERSION`] of the writer.
    pub format_version: u16,
    /// Fingerprint of the delta's layout.
    pub fingerprint: Fingerprint,
    /// The compressed delta.
    pub delta: CompressedDelta,
    /// Prequential counters over the samples behind it (`samples` is its weight).
    pub metrics: LocalMetrics,
    /// Statistics of the raw features behind it, where the rules take them.
    pub moments: Option<FeatureMoments>,
}

/// A message from the coordinator to a client daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// Accepts a [`ClientMessage::Join`] and announces the model being trained.
    Welcome {
        /// Identifier the coordinator gave this client (for logs on both sides).
        client_id: u64,
        /// [`PROTOCOL_VERSION`] of the coordinator.
        protocol_version: u16,
        /// Shape and hyper-parameters of the model.
        spec: ModelSpec,
        /// Fingerprint of the model's parameter layout.
        fingerprint: Fingerprint,
        /// Latest round the coordinator has started (0 before the first).
        round: u64,
        /// Version of the current global model (number of committed rounds).
        model_version: u64,
    },
    /// The current global model, sent after `Welcome` and after every committed round.
    Model {
        /// Version of this model (number of committed rounds).
        model_version: u64,
        /// Latest round the coordinator has started when it sent this model.
        round: u64,
        /// The global parameters.
        params: ParameterVector,
    },
    /// Asks a sampled client for its update in `round`.
    UpdateRequest {
        /// The round asking.
        round: u64,
        /// The global model version the delta must be computed from.
        model_version: u64,
        /// Milliseconds, from reception, within which the update must arrive.
        deadline_ms: u64,
    },
    /// Keeps an otherwise idle connection alive; carries nothing.
    Heartbeat,
    /// Something the client sent was refused.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The coordinator closes the connection after this message.
    Goodbye {
        /// Human-readable reason.
        reason: String,
    },
    /// How to prepare updates (sent after `Welcome`).
    Rules(UpdateRules),
    /// A secure-aggregation message of `round`'s session.
    SecAgg {
        /// The round whose session this belongs to.
        round: u64,
        /// The message.
        message: secagg::ServerMessage,
    },
    /// The answer to a `Join` at a root that sends its clients to edge aggregators: join this
    /// one instead (the connection closes after this message).
    Redirect(Endpoint),
}

impl CoordinatorMessage {
    /// Variant index of [`CoordinatorMessage::Model`] on the wire.
    pub const MODEL_VARIANT: u32 = 1;
}

/// A client's contribution to one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The round this update answers.
    pub round: u64,
    /// The global model version the delta was computed from.
    pub base_version: u64,
    /// Local parameters minus the base model's.
    pub delta: ParameterVector,
    /// Prequential counters over the samples trained on since the base model;
    /// `metrics.samples` is the update's FedAvg weight.
    pub metrics: LocalMetrics,
    /// Statistics of the raw features behind the update, where the rules take them (at most
    /// `metrics.samples` rows).
    pub moments: Option<FeatureMoments>,
}

impl Update {
    /// Samples behind the update: its weight in sample-weighted aggregation.
    pub fn samples(&self) -> u64 {
        self.metrics.samples
    }
}

/// Aggregate counters of a client's test-then-train (prequential) evaluation: every sample is
/// predicted, then trained on, so `samples` is also the number of samples learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LocalMetrics {
    /// Samples predicted before being trained on.
    pub samples: u64,
    /// How many of those predictions were wrong.
    pub prequential_errors: u64,
}

impl LocalMetrics {
    /// Whether the counters are consistent (no more errors than samples).
    pub fn is_consistent(&self) -> bool {
        self.prequential_errors <= self.samples
    }

    /// The counters scaled down to at most `cap` samples (the error rate kept), for a claim
    /// above the coordinator's sample cap.
    pub fn capped(&self, cap: u64) -> Self {
        if self.samples <= cap {
            return *self;
        }
        let rate = self.prequential_errors as f64 / self.samples as f64;
        Self { samples: cap, prequential_errors: ((rate * cap as f64).round() as u64).min(cap) }
    }
}

/// Why a peer refused something; carried by both directions' `Error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks another [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The auth token is missing or not accepted, or this coordinator admits no client with
    /// it (a root under differential privacy takes clients only through its aggregators).
    Unauthorized,
    /// A frame could not be decoded.
    Malformed,
    /// A message arrived in a state where it makes no sense (e.g. anything before `Join`).
    UnexpectedMessage,
    /// An update was for another round or model version than the current ones.
    StaleUpdate,
    /// An update was refused on its content (NaN, wrong layout, zero samples…).
    InvalidUpdate,
    /// The peer did not do something in time (e.g. join).
    Timeout,
    /// The sender is shutting down.
    ShuttingDown,
    /// A bug on the sender's side.
    Internal,
    /// A newer session with the same credentials replaced this one (one live session per
    /// identity); retrying would only replace the other session in turn.
    SessionReplaced,
    /// The client has no update for the request it answers (nothing learnt yet, or an edge
    /// aggregator whose cohort round failed): the round need not wait for it.
    Declined,
    /// The coordinator cannot take this client now, and a later attempt may succeed (a root
    /// under differential privacy that redirects its clients, before any aggregator has
    /// announced where it serves).
    TryLater,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
