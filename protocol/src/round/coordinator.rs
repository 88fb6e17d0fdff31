//! The coordinator's round state machine.
//!
//! Driving it: on a new connection call [`Coordinator::handle_connect`]; for every frame
//! received, [`Coordinator::handle_payload`] (or [`Coordinator::handle_message`] with an
//! already decoded message); when a connection is gone, [`Coordinator::handle_disconnect`];
//! when the instant of [`Coordinator::poll_timeout`] passes,
//! [`Coordinator::handle_timeout`]. After each call, send everything from
//! [`Coordinator::poll_transmit`], then close what [`Coordinator::poll_close`] names, and
//! drain [`Coordinator::poll_event`]. After every `RoundCommitted` event, persist
//! [`Coordinator::checkpoint`].

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::events::{CoordinatorEvent, RoundFailure};
use super::{CloseReason, ConfigError, ConnectionId, CoordinatorConfig, Hierarchy};
use crate::checkpoint::Checkpoint;
use crate::model::ModelSpec;
use crate::params::ParameterVector;
use crate::round::events::UpdateRefusal;
use crate::wire::framing::Payload;
use crate::wire::{
    ClientMessage, Cohort, CompressedUpdate, CoordinatorMessage, Endpoint, ErrorCode, PROTOCOL_VERSION, Update,
};
use pipeline::Pipeline;
use scheduler::{Answer, Scheduler};

/// What the coordinator knows of one connection.
#[derive(Debug, Clone, Copy)]
enum Peer {
    /// Connected, `Join` not yet received; `identity` from the transport (a client certificate).
    Connecting { join_by: Instant, identity: Option<Identity> },
    /// Welcomed, under `identity` when it presented a credential; `aggregator` when it was
    /// admitted as an edge aggregator (see [`crate::round::Hierarchy::Root`]).
    Joined { client_id: u64, identity: Option<Identity>, aggregator: bool },
}

/// Who a peer is, as far as its credentials tell: a digest of its client certificate or of
/// its auth token (never the token itself). Sessions are limited per identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity([u8; 32]);

impl Identity {
    /// The identity of a client certificate (DER bytes).
    pub fn of_certificate(der: &[u8]) -> Self {
        Self::digest(b"flotilla identity: certificate", der)
    }

    /// The identity of an auth token.
    pub fn of_token(token: &str) -> Self {
        Self::digest(b"flotilla identity: token", token.as_bytes())
    }

    fn digest(label: &[u8], bytes: &[u8]) -> Self {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(label);
        hasher.update(bytes);
        Self(hasher.finalize().into())
    }
}

impl std::fmt::Debug for Identity {
    /// The first 8 bytes in hex: enough to tell identities apart in logs, nothing to replay.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A queued transmission; the model is cloned only when polled, so at most one copy of
/// it waits in the queue whatever the number of clients.
#[derive(Debug)]
enum Outgoing {
    Message(ConnectionId, CoordinatorMessage),
    LatestModel(ConnectionId),
}

/// What [`Coordinator::poll_send`] asks to send.
#[derive(Debug)]
pub enum Transmit {
    /// Any message but the model, to this connection.
    Message(ConnectionId, CoordinatorMessage),
    /// The current global model ([`Coordinator::model_message`]), to `conn`.
    Model {
        /// The recipient.
        conn: ConnectionId,
        /// The model's version and round now: they key a shell's encoded copy.
        model_version: u64,
        /// See `model_version`.
        round: u64,
    },
}

/// The coordinator: admits clients, runs rounds and holds the global model.
pub struct Coordinator {
    config: CoordinatorConfig,
    spec: ModelSpec,
    params: ParameterVector,
    /// The iterate average served and evaluated (`serve_average` > 0).
    served: Option<ParameterVector>,
    model_version: u64,
    round: u64,
    /// The mode's rounds (or buffer) and what folds their updates.
    scheduler: Scheduler,
    /// What every mode applies to updates and rounds: claims, weights, sampling, privacy.
    pipeline: Pipeline,
    peers: BTreeMap<ConnectionId, Peer>,
    next_client_id: u64,
    shutting_down: bool,
    transmits: VecDeque<Outgoing>,
    closes: VecDeque<(ConnectionId, CloseReason)>,
    events: VecDeque<CoordinatorEvent>,
    /// Identities barred from joining until the instant given (see `misbehaviour_penalty`).
    barred: BTreeMap<Identity, Instant>,
    /// At a root: the aggregators that announced where they serve.
    announced: BTreeMap<ConnectionId, Announced>,
    /// Announcements so far (orders them: the latest wins among equals).
    announcements: u64,
}

impl Coordinator {
    /// A coordinator starting from `params` at model version 0, before round 1, aggregating
    /// with the strategy of `config.aggregation`.
    pub fn new(
        config: CoordinatorConfig,
        spec: impl Into<ModelSpec>,
        params: ParameterVector,
    ) -> Result<Self, ConfigError> {
        Self::from_checkpoint(config, Checkpoint::initial(spec.into(), params))
    }

