//! `flotilla-client run`: the daemon. Joins a coordinator over QUIC, learns online from the
//! local stream without pause, sends its weight deltas when asked and adopts each new global
//! model. Only parameter vectors and two counters ever leave the device.

#[cfg(feature = "http")]
mod http;
mod options;
mod source;
mod worker;

use std::sync::Arc;

use anyhow::Context;
use flotilla_learner::compute;
use flotilla_net::tls::IssuedCert;
use flotilla_net::{ClientSessionConfig, SessionStats, run_client_session};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use options::{Attack, RunConfig, RunOptions};
pub use worker::{Answer, answer};

/// The exit report of a daemon.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// This client's name.
    pub name: String,
    /// Samples learnt since the daemon first started (over restarts with a state dir).
    pub samples: u64,
    /// Samples learnt by this process.
    pub samples_this_run: u64,
    /// Prequential error over `samples` of the predictions this device emitted
    /// (personalised unless `--no-personalise`), in percent.
    pub prequential_error_pct: f64,
    /// Prequential error over the same samples of the shared (global) model's own predictions, in percent.
    pub global_prequential_error_pct: f64,
    /// Wrong predictions (personalised) after every `marks_every` samples, cumulative: the
    /// error over any stretch of the stream is a difference of two entries.
    pub errors_at_marks: Vec<u64>,
    /// Samples between two marks.
    pub marks_every: u64,
    /// Updates sent to the coordinator.
    pub updates_sent: u64,
    /// Version of the last global model adopted.
    pub model_version: Option<u64>,
    /// Bytes written to the coordinator (frames).
    pub bytes_sent: u64,
    /// Bytes read from the coordinator.
    pub bytes_received: u64,
    /// QUIC connections made (1 + reconnections).
    pub connections: u64,
}

/// Runs the daemon until SIGINT/SIGTERM, a fatal refusal, or a broken stream.
pub fn run(options: RunOptions) -> anyhow::Result<()> {
    run_with(options, None)
}

/// [`run`], corrupting every update with `attack` (a Byzantine client of the simulator).
pub fn run_with(options: RunOptions, attack: Option<Attack>) -> anyhow::Result<()> {
    let mut config = options.resolve()?;
    config.attack = attack;
    let device = compute::select(config.backend.0)?;
    tracing::info!(backend = %device.kind, device = %device.description, reason = %device.reason, "compute device chosen");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the network runtime")?;
    let shutdown = CancellationToken::new();
    let stats = Arc::new(SessionStats::default());
    let mut session =
        ClientSessionConfig::new(config.coordinator, &config.server_name, config.ca.clone(), &config.name);
    session.auth_token = config.tokens.first().cloned();
    session.tls.identity = config.identity.clone().map(|(cert, key)| IssuedCert { cert, key });
    session.stats = stats.clone();
    let (requests, inbox) = tokio::sync::mpsc::channel(16);
    tracing::info!(coordinator = %config.coordinator, name = %config.name, "joining");
    let session = runtime.spawn(run_client_session(session, requests, shutdown.clone()));
    runtime.spawn(stop_on_signal(shutdown.clone()));
    let (jobs, api) = match &config.http {
        Some(settings) => serve_http(&runtime, settings, &shutdown)?,
        None => (None, None),
    };

    let worked = worker::run(config.clone(), device.device, inbox, jobs, shutdown.clone());
    shutdown.cancel();
    if let Some(api) = api {
        match runtime.block_on(api) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the device HTTP API failed"),
            Err(error) => tracing::warn!(%error, "the device HTTP API task failed"),
        }
    }
    let session_result = runtime.block_on(session).context("the session task failed")?;
    let summary = worked?;
    session_result?;

    let report = RunReport {
        name: config.name.clone(),
        samples: summary.total.samples,
        samples_this_run: summary.samples_this_run,
        prequential_error_pct: (summary.total.error_pct() * 100.0).round() / 100.0,
        global_prequential_error_pct: (summary.global_total.error_pct() * 100.0).round() / 100.0,
        errors_at_marks: summary.marks.iter().map(|m| m.errors).collect(),
        marks_every: flotilla_learner::local::MARK_EVERY,
        updates_sent: summary.contributions,
        model_version: summary.base_version,
        bytes_sent: stats.bytes_sent(),
        bytes_received: stats.bytes_received(),
        connections: stats.connections(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    if config.predictions.as_deref() == Some(std::path::Path::new("-")) {
        eprintln!("{json}"); // stdout carries the predictions
    } else {
        println!("{json}");
    }
    if let Some(path) = &config.report {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The receiving end of the device API's requests and its task.
type DeviceApi =
    (Option<std::sync::mpsc::Receiver<worker::PredictJob>>, Option<tokio::task::JoinHandle<std::io::Result<()>>>);

/// Binds and starts the device's own prediction API (`--http`).
#[cfg(feature = "http")]
fn serve_http(
    runtime: &tokio::runtime::Runtime,
    settings: &options::DeviceHttp,
    shutdown: &CancellationToken,
) -> anyhow::Result<DeviceApi> {
    let listener = runtime.block_on(http::bind(settings))?;
    let (jobs, inbox) = std::sync::mpsc::sync_channel(http::QUEUE);
    let task = runtime.spawn(http::serve(listener, settings.clone(), jobs, shutdown.clone()));
    Ok((Some(inbox), Some(task)))
}

/// Without the `http` feature there is no API to serve.
#[cfg(not(feature = "http"))]
fn serve_http(
    _runtime: &tokio::runtime::Runtime,
    _settings: &options::DeviceHttp,
    _shutdown: &CancellationToken,
) -> anyhow::Result<DeviceApi> {
    anyhow::bail!("--http: this flotilla-client was built without its `http` feature (a lean edge build)")
}

/// Cancels `shutdown` on SIGINT or SIGTERM (or returns when it is cancelled otherwise).
pub async fn stop_on_signal(shutdown: CancellationToken) {
    tokio::select! {
        signal = flotilla_net::signal::shutdown_signal() => tracing::info!(signal, "shutting down"),
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}
