use super::*;
use crate::model::HbpConfig;
use crate::params::PARAMETER_FORMAT_VERSION;
use crate::wire::{LocalMetrics, UpdateRules};
use bytes::Bytes;

const FINGERPRINT: Fingerprint = Fingerprint(42);

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: FINGERPRINT, values }
}

fn welcome(protocol_version: u16) -> CoordinatorMessage {
    CoordinatorMessage::Welcome {
        client_id: 5,
        protocol_version,
        spec: HbpConfig::new(4, 2).into(),
        fingerprint: FINGERPRINT,
        round: 3,
        model_version: 2,
    }
}

fn model(model_version: u64, values: Vec<f32>) -> CoordinatorMessage {
    CoordinatorMessage::Model { model_version, round: 3, params: vector(values) }
}

fn events(client: &mut Client) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

/// Submits `delta` over `samples` samples (the counters' sample count set to it).
fn submit(client: &mut Client, delta: ParameterVector, samples: u64, metrics: LocalMetrics) -> Result<(), SubmitError> {
    client.submit_update(Contribution {
        delta,
        metrics: LocalMetrics { samples, ..metrics },
        moments: None,
        cohort: None,
    })
}

/// A client welcomed and holding model version 2.
fn ready(now: Instant) -> Client {
    let mut client = Client::new("edge-1", Some("token".into()));
    client.poll_transmit();
    client.handle_message(welcome(PROTOCOL_VERSION), now);
    client.handle_message(model(2, vec![0.0, 0.0]), now);
    events(&mut client);
    client
}

#[test]
fn join_welcome_model_request_update() {
    let t0 = Instant::now();
    let mut client = Client::new("edge-1", Some("token".into()));
    let join = ClientMessage::Join {
        protocol_version: PROTOCOL_VERSION,
        client_name: "edge-1".into(),
        auth_token: Some("token".into()),
    };
    assert_eq!(client.poll_transmit(), Some(join));
    assert_eq!(client.poll_transmit(), None);
    client.handle_message(welcome(PROTOCOL_VERSION), t0);
    client.handle_message(model(2, vec![0.5, 1.5]), t0);
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 3, model_version: 2, deadline_ms: 2500 }, t0);
    let deadline = t0 + Duration::from_millis(2500);
    assert_eq!(
        events(&mut client),
        [
            ClientEvent::Welcomed {
                client_id: 5,
                spec: HbpConfig::new(4, 2).into(),
                fingerprint: FINGERPRINT,
                round: 3,
                model_version: 2
            },
            ClientEvent::ModelReceived { model_version: 2, round: 3, params: vector(vec![0.5, 1.5]) },
            ClientEvent::UpdateRequested { round: 3, model_version: 2, deadline },
        ]
    );
    assert_eq!((client.client_id(), client.model_version(), client.poll_timeout()), (Some(5), Some(2), Some(deadline)));
    let metrics = LocalMetrics { samples: 10, prequential_errors: 3 };
    submit(&mut client, vector(vec![0.25, -0.25]), 10, metrics).unwrap();
    let update = Update { round: 3, base_version: 2, delta: vector(vec![0.25, -0.25]), metrics, moments: None };
    assert_eq!(client.poll_transmit(), Some(ClientMessage::Update(update)));
    assert_eq!(submit(&mut client, vector(vec![0.0, 0.0]), 1, metrics), Err(SubmitError::NoPendingRequest));
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn welcome_of_another_protocol_version_ends_the_session() {
    let mut client = Client::new("edge-1", None);
    client.poll_transmit();
    client.handle_message(welcome(PROTOCOL_VERSION + 1), Instant::now());
    assert!(matches!(
        events(&mut client)[..],
        [ClientEvent::Refused { code: ErrorCode::UnsupportedVersion, .. }, ClientEvent::Closed { .. }]
    ));
    assert!(matches!(client.poll_transmit(), Some(ClientMessage::Error { code: ErrorCode::UnsupportedVersion, .. })));
    assert_eq!(client.poll_close(), Some(CloseReason::Error(ErrorCode::UnsupportedVersion)));
    assert!(client.is_closed());
}

#[test]
fn refused_join_ends_the_session() {
    let mut client = Client::new("edge-1", None);
    client.poll_transmit();
    let error = CoordinatorMessage::Error { code: ErrorCode::Unauthorized, message: "no".into() };
    client.handle_message(error, Instant::now());
    assert_eq!(events(&mut client)[0], ClientEvent::Refused { code: ErrorCode::Unauthorized, message: "no".into() });
    assert_eq!(client.poll_close(), Some(CloseReason::Error(ErrorCode::Unauthorized)));
    assert_eq!(submit(&mut client, vector(vec![0.0]), 1, LocalMetrics::default()), Err(SubmitError::Closed));
}

