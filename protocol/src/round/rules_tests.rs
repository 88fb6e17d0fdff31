//! End to end without sockets: secure aggregation (with dropouts), compressed updates and
//! differential privacy through the real coordinator and client state machines.

use std::time::{Duration, Instant};

use super::config::{NoisePlacement, PrivacyConfig, SecureConfig};
use super::*;
use crate::compress::Compression;
use crate::model::{FeatureMoments, HbpConfig};
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};
use crate::privacy::NoiseKey;
use crate::secagg;
use crate::wire::framing::{FrameDecoder, FrameLimit, encode_frame};
use crate::wire::{ClientMessage, Contribution, CoordinatorMessage, LocalMetrics};

const LEN: usize = 64;

/// What a driven round leaves: (participants, ε) per commit, the coordinator and the clients.
type RoundOutcome = (Vec<(usize, Option<f64>)>, Coordinator, Vec<Edge>);
const DEADLINE: Duration = Duration::from_secs(30);
const PHASE: Duration = Duration::from_secs(5);

/// When a client stops answering.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Drop {
    Never,
    /// Never answers the update request (so never sends a masked input).
    BeforeMasking,
    /// Goes silent right after sending its masked input.
    AfterMasking,
}

struct Edge {
    conn: ConnectionId,
    client: Client,
    inbound: FrameDecoder,
    outbound: FrameDecoder,
    delta: Vec<f32>,
    /// The feature statistics of its rows (two features).
    moments: FeatureMoments,
    drop: Drop,
    silent: bool,
    /// What the coordinator sent it, in order: `Model v…`, `Request r…`, `Setup r…` (others
    /// by their kind).
    received: Vec<String>,
}

fn kind(message: &CoordinatorMessage) -> String {
    match message {
        CoordinatorMessage::Model { model_version, .. } => format!("Model v{model_version}"),
        CoordinatorMessage::UpdateRequest { round, .. } => format!("Request r{round}"),
        CoordinatorMessage::SecAgg { round, message: secagg::ServerMessage::Setup(_) } => format!("Setup r{round}"),
        CoordinatorMessage::SecAgg { round, .. } => format!("SecAgg r{round}"),
        other => format!("{other:?}").chars().take_while(|c| c.is_alphanumeric()).collect(),
    }
}

fn delta(i: usize) -> Vec<f32> {
    (0..LEN).map(|j| ((i * 31 + j * 7) % 23) as f32 / 23.0 - 0.5).collect()
}

fn edges(drops: &[Drop]) -> Vec<Edge> {
    drops
        .iter()
        .enumerate()
        .map(|(i, drop)| Edge {
            conn: ConnectionId(i as u64),
            client: Client::new(format!("edge-{i}"), None).with_entropy([i as u8 + 1; 32]),
            inbound: FrameDecoder::new(FrameLimit::DEFAULT),
            outbound: FrameDecoder::new(FrameLimit::DEFAULT),
            delta: delta(i),
            moments: {
                let mut moments = FeatureMoments::new(2);
                let x = i as f32;
                moments.add_row(&[x, -2.0 * x]);
                moments.add_row(&[0.5, x * x - 3.0]);
                moments
            },
            drop: *drop,
            silent: false,
            received: Vec::new(),
        })
        .collect()
}

fn coordinator(config: CoordinatorConfig) -> Coordinator {
    let initial = ParameterVector {
        format_version: PARAMETER_FORMAT_VERSION,
        fingerprint: Fingerprint(9),
        values: vec![0.0; LEN],
    };
    Coordinator::new(config, HbpConfig::new(2, 2), initial).unwrap()
}

