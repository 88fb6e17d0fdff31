//! `flotilla-coordinator export` and `distill`: a checkpoint's served model as ONNX, fused,
//! pruned or quantised, or distilled into a small student, each reported against the full
//! model (size, ONNX nodes, single-row latency, error on held-back rows).
//!
//! The transformations and the ONNX writer are `flotilla-export`'s; this module reads the
//! files, times the passes and prints the report (a table, or one JSON line with `--json`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flotilla_export::{distill, fuse, onnx, prune, quantize, rows};
use flotilla_learner::data::Dataset;
use flotilla_learner::hbp::HbpConfig;
use flotilla_learner::infer::Standardization;
use flotilla_learner::network::{Network, argmax};
use flotilla_learner::standardize::Z_CLIP;
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::model::{FeatureMoments, ModelSpec};
use serde::Serialize;

use crate::persist::{CHECKPOINT_FILE, load_checkpoint, write_atomically};

/// Where the model comes from and what it is measured on.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// The coordinator checkpoint to read: a file, a data directory holding checkpoint.bin, or
    /// the newest in a --checkpoint-url store (`file:///…`, `s3://…`).
    #[arg(long, value_name = "FILE|DIR|URL")]
    pub checkpoint: PathBuf,
    /// Labelled held-back rows (CSV, label last): the error before and after is reported on
    /// them, and their statistics standardise raw features when the checkpoint holds none.
    #[arg(long, value_name = "FILE")]
    pub eval_data: Option<PathBuf>,
    /// Print the report as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the new model's predictions of the --eval-data rows as JSON lines (`row`,
    /// `class`, `probabilities`), to check another runtime against.
    #[arg(long, value_name = "FILE", requires = "eval_data")]
    pub predictions: Option<PathBuf>,
}

/// `export`: the served model as ONNX.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: Source,
    /// Where to write the ONNX model.
    #[arg(long, value_name = "OUT.onnx")]
    onnx: PathBuf,
    /// Fold the standardiser into the first layer and the input head (its ±10 clip kept as a
    /// clamp on raw features) and mix the heads with one Softmax and one MatMul.
    #[arg(long)]
    fuse: bool,
    /// Remove this fraction of every weight matrix, smallest magnitudes first (0.8 removes
    /// 80 %); pruned matrices are stored sparse.
    #[arg(long, value_name = "FRACTION")]
    prune: Option<f64>,
    /// Remove this fraction of every hidden layer's units (those whose weights in and out
    /// matter least): physically narrower layers.
    #[arg(long, value_name = "FRACTION")]
    prune_units: Option<f64>,
    /// Remove the heads whose α is below ALPHA and the hidden layers only they need.
    #[arg(long, value_name = "ALPHA")]
    drop_depth_below: Option<f32>,
    /// Store weights as int8, one scale per output unit (symmetric post-training quantisation).
    #[arg(long)]
    int8: bool,
    /// With --prune alone: also write the pruned model as a coordinator checkpoint, to
    /// fine-tune it federated (start a coordinator on it with --initial-params --keep-pruned).
    #[arg(long, value_name = "FILE", requires = "prune", conflicts_with_all = ["fuse", "int8", "drop_depth_below", "prune_units"])]
    checkpoint_out: Option<PathBuf>,
}

/// `distill`: a small student trained on the global model's soft labels.
#[derive(Debug, clap::Args)]
pub struct DistillArgs {
    #[command(flatten)]
    source: Source,
    /// The student's hidden layers and width, as LxW (e.g. 2x32).
    #[arg(long, value_name = "LxW", default_value = "2x32")]
    student: String,
    /// Rows to distil on (CSV with a header; a last label column, if any, is ignored).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Where to write the student as ONNX.
    #[arg(long, value_name = "OUT.onnx")]
    out: PathBuf,
    /// Also write the student as a coordinator checkpoint (a fleet of small devices starts
    /// from it with --initial-params).
    #[arg(long, value_name = "FILE")]
    checkpoint_out: Option<PathBuf>,
    /// Softening temperature T of the teacher's probabilities (q ∝ p^(1/T)).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Passes over the rows.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// The student's SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    learning_rate: f32,
    /// Seed of the student's initialisation and of the visiting order.
    #[arg(long, default_value_t = 0)]
    seed: u32,
}

