//! Running the federated fleet: one coordinator and N client daemons on loopback, with
//! optional churn, late joiners and a killed-and-restarted client.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::procs::{Interrupt, Proc};
use crate::topology::Topology;

/// What the fleet run needs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `flotilla-coordinator`.
    pub coordinator_bin: PathBuf,
    /// `flotilla-client`.
    pub client_bin: PathBuf,
    /// `flotilla-sim-client`: runs the Byzantine clients (`run --attack`).
    pub harness_bin: PathBuf,
    /// Folder for the coordinator's data dir, the clients' state and the logs.
    pub dir: PathBuf,
    /// One stream per client.
    pub shards: Vec<PathBuf>,
    /// The coordinator's held-back rows.
    pub eval: PathBuf,
    /// Features per row.
    pub inputs: usize,
    /// Classes.
    pub classes: u32,
    /// Hidden layers of the model.
    pub hidden_layers: usize,
    /// Units per hidden layer.
    pub width: usize,
    /// Seed of the initial weights, client sampling and churn choices.
    pub seed: u64,
    /// Rounds to commit.
    pub rounds: usize,
    /// Joined clients needed to start a round and updates to commit it.
    pub min_clients: usize,
    /// Fraction of joined clients asked each round.
    pub sample_fraction: f64,
    /// Pause before each round.
    pub round_interval: Duration,
    /// How long a round waits for updates.
    pub round_deadline: Duration,
    /// Samples per second each client learns.
    pub rate: f64,
    /// Fraction of running clients stopped (SIGTERM) at each commit.
    pub offline_fraction: f64,
    /// How long a stopped client stays away at most (it also comes back at the next commit).
    pub offline_for: Duration,
    /// Clients started only after round 2.
    pub late_join: usize,
    /// SIGKILL one client mid-run and restart it on its state dir.
    pub kill_restart: bool,
    /// Clients (the last ones) whose streams run `slow_factor` times slower.
    pub slow_clients: usize,
    /// How much slower the slow clients' streams are.
    pub slow_factor: f64,
    /// Clients (the first ones) that corrupt their updates with `attack`.
    pub byzantine: usize,
    /// `sign-flip`, `scale` or `nan` (see `flotilla-sim-client run --attack`).
    pub attack: String,
    /// Extra options handed to the coordinator as they are (e.g. `--strategy fedadam`).
    pub coordinator_args: Vec<String>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Show a progress bar.
    pub progress: bool,
    /// A tree of coordinators: the root, edge aggregators and the clients behind them.
    pub topology: Option<Topology>,
    /// SIGKILL the first aggregator mid-run and restart it `offline_for` later (with
    /// `topology`).
    pub kill_aggregator: bool,
    /// Every client joins the root, which redirects it to an aggregator (with `topology`;
    /// the aggregators share the root's development PKI).
    pub redirect: bool,
    /// Rows each client learns on each global model (`--lockstep`); none: as the stream comes.
    pub rows_per_round: Option<u64>,
}

/// Something the simulator did to the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the coordinator started.
    pub t_s: f64,
    /// Rounds committed when it happened.
    pub after_round: usize,
    /// What.
    pub what: String,
}

/// One client's results over all its processes.
#[derive(Debug, Clone, Serialize)]
pub struct ClientOutcome {
    /// Its name.
    pub name: String,
    /// Processes started for it.
    pub processes: u32,
    /// Exits the simulator did not ask for.
    pub unexpected_exits: u32,
    /// Samples learnt (over restarts, from the last report).
    pub samples: u64,
    /// Prequential error of its personalised predictions (its own model mixed with the global
    /// one) over those samples, percent (from the last report).
    pub prequential_error_pct: Option<f64>,
    /// Prequential error of the plain global model's own predictions on the same samples,
    /// percent (from the last report; `None` for reports that lack it).
    pub global_prequential_error_pct: Option<f64>,
    /// Updates sent, summed over its processes.
    pub updates_sent: u64,
    /// Bytes sent, summed over its processes (a SIGKILLed process's are lost).
    pub bytes_sent: u64,
    /// Bytes received, summed likewise.
    pub bytes_received: u64,
    /// QUIC connections made, summed likewise.
    pub connections: u64,
    /// The exit reports, one per process that wrote one.
    pub reports: Vec<serde_json::Value>,
}

