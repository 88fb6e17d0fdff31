//! Connection limits: at most `max_connections` open at once and `per_address` from one IP
//! (an IPv6 peer counts as its /64: `address_key`),
//! new connections from one IP at most `handshake_rate` a second (a bucket of `per_address`
//! tokens); QUIC address validation (Retry) for unvalidated peers while the coordinator is
//! under load. Refusing costs no cryptography: a peer reconnecting in a loop costs little.
//! Attempts over the handshake rate are dropped without an answer, so the peer's own QUIC
//! stack waits out its retransmission timeout (about a second, doubling) before it tries
//! again, instead of reconnecting at once on an immediate refusal.
//!
//! Every accepted connection holds a [`Ticket`] until its task ends; dropping the ticket
//! gives its place back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use flotilla_protocol::round::coordinator::{PeerCounts, address_key};
use std::time::{Duration, Instant};

/// Bounds on what peers may take of the coordinator (connections, time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Slowest transfer served, bytes per second.
    pub min_rate: u32,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one IP address (also the burst of new ones).
    pub per_address: usize,
    /// New connections per second from one IP address, after the burst.
    pub handshake_rate: u32,
}

impl Limits {
    /// Grace every frame gets on top of its size at [`Limits::min_rate`].
    pub const FRAME_GRACE: Duration = Duration::from_secs(10);

    /// Time a frame of `bytes` may take to arrive or leave.
    pub fn frame_deadline(&self, bytes: usize) -> Duration {
        Self::FRAME_GRACE + Duration::from_secs_f64(bytes as f64 / f64::from(self.min_rate.max(1)))
    }
}

/// Handshakes in progress above which unvalidated peers must prove their address (Retry).
pub(crate) const RETRY_ABOVE_HANDSHAKES: usize = 64;

/// The coordinator's count of open connections.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    handshaking: usize,
    per_address: PeerCounts,
    /// New-connection tokens per address: (tokens, when last refilled).
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

