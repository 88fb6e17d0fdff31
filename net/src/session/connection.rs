//! One connection of a client session: handshake, join, relay, close.

use std::time::{Duration, Instant};

use flotilla_protocol::round::{Client, ClientEvent};
use flotilla_protocol::wire::{CoordinatorMessage, ErrorCode, encode_client_frame};
use quinn::{Connection, ConnectionError, Endpoint, ReadError, SendStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{ClientSessionConfig, LearnerRequest, Outcome, SessionRefused, SessionStats, Target};
use crate::close::{close_code, error_close_code, error_of_close_code};
use crate::framed::{FrameReader, FramedError};
use bytes::Bytes;
use flotilla_protocol::wire::Contribution;

/// How long a closing side waits for its last bytes to be acknowledged.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Pause before the learner is asked again for a standing request it could not answer yet
/// (nothing learnt since its last update, or it had moved to a newer model).
const STANDING_RETRY: Duration = Duration::from_millis(100);

/// 32 bytes from the operating system's generator, seeding DP noise, stochastic rounding and
/// secure-aggregation keys.
fn os_entropy() -> [u8; 32] {
    match crate::tls::os_random() {
        Some(seed) => seed,
        None => {
            // Without OS randomness, fall back on the clock and process id: far weaker; say so.
            tracing::error!("no OS randomness: secure aggregation and DP noise use a weak seed");
            let mut seed = [0u8; 32];
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
            seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
            seed
        }
    }
}

/// A refusal code that retrying cannot fix.
fn is_fatal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unauthorized | ErrorCode::UnsupportedVersion | ErrorCode::SessionReplaced)
}

/// Connects, joins and relays until the connection ends; never panics on the peer's bytes.
pub(super) async fn attempt(
    endpoint: &Endpoint,
    config: &ClientSessionConfig,
    target: &Target,
    learner: &mpsc::Sender<LearnerRequest>,
    shutdown: &CancellationToken,
) -> Outcome {
    let lost = |reason: String, silent: bool| Outcome::Lost { reason, welcomed: false, silent };
    let connecting = match &target.transport {
        Some(client_config) => endpoint.connect_with(client_config.clone(), target.addr, &target.server_name),
        None => endpoint.connect(target.addr, &target.server_name),
    };
    let connecting = match connecting {
        Ok(connecting) => connecting,
        Err(error) => return lost(format!("cannot connect to {}: {error}", target.addr), false),
    };
    let connection = tokio::select! {
        () = shutdown.cancelled() => return Outcome::Shutdown,
        result = tokio::time::timeout(target.connect_timeout, connecting) => match result {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return connection_lost(error, false),
            Err(_) => return lost(format!("handshake with {} timed out", target.addr), true),
        },
    };
    let (send, recv) = match connection.open_bi().await {
        Ok(streams) => streams,
        Err(error) => return connection_lost(error, false),
    };
    SessionStats::add(&config.stats.connections, 1);
    tracing::info!(server = %target.addr, "connected to the coordinator");
    let mut link = Link {
        connection,
        send,
        client: Client::new(config.client_name.clone(), config.auth_token.clone()).with_entropy(os_entropy()),
        pending: None,
        retry_at: None,
        welcomed: false,
        refused: None,
        redirect: None,
        config,
    };
    link.relay(FrameReader::new(recv, config.max_frame).split::<CoordinatorMessage>(), learner, shutdown).await
}

/// Maps a lost connection to an outcome; a close code meaning "refused" is fatal, a timeout
/// means the peer went silent.
fn connection_lost(error: ConnectionError, welcomed: bool) -> Outcome {
    if let ConnectionError::ApplicationClosed(close) = &error
        && let Some(code) = error_of_close_code(close.error_code)
        && is_fatal(code)
    {
        let message = String::from_utf8_lossy(&close.reason).into_owned();
        return Outcome::Refused(SessionRefused { code, message });
    }
    let silent = matches!(error, ConnectionError::TimedOut);
    Outcome::Lost { reason: format!("connection lost: {error}"), welcomed, silent }
}

