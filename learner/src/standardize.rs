//! Online feature standardisation that never peeks at future rows.
//!
//! Each row updates a running mean and variance (Welford's algorithm, in `f64`) and is then
//! standardised with those statistics, which include the row itself but no later one:
//! `z = (x − mean) / std`, `0` where a feature has shown no spread yet, clipped to ±10.
//! This is what the NumPy reference does, so figures compare one to one.

use serde::{Deserialize, Serialize};

/// |z| is clipped to this.
pub const Z_CLIP: f64 = 10.0;

/// Running per-feature mean and variance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineStandardizer {
    count: u64,
    mean: Vec<f64>,
    sum_squares: Vec<f64>,
}

impl OnlineStandardizer {
    /// Statistics for `features` features, having seen nothing.
    pub fn new(features: usize) -> Self {
        Self { count: 0, mean: vec![0.0; features], sum_squares: vec![0.0; features] }
    }

    /// Rows seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Folds `row` into the statistics, then writes its standardised values to `out`.
    /// Writes `row` standardised with the statistics so far to `out`, without folding it in
    /// (a prediction for a row that is not part of the stream).
    pub fn apply(&self, row: &[f32], out: &mut [f32]) {
        let k = self.count.max(1) as f64;
        for (j, (&x, z)) in row.iter().zip(out.iter_mut()).enumerate() {
            let std = (self.sum_squares[j] / k).sqrt();
            *z = if std > 0.0 { ((f64::from(x) - self.mean[j]) / std).clamp(-Z_CLIP, Z_CLIP) as f32 } else { 0.0 };
        }
    }

    /// Folds `row` into the statistics, then writes its standardised values to `out`.
    pub fn standardize(&mut self, row: &[f32], out: &mut [f32]) {
        self.count += 1;
        let k = self.count as f64;
        for (j, (&x, z)) in row.iter().zip(out.iter_mut()).enumerate() {
            let x = f64::from(x);
            let delta = x - self.mean[j];
            self.mean[j] += delta / k;
            self.sum_squares[j] += delta * (x - self.mean[j]);
            let std = (self.sum_squares[j] / k).sqrt();
            *z = if std > 0.0 { ((x - self.mean[j]) / std).clamp(-Z_CLIP, Z_CLIP) as f32 } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_row_is_zero_then_uses_running_statistics() {
        let mut s = OnlineStandardizer::new(2);
        let mut z = [9.0; 2];
        s.standardize(&[3.0, 1.0], &mut z);
        assert_eq!(z, [0.0, 0.0]);
        s.standardize(&[5.0, 1.0], &mut z);
        // mean 4, population std 1: (5 − 4) / 1; the constant feature stays 0.
        assert_eq!(z, [1.0, 0.0]);
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn outliers_are_clipped() {
        let mut s = OnlineStandardizer::new(1);
        let mut z = [0.0];
        for _ in 0..1000 {
            s.standardize(&[0.0], &mut z);
        }
        s.standardize(&[1.0], &mut z);
        s.standardize(&[1e9], &mut z);
        assert!(z[0] <= Z_CLIP as f32 && z[0] > 0.0);
    }
}
