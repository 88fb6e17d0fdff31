//! QUIC transport settings shared by the coordinator and the clients.
//!
//! Models of several megabytes cross the wire every round. A receiver's flow-control window
//! bounds both the bytes in flight towards it and what quinn buffers for it, so the windows
//! are a [`Tuning`]: a client keeps a window that fills a long fat link, while the
//! coordinator keeps every connection's window small and opens it only for the few uploads
//! it admits at a time (see the coordinator's `connection` module), which keeps its memory
//! O(model) whatever the number of clients. Keep-alives hold idle connections open between
//! rounds through NATs; the idle timeout bounds how long a vanished peer goes unnoticed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{
    AsyncUdpSocket, Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, ServerConfig, TransportConfig, VarInt,
};

pub mod prefilter;

/// Per-connection send window: 32 MiB (what may be unacknowledged; the data itself is the
/// shared model frame, not a copy per connection).
pub const SEND_WINDOW: u64 = 32 << 20;
/// Longest interval between keep-alive packets on an otherwise quiet connection (a quarter
/// of the idle timeout when that is shorter than 8 s).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A connection silent for this long is considered lost (the default; QUIC takes the
/// smaller of the two sides' values).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The idle timeout of links whose loss should be noticed within seconds: a client's
/// connection to the edge aggregator its coordinator redirected it to (a silent one sends it
/// back to the coordinator for another).
pub const AGGREGATOR_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// The idle timeout an edge aggregator proposes on its link to its parent: the parent stops
/// redirecting clients to a dead aggregator once this link times out, before those clients'
/// own links to it do ([`AGGREGATOR_IDLE_TIMEOUT`]) and they ask the parent again.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// quinn's default ceiling for MTU discovery: fits Ethernet's 1,500-byte MTU over IPv4 and IPv6.
pub const ETHERNET_UDP_PAYLOAD: u16 = 1452;
/// Largest UDP payload for which segmentation offload stays on: quinn hands the kernel up to
/// ten equal datagrams per send, and one send must stay under 64 KiB.
pub const GSO_UDP_PAYLOAD_LIMIT: u16 = 6_500;
/// quinn's own cap on datagrams per segmentation-offload send.
pub const MAX_GSO_SEGMENTS: usize = 10;
/// Least time between two stateless resets of a server with a kept reset key.
pub const RESET_INTERVAL: Duration = Duration::from_millis(1);
/// Largest UDP payload accepted at all (IPv4's limit on a 64 KiB-MTU loopback).
pub const MAX_UDP_PAYLOAD: u16 = 65_000;
/// Kernel buffer sizes asked for the endpoint's UDP socket (send and receive): 16 MiB.
///
/// With Linux's default of 208 KiB, a coordinator receiving several multi-megabyte updates
/// at once overflows its receive buffer, the kernel drops datagrams, and QUIC's loss recovery
/// shrinks its congestion windows: on loopback, 10 clients uploading 4 MB each lost ~1,400
/// packets per round. The kernel caps the request at `net.core.rmem_max` / `wmem_max`
/// (4 MiB on this kind of machine); raise those sysctls on a busy coordinator: the request is
/// above them so that raising them takes effect (with both at 16 MiB, 100 clients with a
/// socket each uploading 400 KB at once cost no drops where 4 MiB dropped 200-1,700 datagrams
/// per run of 13 rounds). Buffer memory is only used while datagrams wait.
pub const SOCKET_BUFFER: usize = 16 << 20;

/// Flow-control windows and packet size of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Connection-level receive window, bytes.
    pub receive_window: u32,
    /// Receive window of the one stream, bytes.
    pub stream_receive_window: u32,
    /// Ceiling of MTU discovery (UDP payload bytes, 1200 to [`MAX_UDP_PAYLOAD`]). Above
    /// [`GSO_UDP_PAYLOAD_LIMIT`] segmentation offload is turned off: on loopback or jumbo-frame
    /// links one large datagram per send beats batches of small ones; on Ethernet keep the
    /// default.
    pub max_udp_payload: u16,
    /// Most datagrams handed to the kernel per send with segmentation offload (1–10). quinn
    /// keeps a transmit buffer of this many datagrams per connection for the connection's
    /// life, so a coordinator holding thousands of connections trades a little throughput
    /// for memory with a smaller value.
    pub gso_segments: usize,
    /// How long a silent connection is kept before it is considered lost (at least 1 s);
    /// keep-alives go out at a quarter of it, at most every [`KEEP_ALIVE_INTERVAL`].
    pub idle_timeout: Duration,
}

