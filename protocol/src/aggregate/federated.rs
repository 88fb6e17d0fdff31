//! [`Federated`]: update hygiene, a [`Reducer`] and a [`ServerOptimizer`] behind [`Aggregator`].

use super::mean::WeightedMean;
use super::optimizer::{ServerOptimizer, Sgd};
use super::step_size::StepSize;
use super::{AggregateError, Aggregator, Expected, Reducer};
use crate::params::{ParameterVector, first_non_finite};
use crate::wire::Cohort;

/// Per-update checks beyond format and finiteness, applied by every strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Hygiene {
    /// Deltas whose L2 norm exceeds this are scaled down to it.
    pub clip_norm: Option<f64>,
    /// Deltas whose L2 norm (before clipping) exceeds this are flagged as outliers, not refused.
    pub outlier_norm: Option<f64>,
    /// Standard deviation of the Gaussian noise added to the sum of the (clipped) updates
    /// before the mean is taken: central differential privacy.
    pub noise_std: Option<f64>,
    /// Secret key of that noise (combined with the number of rounds aggregated).
    pub noise_key: crate::privacy::NoiseKey,
}

/// What the hygiene found about an accepted update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Folded {
    /// L2 norm of the delta as received.
    pub norm: f64,
    /// Whether it was scaled down to the clipping norm.
    pub clipped: bool,
    /// Whether its norm exceeds the outlier bound.
    pub outlier: bool,
}

impl Hygiene {
    /// Inspects finite values of L2 norm `norm`: what to report and the factor to scale them by.
    pub fn inspect(&self, norm: f64) -> (Folded, f64) {
        let outlier = self.outlier_norm.is_some_and(|bound| norm > bound);
        let (clipped, scale) = match self.clip_norm {
            Some(clip) if norm > clip => (true, clip / norm),
            _ => (false, 1.0),
        };
        (Folded { norm, clipped, outlier }, scale)
    }
}

/// An aggregator: each delta is checked and cleaned by the [`Hygiene`], reduced by `R` into
/// the round's pseudo-gradient Δ, which `O` turns into the step `d`; the next model is
/// `base + η_s·d`.
///
/// The optimiser's state (m, v) lives here, across rounds, and is **not yet in the
/// checkpoint**: a restarted coordinator starts it from zero again.
#[derive(Debug)]
pub struct Federated<R, O> {
    reducer: R,
    optimizer: O,
    server_lr: f64,
    step_size: StepSize,
    hygiene: Hygiene,
    expected: Option<Expected>,
    updates: usize,
    /// Clients behind the updates folded (a secure round's mean counts all its survivors).
    participants: usize,
    /// `Σ nᵢ·‖sᵢΔᵢ‖²` over the folded updates (over `samples` = `Σ nᵢ`: FedExP's numerator).
    weighted_sq_norms: f64,
    /// The release of the rounds under differential privacy.
    release: Option<super::DpRelease>,
    /// `Σ` of the folded cohorts' expected sizes: the public denominator at a tree's root.
    cohort_expected: f64,
    samples: u64,
    /// Rounds begun, which seeds each round's noise.
    rounds: u64,
}

/// Sample-weighted federated averaging (McMahan et al., 2017): `base + η_s·Σ nᵢ·Δᵢ / Σ nᵢ`,
/// streamed in one `f64` sum per parameter whatever the number of clients.
pub type FedAvg = Federated<WeightedMean, Sgd>;

impl FedAvg {
    /// Plain FedAvg (η_s = 1, no clipping): an aggregator waiting for [`Aggregator::begin`].
    pub fn new() -> Self {
        Federated::with(WeightedMean::default(), Sgd, 1.0, Hygiene::default())
    }
}

