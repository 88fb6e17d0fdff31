//! `flotilla-fleet`: runs a realistic fleet (a coordinator and many clients on loopback) on
//! a partitioned dataset, runs the `alone` and `centralised` baselines on the same streams,
//! and writes a report with plots saying whether federation pays.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use flotilla_sim::baseline::{self, Job, LearnSpec};
use flotilla_sim::dataset::{Dataset, label_counts};
use flotilla_sim::fleet::{self, FleetConfig};
use flotilla_sim::partition::{PartitionConfig, Scheme, partition};
use flotilla_sim::plot::{self, COLOURS};
use flotilla_sim::procs::Interrupt;
use flotilla_sim::report::{self, ClientLine, Report};

/// Simulate a Flotilla fleet on one machine and report whether federation pays.
///
/// Partitions a labelled CSV into client streams and held-back rows, runs the real
/// coordinator and N real client daemons on loopback, then the same streams learnt
/// alone and centralised, and writes report.json, report.md and PNG plots.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Labelled CSV (header, numeric features, integer label last) [default: the bundled data/phishing.csv]
    #[arg(long, value_name = "FILE.csv")]
    data: Option<PathBuf>,
    /// Number of clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How rows are dealt to clients: iid, label-skew (Dirichlet), or drift (file order, labels permuted part-way).
    #[arg(long, value_enum, default_value_t = Scheme::LabelSkew)]
    partition: Scheme,
    /// Dirichlet concentration α of each client's label mix (label-skew); smaller is more skewed.
    #[arg(long, default_value_t = 0.5)]
    dirichlet_alpha: f64,
    /// Fraction of each client's stream after which its labels are permuted (drift).
    #[arg(long, default_value_t = 0.5)]
    drift_at: f64,
    /// Fraction of the rows held back to evaluate the global model.
    #[arg(long, default_value_t = 0.2)]
    eval_fraction: f64,
    /// Seed of the partition, the initial weights, client sampling and churn.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hidden ReLU layers of the model.
    #[arg(long, default_value_t = 4)]
    hidden_layers: usize,
    /// Units per hidden layer.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Rounds to commit (each client's stream is spread over them: enough rounds for the
    /// fleet to learn, each round a few dozen samples per client at most).
    #[arg(long, default_value_t = 40)]
    rounds: usize,
    /// Joined clients needed to start a round and updates to commit it [default: the clients
    /// expected online at once, less those churn takes away]
    #[arg(long)]
    min_clients: Option<usize>,
    /// Fraction of joined clients asked for an update each round, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    sample_fraction: f64,
    /// Pause before each round (e.g. 400ms, 2s).
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    round_interval: Duration,
    /// Time a round waits for updates.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    round_deadline: Duration,
    /// Samples per second each client learns [default: so that a stream lasts about --rounds rounds]
    #[arg(long)]
    rate: Option<f64>,
    /// Fraction of running clients stopped (SIGTERM, by PID) after each round and restarted.
    #[arg(long, default_value_t = 0.0)]
    offline_fraction: f64,
    /// Longest a stopped client stays offline (it also returns at the next commit).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    offline_for: Duration,
    /// This many clients start only after round 2.
    #[arg(long, default_value_t = 0)]
    late_join: usize,
    /// SIGKILL one client after a third of the rounds and restart it on its state dir.
    #[arg(long)]
    kill_restart: bool,
    /// This many clients (the last ones) are slow devices: their streams run --slow-factor
    /// times slower (compare `--coordinator-arg=--mode --coordinator-arg=async` with sync).
    #[arg(long, default_value_t = 0)]
    slow_clients: usize,
    /// How much slower the slow clients are.
    #[arg(long, default_value_t = 10.0)]
    slow_factor: f64,
    /// Fraction of clients that are Byzantine: they corrupt every update with --attack.
    #[arg(long, default_value_t = 0.0)]
    byzantine_fraction: f64,
    /// How Byzantine clients corrupt their updates: sign-flip, scale (×100) or nan.
    #[arg(long, default_value = "sign-flip", value_parser = ["sign-flip", "scale", "nan"])]
    attack: String,
    /// An option handed to the coordinator as it is, e.g. `--coordinator-arg=--strategy
    /// --coordinator-arg=fedadam` (repeatable; see `flotilla-coordinator --help`).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    coordinator_arg: Vec<String>,
    /// Report folder [default: reports/fleet-<UTC timestamp>]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Give up on the fleet after this long (the report still covers the rounds done).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// Baseline passes run at once [default: the number of CPUs]
    #[arg(long)]
    jobs: Option<usize>,
    /// Folder holding flotilla-coordinator, flotilla-client and flotilla-sim-client [default: this binary's folder]
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// No progress bar (one line per round instead).
    #[arg(long)]
    no_progress: bool,
    /// A tree of coordinators, AGGREGATORSxCLIENTS (e.g. 4x25): the root, that many edge
    /// aggregators (`flotilla-coordinator --parent`) and that many clients behind each;
    /// sets --clients. --coordinator-arg options go to the root only.
    #[arg(long, value_name = "AxB")]
    topology: Option<flotilla_sim::topology::Topology>,
    /// SIGKILL the first aggregator after a third of the rounds and restart it --offline-for
    /// later (with --topology); the report's events say when its clients were back.
    #[arg(long, requires = "topology")]
    kill_aggregator: bool,
    /// Every client joins the root, which redirects it to the aggregator serving the fewest
    /// (with --topology; `flotilla-coordinator --redirect-clients` and `--advertise`).
    #[arg(long, requires = "topology")]
    redirect: bool,
    /// Every client learns the same number of rows on each global model (the shortest
    /// stream's rows / --rounds, at least 1: `flotilla-client run --rows-per-round`) and
    /// answers each round once they are learnt. With every client in every round (the default
    /// --min-clients without churn), runs that differ only in timing (flat against a tree, one
    /// machine's load against another's) give the same models.
    #[arg(long)]
    lockstep: bool,
}

