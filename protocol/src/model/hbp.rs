//! Hyper-parameters, shape and flat parameter layout of a Hedge Backpropagation network (the
//! learner itself, on burn tensors, is `flotilla-learner`'s `hbp`).

use serde::{Deserialize, Serialize};

use crate::params::{Layout, ParameterVector, Segment};

/// Shape and hyper-parameters of an HBP learner (Sahoo et al., IJCAI 2018, Algorithm 1).
///
/// The defaults are the paper's and the NumPy reference's: 19 hidden ReLU layers of 100
/// units, η = 0.01, β = 0.99, s = 0.2, a classifier head on the input and on every hidden
/// layer, one sample at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HbpConfig {
    /// Number of input features `d`.
    pub inputs: usize,
    /// Number of classes `C` (labels are `0..C`).
    pub classes: usize,
    /// Number of hidden layers `L`.
    pub hidden_layers: usize,
    /// Units per hidden layer.
    pub width: usize,
    /// SGD learning rate η.
    pub learning_rate: f32,
    /// Hedge discount β in (0, 1): α_l ← α_l · β^{loss_l}.
    pub beta: f32,
    /// Smoothing s: every α_l is floored at s / L before normalisation.
    pub smoothing: f32,
    /// Whether a classifier head also reads the raw input (the paper's l = 0 head).
    pub input_head: bool,
    /// Seed of the Glorot-uniform initialisation.
    pub seed: u32,
}

impl HbpConfig {
    /// The paper's hyper-parameters: the one source of every HBP default (the binaries' flags
    /// and config files fall back to these fields). Its `inputs` and `classes` are zero, a
    /// placeholder that [`HbpConfig::validate`] refuses: use [`HbpConfig::new`] for a model.
    pub const PAPER: HbpConfig = HbpConfig {
        inputs: 0,
        classes: 0,
        hidden_layers: 19,
        width: 100,
        learning_rate: 0.01,
        beta: 0.99,
        smoothing: 0.2,
        input_head: true,
        seed: 0,
    };

    /// The paper's defaults ([`HbpConfig::PAPER`]) for a stream of `inputs` features and
    /// `classes` classes.
    pub const fn new(inputs: usize, classes: usize) -> Self {
        Self { inputs, classes, ..Self::PAPER }
    }

    /// Number of classifier heads (L + 1 with the input head, L without).
    pub fn heads(&self) -> usize {
        self.hidden_layers + usize::from(self.input_head)
    }
}

/// Why an [`HbpConfig`] cannot build a network.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A size that must be positive is zero.
    #[error("{what} must be at least {min}, got {value}")]
    TooSmall {
        /// Name of the setting.
        what: &'static str,
        /// Smallest allowed value.
        min: usize,
        /// Value given.
        value: usize,
    },
    /// A real-valued setting is outside its range.
    #[error("{what} must be in {range}, got {value}")]
    OutOfRange {
        /// Name of the setting.
        what: &'static str,
        /// The allowed range, in words.
        range: &'static str,
        /// Value given.
        value: f32,
    },
    /// The network would have more parameters than any model may (a label of 4,000,000,000
    /// asks for that many classes); `None` when the count overflows a `u64`.
    #[error(
        "a network of {inputs} inputs, {classes} classes, {hidden_layers} hidden layers of {width} \
         units would have {} parameters; at most {max} are allowed",
        parameters.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
    )]
    TooLarge {
        /// Number of input features.
        inputs: usize,
        /// Number of classes.
        classes: usize,
        /// Number of hidden layers.
        hidden_layers: usize,
        /// Units per hidden layer.
        width: usize,
        /// The network's parameter count, if it fits a `u64`.
        parameters: Option<u64>,
        /// The largest count allowed ([`crate::model::MAX_PARAMETERS`]).
        max: u64,
    },
}

impl HbpConfig {
    /// Checks every size and hyper-parameter, so that a network can be built from it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("inputs", 1, self.inputs),
            ("classes", 2, self.classes),
            ("hidden layers", 1, self.hidden_layers),
            ("width", 1, self.width),
        ];
        for (what, min, value) in sizes {
            if value < min {
                return Err(ConfigError::TooSmall { what, min, value });
            }
        }
        let reals = [
            ("learning rate", "(0, 10]", self.learning_rate, self.learning_rate > 0.0 && self.learning_rate <= 10.0),
            ("beta", "(0, 1)", self.beta, self.beta > 0.0 && self.beta < 1.0),
            ("smoothing", "[0, 1)", self.smoothing, (0.0..1.0).contains(&self.smoothing)),
        ];
        for (what, range, value, ok) in reals {
            if !ok {
                return Err(ConfigError::OutOfRange { what, range, value });
            }
        }
        let max = crate::model::MAX_PARAMETERS;
        match self.parameter_count() {
            Some(count) if count <= max => Ok(()),
            parameters => Err(ConfigError::TooLarge {
                inputs: self.inputs,
                classes: self.classes,
                hidden_layers: self.hidden_layers,
                width: self.width,
                parameters,
                max,
            }),
        }
    }

    /// Number of parameters of the network ([`layout`]'s total length), or `None` when it
    /// overflows a `u64`; computed without building the layout, so that a huge shape is
    /// refused before anything is allocated.
    pub fn parameter_count(&self) -> Option<u64> {
        let [d, c, layers, w] = [self.inputs, self.classes, self.hidden_layers, self.width].map(|n| n as u64);
        let first = d.checked_mul(w)?.checked_add(w)?;
        let rest = w.checked_mul(w)?.checked_add(w)?.checked_mul(layers.saturating_sub(1))?;
        let input_head = if self.input_head { d.checked_mul(c)?.checked_add(c)? } else { 0 };
        let hidden_heads = layers.checked_mul(w.checked_mul(c)?.checked_add(c)?)?;
        let alpha = layers.checked_add(u64::from(self.input_head))?;
        first.checked_add(rest)?.checked_add(input_head)?.checked_add(hidden_heads)?.checked_add(alpha)
    }
}

