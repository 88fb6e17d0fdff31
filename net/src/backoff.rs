//! Reconnection delays: exponential backoff with jitter.

use std::hash::BuildHasher;
use std::time::Duration;

/// Exponential backoff: `initial`, doubling per failed attempt up to `max`, each delay
/// spread by ±`jitter` (a fraction) so that a fleet does not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    /// Relative spread in [0, 1): 0.25 draws each delay in ±25 % of the nominal one.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 0.2 s doubling to 10 s, ±25 %.
    fn default() -> Self {
        Self { initial: Duration::from_millis(200), max: Duration::from_secs(10), jitter: 0.25 }
    }
}

impl Backoff {
    /// Nominal delay before retry number `attempt` (0-based), without jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry `attempt`, with `unit` in [0, 1) choosing where in the jitter
    /// band it falls (0.5 is the nominal delay).
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let jitter = self.jitter.clamp(0.0, 0.99);
        let scale = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        self.nominal(attempt).mul_f64(scale)
    }

    /// The delay before retry `attempt`, with random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let random = std::hash::RandomState::new().hash_one(attempt);
        self.delay_with(attempt, (random >> 11) as f64 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff::default();
        let nominal: Vec<u128> = (0..8).map(|a| backoff.nominal(a).as_millis()).collect();
        assert_eq!(nominal, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay_with(0, 0.0), Duration::from_millis(150));
        assert_eq!(backoff.delay_with(0, 0.5), Duration::from_millis(200));
        assert_eq!(backoff.delay_with(0, 1.0), Duration::from_millis(250));
        for attempt in 0..20 {
            let delay = backoff.delay(attempt).as_secs_f64();
            let nominal = backoff.nominal(attempt).as_secs_f64();
            assert!(delay >= nominal * 0.75 - 1e-9 && delay <= nominal * 1.25 + 1e-9, "{attempt}: {delay}");
        }
    }
}
