//! `flotilla-bench-hostile`: issue #18's benchmark — can one hostile peer set stop, hijack or
//! exhaust the coordinator?
//!
//! Runs the real coordinator on loopback (development PKI, a tokens file) with an honest fleet
//! (`flotilla-sim-client fleet-round`, a `--vector-len P` model) and measures, with a fresh
//! coordinator per phase: a window of the honest fleet alone (the control), then one window
//! with `--hostile N` hostile QUIC peers alongside (see [`attacks`]); a sample-inflation run
//! compared with an honest-only reference run of the same seed; asynchronous buffer flooding
//! (`--mode async`, with its own control); and `--kills` SIGKILLs of the coordinator under load,
//! each followed by a restart on the same data directory and port. Prints one JSON line on
//! stdout; progress goes to stderr.

mod attacks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::params::ParameterVector;
use flotilla_protocol::wire::framing::FrameLimit;
use flotilla_protocol::workload::{self, splitmix64};
use flotilla_sim::bench::{binaries_dir, exit_with, median, process_cpu_s, status_kib, work_dir, write_workload_model};
use flotilla_sim::fleet::{free_udp_port, read_rounds};
use flotilla_sim::procs::{COORDINATOR_ENV, Interrupt, Proc};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use attacks::{Attack, Target};

/// The coordinator's log filter (its own default).
const COORDINATOR_LOG: &str = "warn,flotilla=info,flotilla_net=info,flotilla_coordinator=info";
/// Throughput a phase must keep, as a fraction of its control window's rounds per minute.
const MIN_RATIO: f64 = 0.9;
/// Most file descriptors the coordinator may hold during an attack: the usual default soft
/// limit (`ulimit -n`), past which a process under it can open no file (its checkpoint's
/// included).
const MAX_FDS: usize = 1024;
/// Least fraction of an honest prober's HTTP requests (from another address) answered while
/// the HTTP API is under attack.
const MIN_HTTP_ANSWERED: f64 = 0.99;
/// Largest acceptable difference between the attacked and the reference final model.
const MAX_MODEL_DIFFERENCE: f64 = 1e-3;
/// Target median of the seconds from a restart to the next committed round.
const MAX_MEDIAN_RECOVERY_S: f64 = 3.0;

/// Measure whether one hostile peer set can stop, hijack or exhaust the coordinator: the real
/// coordinator and an honest fleet on loopback, a fresh coordinator per attack; prints one
/// JSON line (rounds per minute against the honest fleet alone, peak memory against
/// 3 × model bytes + 150 MiB, model difference, kill -9 recovery) and pass/fail booleans.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Hostile QUIC connections (or UDP sockets) per attack [default: 100; 10 with --quick].
    #[arg(long, value_name = "N")]
    hostile: Option<u32>,
    /// Honest clients, all in one `flotilla-sim-client fleet-round` process; also the
    /// coordinator's --min-clients.
    #[arg(long, default_value_t = 20)]
    clients: u32,
    /// Parameters of the model (f32).
    #[arg(long, default_value_t = 100_000)]
    params: u64,
    /// Seconds each phase is measured for [default: 20; 5 with --quick].
    #[arg(long, value_name = "SECONDS")]
    window: Option<f64>,
    /// SIGKILLs of the coordinator in the kill9 phase [default: 20; 3 with --quick].
    #[arg(long, value_name = "N")]
    kills: Option<u32>,
    /// Rounds of the sample-inflation run and of its honest reference [default: 8; 3 with
    /// --quick].
    #[arg(long, value_name = "N")]
    inflation_rounds: Option<u64>,
    /// The coordinator's --round-interval in the sample-inflation runs, seconds (time for the
    /// hostile peers and the fleet to be joined before every round).
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    inflation_interval_s: u64,
    /// Smoke test: 10 hostile peers, 5 s windows, 3 kills, 3 inflation rounds (explicit flags
    /// still win).
    #[arg(long)]
    quick: bool,
    /// Phases to run, comma-separated [default: all]. Each attack's window follows a window
    /// of the honest fleet alone on the same coordinator; sample-inflation includes its
    /// reference run.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PHASE")]
    phases: Vec<Phase>,
    /// The coordinator's --round-deadline, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    round_deadline_s: u64,
    /// Raw UDP packets per second of the datagram flood, all sockets together.
    #[arg(long, default_value_t = 50_000)]
    flood_pps: u64,
    /// Seed of the random choices (kill moments, garbage bytes, tokens).
    #[arg(long, default_value_t = 18)]
    seed: u64,
    /// A coordinator whose resident memory passes this many MiB is killed (and the phase
    /// fails): protects the machine from an attack that works.
    #[arg(long, value_name = "MIB", default_value_t = 6144)]
    rss_kill_mib: u64,
    /// Longest wait for a coordinator to start listening or a fleet to commit its first round,
    /// seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    start_timeout_s: u64,
    /// Longest wait, after a kill and restart, for the next committed round, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    recovery_timeout_s: u64,
    /// Extra coordinator flag for every phase (repeatable), e.g.
    /// `--coordinator-arg=--min-upload-rate=16`.
    #[arg(long = "coordinator-arg", value_name = "ARG", allow_hyphen_values = true)]
    coordinator_args: Vec<String>,
    /// Directory holding flotilla-coordinator and flotilla-sim-client [default: this binary's].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Keep the working directory (logs, data directories) and print its path.
    #[arg(long)]
    keep: bool,
}

/// The phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Joined (valid token) peers trickling a ~400 KB update at 1 byte/s.
    SlowUploadToken,
    /// The same without a token (their Join is refused).
    SlowUploadAnonymous,
    /// Joined peers that never read their stream.
    NeverRead,
    /// 20 TCP connections per peer to the HTTP API, never finishing a request's headers.
    HttpSlowloris,
    /// Connect, garbage or a huge frame header without Join, reconnect.
    PrejoinFlood,
    /// Raw UDP garbage at --flood-pps, and unreliable datagrams over QUIC.
    DatagramFlood,
    /// ShareKeys of millions of empty entries near the frame limit; megabyte Join strings.
    Oversized,
    /// Newlines and ANSI escapes in client names and Error/Goodbye texts.
    LogInjection,
    /// Joined peers claiming 2^62 / u64::MAX samples with a huge delta.
    SampleInflation,
    /// `--mode async` with joined peers answering every request at once.
    AsyncFlood,
    /// SIGKILL and restart of the coordinator under load.
    Kill9,
}

