//! A client's side of federated online learning: the local learner, its bookkeeping against
//! the global model, and its durable state.
//!
//! The client never stops learning. It remembers the global model it last adopted (the
//! *base*). When the coordinator asks for an update it sends `local − base` and the samples
//! and prequential errors counted since; it snapshots what it sent. When a new global model
//! arrives it **rebases**: it keeps the progress the coordinator has not seen yet,
//! `local ← global + (local − snapshot)` (or `− base` if it sent nothing this round), so the
//! samples learnt while the round was being aggregated are not thrown away. α rides along as a
//! parameter (averaged by FedAvg like the weights) and is re-floored and renormalised after
//! a rebase. The standardisation statistics stay local: they describe this device's stream
//! and are never sent.
//!
//! Personalisation ([`crate::personal`]): beside the shared model the client keeps a purely
//! local model, never rebased and never sent, and predicts with a Hedge mix of the local
//! model, the shared model, the shared model adapted to the local label prior and the shared
//! model with a locally learnt class bias (see [`crate::personal::EXPERTS`]). The
//! prediction it scores (and reports) is the mix's; it also counts the shared model's own
//! predictions (`global_total`). What it sends stays a delta of the shared model, whose
//! steps can be calibrated to the local label counts (FedLC).

use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::Sample;
use crate::hbp::{Batch, HbpConfig, HbpModel, ModelError};
use crate::personal::{EXPERTS, LocalBias, Mixer, PersonalConfig, adapt_to_prior, label_prior};
use crate::prequential::read_labels;
use crate::standardize::OnlineStandardizer;
use flotilla_protocol::checkpoint::{CheckpointError, open, seal};
use flotilla_protocol::model::hbp::{layout, project_alpha};
use flotilla_protocol::model::{FeatureMoments, Prediction};
use flotilla_protocol::params::{ParameterError, ParameterVector, first_non_finite};
use flotilla_protocol::wire::{Contribution, LocalMetrics};

/// Magic bytes of a client state file.
pub const CLIENT_STATE_MAGIC: [u8; 8] = *b"FLOTCLNT";
/// Format version of a client state file.
pub const CLIENT_STATE_FORMAT_VERSION: u16 = 2;
/// Predictions are read back from the device once per this many samples.
const READBACK_EVERY: usize = 64;
/// The cumulative counters are marked every this many samples ([`LocalLearner::marks`]).
pub const MARK_EVERY: u64 = 25;

/// Why the local learner could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The model refused parameters or could not be read.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A parameter vector does not fit.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// A state file could not be decoded.
    #[error("client state file: {0}")]
    State(#[from] CheckpointError),
    /// A sample has another number of features than the model.
    #[error("line {line}: {found} features, the model expects {expected}")]
    FeatureCount {
        /// 1-based line of the sample.
        line: u64,
        /// Features the model expects.
        expected: usize,
        /// Features in the sample.
        found: usize,
    },
    /// A sample's label is not below the model's class count.
    #[error("line {line}: label {label} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// 1-based line of the sample.
        line: u64,
        /// The label.
        label: u32,
        /// Classes of the model.
        classes: usize,
    },
}

/// The global model a client rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Base {
    /// Its version at the coordinator.
    pub version: u64,
    /// Its parameters.
    pub params: ParameterVector,
}

/// What was sent for one model version: parameters at that moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snapshot {
    for_version: u64,
    params: ParameterVector,
}

/// Counts of samples learnt and wrong predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Samples learnt from.
    pub samples: u64,
    /// Predictions (made before learning) that were wrong.
    pub errors: u64,
}

impl Counts {
    fn add(&mut self, wrong: bool) {
        self.samples += 1;
        self.errors += u64::from(wrong);
    }

    /// Error in percent, 0 before any sample.
    pub fn error_pct(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { 100.0 * self.errors as f64 / self.samples as f64 }
    }
}

