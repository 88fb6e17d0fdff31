//! Deterministic client sampling.

use rand_mt::Mt64;

use super::ConnectionId;

/// Picks `count` of `candidates` (sorted, distinct) uniformly, reproducibly from
/// `seed` and `round`: the same inputs always give the same sample, also after a resume.
pub(crate) fn sample(candidates: &[ConnectionId], count: usize, seed: u64, round: u64) -> Vec<ConnectionId> {
    let mut rng = Mt64::new(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut pool = candidates.to_vec();
    let count = count.min(pool.len());
    for i in 0..count {
        let remaining = (pool.len() - i) as u64;
        // Multiply-shift maps a 64-bit draw onto 0..remaining with negligible bias.
        let offset = ((u128::from(rng.next_u64()) * u128::from(remaining)) >> 64) as usize;
        pool.swap(i, i + offset);
    }
    pool.truncate(count);
    pool.sort();
    pool
}

/// Poisson sampling: each candidate independently with probability `q`, with coins from a
/// generator keyed by the coordinator's secret (nobody can predict who is sampled). This is
/// the sampling the RDP accountant's subsampled-Gaussian bound assumes, at rate exactly `q`.
pub(crate) fn poisson(
    candidates: &[ConnectionId],
    q: f64,
    key: &crate::privacy::NoiseKey,
    round: u64,
) -> Vec<ConnectionId> {
    use rand_core::{Rng, SeedableRng};
    let mut rng = chacha20::ChaCha20Rng::from_seed(key.derive(b"poisson sampling", round));
    candidates
        .iter()
        .copied()
        .filter(|_| {
            // A uniform draw in [0, 1) from the top 53 bits.
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            u < q
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_sampling_is_keyed_independent_and_at_rate_q() {
        use crate::privacy::NoiseKey;
        let candidates = ids(10_000);
        let (a, b) = (NoiseKey([1; 32]), NoiseKey([2; 32]));
        let first = poisson(&candidates, 0.1, &a, 1);
        assert_eq!(first, poisson(&candidates, 0.1, &a, 1), "deterministic given the secret");
        assert_ne!(first, poisson(&candidates, 0.1, &b, 1), "another secret, another sample");
        assert_ne!(first, poisson(&candidates, 0.1, &a, 2), "another round, another sample");
        // Binomial(10,000, 0.1): mean 1,000, sd 30.
        assert!((900..=1100).contains(&first.len()), "{}", first.len());
        assert_eq!(poisson(&candidates, 1.0, &a, 1).len(), 10_000);
        assert!(poisson(&candidates, 0.0, &a, 1).is_empty());
    }

    fn ids(n: u64) -> Vec<ConnectionId> {
        (0..n).map(ConnectionId).collect()
    }

    #[test]
    fn sampling_is_deterministic_distinct_and_bounded() {
        let first = sample(&ids(10), 4, 42, 3);
        assert_eq!(first, sample(&ids(10), 4, 42, 3));
        assert_eq!(first.len(), 4);
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sample(&ids(3), 5, 42, 3), ids(3));
        let rounds: Vec<_> = (1..20).map(|round| sample(&ids(10), 4, 42, round)).collect();
        assert!(rounds.iter().any(|s| *s != first), "the sample changes across rounds");
    }
}