    /// A coordinator resuming from a checkpoint; the next round is `checkpoint.round + 1`.
    pub fn from_checkpoint(config: CoordinatorConfig, checkpoint: Checkpoint) -> Result<Self, ConfigError> {
        config.validate()?;
        let (scheduler, pipeline) = pipeline::build(&config, &checkpoint)?;
        Ok(Self {
            config,
            spec: checkpoint.spec,
            params: checkpoint.params,
            served: checkpoint.served,
            model_version: checkpoint.model_version,
            round: checkpoint.round,
            scheduler,
            pipeline,
            peers: BTreeMap::new(),
            next_client_id: 1,
            shutting_down: false,
            transmits: VecDeque::new(),
            closes: VecDeque::new(),
            events: VecDeque::new(),
            barred: BTreeMap::new(),
            announced: BTreeMap::new(),
            announcements: 0,
        })
    }

    /// The durable state to persist (after each commit).
    pub fn checkpoint(&self) -> Checkpoint {
        let (accountant, adaptive_clip, feature_moments) = self.pipeline.durable();
        Checkpoint {
            round: self.round,
            model_version: self.model_version,
            spec: self.spec.clone(),
            params: self.params.clone(),
            served: self.served.clone(),
            accountant,
            adaptive_clip,
            feature_moments,
        }
    }

    /// The model served to users and evaluated: the iterate average when
    /// `serve_average` > 0, the latest global parameters otherwise.
    pub fn served(&self) -> &ParameterVector {
        self.served.as_ref().unwrap_or(&self.params)
    }

    /// The current global parameters.
    pub fn params(&self) -> &ParameterVector {
        &self.params
    }

    /// Version of the current global model (number of committed rounds).
    pub fn model_version(&self) -> u64 {
        self.model_version
    }

    /// Latest round started (0 before the first).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Whether a round is waiting for updates.
    pub fn round_in_progress(&self) -> bool {
        self.scheduler.round_in_progress()
    }

    /// Number of welcomed clients.
    pub fn joined(&self) -> usize {
        self.peers.values().filter(|p| matches!(p, Peer::Joined { .. })).count()
    }

    /// A new connection was accepted; it must `Join` within the configured time.
    pub fn handle_connect(&mut self, conn: ConnectionId, now: Instant) {
        self.handle_connect_as(conn, None, now);
    }

    /// A new connection was accepted from a peer the transport identified (its client
    /// certificate); it must `Join` within the configured time.
    pub fn handle_connect_as(&mut self, conn: ConnectionId, identity: Option<Identity>, now: Instant) {
        let join_by = now + self.config.join_timeout;
        self.peers.entry(conn).or_insert(Peer::Connecting { join_by, identity });
    }

