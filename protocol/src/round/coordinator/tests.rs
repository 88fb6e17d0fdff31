use crate::model::HbpConfig;
use crate::wire::UpdateRules;
use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::aggregate::AggregateError;
use crate::model::FeatureMoments;
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterError};
use crate::round::{RoundFailure, UpdateRefusal};
use crate::wire::{LocalMetrics, Update};

const FINGERPRINT: Fingerprint = Fingerprint(42);

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: FINGERPRINT, values }
}

fn config(min_clients: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_clients,
        round_deadline: Duration::from_secs(10),
        join_timeout: Duration::from_secs(5),
        seed: 1,
        ..CoordinatorConfig::default()
    }
}

fn coordinator(config: CoordinatorConfig) -> Coordinator {
    Coordinator::new(config, HbpConfig::new(4, 2), vector(vec![1.0, 2.0])).unwrap()
}

fn join_message(protocol_version: u16) -> ClientMessage {
    ClientMessage::Join { protocol_version, client_name: "edge".into(), auth_token: None }
}

fn join(coordinator: &mut Coordinator, conn: u64, now: Instant) {
    coordinator.handle_connect(ConnectionId(conn), now);
    coordinator.handle_message(ConnectionId(conn), join_message(PROTOCOL_VERSION), now);
}

fn update(round: u64, base_version: u64, delta: Vec<f32>, samples: u64, errors: u64) -> ClientMessage {
    let metrics = LocalMetrics { samples, prequential_errors: errors };
    ClientMessage::Update(Update { round, base_version, delta: vector(delta), metrics, moments: None })
}

fn transmits(coordinator: &mut Coordinator) -> Vec<(ConnectionId, CoordinatorMessage)> {
    std::iter::from_fn(|| coordinator.poll_transmit()).collect()
}

fn events(coordinator: &mut Coordinator) -> Vec<CoordinatorEvent> {
    std::iter::from_fn(|| coordinator.poll_event()).collect()
}

fn started(round: u64, model_version: u64, sampled: &[u64]) -> CoordinatorEvent {
    let sampled = sampled.iter().copied().map(ConnectionId).collect();
    CoordinatorEvent::RoundStarted { round, model_version, sampled }
}

fn refused(events: &[CoordinatorEvent]) -> Vec<&UpdateRefusal> {
    events
        .iter()
        .filter_map(|e| match e {
            CoordinatorEvent::UpdateRefused { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// `clients` joined at `t0` (round 1 started at the quorum), with the queues drained.
fn joined_quietly(config: CoordinatorConfig, clients: u64, t0: Instant) -> Coordinator {
    let mut coordinator = coordinator(config);
    for conn in 1..=clients {
        join(&mut coordinator, conn, t0);
    }
    transmits(&mut coordinator);
    events(&mut coordinator);
    coordinator
}

/// Pause before each round in the tests that let clients gather first.
const GATHER: Duration = Duration::from_secs(1);

/// `clients` joined at `t0`, gathered, and round 1 started at `t0 + GATHER`; returns the
/// coordinator (queues drained) and the sampled connections.
fn gathered(config: CoordinatorConfig, clients: u64, t0: Instant) -> (Coordinator, Vec<ConnectionId>) {
    let mut coordinator = coordinator(CoordinatorConfig { round_interval: GATHER, ..config });
    for conn in 1..=clients {
        join(&mut coordinator, conn, t0);
    }
    assert_eq!(coordinator.poll_timeout(), Some(t0 + GATHER));
    coordinator.handle_timeout(t0 + GATHER);
    transmits(&mut coordinator);
    let Some(CoordinatorEvent::RoundStarted { round: 1, sampled, .. }) = events(&mut coordinator).pop() else {
        panic!("round 1 did not start");
    };
    (coordinator, sampled)
}

/// Three clients, all sampled in round 1 (started at `t0 + GATHER`), quorum `quorum`.
fn three_clients_in_round_one(quorum: usize, t0: Instant) -> Coordinator {
    let (coordinator, sampled) = gathered(config(quorum), 3, t0);
    assert_eq!(sampled, [ConnectionId(1), ConnectionId(2), ConnectionId(3)]);
    coordinator
}

#[test]
fn joining_client_gets_welcome_then_model_and_round_starts_at_quorum() {
    let t0 = Instant::now();
    let mut coordinator = coordinator(config(2));
    join(&mut coordinator, 7, t0);
    let sent = transmits(&mut coordinator);
    assert!(
        matches!(&sent[0], (ConnectionId(7), CoordinatorMessage::Welcome { client_id: 1, protocol_version: PROTOCOL_VERSION, round: 0, model_version: 0, fingerprint, .. }) if *fingerprint == FINGERPRINT)
    );
    let rules = UpdateRules { max_samples: Some(1000), feature_moments: true, ..UpdateRules::default() };
    assert_eq!(sent[1], (ConnectionId(7), CoordinatorMessage::Rules(rules)));
    assert!(
        matches!(&sent[2], (ConnectionId(7), CoordinatorMessage::Model { model_version: 0, params, .. }) if params.values == vec![1.0, 2.0])
    );
    assert_eq!(sent.len(), 3, "no round below the quorum");
    assert_eq!(coordinator.poll_timeout(), None);
    join(&mut coordinator, 8, t0);
    let requests: Vec<_> = transmits(&mut coordinator)
        .into_iter()
        .filter(|(_, m)| matches!(m, CoordinatorMessage::UpdateRequest { .. }))
        .collect();
    let request = CoordinatorMessage::UpdateRequest { round: 1, model_version: 0, deadline_ms: 10_000 };
    assert_eq!(requests, vec![(ConnectionId(7), request.clone()), (ConnectionId(8), request)]);
    assert_eq!(events(&mut coordinator).last(), Some(&started(1, 0, &[7, 8])));
    assert_eq!(coordinator.poll_timeout(), Some(t0 + Duration::from_secs(10)));
}

#[test]
fn full_round_with_three_clients_commits_the_sample_weighted_mean() {
    let t0 = Instant::now();
    let mut coordinator = coordinator(config(3));
    for conn in 1..=3 {
        join(&mut coordinator, conn, t0);
    }
    assert_eq!(events(&mut coordinator).pop(), Some(started(1, 0, &[1, 2, 3])));
    transmits(&mut coordinator);
    let t1 = t0 + Duration::from_secs(1);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 0.0], 1, 1), t1);
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![0.0, 2.0], 2, 0), t1);
    assert!(coordinator.round_in_progress());
    coordinator.handle_message(ConnectionId(3), update(1, 0, vec![-1.0, 4.0], 5, 1), t1);
    // x: 1 + (1·1 + 2·0 + 5·(−1))/8 = 0.5;  y: 2 + (1·0 + 2·2 + 5·4)/8 = 5.
    assert_eq!(coordinator.params().values, vec![0.5, 5.0]);
    assert_eq!(coordinator.model_version(), 1);
    let events = events(&mut coordinator);
    let committed = CoordinatorEvent::RoundCommitted {
        round: 1,
        model_version: 1,
        participants: 3,
        samples: 8,
        mean_local_error: Some(0.25),
        epsilon: None,
    };
    assert_eq!(events[3], committed);
    assert_eq!(events[4], started(2, 1, &[1, 2, 3]), "the next round starts right away");
    let sent = transmits(&mut coordinator);
    for (i, conn) in (1..=3).enumerate() {
        let (to, CoordinatorMessage::Model { model_version: 1, round: 2, params }) = &sent[i] else {
            panic!("expected the new model, got {:?}", sent[i]);
        };
        assert_eq!((*to, params.values.clone()), (ConnectionId(conn), vec![0.5, 5.0]));
    }
    assert!(matches!(sent[3].1, CoordinatorMessage::UpdateRequest { round: 2, model_version: 1, .. }));
    assert_eq!(coordinator.checkpoint().round, 2);
}

