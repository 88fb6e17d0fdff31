//! End to end: one coordinator and three clients exchanging real frames, no sockets.

use std::time::{Duration, Instant};

use super::*;
use crate::model::HbpConfig;
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};
use crate::wire::LocalMetrics;
use crate::wire::framing::{FrameDecoder, FrameLimit, encode_frame};

struct Edge {
    conn: ConnectionId,
    client: Client,
    /// Bytes from the coordinator, as the client's stream would deliver them.
    inbound: FrameDecoder,
    /// Bytes from the client, as the coordinator's stream would deliver them.
    outbound: FrameDecoder,
    base: Vec<f32>,
    step: f32,
    samples: u64,
}

/// Moves every queued message across the "wire" until both sides are quiet.
fn pump(coordinator: &mut Coordinator, edges: &mut [Edge], now: Instant) {
    loop {
        let mut moved = false;
        for edge in edges.iter_mut() {
            while let Some(message) = edge.client.poll_transmit() {
                edge.outbound.push(&encode_frame(&message, FrameLimit::DEFAULT).unwrap());
                moved = true;
            }
            while let Some(payload) = edge.outbound.poll_payload().unwrap() {
                coordinator.handle_payload(edge.conn, payload, now);
            }
        }
        while let Some((conn, message)) = coordinator.poll_transmit() {
            let edge = edges.iter_mut().find(|e| e.conn == conn).unwrap();
            edge.inbound.push(&encode_frame(&message, FrameLimit::DEFAULT).unwrap());
            moved = true;
        }
        for edge in edges.iter_mut() {
            while let Some(payload) = edge.inbound.poll_payload().unwrap() {
                edge.client.handle_payload(payload, now);
            }
            while let Some(event) = edge.client.poll_event() {
                match event {
                    ClientEvent::ModelReceived { params, .. } => edge.base = params.values,
                    ClientEvent::UpdateRequested { round, .. } if round <= 2 => {
                        // "Training" moves every parameter by `step`.
                        let delta = edge.base.iter().map(|_| edge.step).collect();
                        let delta = ParameterVector {
                            format_version: PARAMETER_FORMAT_VERSION,
                            fingerprint: Fingerprint(9),
                            values: delta,
                        };
                        let metrics = LocalMetrics { samples: edge.samples, prequential_errors: 1 };
                        edge.client
                            .submit_update(crate::wire::Contribution { delta, metrics, moments: None, cohort: None })
                            .unwrap();
                    }
                    ClientEvent::UpdateRequested { .. } | ClientEvent::Welcomed { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn three_clients_train_two_rounds_over_frames() {
    let t0 = Instant::now();
    let config =
        CoordinatorConfig { min_clients: 3, round_deadline: Duration::from_secs(5), ..CoordinatorConfig::default() };
    let initial =
        ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(9), values: vec![0.0; 3] };
    let mut coordinator = Coordinator::new(config, HbpConfig::new(2, 2), initial).unwrap();
    let mut edges: Vec<Edge> = [(1.0, 1), (2.0, 1), (4.0, 2)]
        .into_iter()
        .enumerate()
        .map(|(i, (step, samples))| Edge {
            conn: ConnectionId(i as u64),
            client: Client::new(format!("edge-{i}"), None),
            inbound: FrameDecoder::new(FrameLimit::DEFAULT),
            outbound: FrameDecoder::new(FrameLimit::DEFAULT),
            base: Vec::new(),
            step,
            samples,
        })
        .collect();
    for edge in &edges {
        coordinator.handle_connect(edge.conn, t0);
    }
    // Each round moves the model by (1·1 + 1·2 + 2·4)/4 = 2.75. Clients answer rounds 1 and 2
    // at once; round 3 then waits for answers that never come.
    pump(&mut coordinator, &mut edges[..], t0);
    let committed: Vec<_> = std::iter::from_fn(|| coordinator.poll_event())
        .filter_map(|e| match e {
            CoordinatorEvent::RoundCommitted { model_version, samples, mean_local_error, .. } => {
                Some((model_version, samples, mean_local_error))
            }
            _ => None,
        })
        .collect();
    assert_eq!(committed, [(1, 4, Some(0.75)), (2, 4, Some(0.75))]);
    assert_eq!((coordinator.round(), coordinator.round_in_progress()), (3, true));
    assert_eq!(coordinator.params().values, vec![5.5; 3]);
    assert!(edges.iter().all(|edge| edge.base == coordinator.params().values));
}
