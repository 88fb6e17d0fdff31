//! The round task's state: the state machine, the connections' outboxes and the shared
//! model frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::framed::encode;
use bytes::Bytes;
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::round::{CloseReason, ConnectionId, Coordinator, CoordinatorEvent, Transmit};
use flotilla_protocol::wire::framing::{FrameLimit, FramingError};
use flotilla_protocol::wire::{Contribution, CoordinatorMessage, ErrorCode};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::connection::{Inbound, Link, Outbound, Traffic, close_refused};
use super::logs::LogBudget;

/// One line of `rounds.jsonl`: what a committed round did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundRecord {
    /// The committed round.
    pub round: u64,
    /// The model version it produced.
    pub model_version: u64,
    /// Updates folded in.
    pub participants: usize,
    /// Samples behind them.
    pub samples: u64,
    /// Participants' prequential error rate over their samples (a fraction), if any.
    pub mean_local_error: Option<f64>,
    /// Error of the new global model on the coordinator's held-out data, in percent.
    pub global_error_pct: Option<f64>,
    /// Error of the model the round started from (for the first round of a run: the
    /// initial or resumed model), in percent.
    pub start_global_error_pct: Option<f64>,
    /// Seconds from the round's start to its commit.
    pub duration_s: f64,
    /// Stream bytes received from all clients during the round.
    pub bytes_in: u64,
    /// Frame bytes queued to all clients during the round (including the new model's broadcast
    /// at the previous commit).
    pub bytes_out: u64,
    /// UDP payload bytes (QUIC packets: headers, encryption, acknowledgements and
    /// retransmissions included) sent and received since the previous commit, over the
    /// connections open at this commit.
    pub udp_bytes: u64,
    /// Differential privacy spent so far (ε at the configured δ), when DP is on.
    pub epsilon: Option<f64>,
    /// Seconds since the Unix epoch at commit.
    pub unix_time: f64,
}

/// A committed round, for the caller to persist (in commit order).
#[derive(Debug)]
pub struct Committed {
    /// The durable state after the commit.
    pub checkpoint: Checkpoint,
    /// Its record; the evaluation fields are the caller's to fill.
    pub record: RoundRecord,
}

/// What [`serve`] did.
#[derive(Debug, Clone)]
pub struct Served {
    /// Rounds committed.
    pub rounds_committed: u64,
    /// The final durable state (the last one queued to `committed`, or the starting one).
    pub checkpoint: Checkpoint,
}

/// Sees every event of the state machine as the round task handles it (for metrics): the
/// [`Committed`] queue carries what must be persisted, this what is only counted.
pub trait Observer: Send + Sync {
    /// `event` was just handled; `joined` clients are joined after it.
    fn observe(&self, event: &CoordinatorEvent, joined: usize);
}

/// What an edge aggregator's parent asks of its round task (the aggregator's upstream
/// session, [`crate::session`], relays it).
#[derive(Debug)]
pub enum ParentInput {
    /// The parent's new global model: adopt it and pass it on.
    Model {
        /// Its version.
        model_version: u64,
        /// The parent's latest round when it sent it.
        round: u64,
        /// The parameters.
        params: flotilla_protocol::params::ParameterVector,
    },
    /// The parent wants this aggregator's update in `round`: run the round over its clients
    /// and answer on `reply` with the cohort's aggregate (dropped when the round fails).
    Request {
        /// The parent's round.
        round: u64,
        /// The model version the cohort's deltas must rest on.
        model_version: u64,
        /// How long the parent waits for the answer.
        deadline: Duration,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<flotilla_protocol::wire::Contribution>,
    },
}

/// A round in progress: when it started and the traffic counters then.
struct RoundStart {
    round: u64,
    at: Instant,
    traffic: (u64, u64),
}

