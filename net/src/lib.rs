//! Flotilla's I/O shell, shared by the coordinator and client binaries: the only crate
//! besides them that knows about QUIC (quinn), TLS (rustls, rcgen) and tokio.
//!
//! - [`tls`]: a development PKI, and rustls/quinn configurations for both ends.
//! - [`transport`]: QUIC transport settings sized for multi-megabyte models.
//! - [`framed`]: messages as length-prefixed frames on QUIC streams.
//! - [`close`]: application close codes carrying the protocol's error codes.
//! - [`backoff`]: reconnection delays.
//! - [`session`]: the client's side: the session loop, relaying between coordinator and learner.
//! - [`endpoint`]: the coordinator's side: accept loop, connection tasks and the round task.
//! - [`signal`]: waiting for SIGINT/SIGTERM.
//! - [`persist`]: atomic file replacement (temporary file, fsync, rename, fsync of the folder).
//! - [`tokens`]: token files, one identity per line.
//! - [`options`]: a daemon's TOML file layered under its command-line flags.
//! - [`exit`]: how a binary ends on an error (its chain of context, each message once).

pub mod backoff;
pub mod close;
pub mod endpoint;
pub mod exit;
pub mod framed;
pub mod options;
pub mod persist;
pub mod session;
pub mod signal;
pub mod tls;
pub mod tokens;
pub mod transport;

pub use backoff::Backoff;
pub use session::{
    ClientSessionConfig, LearnerRequest, SessionRefused, SessionStats, client_endpoint, run_client_session,
};
