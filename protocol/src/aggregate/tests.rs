use crate::params::PARAMETER_FORMAT_VERSION;
use proptest::prelude::*;

use super::*;

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(7), values }
}

#[test]
fn weighted_mean_of_deltas_is_added_to_the_base() {
    let base = vector(vec![1.0, -2.0]);
    let mut fedavg = FedAvg::new();
    fedavg.begin(&base);
    fedavg.fold(&vector(vec![1.0, 0.0]), 1).unwrap();
    fedavg.fold(&vector(vec![0.0, 4.0]), 3).unwrap();
    assert_eq!((fedavg.updates(), fedavg.samples()), (2, 4));
    // (1·1 + 3·0)/4 = 0.25 and (1·0 + 3·4)/4 = 3.
    assert_eq!(fedavg.finish(&base).unwrap().values, vec![1.25, 1.0]);
}

#[test]
fn refused_updates_leave_the_aggregate_unchanged() {
    let base = vector(vec![0.0, 0.0]);
    let mut fedavg = FedAvg::new();
    assert_eq!(fedavg.fold(&base, 1), Err(AggregateError::NotStarted));
    fedavg.begin(&base);
    assert_eq!(fedavg.fold(&vector(vec![1.0, 1.0]), 0), Err(AggregateError::ZeroSamples));
    let nan = fedavg.fold(&vector(vec![f32::NAN, 1.0]), 1);
    assert!(matches!(nan, Err(AggregateError::Parameters(ParameterError::NotFinite { index: 0, .. }))));
    let inf = fedavg.fold(&vector(vec![1.0, f32::INFINITY]), 1);
    assert!(matches!(inf, Err(AggregateError::Parameters(ParameterError::NotFinite { index: 1, .. }))));
    let mut other = vector(vec![1.0, 1.0]);
    other.fingerprint = Fingerprint(8);
    assert!(matches!(fedavg.fold(&other, 1), Err(AggregateError::Parameters(ParameterError::LayoutMismatch { .. }))));
    let short = fedavg.fold(&vector(vec![1.0]), 1);
    assert!(matches!(short, Err(AggregateError::Parameters(ParameterError::LengthMismatch { .. }))));
    let mut old = vector(vec![1.0, 1.0]);
    old.format_version += 1;
    assert!(matches!(fedavg.fold(&old, 1), Err(AggregateError::Parameters(ParameterError::UnsupportedVersion { .. }))));
    assert_eq!(fedavg.updates(), 0);
    assert_eq!(fedavg.finish(&base), Err(AggregateError::Empty));
}

#[test]
fn overflowing_sample_totals_and_results_are_refused() {
    let base = vector(vec![f32::MAX]);
    let mut fedavg = FedAvg::new();
    fedavg.begin(&base);
    fedavg.fold(&vector(vec![f32::MAX]), u64::MAX).unwrap();
    assert_eq!(fedavg.fold(&vector(vec![0.0]), 1), Err(AggregateError::SampleOverflow));
    assert_eq!(fedavg.finish(&base), Err(AggregateError::ResultNotFinite { index: 0 }));
}

#[test]
fn finish_checks_the_base_and_needs_a_new_begin() {
    let base = vector(vec![0.0]);
    let mut fedavg = FedAvg::new();
    fedavg.begin(&base);
    fedavg.fold(&vector(vec![1.0]), 1).unwrap();
    assert_eq!(fedavg.finish(&vector(vec![0.0, 0.0])), Err(AggregateError::BaseChanged));
    fedavg.begin(&base);
    fedavg.fold(&vector(vec![1.0]), 1).unwrap();
    assert_eq!(fedavg.finish(&base).unwrap().values, vec![1.0]);
    assert_eq!(fedavg.finish(&base), Err(AggregateError::NotStarted));
}

proptest! {
    #[test]
    fn streaming_fold_matches_the_batch_formula(
        updates in prop::collection::vec((prop::collection::vec(-100f32..100.0, 3), 1u64..1000), 1..8),
    ) {
        let base = vector(vec![0.5, -0.5, 2.0]);
        let mut fedavg = FedAvg::new();
        fedavg.begin(&base);
        for (delta, samples) in &updates {
            fedavg.fold(&vector(delta.clone()), *samples).unwrap();
        }
        let result = fedavg.finish(&base).unwrap();
        let total: f64 = updates.iter().map(|(_, n)| *n as f64).sum();
        for i in 0..3 {
            let mean: f64 = updates.iter().map(|(d, n)| f64::from(d[i]) * *n as f64).sum::<f64>() / total;
            let expected = (f64::from(base.values[i]) + mean) as f32;
            prop_assert!((result.values[i] - expected).abs() <= 1e-4 * expected.abs().max(1.0));
        }
    }
}

#[test]
fn deltas_above_the_clip_norm_are_scaled_down_and_outliers_flagged() {
    let hygiene = Hygiene { clip_norm: Some(5.0), outlier_norm: Some(7.0), ..Hygiene::default() };
    let mut aggregator = Federated::with(WeightedMean::default(), Sgd, 1.0, hygiene);
    let base = vector(vec![0.0, 0.0]);
    aggregator.begin(&base);
    let plain = aggregator.fold(&vector(vec![3.0, 4.0]), 1).unwrap();
    assert_eq!(plain, Folded { norm: 5.0, clipped: false, outlier: false });
    let wild = aggregator.fold(&vector(vec![-6.0, 8.0]), 1).unwrap();
    assert_eq!(wild, Folded { norm: 10.0, clipped: true, outlier: true });
    // (3, 4) and (−6, 8)·5/10 = (−3, 4): mean (0, 4).
    assert_eq!(aggregator.finish(&base).unwrap().values, vec![0.0, 4.0]);
}

#[test]
fn strategies_parse_by_name_and_options_are_validated() {
    for (name, kind) in StrategyKind::ALL {
        assert_eq!(name.parse::<StrategyKind>(), Ok(kind));
        assert_eq!(kind.to_string(), name);
    }
    assert!("fedsgd".parse::<StrategyKind>().unwrap_err().contains("multi-krum"));
    let valid = StrategyConfig::default();
    assert_eq!(valid.validate(), Ok(()));
    let cases = [
        (
            StrategyConfig { server_lr: 0.0, ..valid.clone() },
            StrategyError::NotPositive { name: "server_lr", value: 0.0 },
        ),
        (
            StrategyConfig { tau: f64::NAN, ..valid.clone() },
            StrategyError::NotPositive { name: "tau", value: f64::NAN },
        ),
        (
            StrategyConfig { clip_norm: Some(-1.0), ..valid.clone() },
            StrategyError::NotPositive { name: "clip_norm", value: -1.0 },
        ),
        (StrategyConfig { beta1: 1.0, ..valid.clone() }, StrategyError::Decay { name: "beta1", value: 1.0 }),
        (StrategyConfig { beta2: -0.1, ..valid.clone() }, StrategyError::Decay { name: "beta2", value: -0.1 }),
        (StrategyConfig { trim_fraction: 0.5, ..valid.clone() }, StrategyError::TrimFraction(0.5)),
        (StrategyConfig { max_held_updates: 0, ..valid.clone() }, StrategyError::ZeroHeldUpdates),
        (StrategyConfig { multi_krum_m: Some(0), ..valid.clone() }, StrategyError::ZeroMultiKrum),
    ];
    for (config, error) in cases {
        // NaN ≠ NaN: compare the messages.
        assert_eq!(config.validate().unwrap_err().to_string(), error.to_string());
    }
}