    /// A frame payload arrived on `conn` (whole, or split by a frame decoder that decoded an
    /// update's values as they arrived); undecodable bytes close the connection.
    ///
    /// The message's kind is read first (its variant index) and a message the peer's state
    /// does not allow is refused before its body is decoded: anything but `Join`, `Heartbeat`
    /// or `Goodbye` before `Join`; a secure-aggregation message from outside the running
    /// session's cohort.
    pub fn handle_payload(&mut self, conn: ConnectionId, payload: Payload, now: Instant) {
        let Some(peer) = self.peers.get(&conn).copied() else { return };
        match (peer, payload.variant()) {
            (Peer::Connecting { .. }, Some(variant)) if !ClientMessage::allowed_before_join(variant) => {
                return self.violation(conn, ErrorCode::UnexpectedMessage, "message before Join".into(), now);
            }
            (Peer::Joined { .. }, Some(ClientMessage::SECAGG_VARIANT)) if !self.in_secure_cohort(conn) => {
                // A late message of a session that ended is normal; its body is never read.
                return;
            }
            _ => {}
        }
        match payload.decode::<ClientMessage>() {
            Ok(message) => self.handle_message(conn, message, now),
            Err(error) => self.violation(conn, ErrorCode::Malformed, error.to_string(), now),
        }
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, conn: ConnectionId, message: ClientMessage, now: Instant) {
        let Some(peer) = self.peers.get(&conn).copied() else {
            return; // Closed by us already, or unknown to the shell: nothing to answer.
        };
        match (peer, message) {
            (Peer::Connecting { identity, .. }, ClientMessage::Join { protocol_version, client_name, auth_token }) => {
                self.handle_join(conn, identity, protocol_version, client_name, auth_token, now);
            }
            (Peer::Joined { .. }, ClientMessage::Update(update)) => self.handle_update(conn, Ok(update), None, now),
            (Peer::Joined { .. }, ClientMessage::CompressedUpdate(compressed)) => {
                let update = self.decompress(compressed);
                self.handle_update(conn, update, None, now);
            }
            (Peer::Joined { aggregator: true, .. }, ClientMessage::CohortUpdate { update, cohort }) => {
                self.handle_update(conn, Ok(update), Some(cohort), now);
            }
            (Peer::Joined { aggregator: true, .. }, ClientMessage::Serving(endpoint)) => {
                if !endpoint.is_valid() {
                    return self.violation(conn, ErrorCode::Malformed, "unreadable serving address".into(), now);
                }
                let address = sanitize_peer_text(&endpoint.address);
                self.announcements += 1;
                let announced = Announced { endpoint, redirected: 0, order: self.announcements, silent: false };
                self.announced.insert(conn, announced);
                self.events.push_back(CoordinatorEvent::AggregatorServing { conn, address });
            }
            (
                Peer::Joined { aggregator: false, .. },
                ClientMessage::CohortUpdate { .. } | ClientMessage::Serving(_),
            ) => {
                let reason = "an aggregator's message from a peer not admitted as an aggregator".into();
                self.violation(conn, ErrorCode::UnexpectedMessage, reason, now);
            }
            (Peer::Joined { client_id, .. }, ClientMessage::SecAgg { round, message }) => {
                self.handle_secure_message(conn, client_id, round, message, now);
            }
            (_, ClientMessage::Heartbeat) => {}
            (Peer::Joined { .. }, ClientMessage::Error { code: ErrorCode::Declined, .. }) => {
                // A sampled client with nothing to send: the round stops waiting for it.
                self.record_answer(conn, Answer::Refused, now);
            }
            (Peer::Joined { .. }, ClientMessage::Error { code, message }) => {
                let message = sanitize_peer_text(&message);
                self.events.push_back(CoordinatorEvent::ClientError { conn, code, message });
            }
            (_, ClientMessage::Goodbye { .. }) => {
                self.closes.push_back((conn, CloseReason::Goodbye));
                self.remove_peer(conn, now);
            }
            (Peer::Connecting { .. }, _) => {
                self.violation(conn, ErrorCode::UnexpectedMessage, "message before Join".into(), now);
            }
            (Peer::Joined { .. }, ClientMessage::Join { .. }) => {
                self.violation(conn, ErrorCode::UnexpectedMessage, "second Join".into(), now);
            }
        }
    }

    /// The shell closed `conn` for what its peer did (a missed frame deadline, a send queue it
    /// let fill, unreadable or unasked-for data): its identity may not join again for
    /// `misbehaviour_penalty`. Call before [`Coordinator::handle_disconnect`].
    pub fn handle_misbehaviour(&mut self, conn: ConnectionId, now: Instant) {
        let identity = match self.peers.get(&conn) {
            Some(Peer::Joined { identity, .. } | Peer::Connecting { identity, .. }) => *identity,
            None => None,
        };
        if let Some(identity) = identity {
            self.bar(identity, now);
        }
    }