impl Phase {
    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().replace('-', "_")).unwrap_or_default()
    }

    /// The attack of a windowed phase (measured against its control window).
    fn windowed_attack(self, flood_pps: u64) -> Option<Attack> {
        match self {
            Phase::SlowUploadToken => Some(Attack::SlowUpload { token: true }),
            Phase::SlowUploadAnonymous => Some(Attack::SlowUpload { token: false }),
            Phase::NeverRead => Some(Attack::NeverRead),
            Phase::HttpSlowloris => Some(Attack::HttpSlowloris),
            Phase::PrejoinFlood => Some(Attack::PrejoinFlood),
            Phase::DatagramFlood => Some(Attack::DatagramFlood { pps: flood_pps }),
            Phase::Oversized => Some(Attack::Oversized),
            Phase::LogInjection => Some(Attack::LogInjection),
            Phase::SampleInflation | Phase::AsyncFlood | Phase::Kill9 => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
}

fn main() -> std::process::ExitCode {
    exit_with(run(Args::parse()))
}

/// Everything the phases share.
struct Bench {
    args: Args,
    hostile: u32,
    window: Duration,
    settle: Duration,
    kills: u32,
    inflation_rounds: u64,
    bin: PathBuf,
    work: PathBuf,
    initial: PathBuf,
    tokens_file: PathBuf,
    honest_token: PathBuf,
    hostile_tokens: Arc<Vec<String>>,
    /// Flags added because this coordinator has them (see [`detect_flags`]).
    auto_args: Vec<String>,
    frame_limit: FrameLimit,
    interrupt: Interrupt,
    runtime: tokio::runtime::Runtime,
    started: Instant,
}

fn run(args: Args) -> anyhow::Result<String> {
    if args.clients == 0 || args.params == 0 || args.hostile == Some(0) {
        bail!("--clients, --params and --hostile must be at least 1");
    }
    if args.window.is_some_and(|w| !(w.is_finite() && w > 0.0)) {
        bail!("--window must be a positive number of seconds");
    }
    let interrupt = Interrupt::install()?;
    let bin = binaries_dir(args.bin_dir.as_deref())?;
    for binary in ["flotilla-coordinator", "flotilla-sim-client"] {
        if !bin.join(binary).exists() {
            let path = bin.join(binary);
            bail!("{} not found: build with `cargo build --release --workspace`, or give --bin-dir", path.display());
        }
    }
    let work = work_dir("hostile")?;
    let keep = args.keep;
    // The bench (its hostile peers' runtime included) is dropped once it has run; every child
    // process is stopped by the phase that started it, or killed when dropped on an error.
    let result = prepare(args, bin, work.clone(), interrupt).and_then(|bench| bench.run_all());
    match &result {
        Ok(_) if !keep => {
            let _ = std::fs::remove_dir_all(&work);
        }
        _ => eprintln!("working directory kept: {}", work.display()),
    }
    result
}

fn prepare(args: Args, bin: PathBuf, work: PathBuf, interrupt: Interrupt) -> anyhow::Result<Bench> {
    let quick = args.quick;
    let pick = |value: Option<u32>, normal: u32, short: u32| value.unwrap_or(if quick { short } else { normal });
    let window = Duration::from_secs_f64(args.window.unwrap_or(if quick { 5.0 } else { 20.0 }));
    let initial = work.join("initial.bin");
    write_workload_model(&initial, args.params)?;
    let hostile = pick(args.hostile, 100, 10);
    let token =
        |label: &str, i: u64| format!("{label}-{i}-{:016x}", splitmix64(args.seed ^ (i << 8) ^ label.len() as u64));
    let honest = token("honest", 0);
    let hostile_tokens: Vec<String> = (0..u64::from(hostile)).map(|i| token("hostile", i)).collect();
    let tokens_file = work.join("tokens");
    let honest_token = work.join("honest.token");
    let all = std::iter::once(honest.clone()).chain(hostile_tokens.iter().cloned()).collect::<Vec<_>>().join("\n");
    write_private(&tokens_file, &format!("# flotilla-bench-hostile\n{all}\n"))?;
    write_private(&honest_token, &format!("{honest}\n"))?;
    let auto_args = detect_flags(&bin, args.clients)?;
    let frame_limit = FrameLimit::new(frame_mib(&args.coordinator_args).saturating_mul(1 << 20));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hostile")
        .enable_all()
        .build()
        .context("starting the hostile peers' runtime")?;
    Ok(Bench {
        hostile,
        window,
        settle: if quick { Duration::from_secs(1) } else { Duration::from_secs(2) },
        kills: pick(args.kills, 20, 3),
        inflation_rounds: args.inflation_rounds.unwrap_or(if quick { 3 } else { 8 }),
        args,
        bin,
        work,
        initial,
        tokens_file,
        honest_token,
        hostile_tokens: Arc::new(hostile_tokens),
        auto_args,
        frame_limit,
        interrupt,
        runtime,
        started: Instant::now(),
    })
}

/// Writes a file only its owner may read (the coordinator warns about readable token files).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Flags this coordinator needs for the benchmark's setup, from its `--help`: the honest
/// fleet shares one token (one process of virtual clients), so a per-identity session limit
/// is lifted; the hostile peers each hold their own token, so the limit would not bind them.
fn detect_flags(bin: &Path, clients: u32) -> anyhow::Result<Vec<String>> {
    let output = std::process::Command::new(bin.join("flotilla-coordinator"))
        .arg("--help")
        .output()
        .context("running flotilla-coordinator --help")?;
    let help = String::from_utf8_lossy(&output.stdout);
    let mut flags = Vec::new();
    if help.contains("--sessions-per-identity") {
        flags.extend(["--sessions-per-identity".to_string(), "0".to_string()]);
    }
    // Over-selection, as a deployment facing stragglers would set it: a round commits once as
    // many updates as there are honest clients are in, whoever else was sampled.
    if help.contains("--round-goal") {
        flags.extend(["--round-goal".to_string(), clients.to_string()]);
    }
    Ok(flags)
}

/// The coordinator's frame limit in MiB, from `--max-frame-mib` among the extra flags (64 by default).
fn frame_mib(extra: &[String]) -> u32 {
    let mut value = None;
    for (i, arg) in extra.iter().enumerate() {
        if let Some(v) = arg.strip_prefix("--max-frame-mib=") {
            value = v.parse().ok();
        } else if arg == "--max-frame-mib" {
            value = extra.get(i + 1).and_then(|v| v.parse().ok());
        }
    }
    value.unwrap_or(64)
}

/// A running coordinator and what is watched of it.
struct Coordinator {
    proc: Proc,
    pid: u32,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// The HTTP API's port, when it serves one.
    http: Option<u16>,
    peak_kib: u64,
    /// Most file descriptors it held at once (sampled).
    peak_fds: usize,
    killed_for_memory: bool,
    exit: Option<bool>,
}

impl Coordinator {
    /// Samples peak memory; kills the coordinator past `rss_kill_kib`; notes its exit.
    fn sample(&mut self, rss_kill_kib: u64) {
        if self.exit.is_some() {
            return;
        }
        if let Some(kib) = status_kib(self.pid, "VmHWM:") {
            self.peak_kib = self.peak_kib.max(kib);
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) {
            self.peak_fds = self.peak_fds.max(fds.count());
        }
        if status_kib(self.pid, "VmRSS:").is_some_and(|kib| kib > rss_kill_kib) {
            eprintln!("[hostile] coordinator over --rss-kill-mib: killed");
            self.killed_for_memory = true;
            self.proc.kill();
            self.exit = Some(false);
            return;
        }
        if let Some(success) = self.proc.exited() {
            self.exit = Some(success);
        }
    }

    fn alive(&self) -> bool {
        self.exit.is_none()
    }

    fn rounds(&self) -> usize {
        read_rounds(&self.data).len()
    }

    fn ca(&self) -> PathBuf {
        self.data.join("pki").join("ca.pem")
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }

    /// SIGTERM, a bounded wait, SIGKILL.
    fn stop(&mut self) {
        if self.alive() {
            self.proc.terminate(Duration::from_secs(10));
        }
    }
}

impl Bench {
    fn model_bytes(&self) -> f64 {
        self.args.params as f64 * 4.0
    }

    /// The memory bound: 3 × model bytes + 150 MiB, in MiB.
    fn rss_bound_mib(&self) -> f64 {
        3.0 * self.model_bytes() / f64::from(1 << 20) + 150.0
    }

    fn rss_kill_kib(&self) -> u64 {
        self.args.rss_kill_mib.saturating_mul(1024)
    }

    fn phase_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// The coordinator flags every phase shares (the data directory and port aside).
    fn base_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--vector-len",
            &self.args.params.to_string(),
            "--initial-params",
            &self.initial.display().to_string(),
            "--min-clients",
            &self.args.clients.to_string(),
            "--round-deadline",
            &format!("{}s", self.args.round_deadline_s),
            "--tokens-file",
            &self.tokens_file.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.auto_args.iter().cloned());
        args
    }

    /// Starts a coordinator in `dir` (data in `dir/data`) and waits until it listens.
    fn start_coordinator(
        &self,
        dir: &Path,
        name: &str,
        port: u16,
        mode: Mode,
        extra: &[String],
    ) -> anyhow::Result<Coordinator> {
        let data = dir.join("data");
        let mut args =
            vec!["--listen".to_string(), format!("127.0.0.1:{port}"), "--data-dir".into(), data.display().to_string()];
        args.extend(self.base_args());
        if mode == Mode::Async {
            args.extend(["--mode".to_string(), "async".to_string()]);
        }
        args.extend(extra.iter().cloned());
        args.extend(self.args.coordinator_args.iter().cloned());
        let log = dir.join(format!("{name}.log"));
        let binary = self.bin.join("flotilla-coordinator");
        let proc = Proc::start_logging(
            name,
            &binary,
            &args,
            &dir.join(format!("{name}.out")),
            &log,
            COORDINATOR_LOG,
            COORDINATOR_ENV,
        )?;
        let pid = proc.pid().context("coordinator not running")?;
        let mut coordinator = Coordinator {
            proc,
            pid,
            data,
            log,
            port,
            http: None,
            peak_kib: 0,
            peak_fds: 0,
            killed_for_memory: false,
            exit: None,
        };
        let deadline = Instant::now() + Duration::from_secs(self.args.start_timeout_s);
        loop {
            self.interrupt.check()?;
            coordinator.sample(self.rss_kill_kib());
            if !coordinator.alive() {
                bail!("{name} stopped at start:\n{}", coordinator.proc.log_tail(15));
            }
            let listening = std::fs::read_to_string(&coordinator.log).is_ok_and(|t| t.contains("listening"));
            if listening && coordinator.ca().exists() {
                return Ok(coordinator);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not listening within {} s:\n{}",
                    self.args.start_timeout_s,
                    coordinator.proc.log_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The honest fleet: one `flotilla-sim-client fleet-round` process of `--clients` clients.
    fn start_fleet(&self, dir: &Path, coordinator: &Coordinator) -> anyhow::Result<Proc> {
        let args: Vec<String> = vec![
            "fleet-round".into(),
            "--coordinator".into(),
            format!("127.0.0.1:{}", coordinator.port),
            "--ca".into(),
            coordinator.ca().display().to_string(),
            "--token-file".into(),
            self.honest_token.display().to_string(),
            "--clients".into(),
            self.args.clients.to_string(),
        ];
        let binary = self.bin.join("flotilla-sim-client");
        Proc::start_logging("fleet", &binary, &args, &dir.join("fleet.out"), &dir.join("fleet.log"), "warn", &[])
    }

    fn target(&self, coordinator: &Coordinator) -> Target {
        Target {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], coordinator.port)),
            http: coordinator.http.map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            ca: coordinator.ca(),
            tokens: self.hostile_tokens.clone(),
            frame_limit: self.frame_limit,
            seed: self.args.seed,
        }
    }

    /// Watches the coordinator for `duration` (memory, exit), a tenth of a second at a time.
    fn watch(&self, coordinator: &mut Coordinator, duration: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        loop {
            self.interrupt.check()?;
            coordinator.sample(self.rss_kill_kib());
            let Some(left) = end.checked_duration_since(Instant::now()) else { return Ok(()) };
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// Waits until `rounds.jsonl` holds more than `after` records.
    fn wait_rounds(
        &self,
        coordinator: &mut Coordinator,
        fleet: &mut Proc,
        after: usize,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while coordinator.rounds() <= after {
            self.watch(coordinator, Duration::from_millis(20))?;
            if !coordinator.alive() {
                bail!("the coordinator stopped:\n{}", coordinator.proc.log_tail(15));
            }
            if fleet.exited().is_some() {
                bail!("the honest fleet stopped:\n{}", fleet.log_tail(15));
            }
            if Instant::now() > deadline {
                bail!("no committed round within {} s:\n{}", limit.as_secs(), coordinator.proc.log_tail(15));
            }
        }
        Ok(())
    }

    fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.args.start_timeout_s)
    }

    fn run_all(&self) -> anyhow::Result<String> {
        let selected: Vec<Phase> =
            if self.args.phases.is_empty() { Phase::value_variants().to_vec() } else { self.args.phases.clone() };
        let windowed: Vec<(Phase, Attack)> =
            selected.iter().filter_map(|p| p.windowed_attack(self.args.flood_pps).map(|a| (*p, a))).collect();
        let mut phases = Vec::new();
        for (phase, attack) in windowed {
            let mut result = self.guard(&phase.name(), || self.window_phase(&phase.name(), Mode::Sync, attack))?;
            let control = result["control"]["rounds_per_min"].as_f64();
            judge(&mut result, control, None);
            phases.push(result);
        }
        if selected.contains(&Phase::SampleInflation) {
            phases.push(self.guard("sample_inflation", || self.sample_inflation())?);
        }
        if selected.contains(&Phase::AsyncFlood) {
            phases.push(self.guard("async_flood", || self.async_flood())?);
        }
        let kill9 = if selected.contains(&Phase::Kill9) { self.guard("kill9", || self.kill9())? } else { Value::Null };
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        for result in phases.iter().chain(std::iter::once(&kill9).filter(|v| !v.is_null())) {
            let name = result["name"].as_str().unwrap_or("?").to_string();
            if result["pass"].as_bool() == Some(true) { passed.push(name) } else { failed.push(name) }
        }
        let mut coordinator_args = self.base_args();
        coordinator_args.extend(self.args.coordinator_args.iter().cloned());
        Ok(json!({
            "benchmark": "hostile",
            "quick": self.args.quick,
            "honest_clients": self.args.clients,
            "hostile_peers": self.hostile,
            "params": self.args.params,
            "model_bytes": self.model_bytes(),
            "rss_bound_mib": self.rss_bound_mib(),
            "window_s": self.window.as_secs_f64(),
            "round_deadline_s": self.args.round_deadline_s,
            "frame_limit_bytes": self.frame_limit.bytes(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "coordinator_args": coordinator_args,
            "phases": phases,
            "kill9": kill9,
            "passed": passed,
            "failed": failed,
            "all_pass": failed.is_empty(),
            "wall_s": self.started.elapsed().as_secs_f64(),
        })
        .to_string())
    }

    /// Runs one phase; its failure becomes `{"name", "error", "pass": false}` (an interrupt
    /// stops everything).
    fn guard(&self, name: &str, phase: impl FnOnce() -> anyhow::Result<Value>) -> anyhow::Result<Value> {
        eprintln!("[hostile] {name}: starting ({:.0} s in)", self.started.elapsed().as_secs_f64());
        match phase() {
            Ok(mut value) => {
                value["name"] = json!(name);
                eprintln!("[hostile] {name}: {value}");
                Ok(value)
            }
            Err(error) if self.interrupt.is_set() => Err(error),
            Err(error) => {
                eprintln!("[hostile] {name}: failed: {error:#}");
                Ok(json!({ "name": name, "error": format!("{error:#}"), "pass": false }))
            }
        }
    }

    /// A fresh coordinator and the honest fleet; after the first committed round, `--window`
    /// seconds undisturbed (the control), then `attack` starts, settles, and the next
    /// `--window` seconds are measured. The ratio is taken to the control of the same
    /// coordinator and fleet, so drift of the machine's load between phases cancels out.
    fn window_phase(&self, name: &str, mode: Mode, attack: Attack) -> anyhow::Result<Value> {
        let dir = self.phase_dir(name)?;
        // The HTTP attack needs the API, and a prober asking it for /healthz in both windows.
        let http = if attack == Attack::HttpSlowloris { Some(free_tcp_port()?) } else { None };
        let extra: Vec<String> =
            http.map(|port| vec!["--http".into(), format!("127.0.0.1:{port}")]).unwrap_or_default();
        let mut coordinator = self.start_coordinator(&dir, "coordinator", free_udp_port()?, mode, &extra)?;
        coordinator.http = http;
        let mut fleet = self.start_fleet(&dir, &coordinator)?;
        self.wait_rounds(&mut coordinator, &mut fleet, 0, self.start_timeout())?;
        let fleet_pid = fleet.pid();
        let probe = |this: &Self, coordinator: &mut Coordinator| -> anyhow::Result<Value> {
            let prober = http.map(|port| HttpProber::start(this.runtime.handle(), port));
            let mut window = this.measure(coordinator, fleet_pid)?;
            if let Some(prober) = prober {
                window["http_probe"] = this.runtime.block_on(prober.stop());
            }
            Ok(window)
        };
        let control = probe(self, &mut coordinator)?;
        let running = attacks::start(attack, self.target(&coordinator), self.hostile, self.runtime.handle())?;
        self.watch(&mut coordinator, self.settle)?;
        let mut result = probe(self, &mut coordinator)?;
        let fleet_alive = fleet.exited().is_none();
        let attack_stats = running.stop();
        let alive = coordinator.alive();
        fleet.terminate(Duration::from_secs(5));
        coordinator.stop();
        result["mode"] = json!(if mode == Mode::Async { "async" } else { "sync" });
        result["peak_rss_mib"] = json!(coordinator.peak_mib());
        result["peak_fds"] = json!(coordinator.peak_fds);
        result["fds_bound"] = json!(MAX_FDS);
        result["rss_bound_mib"] = json!(self.rss_bound_mib());
        result["rss_within_bound"] = json!(coordinator.peak_mib() <= self.rss_bound_mib());
        result["coordinator_alive"] = json!(alive);
        result["killed_for_memory"] = json!(coordinator.killed_for_memory);
        result["fleet_alive"] = json!(fleet_alive);
        result["attack"] = attack_stats;
        result["control"] = control;
        if attack == Attack::LogInjection {
            result["log"] = scan_log(&coordinator.log);
        }
        if let Attack::DatagramFlood { pps } = attack {
            result["flood_pps"] = json!(pps);
            let notes = &result["attack"]["notes"];
            let refused = notes.as_object().is_some_and(|n| {
                n.keys().any(|k| k.starts_with("send_datagram: refused"))
                    && !n.keys().any(|k| k.starts_with("send_datagram: ok"))
            });
            result["datagrams_refused"] = json!(refused);
        }
        Ok(result)
    }

    /// The next `--window` seconds of a running coordinator: rounds and updates per minute,
    /// and the CPU-seconds per second of the coordinator, the honest fleet and this process
    /// (the hostile peers, which share the machine's cores with both).
    fn measure(&self, coordinator: &mut Coordinator, fleet_pid: Option<u32>) -> anyhow::Result<Value> {
        let before = coordinator.rounds();
        let load_average = load_average();
        let pids = [Some(coordinator.pid.to_string()), fleet_pid.map(|pid| pid.to_string()), Some("self".into())];
        let cpu = || pids.iter().map(|pid| pid.as_deref().and_then(process_cpu_s)).collect::<Vec<_>>();
        let cpu_before = cpu();
        let started = Instant::now();
        self.watch(coordinator, self.window)?;
        let seconds = started.elapsed().as_secs_f64();
        let busy: Vec<Option<f64>> =
            cpu_before.iter().zip(cpu()).map(|(before, after)| Some((after? - (*before)?) / seconds)).collect();
        let records = read_rounds(&coordinator.data);
        let window = records.get(before..).unwrap_or_default();
        let per_min = |count: f64| count * 60.0 / seconds;
        Ok(json!({
            "rounds": window.len(),
            "seconds": seconds,
            "rounds_per_min": per_min(window.len() as f64),
            "updates_per_min": per_min(window.iter().filter_map(|r| r["participants"].as_u64()).sum::<u64>() as f64),
            "honest_updates_per_min": honest_updates(window).map(|n| per_min(n as f64)),
            "load_average": load_average,
            "cpu_per_s": { "coordinator": busy[0], "honest_fleet": busy[1], "bench_and_hostile_peers": busy[2] },
        }))
    }

    /// A fixed number of rounds with a round interval, honest only or with inflating peers
    /// joined before the fleet; the final checkpoint's models and figures.
    fn fixed_run(&self, name: &str, hostile: bool) -> anyhow::Result<(Checkpoint, Value)> {
        let dir = self.phase_dir(name)?;
        let rounds = self.inflation_rounds;
        let interval = self.args.inflation_interval_s;
        let extra: Vec<String> =
            vec!["--rounds".into(), rounds.to_string(), "--round-interval".into(), format!("{interval}s")];
        let mut coordinator = self.start_coordinator(&dir, "coordinator", free_udp_port()?, Mode::Sync, &extra)?;
        let running = if hostile {
            let running =
                attacks::start(Attack::Inflate, self.target(&coordinator), self.hostile, self.runtime.handle())?;
            let deadline = Instant::now() + self.start_timeout();
            while running.stats.welcomed() < u64::from(self.hostile) && Instant::now() < deadline {
                self.watch(&mut coordinator, Duration::from_millis(50))?;
            }
            Some(running)
        } else {
            None
        };
        let mut fleet = self.start_fleet(&dir, &coordinator)?;
        let limit = self.start_timeout() + Duration::from_secs(rounds * (interval + self.args.round_deadline_s + 5));
        let deadline = Instant::now() + limit;
        while coordinator.alive() && Instant::now() < deadline {
            self.watch(&mut coordinator, Duration::from_millis(50))?;
        }
        let finished = coordinator.exit == Some(true);
        let attack_stats = running.map(attacks::Running::stop);
        fleet.terminate(Duration::from_secs(5));
        coordinator.stop();
        let records = read_rounds(&coordinator.data);
        if !finished {
            bail!(
                "{name}: {} of {rounds} rounds within {} s:\n{}",
                records.len(),
                limit.as_secs(),
                coordinator.proc.log_tail(15)
            );
        }
        let bytes = std::fs::read(coordinator.data.join("checkpoint.bin")).context("reading the final checkpoint")?;
        let checkpoint = Checkpoint::decode(&bytes).context("decoding the final checkpoint")?;
        let times: Vec<f64> = records.iter().filter_map(|r| r["unix_time"].as_f64()).collect();
        let span = times.last().zip(times.first()).map_or(0.0, |(last, first)| last - first);
        let rounds_per_min = if span > 0.0 { (times.len() - 1) as f64 * 60.0 / span } else { 0.0 };
        let participants: Vec<u64> = records.iter().filter_map(|r| r["participants"].as_u64()).collect();
        let mut figures = json!({
            "rounds": records.len(),
            "rounds_per_min": rounds_per_min,
            "participants": participants,
            "peak_rss_mib": coordinator.peak_mib(),
            "killed_for_memory": coordinator.killed_for_memory,
        });
        if let Some(stats) = attack_stats {
            figures["attack"] = stats;
        }
        Ok((checkpoint, figures))
    }

    /// The same seed and rounds, honest only and with inflating peers: how far the final
    /// model moved.
    fn sample_inflation(&self) -> anyhow::Result<Value> {
        let (reference, reference_figures) = self.fixed_run("sample_inflation_reference", false)?;
        let (attacked, figures) = self.fixed_run("sample_inflation", true)?;
        let params = max_abs_difference(&reference.params, &attacked.params)?;
        let served = match (&reference.served, &attacked.served) {
            (Some(a), Some(b)) => Some(max_abs_difference(a, b)?),
            _ => None,
        };
        let difference = served.map_or(params, |s| s.max(params));
        let ratio = ratio(figures["rounds_per_min"].as_f64(), reference_figures["rounds_per_min"].as_f64());
        let peak = figures["peak_rss_mib"].as_f64().unwrap_or(f64::NAN);
        let rss_ok = peak <= self.rss_bound_mib();
        let throughput_ok = ratio.is_some_and(|r| r >= MIN_RATIO);
        let model_ok = difference <= MAX_MODEL_DIFFERENCE;
        Ok(json!({
            "rounds": self.inflation_rounds,
            "round_interval_s": self.args.inflation_interval_s,
            "max_abs_difference": params,
            "served_max_abs_difference": served,
            "difference_target": MAX_MODEL_DIFFERENCE,
            "model_ok": model_ok,
            "rounds_per_min": figures["rounds_per_min"],
            "ratio": ratio,
            "throughput_ok": throughput_ok,
            "peak_rss_mib": peak,
            "rss_bound_mib": self.rss_bound_mib(),
            "rss_within_bound": rss_ok,
            "pass": model_ok && rss_ok && throughput_ok,
            "reference": reference_figures,
            "attacked": figures,
        }))
    }

    /// `--mode async`: the honest fleet alone, then with peers answering every request at once.
    /// The peers hold valid credentials and answer like fast honest clients, so they cannot be
    /// told apart: besides versions per minute, the honest clients must keep their fair share
    /// of the folded updates (their number over all joined clients'), i.e. the attackers gain
    /// no more weight than one update per identity and version gives them.
    fn async_flood(&self) -> anyhow::Result<Value> {
        let mut result = self.window_phase("async_flood", Mode::Async, Attack::AsyncFlood)?;
        let fair_share = f64::from(self.args.clients) / f64::from(self.args.clients + self.hostile);
        let control = result["control"]["rounds_per_min"].as_f64();
        judge(&mut result, control, Some(fair_share));
        result["honest_updates_ratio"] = json!(ratio(
            result["honest_updates_per_min"].as_f64(),
            result["control"]["honest_updates_per_min"].as_f64()
        ));
        Ok(result)
    }

    /// SIGKILLs the coordinator `--kills` times at random moments under load, restarting it on
    /// the same data directory and port: rounds lost, restarts refused, recovery times.
    fn kill9(&self) -> anyhow::Result<Value> {
        let dir = self.phase_dir("kill9")?;
        let port = free_udp_port()?;
        let mut rng = StdRng::seed_from_u64(self.args.seed);
        let mut coordinator = self.start_coordinator(&dir, "coordinator-0", port, Mode::Sync, &[])?;
        let mut fleet = self.start_fleet(&dir, &coordinator)?;
        self.wait_rounds(&mut coordinator, &mut fleet, 0, self.start_timeout())?;
        let (mut lost, mut unreadable, mut refused, mut timeouts, mut died) = (0u64, 0u32, 0u32, 0u32, 0u32);
        let mut peak_kib = 0;
        let mut recoveries = Vec::new();
        let mut refusals = Vec::new();
        let mut kills = 0;
        for kill in 1..=self.kills {
            self.watch(&mut coordinator, Duration::from_secs_f64(rng.random_range(0.0..2.0)))?;
            peak_kib = peak_kib.max(coordinator.peak_kib);
            if !coordinator.alive() {
                died += 1;
                refusals.push(format!("coordinator exited by itself:\n{}", coordinator.proc.log_tail(5)));
                break;
            }
            coordinator.proc.kill();
            kills += 1;
            let records = read_rounds(&coordinator.data);
            let last_version = records.iter().filter_map(|r| r["model_version"].as_u64()).max().unwrap_or(0);
            let saved =
                std::fs::read(coordinator.data.join("checkpoint.bin")).ok().and_then(|b| Checkpoint::decode(&b).ok());
            match saved {
                Some(checkpoint) => lost += last_version.saturating_sub(checkpoint.model_version),
                None => unreadable += 1,
            }
            let before = records.len();
            let restarted = Instant::now();
            coordinator = match self.start_coordinator(&dir, &format!("coordinator-{kill}"), port, Mode::Sync, &[]) {
                Ok(coordinator) => coordinator,
                Err(error) if !self.interrupt.is_set() => {
                    refused += 1;
                    refusals.push(format!("{error:#}"));
                    break;
                }
                Err(error) => return Err(error),
            };
            let deadline = restarted + Duration::from_secs(self.args.recovery_timeout_s);
            loop {
                self.watch(&mut coordinator, Duration::from_millis(20))?;
                if coordinator.rounds() > before {
                    recoveries.push(restarted.elapsed().as_secs_f64());
                    break;
                }
                if !coordinator.alive() {
                    refused += 1;
                    refusals.push(coordinator.proc.log_tail(5));
                    break;
                }
                if Instant::now() > deadline {
                    timeouts += 1;
                    break;
                }
            }
            eprintln!("[hostile] kill9: kill {kill}/{}: recovered in {:?} s", self.kills, recoveries.last());
            if !coordinator.alive() {
                break;
            }
        }
        peak_kib = peak_kib.max(coordinator.peak_kib);
        let fleet_alive = fleet.exited().is_none();
        fleet.terminate(Duration::from_secs(5));
        coordinator.stop();
        let text = std::fs::read_to_string(coordinator.data.join("rounds.jsonl")).unwrap_or_default();
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        let records = read_rounds(&coordinator.data);
        let backwards = |field: &str| {
            let values: Vec<u64> = records.iter().filter_map(|r| r[field].as_u64()).collect();
            values.windows(2).filter(|w| w[1] <= w[0]).count()
        };
        let (rounds_backwards, versions_backwards) = (backwards("round"), backwards("model_version"));
        let recovery_median = (!recoveries.is_empty()).then(|| median(&recoveries));
        let recovery_max = recoveries.iter().copied().reduce(f64::max);
        let durable = lost == 0 && unreadable == 0 && rounds_backwards == 0 && versions_backwards == 0;
        let restarts_ok = refused == 0 && died == 0 && kills == self.kills;
        let recovery_ok = timeouts == 0 && recovery_median.is_some_and(|m| m <= MAX_MEDIAN_RECOVERY_S);
        Ok(json!({
            "kills": kills,
            "kills_planned": self.kills,
            "committed_rounds": records.len(),
            "committed_rounds_lost": lost,
            "rounds_went_backwards": rounds_backwards,
            "model_versions_went_backwards": versions_backwards,
            "torn_record_lines": lines.saturating_sub(records.len()),
            "checkpoint_unreadable": unreadable,
            "refused_restarts": refused,
            "exited_by_itself": died,
            "refusals": refusals,
            "recovery_s": recoveries,
            "recovery_s_median": recovery_median,
            "recovery_s_max": recovery_max,
            "recovery_timeouts": timeouts,
            "recovery_target_median_s": MAX_MEDIAN_RECOVERY_S,
            "peak_rss_mib": peak_kib as f64 / 1024.0,
            "rss_bound_mib": self.rss_bound_mib(),
            "fleet_alive": fleet_alive,
            "durable": durable,
            "restarts_ok": restarts_ok,
            "recovery_ok": recovery_ok,
            "pass": durable && restarts_ok && recovery_ok,
        }))
    }
}