/// Moves messages until both sides are quiet; clients answer round 1 only.
fn pump(coordinator: &mut Coordinator, edges: &mut [Edge], now: Instant) {
    loop {
        let mut moved = false;
        for edge in edges.iter_mut().filter(|e| !e.silent) {
            while let Some(message) = edge.client.poll_transmit() {
                let masked =
                    matches!(message, ClientMessage::SecAgg { message: secagg::ClientMessage::MaskedInput(_), .. });
                edge.outbound.push(&encode_frame(&message, FrameLimit::DEFAULT).unwrap());
                moved = true;
                if masked && edge.drop == Drop::AfterMasking {
                    edge.silent = true;
                    break;
                }
            }
            while let Some(payload) = edge.outbound.poll_payload().unwrap() {
                coordinator.handle_payload(edge.conn, payload, now);
            }
        }
        while let Some((conn, message)) = coordinator.poll_transmit() {
            let edge = edges.iter_mut().find(|e| e.conn == conn).unwrap();
            if !edge.silent {
                edge.received.push(kind(&message));
                edge.inbound.push(&encode_frame(&message, FrameLimit::DEFAULT).unwrap());
                moved = true;
            }
        }
        for edge in edges.iter_mut().filter(|e| !e.silent) {
            while let Some(payload) = edge.inbound.poll_payload().unwrap() {
                edge.client.handle_payload(payload, now);
            }
            while let Some(event) = edge.client.poll_event() {
                if let ClientEvent::UpdateRequested { round: 1, .. } = event
                    && edge.drop != Drop::BeforeMasking
                {
                    let delta = ParameterVector {
                        format_version: PARAMETER_FORMAT_VERSION,
                        fingerprint: Fingerprint(9),
                        values: edge.delta.clone(),
                    };
                    edge.client
                        .submit_update(Contribution {
                            delta,
                            metrics: LocalMetrics { samples: 10, prequential_errors: 1 },
                            moments: Some(edge.moments.clone()),
                            cohort: None,
                        })
                        .unwrap();
                }
            }
        }
        if !moved {
            return;
        }
    }
}

fn commits(coordinator: &mut Coordinator) -> Vec<(usize, Option<f64>)> {
    std::iter::from_fn(|| coordinator.poll_event())
        .filter_map(|e| match e {
            CoordinatorEvent::RoundCommitted { participants, epsilon, .. } => Some((participants, epsilon)),
            _ => None,
        })
        .collect()
}

fn mean_of(edges: &[Edge], included: impl Fn(&Edge) -> bool) -> Vec<f32> {
    let chosen: Vec<&Edge> = edges.iter().filter(|e| included(e)).collect();
    (0..LEN).map(|j| chosen.iter().map(|e| e.delta[j]).sum::<f32>() / chosen.len() as f32).collect()
}

/// The merged feature statistics of the chosen edges.
fn moments_of(edges: &[Edge], included: impl Fn(&Edge) -> bool) -> FeatureMoments {
    let mut total = FeatureMoments::new(2);
    edges.iter().filter(|e| included(e)).for_each(|e| total.merge(&e.moments).unwrap());
    total
}

/// The coordinator's feature statistics are `expected` (to the masked encoding's 2^-32).
fn assert_moments(coordinator: &Coordinator, expected: &FeatureMoments) {
    let found = coordinator.checkpoint().feature_moments.expect("feature statistics");
    assert_eq!(found.count, expected.count);
    let (found, expected) =
        (found.sum.iter().chain(&found.sum_squares), expected.sum.iter().chain(&expected.sum_squares));
    for (a, b) in found.zip(expected) {
        assert!((a - b).abs() < 1e-8, "{a} vs {b}");
    }
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn secure_config(min_clients: usize, neighbours: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_clients,
        round_deadline: DEADLINE,
        // Everyone joins before the round starts.
        round_interval: Duration::from_secs(1),
        secure: Some(SecureConfig { neighbours, threshold: 0, clip_range: 1.0, scale_bits: 16, phase_timeout: PHASE }),
        noise_key: Some(NoiseKey([5; 32])),
        ..CoordinatorConfig::default()
    }
}

/// Runs round 1 of a secure fleet; returns the committed rounds and the coordinator.
fn secure_round(drops: &[Drop], neighbours: usize, min_clients: usize) -> RoundOutcome {
    let t0 = Instant::now();
    let mut coordinator = coordinator(secure_config(min_clients, neighbours));
    let mut edges = edges(drops);
    for edge in &edges {
        coordinator.handle_connect(edge.conn, t0);
    }
    pump(&mut coordinator, &mut edges, t0);
    // Let every phase deadline pass in turn (dropped clients never answer).
    let mut now = t0;
    for _ in 0..8 {
        if coordinator.model_version() > 0 {
            break;
        }
        now = coordinator.poll_timeout().unwrap_or(now).max(now);
        coordinator.handle_timeout(now);
        pump(&mut coordinator, &mut edges, now);
    }
    (commits(&mut coordinator), coordinator, edges)
}

