//! The streaming, sample-weighted mean of the round's deltas.

use super::{AggregateError, Reducer};

/// `Δ = Σ nᵢ·sᵢ·Δᵢ / Σ nᵢ` (nᵢ samples, sᵢ the clipping scale), kept as one `f64` running sum
/// per parameter: memory O(model), not O(clients × model).
#[derive(Debug, Default)]
pub struct WeightedMean {
    weighted_sum: Vec<f64>,
    total: f64,
}

impl Reducer for WeightedMean {
    fn begin(&mut self, len: usize) {
        self.weighted_sum.clear();
        self.weighted_sum.resize(len, 0.0);
        self.total = 0.0;
    }

    fn add(&mut self, values: &[f32], scale: f64, samples: u64) -> Result<(), AggregateError> {
        let samples = samples as f64;
        crate::kernels::add_weighted(&mut self.weighted_sum, values, samples * scale);
        self.total += samples;
        Ok(())
    }

    fn reduce(&mut self) -> Result<Vec<f64>, AggregateError> {
        if self.total <= 0.0 {
            return Err(AggregateError::Empty);
        }
        let total = self.total;
        let mut mean = std::mem::take(&mut self.weighted_sum);
        mean.iter_mut().for_each(|sum| *sum /= total);
        self.total = 0.0;
        Ok(mean)
    }
}