#[test]
fn invalid_submissions_are_refused_locally() {
    let t0 = Instant::now();
    let mut client = ready(t0);
    let metrics = LocalMetrics { samples: 1, prequential_errors: 0 };
    assert_eq!(submit(&mut client, vector(vec![0.0, 0.0]), 1, metrics), Err(SubmitError::NoPendingRequest));
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 3, model_version: 2, deadline_ms: 1000 }, t0);
    assert_eq!(submit(&mut client, vector(vec![0.0, 0.0]), 0, metrics), Err(SubmitError::ZeroSamples));
    let nan = submit(&mut client, vector(vec![f32::NAN, 0.0]), 1, metrics);
    assert!(matches!(nan, Err(SubmitError::Parameters(ParameterError::NotFinite { index: 0, .. }))));
    let short = submit(&mut client, vector(vec![0.0]), 1, metrics);
    assert!(matches!(short, Err(SubmitError::Parameters(ParameterError::LengthMismatch { .. }))));
    let lying = LocalMetrics { samples: 1, prequential_errors: 2 };
    assert_eq!(submit(&mut client, vector(vec![0.0, 0.0]), 1, lying), Err(SubmitError::InconsistentMetrics));
    assert_eq!(client.poll_transmit(), None);
}

#[test]
fn requests_lapse_at_their_deadline_or_with_a_newer_model() {
    let t0 = Instant::now();
    let mut client = ready(t0);
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 3, model_version: 2, deadline_ms: 1000 }, t0);
    client.handle_timeout(t0 + Duration::from_millis(999));
    assert_eq!(client.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    client.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(events(&mut client).pop(), Some(ClientEvent::RequestExpired { round: 3 }));
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 4, model_version: 2, deadline_ms: 1000 }, t0);
    client.handle_message(model(3, vec![1.0, 1.0]), t0);
    assert!(events(&mut client).contains(&ClientEvent::RequestExpired { round: 4 }));
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 5, model_version: 2, deadline_ms: 1000 }, t0);
    assert!(events(&mut client).is_empty(), "a request for a model not held is ignored");
}

#[test]
fn a_model_of_another_layout_or_out_of_order_messages_end_the_session() {
    let t0 = Instant::now();
    let mut client = ready(t0);
    let mut foreign = vector(vec![0.0, 0.0]);
    foreign.fingerprint = Fingerprint(7);
    client.handle_message(CoordinatorMessage::Model { model_version: 3, round: 4, params: foreign }, t0);
    assert_eq!(client.poll_close(), Some(CloseReason::Error(ErrorCode::Malformed)));

    let mut early = Client::new("edge-2", None);
    early.poll_transmit();
    early.handle_message(model(1, vec![0.0]), t0);
    assert_eq!(early.poll_close(), Some(CloseReason::Error(ErrorCode::UnexpectedMessage)));

    let mut garbage = Client::new("edge-3", None);
    garbage.handle_payload(Payload::from(Bytes::from_static(&[0xff, 0x00])), t0);
    assert_eq!(garbage.poll_close(), Some(CloseReason::Error(ErrorCode::Malformed)));
}

#[test]
fn leaving_says_goodbye_once() {
    let mut client = ready(Instant::now());
    client.leave("shutting down");
    client.leave("again");
    assert_eq!(client.poll_transmit(), Some(ClientMessage::Goodbye { reason: "shutting down".into() }));
    assert_eq!(client.poll_transmit(), None);
    assert_eq!(client.poll_close(), Some(CloseReason::Goodbye));
}

#[test]
fn a_standing_request_rests_on_the_model_held_and_survives_newer_models() {
    let t0 = Instant::now();
    let mut client = ready(t0);
    let held = client.model_version().unwrap();
    let ask = CoordinatorMessage::UpdateRequest { round: 7, model_version: ANY_MODEL_VERSION, deadline_ms: 1000 };
    client.handle_message(ask, t0);
    let deadline = t0 + Duration::from_secs(1);
    assert_eq!(events(&mut client), [ClientEvent::UpdateRequested { round: 7, model_version: held, deadline }]);
    assert!(client.standing_request());
    // A newer model arrives while the learner works on the older one: the request stays.
    client.handle_message(model(held + 1, vec![1.0, 1.0]), t0);
    assert!(!events(&mut client).iter().any(|e| matches!(e, ClientEvent::RequestExpired { .. })));
    let metrics = LocalMetrics { samples: 1, prequential_errors: 0 };
    submit(&mut client, vector(vec![0.5, 0.5]), 1, metrics).unwrap();
    let update = Update { round: 7, base_version: held, delta: vector(vec![0.5, 0.5]), metrics, moments: None };
    assert_eq!(client.poll_transmit(), Some(ClientMessage::Update(update)));
    // Asked again; the learner could not answer on the older model, so it rests on the newer.
    client.handle_message(
        CoordinatorMessage::UpdateRequest { round: 8, model_version: ANY_MODEL_VERSION, deadline_ms: 1000 },
        t0,
    );
    client.handle_message(model(held + 2, vec![2.0, 2.0]), t0);
    assert_eq!(client.rebase_standing_request(), Some((8, held + 2)));
    submit(&mut client, vector(vec![0.5, 0.5]), 1, metrics).unwrap();
    assert!(
        matches!(client.poll_transmit(), Some(ClientMessage::Update(Update { base_version, .. })) if base_version == held + 2)
    );
    assert_eq!(client.rebase_standing_request(), None);
    // The deadline still applies.
    client.handle_message(
        CoordinatorMessage::UpdateRequest { round: 9, model_version: ANY_MODEL_VERSION, deadline_ms: 1000 },
        t0,
    );
    client.handle_timeout(deadline);
    assert!(events(&mut client).contains(&ClientEvent::RequestExpired { round: 9 }));
}