/// Everything a restarted client needs to go on where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientState {
    /// Model shape.
    pub spec: HbpConfig,
    /// Current local parameters.
    pub params: ParameterVector,
    /// The global model last adopted.
    pub base: Option<Base>,
    snapshot: Option<Snapshot>,
    /// Standardisation statistics of the local stream.
    pub standardizer: OnlineStandardizer,
    /// Since the last contribution.
    pub unreported: Counts,
    /// Since the daemon first started.
    pub total: Counts,
    /// Rows of the source consumed (a restarted daemon skips that many).
    pub rows_consumed: u64,
    /// How predictions are personalised.
    pub personal: PersonalConfig,
    /// The purely local model's parameters (personalisation on).
    pub local: Option<ParameterVector>,
    /// The Hedge weights over [`EXPERTS`].
    pub mix: Vec<f32>,
    /// The [`LocalBias`] expert's per-class bias.
    pub bias: Vec<f32>,
    /// Labels seen so far, per class.
    pub class_counts: Vec<u64>,
    /// The shared model's own prequential counters, since the daemon first started.
    pub global_total: Counts,
    /// `total` every [`MARK_EVERY`] samples.
    pub marks: Vec<Counts>,
}

impl ClientState {
    /// Encodes the state in the checksummed envelope of [`flotilla_protocol::checkpoint`].
    pub fn encode(&self) -> Result<Vec<u8>, LocalError> {
        Ok(seal(CLIENT_STATE_MAGIC, CLIENT_STATE_FORMAT_VERSION, self)?)
    }

    /// Decodes a state file; truncation and corruption are errors, never a partial state.
    pub fn decode(bytes: &[u8]) -> Result<Self, LocalError> {
        Ok(open(CLIENT_STATE_MAGIC, CLIENT_STATE_FORMAT_VERSION, bytes)?)
    }
}

/// What personalisation keeps on the device beside the shared model.
struct Personal {
    model: HbpModel,
    bias: LocalBias,
    mixer: Mixer,
}

/// The local learner of a client daemon (sans-IO: samples and messages are passed in).
pub struct LocalLearner {
    model: HbpModel,
    personal: PersonalConfig,
    /// The purely local model, the local bias and the mixer, when personalisation is on.
    local: Option<Personal>,
    class_counts: Vec<u64>,
    global_total: Counts,
    marks: Vec<Counts>,
    pending_global: Vec<Tensor<1, Int>>,
    base: Option<Base>,
    snapshot: Option<Snapshot>,
    standardizer: OnlineStandardizer,
    unreported: Counts,
    /// Raw feature statistics of the samples since the last contribution (not kept across a
    /// restart: a few rows' statistics are lost, never counted twice).
    unreported_moments: FeatureMoments,
    total: Counts,
    rows_consumed: u64,
    pending: Vec<Tensor<1, Int>>,
    pending_labels: Vec<u32>,
    z: Vec<f32>,
    /// Whether each row's prediction is kept for [`LocalLearner::take_predictions`].
    emitting: bool,
    /// Predictions not taken yet: stream row, global model version, class probabilities.
    emitted: Vec<(u64, Option<u64>, Tensor<2>)>,
    /// Fine-tuning a pruned model: weights zero in the global model stay zero in what this
    /// learner adopts and sends (the coordinator's rules say so; not kept across restarts,
    /// the rules come again with every session).
    keep_pruned: bool,
}

/// One row's prediction, made before the row was learnt from (`flotilla-client run
/// --predictions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowPrediction {
    /// The row's number in the stream (1 for the first row ever learnt, across restarts).
    pub row: u64,
    /// The predicted class.
    pub class: usize,
    /// The probability of every class (personalised where personalisation is on).
    pub probabilities: Vec<f32>,
    /// Version of the global model the device held (none before the first one arrived).
    pub model_version: Option<u64>,
}

impl LocalLearner {
    /// A fresh learner of `spec` on `device` (weights as [`HbpModel::new`] makes them),
    /// personalised as [`PersonalConfig::default`] says.
    pub fn new(spec: HbpConfig, device: &Device) -> Result<Self, LocalError> {
        let model = HbpModel::new(spec, device)?;
        let mut learner = Self::with_model(model, None, None, Counts::default(), Counts::default(), 0);
        learner.set_personal(PersonalConfig::default())?;
        Ok(learner)
    }

