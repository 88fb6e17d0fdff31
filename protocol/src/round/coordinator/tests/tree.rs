//! A tree of coordinators: a root, edge aggregators and their clients, driven by hand.

use super::*;
use crate::aggregate::StepSize;
use crate::round::Hierarchy;
use crate::wire::{Cohort, CohortPrivacy, Contribution};

/// One token per aggregator (a second session with a token replaces the first).
const AGGREGATOR_TOKENS: [&str; 2] = ["edge-a", "edge-b"];
const AGGREGATOR_TOKEN: &str = AGGREGATOR_TOKENS[0];

fn root_config(min_clients: usize) -> CoordinatorConfig {
    let aggregator_tokens = AGGREGATOR_TOKENS.iter().map(|t| t.to_string()).collect();
    CoordinatorConfig {
        hierarchy: Hierarchy::Root { aggregator_tokens, redirect_clients: false },
        ..config(min_clients)
    }
}

fn edge_config(min_clients: usize) -> CoordinatorConfig {
    CoordinatorConfig { hierarchy: Hierarchy::Edge { privacy: None }, ..config(min_clients) }
}

/// Clients' deltas and samples of one round, by client index.
fn client_update(index: usize) -> (Vec<f32>, u64) {
    let i = index as f32;
    (vec![0.1 * i - 0.2, 0.05 * i * i - 0.3], 3 + 2 * index as u64)
}

/// Round 1 over `clients` clients joined straight to one coordinator of `config`.
fn flat_round(config: CoordinatorConfig, clients: usize, t0: Instant) -> ParameterVector {
    let mut flat = joined_quietly(config, clients as u64, t0);
    for index in 0..clients {
        let (delta, samples) = client_update(index);
        flat.handle_message(ConnectionId(index as u64 + 1), update(1, 0, delta, samples, 1), t0);
    }
    assert!(events(&mut flat).iter().any(|e| matches!(e, CoordinatorEvent::RoundCommitted { .. })));
    flat.params().clone()
}

/// An edge aggregator's answer to its parent's request for round 1, over clients
/// `first..first + count`.
fn edge_round(first: usize, count: usize, t0: Instant) -> Contribution {
    edge_round_with(edge_config(count), first, count, t0)
}

/// [`edge_round`] at an edge of `config`.
fn edge_round_with(config: CoordinatorConfig, first: usize, count: usize, t0: Instant) -> Contribution {
    let mut edge = coordinator(config);
    for conn in 1..=count as u64 {
        join(&mut edge, conn, t0);
    }
    transmits(&mut edge);
    assert!(
        !events(&mut edge).iter().any(|e| matches!(e, CoordinatorEvent::RoundStarted { .. })),
        "an edge starts no round of its own"
    );
    edge.handle_parent_request(1, 0, Duration::from_secs(10), t0);
    let requests = transmits(&mut edge);
    assert_eq!(requests.len(), count);
    // The cohort's deadline leaves part of the parent's for the answer to travel.
    assert!(requests.iter().all(|(_, m)| matches!(
        m,
        CoordinatorMessage::UpdateRequest { round: 1, model_version: 0, deadline_ms: 8000 }
    )));
    for (conn, index) in (first..first + count).enumerate() {
        let (delta, samples) = client_update(index);
        edge.handle_message(ConnectionId(conn as u64 + 1), update(1, 0, delta, samples, 1), t0);
    }
    let ready = events(&mut edge).into_iter().find_map(|e| match e {
        CoordinatorEvent::CohortReady { round: 1, contribution } => Some(contribution),
        _ => None,
    });
    assert_eq!(edge.model_version(), 0, "an edge publishes no model of its own");
    ready.expect("the cohort's aggregate")
}

