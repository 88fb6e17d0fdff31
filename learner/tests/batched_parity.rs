//! The batched learner learns exactly what the same clients learn one by one.
//!
//! Three clients with different seeds step on their own deterministic rows, one by one with
//! [`HbpModel::learn`] and together with [`BatchedHbp::step`]; their predictions must be equal
//! and their parameters agree to 1e-4 (relative, f32). The wgpu variant is skipped when no
//! Vulkan adapter exists, unless `FLOTILLA_REQUIRE_GPU=1` (as CI sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

mod common;

use burn::tensor::Device;
use flotilla_learner::hbp::batched::{BatchedError, BatchedHbp, read_predictions};
use flotilla_learner::hbp::{HbpConfig, HbpModel};
use flotilla_learner::prequential::read_labels;

const CLIENTS: usize = 3;

/// Client `client`'s rows of step `step`: `b` rows of `d` features in [-1, 1) and their labels.
fn rows(client: usize, step: usize, b: usize, config: &HbpConfig) -> (Vec<f32>, Vec<u32>) {
    let d = config.inputs;
    let features: Vec<f32> = (0..b * d).map(|j| ((client * 29 + step * 13 + j * 7) % 17) as f32 / 8.5 - 1.0).collect();
    let labels = (0..b).map(|r| ((client + step * 5 + r * 3) % config.classes) as u32).collect();
    (features, labels)
}

/// Steps the individual and the batched learners side by side; returns the largest relative
/// parameter difference and asserts equal predictions.
fn run_both(config: &HbpConfig, device: &Device, steps: usize) -> f32 {
    let mut individual: Vec<HbpModel> = (0..CLIENTS)
        .map(|i| HbpModel::new(HbpConfig { seed: config.seed + i as u32, ..config.clone() }, device).unwrap())
        .collect();
    let start: Vec<_> = individual.iter().map(|m| m.to_parameters().unwrap()).collect();
    let mut batched = BatchedHbp::from_models(&individual, device).unwrap();
    assert_eq!(batched.clients(), CLIENTS);
    for (client, vector) in start.iter().enumerate() {
        assert_eq!(&batched.to_parameters(client).unwrap(), vector, "client {client} not stacked as given");
    }

    let (mut one_by_one, mut together) = (vec![Vec::new(); CLIENTS], Vec::new());
    for step in 0..steps {
        let b = if step < steps * 2 / 3 { 1 } else { 3 };
        let (mut all_features, mut all_labels) = (Vec::new(), Vec::new());
        for (client, model) in individual.iter_mut().enumerate() {
            let (features, labels) = rows(client, step, b, config);
            one_by_one[client].push(model.learn(model.batch(&features, &labels)));
            all_features.extend(features);
            all_labels.extend(labels);
        }
        together.push(batched.step(batched.batch(&all_features, &all_labels).unwrap()));
    }

    let together: Vec<Vec<u32>> = together.into_iter().map(|p| read_predictions(p).unwrap()).collect();
    for (client, predictions) in one_by_one.into_iter().enumerate() {
        let expected = read_labels(predictions).unwrap();
        let mut found = Vec::new();
        for step in &together {
            let b = step.len() / CLIENTS;
            found.extend_from_slice(&step[client * b..(client + 1) * b]);
        }
        assert_eq!(found, expected, "client {client}'s predictions differ");
    }

    let mut worst = 0.0f32;
    for (client, model) in individual.iter().enumerate() {
        let (a, b) = (model.to_parameters().unwrap(), batched.to_parameters(client).unwrap());
        assert_ne!(a.values, start[client].values, "client {client} learnt nothing");
        let diff = a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs() / (1e-3 + x.abs())).fold(0.0, f32::max);
        worst = worst.max(diff);
    }
    eprintln!("largest relative parameter difference after {steps} steps: {worst:e}");
    worst
}

#[test]
fn batched_matches_individual_learners_on_cpu() {
    let config = HbpConfig { hidden_layers: 5, width: 24, seed: 11, ..HbpConfig::new(6, 3) };
    let worst = run_both(&config, &Device::flex(), 30);
    assert!(worst < 1e-4, "batched and individual learners diverged: {worst}");
}

#[test]
fn batched_matches_individual_learners_without_input_head() {
    let config = HbpConfig { hidden_layers: 3, width: 16, input_head: false, seed: 4, ..HbpConfig::new(4, 2) };
    let worst = run_both(&config, &Device::flex(), 30);
    assert!(worst < 1e-4, "batched and individual learners diverged: {worst}");
}

#[test]
fn batched_matches_individual_learners_on_gpu() {
    let Some(gpu) = common::gpu_or_skip() else { return };
    let config = HbpConfig { hidden_layers: 4, width: 16, seed: 2, ..HbpConfig::new(5, 3) };
    let worst = run_both(&config, &gpu.device, 24);
    assert!(worst < 1e-4, "batched and individual learners diverged: {worst}");
}

#[test]
fn batched_refuses_mismatched_clients_and_batches() {
    let device = Device::flex();
    let config = HbpConfig { hidden_layers: 2, width: 8, ..HbpConfig::new(3, 2) };
    assert!(matches!(BatchedHbp::from_models(&[], &device), Err(BatchedError::NoClients)));
    let a = HbpModel::new(config.clone(), &device).unwrap();
    let b = HbpModel::new(HbpConfig { width: 9, ..config.clone() }, &device).unwrap();
    assert!(matches!(BatchedHbp::from_models(&[a, b], &device), Err(BatchedError::ConfigMismatch { client: 1 })));

    let batched = BatchedHbp::seeded(config, 2, &device).unwrap();
    assert_ne!(batched.to_parameters(0).unwrap(), batched.to_parameters(1).unwrap(), "seeds must differ");
    assert!(matches!(batched.to_parameters(2), Err(BatchedError::NoSuchClient { client: 2, clients: 2 })));
    assert!(matches!(batched.batch(&[0.0; 6], &[0, 1, 0]), Err(BatchedError::BatchShape { what: "labels", .. })));
    assert!(matches!(batched.batch(&[0.0; 5], &[0, 1]), Err(BatchedError::BatchShape { what: "features", .. })));
    assert!(matches!(batched.batch(&[0.0; 6], &[0, 2]), Err(BatchedError::LabelOutOfRange { label: 2, .. })));
    assert!(batched.batch(&[0.0; 12], &[0, 1, 1, 0]).is_ok());
}
