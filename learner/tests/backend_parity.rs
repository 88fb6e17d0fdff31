//! The wgpu (Vulkan) and flex (CPU) backends learn the same thing from the same start.
//!
//! CI installs Mesa's software Vulkan driver (llvmpipe) and sets `FLOTILLA_REQUIRE_GPU=1`,
//! so there this test fails rather than skips when no adapter is found.

mod common;

use flotilla_learner::compute::{self, BackendChoice};
use flotilla_learner::hbp::{HbpConfig, HbpModel};
use flotilla_learner::prequential::read_labels;

#[test]
fn gpu_and_cpu_agree_on_predictions_and_updates() {
    let Some(gpu) = common::gpu_or_skip() else { return };
    let cpu = compute::select(BackendChoice::Cpu).unwrap();
    let config = HbpConfig { hidden_layers: 6, width: 32, ..HbpConfig::new(5, 3) };
    let start = HbpModel::new(config.clone(), &cpu.device).unwrap().to_parameters().unwrap();
    let mut on_cpu = HbpModel::from_parameters(config.clone(), &start, &cpu.device).unwrap();
    let mut on_gpu = HbpModel::from_parameters(config, &start, &gpu.device).unwrap();

    let (mut cpu_predictions, mut gpu_predictions) = (Vec::new(), Vec::new());
    for step in 0..60u32 {
        let batch_size = if step < 40 { 1 } else { 4 };
        let features: Vec<f32> = (0..batch_size * 5).map(|j| ((step * 13 + j * 7) % 17) as f32 / 8.0 - 1.0).collect();
        let labels: Vec<u32> = (0..batch_size).map(|j| (step + j) % 3).collect();
        cpu_predictions.push(on_cpu.learn(on_cpu.batch(&features, &labels)));
        gpu_predictions.push(on_gpu.learn(on_gpu.batch(&features, &labels)));
    }
    assert_eq!(read_labels(cpu_predictions).unwrap(), read_labels(gpu_predictions).unwrap());

    let (a, b) = (on_cpu.to_parameters().unwrap(), on_gpu.to_parameters().unwrap());
    let worst = a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs() / (1e-3 + x.abs())).fold(0.0f32, f32::max);
    eprintln!("largest relative parameter difference after 60 steps: {worst:e}");
    assert!(worst < 1e-3, "backends diverged: {worst}");
    assert_ne!(a.values, start.values, "nothing was learnt");
}
