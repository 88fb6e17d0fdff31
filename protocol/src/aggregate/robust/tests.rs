//! Median, trimmed mean and Krum with one wild update, and the held-updates cap.

use crate::aggregate::{AggregateError, Aggregator, Federated, Hygiene, Krum, Reducer, Sgd};
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};

use super::*;

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(7), values }
}

/// Folds `deltas` (with their samples) into `reducer` from a zero base; the next model.
fn aggregate<R: Reducer>(reducer: R, deltas: &[(Vec<f32>, u64)]) -> Result<Vec<f32>, AggregateError> {
    let mut aggregator = Federated::with(reducer, Sgd, 1.0, Hygiene::default());
    let base = vector(vec![0.0; deltas[0].0.len()]);
    aggregator.begin(&base);
    for (delta, samples) in deltas {
        aggregator.fold(&vector(delta.clone()), *samples)?;
    }
    aggregator.finish(&base).map(|next| next.values)
}

#[test]
fn median_ignores_one_wild_update_and_the_sample_counts() {
    let deltas = [(vec![1.0, 2.0], 1), (vec![2.0, 3.0], 1), (vec![3.0, 1.0], 1), (vec![1000.0, -1000.0], 1_000_000)];
    // x: 1 2 3 1000 → (2 + 3)/2; y: −1000 1 2 3 → (1 + 2)/2.
    assert_eq!(aggregate(Median::new(8), &deltas).unwrap(), vec![2.5, 1.5]);
    assert_eq!(aggregate(Median::new(8), &deltas[1..]).unwrap(), vec![3.0, 1.0]);
}

#[test]
fn trimmed_mean_drops_the_extremes_of_each_coordinate() {
    let deltas = [
        (vec![1.0, 0.0], 1),
        (vec![2.0, 0.0], 1),
        (vec![3.0, 0.0], 1),
        (vec![4.0, 0.0], 1),
        (vec![1000.0, -1000.0], 9),
    ];
    // β = 0.2, n = 5: one value dropped at each end. x: mean(2, 3, 4) = 3; y: mean(0, 0, 0) = 0.
    assert_eq!(aggregate(TrimmedMean::new(0.2, 8), &deltas).unwrap(), vec![3.0, 0.0]);
    // β = 0.1: ⌊0.5⌋ = 0 dropped, the plain (unweighted) mean.
    assert_eq!(aggregate(TrimmedMean::new(0.1, 8), &deltas).unwrap(), vec![202.0, -200.0]);
}

#[test]
fn krum_picks_the_update_closest_to_its_neighbours() {
    let deltas: Vec<(Vec<f32>, u64)> = [0.0, 1.0, 2.0, 3.0, 100.0].iter().map(|x| (vec![*x, -*x], 1)).collect();
    // f = 1, n = 5: each scores its 2 nearest squared distances (×2 for the two coordinates):
    // 0 → 2·(1 + 4) = 10, 1 → 2·(1 + 1) = 4, 2 → 4, 3 → 10, 100 → 2·(97² + 98²).
    assert_eq!(aggregate(Krum::new(1, Some(1), 8), &deltas).unwrap(), vec![1.0, -1.0], "tie to the earlier");
    assert_eq!(aggregate(Krum::new(1, Some(2), 8), &deltas).unwrap(), vec![1.5, -1.5]);
    assert_eq!(aggregate(Krum::new(1, Some(3), 8), &deltas).unwrap(), vec![1.0, -1.0], "1, 2 and then 0");
    assert_eq!(aggregate(Krum::new(1, None, 8), &deltas).unwrap(), vec![1.5, -1.5], "n − f = 4: 0, 1, 2, 3");
}

#[test]
fn krum_fails_the_round_cleanly_without_enough_updates() {
    let deltas: Vec<(Vec<f32>, u64)> = (0..4).map(|x| (vec![x as f32], 1)).collect();
    assert_eq!(
        aggregate(Krum::new(1, Some(1), 8), &deltas),
        Err(AggregateError::TooFewForKrum { updates: 4, byzantine: 1 })
    );
    let five: Vec<(Vec<f32>, u64)> = (0..5).map(|x| (vec![x as f32], 1)).collect();
    let too_many = AggregateError::TooManyToSelect { select: 5, updates: 5, byzantine: 1 };
    assert_eq!(aggregate(Krum::new(1, Some(5), 8), &five), Err(too_many));
    assert!(aggregate(Krum::new(0, Some(1), 8), &deltas[..3]).is_ok(), "f = 0 needs 3");
}

#[test]
fn updates_past_the_cap_are_refused_and_the_round_still_commits() {
    let mut aggregator = Federated::with(Median::new(2), Sgd, 1.0, Hygiene::default());
    let base = vector(vec![0.0]);
    aggregator.begin(&base);
    aggregator.fold(&vector(vec![1.0]), 1).unwrap();
    aggregator.fold(&vector(vec![3.0]), 1).unwrap();
    assert_eq!(aggregator.fold(&vector(vec![5.0]), 1), Err(AggregateError::HeldUpdatesFull { cap: 2 }));
    assert_eq!((aggregator.updates(), aggregator.samples()), (2, 2));
    assert_eq!(aggregator.finish(&base).unwrap().values, vec![2.0]);
    // The next round starts empty.
    aggregator.begin(&base);
    aggregator.fold(&vector(vec![5.0]), 1).unwrap();
    assert_eq!(aggregator.finish(&base).unwrap().values, vec![5.0]);
}

#[test]
fn robust_strategies_hold_the_clipped_deltas() {
    let hygiene = Hygiene { clip_norm: Some(1.0), outlier_norm: None, ..Hygiene::default() };
    let mut aggregator = Federated::with(Median::new(4), Sgd, 1.0, hygiene);
    let base = vector(vec![0.0, 0.0]);
    aggregator.begin(&base);
    aggregator.fold(&vector(vec![30.0, 40.0]), 1).unwrap();
    let next = aggregator.finish(&base).unwrap().values;
    assert!((next[0] - 0.6).abs() < 1e-6 && (next[1] - 0.8).abs() < 1e-6, "{next:?}");
}