impl Default for FedAvg {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Reducer, O: ServerOptimizer + Clone> Federated<R, O> {
    /// An aggregator of `reducer` and `optimizer` with server learning rate `server_lr`.
    pub fn with(reducer: R, optimizer: O, server_lr: f64, hygiene: Hygiene) -> Self {
        Self {
            reducer,
            optimizer,
            server_lr,
            step_size: StepSize::Fixed,
            hygiene,
            expected: None,
            updates: 0,
            participants: 0,
            weighted_sq_norms: 0.0,
            release: None,
            cohort_expected: 0.0,
            samples: 0,
            rounds: 0,
        }
    }

    /// Sets how η_s is scaled each round (default [`StepSize::Fixed`]).
    pub fn with_step_size(mut self, step_size: StepSize) -> Self {
        self.step_size = step_size;
        self
    }

    /// Folds `delta`, worth `samples`, standing for `participants` clients. `cohort_sq_norm`:
    /// an edge aggregator's aggregate, whose clients' mean squared norm it gives; no hygiene
    /// applies to it (clip and outlier bound are for single updates).
    fn fold_weighted(
        &mut self,
        delta: &ParameterVector,
        samples: u64,
        participants: usize,
        cohort_sq_norm: Option<f64>,
    ) -> Result<Folded, AggregateError> {
        let expected = self.expected.ok_or(AggregateError::NotStarted)?;
        if samples == 0 {
            return Err(AggregateError::ZeroSamples);
        }
        let norm = delta.check_shape_and_norm(expected.fingerprint, expected.len)?;
        let total = self.samples.checked_add(samples).ok_or(AggregateError::SampleOverflow)?;
        let (folded, scale) = match cohort_sq_norm {
            None => self.round_hygiene().inspect(norm),
            Some(_) => (Folded { norm, clipped: false, outlier: false }, 1.0),
        };
        self.reducer.add(&delta.values, scale, samples)?;
        self.samples = total;
        self.updates += 1;
        self.participants += participants;
        let norm = folded.norm * scale;
        self.weighted_sq_norms += samples as f64 * cohort_sq_norm.unwrap_or(norm * norm);
        Ok(folded)
    }

    /// The hygiene of the running round: the strategy's, with the clip and noise of the
    /// differential-privacy release when one is set.
    fn round_hygiene(&self) -> Hygiene {
        match self.release {
            Some(release) => Hygiene {
                clip_norm: release.clip_norm.or(self.hygiene.clip_norm),
                noise_std: release.noise_std,
                ..self.hygiene
            },
            None => self.hygiene,
        }
    }

    /// The server optimiser (and its state).
    pub fn optimizer(&self) -> &O {
        &self.optimizer
    }
}

impl<R: Reducer, O: ServerOptimizer + Clone> Aggregator for Federated<R, O> {
    fn begin(&mut self, base: &ParameterVector) {
        let len = base.values.len();
        self.expected = Some(Expected { fingerprint: base.fingerprint, len });
        self.reducer.begin(len);
        self.updates = 0;
        self.participants = 0;
        self.cohort_expected = 0.0;
        self.weighted_sq_norms = 0.0;
        self.samples = 0;
        self.rounds += 1;
    }

    fn fold(&mut self, delta: &ParameterVector, samples: u64) -> Result<Folded, AggregateError> {
        self.fold_weighted(delta, samples, 1, None)
    }

    fn set_release(&mut self, release: Option<super::DpRelease>) {
        self.release = release.filter(|r| r.denominator.is_none_or(|d| d.is_finite() && d > 0.0));
    }

    fn fold_mean(
        &mut self,
        mean: &ParameterVector,
        samples: u64,
        participants: usize,
    ) -> Result<Folded, AggregateError> {
        self.fold_weighted(mean, samples, participants.max(1), None)
    }

