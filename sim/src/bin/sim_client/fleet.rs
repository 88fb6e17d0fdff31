//! `flotilla-sim-client fleet`: many virtual clients in one process, each with its own QUIC
//! connection (over one shared UDP endpoint), its own learner and its own slice of a stream.
//! One thread runs every learner in turn; tokio runs every session.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use burn::tensor::Device;
use flotilla_learner::compute;
use flotilla_learner::data::{CsvStream, Sample};
use flotilla_learner::local::LocalLearner;
use flotilla_net::tls::IssuedCert;
use flotilla_net::{ClientSessionConfig, LearnerRequest, SessionStats, client_endpoint, run_client_session};
use serde::Serialize;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use flotilla_client::run::{RunOptions, answer};

/// Options of `flotilla-client fleet`: those of `run`, plus the number of virtual clients.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Number of virtual clients; client c learns rows c, c+N, c+2N… of --data.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: u32,
    /// Cycle through each client's rows forever (a load test that outlasts the data).
    #[arg(long)]
    pub repeat: bool,
    /// Stop after this long (e.g. when the coordinator runs a fixed number of rounds) [default: until SIGINT/SIGTERM].
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub run: RunOptions,
}

/// One virtual client.
struct Virtual {
    learner: Option<LocalLearner>,
    rows: Vec<Sample>,
    next_row: usize,
    inbox: tokio::sync::mpsc::Receiver<LearnerRequest>,
    learnt: u64,
    updates: u64,
    gone: bool,
    /// Its learner failed (e.g. a NaN): the client left the federation, the others go on.
    failed: bool,
}

impl Virtual {
    /// Takes client `index` out of the fleet after its learner failed: its session sees the
    /// learner gone and says goodbye; the other clients are not affected.
    fn fail(&mut self, index: usize, error: &anyhow::Error) {
        tracing::error!(client = index, error = %format!("{error:#}"), "virtual client's learner failed; it leaves");
        self.failed = true;
        self.gone = true;
        self.learner = None;
        self.inbox.close();
    }
}

/// The fleet's exit report.
#[derive(Debug, Serialize)]
struct FleetReport {
    clients: u32,
    samples: u64,
    prequential_error_pct: f64,
    global_prequential_error_pct: f64,
    updates_sent: u64,
    /// Virtual clients whose learner failed and who left early (their samples are not counted).
    failed_clients: usize,
    bytes_sent: u64,
    bytes_received: u64,
    connections: u64,
    seconds: f64,
}

/// Runs the virtual fleet until SIGINT/SIGTERM or `--duration`.
pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    let config = args.run.resolve()?;
    if config.state_dir.is_some() || config.follow || config.rows_per_round.is_some() {
        bail!("--state-dir, --follow and --rows-per-round are for the daemon (`run`), not for virtual clients");
    }
    let streams = split_stream(&config.data, args.clients as usize)?;
    let device = compute::select(config.backend.0)?;
    tracing::info!(clients = args.clients, backend = %device.kind, "virtual fleet starting");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let shutdown = CancellationToken::new();
    let stats = Arc::new(SessionStats::default());
    let identity = config.identity.clone().map(|(cert, key)| IssuedCert { cert, key });
    let mut base = ClientSessionConfig::new(config.coordinator, &config.server_name, config.ca.clone(), "");
    base.tls.identity = identity;
    base.stats = stats.clone();
    let endpoint = runtime.block_on(async { client_endpoint(&base.tls, config.coordinator, &base.tuning) })?;
    base.endpoint = Some(endpoint.clone());
    let mut clients = Vec::with_capacity(streams.len());
    let mut sessions = Vec::with_capacity(streams.len());
    for (c, rows) in streams.into_iter().enumerate() {
        let (requests, inbox) = tokio::sync::mpsc::channel(8);
        let session = ClientSessionConfig {
            client_name: format!("{}-{c}", config.name),
            auth_token: flotilla_net::tokens::token_for(&config.tokens, c as u64),
            ..base.clone()
        };
        sessions.push(runtime.spawn(run_client_session(session, requests, shutdown.clone())));
        clients.push(Virtual {
            learner: None,
            rows: rows.into(),
            next_row: 0,
            inbox,
            learnt: 0,
            updates: 0,
            gone: false,
            failed: false,
        });
    }
    runtime.spawn(stop_after(shutdown.clone(), args.duration.map(Duration::from_secs_f64)));

    let started = Instant::now();
    let learnt = drive(&mut clients, &device.device, config.rate, config.personal, args.repeat, &shutdown);
    shutdown.cancel();
    runtime.block_on(async {
        for session in sessions {
            if let Ok(Err(error)) = session.await {
                tracing::warn!("{error:#}");
            }
        }
        endpoint.close(flotilla_net::close::GOODBYE, b"fleet leaving");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    });
    learnt?;
    report(&mut clients, args.clients, &stats, started.elapsed().as_secs_f64(), config.report.as_deref())
}

