//! Feature statistics of a fleet's streams, summable across clients and rounds.
//!
//! A client reports, with each plain update, the count, sum and sum of squares of the raw
//! feature values it learnt from since its previous report; the coordinator adds them up and
//! keeps the total in its checkpoint. The served model standardises raw inputs with the
//! pooled mean and (population) standard deviation, as each client standardises its own
//! stream. Sums rather than means and variances, so that any number of reports add in any
//! order.
//!
//! Privacy cost: each plain report reveals the per-feature mean and second moment of a client's
//! rows since its previous report to the coordinator (not to other clients). Under secure
//! aggregation the statistics travel inside the masked vector ([`FeatureMoments::to_secure_words`]),
//! so the coordinator learns only their sum over the round's survivors, as it learns only the
//! sum of their updates. Under differential privacy clients send none (the noise covers the
//! updates, not the statistics); the served model then takes its statistics from the
//! coordinator's own held-back rows, if it has any.
//!
//! The masked encoding: every value (the count, then each feature's sum, then each sum of
//! squares) as a two's-complement 128-bit fixed-point integer with [`SECURE_FRACTION_BITS`]
//! fraction bits, cut into eight 16-bit limbs, one limb per 32-bit word. Sums of up to
//! [`SECURE_MAX_SUMMANDS`] such words cannot wrap, so the masked sum of the words decodes to
//! the sum of the values exactly (to 2^-32 per value and client).

use serde::{Deserialize, Serialize};

use crate::wire::bounded;

/// Count, sum and sum of squares of every feature over some rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureMoments {
    /// Rows counted.
    pub count: u64,
    /// Per-feature sum of the values.
    #[serde(with = "bounded::features")]
    pub sum: Vec<f64>,
    /// Per-feature sum of the squared values.
    #[serde(with = "bounded::features")]
    pub sum_squares: Vec<f64>,
}

/// Fraction bits of the masked encoding's fixed point.
pub const SECURE_FRACTION_BITS: u32 = 32;
/// `2^SECURE_FRACTION_BITS`.
const SECURE_SCALE: f64 = (1u64 << SECURE_FRACTION_BITS) as f64;
/// 32-bit words per value in the masked encoding (eight 16-bit limbs of 128 bits).
pub const SECURE_WORDS_PER_VALUE: usize = 8;
/// The most encodings whose word-wise sum decodes exactly (`2^16`: a limb sum stays below 2^32).
pub const SECURE_MAX_SUMMANDS: usize = 1 << 16;
/// The largest magnitude one value may have in the masked encoding (2^78 ≈ 3·10^23: the sum of
/// [`SECURE_MAX_SUMMANDS`] of them, scaled by 2^32, stays inside a signed 128-bit integer).
const SECURE_MAX_VALUE: f64 = (1u128 << 78) as f64;

/// Words of the masked encoding of statistics over `features` features.
pub fn secure_words(features: usize) -> usize {
    SECURE_WORDS_PER_VALUE * (1 + 2 * features)
}

/// Why moments were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MomentsError {
    /// The vectors do not have one entry per feature of the model.
    #[error("feature statistics for {found} features, the model has {expected}")]
    Features {
        /// Features of the model.
        expected: usize,
        /// Entries sent.
        found: usize,
    },
    /// A sum is NaN or infinite, or a sum of squares is negative.
    #[error("feature statistics with a non-finite or negative value")]
    NotFinite,
    /// No rows behind them.
    #[error("feature statistics over zero rows")]
    Empty,
    /// A value too large for the masked encoding, or a masked sum of another length or over
    /// too many clients.
    #[error("feature statistics do not fit the masked encoding: {0}")]
    Encoding(&'static str),
}

impl FeatureMoments {
    /// Statistics of no rows, over `features` features.
    pub fn new(features: usize) -> Self {
        Self { count: 0, sum: vec![0.0; features], sum_squares: vec![0.0; features] }
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.sum.len()
    }

    /// Counts one row (the caller checks its length).
    pub fn add_row(&mut self, row: &[f32]) {
        self.count += 1;
        for ((s, q), &x) in self.sum.iter_mut().zip(&mut self.sum_squares).zip(row) {
            let x = f64::from(x);
            *s += x;
            *q += x * x;
        }
    }