#[test]
fn poll_send_names_the_model_once_per_recipient_and_model_message_is_that_model() {
    let t0 = Instant::now();
    let mut coordinator = three_clients_in_round_one(3, t0);
    for conn in 1..=3 {
        coordinator.handle_message(ConnectionId(conn), update(1, 0, vec![2.0, 2.0], 1, 0), t0);
    }
    let sent: Vec<Transmit> = std::iter::from_fn(|| coordinator.poll_send()).collect();
    let models: Vec<(u64, u64, u64)> = sent
        .iter()
        .filter_map(|t| match t {
            Transmit::Model { conn, model_version, round } => Some((conn.0, *model_version, *round)),
            Transmit::Message(_, CoordinatorMessage::Model { .. }) => panic!("a model sent by value"),
            Transmit::Message(..) => None,
        })
        .collect();
    let round = coordinator.round();
    assert_eq!(models, [(1, 1, round), (2, 1, round), (3, 1, round)]);
    let CoordinatorMessage::Model { model_version: 1, round: r, params } = coordinator.model_message() else {
        panic!("not the model");
    };
    assert_eq!((r, params.values), (round, vec![3.0, 4.0]));
    // A client gone before its turn is skipped.
    join(&mut coordinator, 9, t0);
    coordinator.handle_disconnect(ConnectionId(9), t0);
    assert!(std::iter::from_fn(|| coordinator.poll_send()).all(|t| !matches!(t, Transmit::Model { .. })));
}

#[test]
fn participant_scaled_step_and_the_served_iterate_average() {
    use crate::aggregate::{StepSize, StrategyConfig};
    let t0 = Instant::now();
    let aggregation =
        StrategyConfig { step_size: StepSize::Participants, serve_average: 0.5, ..StrategyConfig::default() };
    let mut coordinator = joined_quietly(CoordinatorConfig { aggregation, ..config(2) }, 2, t0);
    let t1 = t0 + Duration::from_secs(1);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 0.0], 1, 0), t1);
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![0.0, 1.0], 1, 0), t1);
    // The mean (½, ½) times 2 participants: the sum of the clients' steps.
    assert_eq!(coordinator.params().values, vec![2.0, 3.0]);
    // The first served model is the first committed one.
    assert_eq!(coordinator.served().values, vec![2.0, 3.0]);
    transmits(&mut coordinator);
    coordinator.handle_message(ConnectionId(1), update(2, 1, vec![2.0, 0.0], 1, 0), t1);
    coordinator.handle_message(ConnectionId(2), update(2, 1, vec![2.0, 0.0], 1, 0), t1);
    assert_eq!(coordinator.params().values, vec![6.0, 3.0]);
    // ½·(2, 3) + ½·(6, 3): clients get the latest, users and the evaluation the average.
    assert_eq!(coordinator.served().values, vec![4.0, 3.0]);
    let checkpoint = coordinator.checkpoint();
    assert_eq!(checkpoint.served.as_ref().map(|s| s.values.clone()), Some(vec![4.0, 3.0]));
    let resumed = Coordinator::from_checkpoint(config(2), checkpoint.clone()).unwrap();
    assert_eq!(resumed.checkpoint(), checkpoint, "the served average survives a restart");
}

