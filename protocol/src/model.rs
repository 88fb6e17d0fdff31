//! What a federation trains: an HBP network, or a bare vector of parameters.
//!
//! A coordinator announces a [`ModelSpec`] in its `Welcome`; both sides derive the
//! parameter [`Layout`] (and so the fingerprint every update is checked against) from it.
//! [`ModelSpec::Vector`] is a model without a learner in this crate: a flat `f32` vector
//! that clients update by some other means (the `fleet-round` benchmark's formula, an
//! external trainer). The coordinator aggregates it exactly like an HBP model's parameters.

use serde::{Deserialize, Serialize};

pub mod hbp;
pub mod moments;

pub use hbp::{ConfigError, HbpConfig};
pub use moments::{FeatureMoments, MomentsError};

/// One row's prediction: the most probable class and every class's probability (what the
/// coordinator's and a device's HTTP API answer, whatever computed it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The most probable class.
    pub class: usize,
    /// The probability of every class.
    pub probabilities: Vec<f32>,
}

use crate::params::{Layout, ParameterVector, Segment};

/// Largest model of either kind: 2^28 parameters (1 GiB of `f32`). A spec over it is refused
/// by [`ModelSpec::validate`] (and an HBP shape by [`HbpConfig::validate`]) before anything is
/// allocated, whether it comes from a flag, a file, a checkpoint or a peer.
pub const MAX_PARAMETERS: u64 = 1 << 28;

/// The model a coordinator trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelSpec {
    /// A Hedge Backpropagation network (see [`hbp`]; the learner is `flotilla-learner`'s).
    Hbp(HbpConfig),
    /// A bare vector of `len` parameters, updated by something other than this crate's learner.
    Vector {
        /// Number of parameters.
        len: u64,
    },
}

/// Why a model spec cannot be used.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// The HBP configuration is invalid.
    #[error(transparent)]
    Hbp(#[from] ConfigError),
    /// A vector model's length is zero or over [`MAX_PARAMETERS`].
    #[error("a vector model needs 1 to {MAX_PARAMETERS} parameters, not {0}")]
    VectorLength(u64),
}

impl ModelSpec {
    /// Checks every size and hyper-parameter.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            ModelSpec::Hbp(config) => Ok(config.validate()?),
            ModelSpec::Vector { len } if (1..=MAX_PARAMETERS).contains(len) => Ok(()),
            ModelSpec::Vector { len } => Err(SpecError::VectorLength(*len)),
        }
    }

    /// The parameter layout of this model (call [`Self::validate`] first).
    pub fn layout(&self) -> Layout {
        match self {
            ModelSpec::Hbp(config) => hbp::layout(config),
            ModelSpec::Vector { len } => {
                Layout::new(vec![Segment { name: "vector".into(), shape: vec![usize::try_from(*len).unwrap_or(0)] }])
            }
        }
    }

    /// The HBP configuration, when this is an HBP model.
    pub fn hbp(&self) -> Option<&HbpConfig> {
        match self {
            ModelSpec::Hbp(config) => Some(config),
            ModelSpec::Vector { .. } => None,
        }
    }

    /// Restores the model's own invariants after a server step (an HBP model's hedge
    /// weights back onto the floored simplex); a vector model has none.
    pub fn project(&self, params: &mut ParameterVector) {
        if let ModelSpec::Hbp(config) = self {
            hbp::project_alpha(config, params);
        }
    }
}

impl From<HbpConfig> for ModelSpec {
    fn from(config: HbpConfig) -> Self {
        ModelSpec::Hbp(config)
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSpec::Hbp(c) => write!(
                f,
                "HBP {} inputs, {} classes, {} hidden layers of {}",
                c.inputs, c.classes, c.hidden_layers, c.width
            ),
            ModelSpec::Vector { len } => write!(f, "vector of {len} parameters"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_layout_is_one_segment_and_sizes_are_checked() {
        let spec = ModelSpec::Vector { len: 10 };
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.layout().len(), 10);
        assert_ne!(spec.layout().fingerprint(), ModelSpec::Vector { len: 11 }.layout().fingerprint());
        assert_eq!(ModelSpec::Vector { len: 0 }.validate(), Err(SpecError::VectorLength(0)));
        assert!(ModelSpec::Vector { len: MAX_PARAMETERS + 1 }.validate().is_err());
        assert!(spec.hbp().is_none());
    }

    #[test]
    fn hbp_spec_keeps_its_layout() {
        let config = HbpConfig::new(4, 2);
        let spec = ModelSpec::from(config.clone());
        assert_eq!(spec.layout(), hbp::layout(&config));
        assert_eq!(spec.hbp(), Some(&config));
    }
}