pub(crate) struct Shell {
    pub(crate) machine: Coordinator,
    links: HashMap<ConnectionId, Link>,
    limit: FrameLimit,
    /// The latest model frame, encoded once and shared by every connection: (version, round, bytes).
    model_frame: Option<(u64, u64, Bytes)>,
    traffic: Arc<Traffic>,
    round_start: Option<RoundStart>,
    pub(crate) committed: u64,
    /// UDP bytes over the open connections at the previous commit.
    udp_at_commit: u64,
    persist: mpsc::UnboundedSender<Committed>,
    /// Text of the `Error` just sent to a connection, for the close that follows it.
    error_text: HashMap<ConnectionId, String>,
    logs: LogBudget,
    observer: Option<Arc<dyn Observer>>,
    /// An edge aggregator's pending answer to its parent: (round, where it goes).
    parent_reply: Option<(u64, oneshot::Sender<Contribution>)>,
}

impl Shell {
    pub(crate) fn new(
        machine: Coordinator,
        limit: FrameLimit,
        traffic: Arc<Traffic>,
        persist: mpsc::UnboundedSender<Committed>,
        logs: LogBudget,
        observer: Option<Arc<dyn Observer>>,
    ) -> Self {
        Self {
            machine,
            links: HashMap::new(),
            limit,
            model_frame: None,
            traffic,
            round_start: None,
            committed: 0,
            udp_at_commit: 0,
            persist,
            error_text: HashMap::new(),
            logs,
            observer,
            parent_reply: None,
        }
    }

    /// What an edge aggregator's parent asks.
    pub(crate) fn handle_parent(&mut self, input: ParentInput) {
        let now = Instant::now();
        match input {
            ParentInput::Model { model_version, round, params } => {
                match self.machine.adopt_model(model_version, round, params, now) {
                    Ok(()) => tracing::debug!(model_version, round, "parent's model adopted"),
                    Err(error) => {
                        tracing::error!(%error, model_version, "the parent's model does not fit; not adopted")
                    }
                }
            }
            ParentInput::Request { round, model_version, deadline, reply } => {
                self.parent_reply = Some((round, reply));
                self.machine.handle_parent_request(round, model_version, deadline, now);
            }
        }
    }

    pub(crate) fn handle(&mut self, inbound: Inbound) {
        let now = Instant::now();
        match inbound {
            Inbound::Connected { conn, link, identity } => {
                tracing::debug!(%conn, remote = %link.remote, ?identity, "connection accepted");
                self.links.insert(conn, link);
                self.machine.handle_connect_as(conn, identity, now);
            }
            // The permit, if any, is released once the frame has been handled (folded).
            Inbound::Frame { conn, payload, permit: _permit } => self.machine.handle_payload(conn, payload, now),
            Inbound::Disconnected { conn, reason, misbehaved } => {
                if self.links.remove(&conn).is_some() {
                    tracing::debug!(%conn, %reason, "connection ended");
                }
                if misbehaved {
                    self.machine.handle_misbehaviour(conn, now);
                }
                self.machine.handle_disconnect(conn, now);
            }
        }
    }

    /// Sends, closes and logs everything the state machine asks for, until it is quiet.
    pub(crate) fn drain(&mut self) {
        loop {
            let mut busy = false;
            while let Some(transmit) = self.machine.poll_send() {
                busy = true;
                let (conn, message) = match transmit {
                    Transmit::Model { conn, model_version, round } => {
                        match self.model_frame(model_version, round) {
                            Ok(frame) => self.deliver(conn, Outbound::Frame(frame)),
                            Err(error) => {
                                tracing::error!(%conn, %error, "the model could not be encoded; closing the connection");
                                self.drop_link(conn, ErrorCode::Internal, &format!("internal error: {error}"));
                            }
                        }
                        continue;
                    }
                    Transmit::Message(conn, message) => (conn, message),
                };
                match &message {
                    // Each request lets the client send one large frame (see `connection`).
                    CoordinatorMessage::UpdateRequest { .. } | CoordinatorMessage::SecAgg { .. } => {
                        if let Some(link) = self.links.get(&conn) {
                            link.grant_upload();
                        }
                    }
                    CoordinatorMessage::Error { message, .. } => {
                        self.error_text.insert(conn, message.clone());
                    }
                    _ => {}
                }
                match encode(&message, self.limit) {
                    Ok(frame) => self.deliver(conn, Outbound::Frame(frame)),
                    Err(error) => {
                        tracing::error!(%conn, %error, "message could not be encoded; closing the connection");
                        self.drop_link(conn, ErrorCode::Internal, &format!("internal error: {error}"));
                    }
                }
            }
            // Events first: a refused peer's link (its address) is still known when logged.
            while let Some(event) = self.machine.poll_event() {
                busy = true;
                self.on_event(event);
            }
            while let Some((conn, reason)) = self.machine.poll_close() {
                busy = true;
                match reason {
                    CloseReason::Goodbye => self.deliver(conn, Outbound::Goodbye),
                    // Refused: closed at once, the reason in the close frame; a peer that does
                    // not read cannot keep the connection open behind its queued `Error`.
                    CloseReason::Error(code) => {
                        let text = self.error_text.remove(&conn).unwrap_or_else(|| code.to_string());
                        if let Some(link) = self.links.get(&conn) {
                            close_refused(&link.connection, code, &text);
                        }
                    }
                }
                self.links.remove(&conn);
            }
            if !busy {
                self.error_text.clear();
                return;
            }
        }
    }