    fn bar(&mut self, identity: Identity, now: Instant) {
        if self.config.misbehaviour_penalty.is_zero() {
            return;
        }
        self.barred.retain(|_, until| *until > now);
        self.barred.insert(identity, now + self.config.misbehaviour_penalty);
    }

    /// `conn` is gone (closed by either side); nothing more is sent to it.
    pub fn handle_disconnect(&mut self, conn: ConnectionId, now: Instant) {
        self.transmits.retain(|t| match t {
            Outgoing::Message(c, _) | Outgoing::LatestModel(c) => *c != conn,
        });
        self.remove_peer(conn, now);
    }

    /// Says goodbye to every connection, abandons the running round and refuses new joins.
    pub fn shutdown(&mut self, reason: &str) {
        self.shutting_down = true;
        if let Some(rounds) = self.scheduler.rounds_mut() {
            rounds.next_round_at = None;
        }
        if let Some(active) = self.scheduler.take_active() {
            self.events
                .push_back(CoordinatorEvent::RoundFailed { round: active.number, reason: RoundFailure::ShuttingDown });
        }
        for (conn, peer) in std::mem::take(&mut self.peers) {
            let goodbye = CoordinatorMessage::Goodbye { reason: reason.to_string() };
            self.transmits.push_back(Outgoing::Message(conn, goodbye));
            self.closes.push_back((conn, CloseReason::Goodbye));
            if let Peer::Joined { client_id, .. } = peer {
                self.events.push_back(CoordinatorEvent::ClientLeft { conn, client_id });
            }
        }
    }

    /// The instant from [`Coordinator::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<ConnectionId> = self
            .peers
            .iter()
            .filter(|(_, peer)| matches!(peer, Peer::Connecting { join_by, .. } if *join_by <= now))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in late {
            self.violation(conn, ErrorCode::Timeout, "did not join in time".into(), now);
        }
        self.secure_deadline(now);
        if self.scheduler.round_deadline_passed(now) {
            self.end_round(now);
        }
        self.reask_lapsed(now);
        self.maybe_start_round(now);
    }

    /// The next message to send, models included by value (a copy of the parameters each).
    pub fn poll_transmit(&mut self) -> Option<(ConnectionId, CoordinatorMessage)> {
        Some(match self.poll_send()? {
            Transmit::Message(conn, message) => (conn, message),
            Transmit::Model { conn, .. } => (conn, self.model_message()),
        })
    }

    /// The next message to send, the current model by reference: a shell sending it to many
    /// connections encodes [`Coordinator::model_message`] once per `(model_version, round)`
    /// instead of copying the parameters for each.
    pub fn poll_send(&mut self) -> Option<Transmit> {
        while let Some(outgoing) = self.transmits.pop_front() {
            match outgoing {
                Outgoing::Message(conn, message) => return Some(Transmit::Message(conn, message)),
                Outgoing::LatestModel(conn) if matches!(self.peers.get(&conn), Some(Peer::Joined { .. })) => {
                    return Some(Transmit::Model { conn, model_version: self.model_version, round: self.round });
                }
                Outgoing::LatestModel(_) => {}
            }
        }
        None
    }

    /// The current global model as a message.
    pub fn model_message(&self) -> CoordinatorMessage {
        CoordinatorMessage::Model { model_version: self.model_version, round: self.round, params: self.params.clone() }
    }