/// An ephemeral TCP port on loopback, free when asked.
fn free_tcp_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding an ephemeral TCP port")?;
    Ok(listener.local_addr().context("reading the bound port")?.port())
}

/// An honest user of the HTTP API from another address than the hostile peers' (127.0.0.2):
/// `GET /healthz` every 100 ms, each bounded by 2 s; how many were answered, and how fast.
struct HttpProber {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Value>,
}

impl HttpProber {
    fn start(runtime: &tokio::runtime::Handle, port: u16) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        let task = runtime.spawn(async move {
            let (mut answered, mut failed, mut latencies_ms) = (0u64, 0u64, Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = until.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let started = Instant::now();
                match tokio::time::timeout(Duration::from_secs(2), healthz(port)).await {
                    Ok(Ok(true)) => {
                        answered += 1;
                        latencies_ms.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => failed += 1,
                }
            }
            latencies_ms.sort_by(f64::total_cmp);
            let quantile = |q: f64| latencies_ms.get(((latencies_ms.len().max(1) - 1) as f64 * q) as usize).copied();
            let total = answered + failed;
            json!({
                "requests": total,
                "answered": answered,
                "answered_fraction": if total == 0 { None } else { Some(answered as f64 / total as f64) },
                "latency_ms_median": quantile(0.5),
                "latency_ms_max": quantile(1.0),
            })
        });
        Self { stop, task }
    }