    /// The frame of the current model, encoded once per version and round and shared.
    fn model_frame(&mut self, model_version: u64, round: u64) -> Result<Bytes, FramingError> {
        if let Some((version, at_round, frame)) = &self.model_frame
            && (*version, *at_round) == (model_version, round)
        {
            return Ok(frame.clone());
        }
        let frame = encode(&self.machine.model_message(), self.limit)?;
        self.model_frame = Some((model_version, round, frame.clone()));
        Ok(frame)
    }

    /// Queues `outbound` for `conn`; a connection whose queue is full is too slow and dropped.
    fn deliver(&mut self, conn: ConnectionId, outbound: Outbound) {
        let Some(link) = self.links.get(&conn) else { return };
        let len = match &outbound {
            Outbound::Frame(frame) => frame.len() as u64,
            Outbound::Goodbye => 0,
        };
        match link.outbound.try_send(outbound) {
            Ok(()) => {
                self.traffic.bytes_out.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            }
            // A peer that lets OUTBOUND_QUEUE frames pile up does not read (or cannot keep up
            // with a round): like a missed frame deadline, its identity waits out the penalty,
            // so that it cannot make the coordinator encrypt models for it again at once.
            Err(TrySendError::Full(_)) => {
                self.machine.handle_misbehaviour(conn, Instant::now());
                self.drop_link(conn, ErrorCode::Timeout, "client too slow: its send queue is full");
            }
            Err(TrySendError::Closed(_)) => self.drop_link(conn, ErrorCode::Internal, "connection writer ended"),
        }
    }

    /// Closes `conn` at once with `code` and `reason` (logged within its address's budget).
    fn drop_link(&mut self, conn: ConnectionId, code: ErrorCode, reason: &str) {
        let logged = self.may_log(conn);
        if let Some(link) = self.links.remove(&conn) {
            if logged {
                tracing::warn!(%conn, remote = %link.remote, %code, reason, "dropping connection");
            }
            close_refused(&link.connection, code, reason);
        }
        self.machine.handle_disconnect(conn, Instant::now());
    }

    /// Whether a line about `conn`'s peer fits in its address's log budget.
    fn may_log(&self, conn: ConnectionId) -> bool {
        self.links.get(&conn).is_none_or(|link| self.logs.allow(link.remote.ip()))
    }