    /// The next connection to close, once what was queued for it has been sent.
    pub fn poll_close(&mut self) -> Option<(ConnectionId, CloseReason)> {
        self.closes.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<CoordinatorEvent> {
        self.events.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let joins = self.peers.values().filter_map(|peer| match peer {
            Peer::Connecting { join_by, .. } => Some(*join_by),
            Peer::Joined { .. } => None,
        });
        let scheduled = self.scheduler.next_deadline(self.joined() >= self.config.min_clients);
        joins.chain(scheduled).min()
    }

    fn handle_join(
        &mut self,
        conn: ConnectionId,
        identity: Option<Identity>,
        version: u16,
        name: String,
        token: Option<String>,
        now: Instant,
    ) {
        if self.shutting_down {
            return self.refuse(conn, ErrorCode::ShuttingDown, "coordinator is shutting down".into(), now);
        }
        if version != PROTOCOL_VERSION {
            let reason = format!("coordinator speaks protocol version {PROTOCOL_VERSION}, client sent {version}");
            return self.refuse(conn, ErrorCode::UnsupportedVersion, reason, now);
        }
        // An aggregator's token admits it as one (whatever the clients' tokens).
        let aggregator = match &self.config.hierarchy {
            Hierarchy::Root { aggregator_tokens, .. } => {
                token.as_deref().is_some_and(|token| token_accepted(aggregator_tokens, token))
            }
            Hierarchy::Flat | Hierarchy::Edge { .. } => false,
        };
        if let Some(accepted) = &self.config.auth_tokens
            && !aggregator
            && !token.as_deref().is_some_and(|token| token_accepted(accepted, token))
        {
            return self.refuse(conn, ErrorCode::Unauthorized, "auth token refused".into(), now);
        }
        // A certificate names the peer best; else the token it was admitted with.
        let identity = identity.or_else(|| {
            (self.config.auth_tokens.is_some() || aggregator)
                .then_some(token.as_deref())
                .flatten()
                .map(Identity::of_token)
        });
        if let Some(until) = identity.and_then(|id| self.barred.get(&id)).filter(|until| **until > now) {
            let seconds = until.duration_since(now).as_secs().max(1);
            let reason = format!("this identity misbehaved; it may join again in {seconds} s");
            return self.refuse(conn, ErrorCode::Timeout, reason, now);
        }
        if !aggregator && let Some(endpoint) = self.redirect_target() {
            let address = endpoint.address.clone();
            self.transmits.push_back(Outgoing::Message(conn, CoordinatorMessage::Redirect(endpoint)));
            self.closes.push_back((conn, CloseReason::Goodbye));
            self.peers.remove(&conn);
            self.events.push_back(CoordinatorEvent::ClientRedirected { conn, address });
            return;
        }
        // Under DP a root samples and clips only through its aggregators: a client of its own
        // would wait for a request that never comes.
        if !aggregator
            && self.config.privacy.is_some()
            && let Hierarchy::Root { redirect_clients, .. } = self.config.hierarchy
        {
            let (code, reason) = if redirect_clients {
                (ErrorCode::TryLater, "this root runs differential privacy through its aggregators and none serves yet")
            } else {
                (
                    ErrorCode::Unauthorized,
                    "this root runs differential privacy through its aggregators and takes no client itself: \
                     join an aggregator (or run the root with --redirect-clients)",
                )
            };
            return self.refuse(conn, code, reason.into(), now);
        }
        if let Some(identity) = identity {
            self.make_room_for(identity, now);
        }
        let client_id = self.next_client_id;
        self.next_client_id += 1;
        self.peers.insert(conn, Peer::Joined { client_id, identity, aggregator });
        let welcome = CoordinatorMessage::Welcome {
            client_id,
            protocol_version: PROTOCOL_VERSION,
            spec: self.spec.clone(),
            fingerprint: self.params.fingerprint,
            round: self.round,
            model_version: self.model_version,
        };
        self.transmits.push_back(Outgoing::Message(conn, welcome));
        self.transmits.push_back(Outgoing::Message(conn, CoordinatorMessage::Rules(self.config.update_rules())));
        if !matches!(self.scheduler, Scheduler::Async(_)) {
            // Asynchronous mode sends it with the request (`ask`, below).
            self.transmits.push_back(Outgoing::LatestModel(conn));
        }
        let client_name = sanitize_peer_text(&name);
        self.events.push_back(CoordinatorEvent::ClientJoined { conn, client_id, client_name });
        self.ask(conn, now);
        self.maybe_start_round(now);
    }

    /// Where a root that redirects its clients sends the next one: the announced aggregator
    /// with the fewest redirected so far (the latest announced among equals: a restarted one),
    /// passing over those that let a round's request lapse unanswered (likely gone) while any
    /// other is left.
    fn redirect_target(&mut self) -> Option<Endpoint> {
        if !matches!(self.config.hierarchy, Hierarchy::Root { redirect_clients: true, .. }) {
            return None;
        }
        let answering = self.announced.values().any(|a| !a.silent);
        let chosen = self
            .announced
            .values_mut()
            .filter(|a| !(answering && a.silent))
            .min_by_key(|a| (a.redirected, std::cmp::Reverse(a.order)))?;
        chosen.redirected += 1;
        Some(chosen.endpoint.clone())
    }

    /// Closes the oldest sessions of `identity` until one more fits under
    /// `sessions_per_identity` (0: no limit): a device that reconnects replaces its
    /// half-dead session, and one stolen credential holds at most that many sessions.
    fn make_room_for(&mut self, identity: Identity, now: Instant) {
        let limit = self.config.sessions_per_identity;
        if limit == 0 {
            return;
        }
        let mut sessions: Vec<(u64, ConnectionId)> = self
            .peers
            .iter()
            .filter_map(|(conn, peer)| match peer {
                Peer::Joined { client_id, identity: Some(id), .. } if *id == identity => Some((*client_id, *conn)),
                _ => None,
            })
            .collect();
        sessions.sort_unstable();
        let excess = (sessions.len() + 1).saturating_sub(limit);
        for (_, old) in sessions.into_iter().take(excess) {
            let reason = "replaced by a newer session with the same credentials".to_string();
            self.refuse(old, ErrorCode::SessionReplaced, reason, now);
        }
    }

    fn refuse(&mut self, conn: ConnectionId, code: ErrorCode, reason: String, now: Instant) {
        self.send_error_and_close(conn, code, reason.clone(), now);
        self.events.push_back(CoordinatorEvent::ClientRefused { conn, code, reason });
    }

    fn violation(&mut self, conn: ConnectionId, code: ErrorCode, reason: String, now: Instant) {
        if !self.peers.contains_key(&conn) {
            return;
        }
        self.handle_misbehaviour(conn, now);
        self.send_error_and_close(conn, code, reason.clone(), now);
        self.events.push_back(CoordinatorEvent::ProtocolViolation { conn, reason });
    }

    fn send_error_and_close(&mut self, conn: ConnectionId, code: ErrorCode, message: String, now: Instant) {
        self.transmits.push_back(Outgoing::Message(conn, CoordinatorMessage::Error { code, message }));
        self.closes.push_back((conn, CloseReason::Error(code)));
        self.remove_peer(conn, now);
    }

    /// An update (or why it could not be read) from `conn`, to the mode that takes it; `cohort`
    /// when an edge aggregator sent its cohort's aggregate.
    fn handle_update(
        &mut self,
        conn: ConnectionId,
        update: Result<Update, UpdateRefusal>,
        cohort: Option<Cohort>,
        now: Instant,
    ) {
        match (&self.scheduler, update) {
            (Scheduler::Sync(_), Ok(update)) => self.handle_round_update(conn, update, cohort, now),
            (Scheduler::Secure(..), Ok(_)) => self.refuse_update(conn, UpdateRefusal::MaskedExpected),
            (Scheduler::Async(_), Ok(_)) if cohort.is_some() => self.refuse_update(conn, UpdateRefusal::CohortRefused),
            (Scheduler::Async(_), Ok(update)) => self.handle_async_update(conn, update, now),
            (_, Err(refusal)) => {
                self.refuse_update(conn, refusal);
                self.record_answer(conn, Answer::Refused, now);
            }
        }
    }

    /// Whether `conn` is in the cohort of the running secure-aggregation session.
    fn in_secure_cohort(&self, conn: ConnectionId) -> bool {
        self.scheduler.session().is_some_and(|session| session.has(conn))
    }

    /// Forgets `conn`; a sampled client that had not answered counts as gone.
    fn remove_peer(&mut self, conn: ConnectionId, now: Instant) {
        self.announced.remove(&conn);
        let Some(peer) = self.peers.remove(&conn) else { return };
        if let Peer::Joined { client_id, .. } = peer {
            self.events.push_back(CoordinatorEvent::ClientLeft { conn, client_id });
        }
        self.scheduler.forget(conn);
        self.record_answer(conn, Answer::Gone, now);
    }

    /// A compressed update, checked and expanded to the dense form the aggregators fold.
    fn decompress(&self, compressed: CompressedUpdate) -> Result<Update, UpdateRefusal> {
        let expected = self.params.values.len();
        if compressed.delta.len() != expected {
            let found = compressed.delta.len();
            return Err(UpdateRefusal::Compressed(format!("{found} values, the model has {expected}")));
        }
        let values = compressed.delta.to_dense().map_err(|e| UpdateRefusal::Compressed(e.to_string()))?;
        let CompressedUpdate { round, base_version, format_version, fingerprint, metrics, moments, .. } = compressed;
        let delta = ParameterVector { format_version, fingerprint, values };
        Ok(Update { round, base_version, delta, metrics, moments })
    }

    /// Records a sampled client's answer if it had none; ends the round once all have
    /// answered, or as soon as the quorum is out of reach.
    fn record_answer(&mut self, conn: ConnectionId, answer: Answer, now: Instant) {
        let commits_at_goal = self.scheduler.commits_at_goal();
        let Some(active) = self.scheduler.rounds_mut().and_then(|rounds| rounds.active.as_mut()) else { return };
        if let Some(slot) = active.answers.get_mut(&conn).filter(|slot| **slot == Answer::Pending) {
            *slot = answer;
            if let Some(announced) = self.announced.get_mut(&conn) {
                announced.silent = false;
            }
        }
        let count = |wanted: Answer| active.answers.values().filter(|a| **a == wanted).count();
        let (pending, accepted) = (count(Answer::Pending), count(Answer::Accepted));
        let goal_met = commits_at_goal && self.config.round_goal.is_some_and(|goal| accepted >= goal);
        if pending == 0 || accepted + pending < self.config.min_clients || goal_met {
            self.end_round(now);
        }
    }
}

mod asynchronous;
mod pipeline;
mod rounds;
mod scheduler;
mod secure;

/// An edge aggregator that announced where it serves, at a root.
#[derive(Debug, Clone)]
struct Announced {
    endpoint: Endpoint,
    /// Clients redirected to it.
    redirected: u64,
    /// When it announced, among all announcements.
    order: u64,
    /// It let the last request lapse unanswered.
    silent: bool,
}

/// The peer an address belongs to, for the per-address limits of both daemons' listeners (QUIC
/// and HTTP): an IPv4 address, also when it arrives mapped into IPv6 (`::ffff:a.b.c.d`, as on
/// a dual-stack socket), or an IPv6 address's /64 prefix, since one host is commonly given a
/// whole /64 and could otherwise take a fresh address for every connection.
pub fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Connections open per peer ([`address_key`]), for both daemons' per-address limits.
#[derive(Debug, Default)]
pub struct PeerCounts(std::collections::HashMap<std::net::IpAddr, usize>);

impl PeerCounts {
    /// Connections open now from the peer of `ip`.
    pub fn get(&self, ip: std::net::IpAddr) -> usize {
        self.0.get(&address_key(ip)).copied().unwrap_or(0)
    }

