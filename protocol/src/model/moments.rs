//! Feature statistics of a fleet's streams, summable across clients and rounds.
//!
//! A client reports, with each plain update, the count, sum and sum of squares of the raw
//! feature values it learnt from since its previous report; the coordinator adds them up and
//! keeps the total in its checkpoint. The served model standardises raw inputs with the
//! pooled mean and (population) standard deviation, as each client standardises its own
//! stream. Sums rather than means and variances, so that any number of reports add in any
//! order.
//!
//! Privacy cost: each report reveals the per-feature mean and second moment of a client's
//! rows since its previous report to the coordinator (not to other clients). That is why
//! clients send none under secure aggregation or differential privacy, where the coordinator
//! must not learn anything of one client beyond what those mechanisms release; the served
//! model then takes its statistics from the coordinator's own held-back rows, if it has any.

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
