//! Krum and Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine
//! Tolerant Gradient Descent", NeurIPS 2017).

use super::AggregateError;
use super::robust::{HeldUpdates, HoldingReducer};

/// Krum: with n deltas of which at most f are Byzantine, each delta's score is the sum of its
/// squared distances to its n − f − 2 nearest others; Krum keeps the best-scored delta,
/// Multi-Krum averages the m best (ties go to the earlier arrival). Needs n > 2f + 2; ignores
/// sample weights. Holds the round's deltas like the other robust reducers, and computes the
/// n² distances at the end of the round (time O(n² × model)).
#[derive(Debug)]
pub struct Krum {
    held: HeldUpdates,
    byzantine: usize,
    select: Option<usize>,
}

impl Krum {
    /// Krum (`select = Some(1)`) or Multi-Krum averaging `select` deltas (`None`: n − f),
    /// assuming `byzantine` Byzantine clients, over at most `max_held_updates` deltas.
    pub fn new(byzantine: usize, select: Option<usize>, max_held_updates: usize) -> Self {
        Self { held: HeldUpdates::new(max_held_updates), byzantine, select }
    }
}

impl HoldingReducer for Krum {
    fn held(&mut self) -> &mut HeldUpdates {
        &mut self.held
    }

    fn reduce_held(&mut self, deltas: Vec<Vec<f32>>) -> Result<Vec<f64>, AggregateError> {
        let (n, f) = (deltas.len(), self.byzantine);
        if n <= 2 * f + 2 {
            return Err(AggregateError::TooFewForKrum { updates: n, byzantine: f });
        }
        let select = self.select.unwrap_or(n - f);
        if select == 0 || select > n - f {
            return Err(AggregateError::TooManyToSelect { select, updates: n, byzantine: f });
        }
        let mut distances = vec![vec![0.0f64; n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let d: f64 =
                    deltas[i].iter().zip(&deltas[j]).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
                distances[i][j] = d;
                distances[j][i] = d;
            }
        }
        let nearest = n - f - 2;
        let scores: Vec<f64> = (0..n)
            .map(|i| {
                let mut others: Vec<f64> = (0..n).filter(|j| *j != i).map(|j| distances[i][j]).collect();
                others.sort_unstable_by(f64::total_cmp);
                others[..nearest].iter().sum()
            })
            .collect();
        let mut ranked: Vec<usize> = (0..n).collect();
        ranked.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b)));
        let len = deltas[0].len();
        let mut mean = vec![0.0f64; len];
        for index in &ranked[..select] {
            for (sum, value) in mean.iter_mut().zip(&deltas[*index]) {
                *sum += f64::from(*value);
            }
        }
        mean.iter_mut().for_each(|sum| *sum /= select as f64);
        Ok(mean)
    }
}