/// `400ms`, `5s`, `1.5s`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("`{text}` is not a duration like 400ms or 5s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("unknown unit `{unit}` in `{text}` (ms, s, m)")),
    };
    if !(0.0..1e7).contains(&seconds) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `YYYYMMDD-HHMMSS` in UTC.
/// `reports/fleet-<UTC timestamp>`, with a suffix if a run started in the same second.
fn fresh_report_dir() -> PathBuf {
    let base = PathBuf::from("reports").join(format!("fleet-{}", timestamp()));
    let mut candidate = base.clone();
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
    }
    candidate
}

fn timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

fn bundled_data(bin_dir: &Path) -> PathBuf {
    let beside = bin_dir.join("../../data/phishing.csv");
    if beside.exists() { beside } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/phishing.csv") }
}

fn main() {
    if let Err(error) = run(Args::parse()) {
        eprintln!("flotilla-fleet: {}", flotilla_net::exit::error_chain(&error));
        std::process::exit(1);
    }
}

fn run(mut args: Args) -> anyhow::Result<()> {
    if let Some(topology) = args.topology {
        args.clients = topology.clients();
    }
    let interrupt = Interrupt::install()?;
    let exe = std::env::current_exe().context("finding this binary's path")?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => exe.parent().context("this binary has no folder")?.to_path_buf(),
    };
    let coordinator_bin = bin_dir.join("flotilla-coordinator");
    let client_bin = bin_dir.join("flotilla-client");
    let harness_bin = bin_dir.join("flotilla-sim-client");
    for bin in [&coordinator_bin, &client_bin, &harness_bin] {
        if !bin.exists() {
            bail!(
                "{} is missing; run `cargo build --release --workspace` (scripts/simulate-fleet does)",
                bin.display()
            );
        }
    }
    let data_path = args.data.clone().unwrap_or_else(|| bundled_data(&bin_dir));
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.late_join >= args.clients {
        bail!("--late-join {} leaves no client to start the fleet ({} clients)", args.late_join, args.clients);
    }
    if !(0.0..1.0).contains(&args.offline_fraction) {
        bail!("--offline-fraction must be in [0, 1), got {}", args.offline_fraction);
    }
    if !(args.sample_fraction > 0.0 && args.sample_fraction <= 1.0) {
        bail!("--sample-fraction must be in (0, 1], got {}", args.sample_fraction);
    }
    if args.hidden_layers == 0 || args.width == 0 {
        bail!("--hidden-layers and --width must be at least 1");
    }

    let data = Dataset::read(&data_path)?;
    let config = PartitionConfig {
        scheme: args.partition,
        clients: args.clients,
        eval_fraction: args.eval_fraction,
        dirichlet_alpha: args.dirichlet_alpha,
        drift_at: args.drift_at,
        seed: args.seed,
    };
    let parts = partition(&data, &config)?;
    if parts.eval.is_empty() {
        bail!("no held-back rows: raise --eval-fraction");
    }

    let out = args.out.clone().unwrap_or_else(fresh_report_dir);
    if out.join("fleet").exists() {
        bail!("{} already holds a fleet run; choose another --out", out.display());
    }
    if out.join("report.json").exists() {
        bail!("{} already holds a report; pick another --out", out.display());
    }
    let shards_dir = out.join("shards");
    std::fs::create_dir_all(&shards_dir).with_context(|| format!("creating {}", shards_dir.display()))?;
    let out = out.canonicalize().with_context(|| format!("resolving {}", out.display()))?;
    let shards_dir = out.join("shards");
    let mut shards = Vec::new();
    for (i, stream) in parts.clients.iter().enumerate() {
        let path = shards_dir.join(format!("client{i:02}.csv"));
        baseline::write_stream(&path, &data.header, stream)?;
        shards.push(path);
    }
    let eval = shards_dir.join("eval.csv");
    baseline::write_stream(&eval, &data.header, &parts.eval)?;

    let longest = parts.clients.iter().map(Vec::len).max().unwrap_or(0);
    let rate = match args.rate {
        Some(rate) if rate > 0.0 && rate.is_finite() => rate,
        Some(rate) => bail!("--rate must be positive, got {rate}"),
        None => {
            // A round takes about its interval plus a little: spread each stream over the rounds.
            let round_s = args.round_interval.as_secs_f64() + 0.05;
            ((longest as f64 / (args.rounds as f64 * round_s)).ceil()).max(1.0)
        }
    };
    let shortest = parts.clients.iter().map(Vec::len).min().unwrap_or(0);
    let rows_per_round = args.lockstep.then(|| (shortest / args.rounds.max(1)).max(1) as u64);
    let online = args.clients - args.late_join;
    let away = (online as f64 * args.offline_fraction).ceil() as usize
        + usize::from(args.kill_restart)
        + args.topology.filter(|_| args.kill_aggregator).map_or(0, |t| t.per_aggregator);
    let min_clients = args.min_clients.unwrap_or_else(|| online.saturating_sub(away).max(1));
    if min_clients == 0 || min_clients > args.clients {
        bail!("--min-clients must be in 1..={}, got {min_clients}", args.clients);
    }
    eprintln!(
        "fleet: {} clients on {} ({} rows: {} per stream, {} held back), {:?}, model {}×{}, {} rounds, rate {rate}/s, min clients {min_clients}",
        args.clients,
        data_path.display(),
        data.rows.len(),
        longest,
        parts.eval.len(),
        args.partition,
        args.hidden_layers,
        args.width,
        args.rounds
    );

    let fleet_config = FleetConfig {
        coordinator_bin,
        client_bin: client_bin.clone(),
        harness_bin,
        dir: out.join("fleet"),
        shards: shards.clone(),
        eval: eval.clone(),
        inputs: data.inputs,
        classes: data.classes,
        hidden_layers: args.hidden_layers,
        width: args.width,
        seed: args.seed,
        rounds: args.rounds,
        min_clients,
        sample_fraction: args.sample_fraction,
        round_interval: args.round_interval,
        round_deadline: args.round_deadline,
        rate,
        offline_fraction: args.offline_fraction,
        offline_for: args.offline_for,
        late_join: args.late_join,
        kill_restart: args.kill_restart,
        coordinator_args: args.coordinator_arg.clone(),
        slow_clients: args.slow_clients.min(args.clients),
        slow_factor: args.slow_factor.max(1.0),
        byzantine: (args.byzantine_fraction.clamp(0.0, 1.0) * args.clients as f64).ceil() as usize,
        attack: args.attack.clone(),
        timeout: args.timeout,
        progress: !args.no_progress,
        topology: args.topology,
        kill_aggregator: args.kill_aggregator,
        redirect: args.redirect,
        rows_per_round,
    };
    let outcome = fleet::run(&fleet_config, &interrupt)?;
    if outcome.rounds.is_empty() {
        bail!("no round committed ({}); logs in {}", outcome.stop_reason, out.join("fleet/logs").display());
    }

    // Baselines on exactly the prefixes the federated clients consumed.
    eprintln!("baselines: {} alone passes and one centralised pass…", args.clients);
    let consumed: Vec<usize> = parts
        .clients
        .iter()
        .zip(&outcome.clients)
        .map(|(stream, c)| if c.samples > 0 { (c.samples as usize).min(stream.len()) } else { stream.len() })
        .collect();
    let spec = LearnSpec {
        client_bin,
        hidden_layers: args.hidden_layers,
        width: args.width,
        classes: data.classes,
        seed: args.seed,
        eval_data: eval.clone(),
    };
    let mut jobs: Vec<Job> = shards
        .iter()
        .zip(&consumed)
        .enumerate()
        .map(|(i, (shard, &n))| Job { name: format!("alone-client{i:02}"), data: shard.clone(), limit: Some(n as u64) })
        .collect();
    let prefixes: Vec<_> = parts.clients.iter().zip(&consumed).map(|(s, &n)| s[..n].to_vec()).collect();
    let centralised_path = out.join("baselines").join("centralised.csv");
    std::fs::create_dir_all(out.join("baselines")).context("creating the baselines folder")?;
    baseline::write_stream(&centralised_path, &data.header, &baseline::interleave(&prefixes))?;
    jobs.push(Job { name: "centralised".into(), data: centralised_path, limit: None });
    let parallel = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let results = baseline::run_all(&spec, &jobs, &out.join("baselines"), parallel, &interrupt)?;
    let (alone, centralised) = results.split_at(args.clients);
    let centralised = centralised.first().cloned();
    let centralised_error = centralised.as_ref().and_then(|r| r["prequential_error_pct"].as_f64());
    let centralised_heldback = centralised.as_ref().and_then(|r| r["eval_error_pct"].as_f64());

    let clients: Vec<ClientLine> = outcome
        .clients
        .iter()
        .zip(&parts.clients)
        .zip(alone)
        .map(|((c, stream), alone)| ClientLine {
            name: c.name.clone(),
            stream_rows: stream.len(),
            label_counts: label_counts(stream, data.classes),
            federated_samples: c.samples,
            federated_error_pct: c.prequential_error_pct,
            federated_global_error_pct: c.global_prequential_error_pct,
            alone_samples: alone["samples"].as_u64(),
            alone_error_pct: alone["prequential_error_pct"].as_f64(),
            alone_heldback_error_pct: alone["eval_error_pct"].as_f64(),
            updates_sent: c.updates_sent,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            bytes_sent_per_update: (c.updates_sent > 0).then(|| c.bytes_sent as f64 / c.updates_sent as f64),
            processes: c.processes,
        })
        .collect();
    let mut summary = report::summarise(&outcome, &clients, centralised_error, centralised_heldback);
    if args.partition == Scheme::Drift {
        summary.drift_recovery =
            report::drift_recovery(&parts.clients, &consumed, &outcome.clients, alone, args.drift_at);
    }
    let config_json = serde_json::json!({
        "data": data_path.display().to_string(),
        "rows": data.rows.len(),
        "inputs": data.inputs,
        "classes": data.classes,
        "clients": args.clients,
        "partition": args.partition,
        "dirichlet_alpha": args.dirichlet_alpha,
        "drift_at": args.drift_at,
        "drift_permutation": parts.drift_permutation,
        "eval_fraction": args.eval_fraction,
        "eval_rows": parts.eval.len(),
        "seed": args.seed,
        "hidden_layers": args.hidden_layers,
        "width": args.width,
        "rounds": args.rounds,
        "min_clients": min_clients,
        "sample_fraction": args.sample_fraction,
        "round_interval_s": args.round_interval.as_secs_f64(),
        "round_deadline_s": args.round_deadline.as_secs_f64(),
        "rate": rate,
        "offline_fraction": args.offline_fraction,
        "offline_for_s": args.offline_for.as_secs_f64(),
        "late_join": args.late_join,
        "kill_restart": args.kill_restart,
        "topology": args.topology.map(|t| t.to_string()),
        "kill_aggregator": args.kill_aggregator,
        "redirect": args.redirect,
        "rows_per_round": rows_per_round,
        "port": outcome.port,
    });
    let report = Report {
        config: config_json,
        summary,
        clients,
        rounds: outcome.rounds.clone(),
        round_durations_s: outcome.rounds.iter().filter_map(|r| r["duration_s"].as_f64()).collect(),
        events: outcome.events.clone(),
        centralised,
        fleet: outcome,
    };
    write_plots(&out, &report)?;
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    std::fs::write(out.join("report.json"), json + "\n").context("writing report.json")?;
    std::fs::write(out.join("report.md"), report::markdown(&report)).context("writing report.md")?;
    eprintln!("stopped: {}", report.summary.stop_reason);
    eprintln!("{}", report.summary.verdict);
    println!("{}", out.display());
    Ok(())
}