    fn on_event(&mut self, event: CoordinatorEvent) {
        if let Some(observer) = &self.observer {
            observer.observe(&event, self.machine.joined());
        }
        match event {
            CoordinatorEvent::ClientJoined { conn, client_id, client_name } => {
                let remote = self.links.get_mut(&conn).map(|link| {
                    link.admit();
                    link.remote
                });
                if self.may_log(conn) {
                    let joined = self.machine.joined();
                    tracing::info!(%conn, ?remote, client_id, %client_name, joined, "client joined");
                }
            }
            CoordinatorEvent::ClientRefused { conn, code, reason } => {
                if self.may_log(conn) {
                    let remote = self.links.get(&conn).map(|link| link.remote);
                    tracing::warn!(%conn, ?remote, %code, %reason, "client refused");
                }
            }
            CoordinatorEvent::ClientRedirected { conn, address } => {
                if self.may_log(conn) {
                    tracing::debug!(%conn, %address, "client redirected to an aggregator");
                }
            }
            CoordinatorEvent::AggregatorServing { conn, address } => {
                tracing::info!(%conn, %address, "aggregator serves clients at this address");
            }
            CoordinatorEvent::ClientLeft { conn, client_id } => {
                tracing::info!(%conn, client_id, joined = self.machine.joined(), "client left");
            }
            CoordinatorEvent::ProtocolViolation { conn, reason } => {
                if self.may_log(conn) {
                    let remote = self.links.get(&conn).map(|link| link.remote);
                    tracing::warn!(%conn, ?remote, %reason, "client broke the protocol; closing");
                }
            }
            CoordinatorEvent::ClientError { conn, code, message } => {
                if self.may_log(conn) {
                    tracing::warn!(%conn, %code, %message, "client reported an error");
                }
            }
            CoordinatorEvent::RoundStarted { round, model_version, sampled } => {
                tracing::info!(round, model_version, sampled = sampled.len(), "round started");
                let traffic = self.traffic.snapshot();
                self.round_start = Some(RoundStart { round, at: Instant::now(), traffic });
            }
            CoordinatorEvent::UpdateAccepted { conn, round, samples } => {
                tracing::debug!(%conn, round, samples, "update accepted");
            }
            CoordinatorEvent::UpdateRefused { conn, reason } => {
                if self.may_log(conn) {
                    tracing::warn!(%conn, %reason, "update refused");
                }
            }
            CoordinatorEvent::RoundCommitted {
                round,
                model_version,
                participants,
                samples,
                mean_local_error,
                epsilon,
            } => {
                self.committed += 1;
                let (bytes_in, bytes_out) = self.traffic.snapshot();
                let start = self.round_start.take().filter(|start| start.round == round);
                let (at, (in0, out0)) = start.map_or((Instant::now(), (bytes_in, bytes_out)), |s| (s.at, s.traffic));
                let udp = self.udp_bytes();
                let udp_bytes = udp.saturating_sub(std::mem::replace(&mut self.udp_at_commit, udp));
                let record = RoundRecord {
                    round,
                    model_version,
                    participants,
                    samples,
                    mean_local_error,
                    global_error_pct: None,
                    start_global_error_pct: None,
                    duration_s: at.elapsed().as_secs_f64(),
                    bytes_in: bytes_in - in0,
                    bytes_out: bytes_out - out0,
                    udp_bytes,
                    epsilon,
                    unix_time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                };
                // The persister only stops when this sender is dropped; a send error means it failed,
                // which the run loop reports.
                let _ = self.persist.send(Committed { checkpoint: self.machine.checkpoint(), record });
            }
            CoordinatorEvent::RoundFailed { round, reason } => {
                tracing::warn!(round, %reason, "round failed");
                if self.parent_reply.as_ref().is_some_and(|(asked, _)| *asked == round) {
                    self.parent_reply = None; // The parent's request lapses unanswered.
                }
            }
            CoordinatorEvent::CohortReady { round, contribution } => {
                let participants = contribution.cohort.map_or(0, |c| c.participants);
                let samples = contribution.metrics.samples;
                match self.parent_reply.take() {
                    Some((asked, reply)) if asked == round => {
                        if reply.send(contribution).is_ok() {
                            tracing::info!(round, participants, samples, "cohort update sent to the parent");
                        } else {
                            tracing::warn!(round, "the parent's request lapsed before the cohort was ready");
                        }
                    }
                    other => {
                        self.parent_reply = other;
                        tracing::warn!(round, "cohort ready for a round the parent no longer asks for");
                    }
                }
            }
        }
    }

    /// UDP bytes sent and received so far over the open connections.
    fn udp_bytes(&self) -> u64 {
        self.links
            .values()
            .map(|link| {
                let stats = link.connection.stats();
                stats.udp_tx.bytes + stats.udp_rx.bytes
            })
            .sum()
    }

    /// Drops every outbox (writers finish after their last frame) and the commit queue.
    pub(crate) fn finish(self) -> Served {
        Served { rounds_committed: self.committed, checkpoint: self.machine.checkpoint() }
    }
}
