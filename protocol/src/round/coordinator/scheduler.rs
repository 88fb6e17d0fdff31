//! The round schedulers, one per mode, and what each holds. Every mode-dependent decision
//! of the coordinator is a `match` on [`Scheduler`] here or in the mode's own module
//! (`rounds`, `secure`, `asynchronous`); the rest of the state machine asks the scheduler.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::aggregate::{Aggregator, Buffered, ServerStep};
use crate::round::ConnectionId;
use crate::round::config::SecureConfig;
use crate::secagg::{SecAggServer, ServerPhase};
use crate::wire::LocalMetrics;

/// How updates become models.
pub(super) enum Scheduler {
    /// Synchronous rounds: sampled clients send their updates, the aggregator folds them.
    Sync(Rounds),
    /// Synchronous rounds under secure aggregation: the cohort's masked updates are summed
    /// by a SecAgg+ session and their mean is folded.
    Secure(Rounds, Box<SecureRounds>),
    /// FedBuff: no round barrier; updates folded by staleness into a buffer.
    Async(Box<AsyncState>),
}

/// The state of synchronous rounds (plain or secure).
pub(super) struct Rounds {
    /// The round in progress.
    pub(super) active: Option<ActiveRound>,
    /// When the next round may start.
    pub(super) next_round_at: Option<Instant>,
    /// Folds the round's updates into the next model.
    pub(super) aggregator: Box<dyn Aggregator + Send>,
}

impl Rounds {
    pub(super) fn new(aggregator: Box<dyn Aggregator + Send>) -> Self {
        Self { active: None, next_round_at: None, aggregator }
    }
}

/// The secure-aggregation settings and the running round's session.
#[derive(Debug)]
pub(super) struct SecureRounds {
    pub(super) config: SecureConfig,
    pub(super) session: Option<SecureRound>,
}

impl SecureRounds {
    pub(super) fn new(config: SecureConfig) -> Self {
        Self { config, session: None }
    }
}

/// How a sampled client has answered the running round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    Pending,
    Accepted,
    Refused,
    Gone,
}

/// The round in progress.
#[derive(Debug)]
pub(super) struct ActiveRound {
    pub(super) number: u64,
    pub(super) deadline: Instant,
    pub(super) answers: BTreeMap<ConnectionId, Answer>,
    pub(super) metrics: LocalMetrics,
}

/// The state of asynchronous mode.
#[derive(Debug)]
pub(super) struct AsyncState {
    pub(super) buffer: Buffered<ServerStep>,
    /// Clients with a request outstanding, and when it lapses.
    pub(super) asks: BTreeMap<ConnectionId, Instant>,
    /// Counters of the updates buffered so far.
    pub(super) metrics: LocalMetrics,
    /// Whether `RoundStarted` was emitted for the buffer being filled.
    pub(super) started: bool,
    /// Clients whose update is in the buffer being filled: each is asked again only once the
    /// buffer is applied, so one client cannot supply every update of a version.
    pub(super) contributed: BTreeSet<ConnectionId>,
    /// The model version last queued for each client: a new version goes to a client with its
    /// next request, not to every joined client as it is applied.
    pub(super) holds: BTreeMap<ConnectionId, u64>,
}

impl AsyncState {
    pub(super) fn new(buffer: Buffered<ServerStep>) -> Self {
        Self {
            buffer,
            asks: BTreeMap::new(),
            metrics: LocalMetrics::default(),
            started: false,
            contributed: BTreeSet::new(),
            holds: BTreeMap::new(),
        }
    }
}

impl Scheduler {
    /// The rounds of a synchronous mode.
    pub(super) fn rounds(&self) -> Option<&Rounds> {
        match self {
            Self::Sync(rounds) | Self::Secure(rounds, _) => Some(rounds),
            Self::Async(_) => None,
        }
    }

    /// The rounds of a synchronous mode, mutably.
    pub(super) fn rounds_mut(&mut self) -> Option<&mut Rounds> {
        match self {
            Self::Sync(rounds) | Self::Secure(rounds, _) => Some(rounds),
            Self::Async(_) => None,
        }
    }

    /// The running secure-aggregation session.
    pub(super) fn session(&self) -> Option<&SecureRound> {
        match self {
            Self::Secure(_, secure) => secure.session.as_ref(),
            Self::Sync(_) | Self::Async(_) => None,
        }
    }

    /// Whether a synchronous round is waiting for updates.
    pub(super) fn round_in_progress(&self) -> bool {
        self.rounds().is_some_and(|rounds| rounds.active.is_some())
    }

    /// Whether the running round's own deadline has passed and ends it: a secure round with
    /// a session is instead driven by the session's phase deadlines.
    pub(super) fn round_deadline_passed(&self, now: Instant) -> bool {
        let passed = |rounds: &Rounds| rounds.active.as_ref().is_some_and(|active| active.deadline <= now);
        match self {
            Self::Sync(rounds) => passed(rounds),
            Self::Secure(rounds, secure) => secure.session.is_none() && passed(rounds),
            Self::Async(_) => false,
        }
    }

    /// Whether a round may commit as soon as `round_goal` updates are accepted: not a secure
    /// one, whose cohort is fixed when the session opens.
    pub(super) fn commits_at_goal(&self) -> bool {
        matches!(self, Self::Sync(_))
    }

    /// The round's end, abandoning a running secure session; the round's number.
    pub(super) fn take_active(&mut self) -> Option<ActiveRound> {
        if let Self::Secure(_, secure) = self {
            secure.session = None;
        }
        self.rounds_mut()?.active.take()
    }

    /// The next instant at which something is due: the running round's (or its session
    /// phase's) deadline, the next round's start once `quorum_joined`, or the earliest
    /// lapse of an asynchronous request.
    pub(super) fn next_deadline(&self, quorum_joined: bool) -> Option<Instant> {
        let waiting = |rounds: &Rounds| match &rounds.active {
            Some(active) => Some(active.deadline),
            None if quorum_joined => rounds.next_round_at,
            None => None,
        };
        match self {
            Self::Sync(rounds) => waiting(rounds),
            Self::Secure(rounds, secure) => match &secure.session {
                Some(session) if rounds.active.is_some() => Some(session.deadline()),
                _ => waiting(rounds),
            },
            Self::Async(state) => state.asks.values().min().copied(),
        }
    }

    /// Forgets what the mode holds about `conn` (gone).
    pub(super) fn forget(&mut self, conn: ConnectionId) {
        if let Self::Async(state) = self {
            state.asks.remove(&conn);
            state.contributed.remove(&conn);
            state.holds.remove(&conn);
        }
    }
}

/// The secure session of the running round.
pub(super) struct SecureRound {
    pub(super) server: SecAggServer,
    /// Client id → connection, for the cohort.
    pub(super) connections: BTreeMap<u64, ConnectionId>,
    pub(super) phase: ServerPhase,
    pub(super) phase_deadline: Instant,
}

impl SecureRound {
    /// Whether `conn` is in the session's cohort.
    pub(super) fn has(&self, conn: ConnectionId) -> bool {
        self.connections.values().any(|c| *c == conn)
    }
}

impl std::fmt::Debug for SecureRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureRound").field("phase", &self.phase).field("cohort", &self.connections.len()).finish()
    }
}

impl SecureRound {
    /// When the current phase stops waiting.
    pub(super) fn deadline(&self) -> Instant {
        self.phase_deadline
    }
}