    async fn stop(self) -> Value {
        self.stop.cancel();
        self.task.await.unwrap_or(Value::Null)
    }
}

/// One `GET /healthz` from 127.0.0.2 to the API on `port`: whether it answered 200.
async fn healthz(port: u16) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))?;
    let mut stream = socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response.starts_with(b"HTTP/1.1 200"))
}

/// The machine's 1-minute load average (other work on it skews every ratio).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn ratio(value: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (value, reference) {
        (Some(v), Some(r)) if r > 0.0 => Some(v / r),
        _ => None,
    }
}

/// Adds the ratio to the control window and the pass/fail booleans of a windowed phase. With
/// `fair_share` (asynchronous mode, where anyone's answers make versions faster) the honest
/// clients' share of the folded updates must also be at least [`MIN_RATIO`] of it.
fn judge(result: &mut Value, reference: Option<f64>, fair_share: Option<f64>) {
    let rounds_ratio = ratio(result["rounds_per_min"].as_f64(), reference);
    let throughput_ok = rounds_ratio.is_some_and(|r| r >= MIN_RATIO);
    let rss_ok = result["rss_within_bound"].as_bool() == Some(true);
    let alive = result["coordinator_alive"].as_bool() == Some(true);
    let log_ok = result.get("log").is_none_or(|log| log["ok"].as_bool() == Some(true));
    let datagrams_ok = result.get("datagrams_refused").is_none_or(|d| d.as_bool() == Some(true));
    let fds_ok = result["peak_fds"].as_u64().is_none_or(|fds| fds <= MAX_FDS as u64);
    result["fds_ok"] = json!(fds_ok);
    let http_ok = result
        .get("http_probe")
        .is_none_or(|probe| probe["answered_fraction"].as_f64().is_some_and(|f| f >= MIN_HTTP_ANSWERED));
    if result.get("http_probe").is_some() {
        result["http_ok"] = json!(http_ok);
    }
    let mut fair_ok = true;
    if let Some(fair_share) = fair_share {
        let share = ratio(result["honest_updates_per_min"].as_f64(), result["updates_per_min"].as_f64());
        fair_ok = share.is_some_and(|s| s >= MIN_RATIO * fair_share);
        result["honest_share"] = json!(share);
        result["fair_share"] = json!(fair_share);
        result["fair_share_ok"] = json!(fair_ok);
    }
    result["ratio"] = json!(rounds_ratio);
    result["throughput_ok"] = json!(throughput_ok);
    result["pass"] = json!(throughput_ok && rss_ok && fds_ok && alive && log_ok && datagrams_ok && http_ok && fair_ok);
}