#[test]
fn secure_round_equals_the_plain_mean_without_dropouts() {
    for neighbours in [0, 4] {
        let (commits, coordinator, edges) = secure_round(&[Drop::Never; 7], neighbours, 7);
        assert_eq!(commits, [(7, None)], "k = {neighbours}");
        let expected = mean_of(&edges, |_| true);
        // Fixed point: 2^-16 per coordinate and client before the mean.
        assert!(max_difference(&coordinator.params().values, &expected) < 1e-4, "k = {neighbours}");
        // The feature statistics came masked with the deltas: their sum is the fleet's.
        assert_moments(&coordinator, &moments_of(&edges, |_| true));
    }
}

#[test]
fn back_to_back_secure_rounds_send_the_setup_ahead_of_the_model() {
    // Round 2 starts in the call that commits round 1: each client's Setup of round 2 goes
    // ahead of model version 1 (key agreement needs no model), the request after the model.
    let t0 = Instant::now();
    let config = CoordinatorConfig { round_interval: Duration::ZERO, ..secure_config(4, 2) };
    let mut coordinator = coordinator(config);
    let mut edges = edges(&[Drop::Never; 4]);
    for edge in &edges {
        coordinator.handle_connect(edge.conn, t0);
    }
    pump(&mut coordinator, &mut edges, t0);
    assert_eq!(commits(&mut coordinator), [(4, None)]);
    for edge in &edges {
        let at = |what: &str| edge.received.iter().position(|k| k == what);
        let (setup, model, request) = (at("Setup r2"), at("Model v1"), at("Request r2"));
        assert!(setup.is_some() && model.is_some() && request.is_some(), "{:?}", edge.received);
        assert!(setup < model && model < request, "{:?}", edge.received);
        // Round 1 (started once everyone joined, with the initial model already sent) is as before.
        assert!(at("Welcome") < at("Setup r1"), "{:?}", edge.received);
    }
}

#[test]
fn secure_round_survives_a_dropout_after_masking() {
    let mut drops = [Drop::Never; 7];
    drops[2] = Drop::AfterMasking;
    let (commits, coordinator, edges) = secure_round(&drops, 0, 7);
    // Its masked input arrived: its update is in the sum, its self-mask removed by the others.
    assert_eq!(commits, [(7, None)]);
    assert!(max_difference(&coordinator.params().values, &mean_of(&edges, |_| true)) < 1e-4);
}

#[test]
fn secure_round_removes_the_masks_of_clients_dropped_before_masking() {
    let mut drops = [Drop::Never; 8];
    drops[1] = Drop::BeforeMasking;
    drops[5] = Drop::BeforeMasking;
    let (commits, coordinator, edges) = secure_round(&drops, 6, 6);
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].0, 6, "six survivors");
    let expected = mean_of(&edges, |e| e.drop == Drop::Never);
    assert!(max_difference(&coordinator.params().values, &expected) < 1e-4);
    assert_moments(&coordinator, &moments_of(&edges, |e| e.drop == Drop::Never));
}

#[test]
fn plain_updates_are_refused_by_a_secure_coordinator() {
    let t0 = Instant::now();
    let mut coordinator = coordinator(secure_config(2, 0));
    for conn in [ConnectionId(1), ConnectionId(2)] {
        coordinator.handle_connect(conn, t0);
        coordinator.handle_message(
            conn,
            ClientMessage::Join {
                protocol_version: crate::wire::PROTOCOL_VERSION,
                client_name: "x".into(),
                auth_token: None,
            },
            t0,
        );
    }
    let delta = ParameterVector {
        format_version: PARAMETER_FORMAT_VERSION,
        fingerprint: Fingerprint(9),
        values: vec![0.0; LEN],
    };
    let metrics = LocalMetrics { samples: 1, prequential_errors: 0 };
    let update = crate::wire::Update { round: 1, base_version: 0, delta, metrics, moments: None };
    coordinator.handle_message(ConnectionId(1), ClientMessage::Update(update), t0);
    let refused = std::iter::from_fn(|| coordinator.poll_event())
        .any(|e| matches!(e, CoordinatorEvent::UpdateRefused { reason: UpdateRefusal::MaskedExpected, .. }));
    assert!(refused);
}