/// A root of `config` joined by one aggregator per token at `t0`, its queues drained.
fn root_with_aggregators(config: CoordinatorConfig, t0: Instant) -> Coordinator {
    let mut root = coordinator(config);
    for (conn, token) in (1..).zip(AGGREGATOR_TOKENS) {
        join_with_token(&mut root, conn, token, t0);
    }
    transmits(&mut root);
    events(&mut root);
    root
}

fn cohort_message(contribution: Contribution) -> ClientMessage {
    let Contribution { delta, metrics, moments, cohort } = contribution;
    let update = Update { round: 1, base_version: 0, delta, metrics, moments };
    ClientMessage::CohortUpdate { update, cohort: cohort.expect("an edge's contribution names its cohort") }
}

#[test]
fn fedavg_over_a_tree_equals_fedavg_over_the_flat_fleet() {
    let t0 = Instant::now();
    for step_size in [StepSize::Fixed, StepSize::Participants, StepSize::FedExp] {
        let with_step = |config: CoordinatorConfig| {
            let mut config = config;
            config.aggregation.step_size = step_size;
            config
        };
        let flat = flat_round(with_step(config(6)), 6, t0);
        let mut root = root_with_aggregators(with_step(root_config(2)), t0);
        let cohorts = [edge_round(0, 4, t0), edge_round(4, 2, t0)];
        assert_eq!(cohorts[0].cohort.map(|c| c.participants), Some(4));
        assert_eq!(cohorts[0].metrics, LocalMetrics { samples: 3 + 5 + 7 + 9, prequential_errors: 4 });
        for (conn, contribution) in (1..).zip(cohorts) {
            root.handle_message(ConnectionId(conn), cohort_message(contribution), t0);
        }
        let committed = events(&mut root).into_iter().find_map(|e| match e {
            CoordinatorEvent::RoundCommitted { participants, samples, .. } => Some((participants, samples)),
            _ => None,
        });
        // The record counts the clients behind the cohorts, not the aggregators.
        assert_eq!(committed, Some((6, (0..6).map(|i| client_update(i).1).sum())), "{step_size}");
        for (tree, flat) in root.params().values.iter().zip(&flat.values) {
            assert!((tree - flat).abs() <= 1e-6 * flat.abs().max(1.0), "{step_size}: tree {tree} vs flat {flat}");
        }
    }
}

#[test]
fn only_admitted_aggregators_send_cohort_updates_and_their_claims_are_capped_per_client() {
    let t0 = Instant::now();
    let capped = CoordinatorConfig { max_samples_per_update: Some(10), round_interval: GATHER, ..root_config(1) };
    let mut root = coordinator(capped);
    join(&mut root, 1, t0); // A client (no token: this root takes anonymous clients).
    join_with_token(&mut root, 2, AGGREGATOR_TOKENS[0], t0);
    join_with_token(&mut root, 3, AGGREGATOR_TOKENS[1], t0);
    root.handle_timeout(t0 + GATHER);
    transmits(&mut root);
    events(&mut root);
    let cohort = |samples: u64, participants: u64| {
        let metrics = LocalMetrics { samples, prequential_errors: 0 };
        let update = Update { round: 1, base_version: 0, delta: vector(vec![0.1, 0.1]), metrics, moments: None };
        ClientMessage::CohortUpdate { update, cohort: Cohort { participants, mean_sq_norm: 0.02, expected: None } }
    };
    // Three clients may claim 30 samples together, not 31.
    root.handle_message(ConnectionId(2), cohort(31, 3), t0);
    assert_eq!(refused(&events(&mut root)), [&UpdateRefusal::SamplesOverCap { claimed: 31, cap: 30 }]);
    root.handle_message(ConnectionId(3), cohort(30, 3), t0);
    let accepted = events(&mut root);
    assert!(accepted.iter().any(|e| matches!(e, CoordinatorEvent::UpdateAccepted { samples: 30, .. })), "{accepted:?}");
    // A client posing as an aggregator is closed.
    root.handle_message(ConnectionId(1), cohort(5, 1), t0);
    assert!(events(&mut root).iter().any(|e| matches!(e, CoordinatorEvent::ProtocolViolation { .. })));
    assert!(closes(&mut root).contains(&(ConnectionId(1), CloseReason::Error(ErrorCode::UnexpectedMessage))));
    // Impossible cohort figures are refused.
    let mut root = joined_aggregator(t0);
    let metrics = LocalMetrics { samples: 5, prequential_errors: 0 };
    let update = Update { round: 1, base_version: 0, delta: vector(vec![0.1, 0.1]), metrics, moments: None };
    let bad = ClientMessage::CohortUpdate {
        update,
        cohort: Cohort { participants: 1, mean_sq_norm: f64::NAN, expected: None },
    };
    root.handle_message(ConnectionId(1), bad, t0);
    assert_eq!(refused(&events(&mut root)), [&UpdateRefusal::Invalid(AggregateError::BadCohort)]);
}

