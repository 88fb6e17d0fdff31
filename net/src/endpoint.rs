//! The coordinator's side of the wire, as [`crate::session`] is the client's: the accept loop,
//! one task per connection and the round task driving the sans-IO
//! [`flotilla_protocol::round::Coordinator`].
//!
//! - `gate`: connection limits (in total, per address, new connections per second) and QUIC
//!   Retry under load.
//! - `connection`: one client connection: handshake, a reader forwarding frames to the round
//!   task (a small `Join` frame first, per-frame deadlines, upload permits) and a writer.
//! - `shell`: the round task's state: the state machine, the connections' outboxes, one shared
//!   encoded model frame, the events logged once each, and a [`Committed`] per committed round.
//! - `logs`: per-address budgets of the log lines a peer can cause.
//!
//! [`serve`] runs all of it on a bound endpoint until shutdown or a round limit; what a commit
//! leaves behind (checkpoint, `rounds.jsonl`, evaluation) is the caller's, through the
//! [`Committed`] queue.

mod connection;
mod gate;
mod logs;
mod shell;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::round::{ConnectionId, Coordinator};
use flotilla_protocol::wire::framing::FrameLimit;
use quinn::Endpoint;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connection::upload_limit;
pub use gate::Limits;
pub use shell::{Committed, Observer, ParentInput, RoundRecord, Served};

use crate::close::GOODBYE;
use crate::transport::Tuning;
use connection::{Context, Traffic, Uploads};
use gate::{Admission, Gate};
use logs::LogBudget;
use shell::Shell;

/// How the endpoint serves its clients.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Connection and transfer limits.
    pub limits: Limits,
    /// Time a new connection has to open its stream and send `Join`.
    pub join_timeout: Duration,
    /// Largest frame a client may send (see [`upload_limit`]).
    pub upload_limit: FrameLimit,
    /// Largest frame the coordinator sends (the model's broadcast fits in it).
    pub max_frame: FrameLimit,
    /// Large frames (updates) received at once.
    pub upload_slots: usize,
    /// The QUIC windows the upload permits open and close.
    pub tuning: Tuning,
    /// Stop after this many committed rounds.
    pub max_rounds: Option<u64>,
}

/// Serves `endpoint`'s clients with `machine` until `shutdown` is cancelled, the endpoint is
/// closed or `config.max_rounds` rounds are committed; then says goodbye to every client,
/// closes the endpoint and waits (briefly) for it. Each commit is queued to `committed`, which
/// is dropped on return, so a consumer draining it ends after the last one; `observer` (if
/// any) sees every event. An edge aggregator's round task also takes what its parent asks
/// from `parent`.
pub async fn serve(
    endpoint: &Endpoint,
    machine: Coordinator,
    config: EndpointConfig,
    committed: mpsc::UnboundedSender<Committed>,
    observer: Option<Arc<dyn Observer>>,
    mut parent: Option<mpsc::Receiver<ParentInput>>,
    shutdown: CancellationToken,
) -> Served {
    let (inbound_tx, mut inbound_rx) = mpsc::channel(1024);
    let traffic = Arc::new(Traffic::default());
    let handshakes = shutdown.child_token();
    let context = Context {
        inbound: inbound_tx,
        limit: config.upload_limit,
        traffic: traffic.clone(),
        shutdown: handshakes.clone(),
        join_timeout: config.join_timeout,
        uploads: Uploads::new(config.upload_slots, &config.tuning),
        limits: config.limits,
        logs: LogBudget::default(),
    };
    let gate = Gate::new(config.limits);
    let mut shell = Shell::new(machine, config.max_frame, traffic, committed, context.logs.clone(), observer);
    let tracker = TaskTracker::new();
    let mut next_conn = 0u64;
    loop {
        let timeout = shell.machine.poll_timeout();
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let remote = incoming.remote_address();
                    match gate.admit(remote.ip(), incoming.remote_address_validated(), incoming.may_retry()) {
                        Admission::Accept(ticket) => {
                            next_conn += 1;
                            let conn = ConnectionId(next_conn);
                            tracker.spawn(connection::serve(incoming, conn, context.clone(), ticket));
                        }
                        Admission::Retry => {
                            // Infallible after `may_retry`; a failure only drops the attempt.
                            let _ = incoming.retry();
                        }
                        Admission::Refuse(reason) => {
                            if context.logs.allow(remote.ip()) {
                                tracing::warn!(%remote, reason, "connection refused");
                            }
                            incoming.refuse();
                        }
                        Admission::Ignore(reason) => {
                            if context.logs.allow(remote.ip()) {
                                tracing::warn!(%remote, reason, "connection attempt dropped");
                            }
                            incoming.ignore();
                        }
                    }
                }
                None => break,
            },
            Some(inbound) = inbound_rx.recv() => shell.handle(inbound),
            input = next_parent_input(&mut parent) => match input {
                Some(input) => shell.handle_parent(input),
                None => {
                    tracing::warn!("the parent's session ended; stopping");
                    break;
                }
            },
            () = sleep_until(timeout), if timeout.is_some() => shell.machine.handle_timeout(Instant::now()),
        }
        shell.drain();
        if config.max_rounds.is_some_and(|max| shell.committed >= max) {
            tracing::info!(rounds = shell.committed, "round limit reached; stopping");
            break;
        }
    }
    shell.machine.shutdown("coordinator shutting down");
    shell.drain();
    let served = shell.finish();
    drop((inbound_rx, context));
    close_connections(&tracker, endpoint, &handshakes).await;
    served
}

/// Lets connections deliver their goodbyes, then closes the endpoint and waits for it.
async fn close_connections(tracker: &TaskTracker, endpoint: &Endpoint, handshakes: &CancellationToken) {
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
    handshakes.cancel(); // Ends tasks still in a handshake or waiting for a stream.
    endpoint.close(GOODBYE, b"coordinator shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
}

/// The next input from the parent; never, without a parent.
async fn next_parent_input(parent: &mut Option<mpsc::Receiver<ParentInput>>) -> Option<ParentInput> {
    match parent {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