/// Addresses whose new-connection buckets are kept; beyond, full buckets are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// What to do with a new connection attempt.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Serve it; the ticket counts it until dropped.
    Accept(Ticket),
    /// Ask the peer to prove its address first (a QUIC Retry).
    Retry,
    /// Refuse it, for this reason.
    Refuse(&'static str),
    /// Drop it without an answer (the peer retransmits after its timeout), for this reason.
    Ignore(&'static str),
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { inner: Arc::new(Inner { limits, state: Mutex::new(State::default()) }) }
    }

    /// Whether a connection from `ip` may start; `validated` when the peer already proved its
    /// address (a Retry token), `may_retry` when a Retry can still be asked for.
    pub(crate) fn admit(&self, ip: IpAddr, validated: bool, may_retry: bool) -> Admission {
        self.admit_at(ip, validated, may_retry, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, validated: bool, may_retry: bool, now: Instant) -> Admission {
        // One peer: an IPv4 address, or an IPv6 /64.
        let ip = address_key(ip);
        let limits = self.inner.limits;
        let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        let burst = limits.per_address as f64;
        let rate = f64::from(limits.handshake_rate);
        if state.buckets.len() >= MAX_BUCKETS && !state.buckets.contains_key(&ip) {
            state.buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        if state.total >= limits.max_connections {
            return Admission::Refuse("the coordinator is at --max-connections");
        }
        if state.per_address.get(ip) >= limits.per_address {
            return Admission::Refuse("this address is at --max-connections-per-address");
        }
        let (tokens, at) = state.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return Admission::Ignore("this address opens connections faster than --handshake-rate");
        }
        *tokens -= 1.0;
        let loaded = state.handshaking >= RETRY_ABOVE_HANDSHAKES || state.total >= limits.max_connections / 2;
        if loaded && !validated && may_retry {
            return Admission::Retry;
        }
        state.total += 1;
        state.handshaking += 1;
        state.per_address.add(ip);
        Admission::Accept(Ticket { inner: self.inner.clone(), ip, handshaking: true })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

/// One open connection's place under the limits.
#[derive(Debug)]
pub(crate) struct Ticket {
    inner: Arc<Inner>,
    ip: IpAddr,
    handshaking: bool,
}

impl Ticket {
    /// The handshake completed: the connection no longer counts as handshaking.
    pub(crate) fn handshake_done(mut self) -> Self {
        if std::mem::take(&mut self.handshaking) {
            let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.handshaking = state.handshaking.saturating_sub(1);
        }
        self
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.total = state.total.saturating_sub(1);
        if self.handshaking {
            state.handshaking = state.handshaking.saturating_sub(1);
        }
        state.per_address.remove(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_connections: usize, per_address: usize) -> Gate {
        Gate::new(Limits { min_rate: 1024, max_connections, per_address, handshake_rate: 1000 })
    }

    #[test]
    fn an_address_reconnecting_in_a_loop_is_held_to_its_rate() {
        let gate = Gate::new(Limits { min_rate: 1024, max_connections: 100, per_address: 4, handshake_rate: 2 });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(matches!(gate.admit_at(ip, true, false, t0), Admission::Accept(_)), "the burst");
        }
        assert!(matches!(gate.admit_at(ip, true, false, t0), Admission::Ignore(_)), "the bucket is empty");
        let later = t0 + std::time::Duration::from_millis(500);
        assert!(matches!(gate.admit_at(ip, true, false, later), Admission::Accept(_)), "one token back");
        assert!(matches!(gate.admit_at(ip, true, false, later), Admission::Ignore(_)));
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(matches!(gate.admit_at(other, true, false, later), Admission::Accept(_)), "per address");
    }

    #[test]
    fn limits_per_address_and_in_total_and_gives_places_back() {
        let gate = gate(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = gate.admit(a, true, false);
        let second = gate.admit(a, true, false);
        assert!(matches!(first, Admission::Accept(_)) && matches!(second, Admission::Accept(_)));
        assert!(matches!(gate.admit(a, true, false), Admission::Refuse(_)), "a third from one address");
        let third = gate.admit(b, true, false);
        assert!(matches!(third, Admission::Accept(_)));
        assert!(matches!(gate.admit(b, true, false), Admission::Refuse(_)), "over the total");
        drop(first);
        assert_eq!(gate.open(), 2);
        let later = Instant::now() + std::time::Duration::from_secs(1); // The address's bucket refilled.
        assert!(matches!(gate.admit_at(a, true, false, later), Admission::Accept(_)), "a place was given back");
        drop((second, third));
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn one_ipv6_64_is_one_peer_and_gets_its_places_back() {
        let gate = gate(100, 2);
        let ip = |text: &str| -> IpAddr { text.parse().unwrap() };
        let first = gate.admit(ip("2001:db8:0:1::1"), true, false);
        let second = gate.admit(ip("2001:db8:0:1::2"), true, false);
        assert!(matches!(first, Admission::Accept(_)) && matches!(second, Admission::Accept(_)));
        assert!(
            matches!(gate.admit(ip("2001:db8:0:1:ffff::3"), true, false), Admission::Refuse(_)),
            "a third address of the same /64"
        );
        assert!(matches!(gate.admit(ip("2001:db8:0:2::1"), true, false), Admission::Accept(_)), "another /64");
        drop(first);
        let later = Instant::now() + std::time::Duration::from_secs(1);
        assert!(matches!(gate.admit_at(ip("2001:db8:0:1::9"), true, false, later), Admission::Accept(_)));
    }

    #[test]
    fn asks_unvalidated_peers_to_retry_under_load() {
        let gate = gate(1000, 1000);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let tickets: Vec<_> = (0..RETRY_ABOVE_HANDSHAKES).map(|_| gate.admit(ip, false, true)).collect();
        assert!(tickets.iter().all(|t| matches!(t, Admission::Accept(_))));
        assert!(matches!(gate.admit(ip, false, true), Admission::Retry), "handshakes pile up: retry");
        assert!(matches!(gate.admit(ip, true, true), Admission::Accept(_)), "a validated peer is served");
        let done: Vec<_> = tickets
            .into_iter()
            .filter_map(|t| match t {
                Admission::Accept(ticket) => Some(ticket.handshake_done()),
                _ => None,
            })
            .collect();
        assert!(matches!(gate.admit(ip, false, true), Admission::Accept(_)), "handshakes done: no retry");
        drop(done);
    }
}
