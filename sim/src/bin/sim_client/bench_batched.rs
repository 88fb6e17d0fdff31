//! `flotilla-sim-client bench-batched`: throughput of C clients' HBP learners stepped together.
//!
//! The batched learner ([`BatchedHbp`]) steps every client with one fixed set of batched
//! tensor ops; for comparison the same clients are also stepped one by one as separate
//! [`HbpModel`]s (fewer steps: that is the slow way). Both learn from seeded synthetic rows
//! prepared before the clock starts, skip warm-up steps, and synchronise the device at the
//! end by reading values back. One JSON line goes to stdout.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use flotilla_learner::compute::{self, BackendKind};
use flotilla_learner::hbp::batched::BatchedHbp;
use flotilla_learner::hbp::{HbpConfig, HbpModel};
use serde::Serialize;

use flotilla_client::learn::BackendChoiceArg;
use flotilla_client::model_args::ModelArgs;

/// Largest number of synthetic values kept in the pool of prepared steps.
const POOL_VALUES: usize = 1 << 22;
/// Most distinct prepared steps; the measured steps cycle through them.
const POOL_STEPS: usize = 16;

/// Options of `flotilla-client bench-batched`.
#[derive(Debug, clap::Args)]
pub struct BenchBatchedArgs {
    /// Number of clients C stepped together.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub clients: u32,
    /// Measured steps of the batched learner (each one steps every client once).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// Rows per client per step (micro-batch size b).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Unmeasured steps first (kernel compilation, autotuning, allocator warm-up).
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Measured steps of each of the C separate learners, after one unmeasured step each
    /// (default: a tenth of --steps, at least 1; 0 skips the comparison).
    #[arg(long, value_name = "N")]
    pub sequential_steps: Option<u32>,
    /// Where the kernels run: `auto` (a hardware GPU if any, else CPU), `gpu` (wgpu on Vulkan) or `cpu` (flex).
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(BackendChoiceArg))]
    pub backend: BackendChoiceArg,
    /// Input features d of the synthetic rows.
    #[arg(long, default_value_t = 10)]
    pub inputs: usize,
    /// Classes of the synthetic rows.
    #[arg(long, default_value_t = 2)]
    pub classes: usize,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What `bench-batched` prints and writes.
#[derive(Debug, Serialize)]
pub struct BenchBatchedReport {
    /// Clients stepped together.
    pub clients: usize,
    /// Rows per client per step.
    pub batch: usize,
    /// Measured batched steps.
    pub steps: u32,
    /// Unmeasured batched steps before them.
    pub warmup_steps: u32,
    /// `clients · batch · steps` per wall-clock second of the measured batched steps.
    pub client_samples_per_s: f64,
    /// Batched steps (of every client) per second.
    pub steps_per_s: f64,
    /// Wall-clock seconds of the measured batched steps, final readback included.
    pub wall_seconds: f64,
    /// Measured steps of each separate learner (0: comparison skipped).
    pub sequential_steps: u32,
    /// `clients · batch · sequential_steps` per second, stepping C separate learners one by one.
    pub sequential_client_samples_per_s: Option<f64>,
    /// `client_samples_per_s / sequential_client_samples_per_s`.
    pub speedup: Option<f64>,
    /// Scalars per client network.
    pub parameters_per_client: usize,
    /// Backend used: `gpu` or `cpu`.
    pub backend: BackendKind,
    /// The device, in words.
    pub device: String,
    /// Client 0's configuration (client `i` is seeded with `seed + i`).
    pub config: HbpConfig,
}

/// Prepared steps: per step, features `[C, b, d]` and labels `[C, b]`, client-major.
struct Pool {
    steps: Vec<(Vec<f32>, Vec<u32>)>,
}

impl Pool {
    /// Seeded uniform features in [-1, 1); the label is the bucket of the first feature.
    fn new(seed: u32, clients: usize, batch: usize, config: &HbpConfig) -> Self {
        let rows = clients * batch;
        let count = (POOL_VALUES / (rows * config.inputs).max(1)).clamp(1, POOL_STEPS);
        let mut rng = SplitMix(u64::from(seed) ^ 0x5eed_f107_1a00_0000);
        let steps = (0..count)
            .map(|_| {
                let features: Vec<f32> = (0..rows * config.inputs).map(|_| rng.unit()).collect();
                let labels = features
                    .chunks(config.inputs)
                    .map(|row| (((row[0] + 1.0) / 2.0 * config.classes as f32) as u32).min(config.classes as u32 - 1))
                    .collect();
                (features, labels)
            })
            .collect();
        Self { steps }
    }

