//! Aggregation of client updates into the next global model.
//!
//! An [`Aggregator`] is told the round's base model ([`Aggregator::begin`]), folds each
//! accepted update in as it arrives ([`Aggregator::fold`]) and produces the next global
//! parameters once the round closes ([`Aggregator::finish`]). Implementations keep state
//! of the model's size, never one copy per client. [`FedAvg`] is the sample-weighted mean
//! of McMahan et al. (2017); robust strategies (median, Krum…) and server optimisers
//! (FedAdam…) will implement the same trait.

use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterError, ParameterVector};

/// Why an update or a round's aggregate was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AggregateError {
    /// `fold` or `finish` was called before `begin`.
    #[error("no round has begun")]
    NotStarted,
    /// The update claims to rest on zero samples, so it has no weight.
    #[error("update has zero samples")]
    ZeroSamples,
    /// The delta does not fit the base model (version, layout, length) or holds NaN/∞.
    #[error("update refused: {0}")]
    Parameters(#[from] ParameterError),
    /// The total sample count of the round overflowed `u64`.
    #[error("total sample count overflows")]
    SampleOverflow,
    /// `finish` was called with no update folded in.
    #[error("no update to aggregate")]
    Empty,
    /// `finish` was given another base than `begin`.
    #[error("finish was given another base model than begin")]
    BaseChanged,
    /// The aggregate itself is not finite (the updates were finite but too large).
    #[error("aggregated parameter {index} is not finite")]
    ResultNotFinite {
        /// Position of the first offending value.
        index: usize,
    },
}

/// A strategy turning the updates of one round into the next global model.
pub trait Aggregator {
    /// Starts a round on `base`, discarding whatever was folded before.
    fn begin(&mut self, base: &ParameterVector);

    /// Folds one client's `delta` (its parameters minus `base`), worth `samples` samples.
    ///
    /// A refused update leaves the aggregate unchanged.
    fn fold(&mut self, delta: &ParameterVector, samples: u64) -> Result<(), AggregateError>;

    /// Number of updates folded since `begin`.
    fn updates(&self) -> usize;

    /// Total samples of the updates folded since `begin`.
    fn samples(&self) -> u64;

    /// The next global parameters; the aggregator must be begun again afterwards.
    fn finish(&mut self, base: &ParameterVector) -> Result<ParameterVector, AggregateError>;
}

/// What a round's base model pins down about acceptable deltas.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    fingerprint: Fingerprint,
    len: usize,
}

/// Checks that `delta` has the base's format version, fingerprint and length and is finite.
pub(crate) fn check_delta(delta: &ParameterVector, fingerprint: Fingerprint, len: usize) -> Result<(), ParameterError> {
    if delta.format_version != PARAMETER_FORMAT_VERSION {
        return Err(ParameterError::UnsupportedVersion {
            expected: PARAMETER_FORMAT_VERSION,
            found: delta.format_version,
        });
    }
    if delta.fingerprint != fingerprint {
        return Err(ParameterError::LayoutMismatch {
            expected: fingerprint,
            expected_len: len,
            found: delta.fingerprint,
            found_len: delta.values.len(),
        });
    }
    if delta.values.len() != len {
        return Err(ParameterError::LengthMismatch { expected: len, found: delta.values.len() });
    }
    delta.check_finite()
}

/// Streaming sample-weighted federated averaging: `base + Σ nᵢ·Δᵢ / Σ nᵢ`.
///
/// The weighted sum is kept in `f64`, one value per parameter, whatever the number of
/// clients.
#[derive(Debug, Default)]
pub struct FedAvg {
    expected: Option<Expected>,
    weighted_sum: Vec<f64>,
    updates: usize,
    samples: u64,
}

impl FedAvg {
    /// An aggregator waiting for [`Aggregator::begin`].
    pub fn new() -> Self {
        Self::default()
    }
}

impl Aggregator for FedAvg {
    fn begin(&mut self, base: &ParameterVector) {
        let len = base.values.len();
        self.expected = Some(Expected { fingerprint: base.fingerprint, len });
        self.weighted_sum.clear();
        self.weighted_sum.resize(len, 0.0);
        self.updates = 0;
        self.samples = 0;
    }

    fn fold(&mut self, delta: &ParameterVector, samples: u64) -> Result<(), AggregateError> {
        let expected = self.expected.ok_or(AggregateError::NotStarted)?;
        if samples == 0 {
            return Err(AggregateError::ZeroSamples);
        }
        check_delta(delta, expected.fingerprint, expected.len)?;
        let total = self.samples.checked_add(samples).ok_or(AggregateError::SampleOverflow)?;
        let weight = samples as f64;
        for (sum, value) in self.weighted_sum.iter_mut().zip(&delta.values) {
            *sum += weight * f64::from(*value);
        }
        self.samples = total;
        self.updates += 1;
        Ok(())
    }

    fn updates(&self) -> usize {
        self.updates
    }

    fn samples(&self) -> u64 {
        self.samples
    }

    fn finish(&mut self, base: &ParameterVector) -> Result<ParameterVector, AggregateError> {
        let expected = self.expected.take().ok_or(AggregateError::NotStarted)?;
        if self.updates == 0 {
            return Err(AggregateError::Empty);
        }
        if base.fingerprint != expected.fingerprint || base.values.len() != expected.len {
            return Err(AggregateError::BaseChanged);
        }
        let total = self.samples as f64;
        let values: Vec<f32> = base
            .values
            .iter()
            .zip(&self.weighted_sum)
            .map(|(base, sum)| (f64::from(*base) + sum / total) as f32)
            .collect();
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(AggregateError::ResultNotFinite { index });
        }
        self.weighted_sum = Vec::new();
        Ok(ParameterVector { format_version: base.format_version, fingerprint: base.fingerprint, values })
    }
}

#[cfg(test)]
mod tests;