fn joined_aggregator(t0: Instant) -> Coordinator {
    let mut root = coordinator(root_config(1));
    join_with_token(&mut root, 1, AGGREGATOR_TOKEN, t0);
    transmits(&mut root);
    events(&mut root);
    root
}

#[test]
fn a_root_refuses_what_needs_each_clients_update_and_an_edge_what_it_cannot_release() {
    use crate::aggregate::StrategyKind;
    let mut robust = root_config(2);
    robust.aggregation.kind = StrategyKind::Median;
    assert!(matches!(robust.validate(), Err(ConfigError::Incompatible(reason)) if reason.contains("robust")));
    let asynchronous =
        CoordinatorConfig { mode: crate::round::Mode::Async { buffer_size: 2, max_staleness: 2 }, ..edge_config(2) };
    assert!(matches!(asynchronous.validate(), Err(ConfigError::Incompatible(_))));
    // The robust strategy runs where the updates are: at the edge.
    let mut edge = edge_config(2);
    edge.aggregation.kind = StrategyKind::Median;
    assert_eq!(edge.validate(), Ok(()));
}

#[test]
fn an_edge_follows_its_parents_model_and_abandons_a_superseded_round() {
    let t0 = Instant::now();
    let mut edge = coordinator(edge_config(1));
    join(&mut edge, 1, t0);
    transmits(&mut edge);
    events(&mut edge);
    edge.handle_parent_request(4, 0, Duration::from_secs(5), t0);
    transmits(&mut edge);
    // The parent moves on: a new model; the running round is abandoned, the model passed on.
    edge.adopt_model(3, 4, vector(vec![5.0, 6.0]), t0).expect("same layout");
    let failed = events(&mut edge);
    assert!(
        failed
            .iter()
            .any(|e| matches!(e, CoordinatorEvent::RoundFailed { round: 4, reason: RoundFailure::Superseded }))
    );
    let sent = transmits(&mut edge);
    assert!(
        matches!(&sent[..], [(ConnectionId(1), CoordinatorMessage::Model { model_version: 3, round: 4, params })] if params.values == [5.0, 6.0])
    );
    // A request on a version it does not hold fails at once; a model of another layout is refused.
    edge.handle_parent_request(5, 2, Duration::from_secs(5), t0);
    let failed = events(&mut edge);
    assert!(failed.iter().any(|e| matches!(
        e,
        CoordinatorEvent::RoundFailed { round: 5, reason: RoundFailure::ParentModel { asked: 2, held: 3 } }
    )));
    assert!(edge.adopt_model(4, 5, vector(vec![1.0]), t0).is_err());
    // The deadline passes with no update: the round fails, nothing goes to the parent.
    edge.handle_parent_request(6, 3, Duration::from_secs(5), t0);
    edge.handle_timeout(t0 + Duration::from_secs(4));
    let ended = events(&mut edge);
    assert!(ended.iter().any(|e| matches!(e, CoordinatorEvent::RoundFailed { round: 6, .. })));
    assert!(!ended.iter().any(|e| matches!(e, CoordinatorEvent::CohortReady { .. })));
}