    /// The same rows' statistics scaled to `count` rows (the mean and second moment kept),
    /// for a sample claim scaled down to the coordinator's cap; unchanged if already at most.
    pub fn scaled_to(&self, count: u64) -> FeatureMoments {
        if self.count <= count {
            return self.clone();
        }
        let factor = count as f64 / self.count as f64;
        FeatureMoments {
            count,
            sum: self.sum.iter().map(|s| s * factor).collect(),
            sum_squares: self.sum_squares.iter().map(|q| q * factor).collect(),
        }
    }

    /// Adds `other` (checked to be for the same features) to these.
    pub fn merge(&mut self, other: &FeatureMoments) -> Result<(), MomentsError> {
        other.check(self.features())?;
        self.count = self.count.saturating_add(other.count);
        self.sum.iter_mut().zip(&other.sum).for_each(|(a, b)| *a += b);
        self.sum_squares.iter_mut().zip(&other.sum_squares).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Checks what a peer sent: `features` entries each, finite, non-negative squares, rows.
    pub fn check(&self, features: usize) -> Result<(), MomentsError> {
        if self.sum.len() != features || self.sum_squares.len() != features {
            return Err(MomentsError::Features {
                expected: features,
                found: self.sum.len().max(self.sum_squares.len()),
            });
        }
        if self.count == 0 {
            return Err(MomentsError::Empty);
        }
        if self.sum.iter().any(|v| !v.is_finite()) || self.sum_squares.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(MomentsError::NotFinite);
        }
        Ok(())
    }

    /// The masked encoding of these statistics ([`secure_words`] words; see the module docs).
    pub fn to_secure_words(&self) -> Result<Vec<u32>, MomentsError> {
        let values =
            std::iter::once(self.count as f64).chain(self.sum.iter().copied()).chain(self.sum_squares.iter().copied());
        let mut words = Vec::with_capacity(secure_words(self.features()));
        for value in values {
            if !value.is_finite() {
                return Err(MomentsError::NotFinite);
            }
            if value.abs() > SECURE_MAX_VALUE {
                return Err(MomentsError::Encoding("a value above 2^78"));
            }
            // In range: |value · 2^32| ≤ 2^110.
            let fixed = (value * SECURE_SCALE).round() as i128 as u128;
            words.extend((0..SECURE_WORDS_PER_VALUE).map(|limb| ((fixed >> (16 * limb)) & 0xFFFF) as u32));
        }
        Ok(words)
    }

    /// The statistics whose masked encodings, from `summands` clients, summed word by word
    /// (wrapping) to `words`; checked as a peer's statistics are.
    pub fn from_secure_sum(words: &[u32], features: usize, summands: usize) -> Result<Self, MomentsError> {
        if words.len() != secure_words(features) {
            return Err(MomentsError::Encoding("a masked sum of another length"));
        }
        if summands > SECURE_MAX_SUMMANDS {
            return Err(MomentsError::Encoding("more than 2^16 clients in one sum"));
        }
        let mut values = words.chunks_exact(SECURE_WORDS_PER_VALUE).map(|limbs| {
            let fixed = limbs
                .iter()
                .enumerate()
                .fold(0u128, |total, (limb, &word)| total.wrapping_add(u128::from(word) << (16 * limb)));
            fixed as i128 as f64 / SECURE_SCALE
        });
        let count = values.next().unwrap_or(0.0);
        let sum: Vec<f64> = values.by_ref().take(features).collect();
        let sum_squares: Vec<f64> = values.collect();
        if !(0.0..=u64::MAX as f64).contains(&count) {
            return Err(MomentsError::NotFinite);
        }
        let moments = Self { count: count.round() as u64, sum, sum_squares };
        moments.check(features)?;
        Ok(moments)
    }