/// What the fleet run produced.
#[derive(Debug, Clone, Serialize)]
pub struct FleetOutcome {
    /// The coordinator's `rounds.jsonl` records.
    pub rounds: Vec<serde_json::Value>,
    /// Per-client results.
    pub clients: Vec<ClientOutcome>,
    /// Churn and faults injected.
    pub events: Vec<Event>,
    /// Wall time of the federated run, seconds.
    pub wall_s: f64,
    /// Why it stopped.
    pub stop_reason: String,
    /// The coordinator's UDP port.
    pub port: u16,
}

struct Slot {
    name: String,
    shard: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
    processes: u32,
    unexpected_exits: u32,
    late: bool,
    back_at: Option<(Instant, usize)>,
    /// `--attack KIND` for a Byzantine client.
    attack: Option<String>,
    /// Samples per second of this client's stream.
    rate: f64,
    /// The coordinator it joins: the root's UDP port and CA, or its aggregator's.
    port: u16,
    ca: PathBuf,
}

impl Slot {
    fn report_path(&self, process: u32) -> PathBuf {
        self.dir.join(format!("report-{process}.json"))
    }
}

/// What a client's log says when it reaches a coordinator (followed by its address) and when
/// that coordinator welcomes it.
const CONNECTED: &str = "connected to the coordinator server=";
const JOINED: &str = " joined client_id=";

/// Where one client's log stood when its aggregator was killed.
struct Watch {
    slot: usize,
    /// Its process then (a later process's log is read whole).
    process: u32,
    /// The log's length then, bytes.
    offset: usize,
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> anyhow::Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding an ephemeral UDP port")?;
    Ok(socket.local_addr().context("reading the bound port")?.port())
}

/// The coordinator's `rounds.jsonl` records so far.
pub fn read_rounds(data_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data_dir.join("rounds.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The last `joined` count the coordinator logged (JSON log lines).
fn joined_from_log(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        value["fields"]["joined"].as_u64()
    })
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

struct Fleet<'a> {
    config: &'a FleetConfig,
    logs: PathBuf,
    slots: Vec<Slot>,
    started: Instant,
    events: Vec<Event>,
    bar: ProgressBar,
}

