//! Flotilla's coordinator: holds the global model, runs federated rounds over QUIC with the
//! client daemons, aggregates their updates (FedAvg) and checkpoints the result.
//!
//! The round logic is the sans-IO [`flotilla_protocol::round::Coordinator`]; this crate is its shell:
//! options ([`config`]), connections, durable state ([`persist`]) and held-out evaluation
//! ([`eval`]). Tests and the binary start it with [`bind`] + [`Server::run`], or [`run`].
//! [`tools`] holds the `export` and `distill` subcommands (a checkpoint's model as ONNX, fused,
//! pruned, quantised or distilled).

pub mod config;
pub mod eval;
pub mod http;
pub mod metrics;
pub mod persist;
mod server;
pub mod state;
pub mod tools;

pub use config::{Config, Options};
pub use server::{RunSummary, Server, bind};
pub use state::Origin;

use tokio_util::sync::CancellationToken;

/// Binds and serves until `shutdown` is cancelled or the round limit is reached.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
    bind(config).await?.run(shutdown).await
}