    fn step(&self, step: usize) -> (&[f32], &[u32]) {
        let (features, labels) = &self.steps[step % self.steps.len()];
        (features, labels)
    }
}

/// SplitMix64: a small, seeded, reproducible generator for the synthetic rows.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Runs both measurements, prints the report as one JSON line and writes it to `--report`.
pub fn run(args: BenchBatchedArgs) -> Result<BenchBatchedReport> {
    let config = args.model.config(args.inputs, args.classes);
    config.validate().context("invalid learner configuration")?;
    let device = compute::select(args.backend.0)?;
    tracing::info!(backend = %device.kind, device = %device.description, reason = %device.reason, "compute device chosen");
    let (clients, batch) = (args.clients as usize, args.batch as usize);
    let pool = Pool::new(config.seed, clients, batch, &config);

    let mut batched =
        BatchedHbp::seeded(config.clone(), clients, &device.device).context("building the batched learner")?;
    let wall_seconds = time_batched(&mut batched, &pool, args.warmup, args.steps)?;
    let samples = (clients * batch) as f64 * f64::from(args.steps);
    let client_samples_per_s = samples / wall_seconds;

    let sequential_steps = args.sequential_steps.unwrap_or((args.steps / 10).max(1));
    let sequential_client_samples_per_s = if sequential_steps == 0 {
        None
    } else {
        let seconds = time_sequential(&config, &device.device, &pool, clients, sequential_steps)?;
        Some((clients * batch) as f64 * f64::from(sequential_steps) / seconds)
    };
    let report = BenchBatchedReport {
        clients,
        batch,
        steps: args.steps,
        warmup_steps: args.warmup,
        client_samples_per_s: round2(client_samples_per_s),
        steps_per_s: round2(f64::from(args.steps) / wall_seconds),
        wall_seconds,
        sequential_steps,
        sequential_client_samples_per_s: sequential_client_samples_per_s.map(round2),
        speedup: sequential_client_samples_per_s.map(|s| round2(client_samples_per_s / s)),
        parameters_per_client: flotilla_protocol::model::hbp::layout(&config).len(),
        backend: device.kind,
        device: device.description,
        config,
    };
    let json = serde_json::to_string(&report)?;
    println!("{json}");
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    Ok(report)
}

/// Seconds taken by `steps` batched steps after `warmup` unmeasured ones, final sync included.
fn time_batched(batched: &mut BatchedHbp, pool: &Pool, warmup: u32, steps: u32) -> Result<f64> {
    for step in 0..warmup as usize {
        let (features, labels) = pool.step(step);
        batched.step(batched.batch(features, labels)?);
    }
    batched.sync()?;
    tracing::info!(clients = batched.clients(), warmup, steps, "batched steps start");
    let start = Instant::now();
    for step in 0..steps as usize {
        let (features, labels) = pool.step(warmup as usize + step);
        batched.step(batched.batch(features, labels)?);
    }
    let check = batched.sync()?;
    anyhow::ensure!(check.is_finite(), "the batched learner diverged (checksum {check})");
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds taken to step `clients` separate learners `steps` times each (client by client
/// within a step), after one unmeasured step each; every α is read back at the end.
fn time_sequential(
    config: &HbpConfig,
    device: &burn::tensor::Device,
    pool: &Pool,
    clients: usize,
    steps: u32,
) -> Result<f64> {
    let mut models = (0..clients)
        .map(|i| HbpModel::new(HbpConfig { seed: config.seed.wrapping_add(i as u32), ..config.clone() }, device))
        .collect::<Result<Vec<_>, _>>()
        .context("building the separate learners")?;
    let step_all = |models: &mut [HbpModel], step: usize| {
        let (features, labels) = pool.step(step);
        let rows = labels.len() / clients;
        for (i, model) in models.iter_mut().enumerate() {
            let rows_of = i * rows..(i + 1) * rows;
            let x = &features[rows_of.start * config.inputs..rows_of.end * config.inputs];
            model.learn(model.batch(x, &labels[rows_of]));
        }
    };
    step_all(&mut models, 0);
    for model in &models {
        model.alpha()?;
    }
    tracing::info!(clients, steps, "sequential steps start");
    let start = Instant::now();
    for step in 0..steps as usize {
        step_all(&mut models, 1 + step);
    }
    for model in &models {
        model.alpha()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