#[test]
fn a_parents_request_without_the_cohorts_quorum_fails_at_once() {
    let t0 = Instant::now();
    let mut edge = coordinator(edge_config(2));
    join(&mut edge, 1, t0);
    transmits(&mut edge);
    events(&mut edge);
    edge.handle_parent_request(1, 0, Duration::from_secs(10), t0);
    assert!(transmits(&mut edge).is_empty(), "one client joined, two needed");
    let failed = events(&mut edge);
    assert!(failed.iter().any(|e| matches!(
        e,
        CoordinatorEvent::RoundFailed { round: 1, reason: RoundFailure::QuorumMissed { accepted: 0, needed: 2 } }
    )));
    assert_eq!(edge.poll_timeout(), None);
}

#[test]
fn a_declining_client_ends_the_wait_for_it() {
    let t0 = Instant::now();
    let mut root = three_clients_in_round_one(2, t0);
    root.handle_message(ConnectionId(1), update(1, 0, vec![0.1, 0.1], 5, 0), t0);
    root.handle_message(ConnectionId(2), update(1, 0, vec![0.3, 0.1], 5, 0), t0);
    let declined = ClientMessage::Error { code: ErrorCode::Declined, message: "nothing to send".into() };
    root.handle_message(ConnectionId(3), declined, t0);
    // The round commits at once, without waiting for its deadline.
    assert!(
        events(&mut root)
            .iter()
            .any(|e| matches!(e, CoordinatorEvent::RoundCommitted { round: 1, participants: 2, .. }))
    );
}

fn serving(address: &str) -> ClientMessage {
    ClientMessage::Serving(crate::wire::Endpoint { address: address.into(), server_name: "edge".into() })
}

/// A root (quorum `min_clients`) that redirects joining clients to its aggregators.
fn redirecting_root(min_clients: usize) -> Coordinator {
    let mut config = root_config(min_clients);
    if let Hierarchy::Root { redirect_clients, .. } = &mut config.hierarchy {
        *redirect_clients = true;
    }
    coordinator(config)
}

/// Where the root sent client `conn` (joined at `now`).
fn redirected(root: &mut Coordinator, conn: u64, now: Instant) -> String {
    join(root, conn, now);
    let sent = transmits(root);
    let [(to, CoordinatorMessage::Redirect(endpoint))] = &sent[..] else { panic!("no redirect: {sent:?}") };
    assert_eq!(*to, ConnectionId(conn));
    assert!(closes(root).contains(&(ConnectionId(conn), CloseReason::Goodbye)));
    endpoint.address.clone()
}

#[test]
fn a_root_redirects_clients_to_its_aggregators_passing_over_a_silent_one() {
    let t0 = Instant::now();
    let mut root = redirecting_root(2);
    // Before any aggregator announces, clients join the root itself.
    join(&mut root, 9, t0);
    assert!(transmits(&mut root).iter().any(|(_, m)| matches!(m, CoordinatorMessage::Welcome { .. })));
    // A client announcing where it serves is closed.
    root.handle_message(ConnectionId(9), serving("10.0.0.9:4433"), t0);
    assert!(events(&mut root).iter().any(|e| matches!(e, CoordinatorEvent::ProtocolViolation { .. })));
    join_with_token(&mut root, 1, AGGREGATOR_TOKENS[0], t0);
    join_with_token(&mut root, 2, AGGREGATOR_TOKENS[1], t0);
    root.handle_message(ConnectionId(1), serving("10.0.0.1:4433"), t0);
    transmits(&mut root);
    closes(&mut root);
    assert_eq!(redirected(&mut root, 3, t0), "10.0.0.1:4433");
    root.handle_message(ConnectionId(2), serving("10.0.0.2:4433"), t0);
    // The fewest redirected first; the latest announced among equals.
    assert_eq!(redirected(&mut root, 4, t0), "10.0.0.2:4433");
    assert_eq!(redirected(&mut root, 5, t0), "10.0.0.2:4433");
    assert_eq!(redirected(&mut root, 6, t0), "10.0.0.1:4433");
    assert_eq!(root.joined(), 2, "redirected clients are not joined");
    // Round 1 asked both aggregators; the second lets the request lapse: it is passed over.
    let metrics = LocalMetrics { samples: 4, prequential_errors: 0 };
    let update = Update { round: 1, base_version: 0, delta: vector(vec![0.1, 0.1]), metrics, moments: None };
    let cohort = Cohort { participants: 2, mean_sq_norm: 0.02, expected: None };
    root.handle_message(ConnectionId(1), ClientMessage::CohortUpdate { update, cohort }, t0);
    root.handle_timeout(t0 + Duration::from_secs(10));
    transmits(&mut root);
    assert_eq!(redirected(&mut root, 7, t0), "10.0.0.1:4433");
    assert_eq!(redirected(&mut root, 8, t0), "10.0.0.1:4433");
    // An unreadable announcement closes the aggregator.
    root.handle_message(ConnectionId(1), serving(""), t0);
    assert!(events(&mut root).iter().any(|e| matches!(e, CoordinatorEvent::ProtocolViolation { .. })));
}