impl Tuning {
    /// A client: 16 MiB windows (a 4 MB model in flight on a 100 ms, 300 Mbit/s path).
    pub const CLIENT: Tuning = Tuning {
        receive_window: 16 << 20,
        stream_receive_window: 16 << 20,
        max_udp_payload: ETHERNET_UDP_PAYLOAD,
        gso_segments: MAX_GSO_SEGMENTS,
        idle_timeout: IDLE_TIMEOUT,
    };

    /// The coordinator: `idle_window` per connection (enough for control messages and small
    /// updates); admitted uploads are opened to `upload_window` on the fly.
    pub fn coordinator(idle_window: u32, upload_window: u32, max_udp_payload: u16, gso_segments: usize) -> Tuning {
        Tuning {
            receive_window: idle_window,
            stream_receive_window: upload_window,
            max_udp_payload,
            gso_segments: gso_segments.clamp(1, MAX_GSO_SEGMENTS),
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// This tuning with another MTU ceiling (clamped to 1200..=[`MAX_UDP_PAYLOAD`]).
    pub fn with_max_udp_payload(self, bytes: u16) -> Tuning {
        Tuning { max_udp_payload: bytes.clamp(1200, MAX_UDP_PAYLOAD), ..self }
    }

    /// This tuning with another idle timeout (at least 1 s, at most [`IDLE_TIMEOUT`]).
    pub fn with_idle_timeout(self, idle: Duration) -> Tuning {
        Tuning { idle_timeout: idle.clamp(Duration::from_secs(1), IDLE_TIMEOUT), ..self }
    }

    /// The interval between keep-alives: a quarter of the idle timeout, at most
    /// [`KEEP_ALIVE_INTERVAL`], so three in a row may be lost before the link is.
    pub fn keep_alive_interval(&self) -> Duration {
        (self.idle_timeout / 4).min(KEEP_ALIVE_INTERVAL)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::CLIENT
    }
}

/// The transport configuration of one side: its windows, keep-alive, idle timeout, MTU
/// discovery up to its ceiling, one bidirectional stream per connection and no
/// unidirectional ones.
pub fn transport_config(tuning: &Tuning) -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(tuning.stream_receive_window))
        .receive_window(VarInt::from_u32(tuning.receive_window))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(tuning.keep_alive_interval()))
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // Flotilla sends no unreliable datagrams: a peer's DATAGRAM frames are refused, never buffered.
        .datagram_receive_buffer_size(None);
    // At most 10 s (`with_idle_timeout`'s clamp; the constants are no more) fits in a VarInt
    // of milliseconds; the fallback only guards a future edit.
    let idle = IdleTimeout::try_from(tuning.idle_timeout).unwrap_or(IdleTimeout::from(VarInt::from_u32(10_000)));
    config.max_idle_timeout(Some(idle));
    let ceiling = tuning.max_udp_payload.clamp(1200, MAX_UDP_PAYLOAD);
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(ceiling);
    config.mtu_discovery_config(Some(mtu));
    config.enable_segmentation_offload(ceiling <= GSO_UDP_PAYLOAD_LIMIT);
    config
}