impl Fleet<'_> {
    fn event(&mut self, after_round: usize, what: String) {
        if !self.bar.is_hidden() {
            self.bar.println(format!("  · {what}"));
        }
        self.events.push(Event { t_s: self.started.elapsed().as_secs_f64(), after_round, what });
    }

    fn start_client(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        slot.processes += 1;
        let n = slot.processes;
        let mut args: Vec<String> = vec![
            "run".into(),
            "--coordinator".into(),
            format!("127.0.0.1:{}", slot.port),
            "--ca".into(),
            slot.ca.display().to_string(),
            "--data".into(),
            slot.shard.display().to_string(),
            "--name".into(),
            slot.name.clone(),
            "--rate".into(),
            format!("{}", slot.rate),
            "--backend".into(),
            "cpu".into(),
            "--state-dir".into(),
            slot.dir.join("state").display().to_string(),
            "--report".into(),
            slot.report_path(n).display().to_string(),
        ];
        if let Some(rows) = self.config.rows_per_round {
            args.extend(["--rows-per-round".into(), rows.to_string()]);
        }
        // Honest clients run the production daemon; Byzantine ones the harness client.
        let binary = match &slot.attack {
            Some(attack) => {
                args.extend(["--attack".into(), attack.clone()]);
                &self.config.harness_bin
            }
            None => &self.config.client_bin,
        };
        let out = self.logs.join(format!("{}.{n}.out", slot.name));
        let log = self.logs.join(format!("{}.{n}.log", slot.name));
        slot.proc = Some(Proc::start(&format!("{}#{n}", slot.name), binary, &args, &out, &log)?);
        slot.back_at = None;
        Ok(())
    }

    /// Clients whose current process has run out of rows.
    fn stream_ended(&self, i: usize) -> bool {
        let slot = &self.slots[i];
        slot.proc
            .as_ref()
            .is_some_and(|p| std::fs::read_to_string(&p.log).is_ok_and(|text| text.contains("the stream ended")))
    }

    /// Where the logs of the running clients last connected to `port` stand now.
    fn watch_clients_of(&self, port: u16) -> Vec<Watch> {
        let address = format!("127.0.0.1:{port}");
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let text = std::fs::read_to_string(&s.proc.as_ref()?.log).ok()?;
                let last = text.lines().rev().find_map(|line| line.split_once(CONNECTED).map(|(_, to)| to.trim()));
                (last == Some(address.as_str())).then_some(Watch { slot, process: s.processes, offset: text.len() })
            })
            .collect()
    }

    /// Whether the watched client joined a coordinator other than `root` since the watch
    /// began (in a later process's log, at any point).
    fn rejoined_away(&self, watch: &Watch, root: &str) -> bool {
        let slot = &self.slots[watch.slot];
        let Some(proc) = &slot.proc else { return false };
        let Ok(text) = std::fs::read_to_string(&proc.log) else { return false };
        let offset = if slot.processes == watch.process { watch.offset } else { 0 };
        let mut server = None;
        for line in text.get(offset..).unwrap_or_default().lines() {
            if let Some((_, to)) = line.split_once(CONNECTED) {
                server = Some(to.trim());
            } else if line.contains(JOINED) && server.is_some_and(|to| to != root) {
                return true;
            }
        }
        false
    }

    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.proc.is_some()).count()
    }

    fn tails(&self, coordinator: &Proc) -> String {
        let mut out = format!("--- coordinator\n{}", coordinator.log_tail(15));
        for slot in &self.slots {
            if let Some(p) = &slot.proc {
                out.push_str(&format!("\n--- {}\n{}", p.name, p.log_tail(8)));
            }
        }
        out
    }
}

