//! The sans-IO core of asynchronous buffered aggregation (FedBuff, Nguyen et al., "Federated
//! Learning with Buffered Asynchronous Aggregation", AISTATS 2022).
//!
//! Updates are taken whenever they arrive, each resting on the model version it was computed
//! from. Its staleness s = current version − base version weighs it by `1/√(1 + s)`; an update
//! staler than `max_staleness` is refused. Once `buffer_size` (K) updates are buffered,
//! [`Buffered::apply`] turns `Δ̄ = Σ wᵢ·Δᵢ / K` into the next model through a
//! [`ServerOptimizer`] (`x ← x + η_s·d`) and empties the buffer; the caller bumps the version
//! and broadcasts. Memory: one `f64` per parameter for the buffer, whatever K. Driven by the
//! round state machine in asynchronous mode ([`crate::round::Mode::Async`]).

use super::AggregateError;
use super::federated::{Folded, Hygiene};
use super::optimizer::ServerOptimizer;
use super::step_size::StepSize;
use crate::params::{ParameterVector, first_non_finite};

/// A FedBuff buffer over the model of `current_version`.
#[derive(Debug)]
pub struct Buffered<O> {
    buffer_size: usize,
    max_staleness: u64,
    optimizer: O,
    server_lr: f64,
    step_size: StepSize,
    hygiene: Hygiene,
    sum: Vec<f64>,
    /// `Σ ‖wᵢΔᵢ‖²` of the buffered updates (FedExP's numerator, times K).
    sq_norms: f64,
    buffered: usize,
}

/// The weight of an update `staleness` versions behind: `1/√(1 + staleness)`.
pub fn staleness_weight(staleness: u64) -> f64 {
    1.0 / (1.0 + staleness as f64).sqrt()
}

impl<O: ServerOptimizer + Clone> Buffered<O> {
    /// A buffer of `buffer_size` (≥ 1) updates, refusing those staler than `max_staleness`.
    pub fn new(buffer_size: usize, max_staleness: u64, optimizer: O, server_lr: f64, hygiene: Hygiene) -> Self {
        let step_size = StepSize::Fixed;
        Self {
            buffer_size,
            max_staleness,
            optimizer,
            server_lr,
            step_size,
            hygiene,
            sum: Vec::new(),
            sq_norms: 0.0,
            buffered: 0,
        }
    }

    /// Sets how η_s is scaled at each apply (default [`StepSize::Fixed`]; `Participants`
    /// scales by the buffer size K).
    pub fn with_step_size(mut self, step_size: StepSize) -> Self {
        self.step_size = step_size;
        self
    }

    /// Buffers `delta`, computed from version `base_version`, while the global model is
    /// `current` at `current_version`. A refusal leaves the buffer unchanged.
    pub fn fold(
        &mut self,
        current: &ParameterVector,
        current_version: u64,
        delta: &ParameterVector,
        base_version: u64,
    ) -> Result<Folded, AggregateError> {
        if self.buffered >= self.buffer_size {
            return Err(AggregateError::BufferFull { size: self.buffer_size });
        }
        let staleness = current_version
            .checked_sub(base_version)
            .ok_or(AggregateError::FutureBase { base: base_version, current: current_version })?;
        if staleness > self.max_staleness {
            return Err(AggregateError::TooStale { staleness, max: self.max_staleness });
        }
        let norm = delta.check_shape_and_norm(current.fingerprint, current.values.len())?;
        let (folded, scale) = self.hygiene.inspect(norm);
        if self.sum.len() != current.values.len() {
            self.sum = vec![0.0; current.values.len()];
        }
        let weight = scale * staleness_weight(staleness);
        crate::kernels::add_weighted(&mut self.sum, &delta.values, weight);
        self.sq_norms += (weight * folded.norm).powi(2);
        self.buffered += 1;
        Ok(folded)
    }

    /// Whether K updates are buffered, so that [`Buffered::apply`] may run.
    pub fn ready(&self) -> bool {
        self.buffered >= self.buffer_size
    }

    /// Updates buffered so far.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Discards what is buffered (after an apply that failed); the optimiser state is kept.
    pub fn clear(&mut self) {
        self.sum.iter_mut().for_each(|sum| *sum = 0.0);
        self.sq_norms = 0.0;
        self.buffered = 0;
    }

    /// The next model from a full buffer; empties it. On error, buffer and optimiser are kept.
    pub fn apply(&mut self, current: &ParameterVector) -> Result<ParameterVector, AggregateError> {
        if !self.ready() {
            return Err(AggregateError::Empty);
        }
        self.apply_buffered(current)
    }

    /// The next model from what is buffered (at least one update), as if K were the number
    /// buffered: for when every client able to contribute to this version has.
    pub fn apply_early(&mut self, current: &ParameterVector) -> Result<ParameterVector, AggregateError> {
        if self.buffered == 0 {
            return Err(AggregateError::Empty);
        }
        self.apply_buffered(current)
    }

    fn apply_buffered(&mut self, current: &ParameterVector) -> Result<ParameterVector, AggregateError> {
        if current.values.len() != self.sum.len() {
            return Err(AggregateError::BaseChanged);
        }
        let k = self.buffered as f64;
        let mut step: Vec<f64> = self.sum.iter().map(|sum| sum / k).collect();
        let factor = self.step_size.factor(self.buffered, self.sq_norms / k, &step);
        let mut optimizer = self.optimizer.clone();
        optimizer.step(&mut step);
        let lr = self.server_lr * factor;
        let values: Vec<f32> = current.values.iter().zip(&step).map(|(x, d)| (f64::from(*x) + lr * d) as f32).collect();
        if let Some(index) = first_non_finite(&values) {
            return Err(AggregateError::ResultNotFinite { index });
        }
        self.optimizer = optimizer;
        self.sum.iter_mut().for_each(|sum| *sum = 0.0);
        self.sq_norms = 0.0;
        self.buffered = 0;
        Ok(ParameterVector { format_version: current.format_version, fingerprint: current.fingerprint, values })
    }
}

#[cfg(test)]
mod tests;