fn max_abs_difference(a: &ParameterVector, b: &ParameterVector) -> anyhow::Result<f64> {
    if a.values.len() != b.values.len() {
        bail!("the models differ in length: {} and {}", a.values.len(), b.values.len());
    }
    Ok(a.values.iter().zip(&b.values).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).fold(0.0, f64::max))
}

/// Updates from honest clients folded in `records`: honest clients claim
/// [`workload::SAMPLES`] samples, hostile ones that send plausible updates one fewer (see
/// [`attacks::Attack::AsyncFlood`]), so a record of p participants and s samples holds
/// s − (SAMPLES − 1)·p honest ones. `None` without records that say.
fn honest_updates(records: &[Value]) -> Option<u64> {
    let mut total = None;
    for record in records {
        let (Some(participants), Some(samples)) = (record["participants"].as_u64(), record["samples"].as_u64()) else {
            continue;
        };
        let honest = samples.saturating_sub((workload::SAMPLES - 1).saturating_mul(participants)).min(participants);
        total = Some(total.unwrap_or(0) + honest);
    }
    total
}

/// Forged lines in a text log: lines (split at `\n` or `\r`) starting with the injected
/// "2099-" timestamp, escape bytes, carriage returns, Unicode line separators.
fn scan_log(log: &Path) -> Value {
    let bytes = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let forged_newline = text.split('\n').filter(|line| line.starts_with("2099-")).count();
    let forged_any = text.split(['\n', '\r']).filter(|line| line.starts_with("2099-")).count();
    let forged_unicode =
        text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']).filter(|line| line.starts_with("2099-")).count();
    let escapes = bytes.iter().filter(|b| **b == 0x1b).count();
    let returns = bytes.iter().filter(|b| **b == b'\r').count();
    json!({
        "forged_lines": forged_any,
        "forged_lines_newline_only": forged_newline,
        "forged_lines_with_unicode_separators": forged_unicode,
        "escape_bytes": escapes,
        "carriage_returns": returns,
        "unicode_line_separators": text.matches(['\u{85}', '\u{2028}', '\u{2029}']).count(),
        "marker_mentions": text.matches("FORGED-").count(),
        "log_bytes": bytes.len(),
        "ok": forged_any == 0 && escapes == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_renders() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("--hostile") && help.contains("--quick") && help.contains("--kills"));
    }

    #[test]
    fn frame_limit_from_extra_flags() {
        assert_eq!(frame_mib(&[]), 64);
        assert_eq!(frame_mib(&["--max-frame-mib=8".into()]), 8);
        assert_eq!(frame_mib(&["--max-frame-mib".into(), "2".into()]), 2);
    }

    #[test]
    fn judged_phase_needs_throughput_memory_and_life() {
        let mut result = json!({
            "rounds_per_min": 95.0, "updates_per_min": 950.0, "honest_updates_per_min": 150.0,
            "rss_within_bound": true, "coordinator_alive": true,
        });
        judge(&mut result, Some(100.0), None);
        assert_eq!(result["pass"], json!(true));
        judge(&mut result, Some(110.0), None);
        assert_eq!(result["pass"], json!(false), "under 90 % of the control");
        // 150 of 950 updates (15.8 %) against a fair share of 20 / 120 (16.7 %): 0.95 of it.
        judge(&mut result, Some(100.0), Some(20.0 / 120.0));
        assert_eq!(result["pass"], json!(true));
        // Against a fair share of 20 / 100 (20 %): 0.79 of it.
        judge(&mut result, Some(100.0), Some(0.2));
        assert_eq!((result["pass"].clone(), result["fair_share_ok"].clone()), (json!(false), json!(false)));
        result["rss_within_bound"] = json!(false);
        judge(&mut result, Some(100.0), None);
        assert_eq!(result["pass"], json!(false), "over the memory bound");
        result["rss_within_bound"] = json!(true);
        result["peak_fds"] = json!(MAX_FDS + 1);
        judge(&mut result, Some(100.0), None);
        assert_eq!((result["pass"].clone(), result["fds_ok"].clone()), (json!(false), json!(false)), "too many fds");
        result["peak_fds"] = json!(80);
        result["http_probe"] = json!({ "answered_fraction": 0.98 });
        judge(&mut result, Some(100.0), None);
        assert_eq!((result["pass"].clone(), result["http_ok"].clone()), (json!(false), json!(false)), "prober starved");
        result["http_probe"] = json!({ "answered_fraction": 1.0 });
        judge(&mut result, Some(100.0), None);
        assert_eq!(result["pass"], json!(true));
    }

    #[test]
    fn forged_lines_are_found() {
        let dir = std::env::temp_dir().join(format!("hostile-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let log = dir.join("log");
        std::fs::write(&log, format!("2026 INFO joined client_name={}\n", attacks::injection(1))).ok();
        let scan = scan_log(&log);
        assert!(scan["forged_lines"].as_u64().is_some_and(|n| n >= 2), "{scan}");
        assert_eq!(scan["ok"], json!(false));
        std::fs::write(&log, "2026 INFO joined client_name=\"inj-1\\n2099-\"\n").ok();
        assert_eq!(scan_log(&log)["ok"], json!(true));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn honest_updates_are_told_apart_by_their_sample_claims() {
        let records = [
            json!({"participants": 20, "samples": 2000}),
            json!({"participants": 10, "samples": 995}),
            json!({"round": 3}),
        ];
        assert_eq!(honest_updates(&records), Some(25));
        assert_eq!(honest_updates(&[]), None);
    }
}