#[test]
fn an_inflated_sample_claim_is_refused_and_cannot_take_the_model_over() {
    let t0 = Instant::now();
    let capped = CoordinatorConfig { max_samples_per_update: Some(10), ..config(2) };
    assert_eq!(capped.update_rules().max_samples, Some(10), "clients are told the cap");
    let mut coordinator = joined_quietly(capped, 3, t0);
    // Round 1 started at the quorum with clients 1 and 2; round 2 samples all three.
    let t1 = t0 + Duration::from_secs(1);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 0.0], 10, 1), t1);
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![1.0, 0.0], 10, 1), t1);
    events(&mut coordinator);
    // Two honest clients with 10 samples each push x by +1; the attacker claims u64::MAX (an
    // uncapped sum would overflow) and pushes it by −100.
    coordinator.handle_message(ConnectionId(1), update(2, 1, vec![1.0, 0.0], 10, 1), t1);
    coordinator.handle_message(ConnectionId(2), update(2, 1, vec![1.0, 0.0], 10, 1), t1);
    coordinator.handle_message(ConnectionId(3), update(2, 1, vec![-100.0, 0.0], u64::MAX, 0), t1);
    // The attacker's update is refused: x = 1 + 1 + 1, the honest means only.
    let x = coordinator.params().values[0];
    assert!((x - 3.0).abs() < 1e-6, "{x}");
    let events = events(&mut coordinator);
    assert!(refused(&events).iter().any(|r| matches!(r, UpdateRefusal::SamplesOverCap { cap: 10, .. })), "{events:?}");
    let committed = events.iter().find_map(|e| match e {
        CoordinatorEvent::RoundCommitted { round: 2, samples, participants, .. } => Some((*samples, *participants)),
        _ => None,
    });
    assert_eq!(committed, Some((20, 2)), "only the honest updates count");
    let default_cap = CoordinatorConfig { round_interval: Duration::from_secs(20), ..config(1) }.sample_cap();
    assert_eq!(default_cap, 100 * 30, "100 samples/s over interval + deadline");
    assert_eq!(config(1).sample_cap(), 1000, "at least 1,000");
    assert!(CoordinatorConfig { max_samples_per_update: Some(0), ..config(1) }.validate().is_err());
}

#[test]
fn peer_text_is_escaped_and_truncated_and_errors_before_join_are_violations() {
    let forged = "edge\nINFO round committed round=99";
    assert_eq!(super::sanitize_peer_text(forged), "edge\\nINFO round committed round=99");
    let long = "x".repeat(1000);
    assert_eq!(super::sanitize_peer_text(&long).chars().count(), super::PEER_TEXT_MAX + 1);
    let t0 = Instant::now();
    let mut coordinator = coordinator(config(2));
    coordinator.handle_connect(ConnectionId(1), t0);
    let error = ClientMessage::Error { code: ErrorCode::Internal, message: "hello\nforged".into() };
    coordinator.handle_message(ConnectionId(1), error, t0);
    assert!(
        events(&mut coordinator).iter().any(|e| matches!(e, CoordinatorEvent::ProtocolViolation { .. })),
        "an Error before Join is a protocol violation, not a logged message"
    );
    assert!(super::constant_time_eq(b"token", b"token"));
    assert!(!super::constant_time_eq(b"token", b"tokem") && !super::constant_time_eq(b"token", b"tok"));
    let accepted: BTreeSet<String> = ["a-token".to_string(), "b-token".to_string()].into();
    assert!(super::token_accepted(&accepted, "b-token") && !super::token_accepted(&accepted, "c-token"));
}

#[test]
fn an_ipv6_host_counts_as_its_64_and_a_mapped_ipv4_as_itself() {
    let key = |text: &str| super::address_key(text.parse().unwrap()).to_string();
    assert_eq!(key("203.0.113.7"), "203.0.113.7");
    assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    // Every address of one /64 is one peer; the next /64 is another.
    assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
    assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
    assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
    assert_eq!(key("::1"), "::");
}

fn with_moments(message: ClientMessage, moments: FeatureMoments) -> ClientMessage {
    match message {
        ClientMessage::Update(update) => ClientMessage::Update(Update { moments: Some(moments), ..update }),
        other => other,
    }
}

fn moments(rows: &[[f32; 4]]) -> FeatureMoments {
    let mut moments = FeatureMoments::new(4);
    rows.iter().for_each(|row| moments.add_row(row));
    moments
}

