//! The API's accept loop: HTTP/1 connections from hyper, each in a task of its own, within
//! [`ConnectionLimits`].
//!
//! axum's own `serve` sets no header-read timeout and no limit on connections, so a peer that
//! opens connections and never finishes a request (slowloris) holds a socket and a task each
//! for as long as it likes, until the process runs out of file descriptors (and then cannot
//! write its checkpoint). Here every connection must deliver each request's headers within
//! [`ConnectionLimits::header_read_timeout`] (an idle keep-alive connection too: hyper starts
//! the clock when it waits for a request's head), at most
//! [`ConnectionLimits::max_connections`] are open at once and at most
//! [`ConnectionLimits::max_per_address`] from one IP address (an IPv6 peer counts as its /64,
//! as on the QUIC side); a connection over a limit is closed as soon as it is accepted.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use flotilla_protocol::round::coordinator::PeerCounts;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest the requests in flight may take to finish once the server is stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many connections the API holds and how long a request's headers may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Connections open at once from one IP address (a proxy in front of the API counts as
    /// one address: raise this, or give it its own limit, behind one).
    pub max_per_address: usize,
    /// Longest a connection may take to send a request's headers, or stay idle between
    /// requests; it is closed after.
    pub header_read_timeout: Duration,
}

impl ConnectionLimits {
    /// The defaults of both daemons' APIs (one source: the coordinator's flags fall back to
    /// these fields).
    pub const DEFAULT: ConnectionLimits =
        ConnectionLimits { max_connections: 512, max_per_address: 64, header_read_timeout: Duration::from_secs(15) };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Open connections per peer, shared by the connection tasks.
type PerAddress = Arc<Mutex<PeerCounts>>;

/// One connection's place in [`PerAddress`], given back when dropped.
struct Slot {
    table: PerAddress,
    ip: IpAddr,
}

impl Slot {
    fn take(table: &PerAddress, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut counts = table.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.get(ip) >= max {
            return None;
        }
        counts.add(ip);
        Some(Slot { table: table.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).remove(self.ip);
    }
}

/// Serves `app` on the connections `listener` accepts, within `limits`, until `shutdown`
/// completes; then lets the requests in flight finish (each connection is shut down
/// gracefully, for at most 5 s) and returns.
pub async fn serve_connections<L>(
    mut listener: L,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener<Addr = SocketAddr>,
{
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerAddress::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(%addr, limit = limits.max_connections, "HTTP connection refused: too many open");
            continue;
        };
        let Some(slot) = Slot::take(&per_address, addr.ip(), limits.max_per_address) else {
            tracing::debug!(%addr, limit = limits.max_per_address, "HTTP connection refused: too many from this address");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
            // Declared after the connection, so dropped before it: the places are given back
            // before the socket is freed (hyper may have shut it down a moment earlier).
            let _held = (permit, slot);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    // A request in flight gets its answer; a connection still sending headers
                    // (hyper waits for them) is dropped after the grace.
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(SHUTDOWN_GRACE, connection).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(error) = result {
                tracing::trace!(%addr, %error, "HTTP connection ended");
            }
        });
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_slots_and_gets_them_back() {
        let table = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = Slot::take(&table, a, 2).unwrap();
        let _second = Slot::take(&table, a, 2).unwrap();
        assert!(Slot::take(&table, a, 2).is_none());
        assert!(Slot::take(&table, b, 2).is_some(), "another address has its own slots");
        drop(first);
        assert!(Slot::take(&table, a, 2).is_some());
    }
}
