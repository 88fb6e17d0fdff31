//! `flotilla-client learn`: one prequential pass of HBP over a CSV stream, with a JSON report.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cpu_time::ProcessTime;
use flotilla_learner::compute::{self, BackendChoice, BackendKind};
use flotilla_learner::data::Dataset;
use flotilla_learner::evaluate::EvalSet;
use flotilla_learner::hbp::{FusedHbp, HbpConfig, HbpModel};
use flotilla_learner::prequential;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::model_args::ModelArgs;

/// Options of `flotilla-client learn`.
#[derive(Debug, clap::Args)]
pub struct LearnArgs {
    /// CSV stream: header row, numeric features, integer label 0..C-1 in the last column (`-` for stdin).
    #[arg(long, value_name = "FILE.csv")]
    pub data: PathBuf,
    /// Where the kernels run: `auto` (a hardware GPU if any, else CPU), `gpu` (wgpu on Vulkan) or `cpu` (flex).
    #[arg(long, default_value = "auto", value_parser = clap::value_parser!(BackendChoiceArg))]
    pub backend: BackendChoiceArg,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Number of classes (default: the largest label in the file plus one).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Micro-batch size: rows predicted together, then learnt from together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch: u32,
    /// Held-out labelled CSV: after the pass, report the final model's error on it
    /// (`eval_error_pct`; rows standardised with their own statistics, as the coordinator does).
    #[arg(long, value_name = "FILE.csv")]
    pub eval_data: Option<PathBuf>,
    /// Learn from the first N rows only (default: all).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The learner's implementation: `auto` (the fused CPU learner at --batch 1 on the CPU,
    /// burn's otherwise), `fused` (plain Rust over the flat weights, CPU, --batch 1) or `burn`
    /// (tensor ops on the chosen backend).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,
    /// Record the cumulative error every this many samples.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub mark_every: u64,
    /// The model's hyper-parameters.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Which implementation of the learner runs the pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The fastest correct one: fused on the CPU at micro-batch 1, burn otherwise.
    Auto,
    /// The fused CPU learner (micro-batch 1).
    Fused,
    /// burn's tensor ops on the chosen backend.
    Burn,
}

/// `auto`, `gpu` or `cpu`, parsed for clap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendChoiceArg(pub BackendChoice);

impl std::str::FromStr for BackendChoiceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// What `learn` prints and writes.
#[derive(Debug, Serialize)]
pub struct LearnReport {
    /// Input file.
    pub data: String,
    /// Rows learnt from.
    pub samples: u64,
    /// Feature columns.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// Cumulative test-then-train error over the pass, in percent.
    pub prequential_error_pct: f64,
    /// Cumulative error after every `mark_every` samples.
    pub error_pct_at: BTreeMap<u64, f64>,
    /// Samples per wall-clock second of the pass.
    pub samples_per_sec: f64,
    /// Samples per CPU second of this process during the pass (all threads).
    pub samples_per_cpu_sec: f64,
    /// Wall-clock seconds of the pass (model built, data read beforehand).
    pub wall_seconds: f64,
    /// Backend used: `gpu` or `cpu`.
    pub backend: BackendKind,
    /// Implementation used: `fused` or `burn`.
    pub engine: Engine,
    /// The device, in words.
    pub device: String,
    /// Error of the final model on `--eval-data`, in percent.
    pub eval_error_pct: Option<f64>,
    /// Final hedge weights, input head first when present.
    pub alpha: Vec<f32>,
    /// Index of the head with the largest α.
    pub alpha_argmax: usize,
    /// Micro-batch size.
    pub batch: u32,
    /// The learner's configuration.
    pub config: HbpConfig,
}

/// Runs the pass, prints the report as JSON on stdout and writes it to `--report`.
pub fn run(args: LearnArgs) -> Result<LearnReport> {
    let data = read_dataset(&args)?;
    let config = args.model.config(data.features, data.classes);
    let device = compute::select(args.backend.0)?;
    tracing::info!(backend = %device.kind, device = %device.description, reason = %device.reason, "compute device chosen");
    let fused = match args.engine {
        Engine::Burn => false,
        Engine::Auto => args.batch == 1 && device.kind == BackendKind::Cpu,
        Engine::Fused if args.batch != 1 => bail!("--engine fused learns one row at a time: drop --batch or give 1"),
        Engine::Fused if device.kind != BackendKind::Cpu => {
            bail!("--engine fused runs on the CPU: give --backend cpu (or auto without a hardware GPU)")
        }
        Engine::Fused => true,
    };
    let engine = if fused { Engine::Fused } else { Engine::Burn };
    tracing::info!(
        engine = if fused { "fused" } else { "burn" },
        rows = data.len(),
        features = data.features,
        classes = data.classes,
        parameters = flotilla_protocol::model::hbp::layout(&config).len(),
        "prequential pass starts"
    );

    let bar = ProgressBar::new(data.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} samples ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (wall, cpu) = (Instant::now(), ProcessTime::try_now().ok());
    let (score, model) = if fused {
        let mut model = FusedHbp::new(config.clone()).context("building the HBP model")?;
        let score = prequential::run_fused(&mut model, &data, args.mark_every, |done| bar.set_position(done));
        let params = model.to_parameters().context("reading the model")?;
        (score, HbpModel::from_parameters(config.clone(), &params, &device.device).context("the learnt model")?)
    } else {
        let mut model = HbpModel::new(config.clone(), &device.device).context("building the HBP model")?;
        let score = prequential::run_pass(&mut model, &data, args.batch as usize, args.mark_every, |done| {
            bar.set_position(done)
        })?;
        (score, model)
    };
    let wall_seconds = wall.elapsed().as_secs_f64();
    let cpu_seconds = cpu.and_then(|start| start.try_elapsed().ok()).map_or(f64::NAN, |d| d.as_secs_f64());
    bar.finish_and_clear();

    let eval_error_pct = match &args.eval_data {
        Some(path) => Some(round2(eval_error(path, &model)?)),
        None => None,
    };
    let alpha = model.alpha()?;
    let alpha_argmax = alpha.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    let report = LearnReport {
        data: args.data.display().to_string(),
        samples: score.samples(),
        features: data.features,
        classes: data.classes,
        prequential_error_pct: round2(score.error_pct()),
        error_pct_at: score.marks().iter().map(|(k, v)| (*k, round2(*v))).collect(),
        samples_per_sec: (score.samples() as f64 / wall_seconds).round(),
        samples_per_cpu_sec: (score.samples() as f64 / cpu_seconds).round(),
        wall_seconds,
        backend: device.kind,
        engine,
        device: device.description,
        eval_error_pct,
        alpha,
        alpha_argmax,
        batch: args.batch,
        config,
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing the report to {}", path.display()))?;
        tracing::info!(path = %path.display(), "report written");
    }
    Ok(report)
}

fn read_dataset(args: &LearnArgs) -> Result<Dataset> {
    let source: Box<dyn Read> = if args.data.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(&args.data).with_context(|| format!("opening {}", args.data.display()))?)
    };
    let mut data = Dataset::from_csv(BufReader::new(source), args.classes)
        .with_context(|| format!("reading {}", args.data.display()))?;
    if let Some(limit) = args.limit {
        data.truncate(limit);
    }
    Ok(data)
}

fn eval_error(path: &std::path::Path, model: &HbpModel) -> Result<f64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let data = Dataset::from_csv(BufReader::new(file), Some(model.config().classes))
        .with_context(|| format!("reading {}", path.display()))?;
    let set = EvalSet::new(&data, model.config()).with_context(|| format!("eval data {}", path.display()))?;
    Ok(set.model_error_pct(model)?)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