/// Round-robin over the clients: answer their sessions' requests, then let each learn one
/// row, as long as the per-client `rate` allows.
fn drive(
    clients: &mut [Virtual],
    device: &Device,
    rate: Option<f64>,
    personal: flotilla_learner::personal::PersonalConfig,
    repeat: bool,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !stop.is_cancelled() {
        let mut busy = false;
        for (index, client) in clients.iter_mut().enumerate().filter(|(_, c)| !c.gone) {
            loop {
                match client.inbox.try_recv() {
                    Ok(request) => {
                        busy = true;
                        match answer(&mut client.learner, device, request, None, personal) {
                            Ok(flotilla_client::run::Answer::Contributed) => client.updates += 1,
                            Ok(_) => {}
                            Err(error) => {
                                client.fail(index, &error);
                                break;
                            }
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        client.gone = true;
                        break;
                    }
                }
            }
        }
        let allowed = rate.map_or(u64::MAX, |r| (r * started.elapsed().as_secs_f64()) as u64);
        for (index, client) in clients.iter_mut().enumerate().filter(|(_, c)| c.learnt < allowed && !c.failed) {
            if repeat && client.next_row == client.rows.len() {
                client.next_row = 0;
            }
            let (Some(learner), Some(sample)) = (client.learner.as_mut(), client.rows.get(client.next_row)) else {
                continue;
            };
            if let Err(error) = learner.learn(sample) {
                client.fail(index, &anyhow::Error::from(error));
                continue;
            }
            client.next_row += 1;
            client.learnt += 1;
            busy = true;
        }
        if clients.iter().all(|c| c.gone) {
            break;
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Reads `path` and deals its rows round-robin to `clients` streams.
fn split_stream(path: &std::path::Path, clients: usize) -> anyhow::Result<Vec<VecDeque<Sample>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut stream =
        CsvStream::new(BufReader::new(file), None).with_context(|| format!("reading {}", path.display()))?;
    let mut streams: Vec<VecDeque<Sample>> = (0..clients).map(|_| VecDeque::new()).collect();
    let mut index = 0;
    while let Some(sample) = stream.next_sample().with_context(|| format!("reading {}", path.display()))? {
        streams[index % clients].push_back(sample);
        index += 1;
    }
    if index < clients {
        bail!("{} has {index} rows, fewer than the {clients} clients", path.display());
    }
    Ok(streams)
}

async fn stop_after(shutdown: CancellationToken, duration: Option<Duration>) {
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = flotilla_client::run::stop_on_signal(shutdown.clone()) => {}
        () = deadline => tracing::info!("--duration reached; stopping"),
    }
    shutdown.cancel();
}

fn report(
    clients: &mut [Virtual],
    count: u32,
    stats: &SessionStats,
    seconds: f64,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (mut samples, mut errors, mut global_errors) = (0u64, 0u64, 0u64);
    for client in clients.iter_mut() {
        if let Some(learner) = client.learner.as_mut() {
            let total = learner.total()?;
            samples += total.samples;
            errors += total.errors;
            global_errors += learner.global_total()?.errors;
        }
    }
    let pct =
        |errors: u64| if samples == 0 { 0.0 } else { (10_000.0 * errors as f64 / samples as f64).round() / 100.0 };
    let report = FleetReport {
        clients: count,
        samples,
        prequential_error_pct: pct(errors),
        global_prequential_error_pct: pct(global_errors),
        updates_sent: clients.iter().map(|c| c.updates).sum(),
        failed_clients: clients.iter().filter(|c| c.failed).count(),
        bytes_sent: stats.bytes_sent(),
        bytes_received: stats.bytes_received(),
        connections: stats.connections(),
        seconds,
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = path {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