/// A round that ends early because one aggregator declined (the quorum out of reach) does not
/// make the others silent: they still had time. Marking them so once sent every later client
/// to the aggregators that had declined, which never reached their own quorum again.
#[test]
fn aggregators_still_answering_when_a_round_ends_early_are_not_passed_over() {
    let t0 = Instant::now();
    let mut root = redirecting_root(2);
    join_with_token(&mut root, 1, AGGREGATOR_TOKENS[0], t0);
    join_with_token(&mut root, 2, AGGREGATOR_TOKENS[1], t0);
    root.handle_message(ConnectionId(1), serving("10.0.0.1:4433"), t0);
    root.handle_message(ConnectionId(2), serving("10.0.0.2:4433"), t0);
    assert!(events(&mut root).iter().any(|e| matches!(e, CoordinatorEvent::RoundStarted { round: 1, .. })));
    transmits(&mut root);
    let declined = ClientMessage::Error { code: ErrorCode::Declined, message: "below my quorum".into() };
    root.handle_message(ConnectionId(1), declined, t0);
    assert!(events(&mut root).iter().any(|e| matches!(e, CoordinatorEvent::RoundFailed { round: 1, .. })));
    // Both answered or had time left: the latest announced is still the first choice.
    assert_eq!(redirected(&mut root, 3, t0), "10.0.0.2:4433");
    assert_eq!(redirected(&mut root, 4, t0), "10.0.0.1:4433");
}

#[test]
fn rounds_whose_clients_all_decline_fail_at_once_but_do_not_follow_back_to_back() {
    let t0 = Instant::now();
    let mut root = three_clients_in_round_one(2, t0);
    for conn in 1..=3 {
        let declined = ClientMessage::Error { code: ErrorCode::Declined, message: "nothing yet".into() };
        root.handle_message(ConnectionId(conn), declined, t0);
    }
    let ended = events(&mut root);
    assert!(ended.iter().any(|e| matches!(e, CoordinatorEvent::RoundFailed { round: 1, .. })));
    assert!(!ended.iter().any(|e| matches!(e, CoordinatorEvent::RoundStarted { round: 2, .. })), "{ended:?}");
    assert_eq!(root.poll_timeout(), Some(t0 + Duration::from_secs(1)));
}

const DP_KEY: crate::privacy::NoiseKey = crate::privacy::NoiseKey([9; 32]);

/// Central DP with noise multiplier `z` and clip `clip`.
fn dp(config: CoordinatorConfig, z: f64, clip: f32) -> CoordinatorConfig {
    use crate::round::config::{NoisePlacement, PrivacyConfig};
    let privacy =
        PrivacyConfig { noise_multiplier: z, clip, placement: NoisePlacement::Central, delta: 1e-5, adaptive: None };
    CoordinatorConfig { privacy: Some(privacy), noise_key: Some(DP_KEY), ..config }
}