/// The flat layout of a network of `config`: per hidden layer its weight and bias, the input
/// head's weight and bias (if any), the stacked hidden heads' weights and biases, then α.
pub fn layout(config: &HbpConfig) -> Layout {
    let (d, w, c, layers) = (config.inputs, config.width, config.classes, config.hidden_layers);
    let mut segments = Vec::with_capacity(2 * layers + 5);
    for l in 0..layers {
        let input = if l == 0 { d } else { w };
        segments.push(Segment { name: format!("hidden.{l}.weight"), shape: vec![input, w] });
        segments.push(Segment { name: format!("hidden.{l}.bias"), shape: vec![w] });
    }
    if config.input_head {
        segments.push(Segment { name: "input_head.weight".into(), shape: vec![d, c] });
        segments.push(Segment { name: "input_head.bias".into(), shape: vec![c] });
    }
    segments.push(Segment { name: "hidden_heads.weight".into(), shape: vec![layers, w, c] });
    segments.push(Segment { name: "hidden_heads.bias".into(), shape: vec![layers, c] });
    segments.push(Segment { name: "alpha".into(), shape: vec![config.heads()] });
    Layout::new(segments)
}

/// Puts the α segment of `params` back on the floored simplex: every α at least `s/L`, summing
/// to one. Averaging α is safe (a weighted mean of distributions is one) but a server step of
/// another size, momentum, or a client's rebase can leave it off; this projection is part of
/// every such update. Vectors of another length are left alone (their check fails later).
pub fn project_alpha(config: &HbpConfig, params: &mut ParameterVector) {
    let k = config.heads();
    if params.values.len() != layout(config).len() {
        return;
    }
    let floor = (config.smoothing / config.hidden_layers as f32).max(f32::MIN_POSITIVE);
    let start = params.values.len() - k;
    let alpha = &mut params.values[start..];
    alpha.iter_mut().for_each(|a| *a = if a.is_finite() { a.max(floor) } else { floor });
    let total: f32 = alpha.iter().sum();
    alpha.iter_mut().for_each(|a| *a /= total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(HbpConfig::new(8, 2).validate(), Ok(()));
        assert_eq!(HbpConfig::new(8, 2).heads(), 20);
        let mut config = HbpConfig::new(8, 1);
        assert!(config.validate().unwrap_err().to_string().contains("classes"));
        config.classes = 3;
        config.beta = 1.0;
        assert!(config.validate().unwrap_err().to_string().contains("beta"));
        config.beta = f32::NAN;
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_parameter_count_is_the_layouts_and_huge_shapes_are_refused() {
        for (inputs, classes, layers, width, input_head) in
            [(8, 2, 19, 100, true), (784, 10, 3, 7, false), (1, 2, 1, 1, true), (13, 3, 2, 64, false)]
        {
            let config = HbpConfig { hidden_layers: layers, width, input_head, ..HbpConfig::new(inputs, classes) };
            assert_eq!(config.parameter_count(), Some(layout(&config).len() as u64), "{config:?}");
        }
        // A label of 4,000,000,000 in a CSV: 7.7e12 parameters, refused with the shape named.
        let error = HbpConfig::new(2, 4_000_000_001).validate().unwrap_err();
        assert!(matches!(error, ConfigError::TooLarge { parameters: Some(7_688_000_184_042), .. }), "{error}");
        assert!(error.to_string().contains("4000000001 classes"), "{error}");
        // A count that overflows a u64 is refused too, not wrapped.
        let error = HbpConfig::new(usize::MAX, usize::MAX).validate().unwrap_err();
        assert!(error.to_string().contains("more than 2^64"), "{error}");
        // The largest shape allowed is allowed.
        let mut config = HbpConfig::new(2, 2);
        config.width = 3_000;
        assert!(config.parameter_count().is_some_and(|n| n <= crate::model::MAX_PARAMETERS));
        assert_eq!(config.validate(), Ok(()));
    }
}
