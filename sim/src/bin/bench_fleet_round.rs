//! `flotilla-bench-fleet-round`: the `fleet-round` benchmark (see `flotilla_protocol::workload`).
//!
//! Starts the real coordinator on a `--vector-len P` model initialised to
//! `noise(0x5EED, P)`, then N real client connections over QUIC with TLS on loopback (one
//! `flotilla-sim-client fleet-round` process holding N virtual clients, or N processes of one),
//! runs one warm-up round and R measured rounds, and prints one JSON line: round times
//! (commit to commit), peak memory, bytes on the wire, CPU time and the final model's
//! summary checked against the float64 reference.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::workload::{self, ModelSummary};
use flotilla_sim::bench::{
    PeakMemory, binaries_dir, exit_with, median, reaped_children_cpu_s, status_kib, work_dir, write_workload_model,
};
use flotilla_sim::fleet::{free_udp_port, read_rounds};
use flotilla_sim::procs::{COORDINATOR_ENV, Interrupt, Proc};
use flotilla_sim::topology::Topology;
use serde_json::json;

/// Run the fleet-round benchmark and print one JSON line of figures.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Number of clients (each with its own QUIC connection).
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// Parameters of the model (f32).
    #[arg(long, default_value_t = 1_000_000)]
    params: u64,
    /// Measured rounds, after one warm-up round.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// One client process per client (default: one process holding every client).
    #[arg(long, conflicts_with = "virtual_clients")]
    processes: bool,
    /// One process holding every client, each with its own connection (the default).
    #[arg(long = "virtual")]
    virtual_clients: bool,
    /// Only connect the clients and measure the coordinator's memory per idle connection
    /// (no rounds).
    #[arg(long)]
    idle: bool,
    /// Ceiling of QUIC's MTU discovery on both sides, UDP payload bytes (loopback's MTU is
    /// 64 KiB; 1452 is the Ethernet default of the binaries).
    #[arg(long, default_value_t = 65_000)]
    max_udp_payload: u16,
    /// Updates the coordinator receives at the same time (its --concurrent-uploads).
    #[arg(long, default_value_t = 4)]
    concurrent_uploads: usize,
    /// Extra coordinator flag (repeatable), e.g. `--coordinator-arg=--secure-aggregation`.
    #[arg(long = "coordinator-arg", value_name = "ARG", allow_hyphen_values = true)]
    coordinator_args: Vec<String>,
    /// Worker threads of the virtual clients' process.
    #[arg(long, default_value_t = 1)]
    client_threads: u16,
    /// UDP sockets of the virtual clients' process, the clients spread over them (a device
    /// has one of its own; one for the whole fleet overflows its receive buffer when every
    /// connection gets a model at once, which stalls phases that wait for every client).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    client_sockets: u32,
    /// Directory holding flotilla-coordinator and flotilla-sim-client [default: this binary's].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Keep the working directory (logs, checkpoint, rounds.jsonl) and print its path.
    #[arg(long)]
    keep: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// A tree of coordinators, AGGREGATORSxCLIENTS (e.g. 10x100): a root, that many edge
    /// aggregators (`flotilla-coordinator --parent`) and that many clients behind each (one
    /// virtual-client process per aggregator); replaces --clients. Reports the peak memory
    /// of the root and of each aggregator; the final model is checked against the same flat
    /// FedAvg reference.
    #[arg(long, value_name = "AxB", conflicts_with_all = ["clients", "processes", "idle"])]
    topology: Option<Topology>,
    /// Extra flag of every aggregator (repeatable, with --topology), e.g.
    /// `--aggregator-arg=--secure-aggregation` (SecAgg+ per edge cohort).
    #[arg(long = "aggregator-arg", value_name = "ARG", allow_hyphen_values = true, requires = "topology")]
    aggregator_args: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if let Some(topology) = args.topology {
        args.clients = u32::try_from(topology.clients()).unwrap_or(u32::MAX);
    }
    exit_with(run(&args))
}