    fn fold_cohort(
        &mut self,
        aggregate: &ParameterVector,
        samples: u64,
        cohort: Cohort,
    ) -> Result<Folded, AggregateError> {
        if !(cohort.mean_sq_norm.is_finite() && cohort.mean_sq_norm >= 0.0) {
            return Err(AggregateError::BadCohort);
        }
        // A root whose denominator is its cohorts' expected sizes needs each one's.
        let expected = match (self.release.map(|r| r.denominator), cohort.expected) {
            (Some(None), Some(e)) if e.is_finite() && e >= 0.0 => e,
            (Some(None), _) => return Err(AggregateError::BadCohort),
            _ => 0.0,
        };
        let participants = usize::try_from(cohort.participants).map_err(|_| AggregateError::SampleOverflow)?.max(1);
        let folded = self.fold_weighted(aggregate, samples, participants, Some(cohort.mean_sq_norm))?;
        self.cohort_expected += expected;
        Ok(folded)
    }

    fn finish_cohort(&mut self) -> Result<(Vec<f32>, Cohort), AggregateError> {
        self.expected.take().ok_or(AggregateError::NotStarted)?;
        if self.updates == 0 {
            return Err(AggregateError::Empty);
        }
        let aggregate: Vec<f32> = self.reducer.reduce()?.into_iter().map(|v| v as f32).collect();
        if let Some(index) = first_non_finite(&aggregate) {
            return Err(AggregateError::ResultNotFinite { index });
        }
        let weight = self.samples as f64;
        let mean_sq_norm = if weight > 0.0 { self.weighted_sq_norms / weight } else { 0.0 };
        let expected = self.release.and_then(|r| r.denominator);
        Ok((aggregate, Cohort { participants: self.participants as u64, mean_sq_norm, expected }))
    }

    fn updates(&self) -> usize {
        self.updates
    }

    fn participants(&self) -> usize {
        self.participants
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
        let mut step = self.reducer.reduce()?;
        let weight = self.samples as f64;
        let mean_sq_norm = if weight > 0.0 { self.weighted_sq_norms / weight } else { 0.0 };
        // The reducer's mean is over the weight folded; with a public denominator d it becomes
        // sum / d, its sensitivity fixed whoever answered.
        let (participants, denominator) = match self.release.map(|r| r.denominator.unwrap_or(self.cohort_expected)) {
            Some(d) if !(d.is_finite() && d > 0.0) => return Err(AggregateError::BadCohort),
            Some(d) => {
                let rescale = weight / d;
                step.iter_mut().for_each(|v| *v *= rescale);
                ((d.round() as usize).max(1), d)
            }
            None => (self.participants, self.updates.max(1) as f64),
        };
        let factor = self.step_size.factor(participants, mean_sq_norm, &step);
        tracing::debug!(step_size = %self.step_size, factor, "server step");
        if let Some(std) = self.round_hygiene().noise_std {
            add_noise_to_mean(&mut step, std, denominator, &self.hygiene.noise_key, self.rounds);
        }
        // A failed round must not move the optimiser's state: step a copy, keep it on success.
        let mut optimizer = self.optimizer.clone();
        optimizer.step(&mut step);
        let values: Vec<f32> = base
            .values
            .iter()
            .zip(&step)
            .map(|(base, step)| (f64::from(*base) + self.server_lr * factor * step) as f32)
            .collect();
        if let Some(index) = first_non_finite(&values) {
            return Err(AggregateError::ResultNotFinite { index });
        }
        self.optimizer = optimizer;
        Ok(ParameterVector { format_version: base.format_version, fingerprint: base.fingerprint, values })
    }
}

/// Adds N(0, (std/n)²) to each coordinate of a mean of `n` updates: the noise of standard
/// deviation `std` on their sum, divided like the sum.
fn add_noise_to_mean(mean: &mut [f64], std: f64, n: f64, key: &crate::privacy::NoiseKey, round: u64) {
    use rand_core::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = chacha20::ChaCha20Rng::from_seed(key.round_seed(round));
    let scale = std / n.max(1.0);
    for value in mean.iter_mut() {
        let z: f64 = rand_distr::StandardNormal.sample(&mut rng);
        *value += scale * z;
    }
}