fn write_plots(out: &Path, report: &Report) -> anyhow::Result<()> {
    let s = &report.summary;
    let per_round = |key: &str| -> Vec<(f64, f64)> {
        report.rounds.iter().enumerate().filter_map(|(i, r)| Some(((i + 1) as f64, r[key].as_f64()?))).collect()
    };
    let mut references = Vec::new();
    // The same measure as the federated line: final models on the same held-back rows.
    if let Some(a) = s.alone_mean_heldback_error_pct {
        references.push(("alone: mean of the clients' final models".to_string(), a, COLOURS[1]));
    }
    if let Some(c) = s.centralised_heldback_error_pct {
        references.push(("centralised: final model".to_string(), c, COLOURS[2]));
    }
    plot::global_error(&out.join("global_error.png"), &per_round("global_error_pct"), &references)?;
    plot::round_duration(&out.join("round_duration.png"), &per_round("duration_s"))?;
    let names: Vec<String> = report.clients.iter().map(|c| c.name.trim_start_matches("client").to_string()).collect();
    plot::grouped_bars(
        &out.join("client_error.png"),
        "Per-client prequential error: federated (personalised, global model) vs alone",
        "error (%)",
        &names,
        &[
            (
                "federated (personalised)".to_string(),
                report.clients.iter().map(|c| c.federated_error_pct).collect(),
                COLOURS[0],
            ),
            (
                "federated (global model)".to_string(),
                report.clients.iter().map(|c| c.federated_global_error_pct).collect(),
                plot::GLOBAL_MODEL_COLOUR,
            ),
            ("alone".to_string(), report.clients.iter().map(|c| c.alone_error_pct).collect(), COLOURS[1]),
        ],
    )?;
    // Both measures, all three lines: per-client prequential error (federated = personalised) and
    // error on the held-back rows (federated = final global model; alone = mean of the clients'
    // final models; centralised = its final model).
    plot::grouped_bars(
        &out.join("comparison.png"),
        "Mean per-client prequential error and error on the held-back rows",
        "error (%)",
        &["per-client prequential".to_string(), "held-back rows".to_string()],
        &[
            (
                "federated (personalised / global model)".to_string(),
                vec![s.federated_mean_client_error_pct, s.final_global_error_pct],
                COLOURS[0],
            ),
            ("alone".to_string(), vec![s.alone_mean_client_error_pct, s.alone_mean_heldback_error_pct], COLOURS[1]),
            ("centralised".to_string(), vec![s.centralised_error_pct, s.centralised_heldback_error_pct], COLOURS[2]),
        ],
    )
}
