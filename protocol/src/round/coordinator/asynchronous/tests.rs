//! Asynchronous mode, driven by hand with fixed instants; the numbers are worked out by hand.

use crate::wire::UpdateRules;
use std::time::{Duration, Instant};

use super::*;
use crate::aggregate::{AggregateError, StrategyConfig, StrategyKind};
use crate::model::HbpConfig;
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};
use crate::round::{ConfigError, CoordinatorConfig, Mode};
use crate::wire::{ClientMessage, LocalMetrics, PROTOCOL_VERSION};

const DEADLINE: Duration = Duration::from_secs(10);

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(3), values }
}

fn config(buffer_size: usize, max_staleness: u64) -> CoordinatorConfig {
    CoordinatorConfig {
        round_deadline: DEADLINE,
        mode: Mode::Async { buffer_size, max_staleness },
        ..CoordinatorConfig::default()
    }
}

/// A coordinator at model [0, 0] with clients conn#1..=conn#n joined at `t0`.
fn joined(config: CoordinatorConfig, n: u64, t0: Instant) -> Coordinator {
    let mut coordinator = Coordinator::new(config, HbpConfig::new(4, 2), vector(vec![0.0, 0.0])).unwrap();
    for conn in 1..=n {
        coordinator.handle_connect(ConnectionId(conn), t0);
        let join =
            ClientMessage::Join { protocol_version: PROTOCOL_VERSION, client_name: "edge".into(), auth_token: None };
        coordinator.handle_message(ConnectionId(conn), join, t0);
    }
    coordinator
}

fn send(coordinator: &mut Coordinator, conn: u64, base_version: u64, delta: Vec<f32>, now: Instant) {
    let metrics = LocalMetrics { samples: 2, prequential_errors: 1 };
    let update = Update { round: 0, base_version, delta: vector(delta), metrics, moments: None };
    coordinator.handle_message(ConnectionId(conn), ClientMessage::Update(update), now);
}

/// What was sent, as (conn, short description).
fn sent(coordinator: &mut Coordinator) -> Vec<(u64, String)> {
    std::iter::from_fn(|| coordinator.poll_transmit())
        .map(|(conn, message)| {
            let text = match message {
                CoordinatorMessage::Welcome { .. } => "welcome".to_string(),
                CoordinatorMessage::Model { model_version, .. } => format!("model v{model_version}"),
                CoordinatorMessage::UpdateRequest { round, model_version: ANY_MODEL_VERSION, deadline_ms } => {
                    assert_eq!(deadline_ms, 10_000);
                    format!("request r{round}")
                }
                CoordinatorMessage::Error { code, .. } => format!("error {code:?}"),
                CoordinatorMessage::Rules(rules)
                    if rules
                        == UpdateRules {
                            max_samples: rules.max_samples,
                            feature_moments: true,
                            ..UpdateRules::default()
                        } =>
                {
                    "rules".to_string()
                }
                other => format!("{other:?}"),
            };
            (conn.0, text)
        })
        .collect()
}

fn commits(coordinator: &mut Coordinator) -> Vec<(u64, u64, usize, u64)> {
    std::iter::from_fn(|| coordinator.poll_event())
        .filter_map(|event| match event {
            CoordinatorEvent::RoundCommitted { round, model_version, participants, samples, .. } => {
                Some((round, model_version, participants, samples))
            }
            _ => None,
        })
        .collect()
}

fn pair(params: &ParameterVector) -> (f32, f32) {
    (params.values[0], params.values[1])
}