    /// A learner resumed from a saved state (its personalisation included).
    pub fn from_state(state: ClientState, device: &Device) -> Result<Self, LocalError> {
        let model = HbpModel::from_parameters(state.spec.clone(), &state.params, device)?;
        let mut learner = Self::with_model(model, state.base, state.snapshot, state.unreported, state.total, 0);
        learner.standardizer = state.standardizer;
        learner.rows_consumed = state.rows_consumed;
        learner.global_total = state.global_total;
        learner.marks = state.marks;
        if state.class_counts.len() == state.spec.classes {
            learner.class_counts = state.class_counts;
        }
        learner.personal = state.personal;
        if let (true, Some(local)) = (state.personal.enabled, state.local) {
            let classes = state.spec.classes;
            let model = HbpModel::from_parameters(state.spec, &local, device)?;
            let mixer = if state.mix.len() == EXPERTS.len() {
                Mixer::from_weights(&state.mix, &state.personal, device)
            } else {
                Mixer::new(EXPERTS.len(), &state.personal, device)
            };
            let bias = if state.bias.len() == classes {
                LocalBias::from_values(&state.bias, &state.personal, device)
            } else {
                LocalBias::new(classes, &state.personal, device)
            };
            learner.local = Some(Personal { model, bias, mixer });
        }
        Ok(learner)
    }

    /// Turns personalisation on or off, or changes its settings. Turning it on starts a
    /// fresh local model (initialised as the shared one was) with uniform mixing weights;
    /// turning it off drops the local model.
    pub fn set_personal(&mut self, config: PersonalConfig) -> Result<(), LocalError> {
        let device = self.model.device().clone();
        let classes = self.model.config().classes;
        self.local = match (config.enabled, self.local.take()) {
            (false, _) => None,
            (true, Some(personal)) if config == self.personal => Some(personal),
            (true, Some(Personal { model, bias, mixer })) => Some(Personal {
                model,
                bias: LocalBias::from_values(&bias.values()?, &config, &device),
                mixer: Mixer::from_weights(&mixer.weights()?, &config, &device),
            }),
            (true, None) => Some(Personal {
                model: HbpModel::new(self.model.config().clone(), &device)?,
                bias: LocalBias::new(classes, &config, &device),
                mixer: Mixer::new(EXPERTS.len(), &config, &device),
            }),
        };
        self.personal = config;
        Ok(())
    }

    /// The current mixing weights over [`EXPERTS`] (`None` without personalisation).
    pub fn mix_weights(&self) -> Result<Option<Vec<f32>>, LocalError> {
        Ok(self.local.as_ref().map(|p| p.mixer.weights()).transpose()?)
    }

    fn with_model(
        model: HbpModel,
        base: Option<Base>,
        snapshot: Option<Snapshot>,
        unreported: Counts,
        total: Counts,
        rows_consumed: u64,
    ) -> Self {
        let inputs = model.config().inputs;
        let classes = model.config().classes;
        Self {
            personal: PersonalConfig { enabled: false, ..PersonalConfig::default() },
            local: None,
            class_counts: vec![0; classes],
            global_total: Counts::default(),
            marks: Vec::new(),
            pending_global: Vec::new(),
            standardizer: OnlineStandardizer::new(inputs),
            unreported_moments: FeatureMoments::new(inputs),
            z: vec![0.0; inputs],
            model,
            base,
            snapshot,
            unreported,
            total,
            rows_consumed,
            pending: Vec::new(),
            pending_labels: Vec::new(),
            emitting: false,
            emitted: Vec::new(),
            keep_pruned: false,
        }
    }

    /// The model's shape.
    pub fn spec(&self) -> &HbpConfig {
        self.model.config()
    }

    /// Version of the global model last adopted.
    pub fn base_version(&self) -> Option<u64> {
        self.base.as_ref().map(|b| b.version)
    }