#[test]
fn a_claim_above_the_coordinators_cap_is_sent_as_the_cap() {
    let t0 = Instant::now();
    let mut client = ready(t0);
    let rules = crate::wire::UpdateRules { max_samples: Some(50), ..Default::default() };
    client.handle_message(CoordinatorMessage::Rules(rules), t0);
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 3, model_version: 2, deadline_ms: 2500 }, t0);
    let metrics = LocalMetrics { samples: 500, prequential_errors: 100 };
    submit(&mut client, vector(vec![0.25, -0.25]), 500, metrics).unwrap();
    let sent = std::iter::from_fn(|| client.poll_transmit()).find_map(|m| match m {
        ClientMessage::Update(update) => Some(update),
        _ => None,
    });
    let update = sent.expect("the update is sent");
    assert_eq!(update.metrics, LocalMetrics { samples: 50, prequential_errors: 10 });
}

/// Feature statistics go with a plain update only where the rules take them, scaled down with
/// a capped sample claim; a secure or DP coordinator never sees them.
#[test]
fn feature_statistics_are_sent_only_where_the_rules_take_them() {
    use crate::model::FeatureMoments;
    let t0 = Instant::now();
    let mut stats = FeatureMoments::new(4);
    (0..10).for_each(|i| stats.add_row(&[i as f32, 1.0, 2.0, 3.0]));
    let request = CoordinatorMessage::UpdateRequest { round: 3, model_version: 2, deadline_ms: 2500 };
    let metrics = LocalMetrics { samples: 10, prequential_errors: 1 };
    let send = |rules: UpdateRules| {
        let mut client = ready(t0);
        client.handle_message(CoordinatorMessage::Rules(rules), t0);
        client.handle_message(request.clone(), t0);
        let contribution =
            Contribution { delta: vector(vec![0.1, 0.1]), metrics, moments: Some(stats.clone()), cohort: None };
        client.submit_update(contribution).unwrap();
        match client.poll_transmit() {
            Some(ClientMessage::Update(update)) => update.moments,
            other => panic!("expected an update, got {other:?}"),
        }
    };
    assert_eq!(send(UpdateRules { feature_moments: true, ..UpdateRules::default() }), Some(stats.clone()));
    assert_eq!(send(UpdateRules::default()), None, "not taken: not sent");
    let capped = send(UpdateRules { feature_moments: true, max_samples: Some(5), ..UpdateRules::default() }).unwrap();
    assert_eq!(capped.count, 5);
    assert_eq!(capped.mean_std(), stats.mean_std(), "scaled, the mean and spread kept");
}

#[test]
fn a_redirect_ends_the_session_with_where_to_go_and_a_decline_frees_the_round() {
    let now = Instant::now();
    let endpoint = crate::wire::Endpoint { address: "10.0.0.7:4433".into(), server_name: "edge-7".into() };
    let mut client = Client::new("device", None);
    client.poll_transmit(); // Join
    client.handle_message(CoordinatorMessage::Redirect(endpoint.clone()), now);
    assert!(events(&mut client).contains(&ClientEvent::Redirected(endpoint)));
    assert_eq!(client.poll_close(), Some(CloseReason::Goodbye));
    // An unreadable redirect is a violation.
    let mut client = Client::new("device", None);
    let bad = crate::wire::Endpoint { address: "evil\n:1".into(), server_name: String::new() };
    client.handle_message(CoordinatorMessage::Redirect(bad), now);
    assert!(matches!(client.poll_close(), Some(CloseReason::Error(ErrorCode::Malformed))));
    // Declining a pending request tells the coordinator once; nothing is pending after it.
    let mut client = Client::new("device", None);
    client.handle_message(welcome(PROTOCOL_VERSION), now);
    client.handle_message(model(2, vec![0.0, 0.0]), now);
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 3, model_version: 2, deadline_ms: 1000 }, now);
    while client.poll_transmit().is_some() {}
    client.decline("nothing learnt");
    client.decline("nothing learnt");
    let sent: Vec<_> = std::iter::from_fn(|| client.poll_transmit()).collect();
    assert!(matches!(&sent[..], [ClientMessage::Error { code: ErrorCode::Declined, .. }]), "{sent:?}");
    assert_eq!(
        submit(&mut client, vector(vec![0.1, 0.1]), 3, LocalMetrics::default()),
        Err(SubmitError::NoPendingRequest)
    );
}