/// Feature statistics come with plain updates, add up across clients and rounds, survive in
/// the checkpoint, and are refused when they do not fit the update or the model.
#[test]
fn feature_statistics_add_up_and_bad_ones_refuse_the_update() {
    let t0 = Instant::now();
    // Quorum 1: the round commits with the one accepted update once all three have answered.
    let mut coordinator = three_clients_in_round_one(1, t0);
    let t1 = t0 + GATHER;
    let a = moments(&[[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]]);
    coordinator.handle_message(ConnectionId(1), with_moments(update(1, 0, vec![1.0, 0.0], 2, 0), a.clone()), t1);
    // More rows than samples claimed, and statistics of another number of features.
    let too_many = moments(&[[0.0; 4]; 3]);
    coordinator.handle_message(ConnectionId(2), with_moments(update(1, 0, vec![1.0, 0.0], 2, 0), too_many), t1);
    let three_features = FeatureMoments { count: 1, sum: vec![1.0; 3], sum_squares: vec![1.0; 3] };
    coordinator.handle_message(ConnectionId(3), with_moments(update(1, 0, vec![1.0, 0.0], 2, 0), three_features), t1);
    let events = events(&mut coordinator);
    let refusals = refused(&events);
    assert_eq!(refusals.len(), 2, "{events:?}");
    assert!(refusals.iter().all(|r| matches!(r, UpdateRefusal::Moments(_))), "{refusals:?}");
    assert!(refusals[0].to_string().contains("more than the 2 samples"), "{}", refusals[0]);
    assert_eq!(coordinator.checkpoint().feature_moments, Some(a.clone()), "only the accepted update's statistics");

    // The next round adds to them; a restart goes on from the checkpoint.
    assert_eq!(coordinator.model_version(), 1);
    let t2 = t1 + GATHER;
    coordinator.handle_timeout(t2);
    let b = moments(&[[5.0, 5.0, 5.0, 5.0]]);
    for conn in 1..=3 {
        coordinator.handle_message(ConnectionId(conn), with_moments(update(2, 1, vec![0.0, 0.0], 1, 0), b.clone()), t2);
    }
    let total = coordinator.checkpoint().feature_moments.unwrap();
    assert_eq!(total.count, 5);
    assert_eq!(total.sum, vec![19.0, 19.0, 19.0, 19.0]);
    let resumed = Coordinator::from_checkpoint(config(3), coordinator.checkpoint()).unwrap();
    assert_eq!(resumed.checkpoint().feature_moments, Some(total));
}

#[test]
fn under_dp_no_feature_statistics_are_taken() {
    use crate::privacy::NoiseKey;
    use crate::round::config::{NoisePlacement, PrivacyConfig};
    let t0 = Instant::now();
    let privacy = PrivacyConfig {
        noise_multiplier: 1.0,
        clip: 10.0,
        placement: NoisePlacement::Central,
        delta: 1e-5,
        adaptive: None,
    };
    let dp = CoordinatorConfig { privacy: Some(privacy), noise_key: Some(NoiseKey([9; 32])), ..config(2) };
    assert!(!dp.update_rules().feature_moments, "clients are told to send none");
    let (mut coordinator, _) = gathered(dp, 2, t0);
    let t1 = t0 + GATHER + Duration::from_secs(1);
    let a = moments(&[[1.0, 2.0, 3.0, 4.0]]);
    coordinator.handle_message(ConnectionId(1), with_moments(update(1, 0, vec![1.0, 0.0], 1, 0), a), t1);
    let refusals = events(&mut coordinator);
    assert!(matches!(refused(&refusals)[..], [UpdateRefusal::Moments(_)]), "{refusals:?}");
    assert_eq!(coordinator.checkpoint().feature_moments, None);
}

#[test]
fn under_dp_the_mean_divides_by_the_public_expected_cohort_not_by_who_answered() {
    use crate::privacy::NoiseKey;
    use crate::round::config::{NoisePlacement, PrivacyConfig};
    let t0 = Instant::now();
    // No noise (z = 0) and a clip far above the deltas, to see the denominator exactly.
    let privacy = PrivacyConfig {
        noise_multiplier: 0.0,
        clip: 1000.0,
        placement: NoisePlacement::Central,
        delta: 1e-5,
        adaptive: None,
    };
    let dp = CoordinatorConfig { privacy: Some(privacy), noise_key: Some(NoiseKey([9; 32])), ..config(3) };
    let (mut coordinator, sampled) = gathered(dp, 4, t0);
    assert_eq!(sampled, (1..=4).map(ConnectionId).collect::<Vec<_>>(), "q = 1: Poisson sampling takes everyone");
    let t1 = t0 + GATHER + Duration::from_secs(1);
    for conn in 1..=3 {
        coordinator.handle_message(ConnectionId(conn), update(1, 0, vec![4.0, 0.0], 7, 0), t1);
    }
    coordinator.handle_timeout(t0 + GATHER + Duration::from_secs(11));
    // Three answered, the expected cohort is q·N = 4: x = 1 + 3·4/4 = 4, not 1 + 4 = 5.
    assert_eq!(coordinator.params().values, vec![4.0, 2.0]);
}

