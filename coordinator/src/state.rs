//! Where the coordinator's model starts: its checkpoint, an initial file, or fresh weights.

use std::path::Path;

use anyhow::{Context, bail};
use flotilla_learner::compute::ComputeDevice;
use flotilla_learner::hbp::HbpModel;
use flotilla_protocol::checkpoint::{CHECKPOINT_MAGIC, Checkpoint};
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::params::ParameterVector;
use flotilla_protocol::wire::framing::decode_message;

use crate::config::Config;

/// Where the starting state came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The data directory's checkpoint.
    Resumed,
    /// The `--initial-params` file.
    InitialParams,
    /// Fresh weights from the spec's seed.
    Fresh,
    /// The parent's model (an edge aggregator, `--parent`).
    Parent,
}

/// The state to start from: `stored` (the newest checkpoint, from `source`) when there is one.
pub(crate) fn initial_state(
    config: &Config,
    stored: Option<Checkpoint>,
    source: &str,
    device: &ComputeDevice,
) -> anyhow::Result<(Checkpoint, Origin)> {
    if let Some(checkpoint) = stored {
        if let Some(path) = &config.initial_params {
            tracing::warn!(ignored = %path.display(), "resuming from the checkpoint; --initial-params ignored");
        }
        check(&checkpoint, config.spec.as_ref(), source)?;
        return Ok((checkpoint, Origin::Resumed));
    }
    if let Some(path) = &config.initial_params {
        let checkpoint = initial_params(path, config.spec.as_ref())?;
        check(&checkpoint, config.spec.as_ref(), &path.display().to_string())?;
        return Ok((checkpoint, Origin::InitialParams));
    }
    let Some(spec) = config.spec.clone() else {
        bail!(
            "no model to train: give --inputs and --classes (or --vector-len, or --initial-params), or a data dir \
             with a checkpoint"
        );
    };
    spec.validate().context("model flags")?;
    let params = match &spec {
        ModelSpec::Hbp(hbp) => HbpModel::new(hbp.clone(), &device.device)
            .context("building the initial model")?
            .to_parameters()
            .context("exporting the initial model")?,
        ModelSpec::Vector { len } => {
            let zeros = vec![0.0; usize::try_from(*len).context("--vector-len does not fit this machine")?];
            ParameterVector::new(&spec.layout(), zeros).context("building the initial vector")?
        }
    };
    Ok((Checkpoint::initial(spec, params), Origin::Fresh))
}

/// Reads `--initial-params`: a checkpoint, or a bincode `ParameterVector` for `spec`.
fn initial_params(path: &Path, spec: Option<&ModelSpec>) -> anyhow::Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading --initial-params {}", path.display()))?;
    if bytes.starts_with(&CHECKPOINT_MAGIC) {
        return Checkpoint::decode(&bytes).with_context(|| format!("checkpoint {} is unusable", path.display()));
    }
    let Some(spec) = spec else {
        bail!(
            "{} holds a bare parameter vector: give --inputs and --classes (or --vector-len) to describe it",
            path.display()
        );
    };
    let params: ParameterVector = decode_message(&bytes)
        .with_context(|| format!("{} is neither a checkpoint nor a bincode ParameterVector", path.display()))?;
    Ok(Checkpoint::initial(spec.clone(), params))
}

/// Checks the state's parameters against its spec, and its spec against the flags' one.
fn check(checkpoint: &Checkpoint, flags: Option<&ModelSpec>, source: &str) -> anyhow::Result<()> {
    checkpoint.spec.validate().with_context(|| format!("model spec in {source}"))?;
    checkpoint
        .params
        .check(&checkpoint.spec.layout())
        .with_context(|| format!("parameters in {source} do not fit their spec"))?;
    if let Some(flags) = flags
        && flags != &checkpoint.spec
    {
        bail!(
            "the model flags ({flags:?}) differ from the spec in {source} ({:?}); drop the flags or move the file away",
            checkpoint.spec
        );
    }
    Ok(())
}