/// Runs the fleet to `config.rounds` committed rounds (or until its streams run dry or the
/// timeout passes), then stops every process it started and collects their reports.
pub fn run(config: &FleetConfig, interrupt: &Interrupt) -> anyhow::Result<FleetOutcome> {
    let port = free_udp_port()?;
    let root_address = format!("127.0.0.1:{port}");
    let data_dir = config.dir.join("coordinator");
    let logs = config.dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut coordinator_args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &data_dir.display().to_string(),
        "--inputs",
        &config.inputs.to_string(),
        "--classes",
        &config.classes.to_string(),
        "--hidden-layers",
        &config.hidden_layers.to_string(),
        "--width",
        &config.width.to_string(),
        "--seed",
        &config.seed.to_string(),
        "--min-clients",
        &config.min_clients.to_string(),
        "--sample-fraction",
        &config.sample_fraction.to_string(),
        "--round-interval",
        &millis(config.round_interval),
        "--round-deadline",
        &millis(config.round_deadline),
        "--rounds",
        &config.rounds.to_string(),
        "--eval-data",
        &config.eval.display().to_string(),
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(config.coordinator_args.iter().cloned())
    .collect();
    let tokens = match config.topology {
        Some(topology) => Some(topology.write_tokens(&config.dir.join("tokens"))?),
        None => None,
    };
    if let (Some(topology), Some((root_tokens, _))) = (config.topology, &tokens) {
        // At the root the quorum counts aggregators: as many full cohorts as the fleet's
        // quorum of clients needs (an edge's own quorum is its share of it).
        if let Some(i) = coordinator_args.iter().position(|arg| arg == "--min-clients") {
            let cohorts = config.min_clients.div_ceil(topology.per_aggregator).clamp(1, topology.aggregators);
            coordinator_args[i + 1] = cohorts.to_string();
        }
        coordinator_args.extend(["--aggregator-tokens-file".to_string(), root_tokens.display().to_string()]);
        if config.redirect {
            coordinator_args.push("--redirect-clients".to_string());
        }
    }
    let coordinator_log = logs.join("coordinator.log");
    let mut coordinator = Proc::start(
        "coordinator",
        &config.coordinator_bin,
        &coordinator_args,
        &logs.join("coordinator.out"),
        &coordinator_log,
    )?;
    let started = Instant::now();
    while !data_dir.join("pki/ca.pem").exists() {
        interrupt.check()?;
        if coordinator.exited().is_some() {
            bail!("the coordinator stopped at start:\n{}", coordinator.log_tail(20));
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the coordinator made no dev CA in 30 s:\n{}", coordinator.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut aggregators = match (config.topology, &tokens) {
        (Some(topology), Some((_, edge_tokens))) => {
            start_aggregators(config, topology, port, &data_dir, edge_tokens, &logs, &mut coordinator, interrupt)?
        }
        _ => Vec::new(),
    };
    let root_ca = data_dir.join("pki/ca.pem");
    let bar = if config.progress {
        ProgressBar::with_draw_target(Some(config.rounds as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rounds  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let slots = config
        .shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let name = format!("client{i:02}");
            // Each client joins its aggregator; redirected ones start at the root, whose CA the
            // aggregators share.
            let (port, ca) = match config.topology.filter(|_| !config.redirect) {
                Some(topology) => {
                    let aggregator = &aggregators[topology.aggregator_of(i)];
                    (aggregator.port, aggregator.ca.clone())
                }
                None => (port, root_ca.clone()),
            };
            let dir = config.dir.join("clients").join(&name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(Slot {
                name,
                shard: shard.clone(),
                dir,
                proc: None,
                processes: 0,
                unexpected_exits: 0,
                late: i >= config.shards.len().saturating_sub(config.late_join),
                back_at: None,
                attack: (i < config.byzantine).then(|| config.attack.clone()),
                rate: if i >= config.shards.len().saturating_sub(config.slow_clients) {
                    config.rate / config.slow_factor
                } else {
                    config.rate
                },
                port,
                ca,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut fleet = Fleet { config, logs, slots, started, events: Vec::new(), bar };
    for i in 0..fleet.slots.len() {
        if !fleet.slots[i].late {
            fleet.start_client(i)?;
        }
    }
    let late_after = 2.min(config.rounds.saturating_sub(1)).max(1);
    let kill_at = (config.rounds / 3).max(1);
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed_f1ee);
    let mut late_started = config.late_join == 0;
    let mut killed = !config.kill_restart;
    let mut aggregator_killed = !config.kill_aggregator || aggregators.is_empty();
    // The killed aggregator's restart: when it is due, then when it was restarted.
    let mut aggregator_back: Option<Instant> = None;
    let mut aggregator_restarted: Option<Instant> = None;
    // When the aggregator was killed and the clients it held then (with where their logs
    // stood), until every one of them is back with an aggregator.
    let mut aggregator_kill: Option<(Instant, Vec<Watch>)> = None;
    let mut seen = 0usize;
    let mut last_commit = Instant::now();
    let stall = config.round_deadline + config.round_interval + Duration::from_secs(3);

    let stop_reason = loop {
        if interrupt.is_set() {
            fleet.bar.abandon_with_message("interrupted");
            interrupt.check()?;
        }
        let mut records = read_rounds(&data_dir);
        let now = Instant::now();
        // Clients that died on their own.
        for i in 0..fleet.slots.len() {
            let slot = &mut fleet.slots[i];
            if let Some(p) = slot.proc.as_mut()
                && p.exited().is_some()
            {
                slot.proc = None;
                slot.unexpected_exits += 1;
                let name = slot.name.clone();
                fleet.event(records.len(), format!("{name} exited on its own"));
            }
        }
        // Clients due back.
        for i in 0..fleet.slots.len() {
            if let Some((at, round)) = fleet.slots[i].back_at
                && (now >= at || records.len() > round)
            {
                fleet.start_client(i)?;
                let name = fleet.slots[i].name.clone();
                fleet.event(records.len(), format!("{name} restarted"));
            }
        }
        if records.len() > seen {
            seen = records.len();
            last_commit = now;
            let last = &records[seen - 1];
            let error = last["global_error_pct"].as_f64();
            fleet.bar.set_position(seen as u64);
            let line = format!(
                "round {:>3}: {} participants, {} samples, global error {}, {:.2} s",
                last["round"],
                last["participants"],
                last["samples"],
                error.map_or("-".into(), |e| format!("{e:.2} %")),
                last["duration_s"].as_f64().unwrap_or(0.0)
            );
            if fleet.bar.is_hidden() {
                eprintln!("{line}");
            } else {
                fleet.bar.println(line);
            }
            if seen >= config.rounds {
                break format!("{seen} rounds committed");
            }
            if !late_started && seen >= late_after {
                late_started = true;
                for i in 0..fleet.slots.len() {
                    if fleet.slots[i].late {
                        fleet.start_client(i)?;
                        let name = fleet.slots[i].name.clone();
                        fleet.event(seen, format!("{name} joins late"));
                    }
                }
            }
            if !killed && seen >= kill_at {
                killed = true;
                if let Some(i) = fleet.slots.iter().position(|s| s.proc.is_some()) {
                    if let Some(p) = fleet.slots[i].proc.as_mut() {
                        p.kill();
                    }
                    fleet.slots[i].proc = None;
                    fleet.slots[i].back_at = Some((now + config.offline_for, seen));
                    let name = fleet.slots[i].name.clone();
                    fleet.event(seen, format!("{name} SIGKILLed (restarts on its state dir)"));
                }
            }
            if config.offline_fraction > 0.0 {
                let mut running: Vec<usize> =
                    (0..fleet.slots.len()).filter(|&i| fleet.slots[i].proc.is_some()).collect();
                running.shuffle(&mut rng);
                let count = ((running.len() as f64) * config.offline_fraction).ceil() as usize;
                let chosen: Vec<usize> = running.into_iter().take(count).collect();
                for &i in &chosen {
                    if let Some(p) = &fleet.slots[i].proc {
                        p.signal_term();
                    }
                }
                for &i in &chosen {
                    if let Some(mut p) = fleet.slots[i].proc.take() {
                        p.wait_until(Instant::now() + Duration::from_secs(10));
                    }
                    fleet.slots[i].back_at = Some((now + config.offline_for, seen));
                }
                let names: Vec<String> = chosen.iter().map(|&i| fleet.slots[i].name.clone()).collect();
                if !names.is_empty() {
                    fleet.event(seen, format!("offline for a round: {}", names.join(", ")));
                }
            }
        }
        if aggregator_back.is_some_and(|at| now >= at) {
            aggregator_back = None;
            aggregators[0].start(config, port, &data_dir)?;
            aggregator_restarted = Some(Instant::now());
            fleet.event(records.len(), "aggregator0 restarted".into());
        }
        if let Some((killed_at, watches)) = &aggregator_kill {
            // The killed aggregator's clients joined to an aggregator since (the restarted one,
            // or another by redirect), counted from their own logs: a coordinator's join lines
            // are rate-limited per address, and on loopback every client shares one.
            let (killed_at, victims) = (*killed_at, watches.len());
            let back = watches.iter().filter(|w| fleet.rejoined_away(w, root_address.as_str())).count();
            if back >= victims {
                aggregator_kill = None;
                let since_kill = killed_at.elapsed().as_secs_f64();
                let how = match aggregator_restarted {
                    Some(at) => format!("{:.1} s after aggregator0's restart", at.elapsed().as_secs_f64()),
                    None => "redirected by the root before aggregator0's restart".to_string(),
                };
                fleet.event(
                    records.len(),
                    format!("all {victims} clients back with an aggregator {since_kill:.1} s after the kill ({how})"),
                );
            } else if killed_at.elapsed() > Duration::from_secs(60) {
                aggregator_kill = None;
                fleet.event(records.len(), format!("only {back} of {victims} clients back within 60 s of the kill"));
            }
        }
        if !aggregator_killed && seen >= kill_at {
            aggregator_killed = true;
            if let Some(mut p) = aggregators[0].proc.take() {
                p.kill();
            }
            aggregator_back = Some(now + config.offline_for);
            let victims = fleet.watch_clients_of(aggregators[0].port);
            aggregator_kill = Some((Instant::now(), victims));
            fleet.event(seen, "aggregator0 SIGKILLed (restarts on its data dir)".into());
        }
        for aggregator in &mut aggregators {
            if aggregator.proc.as_mut().and_then(Proc::exited) == Some(false) {
                bail!("aggregator{} failed:\n{}", aggregator.index, aggregator.tail());
            }
        }
        let joined = joined_from_log(&coordinator_log).unwrap_or(0);
        let error = records.last().and_then(|r| r["global_error_pct"].as_f64());
        fleet.bar.set_message(format!(
            "clients {joined}/{} connected · global error {}",
            fleet.slots.len(),
            error.map_or("-".into(), |e| format!("{e:.2} %"))
        ));
        fleet.bar.tick();
        if let Some(success) = coordinator.exited() {
            records = read_rounds(&data_dir);
            if records.len() >= config.rounds {
                break format!("{} rounds committed", records.len());
            }
            bail!(
                "the coordinator exited ({}) after {} rounds:\n{}",
                if success { "0" } else { "failure" },
                records.len(),
                fleet.tails(&coordinator)
            );
        }
        let pending = fleet.slots.iter().any(|s| s.back_at.is_some()) || !late_started;
        let dry = fleet.running() > 0
            && (0..fleet.slots.len()).all(|i| fleet.slots[i].proc.is_none() || fleet.stream_ended(i));
        if dry && !pending && last_commit.elapsed() > stall {
            break format!("the clients' streams ran dry after {} rounds", records.len());
        }
        if started.elapsed() > config.timeout {
            break format!("timed out after {} rounds", records.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    fleet.bar.finish_with_message(stop_reason.clone());

    // Stop the clients together (each writes its report), then the coordinator.
    for slot in &fleet.slots {
        if let Some(p) = &slot.proc {
            p.signal_term();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for slot in &mut fleet.slots {
        if let Some(mut p) = slot.proc.take()
            && !p.wait_until(deadline)
        {
            slot.unexpected_exits += 1;
        }
    }
    for aggregator in &mut aggregators {
        if let Some(mut p) = aggregator.proc.take() {
            p.terminate(Duration::from_secs(10));
        }
    }
    if coordinator.exited().is_none() {
        coordinator.terminate(Duration::from_secs(10));
    }
    let wall_s = started.elapsed().as_secs_f64();
    let records = read_rounds(&data_dir);

    let clients = fleet
        .slots
        .iter()
        .map(|slot| {
            let reports: Vec<serde_json::Value> = (1..=slot.processes)
                .filter_map(|n| std::fs::read_to_string(slot.report_path(n)).ok())
                .filter_map(|text| serde_json::from_str(&text).ok())
                .collect();
            let sum = |key: &str| reports.iter().filter_map(|r| r[key].as_u64()).sum::<u64>();
            let last = reports.last();
            ClientOutcome {
                name: slot.name.clone(),
                processes: slot.processes,
                unexpected_exits: slot.unexpected_exits,
                samples: last.and_then(|r| r["samples"].as_u64()).unwrap_or(0),
                prequential_error_pct: last.and_then(|r| r["prequential_error_pct"].as_f64()),
                global_prequential_error_pct: last.and_then(|r| r["global_prequential_error_pct"].as_f64()),
                updates_sent: sum("updates_sent"),
                bytes_sent: sum("bytes_sent"),
                bytes_received: sum("bytes_received"),
                connections: sum("connections"),
                reports,
            }
        })
        .collect();
    Ok(FleetOutcome { rounds: records, clients, events: fleet.events, wall_s, stop_reason, port })
}

/// An edge aggregator of the simulated tree.
struct Aggregator {
    index: usize,
    /// Its current process (none while it is killed).
    proc: Option<Proc>,
    processes: u32,
    port: u16,
    dir: PathBuf,
    ca: PathBuf,
    token: PathBuf,
    logs: PathBuf,
    /// Its current process's log.
    log: PathBuf,
    per_aggregator: usize,
}

impl Aggregator {
    fn args(&self, config: &FleetConfig, root_port: u16, root_data: &Path) -> Vec<String> {
        let aggregators = config.topology.map_or(1, |t| t.aggregators);
        let quorum = config.min_clients.div_ceil(aggregators).clamp(1, self.per_aggregator);
        [
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--data-dir",
            &self.dir.display().to_string(),
            "--parent",
            &format!("127.0.0.1:{root_port}"),
            "--parent-ca",
            &root_data.join("pki/ca.pem").display().to_string(),
            "--parent-token-file",
            &self.token.display().to_string(),
            "--min-clients",
            &quorum.to_string(),
            "--sample-fraction",
            &config.sample_fraction.to_string(),
            "--round-deadline",
            &millis(config.round_deadline),
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            config
                .redirect
                .then(|| ["--advertise".to_string(), format!("127.0.0.1:{}", self.port)])
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    /// Starts (or restarts) its process, logging to a new file.
    fn start(&mut self, config: &FleetConfig, root_port: u16, root_data: &Path) -> anyhow::Result<()> {
        self.processes += 1;
        let name = format!("aggregator{}", self.index);
        let n = self.processes;
        self.log = self.logs.join(format!("{name}.{n}.log"));
        let out = self.logs.join(format!("{name}.{n}.out"));
        let args = self.args(config, root_port, root_data);
        self.proc = Some(Proc::start(&format!("{name}#{n}"), &config.coordinator_bin, &args, &out, &self.log)?);
        Ok(())
    }

    fn tail(&self) -> String {
        self.proc.as_ref().map_or_else(String::new, |p| p.log_tail(20))
    }
}

/// Starts the tree's aggregators and waits until each serves (its CA exists: it has the
/// root's model and bound its port).
#[allow(clippy::too_many_arguments)]
fn start_aggregators(
    config: &FleetConfig,
    topology: Topology,
    root_port: u16,
    root_data: &Path,
    tokens: &[PathBuf],
    logs: &Path,
    root: &mut Proc,
    interrupt: &Interrupt,
) -> anyhow::Result<Vec<Aggregator>> {
    let mut aggregators = Vec::new();
    for (index, token) in tokens.iter().enumerate().take(topology.aggregators) {
        let dir = config.dir.join(format!("aggregator{index}"));
        if config.redirect {
            // One CA for the tree: a redirected client checks the aggregator's certificate
            // with the root's CA (in production: certificates from the fleet's own CA).
            copy_dir(&root_data.join("pki"), &dir.join("pki"))?;
        }
        let mut aggregator = Aggregator {
            index,
            proc: None,
            processes: 0,
            port: free_udp_port()?,
            ca: dir.join("pki/ca.pem"),
            dir,
            token: token.clone(),
            logs: logs.to_path_buf(),
            log: PathBuf::new(),
            per_aggregator: topology.per_aggregator,
        };
        aggregator.start(config, root_port, root_data)?;
        aggregators.push(aggregator);
    }
    let started = Instant::now();
    for aggregator in &mut aggregators {
        while !aggregator.ca.exists() {
            interrupt.check()?;
            let stopped = aggregator.proc.as_mut().is_none_or(|p| p.exited().is_some());
            if stopped || root.exited().is_some() {
                bail!("aggregator{} stopped at start:\n{}", aggregator.index, aggregator.tail());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("aggregator{} did not serve within 60 s:\n{}", aggregator.index, aggregator.tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(aggregators)
}

/// Copies the files of `from` into `to` (created), keeping their permissions.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
            let target = to.join(entry.file_name());
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}