#[test]
fn unsupported_protocol_version_is_refused_and_closed() {
    let t0 = Instant::now();
    let mut coordinator = coordinator(config(1));
    coordinator.handle_connect(ConnectionId(1), t0);
    coordinator.handle_message(ConnectionId(1), join_message(PROTOCOL_VERSION + 1), t0);
    let sent = transmits(&mut coordinator);
    assert!(matches!(
        &sent[..],
        [(ConnectionId(1), CoordinatorMessage::Error { code: ErrorCode::UnsupportedVersion, .. })]
    ));
    assert_eq!(coordinator.poll_close(), Some((ConnectionId(1), CloseReason::Error(ErrorCode::UnsupportedVersion))));
    assert!(matches!(
        events(&mut coordinator)[..],
        [CoordinatorEvent::ClientRefused { code: ErrorCode::UnsupportedVersion, .. }]
    ));
    coordinator.handle_message(ConnectionId(1), join_message(PROTOCOL_VERSION), t0);
    assert_eq!(coordinator.joined(), 0, "a refused connection stays refused");
    assert!(transmits(&mut coordinator).is_empty());
}

#[test]
fn auth_tokens_are_checked_when_configured() {
    let t0 = Instant::now();
    let mut coordinator =
        coordinator(CoordinatorConfig { auth_tokens: Some(BTreeSet::from(["s3cret".to_string()])), ..config(5) });
    for (conn, token) in [(1, None), (2, Some("guess")), (3, Some("s3cret"))] {
        coordinator.handle_connect(ConnectionId(conn), t0);
        let join = ClientMessage::Join {
            protocol_version: PROTOCOL_VERSION,
            client_name: "c".into(),
            auth_token: token.map(String::from),
        };
        coordinator.handle_message(ConnectionId(conn), join, t0);
    }
    let closes: Vec<_> = std::iter::from_fn(|| coordinator.poll_close()).collect();
    let unauthorized = CloseReason::Error(ErrorCode::Unauthorized);
    assert_eq!(closes, vec![(ConnectionId(1), unauthorized.clone()), (ConnectionId(2), unauthorized)]);
    assert_eq!(coordinator.joined(), 1);
}

#[test]
fn update_with_nan_or_wrong_fingerprint_is_refused_and_the_round_fails_without_quorum() {
    let t0 = Instant::now();
    let mut coordinator = three_clients_in_round_one(2, t0);
    coordinator.handle_message(ConnectionId(3), update(1, 0, vec![1.0, 1.0], 4, 0), t0);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![f32::NAN, 0.0], 4, 0), t0);
    let mut foreign = update(1, 0, vec![0.0, 0.0], 4, 0);
    if let ClientMessage::Update(update) = &mut foreign {
        update.delta.fingerprint = Fingerprint(43);
    }
    coordinator.handle_message(ConnectionId(2), foreign, t0);
    let sent = transmits(&mut coordinator);
    assert!(sent.iter().all(|(_, m)| matches!(m, CoordinatorMessage::Error { code: ErrorCode::InvalidUpdate, .. })));
    assert_eq!(sent.len(), 2);
    let events = events(&mut coordinator);
    let reasons = refused(&events);
    assert_eq!(reasons.len(), 2);
    assert!(matches!(
        reasons[0],
        UpdateRefusal::Invalid(AggregateError::Parameters(ParameterError::NotFinite { index: 0, .. }))
    ));
    assert!(matches!(
        reasons[1],
        UpdateRefusal::Invalid(AggregateError::Parameters(ParameterError::LayoutMismatch { .. }))
    ));
    let failed =
        CoordinatorEvent::RoundFailed { round: 1, reason: RoundFailure::QuorumMissed { accepted: 1, needed: 2 } };
    assert!(events.contains(&failed), "all answered, one accepted: {events:?}");
    assert_eq!((coordinator.model_version(), coordinator.params().values.clone()), (0, vec![1.0, 2.0]));
    assert!(!coordinator.round_in_progress(), "the next round waits for the pause");
}