    /// Per-feature mean and population standard deviation (zero where the rows show no
    /// spread); `None` over zero rows.
    pub fn mean_std(&self) -> Option<(Vec<f64>, Vec<f64>)> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self
            .sum_squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let variance = (q / n - m * m).max(0.0);
                // Cancellation leaves a relative residue of ~1e-12 on a constant feature.
                if variance <= 1e-12 * (q / n).max(f64::MIN_POSITIVE) { 0.0 } else { variance.sqrt() }
            })
            .collect();
        Some((mean, std))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three clients' statistics (negative sums, large squares), each encoded, masked with
    /// random words that cancel across clients, summed with wrapping: the sum decodes to the
    /// merged statistics; bad sums are refused.
    #[test]
    fn masked_encodings_sum_to_the_merged_statistics() {
        let clients: Vec<FeatureMoments> =
            [vec![[-3.5f32, 1e6], [2.25, -4e5]], vec![[0.0, 123_456.78]], vec![[-1e-3, 9.0], [7.0, 8.0], [1e4, -1e4]]]
                .iter()
                .map(|rows| {
                    let mut moments = FeatureMoments::new(2);
                    rows.iter().for_each(|row| moments.add_row(row));
                    moments
                })
                .collect();
        let len = secure_words(2);
        let mut state = 7u64;
        let masks: Vec<Vec<u32>> = (0..2)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        state = crate::workload::splitmix64(state);
                        state as u32
                    })
                    .collect()
            })
            .collect();
        let mut sum = vec![0u32; len];
        for (i, client) in clients.iter().enumerate() {
            let words = client.to_secure_words().unwrap();
            assert_eq!(words.len(), len);
            for (j, word) in words.iter().enumerate() {
                // Client 0 adds mask 0, client 1 subtracts it and adds mask 1, client 2
                // subtracts mask 1.
                let masked = match i {
                    0 => word.wrapping_add(masks[0][j]),
                    1 => word.wrapping_sub(masks[0][j]).wrapping_add(masks[1][j]),
                    _ => word.wrapping_sub(masks[1][j]),
                };
                sum[j] = sum[j].wrapping_add(masked);
            }
        }
        let decoded = FeatureMoments::from_secure_sum(&sum, 2, 3).unwrap();
        let mut expected = FeatureMoments::new(2);
        clients.iter().for_each(|c| expected.merge(c).unwrap());
        assert_eq!(decoded.count, 6);
        for (a, b) in
            decoded.sum.iter().chain(&decoded.sum_squares).zip(expected.sum.iter().chain(&expected.sum_squares))
        {
            assert!((a - b).abs() <= 3e-9 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert!(matches!(FeatureMoments::from_secure_sum(&sum[1..], 2, 3), Err(MomentsError::Encoding(_))));
        assert!(matches!(
            FeatureMoments::from_secure_sum(&sum, 2, SECURE_MAX_SUMMANDS + 1),
            Err(MomentsError::Encoding(_))
        ));
        assert!(matches!(FeatureMoments::from_secure_sum(&vec![0; len], 2, 3), Err(MomentsError::Empty)));
        let huge = FeatureMoments { count: 1, sum: vec![1e30, 0.0], sum_squares: vec![0.0, 0.0] };
        assert!(matches!(huge.to_secure_words(), Err(MomentsError::Encoding(_))));
    }

    #[test]
    fn sums_add_up_in_any_order_and_give_the_pooled_mean_and_std() {
        let rows = [[1.0f32, 5.0], [3.0, 5.0], [2.0, 5.0], [6.0, 5.0]];
        let mut whole = FeatureMoments::new(2);
        rows.iter().for_each(|r| whole.add_row(r));
        let (mut a, mut b) = (FeatureMoments::new(2), FeatureMoments::new(2));
        rows[..1].iter().for_each(|r| a.add_row(r));
        rows[1..].iter().for_each(|r| b.add_row(r));
        let mut pooled = FeatureMoments::new(2);
        pooled.merge(&b).unwrap();
        pooled.merge(&a).unwrap();
        assert_eq!(pooled, whole);
        let (mean, std) = pooled.mean_std().unwrap();
        assert_eq!(mean, vec![3.0, 5.0]);
        assert!((std[0] - 3.5f64.sqrt()).abs() < 1e-12, "{std:?}");
        assert_eq!(std[1], 0.0, "a constant feature has no spread");
        assert!(FeatureMoments::new(2).mean_std().is_none());
        let half = pooled.scaled_to(2);
        assert_eq!(half.count, 2);
        assert_eq!(half.mean_std(), pooled.mean_std());
        assert_eq!(pooled.scaled_to(10), pooled);
    }

    #[test]
    fn bad_reports_are_refused() {
        let mut good = FeatureMoments::new(2);
        good.add_row(&[1.0, 2.0]);
        assert!(matches!(good.check(3), Err(MomentsError::Features { expected: 3, found: 2 })));
        assert_eq!(FeatureMoments::new(2).check(2), Err(MomentsError::Empty));
        let nan = FeatureMoments { sum: vec![f64::NAN, 0.0], ..good.clone() };
        assert_eq!(nan.check(2), Err(MomentsError::NotFinite));
        let negative = FeatureMoments { sum_squares: vec![-1.0, 0.0], ..good.clone() };
        assert_eq!(negative.check(2), Err(MomentsError::NotFinite));
        let mut total = FeatureMoments::new(2);
        assert!(total.merge(&nan).is_err());
        assert_eq!(total.count, 0, "a refused report changes nothing");
    }
}