#[test]
fn secure_configurations_without_privacy_or_that_cannot_work_are_refused() {
    let weak = CoordinatorConfig {
        min_clients: 8,
        secure: Some(SecureConfig {
            neighbours: 4,
            threshold: 2,
            clip_range: 1.0,
            scale_bits: 16,
            phase_timeout: PHASE,
        }),
        ..CoordinatorConfig::default()
    };
    assert!(matches!(weak.validate(), Err(ConfigError::Secure(_))), "t = k/2 gives no privacy");
    let asynchronous =
        CoordinatorConfig { mode: Mode::Async { buffer_size: 4, max_staleness: 2 }, ..secure_config(4, 0) };
    assert!(matches!(asynchronous.validate(), Err(ConfigError::Incompatible(_))));
    let compressed = CoordinatorConfig {
        compression: Compression::Int8 { chunk: crate::compress::DEFAULT_CHUNK },
        ..secure_config(4, 0)
    };
    assert!(matches!(compressed.validate(), Err(ConfigError::Incompatible(_))));
    assert_eq!(secure_config(4, 0).validate(), Ok(()));
    // Without a secret key the session ids would follow from the public seed.
    let keyless = CoordinatorConfig { noise_key: None, ..secure_config(4, 0) };
    assert!(matches!(keyless.validate(), Err(ConfigError::Incompatible(reason)) if reason.contains("secret key")));
}

/// The session id of round 1's secure session, as the coordinator's `Setup` carries it.
fn first_session_id(config: CoordinatorConfig) -> [u8; secagg::SEED_LEN] {
    let t0 = Instant::now();
    let mut coordinator = coordinator(config);
    for conn in [ConnectionId(1), ConnectionId(2), ConnectionId(3)] {
        coordinator.handle_connect(conn, t0);
        let join = ClientMessage::Join {
            protocol_version: crate::wire::PROTOCOL_VERSION,
            client_name: "x".into(),
            auth_token: None,
        };
        coordinator.handle_message(conn, join, t0);
    }
    let mut now = t0;
    for _ in 0..4 {
        now = coordinator.poll_timeout().unwrap_or(now).max(now);
        coordinator.handle_timeout(now);
        while let Some((_, message)) = coordinator.poll_transmit() {
            if let crate::wire::CoordinatorMessage::SecAgg { round: 1, message: secagg::ServerMessage::Setup(setup) } =
                message
            {
                return setup.session_id;
            }
        }
    }
    panic!("no secure session opened");
}

#[test]
fn secure_session_ids_come_from_the_coordinator_key_not_the_seed() {
    let keyed = |key: u8| CoordinatorConfig { noise_key: Some(NoiseKey([key; 32])), ..secure_config(3, 0) };
    let a = first_session_id(keyed(1));
    assert_eq!(a, NoiseKey([1; 32]).secagg_session_id(1));
    assert_eq!(a, first_session_id(keyed(1)), "one key, one id per round");
    // Same public seed, another key: another id, so the seed does not determine it.
    let b = first_session_id(keyed(2));
    assert_ne!(a, b);
    let reseeded = CoordinatorConfig { seed: 77, ..keyed(1) };
    assert_eq!(first_session_id(reseeded), a, "the public seed plays no part");
}

/// Runs one plain round of three clients under `config`.
fn plain_round(config: CoordinatorConfig) -> RoundOutcome {
    let t0 = Instant::now();
    let mut coordinator = coordinator(CoordinatorConfig { min_clients: 3, round_deadline: DEADLINE, ..config });
    let mut edges = edges(&[Drop::Never; 3]);
    for edge in &edges {
        coordinator.handle_connect(edge.conn, t0);
    }
    pump(&mut coordinator, &mut edges, t0);
    (commits(&mut coordinator), coordinator, edges)
}

#[test]
fn int8_compressed_updates_are_folded_within_quantisation_error() {
    let int8 = Compression::Int8 { chunk: crate::compress::DEFAULT_CHUNK };
    let (commits, coordinator, edges) = plain_round(CoordinatorConfig { compression: int8, ..Default::default() });
    assert_eq!(commits, [(3, None)]);
    // Stochastic rounding moves each value by less than one step, max |x| / 127 ≤ 0.5 / 127.
    let difference = max_difference(&coordinator.params().values, &mean_of(&edges, |_| true));
    assert!(difference > 0.0 && difference < 0.5 / 127.0, "{difference}");
}

#[test]
fn top_k_updates_send_only_their_largest_values() {
    let top = Compression::TopK { fraction: crate::compress::KeepFraction::new(0.25).unwrap(), int8: false };
    let (commits, coordinator, _) = plain_round(CoordinatorConfig { compression: top, ..Default::default() });
    assert_eq!(commits, [(3, None)]);
    let nonzero = coordinator.params().values.iter().filter(|v| **v != 0.0).count();
    assert!(nonzero > 0 && nonzero <= 3 * LEN / 4, "{nonzero} coordinates moved");
}