#[test]
fn clients_are_asked_on_joining_and_again_once_their_version_is_applied() {
    let t0 = Instant::now();
    let mut coordinator = joined(config(2, 3), 2, t0);
    assert!(!coordinator.round_in_progress());
    let each = |conn| {
        [(conn, "welcome".into()), (conn, "rules".into()), (conn, "model v0".into()), (conn, "request r1".into())]
    };
    assert_eq!(sent(&mut coordinator), [each(1), each(2)].concat());
    // Both requests lapse together, ten seconds after the joins.
    assert_eq!(coordinator.poll_timeout(), Some(t0 + DEADLINE));
    let t1 = t0 + Duration::from_secs(1);
    send(&mut coordinator, 1, 0, vec![2.0, 0.0], t1);
    assert!(sent(&mut coordinator).is_empty(), "one update per client per version: not asked again yet");
    assert!(commits(&mut coordinator).is_empty());
    // An unrequested second update from the same client is refused, not folded.
    send(&mut coordinator, 1, 0, vec![2.0, 0.0], t1);
    assert_eq!(sent(&mut coordinator), [(1, "error UnexpectedMessage".to_string())]);
    send(&mut coordinator, 2, 0, vec![0.0, 2.0], t1);
    assert_eq!(commits(&mut coordinator), [(1, 1, 2, 4)]);
    let expected: Vec<(u64, String)> =
        vec![(1, "model v1".into()), (1, "request r2".into()), (2, "model v1".into()), (2, "request r2".into())];
    assert_eq!(sent(&mut coordinator), expected, "both are asked again on the new version");
}

#[test]
fn updates_on_different_versions_are_weighted_by_staleness_and_the_buffer_applied_after_k() {
    let t0 = Instant::now();
    // conn#2 is slow: it answers only once conn#1 and conn#3 have moved the model three
    // versions on.
    let mut coordinator = joined(config(2, 3), 3, t0);
    sent(&mut coordinator);
    for version in 0..3u64 {
        // Two fresh updates (weight 1): Δ̄ = ((2, 0) + (0, 2)) / 2 = (1, 1).
        send(&mut coordinator, 1, version, vec![2.0, 0.0], t0);
        send(&mut coordinator, 3, version, vec![0.0, 2.0], t0);
        let v = version + 1;
        assert_eq!(commits(&mut coordinator), [(v, v, 2, 4)]);
        assert_eq!(pair(coordinator.params()), (v as f32, v as f32));
        let model = format!("model v{v}");
        let request = format!("request r{}", v + 1);
        let expected: Vec<(u64, String)> = vec![(1, model.clone()), (1, request.clone()), (3, model), (3, request)];
        assert_eq!(sent(&mut coordinator), expected, "the slow client, still working, is sent nothing");
    }
    // conn#2's update rests on version 0, three behind: weight 1/√(1 + 3) = 1/2. With a fresh
    // one from conn#1: Δ̄ = (½·(4, 0) + 1·(0, 2)) / 2 = (1, 1), so the model goes (3, 3) → (4, 4).
    send(&mut coordinator, 2, 0, vec![4.0, 0.0], t0);
    send(&mut coordinator, 1, 3, vec![0.0, 2.0], t0);
    assert_eq!(commits(&mut coordinator), [(4, 4, 2, 4)]);
    assert_eq!(pair(coordinator.params()), (4.0, 4.0));
    // Asked again, each is sent the one version it lacks: conn#2 jumps from v0 to v4.
    let expected: Vec<(u64, String)> = [1, 2]
        .into_iter()
        .flat_map(|conn| [(conn, "model v4".to_string()), (conn, "request r5".to_string())])
        .collect();
    assert_eq!(sent(&mut coordinator), expected);
    assert_eq!((coordinator.round(), coordinator.model_version()), (4, 4));
    assert_eq!(coordinator.checkpoint().round, 4);
}