    /// Counters of the predictions it emits (personalised when personalisation is on)
    /// since the daemon first started (flushes pending predictions first).
    pub fn total(&mut self) -> Result<Counts, LocalError> {
        self.flush()?;
        Ok(self.total)
    }

    /// The counters of [`Self::total`] after every [`MARK_EVERY`] samples: the error over any
    /// stretch of the stream (e.g. right after a drift) is a difference of two marks.
    pub fn marks(&mut self) -> Result<&[Counts], LocalError> {
        self.flush()?;
        Ok(&self.marks)
    }

    /// Counters of the shared (global) model's own predictions since the daemon first started.
    pub fn global_total(&mut self) -> Result<Counts, LocalError> {
        self.flush()?;
        Ok(self.global_total)
    }

    /// Rows of the source consumed so far.
    pub fn rows_consumed(&self) -> u64 {
        self.rows_consumed
    }

    /// Counts a row that was consumed without being learnt from (e.g. skipped on resume).
    pub fn skip_row(&mut self) {
        self.rows_consumed += 1;
    }

    /// Predicts `sample`, then learns from it.
    pub fn learn(&mut self, sample: &Sample) -> Result<(), LocalError> {
        let config = self.model.config();
        if sample.features.len() != config.inputs {
            let expected = config.inputs;
            return Err(LocalError::FeatureCount { line: sample.line, expected, found: sample.features.len() });
        }
        if sample.label as usize >= config.classes {
            let classes = config.classes;
            return Err(LocalError::LabelOutOfRange { line: sample.line, label: sample.label, classes });
        }
        self.standardizer.standardize(&sample.features, &mut self.z);
        self.unreported_moments.add_row(&sample.features);
        let Batch { features, targets } = self.model.batch(&self.z, &[sample.label]);
        let device = self.model.device().clone();
        let classes = config.classes;
        let row =
            |values: Vec<f32>| Tensor::<2>::from_data(burn::tensor::TensorData::new(values, [1, classes]), &device);
        // The prior the prediction may use is the one before this label (test, then train).
        let prior = label_prior(&self.class_counts);
        if let Some(count) = self.class_counts.get_mut(sample.label as usize) {
            *count += 1;
        }
        let offset = self.personal.calibration_offset(&self.class_counts).map(row);
        let shared = self.model.learn_proba(Batch { features: features.clone(), targets: targets.clone() }, offset);
        self.pending_global.push(shared.clone().argmax(1).reshape([1]));
        let probabilities = match self.local.as_mut() {
            Some(Personal { model, bias, mixer }) => {
                let own = model.learn_proba(Batch { features, targets: targets.clone() }, None);
                let adapted = adapt_to_prior(shared.clone(), row(prior));
                let biased = bias.predict_and_update(shared.clone(), &targets);
                let experts = Tensor::stack(vec![own, shared, adapted, biased], 0);
                mixer.predict_and_update(experts, &targets)
            }
            None => shared,
        };
        if self.emitting {
            let version = self.base_version();
            self.emitted.push((self.rows_consumed + 1, version, probabilities.clone()));
        }
        self.pending.push(probabilities.argmax(1).reshape([1]));
        self.pending_labels.push(sample.label);
        self.rows_consumed += 1;
        if self.pending.len() >= READBACK_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    /// Predicts `rows` (raw features) with the device's current models, standardised with the
    /// statistics of the stream so far, without learning from them or folding them into
    /// those statistics: the personalised mix where personalisation is on (a device's own
    /// prediction API).
    pub fn predict(&self, rows: &[Vec<f32>]) -> Result<Vec<Prediction>, LocalError> {
        let config = self.model.config();
        let (d, c) = (config.inputs, config.classes);
        let mut z = vec![0.0f32; rows.len() * d];
        for (i, (row, out)) in rows.iter().zip(z.chunks_exact_mut(d.max(1))).enumerate() {
            if row.len() != d {
                return Err(LocalError::FeatureCount { line: i as u64 + 1, expected: d, found: row.len() });
            }
            self.standardizer.apply(row, out);
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.model.device();
        let features = Tensor::<2>::from_data(burn::tensor::TensorData::new(z, [rows.len(), d]), device);
        let shared = self.model.predict_proba(features.clone());
        let mixed = match &self.local {
            Some(Personal { model, bias, mixer }) => {
                let prior = label_prior(&self.class_counts);
                let prior = Tensor::<2>::from_data(burn::tensor::TensorData::new(prior, [1, c]), device);
                let own = model.predict_proba(features);
                let adapted = adapt_to_prior(shared.clone(), prior);
                let biased = bias.predict(shared.clone());
                mixer.predict(Tensor::stack(vec![own, shared, adapted, biased], 0))
            }
            None => shared,
        };
        let probabilities = read_probabilities(mixed)?;
        Ok(probabilities
            .chunks_exact(c.max(1))
            .map(|p| Prediction { class: crate::infer::argmax(p), probabilities: p.to_vec() })
            .collect())
    }

    /// Keeps every row's prediction from now on for [`LocalLearner::take_predictions`] (off:
    /// none are kept).
    pub fn emit_predictions(&mut self, on: bool) {
        self.emitting = on;
        if !on {
            self.emitted.clear();
        }
    }

    /// The predictions of the rows learnt since the last call, in stream order.
    pub fn take_predictions(&mut self) -> Result<Vec<RowPrediction>, LocalError> {
        let mut out = Vec::with_capacity(self.emitted.len());
        for (row, model_version, probabilities) in std::mem::take(&mut self.emitted) {
            let probabilities = read_probabilities(probabilities)?;
            let class = crate::infer::argmax(&probabilities);
            out.push(RowPrediction { row, class, probabilities, model_version });
        }
        Ok(out)
    }

    /// Reads pending predictions back and counts them.
    fn flush(&mut self) -> Result<(), LocalError> {
        let predicted = read_labels(std::mem::take(&mut self.pending))?;
        let global = read_labels(std::mem::take(&mut self.pending_global))?;
        for ((p, g), y) in predicted.iter().zip(&global).zip(self.pending_labels.drain(..)) {
            self.unreported.add(*p != y);
            self.total.add(*p != y);
            self.global_total.add(*g != y);
            if self.total.samples.is_multiple_of(MARK_EVERY) {
                self.marks.push(self.total);
            }
        }
        Ok(())
    }

    /// The contribution for a request resting on `model_version`, or `None` when this
    /// learner rests on another version or has learnt nothing since its last contribution.
    pub fn contribute(&mut self, model_version: u64) -> Result<Option<Contribution>, LocalError> {
        self.flush()?;
        if self.base.as_ref().is_none_or(|b| b.version != model_version) || self.unreported.samples == 0 {
            return Ok(None);
        }
        let (current, restarted) = self.parameters_or_restart()?;
        let Some(base) = self.base.as_ref().filter(|_| !restarted) else {
            // The rows learnt since the last contribution drove the model off: nothing to send.
            self.unreported = Counts::default();
            self.unreported_moments = FeatureMoments::new(self.model.config().inputs);
            return Ok(None);
        };
        let mut delta = difference(&current, &base.params);
        if self.keep_pruned {
            layout(self.model.config()).keep_pruned(&base.params.values, &mut delta.values);
        }
        let counts = std::mem::take(&mut self.unreported);
        let inputs = self.model.config().inputs;
        let moments = std::mem::replace(&mut self.unreported_moments, FeatureMoments::new(inputs));
        self.snapshot = Some(Snapshot { for_version: model_version, params: current });
        let metrics = LocalMetrics { samples: counts.samples, prequential_errors: counts.errors };
        Ok(Some(Contribution { delta, metrics, moments: Some(moments).filter(|m| m.count > 0), cohort: None }))
    }

    /// Adopts a global model, keeping the local progress the coordinator has not seen (rebase).
    ///
    /// `global` is checked once, where it becomes tensors ([`HbpModel::from_parameters`]: version,
    /// layout, length, finite values, α); a rebase keeps its header and length.
    pub fn adopt(&mut self, version: u64, global: ParameterVector) -> Result<(), LocalError> {
        let (current, restarted) = self.parameters_or_restart()?;
        let mut rebased = match &self.base {
            Some(base) if !restarted => {
                let seen = match &self.snapshot {
                    Some(s) if s.for_version == base.version => &s.params,
                    _ => &base.params,
                };
                let mut values = global.values.clone();
                for ((v, c), s) in values.iter_mut().zip(&current.values).zip(&seen.values) {
                    *v += c - s;
                }
                let mut rebased = ParameterVector { values, ..global.clone() };
                project_alpha(self.model.config(), &mut rebased);
                rebased
            }
            // No base yet, or the local model diverged: the global model as it is.
            _ => global.clone(),
        };
        if self.keep_pruned {
            layout(self.model.config()).keep_pruned(&global.values, &mut rebased.values);
        }
        self.model = HbpModel::from_parameters(self.model.config().clone(), &rebased, self.model.device())?;
        self.base = Some(Base { version, params: global });
        self.snapshot = None;
        Ok(())
    }

    /// Whether weights that are zero in the global model stay zero: in the model adopted
    /// (local progress on them is dropped) and in every contribution (the coordinator's
    /// [`flotilla_protocol::wire::UpdateRules::keep_pruned`]).
    pub fn set_keep_pruned(&mut self, on: bool) {
        self.keep_pruned = on;
    }

    /// A durable copy of everything needed to resume.
    pub fn state(&mut self) -> Result<ClientState, LocalError> {
        self.flush()?;
        let (params, _) = self.parameters_or_restart()?;
        Ok(ClientState {
            spec: self.model.config().clone(),
            params,
            base: self.base.clone(),
            snapshot: self.snapshot.clone(),
            standardizer: self.standardizer.clone(),
            unreported: self.unreported,
            total: self.total,
            rows_consumed: self.rows_consumed,
            personal: self.personal,
            local: self.local.as_ref().map(|p| p.model.to_parameters()).transpose()?,
            mix: self.mix_weights()?.unwrap_or_default(),
            bias: self.local.as_ref().map(|p| p.bias.values()).transpose()?.unwrap_or_default(),
            class_counts: self.class_counts.clone(),
            global_total: self.global_total,
            marks: self.marks.clone(),
        })
    }

    /// The model's parameters, and whether the model was first put back on the global model it
    /// rests on (a fresh initialisation before any) because learning drove a parameter to NaN
    /// or infinity, as a step size too large for the model adopted can (a heavily noised
    /// global model under DP, say). Such a model predicts nothing useful, could not be sent
    /// (a non-finite delta) nor restored from a saved state: its progress since the base is
    /// dropped, said once in the log, and learning goes on.
    fn parameters_or_restart(&mut self) -> Result<(ParameterVector, bool), LocalError> {
        let current = self.model.to_parameters()?;
        let Some(index) = first_non_finite(&current.values) else { return Ok((current, false)) };
        let config = self.model.config().clone();
        let (restart, from) = match &self.base {
            Some(base) => (base.params.clone(), format!("the global model (version {})", base.version)),
            None => (HbpModel::new(config.clone(), self.model.device())?.to_parameters()?, "a fresh model".into()),
        };
        tracing::warn!(
            parameter = index,
            restarted_from = %from,
            "the local model diverged (a non-finite parameter): restarted; what it learnt since is dropped"
        );
        self.model = HbpModel::from_parameters(config, &restart, self.model.device())?;
        self.snapshot = None;
        Ok((restart, true))
    }
}

/// `a − b`, tagged like `a`.
fn difference(a: &ParameterVector, b: &ParameterVector) -> ParameterVector {
    let values = a.values.iter().zip(&b.values).map(|(x, y)| x - y).collect();
    ParameterVector { values, ..a.clone() }
}

/// A `[1, C]` probability tensor read back as `f32`s.
fn read_probabilities(tensor: Tensor<2>) -> Result<Vec<f32>, LocalError> {
    Ok(tensor.try_into_vec_as::<f32>().map_err(|e| ModelError::Readback(format!("{e:?}")))?)
}

#[cfg(test)]
mod tests;