/// Central DP with noise multiplier `z`, a fixed clip and δ = 1e-5.
fn central_privacy(z: f64, clip: f32) -> PrivacyConfig {
    PrivacyConfig { noise_multiplier: z, clip, placement: NoisePlacement::Central, delta: 1e-5, adaptive: None }
}

#[test]
fn central_privacy_clips_noises_and_reports_epsilon() {
    let privacy = central_privacy(1.0, 0.5);
    let keyed = CoordinatorConfig { privacy: Some(privacy), noise_key: Some(NoiseKey([7; 32])), ..Default::default() };
    let (commits, coordinator, edges) = plain_round(keyed);
    assert_eq!(commits.len(), 1);
    let epsilon = commits[0].1.expect("ε is reported");
    assert!(epsilon > 0.0 && epsilon.is_finite(), "{epsilon}");
    // Noise of std z·C/n = 1/6 per coordinate moves the model well away from the clipped mean.
    let difference = max_difference(&coordinator.params().values, &mean_of(&edges, |_| true));
    assert!(difference > 0.05, "{difference}");
    let distributed = CoordinatorConfig {
        privacy: Some(PrivacyConfig { placement: NoisePlacement::Distributed, ..privacy }),
        ..Default::default()
    };
    assert!(matches!(distributed.validate(), Err(ConfigError::Incompatible(_))), "distributed noise needs SecAgg");
    let unkeyed = CoordinatorConfig { privacy: Some(privacy), ..Default::default() };
    assert!(matches!(unkeyed.validate(), Err(ConfigError::Incompatible(_))), "central noise needs a secret key");
    let asynchronous = CoordinatorConfig {
        privacy: Some(privacy),
        noise_key: Some(NoiseKey([7; 32])),
        mode: crate::round::Mode::Async { buffer_size: 2, max_staleness: 4 },
        ..Default::default()
    };
    assert!(matches!(asynchronous.validate(), Err(ConfigError::Incompatible(_))), "async + DP is refused");
}

