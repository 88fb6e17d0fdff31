//! The client side of a session: connect, join, relay between the coordinator and the
//! learner, reconnect when the coordinator is away.
//!
//! [`run_client_session`] drives a [`flotilla_protocol::round::Client`] over one bidirectional QUIC
//! stream and talks to the learner task through [`LearnerRequest`]s: a `Welcome` and an
//! `Adopt` after every (re)connection and each new global model, an `Update` whenever the
//! coordinator asks for one. A lost connection is retried with [`Backoff`]; only a refusal
//! (bad token, other protocol version) or a local configuration error ends the session
//! with an error.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::params::{Fingerprint, ParameterVector};
use flotilla_protocol::wire::framing::FrameLimit;
use flotilla_protocol::wire::{ALPN, CohortPrivacy, Contribution, ErrorCode};
use quinn::Endpoint;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::tls::{self, ClientTls};
use crate::transport::{AGGREGATOR_IDLE_TIMEOUT, Tuning};

mod connection;

/// What the session asks of the learner task.
#[derive(Debug)]
pub enum LearnerRequest {
    /// (Re)connected and welcomed: the model to train has this shape and layout.
    Welcome {
        /// Shape and hyper-parameters of the model.
        spec: ModelSpec,
        /// Fingerprint of its parameter layout.
        fingerprint: Fingerprint,
    },
    /// A global model arrived: adopt it as the new base (keep learning from it).
    Adopt {
        /// Its version.
        model_version: u64,
        /// Latest round the coordinator had started.
        round: u64,
        /// The parameters.
        params: ParameterVector,
        /// Whether weights zero in it must stay zero (the rules' `keep_pruned`).
        keep_pruned: bool,
        /// The coordinator's differential privacy, for an edge aggregator to apply to its
        /// cohort (the rules' `cohort_privacy`; a client ignores it).
        cohort_privacy: Option<CohortPrivacy>,
    },
    /// The coordinator wants this client's update; answer on `reply` before the deadline
    /// (a dropped or late reply just lets the request expire).
    Update {
        /// The round asking.
        round: u64,
        /// The model version the delta must rest on.
        model_version: u64,
        /// Where to send the answer.
        reply: oneshot::Sender<Contribution>,
        /// Whether the weights zero in the base must stay zero in the delta (the rules'
        /// `keep_pruned`).
        keep_pruned: bool,
        /// When the coordinator stops waiting for the answer (`None`: a standing request,
        /// asked again on a newer model, with no deadline of its own).
        deadline: Option<std::time::Instant>,
    },
}

/// Counters of one client session, over all its connections.
#[derive(Debug, Default)]
pub struct SessionStats {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    connections: AtomicU64,
    updates_sent: AtomicU64,
}