/// One model's figures.
#[derive(Debug, Serialize)]
struct Figures {
    name: String,
    parameters: usize,
    nonzero_parameters: usize,
    onnx_bytes: usize,
    onnx_nodes: usize,
    single_row_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_pct: Option<f64>,
    hidden_layers: usize,
    /// Each head's α, in the order of the heads.
    alphas: Vec<f32>,
}

/// Held-back rows: features (raw) and labels.
struct Eval {
    rows: Vec<f32>,
    labels: Vec<u32>,
    moments: FeatureMoments,
}

/// The source checkpoint's network and what was read with it.
struct Loaded {
    checkpoint: Checkpoint,
    config: HbpConfig,
    moments: FeatureMoments,
    network: Network,
    eval: Option<Eval>,
}

/// The newest checkpoint at `source` (a file, a data directory or a store URL) and its name.
fn read_checkpoint(source: &Path) -> anyhow::Result<(Checkpoint, PathBuf)> {
    if let Some(url) = source.to_str().filter(|s| s.contains("://")) {
        let store = crate::store::CheckpointStore::open(url)?;
        let latest = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => tokio::task::block_in_place(|| runtime.block_on(store.latest())),
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime to read the store")?
                .block_on(store.latest()),
        };
        let Some(checkpoint) = latest? else {
            bail!("no checkpoint in {url}");
        };
        return Ok((checkpoint, source.to_path_buf()));
    }
    let path = if source.is_dir() { source.join(CHECKPOINT_FILE) } else { source.to_path_buf() };
    let Some(checkpoint) = load_checkpoint(&path)? else {
        bail!("no checkpoint at {}", path.display());
    };
    Ok((checkpoint, path))
}

fn load(source: &Source) -> anyhow::Result<Loaded> {
    let (checkpoint, path) = read_checkpoint(&source.checkpoint)?;
    let ModelSpec::Hbp(config) = &checkpoint.spec else {
        bail!("{} holds a {}, which has no prediction graph to export", path.display(), checkpoint.spec);
    };
    let config = config.clone();
    let eval = source.eval_data.as_deref().map(|p| read_eval(p, &config)).transpose()?;
    let moments = match (&checkpoint.feature_moments, &eval) {
        (Some(m), _) if m.count > 0 => m.clone(),
        (_, Some(eval)) => eval.moments.clone(),
        _ => bail!(
            "{} holds no feature statistics (a fleet under differential privacy sends none): give --eval-data \
             rows to standardise raw features with",
            path.display()
        ),
    };
    let standardization = Standardization::from_moments(&moments).context("the feature statistics cover no rows")?;
    let network = Network::from_hbp(&config, checkpoint.served_params(), standardization.input_stage())
        .with_context(|| format!("the parameters in {} do not fit their spec", path.display()))?;
    Ok(Loaded { checkpoint, config, moments, network, eval })
}

fn read_eval(path: &Path, config: &HbpConfig) -> anyhow::Result<Eval> {
    let file = std::fs::File::open(path).with_context(|| format!("opening --eval-data {}", path.display()))?;
    let data = Dataset::from_csv(std::io::BufReader::new(file), Some(config.classes))
        .with_context(|| format!("reading --eval-data {}", path.display()))?;
    if data.features != config.inputs {
        bail!("--eval-data {} has {} features, the model {}", path.display(), data.features, config.inputs);
    }
    let mut rows = Vec::with_capacity(data.len() * config.inputs);
    let mut moments = FeatureMoments::new(config.inputs);
    for row in 0..data.len() {
        rows.extend_from_slice(data.row(row));
        moments.add_row(data.row(row));
    }
    Ok(Eval { rows, labels: data.labels, moments })
}

