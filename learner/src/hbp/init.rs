//! Glorot-uniform initialisation drawn exactly as NumPy's legacy `RandomState` draws it.
//!
//! The reference implementation in `../shared/reference/hbp_numpy.py` initialises with
//! `RandomState(seed).uniform(-r, r, size=(i, o))`, `r = sqrt(6 / (i + o))`, hidden layers
//! first, then the heads. Drawing the same Mersenne Twister stream (MT19937 seeded with
//! `init_genrand`, doubles from two 32-bit words as in `genrand_res53`) gives this crate the
//! very same initial weights for a given seed, so its figures can be cross-checked against
//! the reference's sample by sample.

use rand_mt::Mt;

/// A stream of uniform doubles identical to `numpy.random.RandomState(seed)`.
pub struct NumpyUniform {
    twister: Mt,
}

impl NumpyUniform {
    /// The stream of `RandomState(seed)`.
    pub fn new(seed: u32) -> Self {
        Self { twister: Mt::new(seed) }
    }

    /// The next double in `[0, 1)` (`random_sample()`).
    pub fn next_unit(&mut self) -> f64 {
        let high = f64::from(self.twister.next_u32() >> 5);
        let low = f64::from(self.twister.next_u32() >> 6);
        (high * 67_108_864.0 + low) / 9_007_199_254_740_992.0
    }

    /// `rows × cols` Glorot-uniform weights, row-major, as `uniform(-r, r, (rows, cols))`.
    pub fn glorot(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let bound = (6.0 / (rows + cols) as f64).sqrt();
        (0..rows * cols).map(|_| (-bound + 2.0 * bound * self.next_unit()) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_random_state() {
        // python3 -c "import numpy as np; r=np.random.RandomState(0);
        //             print(r.random_sample(), r.uniform(-2, 3))"
        let mut stream = NumpyUniform::new(0);
        assert_eq!(stream.next_unit(), 0.548_813_503_927_324_8);
        assert_eq!(-2.0 + 5.0 * stream.next_unit(), 1.575_946_831_862_097_5);
    }

    #[test]
    fn glorot_stays_within_its_bound() {
        let weights = NumpyUniform::new(7).glorot(10, 5);
        let bound = (6.0f32 / 15.0).sqrt();
        assert_eq!(weights.len(), 50);
        assert!(weights.iter().all(|w| w.abs() <= bound));
    }
}
