//! Many clients' HBP networks stepped together: a leading client dimension on every tensor.
//!
//! A fleet simulation or a server that learns for many clients runs `C` independent HBP
//! learners of one shape. Stepping them one by one costs `C` times the kernel launches of one
//! step; [`BatchedHbp`] stacks their tensors along a leading client dimension instead
//! (weights `[C, in, out]`, biases `[C, 1, out]`, heads `[C, L, width, classes]`, α `[C, K]`)
//! so that one step of every client is a fixed number of batched tensor ops, whatever `C`.
//!
//! The maths is the single-client learner's (see `super::math`), written batched in `math`:
//! forward pass, hedged mixture, per-head cross-entropy, the analytic backward pass of
//! `Σ_l α_l · CE_l`, an SGD step and the hedge update. The clients share nothing but their
//! shape and hyper-parameters; their seeds (initial weights) may differ.

mod math;

use burn::tensor::{Device, Int, Tensor, TensorData};

use flotilla_protocol::model::HbpConfig;
use flotilla_protocol::model::hbp::layout;

use super::model::{HbpModel, ModelError, read};
use flotilla_protocol::params::{ParameterError, ParameterVector};

/// Why a batched learner could not be built, fed or exported.
#[derive(Debug, thiserror::Error)]
pub enum BatchedError {
    /// No client was given.
    #[error("a batched learner needs at least one client")]
    NoClients,
    /// A client's configuration differs from the first client's in more than its seed.
    #[error("client {client}'s configuration differs from client 0's (only the seed may differ)")]
    ConfigMismatch {
        /// Index of the offending client.
        client: usize,
    },
    /// A client index past the last client.
    #[error("client {client} does not exist (there are {clients})")]
    NoSuchClient {
        /// Index asked for.
        client: usize,
        /// Number of clients.
        clients: usize,
    },
    /// A micro-batch's features or labels have the wrong length.
    #[error("{what}: expected {expected} values, found {found}")]
    BatchShape {
        /// Which buffer.
        what: &'static str,
        /// Length expected from the clients, rows and features.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A label is not below the class count.
    #[error("label {label} is out of range (the model has {classes} classes)")]
    LabelOutOfRange {
        /// The label found.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// A client's parameters could not be loaded, or tensors not read back.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One micro-batch per client on the learner's device: features `[C, b, d]`, one-hot labels `[C, b, K]`.
pub struct StackedBatch {
    /// Features, `[C, b, d]`.
    pub features: Tensor<3>,
    /// One-hot labels, `[C, b, classes]`.
    pub targets: Tensor<3>,
}

/// `C` HBP networks of one [`HbpConfig`] (seeds aside), stacked along a leading client dimension.
#[derive(Debug, Clone)]
pub struct BatchedHbp {
    /// Client 0's configuration; every client has the same but for the seed.
    config: HbpConfig,
    device: Device,
    clients: usize,
    /// `hidden_weights[l]`: `[C, in_l, width]`.
    hidden_weights: Vec<Tensor<3>>,
    /// `hidden_biases[l]`: `[C, 1, width]`.
    hidden_biases: Vec<Tensor<3>>,
    /// Input heads `[C, inputs, classes]` and biases `[C, 1, classes]`, when the config asks for them.
    input_head: Option<(Tensor<3>, Tensor<3>)>,
    /// Hidden heads `[C, L, width, classes]`.
    head_weights: Tensor<4>,
    /// Hidden head biases `[C, L, 1, classes]`.
    head_biases: Tensor<4>,
    /// Hedge weights `[C, K]`, input head first when present.
    alpha: Tensor<2>,
}

impl BatchedHbp {
    /// Stacks the given models (each exported and re-uploaded) on `device`.
    pub fn from_models(models: &[HbpModel], device: &Device) -> Result<Self, BatchedError> {
        let first = models.first().ok_or(BatchedError::NoClients)?;
        let vectors = models.iter().map(HbpModel::to_parameters).collect::<Result<Vec<_>, _>>()?;
        for (client, model) in models.iter().enumerate() {
            if !same_shape(first.config(), model.config()) {
                return Err(BatchedError::ConfigMismatch { client });
            }
        }
        Self::from_parameters(first.config().clone(), &vectors, device)
    }

    /// `clients` freshly initialised networks, client `i` seeded with `config.seed + i`.
    pub fn seeded(config: HbpConfig, clients: usize, device: &Device) -> Result<Self, BatchedError> {
        let cpu = Device::flex();
        let vectors = (0..clients)
            .map(|i| {
                let seed = config.seed.wrapping_add(i as u32);
                HbpModel::new(HbpConfig { seed, ..config.clone() }, &cpu)?.to_parameters()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_parameters(config, &vectors, device)
    }

    /// One client per parameter vector, all of `config`'s layout, on `device`.
    ///
    /// Each vector is checked as [`HbpModel::from_parameters`] checks it (version, layout,
    /// finite values, α a distribution).
    pub fn from_parameters(
        config: HbpConfig,
        clients: &[ParameterVector],
        device: &Device,
    ) -> Result<Self, BatchedError> {
        if clients.is_empty() {
            return Err(BatchedError::NoClients);
        }
        config.validate().map_err(ModelError::from)?;
        let layout = layout(&config);
        for vector in clients {
            vector.check(&layout)?;
            let alpha = &vector.values[vector.values.len() - config.heads()..];
            let sum: f32 = alpha.iter().sum();
            if (sum - 1.0).abs() > 1e-3 || alpha.iter().any(|a| *a < 0.0) {
                return Err(ModelError::InvalidAlpha { sum }.into());
            }
        }
        let c = clients.len();
        let mut segments = Vec::with_capacity(layout.segments().len());
        let mut offset = 0;
        for segment in layout.segments() {
            let len = segment.len();
            let mut values = Vec::with_capacity(c * len);
            for vector in clients {
                values.extend_from_slice(&vector.values[offset..offset + len]);
            }
            offset += len;
            segments.push(values);
        }
        Ok(Self::assemble(config, device, c, segments))
    }

    /// Builds the tensors from one client-major value buffer per layout segment.
    fn assemble(config: HbpConfig, device: &Device, c: usize, segments: Vec<Vec<f32>>) -> Self {
        let (d, w, k, layers) = (config.inputs, config.width, config.classes, config.hidden_layers);
        let mut parts = segments.into_iter();
        let mut next = || parts.next().unwrap_or_default();
        let mut hidden_weights = Vec::with_capacity(layers);
        let mut hidden_biases = Vec::with_capacity(layers);
        for l in 0..layers {
            hidden_weights.push(upload(next(), [c, if l == 0 { d } else { w }, w], device));
            hidden_biases.push(upload(next(), [c, 1, w], device));
        }
        let input_head =
            config.input_head.then(|| (upload(next(), [c, d, k], device), upload(next(), [c, 1, k], device)));
        let head_weights = upload(next(), [c, layers, w, k], device);
        let head_biases = upload(next(), [c, layers, 1, k], device);
        let alpha = upload(next(), [c, config.heads()], device);
        Self {
            config,
            device: device.clone(),
            clients: c,
            hidden_weights,
            hidden_biases,
            input_head,
            head_weights,
            head_biases,
            alpha,
        }
    }

    /// Client 0's configuration (every client's, but for the seed).
    pub fn config(&self) -> &HbpConfig {
        &self.config
    }

    /// The device its tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of clients `C`.
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// Exports client `client`'s parameters in the single-client layout of [`HbpModel`].
    pub fn to_parameters(&self, client: usize) -> Result<ParameterVector, BatchedError> {
        if client >= self.clients {
            return Err(BatchedError::NoSuchClient { client, clients: self.clients });
        }
        let mut values = Vec::with_capacity(layout(&self.config).len());
        for (weight, bias) in self.hidden_weights.iter().zip(&self.hidden_biases) {
            values.extend(read(weight.clone().narrow(0, client, 1))?);
            values.extend(read(bias.clone().narrow(0, client, 1))?);
        }
        if let Some((weight, bias)) = &self.input_head {
            values.extend(read(weight.clone().narrow(0, client, 1))?);
            values.extend(read(bias.clone().narrow(0, client, 1))?);
        }
        values.extend(read(self.head_weights.clone().narrow(0, client, 1))?);
        values.extend(read(self.head_biases.clone().narrow(0, client, 1))?);
        values.extend(read(self.alpha.clone().narrow(0, client, 1))?);
        Ok(ParameterVector::new(&layout(&self.config), values)?)
    }

    /// Client `client` as a single-client [`HbpModel`] on this learner's device.
    pub fn to_model(&self, client: usize) -> Result<HbpModel, BatchedError> {
        let config = HbpConfig { seed: self.config.seed.wrapping_add(client as u32), ..self.config.clone() };
        Ok(HbpModel::from_parameters(config, &self.to_parameters(client)?, &self.device)?)
    }

    /// Every client's hedge weights α, `[C][K]`, input head first when present.
    pub fn alpha(&self) -> Result<Vec<Vec<f32>>, BatchedError> {
        let values = read(self.alpha.clone())?;
        Ok(values.chunks(self.config.heads()).map(<[f32]>::to_vec).collect())
    }

    /// Uploads one micro-batch of `b` rows per client: `features` is `[C, b, d]` and `labels`
    /// `[C, b]`, both row-major with the client outermost.
    pub fn batch(&self, features: &[f32], labels: &[u32]) -> Result<StackedBatch, BatchedError> {
        let (c, d, k) = (self.clients, self.config.inputs, self.config.classes);
        let rows = labels.len() / c;
        if labels.is_empty() || labels.len() != rows * c {
            return Err(BatchedError::BatchShape { what: "labels", expected: c * rows.max(1), found: labels.len() });
        }
        if features.len() != labels.len() * d {
            return Err(BatchedError::BatchShape {
                what: "features",
                expected: labels.len() * d,
                found: features.len(),
            });
        }
        let mut one_hot = vec![0.0f32; labels.len() * k];
        for (row, &label) in labels.iter().enumerate() {
            if label as usize >= k {
                return Err(BatchedError::LabelOutOfRange { label, classes: k });
            }
            one_hot[row * k + label as usize] = 1.0;
        }
        Ok(StackedBatch {
            features: upload(features.to_vec(), [c, rows, d], &self.device),
            targets: upload(one_hot, [c, rows, k], &self.device),
        })
    }

    /// Predicts every client's micro-batch with its current weights, then takes one HBP step
    /// for every client. Returns the predicted classes `[C, b]`, made *before* the update.
    ///
    /// The result stays on the device; read it back in bulk to avoid a sync per step.
    pub fn step(&mut self, batch: StackedBatch) -> Tensor<2, Int> {
        let forward = self.forward(batch.features);
        let predicted = self.mixture(&forward).argmax(2);
        let losses = self.head_losses(&forward, &batch.targets);
        let steps = self.gradients(&forward, &batch.targets, self.config.learning_rate);
        self.apply(steps);
        self.hedge(losses);
        let [c, b, _] = predicted.dims();
        predicted.reshape([c, b])
    }

    /// Waits for every queued step by reading back one scalar that depends on the last update
    /// of the first hidden layer, the heads and α; returns it (useful for timing).
    pub fn sync(&self) -> Result<f32, BatchedError> {
        let first = self.hidden_weights.first().map(|w| w.clone().sum()).unwrap_or_else(|| self.alpha.clone().sum());
        let total = first + self.head_weights.clone().sum() + self.alpha.clone().sum();
        Ok(read(total)?.first().copied().unwrap_or(f32::NAN))
    }
}

/// Whether two configurations describe the same network and hyper-parameters, seeds aside.
fn same_shape(a: &HbpConfig, b: &HbpConfig) -> bool {
    *a == HbpConfig { seed: a.seed, ..b.clone() }
}

fn upload<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Reads predicted classes `[C, b]` back as `u32`s, client-major.
pub fn read_predictions(predicted: Tensor<2, Int>) -> Result<Vec<u32>, BatchedError> {
    let values = predicted.try_into_vec_as::<i64>().map_err(|e| ModelError::Readback(format!("{e:?}")))?;
    Ok(values.into_iter().map(|v| v.clamp(0, i64::from(u32::MAX)) as u32).collect())
}

impl From<ParameterError> for BatchedError {
    fn from(error: ParameterError) -> Self {
        Self::Model(ModelError::Parameters(error))
    }
}
