//! `flotilla-sim-client fleet-round`: virtual clients of the `fleet-round` benchmark. Each has
//! its own QUIC connection (over `--sockets` shared UDP endpoints) and runs the production session
//! (join, receive every model, answer update requests); instead of learning, client c
//! answers round r with the workload's formula `0.001 · noise((r << 32) | (c + 1), P)`
//! (see [`flotilla_protocol::workload`]). Needs a coordinator training a `--vector-len P` model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flotilla_net::{ClientSessionConfig, LearnerRequest, SessionStats, client_endpoint, run_client_session};
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::params::ParameterVector;
use flotilla_protocol::wire::framing::FrameLimit;
use flotilla_protocol::wire::{Contribution, LocalMetrics};
use flotilla_protocol::workload;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Options of `flotilla-client fleet-round`.
#[derive(Debug, clap::Args)]
pub struct FleetRoundArgs {
    /// Coordinator address.
    #[arg(long, value_name = "IP:PORT")]
    pub coordinator: SocketAddr,
    /// Name the coordinator's certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub server_name: String,
    /// CA certificate to trust (the coordinator's `pki/ca.pem` in development).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// File of auth tokens, when the coordinator requires them: client i presents line i mod n
    /// (one identity per line; the coordinator keeps --sessions-per-identity sessions each).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Number of virtual clients in this process.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Index of this process's first client (client c uses the workload seed of index c).
    #[arg(long, default_value_t = 0)]
    pub first_client: u64,
    /// Most connections being established at once: sessions start in waves of this many, the
    /// next wave once the previous one connected (thousands of simultaneous TLS handshakes
    /// would time out against one coordinator).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub ramp: u32,
    /// Worker threads of the async runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// UDP sockets (QUIC endpoints) the clients are spread over, round robin. A device has a
    /// socket of its own; one socket for a whole fleet overflows its receive buffer when every
    /// connection receives a model at once (the kernel caps the buffer at net.core.rmem_max).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sockets: u32,
    /// Stop after this long [default: until SIGINT/SIGTERM or the coordinator's goodbye].
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Largest frame accepted from the coordinator, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_frame_mib: u32,
    /// Ceiling of QUIC's MTU discovery, UDP payload bytes (1200–65000; e.g. 65000 on loopback).
    #[arg(long, value_name = "BYTES", default_value_t = flotilla_net::transport::ETHERNET_UDP_PAYLOAD)]
    pub max_udp_payload: u16,
    /// Also write the exit report (JSON) to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
}

/// The exit report.
#[derive(Debug, Serialize)]
struct Report {
    clients: u32,
    updates_sent: u64,
    bytes_sent: u64,
    bytes_received: u64,
    connections: u64,
    seconds: f64,
}

/// Runs the virtual clients until every session ends, `--duration` passes or a signal.
pub fn run(args: FleetRoundArgs) -> anyhow::Result<()> {
    let tokens = match &args.token_file {
        Some(path) => flotilla_net::tokens::read_token_file(path)?,
        None => Vec::new(),
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(args.threads)).enable_all().build()?;
    let started = Instant::now();
    let stats = Arc::new(SessionStats::default());
    runtime.block_on(drive(&args, &tokens, stats.clone()))?;
    let report = Report {
        clients: args.clients,
        updates_sent: stats.updates_sent(),
        bytes_sent: stats.bytes_sent(),
        bytes_received: stats.bytes_received(),
        connections: stats.connections(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string(&report)?;
    println!("{json}");
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn drive(args: &FleetRoundArgs, tokens: &[String], stats: Arc<SessionStats>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut base = ClientSessionConfig::new(args.coordinator, &args.server_name, args.ca.clone(), "");
    base.stats = stats;
    base.max_frame = FrameLimit::new(args.max_frame_mib.saturating_mul(1 << 20));
    base.tuning = base.tuning.with_max_udp_payload(args.max_udp_payload);
    // Handshakes of thousands of clients queue behind each other on one coordinator.
    base.connect_timeout = Duration::from_secs(60);
    let sockets = args.sockets.min(args.clients).max(1);
    let endpoints = (0..sockets)
        .map(|_| client_endpoint(&base.tls, args.coordinator, &base.tuning))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tracker = tokio_util::task::TaskTracker::new();
    for (offset, endpoint) in (0..u64::from(args.clients)).zip(endpoints.iter().cycle()) {
        let index = args.first_client + offset;
        if offset > 0 && offset % u64::from(args.ramp) == 0 {
            wait_for_wave(&base.stats, offset, &shutdown).await;
        }
        let (requests, inbox) = mpsc::channel(4);
        let session = ClientSessionConfig {
            client_name: format!("fleet-round-{index}"),
            auth_token: flotilla_net::tokens::token_for(tokens, index),
            endpoint: Some(endpoint.clone()),
            ..base.clone()
        };
        tracker.spawn(async move {
            if let Err(error) = respond(index, inbox).await {
                tracing::error!(client = index, "{error:#}");
            }
        });
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(error) = run_client_session(session, requests, shutdown).await {
                tracing::warn!(client = index, "{error:#}");
            }
        });
    }
    tracker.close();
    let deadline = async {
        match args.duration {
            Some(seconds) => tokio::time::sleep(Duration::from_secs_f64(seconds)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tracker.wait() => {}
        () = flotilla_client::run::stop_on_signal(shutdown.clone()) => {}
        () = deadline => tracing::info!("--duration reached; stopping"),
    }
    shutdown.cancel();
    tracker.wait().await;
    for endpoint in &endpoints {
        endpoint.close(flotilla_net::close::GOODBYE, b"fleet leaving");
    }
    let idle = async {
        for endpoint in &endpoints {
            endpoint.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
    Ok(())
}

/// Waits until `started` sessions have connected (or a minute passed, or shutdown).
async fn wait_for_wave(stats: &SessionStats, started: u64, shutdown: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.connections() < started && tokio::time::Instant::now() < deadline && !shutdown.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Client `index`'s "learner": answers every update request with the workload's step.
async fn respond(index: u64, mut inbox: mpsc::Receiver<LearnerRequest>) -> anyhow::Result<()> {
    let mut layout = None;
    while let Some(request) = inbox.recv().await {
        match request {
            LearnerRequest::Welcome { spec, fingerprint } => {
                let ModelSpec::Vector { .. } = spec else {
                    bail!("the coordinator trains a {spec}; fleet-round needs a --vector-len model");
                };
                if spec.validate().is_err() || spec.layout().fingerprint() != fingerprint {
                    bail!("the coordinator's vector layout ({fingerprint}) does not match its spec");
                }
                layout = Some(spec.layout());
            }
            // The model is received and decoded by the session (the production path) and
            // not needed here: the step does not depend on it.
            LearnerRequest::Adopt { .. } => {}
            LearnerRequest::Update { round, reply, .. } => {
                let Some(layout) = &layout else { continue };
                let delta = ParameterVector::new(layout, workload::client_delta(round, index, layout.len()))?;
                let metrics = LocalMetrics { samples: workload::SAMPLES, prequential_errors: 0 };
                let _ = reply.send(Contribution { delta, metrics, moments: None, cohort: None });
            }
        }
    }
    Ok(())
}
