//! Robust reducers that need every delta of the round: coordinate-wise [`Median`] and
//! [`TrimmedMean`] (and [`super::Krum`]).
//!
//! They hold the round's (clipped) deltas in [`HeldUpdates`], up to a cap: memory is
//! `cap × model parameters × 4` bytes, and the update past the cap is refused with
//! [`AggregateError::HeldUpdatesFull`]. They ignore sample weights: every client counts once,
//! so that a client cannot buy influence by claiming many samples.

use super::AggregateError;
use super::Reducer;

/// The deltas of one round, in arrival order, at most `cap` of them.
#[derive(Debug)]
pub struct HeldUpdates {
    cap: usize,
    deltas: Vec<Vec<f32>>,
}

impl HeldUpdates {
    /// Storage for at most `cap` deltas per round.
    pub fn new(cap: usize) -> Self {
        Self { cap, deltas: Vec::new() }
    }

    /// Drops the held deltas.
    pub fn clear(&mut self) {
        self.deltas = Vec::new();
    }

    /// Holds `values × scale`, or refuses it when the cap is reached.
    pub fn push(&mut self, values: &[f32], scale: f64) -> Result<(), AggregateError> {
        if self.deltas.len() >= self.cap {
            return Err(AggregateError::HeldUpdatesFull { cap: self.cap });
        }
        let delta = if scale == 1.0 {
            values.to_vec()
        } else {
            values.iter().map(|v| (f64::from(*v) * scale) as f32).collect()
        };
        self.deltas.push(delta);
        Ok(())
    }

    /// The held deltas, leaving none.
    pub fn take(&mut self) -> Vec<Vec<f32>> {
        std::mem::take(&mut self.deltas)
    }
}

/// A reducer that holds every delta of the round and reduces them all at its end; its
/// [`Reducer`] methods (clear on `begin`, hold on `add`, take on `reduce`) come from here.
pub trait HoldingReducer {
    /// Where the round's deltas are held.
    fn held(&mut self) -> &mut HeldUpdates;

    /// Reduces the round's held (already scaled) deltas to the pseudo-gradient.
    fn reduce_held(&mut self, deltas: Vec<Vec<f32>>) -> Result<Vec<f64>, AggregateError>;
}

impl<T: HoldingReducer> Reducer for T {
    fn begin(&mut self, _len: usize) {
        self.held().clear();
    }

    fn add(&mut self, values: &[f32], scale: f64, _samples: u64) -> Result<(), AggregateError> {
        self.held().push(values, scale)
    }

    fn reduce(&mut self) -> Result<Vec<f64>, AggregateError> {
        let deltas = self.held().take();
        self.reduce_held(deltas)
    }
}

/// Applies `reduce` to the sorted values of each coordinate across `deltas` (at least one).
fn per_coordinate(deltas: &[Vec<f32>], reduce: impl Fn(&[f32]) -> f64) -> Result<Vec<f64>, AggregateError> {
    let len = deltas.first().ok_or(AggregateError::Empty)?.len();
    let mut column = Vec::with_capacity(deltas.len());
    Ok((0..len)
        .map(|i| {
            column.clear();
            column.extend(deltas.iter().map(|delta| delta[i]));
            column.sort_unstable_by(f32::total_cmp);
            reduce(&column)
        })
        .collect())
}

/// Coordinate-wise median (the mean of the two middle values when their number is even).
/// Ignores sample weights.
#[derive(Debug)]
pub struct Median {
    held: HeldUpdates,
}

impl Median {
    /// A median over at most `max_held_updates` deltas per round.
    pub fn new(max_held_updates: usize) -> Self {
        Self { held: HeldUpdates::new(max_held_updates) }
    }
}

impl HoldingReducer for Median {
    fn held(&mut self) -> &mut HeldUpdates {
        &mut self.held
    }

    fn reduce_held(&mut self, deltas: Vec<Vec<f32>>) -> Result<Vec<f64>, AggregateError> {
        per_coordinate(&deltas, |sorted| {
            let n = sorted.len();
            if n % 2 == 1 {
                f64::from(sorted[n / 2])
            } else {
                (f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0
            }
        })
    }
}

/// Coordinate-wise trimmed mean: with n deltas, drops the ⌊β·n⌋ smallest and the ⌊β·n⌋
/// largest values of each coordinate and averages the rest (β < 1/2 leaves at least one).
/// Ignores sample weights.
#[derive(Debug)]
pub struct TrimmedMean {
    held: HeldUpdates,
    trim_fraction: f64,
}

impl TrimmedMean {
    /// A trimmed mean with trim fraction β in [0, 1/2) over at most `max_held_updates` deltas.
    pub fn new(trim_fraction: f64, max_held_updates: usize) -> Self {
        Self { held: HeldUpdates::new(max_held_updates), trim_fraction }
    }
}

impl HoldingReducer for TrimmedMean {
    fn held(&mut self) -> &mut HeldUpdates {
        &mut self.held
    }

    fn reduce_held(&mut self, deltas: Vec<Vec<f32>>) -> Result<Vec<f64>, AggregateError> {
        let n = deltas.len();
        // At most (n − 1)/2 on each side, so at least one value remains even if β ≥ 1/2.
        let trim = ((self.trim_fraction * n as f64).floor() as usize).min(n.saturating_sub(1) / 2);
        per_coordinate(&deltas, |sorted| {
            let kept = &sorted[trim..n - trim];
            kept.iter().map(|v| f64::from(*v)).sum::<f64>() / kept.len() as f64
        })
    }
}

#[cfg(test)]
mod tests;