#[test]
fn stale_duplicate_and_unsolicited_updates_are_refused_and_the_round_goes_on() {
    let t0 = Instant::now();
    let (mut coordinator, sampled) = gathered(CoordinatorConfig { sample_fraction: 0.5, ..config(2) }, 4, t0);
    assert_eq!(sampled.len(), 2);
    let outsider = (1..=4).map(ConnectionId).find(|c| !sampled.contains(c)).unwrap();
    let (a, b) = (sampled[0], sampled[1]);
    coordinator.handle_message(a, update(0, 0, vec![0.0, 0.0], 1, 0), t0);
    coordinator.handle_message(a, update(1, 5, vec![0.0, 0.0], 1, 0), t0);
    coordinator.handle_message(outsider, update(1, 0, vec![0.0, 0.0], 1, 0), t0);
    coordinator.handle_message(a, update(1, 0, vec![2.0, 2.0], 1, 0), t0);
    coordinator.handle_message(a, update(1, 0, vec![2.0, 2.0], 1, 0), t0);
    let events = events(&mut coordinator);
    let expected = [
        UpdateRefusal::WrongRound { current: 1, found: 0 },
        UpdateRefusal::StaleBase { current: 0, found: 5 },
        UpdateRefusal::NotSampled,
        UpdateRefusal::Duplicate,
    ];
    assert_eq!(refused(&events), expected.iter().collect::<Vec<_>>());
    let codes: Vec<_> = transmits(&mut coordinator)
        .into_iter()
        .filter_map(|(_, m)| match m {
            CoordinatorMessage::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [ErrorCode::StaleUpdate, ErrorCode::StaleUpdate, ErrorCode::UnexpectedMessage, ErrorCode::UnexpectedMessage]
    );
    assert!(coordinator.round_in_progress(), "stale updates do not count as answers");
    coordinator.handle_message(b, update(1, 0, vec![4.0, 4.0], 3, 0), t0);
    assert_eq!(coordinator.params().values, vec![1.0 + 3.5, 2.0 + 3.5]);
}

#[test]
fn round_missing_quorum_at_the_deadline_fails_and_the_next_one_starts() {
    let t0 = Instant::now();
    let mut coordinator = three_clients_in_round_one(2, t0);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 1.0], 1, 0), t0);
    let deadline = coordinator.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + GATHER + Duration::from_secs(10));
    coordinator.handle_timeout(deadline - Duration::from_millis(1));
    assert!(coordinator.round_in_progress());
    coordinator.handle_timeout(deadline);
    let failed =
        CoordinatorEvent::RoundFailed { round: 1, reason: RoundFailure::QuorumMissed { accepted: 1, needed: 2 } };
    assert_eq!(events(&mut coordinator)[1..], [failed]);
    assert_eq!(coordinator.poll_timeout(), Some(deadline + GATHER), "the next round after the pause");
    coordinator.handle_timeout(deadline + GATHER);
    assert_eq!(events(&mut coordinator), [started(2, 0, &[1, 2, 3])]);
    assert_eq!(coordinator.model_version(), 0);
    // A late answer to round 1 is now stale.
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![1.0, 1.0], 1, 0), deadline);
    assert_eq!(refused(&self::events(&mut coordinator)), [&UpdateRefusal::WrongRound { current: 2, found: 1 }]);
}

#[test]
fn round_with_quorum_commits_at_the_deadline_without_the_silent_client() {
    let t0 = Instant::now();
    let mut coordinator = three_clients_in_round_one(2, t0);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 1.0], 1, 0), t0);
    coordinator.handle_message(ConnectionId(3), update(1, 0, vec![3.0, 3.0], 1, 0), t0);
    coordinator.handle_timeout(t0 + GATHER + Duration::from_secs(10));
    assert_eq!((coordinator.model_version(), coordinator.params().values.clone()), (1, vec![3.0, 4.0]));
}

#[test]
fn a_client_vanishing_mid_round_does_not_hang_it() {
    let t0 = Instant::now();
    let mut coordinator = three_clients_in_round_one(2, t0);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 1.0], 1, 0), t0);
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![3.0, 3.0], 1, 0), t0);
    coordinator.handle_disconnect(ConnectionId(3), t0);
    assert_eq!(coordinator.model_version(), 1, "committed as soon as the last pending client left");
    let events = events(&mut coordinator);
    assert!(events.contains(&CoordinatorEvent::ClientLeft { conn: ConnectionId(3), client_id: 3 }));
    coordinator.handle_timeout(t0 + GATHER);
    assert_eq!(self::events(&mut coordinator), [started(2, 1, &[1, 2])]);
    // Below the quorum, the round fails at once and no new round starts.
    coordinator.handle_disconnect(ConnectionId(2), t0);
    let events = self::events(&mut coordinator);
    assert!(matches!(events.last(), Some(CoordinatorEvent::RoundFailed { round: 2, .. })), "{events:?}");
    assert!(!coordinator.round_in_progress());
    assert_eq!(coordinator.poll_timeout(), None);
    assert!(transmits(&mut coordinator).iter().all(|(conn, _)| *conn == ConnectionId(1)));
}

#[test]
fn silent_or_out_of_order_connections_are_closed() {
    let t0 = Instant::now();
    let mut coordinator = coordinator(config(1));
    coordinator.handle_connect(ConnectionId(1), t0);
    coordinator.handle_connect(ConnectionId(2), t0);
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![0.0, 0.0], 1, 0), t0);
    coordinator.handle_connect(ConnectionId(3), t0);
    coordinator.handle_payload(ConnectionId(3), Payload::from(Bytes::from_static(&[0xff, 0xff])), t0);
    assert_eq!(coordinator.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    coordinator.handle_timeout(t0 + Duration::from_secs(5));
    let closes: Vec<_> = std::iter::from_fn(|| coordinator.poll_close()).collect();
    assert_eq!(
        closes,
        [
            (ConnectionId(2), CloseReason::Error(ErrorCode::UnexpectedMessage)),
            (ConnectionId(3), CloseReason::Error(ErrorCode::Malformed)),
            (ConnectionId(1), CloseReason::Error(ErrorCode::Timeout)),
        ]
    );
    assert_eq!(coordinator.poll_timeout(), None);
}

