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

#[cfg(test)]
mod tests {
    use super::*;

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
