//! What a client sends: only `Join`, `Update` (a parameter delta and two counters) and the
//! like. This drives the real client-side code (session state machine + local learner) over a
//! stream whose feature values are distinctive, encodes every outgoing frame as it would go
//! on the wire, and checks that no feature value and no label sequence appears in the bytes.

use std::time::Instant;

use burn::tensor::Device;
use flotilla_learner::data::Sample;
use flotilla_learner::hbp::{HbpConfig, HbpModel};
use flotilla_learner::local::LocalLearner;
use flotilla_protocol::round::Client;
use flotilla_protocol::wire::framing::{FrameLimit, encode_frame};
use flotilla_protocol::wire::{ClientMessage, CoordinatorMessage, PROTOCOL_VERSION};

#[test]
fn a_client_sends_parameters_and_counts_never_samples() {
    let spec = HbpConfig { hidden_layers: 2, width: 8, ..HbpConfig::new(4, 3) };
    let device = Device::flex();
    let global = HbpModel::new(spec.clone(), &device).unwrap().to_parameters().unwrap();
    let fingerprint = global.fingerprint;
    let now = Instant::now();
    let mut client = Client::new("edge-1", Some("secret-token".into()));
    let mut learner = LocalLearner::new(spec.clone(), &device).unwrap();

    // Distinctive raw values: none of them may show up in what the client sends.
    let samples: Vec<Sample> = (0..50u32)
        .map(|i| Sample {
            features: vec![1234.5 + i as f32, -987.25 - i as f32, 4242.125, 31.0 + i as f32 / 7.0],
            label: i % 3,
            line: u64::from(i) + 2,
        })
        .collect();

    let mut sent = Vec::new();
    let drain = |client: &mut Client, sent: &mut Vec<ClientMessage>| {
        while let Some(message) = client.poll_transmit() {
            sent.push(message);
        }
    };
    drain(&mut client, &mut sent);
    client.handle_message(
        CoordinatorMessage::Welcome {
            client_id: 7,
            protocol_version: PROTOCOL_VERSION,
            spec: spec.into(),
            fingerprint,
            round: 0,
            model_version: 0,
        },
        now,
    );
    client.handle_message(CoordinatorMessage::Model { model_version: 0, round: 0, params: global.clone() }, now);
    learner.adopt(0, global).unwrap();
    for sample in &samples {
        learner.learn(sample).unwrap();
    }
    client.handle_message(CoordinatorMessage::UpdateRequest { round: 1, model_version: 0, deadline_ms: 10_000 }, now);
    let contribution = learner.contribute(0).unwrap().expect("50 samples were learnt");
    client.submit_update(contribution).unwrap();
    client.leave("done");
    drain(&mut client, &mut sent);

    assert!(sent.len() >= 3, "{sent:?}");
    let mut wire = Vec::new();
    for message in &sent {
        match message {
            ClientMessage::Join { .. } | ClientMessage::Goodbye { .. } => {}
            ClientMessage::Update(update) => {
                assert_eq!(update.metrics.samples, 50);
            }
            other => panic!("unexpected message {other:?}"),
        }
        wire.extend(encode_frame(message, FrameLimit::DEFAULT).unwrap());
    }
    for sample in &samples {
        for value in &sample.features {
            let needle = value.to_le_bytes();
            assert!(!wire.windows(4).any(|w| w == needle), "feature value {value} found on the wire");
        }
    }
    let labels: Vec<u8> = samples.iter().map(|s| s.label as u8).collect();
    assert!(!wire.windows(labels.len()).any(|w| w == labels.as_slice()), "the label sequence is on the wire");
}