struct Setup {
    work: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn run(args: &Args) -> anyhow::Result<String> {
    if args.clients == 0 || args.params == 0 {
        bail!("--clients and --params must be at least 1");
    }
    let interrupt = Interrupt::install()?;
    let bin = binaries_dir(args.bin_dir.as_deref())?;
    let work = work_dir("bench")?;
    let setup = Setup { work: work.clone(), bin, port: free_udp_port()? };
    let result = measure(args, &setup, &interrupt);
    if args.keep {
        eprintln!("working directory kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

/// The aggregation the f64 reference describes (FedAvg, a fixed server step of 1), unless
/// the extra coordinator flags choose a strategy or a step themselves: the coordinator's own
/// defaults (FedAvgM, a participant-scaled step) would not match it.
fn reference_strategy(extra: &[String]) -> Vec<String> {
    let chooses = |flag: &str| extra.iter().any(|arg| arg == flag || arg.starts_with(&format!("{flag}=")));
    let mut flags = Vec::new();
    if !chooses("--strategy") {
        flags.extend(["--strategy".to_string(), "fedavg".to_string()]);
    }
    if !chooses("--server-step") {
        flags.extend(["--server-step".to_string(), "fixed".to_string()]);
    }
    flags
}

fn measure(args: &Args, setup: &Setup, interrupt: &Interrupt) -> anyhow::Result<String> {
    let total_rounds = args.rounds + 1;
    let initial = setup.work.join("initial.bin");
    write_workload_model(&initial, args.params)?;
    let model_mib = (args.params * 4).div_ceil(1 << 20);
    let data_dir = setup.work.join("coordinator");
    let quorum = if args.idle { args.clients + 1 } else { args.clients };
    let tokens = match args.topology {
        Some(topology) => Some(topology.write_tokens(&setup.work.join("tokens"))?),
        None => None,
    };
    // At the root of a tree the quorum counts aggregators.
    let root_quorum = args.topology.map_or(quorum, |t| u32::try_from(t.aggregators).unwrap_or(u32::MAX));
    let coordinator_args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{}", setup.port),
        "--data-dir",
        &data_dir.display().to_string(),
        "--vector-len",
        &args.params.to_string(),
        "--initial-params",
        &initial.display().to_string(),
        "--min-clients",
        &root_quorum.to_string(),
        "--sample-fraction",
        "1",
        "--rounds",
        &total_rounds.to_string(),
        "--round-interval",
        "0s",
        "--max-connections",
        &(quorum + 1024).max(10_000).to_string(),
    ]
    .map(String::from)
    .into_iter()
    .chain(serving_flags(args, model_mib, u64::from(quorum)))
    .chain(reference_strategy(&args.coordinator_args))
    .chain(args.coordinator_args.iter().cloned())
    .chain(tokens.iter().flat_map(|(root, _)| ["--aggregator-tokens-file".to_string(), root.display().to_string()]))
    .collect();
    let mut coordinator = start(setup, "coordinator", "flotilla-coordinator", &coordinator_args, COORDINATOR_ENV)?;
    let coordinator_pid = coordinator.pid().context("coordinator not running")?;
    let ca = data_dir.join("pki").join("ca.pem");
    wait_for(|| ca.exists(), Duration::from_secs(60), &mut coordinator, interrupt)?;
    std::thread::sleep(Duration::from_millis(200));
    let baseline_kib = status_kib(coordinator_pid, "VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let mut aggregators = match (args.topology, &tokens) {
        (Some(topology), Some((_, edge_tokens))) => {
            start_aggregators(args, setup, topology, &ca, edge_tokens, model_mib, &mut coordinator, interrupt)?
        }
        _ => Vec::new(),
    };
    let mut clients = match args.topology {
        Some(topology) => start_tree_clients(args, setup, topology, &aggregators, model_mib)?,
        None => start_clients(args, setup, &ca, model_mib)?,
    };
    let aggregator_pids: Vec<u32> = aggregators.iter().filter_map(|a| a.proc.pid()).collect();
    let mut peaks = PeakMemory::default();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let client_pids: Vec<u32> = clients.iter().filter_map(Proc::pid).collect();
    let mut idle_kib = None;
    loop {
        interrupt.check()?;
        peaks.sample(coordinator_pid);
        client_pids.iter().chain(&aggregator_pids).for_each(|pid| peaks.sample(*pid));
        if let Some(success) = coordinator.exited() {
            if !success {
                bail!("the coordinator failed:\n{}", coordinator.log_tail(20));
            }
            break;
        }
        for client in clients.iter_mut().chain(aggregators.iter_mut().map(|a| &mut a.proc)) {
            if client.exited() == Some(false) {
                bail!("{} failed:\n{}", client.name, client.log_tail(20));
            }
        }
        if args.idle && connected(&clients) >= u64::from(args.clients) {
            std::thread::sleep(Duration::from_secs(2));
            idle_kib = status_kib(coordinator_pid, "VmRSS:");
            coordinator.terminate(Duration::from_secs(10));
            break;
        }
        if Instant::now() > deadline {
            bail!("no result within {} s:\n{}", args.timeout_s, coordinator.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall_s = started.elapsed().as_secs_f64();
    for client in &mut clients {
        client.signal_term();
    }
    for client in &mut clients {
        client.terminate(Duration::from_secs(10));
    }
    for aggregator in &mut aggregators {
        aggregator.proc.terminate(Duration::from_secs(10));
    }
    let cpu_s = reaped_children_cpu_s().unwrap_or(f64::NAN);
    let aggregators_mib: Vec<f64> = aggregator_pids.iter().map(|pid| peaks.mib(*pid)).collect();
    let coordinator_mib = peaks.mib(coordinator_pid);
    let clients_mib = peaks.total_mib(client_pids);
    if let Some(idle) = idle_kib {
        let per_connection_kib = (idle as f64 - baseline_kib as f64) / f64::from(args.clients);
        return Ok(json!({
            "workload": "fleet-round", "mode": mode(args), "clients": args.clients, "params": args.params,
            "idle": true, "coordinator_rss_before_mib": baseline_kib as f64 / 1024.0,
            "coordinator_rss_connected_mib": idle as f64 / 1024.0,
            "coordinator_kib_per_connection": per_connection_kib,
            "clients_peak_rss_mib": clients_mib, "connect_s": wall_s,
        })
        .to_string());
    }
    let mut figures = report(args, &data_dir, cpu_s, coordinator_mib, clients_mib, baseline_kib)?;
    if let Some(topology) = args.topology {
        figures["topology"] = json!(topology.to_string());
        figures["aggregator_args"] = json!(args.aggregator_args);
        figures["aggregators_peak_rss_mib"] = json!(aggregators_mib);
        figures["aggregator_peak_rss_mib_max"] = json!(aggregators_mib.iter().copied().fold(0.0, f64::max));
    }
    Ok(figures.to_string())
}

/// An edge aggregator of the tree: its process and where its clients reach it.
struct Aggregator {
    proc: Proc,
    port: u16,
    ca: PathBuf,
}

/// Starts the tree's aggregators under the root and waits until each has the root's model
/// (its development CA, made when it binds, exists).
#[allow(clippy::too_many_arguments)]
fn start_aggregators(
    args: &Args,
    setup: &Setup,
    topology: Topology,
    root_ca: &Path,
    tokens: &[PathBuf],
    model_mib: u64,
    root: &mut Proc,
    interrupt: &Interrupt,
) -> anyhow::Result<Vec<Aggregator>> {
    let mut aggregators = Vec::new();
    for (a, token) in tokens.iter().enumerate().take(topology.aggregators) {
        let port = free_udp_port()?;
        let dir = setup.work.join(format!("aggregator-{a}"));
        let per = topology.per_aggregator.to_string();
        let flags: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            &dir.display().to_string(),
            "--parent",
            &format!("127.0.0.1:{}", setup.port),
            "--parent-ca",
            &root_ca.display().to_string(),
            "--parent-token-file",
            &token.display().to_string(),
            "--min-clients",
            &per,
            "--sample-fraction",
            "1",
        ]
        .map(String::from)
        .into_iter()
        .chain(serving_flags(args, model_mib, topology.per_aggregator as u64))
        .chain(args.aggregator_args.iter().cloned())
        .collect();
        let proc = start(setup, &format!("aggregator-{a}"), "flotilla-coordinator", &flags, COORDINATOR_ENV)?;
        aggregators.push(Aggregator { proc, port, ca: dir.join("pki").join("ca.pem") });
    }
    for aggregator in &mut aggregators {
        let ca = aggregator.ca.clone();
        wait_for(|| ca.exists() || root.exited().is_some(), Duration::from_secs(120), &mut aggregator.proc, interrupt)?;
    }
    Ok(aggregators)
}

/// One virtual-client process per aggregator, holding its clients (numbered as in the flat
/// fleet, so that the workload's deltas are the same).
fn start_tree_clients(
    args: &Args,
    setup: &Setup,
    topology: Topology,
    aggregators: &[Aggregator],
    model_mib: u64,
) -> anyhow::Result<Vec<Proc>> {
    aggregators
        .iter()
        .enumerate()
        .map(|(a, aggregator)| {
            let per = topology.per_aggregator as u64;
            let flags = client_flags(args, aggregator.port, &aggregator.ca, per, a as u64 * per, model_mib);
            start(setup, &format!("clients-{a}"), "flotilla-sim-client", &flags, &[])
        })
        .collect()
}

/// Connections the client processes have logged as established.
fn connected(clients: &[Proc]) -> u64 {
    clients
        .iter()
        .map(|c| std::fs::read_to_string(&c.log).map_or(0, |text| text.matches("connected to the coordinator").count()))
        .sum::<usize>() as u64
}

fn mode(args: &Args) -> &'static str {
    if args.processes { "processes" } else { "virtual" }
}

fn start(setup: &Setup, name: &str, binary: &str, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Proc> {
    let path = setup.bin.join(binary);
    if !path.exists() {
        bail!("{} not found: build with `cargo build --release --workspace`, or give --bin-dir", path.display());
    }
    let out = setup.work.join(format!("{name}.out"));
    let log = setup.work.join(format!("{name}.log"));
    Proc::start_with_env(name, &path, args, &out, &log, env)
}

/// What every coordinator of the benchmark (the root, each aggregator) is started with to
/// serve `peers` connections, all from 127.0.0.1 (one address holds the whole fleet).
fn serving_flags(args: &Args, model_mib: u64, peers: u64) -> Vec<String> {
    [
        "--round-deadline",
        "300s",
        "--join-timeout",
        "120s",
        "--max-frame-mib",
        &(model_mib + 1).to_string(),
        "--max-udp-payload",
        &args.max_udp_payload.to_string(),
        "--concurrent-uploads",
        &args.concurrent_uploads.to_string(),
        "--max-connections-per-address",
        &(peers + 64).to_string(),
        "--handshake-rate",
        &peers.to_string(),
    ]
    .map(String::from)
    .into()
}

/// `flotilla-sim-client fleet-round` for clients `first..first + clients`, joining the
/// coordinator at `port` whose certificate chains to `ca`.
fn client_flags(args: &Args, port: u16, ca: &Path, clients: u64, first: u64, model_mib: u64) -> Vec<String> {
    [
        "fleet-round",
        "--coordinator",
        &format!("127.0.0.1:{port}"),
        "--ca",
        &ca.display().to_string(),
        "--clients",
        &clients.to_string(),
        "--first-client",
        &first.to_string(),
        "--threads",
        &args.client_threads.to_string(),
        "--sockets",
        &args.client_sockets.to_string(),
        "--max-frame-mib",
        &(model_mib + 1).to_string(),
        "--max-udp-payload",
        &args.max_udp_payload.to_string(),
    ]
    .map(String::from)
    .into()
}

fn start_clients(args: &Args, setup: &Setup, ca: &Path, model_mib: u64) -> anyhow::Result<Vec<Proc>> {
    let common =
        |clients: u32, first: u32| client_flags(args, setup.port, ca, u64::from(clients), u64::from(first), model_mib);
    if args.processes {
        (0..args.clients)
            .map(|c| start(setup, &format!("client-{c}"), "flotilla-sim-client", &common(1, c), &[]))
            .collect()
    } else {
        Ok(vec![start(setup, "clients", "flotilla-sim-client", &common(args.clients, 0), &[])?])
    }
}

fn wait_for(
    mut ready: impl FnMut() -> bool,
    limit: Duration,
    process: &mut Proc,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        interrupt.check()?;
        if process.exited().is_some() {
            bail!("{} stopped early:\n{}", process.name, process.log_tail(20));
        }
        if Instant::now() > deadline {
            bail!("{} not ready within {} s", process.name, limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn report(
    args: &Args,
    data_dir: &Path,
    cpu_s: f64,
    coordinator_mib: f64,
    clients_mib: f64,
    baseline_kib: u64,
) -> anyhow::Result<serde_json::Value> {
    let records = read_rounds(data_dir);
    if records.len() as u64 != args.rounds + 1 {
        bail!("{} rounds recorded, {} expected", records.len(), args.rounds + 1);
    }
    let field = |record: &serde_json::Value, name: &str| record[name].as_f64().unwrap_or(f64::NAN);
    let times: Vec<f64> = records.iter().map(|r| field(r, "unix_time")).collect();
    let round_s: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let participants: Vec<f64> = records.iter().map(|r| field(r, "participants")).collect();
    if participants.iter().any(|p| *p != f64::from(args.clients)) {
        bail!("not every client took part in every round: {participants:?}");
    }
    let measured = &records[1..];
    let udp: Vec<f64> = measured.iter().map(|r| field(r, "udp_bytes")).collect();
    let frames: Vec<f64> = measured.iter().map(|r| field(r, "bytes_in") + field(r, "bytes_out")).collect();
    let bytes = std::fs::read(data_dir.join("checkpoint.bin")).context("reading the final checkpoint")?;
    let checkpoint = Checkpoint::decode(&bytes).context("decoding the final checkpoint")?;
    let len = usize::try_from(args.params)?;
    let summary = ModelSummary::of(&checkpoint.params.values);
    // The clients' steps depend on the round's number: the reference takes the committed ones
    // (a tree's first rounds may fail while aggregators wait for their clients).
    let committed: Vec<u64> = records.iter().filter_map(|r| r["round"].as_u64()).collect();
    let reference = workload::reference_of_rounds(len, u64::from(args.clients), committed.iter().copied());
    let difference = summary.max_relative_difference(&reference);
    let model_mib = args.params as f64 * 4.0 / (1 << 20) as f64;
    Ok(json!({
        "workload": "fleet-round",
        "mode": mode(args),
        "clients": args.clients,
        "params": args.params,
        "rounds": args.rounds,
        "max_udp_payload": args.max_udp_payload,
        "concurrent_uploads": args.concurrent_uploads,
        "coordinator_args": args.coordinator_args,
        "round_s": round_s,
        "round_s_median": median(&round_s),
        "warmup_round_s": field(&records[0], "duration_s"),
        "coordinator_peak_rss_mib": coordinator_mib,
        "coordinator_rss_before_clients_mib": baseline_kib as f64 / 1024.0,
        "coordinator_rss_budget_mib": 3.0 * model_mib + 100.0,
        "clients_peak_rss_mib": clients_mib,
        "bytes_on_wire_per_round": median(&udp),
        "frame_bytes_per_round": median(&frames),
        "cpu_s": cpu_s,
        "final": summary,
        "reference": reference,
        "max_relative_difference": difference,
        "committed_rounds": committed,
        "matches_reference": difference <= 1e-3,
    }))
}