/// An edge applying the root's `privacy` (quorum `min_clients`).
fn dp_edge_config(min_clients: usize, privacy: CohortPrivacy) -> CoordinatorConfig {
    let edge = CoordinatorConfig { hierarchy: Hierarchy::Edge { privacy: Some(privacy) }, ..config(min_clients) };
    CoordinatorConfig { noise_key: Some(crate::privacy::NoiseKey([3; 32])), ..edge }
}

/// The root's release under DP is the flat fleet's: every update clipped by its aggregator
/// and weighing one, the noise added once to the sum at the root, the sum divided by the
/// fleet's expected cohort (the cohorts' expected sizes summed), the round accounted there.
#[test]
fn dp_over_a_tree_releases_what_dp_over_the_flat_fleet_releases() {
    let t0 = Instant::now();
    // A clip below some of the deltas' norms (0.36 … 1.0), so that clipping shows.
    for z in [0.0, 1.0] {
        let flat_config = dp(config(6), z, 0.5);
        let mut flat = joined_quietly(flat_config, 6, t0);
        for index in 0..6 {
            let (delta, samples) = client_update(index);
            flat.handle_message(ConnectionId(index as u64 + 1), update(1, 0, delta, samples, 1), t0);
        }
        let flat_epsilon = events(&mut flat).into_iter().find_map(|e| match e {
            CoordinatorEvent::RoundCommitted { epsilon, mean_local_error, .. } => Some((epsilon, mean_local_error)),
            _ => None,
        });
        let root_config = dp(root_config(2), z, 0.5);
        let privacy = root_config.update_rules().cohort_privacy.expect("a DP root tells its aggregators");
        assert_eq!(privacy, CohortPrivacy { clip: 0.5, sample_rate: 1.0 });
        let mut root = root_with_aggregators(root_config, t0);
        let cohorts = [
            edge_round_with(dp_edge_config(4, privacy), 0, 4, t0),
            edge_round_with(dp_edge_config(2, privacy), 4, 2, t0),
        ];
        // Each cohort weighs one per client and brings its expected size q·N.
        assert_eq!(cohorts[0].cohort.map(|c| (c.participants, c.expected)), Some((4, Some(4.0))));
        // The counters stay the clients' own (the root weighs the cohort by its clients).
        assert_eq!(cohorts[0].metrics, LocalMetrics { samples: 3 + 5 + 7 + 9, prequential_errors: 4 });
        for (conn, contribution) in (1..).zip(cohorts) {
            root.handle_message(ConnectionId(conn), cohort_message(contribution), t0);
        }
        let root_epsilon = events(&mut root).into_iter().find_map(|e| match e {
            CoordinatorEvent::RoundCommitted { epsilon, mean_local_error, .. } => Some((epsilon, mean_local_error)),
            _ => None,
        });
        assert!(root_epsilon.is_some(), "the root commits the round");
        assert_eq!(root_epsilon, flat_epsilon, "z = {z}: the root accounts and records what the flat coordinator does");
        let moved = root.params().values.iter().zip(&flat.params().values);
        for (tree, flat) in moved {
            assert!((tree - flat).abs() <= 1e-6 * flat.abs().max(1.0), "z = {z}: tree {tree} vs flat {flat}");
        }
    }
}