/// Binds a UDP socket on `addr` with [`SOCKET_BUFFER`]-sized kernel buffers and makes it a
/// QUIC endpoint (a server when `server` is given) accepting datagrams up to `tuning`'s
/// ceiling: quinn's receive buffers are sized by it (times its batch and GRO factors: 133 MB
/// of address space at 65,000 bytes), so it is not raised further than asked.
///
/// `reset_key` keys the stateless-reset tokens (HMAC-SHA256 of each connection id). A server
/// that keeps it across restarts answers packets of connections it lost in a crash with a
/// reset their peers accept at once, instead of leaving them to wait for the idle timeout;
/// without it quinn draws a fresh key. With it, the endpoint's connection ids carry a tag
/// derived from the key and a socket filter drops datagrams that cannot be QUIC for it
/// ([`prefilter`]).
pub fn bind_endpoint(
    addr: SocketAddr,
    server: Option<ServerConfig>,
    tuning: &Tuning,
    reset_key: Option<&[u8; 32]>,
) -> std::io::Result<Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped addresses too when bound to [::], as std's bind does on Linux.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer than asked only costs throughput.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    tracing::debug!(
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        %addr,
        "UDP socket bound"
    );
    let socket: std::net::UdpSocket = socket.into();
    let mut config = EndpointConfig::default();
    if let Some(key) = reset_key {
        config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)));
        // quinn drops packets whose connection id was not made with its generator's key before
        // it would reset them: the restarted endpoint must recognise its predecessor's ids too,
        // and the socket's filter their tag.
        let tag = prefilter::TaggedConnectionIdGenerator::from_reset_key(key).tag();
        match prefilter::attach(&socket2::SockRef::from(&socket), tag) {
            Ok(()) => tracing::debug!(%addr, "junk filter attached to the UDP socket"),
            // Best effort: without it junk datagrams reach quinn, which drops them.
            Err(error) => tracing::warn!(%addr, %error, "no junk filter on the UDP socket: junk datagrams reach quinn"),
        }
        let key = *key;
        config.cid_generator(move || Box::new(prefilter::TaggedConnectionIdGenerator::from_reset_key(&key)));
        // A reset answers only packets whose id this key made (the keyed generator refuses the
        // rest) and is smaller than the packet it answers: one per millisecond, not quinn's one
        // per 20 ms, lets a whole fleet learn of a restart at its next packet.
        config.min_reset_interval(RESET_INTERVAL);
    }
    // Within quinn's accepted range (1200..=65527); quinn's default is 1472.
    let _ = config.max_udp_payload_size(tuning.max_udp_payload.clamp(1200, MAX_UDP_PAYLOAD).max(1472));
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = Arc::new(FewerSegments { inner: runtime.wrap_udp_socket(socket)?, segments: tuning.gso_segments });
    Endpoint::new_with_abstract_socket(config, server, socket, runtime)
}

/// quinn's tokio UDP socket, announcing at most `segments` datagrams per send (see
/// [`Tuning::gso_segments`]); everything else is the inner socket's.
#[derive(Debug)]
struct FewerSegments {
    inner: Arc<dyn AsyncUdpSocket>,
    segments: usize,
}

impl AsyncUdpSocket for FewerSegments {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.segments.max(1))
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmentation_offload_only_below_its_limit() {
        // The setting is not readable back from quinn; check the clamp instead.
        assert_eq!(Tuning::CLIENT.with_max_udp_payload(60_000).max_udp_payload, 60_000);
        assert_eq!(Tuning::CLIENT.with_max_udp_payload(100).max_udp_payload, 1200);
        assert_eq!(Tuning::CLIENT.with_max_udp_payload(u16::MAX).max_udp_payload, MAX_UDP_PAYLOAD);
        assert_eq!(Tuning::coordinator(32 << 10, 4 << 20, 65_000, 0).gso_segments, 1);
        assert_eq!(Tuning::coordinator(32 << 10, 4 << 20, 65_000, 99).gso_segments, MAX_GSO_SEGMENTS);
    }

    #[test]
    fn keep_alives_fit_the_idle_timeout() {
        assert_eq!(Tuning::CLIENT.keep_alive_interval(), KEEP_ALIVE_INTERVAL);
        let away = Tuning::CLIENT.with_idle_timeout(AGGREGATOR_IDLE_TIMEOUT);
        assert_eq!(away.keep_alive_interval(), Duration::from_millis(750));
        assert_eq!(Tuning::CLIENT.with_idle_timeout(Duration::ZERO).idle_timeout, Duration::from_secs(1));
        assert_eq!(Tuning::CLIENT.with_idle_timeout(Duration::from_secs(60)).idle_timeout, IDLE_TIMEOUT);
    }
}