#[test]
fn round_interval_paces_rounds_and_goodbye_closes() {
    let t0 = Instant::now();
    let pause = Duration::from_secs(30);
    let mut coordinator = coordinator(CoordinatorConfig { round_interval: pause, ..config(1) });
    join(&mut coordinator, 1, t0);
    assert!(!coordinator.round_in_progress());
    assert_eq!(coordinator.poll_timeout(), Some(t0 + pause));
    coordinator.handle_timeout(t0 + pause);
    assert_eq!(coordinator.round(), 1);
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 1.0], 1, 0), t0 + pause);
    assert_eq!((coordinator.round_in_progress(), coordinator.model_version()), (false, 1));
    assert_eq!(coordinator.poll_timeout(), Some(t0 + 2 * pause));
    coordinator.handle_timeout(t0 + 2 * pause);
    assert_eq!(coordinator.round(), 2);
    coordinator.handle_message(ConnectionId(1), ClientMessage::Goodbye { reason: "done".into() }, t0 + 2 * pause);
    assert_eq!(coordinator.poll_close(), Some((ConnectionId(1), CloseReason::Goodbye)));
    assert!(matches!(events(&mut coordinator).last(), Some(CoordinatorEvent::RoundFailed { round: 2, .. })));
    assert_eq!(coordinator.poll_timeout(), None);
}

#[test]
fn resumes_from_a_checkpoint() {
    let t0 = Instant::now();
    let checkpoint = Checkpoint {
        round: 41,
        model_version: 17,
        spec: HbpConfig::new(4, 2).into(),
        params: vector(vec![0.0, 0.0]),
        served: None,
        accountant: None,
        adaptive_clip: None,
        feature_moments: None,
    };
    let mut coordinator = Coordinator::from_checkpoint(config(1), checkpoint.clone()).unwrap();
    assert_eq!(coordinator.checkpoint(), checkpoint);
    join(&mut coordinator, 1, t0);
    assert!(matches!(
        transmits(&mut coordinator)[3],
        (_, CoordinatorMessage::UpdateRequest { round: 42, model_version: 17, .. })
    ));
    coordinator.handle_message(ConnectionId(1), update(42, 17, vec![1.0, -1.0], 1, 0), t0);
    let resumed = coordinator.checkpoint();
    assert_eq!((resumed.round, resumed.model_version, resumed.params.values), (43, 18, vec![1.0, -1.0]));
}

#[test]
fn invalid_configurations_are_refused() {
    let spec = HbpConfig::new(4, 2);
    let make = |config| Coordinator::new(config, spec.clone(), vector(vec![0.0])).err();
    assert_eq!(make(config(0)), Some(ConfigError::ZeroQuorum));
    assert_eq!(make(CoordinatorConfig { sample_fraction: 0.0, ..config(1) }), Some(ConfigError::SampleFraction(0.0)));
    assert_eq!(
        make(CoordinatorConfig { round_deadline: Duration::ZERO, ..config(1) }),
        Some(ConfigError::ZeroDeadline)
    );
    let forever = Duration::from_secs(u64::MAX);
    assert_eq!(
        make(CoordinatorConfig { join_timeout: forever, ..config(1) }),
        Some(ConfigError::TooLong("join_timeout"))
    );
    assert_eq!(config(3).sample_size(2), 0);
    assert_eq!(CoordinatorConfig { sample_fraction: 0.3, ..config(2) }.sample_size(10), 3);
    assert_eq!(CoordinatorConfig { sample_fraction: 0.1, ..config(2) }.sample_size(10), 2);
}

#[test]
fn shutdown_says_goodbye_abandons_the_round_and_refuses_joins() {
    let t0 = Instant::now();
    let mut coordinator = three_clients_in_round_one(2, t0);
    coordinator.shutdown("maintenance");
    let goodbyes = transmits(&mut coordinator);
    assert_eq!(goodbyes.len(), 3);
    assert!(goodbyes.iter().all(|(_, m)| *m == CoordinatorMessage::Goodbye { reason: "maintenance".into() }));
    assert_eq!(std::iter::from_fn(|| coordinator.poll_close()).count(), 3);
    let failed = CoordinatorEvent::RoundFailed { round: 1, reason: RoundFailure::ShuttingDown };
    assert_eq!(events(&mut coordinator)[0], failed);
    join(&mut coordinator, 9, t0);
    assert_eq!(coordinator.poll_close(), Some((ConnectionId(9), CloseReason::Error(ErrorCode::ShuttingDown))));
    assert_eq!((coordinator.round(), coordinator.poll_timeout()), (1, None));
}

mod strategies;

fn closes(coordinator: &mut Coordinator) -> Vec<(ConnectionId, CloseReason)> {
    std::iter::from_fn(|| coordinator.poll_close()).collect()
}

fn join_with_token(coordinator: &mut Coordinator, conn: u64, token: &str, now: Instant) {
    coordinator.handle_connect(ConnectionId(conn), now);
    let join = ClientMessage::Join {
        protocol_version: PROTOCOL_VERSION,
        client_name: "edge".into(),
        auth_token: Some(token.into()),
    };
    coordinator.handle_message(ConnectionId(conn), join, now);
}

