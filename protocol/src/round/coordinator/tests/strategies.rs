//! The round state machine with other aggregation strategies than FedAvg.

use super::*;
use crate::aggregate::{StrategyConfig, StrategyKind};
use crate::model::HbpConfig;

fn with_strategy(min_clients: usize, aggregation: StrategyConfig) -> CoordinatorConfig {
    CoordinatorConfig { aggregation, ..config(min_clients) }
}

#[test]
fn median_round_commits_without_the_wild_update() {
    let t0 = Instant::now();
    let strategy =
        StrategyConfig { kind: StrategyKind::Median, outlier_norm: Some(100.0), ..StrategyConfig::default() };
    let (mut coordinator, _) = gathered(with_strategy(3, strategy), 3, t0);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 1.0], 1, 0), t0);
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![1e6, -1e6], 1_000, 0), t0);
    coordinator.handle_message(ConnectionId(3), update(1, 0, vec![2.0, 3.0], 1, 0), t0);
    // Medians of (1, 1e6, 2) and (1, −1e6, 3): 2 and 1, added to the base (1, 2).
    assert_eq!((coordinator.model_version(), coordinator.params().values.clone()), (1, vec![3.0, 3.0]));
    assert!(refused(&events(&mut coordinator)).is_empty(), "an outlier is flagged, not refused");
}

#[test]
fn krum_round_without_enough_updates_fails_with_the_reason() {
    let t0 = Instant::now();
    let strategy = StrategyConfig { kind: StrategyKind::Krum, byzantine: 1, ..StrategyConfig::default() };
    let (mut coordinator, _) = gathered(with_strategy(2, strategy), 3, t0);
    for conn in 1..=3 {
        coordinator.handle_message(ConnectionId(conn), update(1, 0, vec![1.0, 1.0], 1, 0), t0);
    }
    let failed = CoordinatorEvent::RoundFailed {
        round: 1,
        reason: RoundFailure::Aggregation(AggregateError::TooFewForKrum { updates: 3, byzantine: 1 }),
    };
    let events = events(&mut coordinator);
    assert!(events.contains(&failed), "{events:?}");
    let CoordinatorEvent::RoundFailed { reason, .. } = failed else { unreachable!() };
    assert_eq!(
        reason.to_string(),
        "aggregation failed: krum with 1 Byzantine clients needs more than 4 updates, got 3"
    );
    assert_eq!((coordinator.model_version(), coordinator.params().values.clone()), (0, vec![1.0, 2.0]));
}

#[test]
fn updates_past_the_held_cap_are_refused_and_the_round_commits_with_the_rest() {
    let t0 = Instant::now();
    let strategy = StrategyConfig { kind: StrategyKind::Median, max_held_updates: 2, ..StrategyConfig::default() };
    let (mut coordinator, _) = gathered(with_strategy(2, strategy), 3, t0);
    for (conn, x) in [(1, 1.0), (2, 3.0), (3, 100.0)] {
        coordinator.handle_message(ConnectionId(conn), update(1, 0, vec![x, 0.0], 1, 0), t0);
    }
    let sent = transmits(&mut coordinator);
    assert!(matches!(sent[0], (ConnectionId(3), CoordinatorMessage::Error { code: ErrorCode::InvalidUpdate, .. })));
    let events = events(&mut coordinator);
    assert_eq!(refused(&events), [&UpdateRefusal::Invalid(AggregateError::HeldUpdatesFull { cap: 2 })]);
    assert_eq!(coordinator.params().values, vec![3.0, 2.0], "median of 1 and 3 is 2, plus the base");
    let make = |aggregation| Coordinator::new(with_strategy(3, aggregation), HbpConfig::new(4, 2), vector(vec![0.0]));
    let error = make(StrategyConfig { max_held_updates: 2, ..strategy_of(StrategyKind::TrimmedMean) }).err();
    assert_eq!(error, Some(ConfigError::HeldCapBelowQuorum { cap: 2, min_clients: 3 }));
    assert!(make(StrategyConfig { max_held_updates: 2, ..StrategyConfig::default() }).is_ok(), "fedavg holds none");
    let error = make(StrategyConfig { beta1: 2.0, ..StrategyConfig::default() }).err();
    assert!(matches!(error, Some(ConfigError::Strategy(_))));
}

fn strategy_of(kind: StrategyKind) -> StrategyConfig {
    StrategyConfig { kind, ..StrategyConfig::default() }
}
