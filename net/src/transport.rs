//! QUIC transport settings shared by the coordinator and the clients.
//!
//! Models of several megabytes cross the wire every round, so the flow-control windows are
//! sized to keep a multi-megabyte frame in flight on a long fat link instead of quinn's
//! defaults (tuned for web traffic). Keep-alives hold idle connections open between rounds
//! through NATs; the idle timeout bounds how long a vanished peer goes unnoticed.

use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Per-stream receive window: 16 MiB.
pub const STREAM_RECEIVE_WINDOW: u32 = 16 << 20;
/// Per-connection receive window: 32 MiB.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 << 20;
/// Per-connection send window: 32 MiB.
pub const SEND_WINDOW: u64 = 32 << 20;
/// Interval between keep-alive packets on an otherwise quiet connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A connection silent for this long is considered lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The transport configuration both sides use: large windows, keep-alive, idle timeout,
/// one bidirectional stream per connection and no unidirectional ones.
pub fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    // 30 s fits in a VarInt of milliseconds; the fallback only guards a future edit.
    let idle = IdleTimeout::try_from(IDLE_TIMEOUT).unwrap_or(IdleTimeout::from(VarInt::from_u32(10_000)));
    config.max_idle_timeout(Some(idle));
    config
}