/// The live state of one connection.
struct Link<'a> {
    connection: Connection,
    send: SendStream,
    client: Client,
    /// The round of the request the learner is working on, and where its answer arrives.
    pending: Option<(u64, oneshot::Receiver<Contribution>)>,
    /// When to ask the learner again for the pending standing request it left unanswered.
    retry_at: Option<Instant>,
    welcomed: bool,
    refused: Option<SessionRefused>,
    /// Where the coordinator sent this client instead of welcoming it.
    redirect: Option<flotilla_protocol::wire::Endpoint>,
    config: &'a ClientSessionConfig,
}

impl Link<'_> {
    async fn relay(
        &mut self,
        mut reader: FrameReader,
        learner: &mpsc::Sender<LearnerRequest>,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let stats = &self.config.stats;
        let mut counted = 0;
        loop {
            if let Some(outcome) = self.pump(learner).await {
                SessionStats::add(&stats.bytes_received, reader.bytes_read() - counted);
                return outcome;
            }
            SessionStats::add(&stats.bytes_received, reader.bytes_read() - counted);
            counted = reader.bytes_read();
            let timeout = self.client.poll_timeout();
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.client.leave("client shutting down");
                    let _ = self.pump(learner).await; // Sends the goodbye and closes.
                    return Outcome::Shutdown;
                }
                frame = reader.next_payload() => match frame {
                    Ok(Some(payload)) => self.client.handle_payload(payload, Instant::now()),
                    Ok(None) => return self.lost("the coordinator finished the stream".into()),
                    Err(FramedError::Read(ReadError::ConnectionLost(error))) => {
                        return self.refusal_or(connection_lost(error, self.welcomed));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "unreadable data from the coordinator; closing");
                        self.connection.close(error_close_code(ErrorCode::Malformed), error.to_string().as_bytes());
                        return self.lost(format!("unreadable data from the coordinator: {error}"));
                    }
                },
                reply = next_reply(&mut self.pending) => self.handle_reply(reply),
                () = sleep_until(timeout), if timeout.is_some() => self.client.handle_timeout(Instant::now()),
                () = sleep_until(self.retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    if let Some(request) = self.retry_standing()
                        && learner.send(request).await.is_err()
                    {
                        self.client.leave("learner stopped");
                    }
                }
            }
        }
    }

    fn handle_reply(&mut self, reply: Result<Contribution, oneshot::error::RecvError>) {
        let Some((round, _)) = self.pending.take() else { return };
        match reply {
            Ok(contribution) => match self.client.submit_update(contribution) {
                Ok(()) => SessionStats::add(&self.config.stats.updates_sent, 1),
                Err(error) => {
                    tracing::warn!(round, %error, "local update not sent");
                    self.client.decline(format!("update not sent: {error}"));
                }
            },
            Err(_) if self.client.standing_request() => {
                tracing::trace!(round, "learner had nothing to send yet; asking again shortly");
                self.retry_at = Some(Instant::now() + STANDING_RETRY);
            }
            Err(_) => {
                tracing::debug!(round, "learner dropped the update request");
                self.client.decline("nothing to send for this round");
            }
        }
    }

    /// Asks the learner again for the pending standing request, on the latest model held.
    fn retry_standing(&mut self) -> Option<LearnerRequest> {
        if self.pending.is_some() {
            return None;
        }
        let (round, model_version) = self.client.rebase_standing_request()?;
        let (reply, answer) = oneshot::channel();
        self.pending = Some((round, answer));
        let keep_pruned = self.client.rules().keep_pruned;
        Some(LearnerRequest::Update { round, model_version, reply, keep_pruned, deadline: None })
    }

    fn lost(&self, reason: String) -> Outcome {
        let silent = matches!(self.connection.close_reason(), Some(ConnectionError::TimedOut));
        Outcome::Lost { reason, welcomed: self.welcomed, silent }
    }

    /// A refusal read before the connection dropped wins over the drop itself.
    fn refusal_or(&mut self, outcome: Outcome) -> Outcome {
        self.refused.take().map_or(outcome, Outcome::Refused)
    }

    /// Sends what the state machine queued, relays its events to the learner and closes the
    /// connection when it says so; returns the outcome once the connection is over.
    async fn pump(&mut self, learner: &mpsc::Sender<LearnerRequest>) -> Option<Outcome> {
        if let Err(error) = self.flush().await {
            return Some(self.lost(format!("sending to the coordinator failed: {error}")));
        }
        let mut learner_gone = false;
        while let Some(event) = self.client.poll_event() {
            if let Some(request) = self.on_event(event) {
                learner_gone |= learner.send(request).await.is_err();
            }
        }
        if learner_gone && !self.client.is_closed() {
            tracing::info!("learner stopped; leaving");
            self.client.leave("learner stopped");
        }
        if let Err(error) = self.flush().await {
            return Some(self.lost(format!("sending to the coordinator failed: {error}")));
        }
        let reason = self.client.poll_close()?;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(CLOSE_GRACE, self.send.stopped()).await;
        self.connection.close(close_code(&reason), b"client closing");
        Some(match (self.refused.take(), learner_gone, self.redirect.take()) {
            (Some(refused), ..) => Outcome::Refused(refused),
            (None, true, _) => Outcome::LearnerGone,
            (None, false, Some(endpoint)) => Outcome::Redirected(endpoint),
            (None, false, None) => self.lost(format!("session closed ({reason:?})")),
        })
    }

    async fn flush(&mut self) -> Result<(), FramedError> {
        while let Some(message) = self.client.poll_transmit() {
            let mut pieces = encode_client_frame(message, self.config.max_frame)?;
            let len = pieces.iter().map(Bytes::len).sum::<usize>();
            SessionStats::add(&self.config.stats.bytes_sent, len as u64);
            self.send.write_all_chunks(&mut pieces).await?;
        }
        Ok(())
    }

    /// Logs an event; returns what to tell the learner about it.
    fn on_event(&mut self, event: ClientEvent) -> Option<LearnerRequest> {
        match event {
            ClientEvent::Welcomed { client_id, spec, fingerprint, round, model_version } => {
                tracing::info!(client_id, round, model_version, %fingerprint, "joined");
                self.welcomed = true;
                if let Some(serving) = &self.config.announce {
                    self.client.announce(serving.clone());
                }
                Some(LearnerRequest::Welcome { spec, fingerprint })
            }
            ClientEvent::ModelReceived { model_version, round, params } => {
                tracing::debug!(model_version, round, "global model received");
                let rules = self.client.rules();
                let (keep_pruned, cohort_privacy) = (rules.keep_pruned, rules.cohort_privacy);
                Some(LearnerRequest::Adopt { model_version, round, params, keep_pruned, cohort_privacy })
            }
            ClientEvent::UpdateRequested { round, model_version, deadline } => {
                let (reply, answer) = oneshot::channel();
                self.pending = Some((round, answer));
                let keep_pruned = self.client.rules().keep_pruned;
                Some(LearnerRequest::Update { round, model_version, reply, keep_pruned, deadline: Some(deadline) })
            }
            ClientEvent::RequestExpired { round } => {
                if self.pending.as_ref().is_some_and(|(pending, _)| *pending == round) {
                    self.pending = None;
                }
                tracing::info!(round, "update request expired unanswered");
                None
            }
            ClientEvent::Refused { code, message } => {
                tracing::warn!(%code, %message, "coordinator refused");
                if is_fatal(code) {
                    self.refused = Some(SessionRefused { code, message });
                }
                None
            }
            ClientEvent::Closed { reason } => {
                tracing::info!(%reason, "session closed");
                None
            }
            ClientEvent::Redirected(endpoint) => {
                tracing::info!(address = %endpoint.address, "the coordinator sent this client to an aggregator");
                self.redirect = Some(endpoint);
                None
            }
        }
    }
}

async fn next_reply(
    pending: &mut Option<(u64, oneshot::Receiver<Contribution>)>,
) -> Result<Contribution, oneshot::error::RecvError> {
    match pending {
        Some((_, answer)) => answer.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
