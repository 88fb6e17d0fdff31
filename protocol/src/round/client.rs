//! A client daemon's protocol state machine.
//!
//! Driving it: create it with [`Client::new`] and send what [`Client::poll_transmit`] yields
//! (first a `Join`); feed every received frame to [`Client::handle_payload`] (or a decoded
//! message to [`Client::handle_message`]); call [`Client::handle_timeout`] when
//! [`Client::poll_timeout`] passes. Drain [`Client::poll_event`]: adopt the parameters of
//! each `ModelReceived`; answer each `UpdateRequested` before its deadline with
//! [`Client::submit_update`] (local parameters minus that model version's, plus counts).
//! Close the connection when [`Client::poll_close`] says so, after sending what is queued.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::CloseReason;
use crate::compress::CompressError;
use crate::model::ModelSpec;
use crate::params::{Fingerprint, ParameterError, ParameterVector};
use crate::privacy::PrivacyError;
use crate::secagg::{SecAggError, ServerMessage as SecAggServerMessage};
use crate::wire::framing::Payload;
use crate::wire::{
    ClientMessage, CompressedUpdate, Contribution, CoordinatorMessage, Endpoint, ErrorCode, PROTOCOL_VERSION, Update,
    UpdateRules,
};

mod prepare;

/// The `model_version` of an `UpdateRequest` asking for an update resting on whatever model the
/// client holds (asynchronous mode). Such a *standing* request does not lapse when a newer
/// model arrives: the client answers with the version its delta rests on.
pub const ANY_MODEL_VERSION: u64 = u64::MAX;

/// Longest relative deadline honoured; longer ones are shortened to this.
pub const MAX_REQUEST_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Something the client's shell must act upon or may log.
#[derive(Debug, PartialEq)]
pub enum ClientEvent {
    /// The coordinator accepted the `Join`.
    Welcomed {
        /// Identifier the coordinator gave this client.
        client_id: u64,
        /// Shape and hyper-parameters of the model to train.
        spec: ModelSpec,
        /// Fingerprint of the model's parameter layout.
        fingerprint: Fingerprint,
        /// Latest round the coordinator has started.
        round: u64,
        /// Version of the current global model.
        model_version: u64,
    },
    /// A global model arrived; the shell adopts it as its new base.
    ModelReceived {
        /// Its version.
        model_version: u64,
        /// Latest round the coordinator had started.
        round: u64,
        /// The parameters (layout and finiteness already checked).
        params: ParameterVector,
    },
    /// The coordinator wants an update; answer with [`Client::submit_update`] before `deadline`.
    UpdateRequested {
        /// The round asking.
        round: u64,
        /// The model version the delta must rest on.
        model_version: u64,
        /// When the request lapses.
        deadline: Instant,
    },
    /// A pending request lapsed (deadline passed or a newer model arrived) unanswered.
    RequestExpired {
        /// Its round.
        round: u64,
    },
    /// The coordinator refused something (the `Join`, or an update).
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its detail.
        message: String,
    },
    /// The coordinator sent this client to an edge aggregator: join it instead (the
    /// session is over).
    Redirected(Endpoint),
    /// The session is over (goodbye from either side, refusal or protocol violation).
    Closed {
        /// Why.
        reason: String,
    },
}

