//! The coordinator's held-out rows and the model they evaluate; the evaluation itself is
//! [`flotilla_learner::evaluate`].

use std::path::Path;

use anyhow::{Context, bail};
use flotilla_learner::compute::ComputeDevice;
use flotilla_learner::data::Dataset;
use flotilla_learner::hbp::HbpConfig;
use flotilla_protocol::model::{FeatureMoments, ModelSpec};
use flotilla_protocol::params::ParameterVector;

pub use flotilla_learner::evaluate::EvalSet;

/// Held-out rows, the HBP spec they are evaluated with and the CPU device to do it on.
pub struct Evaluator {
    set: EvalSet,
    spec: HbpConfig,
    device: ComputeDevice,
    moments: FeatureMoments,
}

impl Evaluator {
    /// Reads a labelled CSV whose shape must match `spec` (an HBP model: a bare vector has
    /// no prediction to evaluate).
    pub fn load(path: &Path, spec: &ModelSpec, device: ComputeDevice) -> anyhow::Result<Self> {
        let Some(spec) = spec.hbp() else {
            bail!("--eval-data needs an HBP model to predict with; this coordinator trains a {spec}");
        };
        let file = std::fs::File::open(path).with_context(|| format!("opening eval data {}", path.display()))?;
        let data = Dataset::from_csv(std::io::BufReader::new(file), Some(spec.classes))
            .with_context(|| format!("reading eval data {}", path.display()))?;
        let set = EvalSet::new(&data, spec).with_context(|| format!("eval data {}", path.display()))?;
        let mut moments = FeatureMoments::new(spec.inputs);
        (0..data.len()).for_each(|row| moments.add_row(data.row(row)));
        Ok(Self { set, spec: spec.clone(), device, moments })
    }

    /// The raw feature statistics of the held-out rows (the served model's standardiser when
    /// the fleet sends none).
    pub fn moments(&self) -> &FeatureMoments {
        &self.moments
    }

    /// The error rate (percent) of `params` on the held-out rows.
    pub fn error_pct(&self, params: &ParameterVector) -> anyhow::Result<f64> {
        Ok(self.set.error_pct(&self.spec, params, &self.device.device)?)
    }
}