impl SessionStats {
    /// Frame bytes written to the coordinator.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Stream bytes read from the coordinator.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Connections established (1 + reconnections).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Updates sent.
    pub fn updates_sent(&self) -> u64 {
        self.updates_sent.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where and how to reach the coordinator.
#[derive(Debug, Clone)]
pub struct ClientSessionConfig {
    /// The coordinator's UDP address.
    pub server_addr: SocketAddr,
    /// The name its certificate must carry (e.g. `localhost`).
    pub server_name: String,
    /// Trusted CA and optional client certificate.
    pub tls: ClientTls,
    /// This client's name, for logs on both sides.
    pub client_name: String,
    /// Pre-shared token, when the coordinator requires one.
    pub auth_token: Option<String>,
    /// Largest frame accepted from the coordinator.
    pub max_frame: FrameLimit,
    /// Delays between reconnection attempts.
    pub backoff: Backoff,
    /// Longest wait for a QUIC handshake.
    pub connect_timeout: Duration,
    /// Counters, shared with whoever reports them.
    pub stats: Arc<SessionStats>,
    /// An endpoint shared by many sessions (a virtual fleet: one UDP socket for all, made by
    /// [`client_endpoint`]); `None` gives the session an endpoint of its own.
    pub endpoint: Option<Endpoint>,
    /// Flow-control windows and MTU ceiling of the session's own endpoint.
    pub tuning: Tuning,
    /// An edge aggregator's own serving address, announced once welcomed (for the parent's
    /// redirects).
    pub announce: Option<flotilla_protocol::wire::Endpoint>,
}

impl ClientSessionConfig {
    /// A configuration with default limits, backoff and no token or client certificate.
    pub fn new(
        server_addr: SocketAddr,
        server_name: impl Into<String>,
        ca: PathBuf,
        client_name: impl Into<String>,
    ) -> Self {
        Self {
            server_addr,
            server_name: server_name.into(),
            tls: ClientTls { ca, identity: None },
            client_name: client_name.into(),
            auth_token: None,
            max_frame: FrameLimit::DEFAULT,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            stats: Arc::default(),
            endpoint: None,
            tuning: Tuning::CLIENT,
            announce: None,
        }
    }
}

/// The coordinator refused this client for good (bad token, other protocol version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("coordinator refused the session ({code}): {message}")]
pub struct SessionRefused {
    /// The refusal's code.
    pub code: ErrorCode,
    /// The coordinator's explanation.
    pub message: String,
}

/// How one connection ended.
#[derive(Debug)]
enum Outcome {
    /// Shutdown was requested; goodbye said.
    Shutdown,
    /// The learner's channel closed; goodbye said.
    LearnerGone,
    /// Refused for good.
    Refused(SessionRefused),
    /// Lost or closed; worth retrying. `welcomed` resets the backoff; `silent`: the peer
    /// stopped answering (a handshake or idle timeout) rather than closing or resetting.
    Lost { reason: String, welcomed: bool, silent: bool },
    /// Sent to an edge aggregator instead of being welcomed.
    Redirected(flotilla_protocol::wire::Endpoint),
}

/// Where one connection attempt goes: the configured coordinator, or the aggregator it
/// redirected this client to.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    server_name: String,
    /// Longest wait for its handshake: the configured one for the coordinator, at most
    /// [`AWAY_CONNECT_TIMEOUT`] for an aggregator it redirected to (a dead one does not answer,
    /// and the client should soon ask its coordinator again).
    connect_timeout: Duration,
    /// The connection's own client configuration: at an aggregator, one whose idle timeout is
    /// [`AGGREGATOR_IDLE_TIMEOUT`]; `None` at the coordinator (the endpoint's default).
    transport: Option<quinn::ClientConfig>,
}

impl Target {
    /// An aggregator the coordinator redirected this client to.
    fn is_away(&self) -> bool {
        self.transport.is_some()
    }
}

/// Longest handshake wait at an aggregator the coordinator redirected this client to.
const AWAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redirects followed in a row without being welcomed before the session backs off.
const MAX_REDIRECTS: u32 = 3;

/// Failed attempts at a redirected aggregator before the session asks its coordinator again.
const AWAY_ATTEMPTS: u32 = 2;

/// Runs the client session until `shutdown` is cancelled, the learner's receiver is dropped
/// or the coordinator refuses the client (an error, downcastable to [`SessionRefused`]).
pub async fn run_client_session(
    config: ClientSessionConfig,
    learner: mpsc::Sender<LearnerRequest>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (endpoint, owned) = match &config.endpoint {
        Some(shared) => (shared.clone(), false),
        None => (client_endpoint(&config.tls, config.server_addr, &config.tuning)?, true),
    };
    let mut failures = 0u32;
    let home = Target {
        addr: config.server_addr,
        server_name: config.server_name.clone(),
        connect_timeout: config.connect_timeout,
        transport: None,
    };
    let away_tuning = config.tuning.with_idle_timeout(AGGREGATOR_IDLE_TIMEOUT);
    let away_transport =
        tls::quic_client_config(&config.tls, ALPN, &away_tuning).context("client TLS configuration")?;
    let mut target = home.clone();
    let (mut redirects, mut away_failures) = (0u32, 0u32);
    let result = loop {
        let reason = match connection::attempt(&endpoint, &config, &target, &learner, &shutdown).await {
            Outcome::Shutdown | Outcome::LearnerGone => break Ok(()),
            Outcome::Refused(refused) => {
                tracing::error!(code = %refused.code, message = %refused.message, "coordinator refused this client");
                break Err(anyhow::Error::new(refused));
            }
            Outcome::Redirected(to) => {
                redirects += 1;
                match tokio::net::lookup_host(to.address.as_str()).await.map(|mut addrs| addrs.next()) {
                    Ok(Some(addr)) if redirects <= MAX_REDIRECTS => {
                        let connect_timeout = config.connect_timeout.min(AWAY_CONNECT_TIMEOUT);
                        let transport = Some(away_transport.clone());
                        target = Target { addr, server_name: to.server_name, connect_timeout, transport };
                        away_failures = 0;
                        continue;
                    }
                    Ok(Some(_)) => format!("redirected {redirects} times in a row"),
                    Ok(None) | Err(_) => {
                        target = home.clone();
                        format!("redirected to {:?}, which resolves to no address", to.address)
                    }
                }
            }
            Outcome::Lost { reason, welcomed, silent } => {
                if welcomed {
                    failures = 0;
                    redirects = 0;
                    away_failures = 0;
                }
                // A restarted aggregator resets the connection at once: worth another try. A
                // silent one (a handshake or idle timeout) is likely dead: ask the coordinator.
                if target.is_away() {
                    away_failures = if silent { AWAY_ATTEMPTS } else { away_failures + 1 };
                    if away_failures >= AWAY_ATTEMPTS {
                        tracing::info!(aggregator = %target.addr, %reason, "the aggregator is away; asking the coordinator again");
                        target = home.clone();
                        away_failures = 0;
                        if silent {
                            // Its silence already took the idle timeout; no backoff on top.
                            failures = 0;
                        }
                    }
                }
                reason
            }
        };
        let delay = config.backoff.delay(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "no session with the coordinator");
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    };
    if owned {
        endpoint.close(crate::close::GOODBYE, b"client leaving");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    result
}

/// A client endpoint on an ephemeral UDP port of `server`'s address family, trusting `tls`,
/// with the transport settings of `tuning`.
pub fn client_endpoint(tls: &ClientTls, server: SocketAddr, tuning: &Tuning) -> anyhow::Result<Endpoint> {
    let client_config = tls::quic_client_config(tls, ALPN, tuning).context("client TLS configuration")?;
    let bind: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let mut endpoint = crate::transport::bind_endpoint(bind, None, tuning, None)
        .with_context(|| format!("binding a UDP socket on {bind}"))?;
    endpoint.set_default_client_config(client_config);
    Ok(endpoint)
}