#[test]
fn a_dp_root_takes_clients_only_through_its_aggregators_and_needs_each_cohorts_expected_size() {
    let t0 = Instant::now();
    let refused_join = |root: &mut Coordinator, conn: u64| {
        join(root, conn, t0);
        events(root).into_iter().find_map(|e| match e {
            CoordinatorEvent::ClientRefused { code, .. } => Some(code),
            _ => None,
        })
    };
    // A client would wait for a request that never comes: refused for good without redirects,
    let mut root = coordinator(CoordinatorConfig { round_interval: GATHER, ..dp(root_config(1), 1.0, 1.0) });
    assert_eq!(refused_join(&mut root, 1), Some(ErrorCode::Unauthorized));
    // for now while no aggregator serves one that redirects, and redirected once one does.
    let mut redirecting = dp(root_config(1), 1.0, 1.0);
    redirecting.hierarchy = Hierarchy::Root {
        aggregator_tokens: AGGREGATOR_TOKENS.iter().map(|t| t.to_string()).collect(),
        redirect_clients: true,
    };
    let mut redirecting = coordinator(redirecting);
    assert_eq!(refused_join(&mut redirecting, 1), Some(ErrorCode::TryLater));
    join_with_token(&mut redirecting, 2, AGGREGATOR_TOKENS[0], t0);
    redirecting.handle_message(ConnectionId(2), serving("10.0.0.2:4433"), t0);
    transmits(&mut redirecting);
    assert_eq!(redirected(&mut redirecting, 3, t0), "10.0.0.2:4433");
    join_with_token(&mut root, 2, AGGREGATOR_TOKENS[0], t0);
    root.handle_timeout(t0 + GATHER);
    transmits(&mut root);
    let started = events(&mut root).into_iter().find_map(|e| match e {
        CoordinatorEvent::RoundStarted { sampled, .. } => Some(sampled),
        _ => None,
    });
    assert_eq!(started, Some(vec![ConnectionId(2)]));
    // A cohort without its expected size cannot be divided fairly: refused.
    let metrics = LocalMetrics { samples: 2, prequential_errors: 0 };
    let update = Update { round: 1, base_version: 0, delta: vector(vec![0.1, 0.1]), metrics, moments: None };
    let cohort = Cohort { participants: 2, mean_sq_norm: 0.02, expected: None };
    root.handle_message(ConnectionId(2), ClientMessage::CohortUpdate { update, cohort }, t0);
    assert_eq!(refused(&events(&mut root)), [&UpdateRefusal::Invalid(AggregateError::BadCohort)]);
}

#[test]
fn a_dp_edge_samples_on_secret_coins_clips_and_sends_whatever_answered() {
    let t0 = Instant::now();
    let privacy = CohortPrivacy { clip: 0.5, sample_rate: 0.5 };
    // A quorum of 5 the edge does not wait for under DP (the root's denominator must not hang
    // on how many of its sampled clients answered).
    let mut edge = joined_quietly(dp_edge_config(5, privacy), 20, t0);
    edge.handle_parent_request(1, 0, Duration::from_secs(10), t0);
    let asked: Vec<ConnectionId> = transmits(&mut edge).into_iter().map(|(conn, _)| conn).collect();
    assert!((3..=17).contains(&asked.len()), "about half of 20 sampled, {} were", asked.len());
    let first = asked[0];
    edge.handle_message(first, update(1, 0, vec![3.0, 4.0], 9, 2), t0);
    edge.handle_timeout(t0 + Duration::from_secs(8));
    let ready = events(&mut edge).into_iter().find_map(|e| match e {
        CoordinatorEvent::CohortReady { round: 1, contribution } => Some(contribution),
        _ => None,
    });
    let ready = ready.expect("one answer is enough under DP");
    // Clipped from norm 5 to 0.5, weighing one, q·N = 10 expected.
    assert_eq!(ready.delta.values, vec![0.3, 0.4]);
    assert_eq!(ready.metrics, LocalMetrics { samples: 9, prequential_errors: 2 });
    assert_eq!(ready.cohort.map(|c| (c.participants, c.expected)), Some((1, Some(10.0))));
    assert!(!dp_edge_config(5, privacy).update_rules().feature_moments, "no feature statistics under DP");
}