    /// Counts one more connection from the peer of `ip`.
    pub fn add(&mut self, ip: std::net::IpAddr) {
        *self.0.entry(address_key(ip)).or_insert(0) += 1;
    }

    /// Counts one connection fewer from the peer of `ip` (forgetting a peer with none).
    pub fn remove(&mut self, ip: std::net::IpAddr) {
        let key = address_key(ip);
        if let Some(count) = self.0.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&key);
            }
        }
    }
}

/// Whether `token` is one of `accepted`, comparing every accepted token in full whatever
/// matches (the time taken does not tell how much of a guess was right; only lengths leak).
pub fn token_accepted(accepted: &std::collections::BTreeSet<String>, token: &str) -> bool {
    accepted.iter().fold(false, |found, candidate| found | constant_time_eq(candidate.as_bytes(), token.as_bytes()))
}

/// Byte equality whose time depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Peer-supplied text made safe to log: control characters (newlines included) escaped, at
/// most [`PEER_TEXT_MAX`] characters kept, so a peer can neither forge log lines nor flood them.
pub fn sanitize_peer_text(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == PEER_TEXT_MAX {
            out.push('…');
            break;
        }
        if c.is_control() { out.extend(c.escape_default()) } else { out.push(c) }
    }
    out
}

/// Longest peer-supplied text kept in logs and events, in characters.
pub const PEER_TEXT_MAX: usize = 128;

#[cfg(test)]
mod tests;
