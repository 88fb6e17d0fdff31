//! Server optimisers over three rounds, against numbers worked out by hand.

use crate::aggregate::{Aggregator, Momentum, StrategyConfig, StrategyKind};
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};

use super::*;

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(7), values }
}

/// Runs three rounds from x = 0, each with the deltas `[4]` (1 sample) and `[0]` (3 samples)
/// scaled by `scale`: Δ = scale each round. Returns x after each round.
fn three_rounds(config: StrategyConfig, scale: f32) -> Vec<f64> {
    config.validate().unwrap();
    let mut aggregator = config.build();
    let mut x = vector(vec![0.0]);
    let mut trajectory = Vec::new();
    for _ in 0..3 {
        aggregator.begin(&x);
        aggregator.fold(&vector(vec![4.0 * scale]), 1).unwrap();
        aggregator.fold(&vector(vec![0.0]), 3).unwrap();
        x = aggregator.finish(&x).unwrap();
        trajectory.push(f64::from(x.values[0]));
    }
    trajectory
}

fn assert_close(found: &[f64], expected: &[f64]) {
    assert_eq!(found.len(), expected.len());
    for (f, e) in found.iter().zip(expected) {
        assert!((f - e).abs() < 1e-5, "found {found:?}, expected {expected:?}");
    }
}

fn config(kind: StrategyKind) -> StrategyConfig {
    StrategyConfig { kind, beta1: 0.5, beta2: 0.5, tau: 1.0, ..StrategyConfig::default() }
}

#[test]
fn fedavg_applies_the_weighted_mean_times_the_server_rate() {
    // Δ = (1·4 + 3·0)/4 = 1 each round; x += 0.5·Δ.
    let trajectory = three_rounds(StrategyConfig { server_lr: 0.5, ..config(StrategyKind::FedAvg) }, 1.0);
    assert_close(&trajectory, &[0.5, 1.0, 1.5]);
}

#[test]
fn fedavgm_accumulates_momentum() {
    // m = 1, 1.5, 1.75; x = 1, 2.5, 4.25.
    assert_close(&three_rounds(config(StrategyKind::FedAvgM), 1.0), &[1.0, 2.5, 4.25]);
}

#[test]
fn fedadagrad_divides_by_the_root_of_the_summed_squares() {
    // Δ = 3: v = 9, 18, 27; d = 3/(√v + 1).
    let d = |v: f64| 3.0 / (v.sqrt() + 1.0);
    let expected = [d(9.0), d(9.0) + d(18.0), d(9.0) + d(18.0) + d(27.0)];
    assert_eq!(d(9.0), 0.75);
    assert_close(&three_rounds(config(StrategyKind::FedAdagrad), 3.0), &expected);
}

#[test]
fn fedadam_uses_both_moments_without_bias_correction() {
    // Δ = 2, β1 = β2 = 1/2: m = 1, 1.5, 1.75; v = 2, 3, 3.5; d = m/(√v + 1).
    let d1 = 1.0 / (2f64.sqrt() + 1.0);
    let d2 = 1.5 / (3f64.sqrt() + 1.0);
    let d3 = 1.75 / (3.5f64.sqrt() + 1.0);
    assert_close(&three_rounds(config(StrategyKind::FedAdam), 2.0), &[d1, d1 + d2, d1 + d2 + d3]);
}

#[test]
fn fedyogi_moves_v_by_the_sign_of_its_gap_to_the_square() {
    // Δ² = 4, (1−β2)Δ² = 2: v = 0 + 2 = 2; 2 + 2 = 4; 4 − 2·sign(0) = 4. m = 1, 1.5, 1.75.
    let d1 = 1.0 / (2f64.sqrt() + 1.0);
    let (d2, d3) = (1.5 / 3.0, 1.75 / 3.0);
    assert_close(&three_rounds(config(StrategyKind::FedYogi), 2.0), &[d1, d1 + d2, d1 + d2 + d3]);
}

#[test]
fn each_coordinate_has_its_own_state() {
    let mut adagrad = Adagrad::new(1.0);
    let mut delta = [3.0, -4.0, 0.0];
    adagrad.step(&mut delta);
    assert_eq!(delta, [0.75, -0.8, 0.0]);
    let mut momentum = Momentum::new(0.5);
    momentum.step(&mut [1.0, 2.0]);
    let mut delta = [1.0, 0.0];
    momentum.step(&mut delta);
    assert_eq!(delta, [1.5, 1.0]);
    // Another model length restarts the state from zero.
    let mut delta = [1.0];
    momentum.step(&mut delta);
    assert_eq!(delta, [1.0]);
}

#[test]
fn a_failed_round_leaves_the_optimiser_state_alone() {
    use crate::aggregate::{AggregateError, Federated, Hygiene, WeightedMean};
    let mut aggregator = Federated::with(WeightedMean::default(), Momentum::new(0.9), 1.0, Hygiene::default());
    let base = vector(vec![f32::MAX]);
    aggregator.begin(&base);
    aggregator.fold(&vector(vec![f32::MAX]), 1).unwrap();
    assert_eq!(aggregator.finish(&base), Err(AggregateError::ResultNotFinite { index: 0 }));
    assert!(aggregator.optimizer().momentum().is_empty());
}
