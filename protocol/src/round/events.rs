//! What the coordinator reports to its shell.

use super::ConnectionId;
use crate::aggregate::AggregateError;
use crate::wire::ErrorCode;

/// Something the coordinator's shell may log, count or act upon.
#[derive(Debug, PartialEq)]
pub enum CoordinatorEvent {
    /// A connection joined and was welcomed.
    ClientJoined {
        /// Its connection.
        conn: ConnectionId,
        /// Identifier given in `Welcome`.
        client_id: u64,
        /// Name the client announced.
        client_name: String,
    },
    /// A connection's `Join` was refused (version, auth); it is being closed.
    ClientRefused {
        /// Its connection.
        conn: ConnectionId,
        /// Code sent to the client.
        code: ErrorCode,
        /// Detail sent to the client.
        reason: String,
    },
    /// A root sent a joining client to an edge aggregator; it is being closed.
    ClientRedirected {
        /// Its connection.
        conn: ConnectionId,
        /// The aggregator's address.
        address: String,
    },
    /// An edge aggregator announced where its clients reach it.
    AggregatorServing {
        /// Its connection.
        conn: ConnectionId,
        /// The address it announced.
        address: String,
    },
    /// A joined client disconnected or said goodbye.
    ClientLeft {
        /// Its connection.
        conn: ConnectionId,
        /// Identifier given in `Welcome`.
        client_id: u64,
    },
    /// A peer broke the protocol (message out of order, join timeout…); it is being closed.
    ProtocolViolation {
        /// Its connection.
        conn: ConnectionId,
        /// What it did.
        reason: String,
    },
    /// A client reported an error about something the coordinator sent.
    ClientError {
        /// Its connection.
        conn: ConnectionId,
        /// Code it sent.
        code: ErrorCode,
        /// Detail it sent.
        message: String,
    },
    /// A round started and asked the sampled clients for updates.
    RoundStarted {
        /// The round's number.
        round: u64,
        /// Version of the model the updates must rest on.
        model_version: u64,
        /// The sampled connections, sorted.
        sampled: Vec<ConnectionId>,
    },
    /// An update was folded into the round's aggregate.
    UpdateAccepted {
        /// Its connection.
        conn: ConnectionId,
        /// The round.
        round: u64,
        /// Samples behind the update.
        samples: u64,
    },
    /// An update was refused; the client was told why.
    UpdateRefused {
        /// Its connection.
        conn: ConnectionId,
        /// Why.
        reason: UpdateRefusal,
    },
    /// A round's aggregate became the new global model.
    RoundCommitted {
        /// The round.
        round: u64,
        /// The new model version.
        model_version: u64,
        /// Clients behind the updates folded in (each edge aggregator's cohort counts all
        /// of its clients).
        participants: usize,
        /// Their total samples.
        samples: u64,
        /// Prequential error rate over the participants' samples, if they had any.
        mean_local_error: Option<f64>,
        /// Differential privacy spent so far (ε at the configured δ), when DP is on.
        epsilon: Option<f64>,
    },
    /// An edge aggregator's round ended with its cohort's aggregate: the answer to the
    /// parent's request for `round` (see [`crate::round::Hierarchy::Edge`]).
    CohortReady {
        /// The parent's round.
        round: u64,
        /// The aggregate, its counters and the cohort behind it.
        contribution: crate::wire::Contribution,
    },
    /// A round ended without a new model; the next one starts when possible.
    RoundFailed {
        /// The round.
        round: u64,
        /// Why.
        reason: RoundFailure,
    },
}