#[test]
fn dp_in_a_tree_refuses_what_it_cannot_account() {
    use crate::round::config::{AdaptiveClipping, NoisePlacement};
    let incompatible = |config: CoordinatorConfig| matches!(config.validate(), Err(ConfigError::Incompatible(_)));
    assert_eq!(dp(root_config(2), 1.0, 1.0).validate(), Ok(()));
    let mut distributed = dp(root_config(2), 1.0, 1.0);
    if let Some(p) = &mut distributed.privacy {
        p.placement = NoisePlacement::Distributed;
    }
    assert!(incompatible(distributed));
    let mut adaptive = dp(root_config(2), 1.0, 1.0);
    if let Some(p) = &mut adaptive.privacy {
        p.adaptive = Some(AdaptiveClipping { target_quantile: 0.5, learning_rate: 0.2 });
    }
    assert!(incompatible(adaptive));
    // An edge takes its settings from the root, not its own options.
    assert!(incompatible(dp(edge_config(2), 1.0, 1.0)));
    let privacy = CohortPrivacy { clip: 1.0, sample_rate: 0.5 };
    assert_eq!(dp_edge_config(2, privacy).validate(), Ok(()));
    let out_of_range = CohortPrivacy { clip: 1.0, sample_rate: 1.5 };
    assert!(incompatible(dp_edge_config(2, out_of_range)));
    let secure = crate::round::config::SecureConfig {
        neighbours: 0,
        threshold: 0,
        clip_range: 10.0,
        scale_bits: 16,
        phase_timeout: Duration::from_secs(5),
    };
    let secure = CoordinatorConfig { secure: Some(secure), ..dp_edge_config(2, privacy) };
    assert!(incompatible(secure));
}

/// The served model's standardiser needs the fleet's feature statistics: an edge sends those
/// of its round's rows with its cohort, and the root adds them to the fleet's as a flat
/// coordinator adds its clients'.
#[test]
fn feature_statistics_go_up_the_tree_with_each_cohort() {
    let t0 = Instant::now();
    let mut edge = joined_quietly(edge_config(1), 2, t0);
    assert!(edge_config(1).update_rules().feature_moments, "an edge takes its clients' statistics");
    edge.handle_parent_request(1, 0, Duration::from_secs(10), t0);
    transmits(&mut edge);
    let a = moments(&[[1.0, 2.0, 3.0, 4.0]]);
    let b = moments(&[[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]);
    edge.handle_message(ConnectionId(1), with_moments(update(1, 0, vec![0.1, 0.0], 1, 0), a.clone()), t0);
    edge.handle_message(ConnectionId(2), with_moments(update(1, 0, vec![0.2, 0.0], 2, 0), b.clone()), t0);
    let ready = events(&mut edge).into_iter().find_map(|e| match e {
        CoordinatorEvent::CohortReady { round: 1, contribution } => Some(contribution),
        _ => None,
    });
    let ready = ready.expect("the cohort's aggregate");
    let mut both = a;
    both.merge(&b).unwrap();
    assert_eq!(ready.moments.as_ref(), Some(&both));
    // The next round starts from none.
    edge.handle_parent_request(2, 0, Duration::from_secs(10), t0);
    transmits(&mut edge);
    edge.handle_message(ConnectionId(1), update(2, 0, vec![0.1, 0.0], 1, 0), t0);
    edge.handle_timeout(t0 + Duration::from_secs(9));
    let next = events(&mut edge).into_iter().find_map(|e| match e {
        CoordinatorEvent::CohortReady { round: 2, contribution } => Some(contribution),
        _ => None,
    });
    assert_eq!(next.expect("round 2's aggregate").moments, None);
    let mut root = joined_aggregator(t0);
    root.handle_message(ConnectionId(1), cohort_message(ready), t0);
    assert!(events(&mut root).iter().any(|e| matches!(e, CoordinatorEvent::RoundCommitted { .. })));
    assert_eq!(root.checkpoint().feature_moments, Some(both));
}
