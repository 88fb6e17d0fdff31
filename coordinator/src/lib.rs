//! Flotilla's coordinator: holds the global model, runs federated rounds over QUIC with the
//! client daemons, aggregates their updates (FedAvg) and checkpoints the result.
//!
//! The round logic is the sans-IO [`flotilla_protocol::round::Coordinator`]; this crate is its shell:
//! options ([`config`]), connections, durable state ([`persist`]) and held-out evaluation
//! ([`eval`]). Tests and the binary start it with [`bind`] + [`Server::run`], or [`run`].
//! Checkpoints live in the data directory or in an object store ([`store`]); coordinators
//! sharing a leader lease ([`lease`]) fail over to one another ([`run`]). With `--parent`,
//! [`run`] makes it an edge aggregator (`edge`): a coordinator to its clients, a client of
//! its parent.
//! [`tools`] holds the `export` and `distill` subcommands (a checkpoint's model as ONNX, fused,
//! pruned, quantised or distilled).

pub mod config;
mod edge;
pub mod eval;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod persist;
mod server;
pub mod state;
pub mod store;
pub mod tools;

pub use config::{Config, Options};
pub use server::{RunSummary, Server, bind};
pub use state::Origin;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Binds and serves until `shutdown` is cancelled or the round limit is reached. With a
/// lease (`--lease-url`), first stands by until this coordinator holds it (`Ok(None)` when
/// `shutdown` comes first), renews it while serving, and stops with an error if it is lost.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunSummary>> {
    if config.parent.is_some() {
        return edge::run(config, shutdown).await;
    }
    let Some(settings) = config.lease.clone() else {
        return bind(config).await?.run(shutdown).await.map(Some);
    };
    let backend = lease::open(&settings.url).context("--lease-url")?;
    let leadership = lease::Leadership::new(backend, settings.holder, settings.duration);
    let standby_stop = shutdown.child_token();
    let standby = server::standby_http(&config, standby_stop.clone()).await?;
    let held = leadership.acquire(&shutdown).await;
    standby_stop.cancel();
    if let Some(task) = standby {
        task.await.context("standby HTTP API task panicked")??;
    }
    let Some(held) = held? else {
        return Ok(None);
    };
    // Serving stops on shutdown, or at once when the lease is lost (the keeper cancels it).
    let serving = shutdown.child_token();
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn({
        let (leadership, keeper_stop, lost) = (leadership.clone(), keeper_stop.clone(), serving.clone());
        async move { leadership.keep(held, keeper_stop, lost).await }
    });
    let served = match bind(config).await {
        Ok(server) => server.run(serving).await,
        Err(error) => Err(error),
    };
    keeper_stop.cancel();
    match keeper.await.context("lease task panicked")? {
        Ok(()) => served.map(Some),
        // Losing the lease is the reason serving stopped; it is the error to report.
        Err(lost) => Err(anyhow::Error::new(lost)),
    }
}