/// Why an update was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UpdateRefusal {
    /// No round is running.
    #[error("no round in progress")]
    NoRoundInProgress,
    /// The update answers another round than the current one.
    #[error("update is for round {found}, the current round is {current}")]
    WrongRound {
        /// The current round.
        current: u64,
        /// The round named by the update.
        found: u64,
    },
    /// The delta was computed from another model version than the current one.
    #[error("update rests on model version {found}, the current version is {current}")]
    StaleBase {
        /// The current model version.
        current: u64,
        /// The version named by the update.
        found: u64,
    },
    /// The client was not sampled for this round.
    #[error("client was not sampled for this round")]
    NotSampled,
    /// The client already answered this round.
    #[error("client already answered this round")]
    Duplicate,
    /// The metrics count more errors than samples.
    #[error("metrics count {errors} errors over {samples} samples")]
    InconsistentMetrics {
        /// Errors claimed.
        errors: u64,
        /// Samples claimed.
        samples: u64,
    },
    /// The update claims more samples than the coordinator's cap (told to every client in
    /// its rules): only a peer lying about its weight does.
    #[error("the update claims {claimed} samples; at most {cap} are accepted")]
    SamplesOverCap {
        /// Samples claimed.
        claimed: u64,
        /// The cap.
        cap: u64,
    },
    /// The aggregator refused the delta (NaN, layout, zero samples…).
    #[error(transparent)]
    Invalid(#[from] AggregateError),
    /// Rounds run secure aggregation: updates must come masked, in the round's session.
    #[error("this coordinator runs secure aggregation: send the update masked, not in the clear")]
    MaskedExpected,
    /// The feature statistics sent with the update were refused (see
    /// [`FeatureMoments`](crate::model::FeatureMoments)).
    #[error("feature statistics refused: {0}")]
    Moments(String),
    /// A compressed update could not be read.
    #[error("compressed update refused: {0}")]
    Compressed(String),
    /// A cohort update where this coordinator's mode folds none.
    #[error("this coordinator's mode takes no cohort updates")]
    CohortRefused,
}

impl UpdateRefusal {
    /// A short stable name of the reason (a metrics label).
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRoundInProgress => "no_round",
            Self::WrongRound { .. } => "wrong_round",
            Self::StaleBase { .. } => "stale_base",
            Self::NotSampled => "not_sampled",
            Self::Duplicate => "duplicate",
            Self::InconsistentMetrics { .. } => "inconsistent_metrics",
            Self::SamplesOverCap { .. } => "samples_over_cap",
            Self::Invalid(_) => "invalid",
            Self::MaskedExpected => "masked_expected",
            Self::Compressed(_) => "compressed",
            Self::Moments(_) => "feature_statistics",
            Self::CohortRefused => "cohort_refused",
        }
    }

    /// The code sent to the client in the `Error` message.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(AggregateError::TooStale { .. } | AggregateError::FutureBase { .. }) => {
                ErrorCode::StaleUpdate
            }
            Self::InconsistentMetrics { .. }
            | Self::SamplesOverCap { .. }
            | Self::Invalid(_)
            | Self::Compressed(_)
            | Self::Moments(_) => ErrorCode::InvalidUpdate,
            Self::MaskedExpected | Self::CohortRefused => ErrorCode::UnexpectedMessage,
            Self::NotSampled | Self::Duplicate => ErrorCode::UnexpectedMessage,
            Self::NoRoundInProgress | Self::WrongRound { .. } | Self::StaleBase { .. } => ErrorCode::StaleUpdate,
        }
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoundFailure {
    /// Fewer than `min_clients` updates were accepted by the end of the round.
    #[error("quorum missed: {accepted} updates accepted, {needed} needed")]
    QuorumMissed {
        /// Updates accepted.
        accepted: usize,
        /// The quorum.
        needed: usize,
    },
    /// The aggregator could not produce a model.
    #[error("aggregation failed: {0}")]
    Aggregation(AggregateError),
    /// The coordinator shut down during the round.
    #[error("coordinator shutting down")]
    ShuttingDown,
    /// The secure-aggregation session failed (too few survivors, unreadable shares…).
    #[error("secure aggregation failed: {0}")]
    Secure(String),
    /// An edge aggregator's round was abandoned: its parent asked for another round or sent
    /// a new model.
    #[error("superseded by the parent's next request or model")]
    Superseded,
    /// An edge aggregator was asked for an update on a model version it does not hold.
    #[error("the parent asked for an update on model version {asked}; this aggregator holds {held}")]
    ParentModel {
        /// The version asked for.
        asked: u64,
        /// The version held.
        held: u64,
    },
}

impl RoundFailure {
    /// A short stable name of the reason (a metrics label).
    pub fn label(&self) -> &'static str {
        match self {
            Self::QuorumMissed { .. } => "quorum_missed",
            Self::Aggregation(_) => "aggregation",
            Self::ShuttingDown => "shutting_down",
            Self::Secure(_) => "secure_aggregation",
            Self::Superseded => "superseded",
            Self::ParentModel { .. } => "parent_model",
        }
    }
}
