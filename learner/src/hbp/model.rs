//! The HBP network's tensors, their layout and their flat export/import.

use burn::tensor::{Device, Tensor, TensorData};

use super::init::NumpyUniform;
use flotilla_protocol::model::hbp::{ConfigError, HbpConfig, layout};
use flotilla_protocol::params::{Layout, ParameterError, ParameterVector};

/// Why a model could not be built, exported or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The configuration cannot describe a network.
    #[error("invalid HBP configuration: {0}")]
    Config(#[from] ConfigError),
    /// A parameter vector does not fit this model.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// The α segment of a parameter vector is not a distribution.
    #[error("the alpha segment is not a probability vector (sum {sum})")]
    InvalidAlpha {
        /// Sum of the α values found.
        sum: f32,
    },
    /// Tensor data could not be read back from the device.
    #[error("reading tensor data back from the device failed: {0}")]
    Readback(String),
}

/// An HBP network on one burn [`Device`]: L hidden ReLU layers, a softmax head on the
/// input (optional) and on every hidden layer, and the hedge weights α over the heads.
///
/// The hidden heads are stored stacked (`[L, width, C]`) so that all of them run as one
/// batched matmul. This is a plain struct of tensors rather than a burn `Module`: its
/// backward pass is analytic (see [`super::math`]) and its serialisation is the flat
/// [`ParameterVector`].
#[derive(Debug, Clone)]
pub struct HbpModel {
    pub(crate) config: HbpConfig,
    pub(crate) device: Device,
    /// `hidden_weights[l]`: `[in_l, width]` with `in_0 = inputs`.
    pub(crate) hidden_weights: Vec<Tensor<2>>,
    /// `hidden_biases[l]`: `[1, width]`.
    pub(crate) hidden_biases: Vec<Tensor<2>>,
    /// Input head `[inputs, C]` and its bias `[1, C]`, when the config asks for it.
    pub(crate) input_head: Option<(Tensor<2>, Tensor<2>)>,
    /// Hidden heads `[L, width, C]`.
    pub(crate) head_weights: Tensor<3>,
    /// Hidden head biases `[L, 1, C]`.
    pub(crate) head_biases: Tensor<3>,
    /// Hedge weights `[K]`, input head first when present.
    pub(crate) alpha: Tensor<1>,
}

impl HbpModel {
    /// A freshly initialised network: Glorot-uniform weights drawn as the NumPy reference
    /// draws them for `config.seed`, zero biases, α uniform over the heads.
    pub fn new(config: HbpConfig, device: &Device) -> Result<Self, ModelError> {
        config.validate()?;
        let mut rng = NumpyUniform::new(config.seed);
        let mut values = Vec::with_capacity(layout(&config).len());
        let (d, w, c, layers) = (config.inputs, config.width, config.classes, config.hidden_layers);
        for l in 0..layers {
            values.extend(rng.glorot(if l == 0 { d } else { w }, w));
            values.extend(std::iter::repeat_n(0.0, w));
        }
        if config.input_head {
            values.extend(rng.glorot(d, c));
            values.extend(std::iter::repeat_n(0.0, c));
        }
        let mut heads = Vec::with_capacity(layers * w * c);
        for _ in 0..layers {
            heads.extend(rng.glorot(w, c));
        }
        values.extend(heads);
        values.extend(std::iter::repeat_n(0.0, layers * c));
        let k = config.heads();
        values.extend(std::iter::repeat_n(1.0 / k as f32, k));
        let layout = layout(&config);
        let vector = ParameterVector::new(&layout, values)?;
        Self::from_parameters(config, &vector, device)
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &HbpConfig {
        &self.config
    }

    /// The device its tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The layout of this model's flat parameter vector.
    pub fn layout(&self) -> Layout {
        layout(&self.config)
    }

    /// Current hedge weights α, input head first when present.
    pub fn alpha(&self) -> Result<Vec<f32>, ModelError> {
        read(self.alpha.clone())
    }

    /// Exports every parameter (weights, biases, then α) in layout order.
    pub fn to_parameters(&self) -> Result<ParameterVector, ModelError> {
        let mut values = Vec::with_capacity(self.layout().len());
        for (weight, bias) in self.hidden_weights.iter().zip(&self.hidden_biases) {
            values.extend(read(weight.clone())?);
            values.extend(read(bias.clone())?);
        }
        if let Some((weight, bias)) = &self.input_head {
            values.extend(read(weight.clone())?);
            values.extend(read(bias.clone())?);
        }
        values.extend(read(self.head_weights.clone())?);
        values.extend(read(self.head_biases.clone())?);
        values.extend(read(self.alpha.clone())?);
        Ok(ParameterVector::new(&self.layout(), values)?)
    }

    /// A model of `config` on `device` holding exactly `parameters`.
    ///
    /// Refuses a vector of another version or layout (by fingerprint), one with a NaN or
    /// infinite value, and one whose α segment is not a probability vector.
    pub fn from_parameters(
        config: HbpConfig,
        parameters: &ParameterVector,
        device: &Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let layout = layout(&config);
        parameters.check(&layout)?;
        let mut parts = parameters.split(&layout).map(|(segment, values)| (segment.shape.clone(), values));
        let mut next = || {
            parts
                .next()
                .ok_or(ParameterError::LengthMismatch { expected: layout.len(), found: parameters.values.len() })
        };
        let (w, c, layers) = (config.width, config.classes, config.hidden_layers);
        let mut hidden_weights = Vec::with_capacity(layers);
        let mut hidden_biases = Vec::with_capacity(layers);
        for _ in 0..layers {
            let (shape, values) = next()?;
            hidden_weights.push(tensor2(values, [shape[0], shape[1]], device));
            hidden_biases.push(tensor2(next()?.1, [1, w], device));
        }
        let input_head = if config.input_head {
            let (shape, values) = next()?;
            Some((tensor2(values, [shape[0], shape[1]], device), tensor2(next()?.1, [1, c], device)))
        } else {
            None
        };
        let head_weights = Tensor::from_data(TensorData::new(next()?.1.to_vec(), [layers, w, c]), device);
        let head_biases = Tensor::from_data(TensorData::new(next()?.1.to_vec(), [layers, 1, c]), device);
        let alpha_values = next()?.1;
        let sum: f32 = alpha_values.iter().sum();
        if (sum - 1.0).abs() > 1e-3 || alpha_values.iter().any(|a| *a < 0.0) {
            // Reported with the sum; a negative entry makes it invalid even when the sum is 1.
            return Err(ModelError::InvalidAlpha { sum });
        }
        let alpha = Tensor::from_data(TensorData::new(alpha_values.to_vec(), [alpha_values.len()]), device);
        Ok(Self {
            config,
            device: device.clone(),
            hidden_weights,
            hidden_biases,
            input_head,
            head_weights,
            head_biases,
            alpha,
        })
    }
}

fn tensor2(values: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

/// Reads a float tensor back as `f32`s, whatever the backend's float type.
pub(crate) fn read<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    tensor.try_into_vec_as::<f32>().map_err(|e| ModelError::Readback(format!("{e:?}")))
}
