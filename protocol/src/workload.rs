//! The `fleet-round` benchmark workload: a model and client updates defined by formula, so
//! that round times compare across federated-learning systems.
//!
//! - `splitmix64(x)`: z = x + 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) · 0xBF58476D1CE4E5B9;
//!   z = (z ^ (z >> 27)) · 0x94D049BB133111EB; z ^ (z >> 31), all wrapping mod 2^64.
//! - `noise(seed, P)[j] = f32(splitmix64(splitmix64(seed) + j) >> 40) · 2^-23 − 1`, uniform in
//!   [−1, 1) and exact in `f32`.
//! - The model is one vector of P parameters, initially `noise(0x5EED, P)`. In round r
//!   (1-based, the warm-up round is round 1) client c (0-based) returns
//!   `params + f32(0.001) · noise((r << 32) | (c + 1), P)` with 100 samples, and the
//!   coordinator averages (FedAvg).
//!
//! A Flotilla client sends deltas, so [`client_delta`] is the `f32(0.001) · noise(…)` part;
//! [`reference`] computes the expected final model in `f64` (each round adds the mean of the
//! clients' steps) to check a run's result against.

use serde::{Deserialize, Serialize};

/// Seed of the initial model.
pub const INITIAL_SEED: u64 = 0x5EED;
/// Samples each client reports (every client weighs the same in FedAvg).
pub const SAMPLES: u64 = 100;
/// Size of a client's step.
pub const STEP: f32 = 0.001;

/// The splitmix64 mixer (Steele, Lea & Flood 2014).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One value of `noise(seed, ·)` at counter `mixed_seed + j`, where `mixed_seed = splitmix64(seed)`.
#[inline(always)]
fn noise_at(counter: u64) -> f32 {
    // 24 bits are exact in f32, and so are the scaling by 2^-23 and the subtraction.
    (splitmix64(counter) >> 40) as f32 * (1.0 / 8_388_608.0) - 1.0
}

/// `noise(seed, len)`, in one vectorised pass (see [`crate::kernels`]).
pub fn noise(seed: u64, len: usize) -> Vec<f32> {
    crate::kernels::from_counter(len, splitmix64(seed), noise_at)
}

/// The initial model, `noise(0x5EED, len)`.
pub fn initial_model(len: usize) -> Vec<f32> {
    noise(INITIAL_SEED, len)
}

/// The seed of client `client`'s step in round `round`: `(round << 32) | (client + 1)`.
pub fn client_seed(round: u64, client: u64) -> u64 {
    (round << 32) | (client + 1)
}

/// What client `client` adds to the model in `round`: `f32(0.001) · noise(client_seed, len)`.
pub fn client_delta(round: u64, client: u64, len: usize) -> Vec<f32> {
    // The same f32 operations per value as scaling `noise(…)`, in one pass.
    crate::kernels::from_counter(len, splitmix64(client_seed(round, client)), |counter| noise_at(counter) * STEP)
}

/// Summary figures of a model, computed in `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Sum of the parameters.
    pub sum: f64,
    /// Euclidean norm of the parameters.
    pub l2: f64,
    /// The first parameter.
    pub first: f64,
    /// The last parameter.
    pub last: f64,
}

impl ModelSummary {
    /// The summary of `values` (zeros for an empty vector).
    pub fn of<T: Copy + Into<f64>>(values: &[T]) -> Self {
        let (sum, squares) = values.iter().fold((0.0, 0.0), |(s, q), v| {
            let v: f64 = (*v).into();
            (s + v, q + v * v)
        });
        let at = |i: Option<&T>| i.map_or(0.0, |v| (*v).into());
        Self { sum, l2: f64::sqrt(squares), first: at(values.first()), last: at(values.last()) }
    }

    /// The largest relative difference of the four figures (each relative to `reference`'s
    /// magnitude, or absolute below 1e-12).
    pub fn max_relative_difference(&self, reference: &ModelSummary) -> f64 {
        let pairs = [
            (self.sum, reference.sum),
            (self.l2, reference.l2),
            (self.first, reference.first),
            (self.last, reference.last),
        ];
        pairs.iter().map(|(a, b)| (a - b).abs() / b.abs().max(1e-12)).fold(0.0, f64::max)
    }
}

/// The expected final model after `rounds` rounds of `clients` clients (all taking part in
/// every round), computed in `f64`: each round adds the mean of the clients' steps.
pub fn reference(len: usize, clients: u64, rounds: u64) -> ModelSummary {
    reference_of_rounds(len, clients, 1..=rounds)
}

/// [`reference`] over the rounds that committed, by number (a run whose first rounds failed
/// commits rounds 2, 3, … and its clients' steps are those of these rounds).
pub fn reference_of_rounds(len: usize, clients: u64, rounds: impl IntoIterator<Item = u64>) -> ModelSummary {
    let mut model: Vec<f64> = initial_model(len).into_iter().map(f64::from).collect();
    let mut sum = vec![0.0f64; len];
    for round in rounds {
        sum.iter_mut().for_each(|s| *s = 0.0);
        for client in 0..clients {
            crate::kernels::add_weighted(&mut sum, &noise(client_seed(round, client), len), 1.0);
        }
        let scale = f64::from(STEP) / clients as f64;
        model.iter_mut().zip(&sum).for_each(|(m, s)| *m += s * scale);
    }
    ModelSummary::of(&model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // The reference generator's first outputs from state 0 (state advances by the
        // golden gamma before mixing): splitmix64(0), splitmix64(γ), …
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(0x3C6E_F372_FE94_F82A), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn noise_is_uniform_in_the_half_open_interval_and_exact() {
        let values = noise(INITIAL_SEED, 100_000);
        assert!(values.iter().all(|v| (-1.0..1.0).contains(v)));
        let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        // Every value is a multiple of 2^-23: exact in f32.
        assert!(values.iter().all(|v| (f64::from(*v) * 8_388_608.0).fract() == 0.0));
        assert_eq!(noise(INITIAL_SEED, 10)[..], values[..10]);
    }

    #[test]
    fn a_client_delta_is_its_noise_times_the_step_bit_for_bit() {
        let delta = client_delta(3, 7, 1_000);
        let scaled: Vec<f32> = noise(client_seed(3, 7), 1_000).iter().map(|v| v * STEP).collect();
        assert_eq!(
            delta.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            scaled.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(delta.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn reference_of_one_client_is_the_model_plus_its_steps() {
        let len = 1000;
        let mut model = initial_model(len);
        for round in 1..=3 {
            let delta = client_delta(round, 0, len);
            model.iter_mut().zip(&delta).for_each(|(m, d)| *m += d);
        }
        let expected = reference(len, 1, 3);
        assert!(ModelSummary::of(&model).max_relative_difference(&expected) < 1e-5);
        assert_eq!(reference(len, 4, 0), ModelSummary::of(&initial_model(len)));
    }
}
