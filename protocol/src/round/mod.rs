//! The protocol's state machines: the coordinator's rounds and a client's session.
//!
//! Both are sans-IO in the style of `quinn-proto`. The shell feeds them what happened
//! (`handle_*`, with the current [`std::time::Instant`]) and then drains what they want done:
//! `poll_transmit` (messages to send), `poll_close` (connections to close, after sending
//! what was queued for them), `poll_event` (things to log or act on) and `poll_timeout`
//! (when to call `handle_timeout` next).

pub mod client;
pub mod config;
pub mod coordinator;
pub mod events;
mod sampling;

pub use client::{ANY_MODEL_VERSION, Client, ClientEvent, SubmitError};
pub use config::{ConfigError, CoordinatorConfig, Hierarchy, Mode, StalenessPolicy};
pub use coordinator::{Coordinator, Identity, Transmit};
pub use events::{CoordinatorEvent, RoundFailure, UpdateRefusal};

use crate::wire::ErrorCode;

/// The shell's handle on one client connection; unique for the coordinator's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Why a state machine asks the shell to close a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer was refused; an `Error` message with this code was queued before.
    Error(ErrorCode),
    /// The peer said `Goodbye`, or this side queued one.
    Goodbye,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rules_tests;