#[test]
fn a_too_stale_update_is_refused_with_stale_update_and_the_client_asked_again() {
    let t0 = Instant::now();
    let mut coordinator = joined(config(1, 1), 2, t0);
    sent(&mut coordinator);
    send(&mut coordinator, 1, 0, vec![1.0, 0.0], t0);
    send(&mut coordinator, 1, 1, vec![1.0, 0.0], t0);
    assert_eq!(pair(coordinator.params()), (2.0, 0.0));
    commits(&mut coordinator);
    sent(&mut coordinator);
    // Two versions behind, one allowed.
    send(&mut coordinator, 2, 0, vec![0.0, 5.0], t0);
    let expected = [(2, "error StaleUpdate".to_string()), (2, "model v2".to_string()), (2, "request r3".to_string())];
    assert_eq!(sent(&mut coordinator), expected, "asked again with the version it lacks");
    let refusals: Vec<CoordinatorEvent> = std::iter::from_fn(|| coordinator.poll_event()).collect();
    assert_eq!(
        refusals,
        [CoordinatorEvent::UpdateRefused {
            conn: ConnectionId(2),
            reason: UpdateRefusal::Invalid(AggregateError::TooStale { staleness: 2, max: 1 }),
        }]
    );
    assert_eq!(pair(coordinator.params()), (2.0, 0.0));
    // Its next update, on the model it was sent since (version 2), goes in.
    send(&mut coordinator, 2, 2, vec![0.0, 5.0], t0);
    assert_eq!(commits(&mut coordinator), [(3, 3, 1, 2)]);
    assert_eq!(pair(coordinator.params()), (2.0, 5.0));
    // An update from the future is refused too, and the client asked again.
    sent(&mut coordinator);
    send(&mut coordinator, 2, 9, vec![0.0, 1.0], t0);
    assert_eq!(sent(&mut coordinator), [(2, "error StaleUpdate".to_string()), (2, "request r4".to_string())]);
    assert_eq!(pair(coordinator.params()), (2.0, 5.0));
}

#[test]
fn a_silent_client_is_asked_again_at_its_deadline_and_never_blocks_the_others() {
    let t0 = Instant::now();
    let mut coordinator = joined(config(1, 20), 2, t0);
    sent(&mut coordinator);
    for (i, version) in (0..5u64).enumerate() {
        send(&mut coordinator, 1, version, vec![1.0, 0.0], t0 + Duration::from_secs(i as u64 + 1));
    }
    assert_eq!(commits(&mut coordinator).len(), 5);
    assert_eq!(pair(coordinator.params()), (5.0, 0.0));
    // conn#2's request, sent at t0, lapses first.
    assert_eq!(coordinator.poll_timeout(), Some(t0 + DEADLINE));
    sent(&mut coordinator);
    coordinator.handle_timeout(t0 + DEADLINE);
    assert_eq!(sent(&mut coordinator), [(2, "model v5".to_string()), (2, "request r6".to_string())]);
    assert_eq!(coordinator.poll_timeout(), Some(t0 + Duration::from_secs(5) + DEADLINE));
    // Gone clients are forgotten.
    coordinator.handle_disconnect(ConnectionId(1), t0 + DEADLINE);
    assert_eq!(coordinator.poll_timeout(), Some(t0 + DEADLINE + DEADLINE));
}

#[test]
fn asynchronous_mode_needs_a_buffer_and_a_mean_based_strategy() {
    let make = |config: CoordinatorConfig| Coordinator::new(config, HbpConfig::new(4, 2), vector(vec![0.0, 0.0])).err();
    assert_eq!(make(config(0, 1)), Some(ConfigError::ZeroBuffer));
    let median = StrategyConfig { kind: StrategyKind::Median, ..StrategyConfig::default() };
    assert_eq!(
        make(CoordinatorConfig { aggregation: median, ..config(2, 1) }),
        Some(ConfigError::AsyncRobust(StrategyKind::Median))
    );
    let adam = StrategyConfig { kind: StrategyKind::FedAdam, ..StrategyConfig::default() };
    assert!(make(CoordinatorConfig { aggregation: adam, ..config(2, 1) }).is_none());
}

#[test]
fn a_buffer_larger_than_the_fleet_is_applied_once_every_client_has_contributed() {
    let t0 = Instant::now();
    // K = 5 with two clients: each gives one update per version, so the version is applied
    // with the two it can get (Δ̄ over two updates), not left waiting for ever.
    let mut coordinator = joined(config(5, 3), 2, t0);
    sent(&mut coordinator);
    send(&mut coordinator, 1, 0, vec![2.0, 0.0], t0);
    assert!(commits(&mut coordinator).is_empty());
    send(&mut coordinator, 2, 0, vec![0.0, 2.0], t0);
    assert_eq!(commits(&mut coordinator), [(1, 1, 2, 4)]);
    assert_eq!(pair(coordinator.params()), (1.0, 1.0));
}