/// Same flags, same public seed, same updates: two coordinators with their own secret keys
/// publish different models, and the noise has the configured standard deviation.
#[test]
fn central_noise_comes_from_the_secret_key_with_the_configured_deviation() {
    // A clip far above the deltas: nothing is clipped, the difference to the mean is the noise.
    let clip = 1000.0f32;
    let privacy = central_privacy(1.0, clip);
    let run = |key: u8| {
        let config =
            CoordinatorConfig { privacy: Some(privacy), noise_key: Some(NoiseKey([key; 32])), ..Default::default() };
        let (_, coordinator, edges) = plain_round(config);
        let mean = mean_of(&edges, |_| true);
        coordinator.params().values.iter().zip(&mean).map(|(p, m)| f64::from(p - m)).collect::<Vec<f64>>()
    };
    let (a, b) = (run(1), run(2));
    assert_ne!(a, b, "another secret key, other noise");
    assert_eq!(run(1), a, "the same key and round give the same noise (deterministic given the secret)");
    // Noise std on the mean of 3 updates: z·C/3.
    let expected = f64::from(clip) / 3.0;
    for noise in [&a, &b] {
        let n = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let std = (noise.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        // 64 draws: the sample deviation is within ±35 % of σ with overwhelming probability
        // (its own deviation is about σ/√128 ≈ 9 %), the mean within ±0.5σ (σ/8 each way).
        assert!((std / expected - 1.0).abs() < 0.35, "sample std {std}, configured {expected}");
        assert!(mean.abs() < 0.5 * expected, "sample mean {mean}");
    }
}

/// ε only grows: the accountant rides in the checkpoint, and a coordinator resumed from it
/// reports more privacy spent after its next round, never the first round's ε again.
#[test]
fn epsilon_continues_from_the_checkpoint_after_a_restart() {
    let privacy = central_privacy(1.0, 0.5);
    let config = CoordinatorConfig { privacy: Some(privacy), noise_key: Some(NoiseKey([3; 32])), ..Default::default() };
    let (commits, coordinator, _) = plain_round(config.clone());
    let first = commits[0].1.expect("ε after round 1");
    let checkpoint = coordinator.checkpoint();
    let accountant = checkpoint.accountant.clone().expect("the accountant is checkpointed");
    assert_eq!(accountant.composed_steps(), 1);
    let bytes = checkpoint.encode().unwrap();
    let restored = crate::checkpoint::Checkpoint::decode(&bytes).unwrap();
    assert_eq!(restored.accountant, Some(accountant.clone()));
    let resumed = Coordinator::from_checkpoint(config, restored).unwrap();
    let mut again = resumed.checkpoint().accountant.expect("resumed with the accountant");
    again.step(privacy.noise_multiplier, 1.0).unwrap();
    let (second, _) = again.epsilon(privacy.delta).unwrap();
    assert!(second > first, "ε after the restart's first round ({second}) exceeds round 1's ({first})");
}

/// Adaptive clipping: the bound moves towards the target quantile of the norms it sees (all
/// above it here, so it grows), and a coordinator resumed from the checkpoint goes on from
/// the bound reached, not from the initial one.
#[test]
fn the_adaptive_clip_grows_under_large_updates_and_survives_a_restart() {
    use super::config::AdaptiveClipping;
    let adaptive = Some(AdaptiveClipping { target_quantile: 0.5, learning_rate: 0.2 });
    let privacy = PrivacyConfig { adaptive, ..central_privacy(0.0, 1e-3) };
    let config = CoordinatorConfig { privacy: Some(privacy), noise_key: Some(NoiseKey([9; 32])), ..Default::default() };
    let (commits, coordinator, _) = plain_round(config.clone());
    assert_eq!(commits.len(), 1);
    let checkpoint = coordinator.checkpoint();
    let clip = checkpoint.adaptive_clip.clone().expect("the adaptive clip is checkpointed");
    // z = 0: no count noise, every update above the bound: C·exp(0.2·0.5).
    let expected = 1e-3 * (0.1f64).exp();
    assert!((f64::from(clip.clip().get()) - expected).abs() < 1e-9, "{} != {expected}", clip.clip().get());
    let restored = crate::checkpoint::Checkpoint::decode(&checkpoint.encode().unwrap()).unwrap();
    let resumed = Coordinator::from_checkpoint(config, restored).unwrap();
    assert_eq!(resumed.checkpoint().adaptive_clip, Some(clip));
}

#[test]
fn a_pruned_model_stays_pruned_through_fine_tuning() {
    // 2 inputs, 3 classes, 2 hidden layers of 4, no input head: exactly LEN parameters.
    let spec = HbpConfig { hidden_layers: 2, width: 4, input_head: false, ..HbpConfig::new(2, 3) };
    assert_eq!(crate::model::hbp::layout(&spec).len(), LEN);
    let mut values = vec![0.5; LEN];
    // Biases start at zero (they are not pruned weights); α is [0.5, 0.5].
    values[8..12].fill(0.0);
    values[28..32].fill(0.0);
    values[56..62].fill(0.0);
    let pruned = [0usize, 5, 13, 27, 40];
    pruned.iter().for_each(|&i| values[i] = 0.0);
    let initial = ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(9), values };
    let config = CoordinatorConfig {
        min_clients: 3,
        round_deadline: DEADLINE,
        round_interval: Duration::from_secs(1),
        keep_pruned: true,
        ..CoordinatorConfig::default()
    };
    let mut coordinator = Coordinator::new(config, spec, initial.clone()).unwrap();
    let t0 = Instant::now();
    let mut edges = edges(&[Drop::Never; 3]);
    for edge in &edges {
        coordinator.handle_connect(edge.conn, t0);
    }
    pump(&mut coordinator, &mut edges, t0);
    let mut now = t0;
    for _ in 0..4 {
        if coordinator.model_version() > 0 {
            break;
        }
        now = coordinator.poll_timeout().unwrap_or(now).max(now);
        coordinator.handle_timeout(now);
        pump(&mut coordinator, &mut edges, now);
    }
    assert_eq!(coordinator.model_version(), 1);
    assert!(edges.iter().all(|e| e.client.rules().keep_pruned), "clients are told");
    let params = &coordinator.params().values;
    for &i in &pruned {
        assert_eq!(params[i], 0.0, "pruned weight {i} moved");
    }
    // Everything else moved with the mean delta (biases too, though they started at zero).
    let mean = mean_of(&edges, |_| true);
    for i in (0..62).filter(|i| !pruned.contains(i) && mean[*i].abs() > 1e-3) {
        let moved = params[i] - initial.values[i];
        assert!(moved.abs() > 1e-4 && moved.signum() == mean[i].signum(), "coordinate {i}: {moved} vs {}", mean[i]);
    }
}