#[test]
fn a_new_session_of_a_token_replaces_the_oldest_beyond_the_limit() {
    let t0 = Instant::now();
    let tokens: BTreeSet<String> = ["alpha".to_string(), "beta".to_string()].into();
    let mut machine = coordinator(CoordinatorConfig { auth_tokens: Some(tokens.clone()), ..config(5) });
    join_with_token(&mut machine, 1, "alpha", t0);
    join_with_token(&mut machine, 2, "beta", t0);
    assert!(closes(&mut machine).is_empty(), "two identities, one session each");
    join_with_token(&mut machine, 3, "alpha", t0);
    assert_eq!(closes(&mut machine), vec![(ConnectionId(1), CloseReason::Error(ErrorCode::SessionReplaced))]);
    assert_eq!(machine.joined(), 2);
    let replaced = events(&mut machine).into_iter().any(|e| {
        matches!(e, CoordinatorEvent::ClientRefused { conn: ConnectionId(1), code: ErrorCode::SessionReplaced, .. })
    });
    assert!(replaced, "the replacement is reported");

    // Two sessions per identity: the third closes the oldest only.
    let two = CoordinatorConfig { auth_tokens: Some(tokens.clone()), sessions_per_identity: 2, ..config(5) };
    let mut machine = coordinator(two);
    for conn in 1..=3 {
        join_with_token(&mut machine, conn, "alpha", t0);
    }
    assert_eq!(closes(&mut machine), vec![(ConnectionId(1), CloseReason::Error(ErrorCode::SessionReplaced))]);
    assert_eq!(machine.joined(), 2);

    // No limit: a fleet sharing one token.
    let unlimited = CoordinatorConfig { auth_tokens: Some(tokens), sessions_per_identity: 0, ..config(50) };
    let mut machine = coordinator(unlimited);
    for conn in 1..=10 {
        join_with_token(&mut machine, conn, "alpha", t0);
    }
    assert!(closes(&mut machine).is_empty());
    assert_eq!(machine.joined(), 10);
}

#[test]
fn a_certificate_identity_wins_over_the_token_and_anonymous_peers_are_not_limited() {
    let t0 = Instant::now();
    let mut coordinator = coordinator(config(50));
    let device = Identity::of_certificate(b"device certificate");
    for conn in 1..=3 {
        coordinator.handle_connect_as(ConnectionId(conn), Some(device), t0);
        coordinator.handle_message(ConnectionId(conn), join_message(PROTOCOL_VERSION), t0);
    }
    let closed: Vec<_> = closes(&mut coordinator).into_iter().map(|(conn, _)| conn).collect();
    assert_eq!(closed, vec![ConnectionId(1), ConnectionId(2)], "one live session per certificate");
    for conn in 10..20 {
        join(&mut coordinator, conn, t0);
    }
    assert!(closes(&mut coordinator).is_empty(), "without credentials there is no identity to limit");
    assert_eq!(coordinator.joined(), 11);
    assert_ne!(Identity::of_certificate(b"x"), Identity::of_token("x"), "identities are domain-separated");
}

#[test]
fn a_round_with_a_goal_commits_without_waiting_for_stragglers() {
    let t0 = Instant::now();
    let goal = CoordinatorConfig { round_goal: Some(2), round_interval: Duration::from_secs(1), ..config(2) };
    let mut coordinator = joined_quietly(goal, 4, t0);
    let t1 = t0 + Duration::from_secs(1);
    coordinator.handle_timeout(t1);
    assert!(coordinator.round_in_progress());
    coordinator.handle_message(ConnectionId(1), update(1, 0, vec![1.0, 0.0], 10, 1), t1);
    assert!(coordinator.round_in_progress(), "one update is below the goal");
    coordinator.handle_message(ConnectionId(2), update(1, 0, vec![1.0, 0.0], 10, 1), t1);
    let committed = events(&mut coordinator)
        .into_iter()
        .any(|e| matches!(e, CoordinatorEvent::RoundCommitted { round: 1, participants: 2, .. }));
    assert!(committed, "committed at the goal, clients 3 and 4 not awaited");
    let below = CoordinatorConfig { round_goal: Some(1), ..config(2) };
    assert!(matches!(below.validate(), Err(ConfigError::GoalBelowQuorum { goal: 1, min_clients: 2 })));
}

#[test]
fn an_identity_closed_for_misbehaviour_waits_out_its_penalty() {
    let t0 = Instant::now();
    let tokens: BTreeSet<String> = ["alpha".to_string()].into();
    let config =
        CoordinatorConfig { auth_tokens: Some(tokens), misbehaviour_penalty: Duration::from_secs(60), ..config(5) };
    let mut machine = coordinator(config);
    join_with_token(&mut machine, 1, "alpha", t0);
    assert_eq!(machine.joined(), 1);
    // The shell closed it for a missed frame deadline.
    machine.handle_misbehaviour(ConnectionId(1), t0);
    machine.handle_disconnect(ConnectionId(1), t0);
    closes(&mut machine);
    events(&mut machine);
    join_with_token(&mut machine, 2, "alpha", t0 + Duration::from_secs(30));
    assert_eq!(closes(&mut machine), vec![(ConnectionId(2), CloseReason::Error(ErrorCode::Timeout))]);
    assert_eq!(machine.joined(), 0, "barred for the penalty");
    join_with_token(&mut machine, 3, "alpha", t0 + Duration::from_secs(61));
    assert!(closes(&mut machine).is_empty());
    assert_eq!(machine.joined(), 1, "welcome again once the penalty lapsed");
    // A protocol violation bars too.
    machine.handle_message(ConnectionId(3), join_message(PROTOCOL_VERSION), t0 + Duration::from_secs(62));
    closes(&mut machine);
    join_with_token(&mut machine, 4, "alpha", t0 + Duration::from_secs(63));
    assert_eq!(machine.joined(), 0, "a second Join is a violation and bars the identity");
}

mod tree;