/// Error (percent) of `network` on the held-back rows.
fn error_pct(network: &Network, eval: &Eval) -> f64 {
    let classes = network.classify(&eval.rows);
    let wrong = classes.iter().zip(&eval.labels).filter(|(c, l)| **c != **l as usize).count();
    100.0 * wrong as f64 / eval.labels.len().max(1) as f64
}

/// Median time of one forward pass of one row (rows cycled from `rows`, or zeros).
fn single_row_latency(network: &Network, rows: Option<&[f32]>) -> Duration {
    let d = network.inputs.max(1);
    let zeros = vec![0.0; d];
    let rows = rows.filter(|r| r.len() >= d).unwrap_or(&zeros);
    let count = rows.len() / d;
    let mut times: Vec<Duration> = (0..401)
        .map(|i| {
            let row = &rows[(i % count) * d..(i % count + 1) * d];
            let start = Instant::now();
            std::hint::black_box(network.forward(std::hint::black_box(row)));
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn figures(name: &str, network: &Network, encoded: &[u8], eval: Option<&Eval>) -> Figures {
    Figures {
        name: name.into(),
        parameters: network.parameters(),
        nonzero_parameters: network.nonzero_parameters(),
        onnx_bytes: encoded.len(),
        onnx_nodes: onnx::node_count(encoded).unwrap_or(0),
        single_row_us: single_row_latency(network, eval.map(|e| e.rows.as_slice())).as_secs_f64() * 1e6,
        error_pct: eval.map(|e| error_pct(network, e)),
        hidden_layers: network.layers.len(),
        alphas: network.heads.iter().map(|h| h.alpha).collect(),
    }
}

/// Writes `network`'s predictions of the held-back rows to `path` (JSON lines).
fn write_predictions(path: &Path, network: &Network, eval: Option<&Eval>) -> anyhow::Result<()> {
    let Some(eval) = eval else {
        bail!("--predictions needs --eval-data rows to predict");
    };
    let c = network.classes.max(1);
    let mut out = String::new();
    for (row, p) in network.forward(&eval.rows).chunks_exact(c).enumerate() {
        let line = serde_json::json!({ "row": row, "class": argmax(p), "probabilities": p });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    write_atomically(path, out.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[derive(Debug, Serialize)]
struct Report {
    command: &'static str,
    source: String,
    output: String,
    model_version: u64,
    models: Vec<Figures>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

impl Report {
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self).context("encoding the report")?);
            return Ok(());
        }
        println!("{} of model version {} ({}) -> {}", self.command, self.model_version, self.source, self.output);
        println!(
            "{:<10} {:>12} {:>12} {:>12} {:>6} {:>12} {:>9}",
            "model", "parameters", "non-zero", "onnx bytes", "nodes", "1-row µs", "error %"
        );
        for m in &self.models {
            let error = m.error_pct.map_or_else(|| "-".to_string(), |e| format!("{e:.2}"));
            println!(
                "{:<10} {:>12} {:>12} {:>12} {:>6} {:>12.1} {:>9}",
                m.name, m.parameters, m.nonzero_parameters, m.onnx_bytes, m.onnx_nodes, m.single_row_us, error
            );
        }
        for note in &self.notes {
            println!("note: {note}");
        }
        Ok(())
    }
}

fn metadata(loaded: &Loaded, source: &Path, applied: &[String]) -> onnx::Metadata {
    onnx::Metadata {
        model_version: loaded.checkpoint.model_version,
        properties: vec![
            ("flotilla.source".into(), source.display().to_string()),
            ("flotilla.round".into(), loaded.checkpoint.round.to_string()),
            ("flotilla.transformations".into(), applied.join(",")),
            ("flotilla.feature_rows".into(), loaded.moments.count.to_string()),
        ],
    }
}

/// Runs `export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let loaded = load(&args.source)?;
    let eval = loaded.eval.as_ref();
    let mut network = loaded.network.clone();
    let mut applied = Vec::new();
    let mut notes = Vec::new();
    if let Some(alpha) = args.drop_depth_below {
        let before = (network.heads.len(), network.layers.len());
        network = prune::drop_depth_below(&network, alpha).context("--drop-depth-below")?;
        applied.push(format!("drop-depth-below={alpha}"));
        notes.push(format!(
            "depth pruning kept {} of {} heads and {} of {} hidden layers",
            network.heads.len(),
            before.0,
            network.layers.len(),
            before.1
        ));
    }
    if let Some(fraction) = args.prune_units {
        let (narrower, removed) = prune::units(&network, fraction).context("--prune-units")?;
        network = narrower;
        applied.push(format!("prune-units={fraction}"));
        notes.push(format!("unit pruning removed {removed} hidden units"));
    }
    if let Some(fraction) = args.prune {
        prune::magnitude(&mut network, fraction).context("--prune")?;
        applied.push(format!("prune={fraction}"));
    }
    let mix = if args.fuse {
        if let Some(eval) = eval {
            let binding = fuse::clip_binding_rows(&network, &eval.rows);
            notes.push(format!(
                "the ±{Z_CLIP} clip binds on {binding} of {} held-back rows; the fused model keeps it as a clamp on raw \
                 features",
                eval.labels.len()
            ));
        }
        network = fuse::fuse(&network);
        applied.push("fuse".into());
        onnx::Mix::Fused
    } else {
        onnx::Mix::PerHead
    };
    if args.int8 {
        quantize::int8(&mut network);
        applied.push("int8".into());
    }
    let source = &args.source.checkpoint;
    if let (Some(path), Some(fraction)) = (&args.checkpoint_out, args.prune) {
        let params =
            prune::hbp_params(&loaded.config, loaded.checkpoint.served_params(), fraction).context("--prune")?;
        // A new training phase (round and version from 0, so that round limits count its
        // rounds), keeping what the fleet measured and spent: feature statistics, privacy.
        let checkpoint = Checkpoint {
            feature_moments: Some(loaded.moments.clone()),
            accountant: loaded.checkpoint.accountant.clone(),
            adaptive_clip: loaded.checkpoint.adaptive_clip.clone(),
            ..Checkpoint::initial(loaded.checkpoint.spec.clone(), params)
        };
        let bytes = checkpoint.encode().context("encoding the pruned checkpoint")?;
        write_atomically(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        notes.push(format!(
            "pruned checkpoint: {} (fine-tune it with --initial-params {} --keep-pruned)",
            path.display(),
            path.display()
        ));
    }
    let full_encoded = onnx::encode(&loaded.network, onnx::Mix::PerHead, &metadata(&loaded, source, &[]));
    let encoded = onnx::encode(&network, mix, &metadata(&loaded, source, &applied));
    write_atomically(&args.onnx, &encoded).with_context(|| format!("writing {}", args.onnx.display()))?;
    if let Some(path) = &args.source.predictions {
        write_predictions(path, &network, eval)?;
    }
    if let Some(eval) = eval {
        let before = loaded.network.classify(&eval.rows);
        let after = network.classify(&eval.rows);
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        notes.push(format!("{changed} of {} held-back predictions changed", eval.labels.len()));
    }
    let name = if applied.is_empty() { "exported".to_string() } else { applied.join("+") };
    let report = Report {
        command: "export",
        source: source.display().to_string(),
        output: args.onnx.display().to_string(),
        model_version: loaded.checkpoint.model_version,
        models: vec![figures("full", &loaded.network, &full_encoded, eval), figures(&name, &network, &encoded, eval)],
        notes,
    };
    report.print(args.source.json)
}

/// Parses `LxW` (hidden layers × width).
fn parse_shape(text: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = text.split_once(['x', 'X']).and_then(|(l, w)| Some((l.trim().parse().ok()?, w.trim().parse().ok()?)));
    match parsed {
        Some((l, w)) if l >= 1 && w >= 1 => Ok((l, w)),
        _ => bail!("--student {text:?}: expected LxW with L hidden layers and W units, both at least 1 (e.g. 2x32)"),
    }
}

/// Runs `distill`.
pub fn distill(args: &DistillArgs) -> anyhow::Result<()> {
    let (layers, width) = parse_shape(&args.student)?;
    let loaded = load(&args.source)?;
    let file = std::fs::File::open(&args.data).with_context(|| format!("opening --data {}", args.data.display()))?;
    let rows = rows::read_features(std::io::BufReader::new(file), loaded.config.inputs)
        .with_context(|| format!("reading --data {}", args.data.display()))?;
    let student = HbpConfig {
        hidden_layers: layers,
        width,
        learning_rate: args.learning_rate,
        seed: args.seed,
        ..loaded.config.clone()
    };
    student.validate().context("the student's shape and learning rate")?;
    let config = distill::DistillConfig {
        student: student.clone(),
        temperature: args.temperature,
        epochs: args.epochs,
        seed: u64::from(args.seed),
    };
    let n = rows.len() / loaded.config.inputs.max(1);
    tracing::info!(rows = n, student = %args.student, epochs = args.epochs, "distilling");
    let params = distill::distill(&loaded.network, &rows, &config, |epoch, epochs| {
        tracing::info!(epoch, epochs, "distillation pass done");
    })
    .context("distillation")?;
    let network = Network::from_hbp(&student, &params, loaded.network.input.clone())
        .context("the student's parameters do not fit its shape")?;
    let mut applied = vec![format!("distilled={layers}x{width}")];
    applied.push(format!("temperature={}", args.temperature));
    let source = &args.source.checkpoint;
    let full_encoded = onnx::encode(&loaded.network, onnx::Mix::PerHead, &metadata(&loaded, source, &[]));
    let encoded = onnx::encode(&network, onnx::Mix::PerHead, &metadata(&loaded, source, &applied));
    write_atomically(&args.out, &encoded).with_context(|| format!("writing {}", args.out.display()))?;
    if let Some(path) = &args.source.predictions {
        write_predictions(path, &network, loaded.eval.as_ref())?;
    }
    let mut notes = Vec::new();
    if let Some(path) = &args.checkpoint_out {
        let mut checkpoint = Checkpoint::initial(ModelSpec::Hbp(student.clone()), params);
        checkpoint.feature_moments = Some(loaded.moments.clone());
        let bytes = checkpoint.encode().context("encoding the student's checkpoint")?;
        write_atomically(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        notes.push(format!("student checkpoint: {} (start a fleet from it with --initial-params)", path.display()));
    }
    let agreement = {
        let teacher = loaded.network.classify(&rows);
        let learnt = network.classify(&rows);
        100.0 * teacher.iter().zip(&learnt).filter(|(a, b)| a == b).count() as f64 / teacher.len().max(1) as f64
    };
    notes.push(format!("the student agrees with the teacher on {agreement:.2} % of the {n} rows it learnt from"));
    let eval = loaded.eval.as_ref();
    let report = Report {
        command: "distill",
        source: source.display().to_string(),
        output: args.out.display().to_string(),
        model_version: loaded.checkpoint.model_version,
        models: vec![
            figures("teacher", &loaded.network, &full_encoded, eval),
            figures(&format!("student {layers}x{width}"), &network, &encoded, eval),
        ],
        notes,
    };
    report.print(args.source.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_shapes_parse() {
        assert_eq!(parse_shape("2x32").unwrap(), (2, 32));
        assert_eq!(parse_shape("3X8").unwrap(), (3, 8));
        for bad in ["", "2", "0x4", "2x0", "ax3", "2x3x4"] {
            assert!(parse_shape(bad).is_err(), "{bad}");
        }
    }
}