/// Why [`Client::submit_update`] refused to queue an update.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    /// The session is closed.
    #[error("session is closed")]
    Closed,
    /// No update was requested, or the request lapsed.
    #[error("no update request is pending")]
    NoPendingRequest,
    /// An update resting on no sample has no weight.
    #[error("an update needs at least one sample")]
    ZeroSamples,
    /// The metrics count more errors than samples.
    #[error("metrics count more errors than samples")]
    InconsistentMetrics,
    /// The delta does not fit the announced layout, or is not finite.
    #[error("delta refused: {0}")]
    Parameters(#[from] ParameterError),
    /// Clipping or noising the delta failed (bad rules from the coordinator).
    #[error("privacy rules could not be applied: {0}")]
    Privacy(#[from] PrivacyError),
    /// Compressing the delta failed.
    #[error("compression failed: {0}")]
    Compression(#[from] CompressError),
    /// Masking the delta failed.
    #[error("secure aggregation failed: {0}")]
    Secure(#[from] SecAggError),
    /// A cohort's aggregate (an edge aggregator's contribution) cannot follow the parent's
    /// rules: it is never clipped, noised or masked again.
    #[error("the parent's rules ({0}) cannot apply to a cohort's aggregate")]
    CohortRules(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    Joining,
    Ready { client_id: u64, fingerprint: Fingerprint },
    Closed,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    round: u64,
    model_version: u64,
    deadline: Instant,
    /// Asked with [`ANY_MODEL_VERSION`]: survives newer models.
    standing: bool,
}

/// One client's session with the coordinator.
#[derive(Debug)]
pub struct Client {
    session: Session,
    /// Version and length of the latest global model received.
    model: Option<(u64, usize)>,
    request: Option<Request>,
    transmits: VecDeque<ClientMessage>,
    events: VecDeque<ClientEvent>,
    close: Option<CloseReason>,
    preparer: prepare::Preparer,
}

impl Client {
    /// A session that starts by sending `Join` with this name and token.
    pub fn new(client_name: impl Into<String>, auth_token: Option<String>) -> Self {
        let join =
            ClientMessage::Join { protocol_version: PROTOCOL_VERSION, client_name: client_name.into(), auth_token };
        Self {
            session: Session::Joining,
            model: None,
            request: None,
            transmits: VecDeque::from([join]),
            events: VecDeque::new(),
            close: None,
            preparer: prepare::Preparer::new([0; 32]),
        }
    }

    /// Seeds the randomness of noise, stochastic rounding and secure-aggregation keys. The
    /// shell must call this with 32 bytes from the operating system's generator: without it
    /// the seed is fixed (fine for tests, not for privacy).
    pub fn with_entropy(mut self, seed: [u8; 32]) -> Self {
        self.preparer = prepare::Preparer::new(seed);
        self
    }

    /// Identifier given by the coordinator, once welcomed.
    pub fn client_id(&self) -> Option<u64> {
        match self.session {
            Session::Ready { client_id, .. } => Some(client_id),
            Session::Joining | Session::Closed => None,
        }
    }

    /// Version of the latest global model received.
    pub fn model_version(&self) -> Option<u64> {
        self.model.map(|(version, _)| version)
    }

    /// The coordinator's rules for updates in force (the defaults until it sends any).
    pub fn rules(&self) -> &UpdateRules {
        &self.preparer.rules
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.session == Session::Closed
    }

    /// A frame payload arrived (whole, or split by a frame decoder that decoded a model's
    /// values as they arrived); undecodable bytes end the session.
    pub fn handle_payload(&mut self, payload: Payload, now: Instant) {
        match payload.decode::<CoordinatorMessage>() {
            Ok(message) => self.handle_message(message, now),
            Err(error) => self.violation(ErrorCode::Malformed, error.to_string()),
        }
    }

    /// A message arrived from the coordinator.
    pub fn handle_message(&mut self, message: CoordinatorMessage, now: Instant) {
        match (self.session, message) {
            (Session::Closed, _) | (_, CoordinatorMessage::Heartbeat) => {}
            (
                Session::Joining,
                CoordinatorMessage::Welcome { client_id, protocol_version, spec, fingerprint, round, model_version },
            ) => {
                if protocol_version != PROTOCOL_VERSION {
                    let message = format!(
                        "client speaks protocol version {PROTOCOL_VERSION}, coordinator sent {protocol_version}"
                    );
                    self.events.push_back(ClientEvent::Refused {
                        code: ErrorCode::UnsupportedVersion,
                        message: message.clone(),
                    });
                    return self.violation(ErrorCode::UnsupportedVersion, message);
                }
                self.session = Session::Ready { client_id, fingerprint };
                self.events.push_back(ClientEvent::Welcomed { client_id, spec, fingerprint, round, model_version });
            }
            (Session::Joining, CoordinatorMessage::Redirect(endpoint)) => {
                if !endpoint.is_valid() {
                    return self.violation(ErrorCode::Malformed, "redirect to an unreadable address".into());
                }
                let reason = format!("redirected to {}", endpoint.address);
                self.events.push_back(ClientEvent::Redirected(endpoint));
                self.end(CloseReason::Goodbye, reason);
            }
            (Session::Joining, CoordinatorMessage::Error { code, message }) => {
                self.events.push_back(ClientEvent::Refused { code, message: message.clone() });
                self.end(CloseReason::Error(code), message);
            }
            (Session::Ready { fingerprint, .. }, CoordinatorMessage::Model { model_version, round, params }) => {
                let len = self.model.map_or(params.values.len(), |(_, len)| len);
                if let Err(error) = params.check_shape(fingerprint, len) {
                    return self.violation(ErrorCode::Malformed, format!("global model refused: {error}"));
                }
                self.model = Some((model_version, len));
                if let Some(request) = self.request.take_if(|r| !r.standing && r.model_version != model_version) {
                    self.events.push_back(ClientEvent::RequestExpired { round: request.round });
                }
                self.events.push_back(ClientEvent::ModelReceived { model_version, round, params });
            }
            (Session::Ready { .. }, CoordinatorMessage::UpdateRequest { round, model_version, deadline_ms }) => {
                let standing = model_version == ANY_MODEL_VERSION;
                let Some(model_version) = self.model_version().filter(|held| standing || *held == model_version) else {
                    tracing::debug!(round, model_version, "update request for a model not held; ignored");
                    return;
                };
                let deadline = now + Duration::from_millis(deadline_ms).min(MAX_REQUEST_DEADLINE);
                if let Some(old) = self.request.replace(Request { round, model_version, deadline, standing }) {
                    self.events.push_back(ClientEvent::RequestExpired { round: old.round });
                }
                self.events.push_back(ClientEvent::UpdateRequested { round, model_version, deadline });
            }
            (Session::Ready { .. }, CoordinatorMessage::Error { code, message }) => {
                self.events.push_back(ClientEvent::Refused { code, message });
            }
            (Session::Ready { .. }, CoordinatorMessage::Rules(rules)) => {
                tracing::debug!(?rules, "update rules received");
                self.preparer.set_rules(rules);
            }
            (Session::Ready { client_id, .. }, CoordinatorMessage::SecAgg { round, message }) => {
                self.handle_secure(client_id, round, message);
            }
            (_, CoordinatorMessage::Goodbye { reason }) => self.end(CloseReason::Goodbye, reason),
            (Session::Joining, _) => self.violation(ErrorCode::UnexpectedMessage, "message before Welcome".into()),
            (Session::Ready { .. }, CoordinatorMessage::Redirect(_)) => {
                self.violation(ErrorCode::UnexpectedMessage, "redirect after Welcome".into());
            }
            (Session::Ready { .. }, CoordinatorMessage::Welcome { .. }) => {
                self.violation(ErrorCode::UnexpectedMessage, "second Welcome".into());
            }
        }
    }

    /// The instant from [`Client::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(request) = self.request.take_if(|r| r.deadline <= now) {
            self.events.push_back(ClientEvent::RequestExpired { round: request.round });
        }
    }

    /// Queues the answer to the pending request: the contribution's delta is the local
    /// parameters minus the requested model version's.
    pub fn submit_update(&mut self, contribution: Contribution) -> Result<(), SubmitError> {
        let Contribution { delta, metrics, moments, cohort } = contribution;
        let Session::Ready { fingerprint, .. } = self.session else {
            return Err(if self.is_closed() { SubmitError::Closed } else { SubmitError::NoPendingRequest });
        };
        let request = self.request.ok_or(SubmitError::NoPendingRequest)?;
        let len = self.model.map_or(0, |(_, len)| len);
        if metrics.samples == 0 {
            return Err(SubmitError::ZeroSamples);
        }
        if !metrics.is_consistent() {
            return Err(SubmitError::InconsistentMetrics);
        }
        delta.check_shape(fingerprint, len)?;
        // The coordinator refuses claims above its cap (per client behind the update): claim at
        // most that, the counters scaled alike.
        let metrics = match self.preparer.rules.max_samples {
            Some(cap) => metrics.capped(cap.saturating_mul(cohort.map_or(1, |c| c.participants.max(1)))),
            None => metrics,
        };
        // Feature statistics go only where the rules take them (never under DP; masked with
        // the delta under secure aggregation), over at most the samples claimed.
        let rules = &self.preparer.rules;
        let moments = moments.filter(|m| rules.feature_moments && m.count > 0).map(|m| m.scaled_to(metrics.samples));
        let (round, base_version) = (request.round, request.model_version);
        if let Some(cohort) = cohort {
            let rules = &self.preparer.rules;
            let refused = [
                (rules.secure, "secure aggregation"),
                (rules.clip_norm.is_some(), "a clip norm"),
                (rules.noise_std.is_some(), "noise"),
            ];
            if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
                return Err(SubmitError::CohortRules(what));
            }
            let update = Update { round, base_version, delta, metrics, moments };
            self.request = None;
            self.transmits.push_back(ClientMessage::CohortUpdate { update, cohort });
            return Ok(());
        }
        let ParameterVector { format_version, fingerprint, mut values } = delta;
        self.preparer.privatise(&mut values)?;
        if self.preparer.rules.secure {
            let messages = self.preparer.submit_secure(round, prepare::Masked { values, moments })?;
            self.request = None;
            self.transmits.extend(messages);
            return Ok(());
        }
        let message = match self.preparer.compress(&values) {
            Some(compressed) => ClientMessage::CompressedUpdate(CompressedUpdate {
                round,
                base_version,
                format_version,
                fingerprint,
                delta: compressed?,
                metrics,
                moments,
            }),
            None => {
                let delta = ParameterVector { format_version, fingerprint, values };
                ClientMessage::Update(Update { round, base_version, delta, metrics, moments })
            }
        };
        self.request = None;
        self.transmits.push_back(message);
        Ok(())
    }

    /// A secure-aggregation message: opens the round's session or moves it on. A session
    /// that fails only costs this round (the coordinator proceeds without this client).
    fn handle_secure(&mut self, client_id: u64, round: u64, message: SecAggServerMessage) {
        if !self.preparer.rules.secure {
            return self.violation(ErrorCode::UnexpectedMessage, "secure aggregation was not announced".into());
        }
        let result = match message {
            SecAggServerMessage::Setup(setup) => {
                self.preparer.open_session(round, client_id, setup).map(|message| vec![message])
            }
            other => self.preparer.handle_session(round, &other),
        };
        match result {
            Ok(messages) => self.transmits.extend(messages),
            Err(error) => tracing::warn!(round, %error, "secure-aggregation session refused a message"),
        }
    }

    /// Whether a standing request (asked with [`ANY_MODEL_VERSION`]) is pending.
    pub fn standing_request(&self) -> bool {
        self.request.is_some_and(|request| request.standing)
    }

    /// Rests the pending standing request on the latest model held (the learner could not
    /// answer it on the older one) and returns its round and that version; `None` when no
    /// standing request is pending.
    pub fn rebase_standing_request(&mut self) -> Option<(u64, u64)> {
        let held = self.model_version()?;
        let request = self.request.as_mut().filter(|request| request.standing)?;
        request.model_version = held;
        Some((request.round, held))
    }

    /// An edge aggregator announces where its own clients reach it (sent once welcomed).
    pub fn announce(&mut self, endpoint: Endpoint) {
        if matches!(self.session, Session::Ready { .. }) {
            self.transmits.push_back(ClientMessage::Serving(endpoint));
        }
    }

    /// Tells the coordinator that the pending request gets no update (`reason` for its log),
    /// so that its round need not wait for this client; a standing request stays pending.
    pub fn decline(&mut self, reason: impl Into<String>) {
        if self.is_closed() || self.request.is_none_or(|request| request.standing) {
            return;
        }
        self.request = None;
        self.transmits.push_back(ClientMessage::Error { code: ErrorCode::Declined, message: reason.into() });
    }

    /// Says goodbye and ends the session.
    pub fn leave(&mut self, reason: impl Into<String>) {
        if self.is_closed() {
            return;
        }
        let reason = reason.into();
        self.transmits.push_back(ClientMessage::Goodbye { reason: reason.clone() });
        self.end(CloseReason::Goodbye, reason);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.transmits.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Whether (and why) to close the connection, once what was queued has been sent.
    pub fn poll_close(&mut self) -> Option<CloseReason> {
        self.close.take()
    }

    /// When [`Client::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.request.map(|request| request.deadline)
    }

    fn violation(&mut self, code: ErrorCode, message: String) {
        tracing::warn!(?code, %message, "coordinator broke the protocol");
        self.transmits.push_back(ClientMessage::Error { code, message: message.clone() });
        self.end(CloseReason::Error(code), message);
    }

    fn end(&mut self, close: CloseReason, reason: String) {
        self.session = Session::Closed;
        self.request = None;
        self.close = Some(close);
        self.events.push_back(ClientEvent::Closed { reason });
    }
}

#[cfg(test)]
mod tests;
