//! The mixing rule: a distribution at every step, moving toward the better expert.

use burn::tensor::{Device, Tensor, TensorData};

use super::*;

fn experts(rows: &[[f32; 2]], device: &Device) -> Tensor<3> {
    let e = rows.len();
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(values, [e, 1, 2]), device)
}

#[test]
fn weights_stay_a_distribution_and_move_toward_the_better_expert() {
    let device = Device::flex();
    let config = PersonalConfig::default();
    let mut mixer = Mixer::new(3, &config, &device);
    // Label 0 every time; expert 0 is right with 0.9, expert 1 is wrong (0.2), expert 2 unsure.
    let target = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
    let mut previous = mixer.weights().unwrap();
    for step in 0..200 {
        let mix = mixer.predict_and_update(experts(&[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], &device), &target);
        let mix = read(mix).unwrap();
        assert!((mix.iter().sum::<f32>() - 1.0).abs() < 1e-5, "the mix is a distribution");
        let w = mixer.weights().unwrap();
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "step {step}: weights sum to {}", w.iter().sum::<f32>());
        assert!(w.iter().all(|v| *v >= config.floor - 1e-6), "step {step}: a weight fell below the floor: {w:?}");
        assert!(w[0] >= previous[0] - 1e-6, "the best expert's weight never falls");
        previous = w;
    }
    let w = mixer.weights().unwrap();
    assert!(w[0] > 0.95, "the better expert dominates: {w:?}");
    assert!((w[1] - config.floor).abs() < 1e-3, "the worst sits at the floor: {w:?}");
}

#[test]
fn one_hedge_step_matches_the_formula() {
    let device = Device::flex();
    let config = PersonalConfig { floor: 0.0, beta: 0.5, ..PersonalConfig::default() };
    let mut mixer = Mixer::from_weights(&[0.25, 0.75], &config, &device);
    let target = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2]), &device);
    let mix = read(mixer.predict_and_update(experts(&[[0.5, 0.5], [0.75, 0.25]], &device), &target)).unwrap();
    // Mix before the step: 0.25·(0.5, 0.5) + 0.75·(0.75, 0.25).
    assert!((mix[0] - 0.6875).abs() < 1e-6 && (mix[1] - 0.3125).abs() < 1e-6, "{mix:?}");
    // Losses −ln 0.5 and −ln 0.25; β^ℓ = 0.5^ℓ; w ∝ (0.25·0.5^0.693.., 0.75·0.5^1.386..).
    let a = 0.25f64 * 0.5f64.powf(-(0.5f64.ln()));
    let b = 0.75f64 * 0.5f64.powf(-(0.25f64.ln()));
    let w = mixer.weights().unwrap();
    assert!((f64::from(w[0]) - a / (a + b)).abs() < 1e-5, "{w:?} vs {}", a / (a + b));
}

#[test]
fn a_floored_weight_recovers_when_the_stream_changes() {
    let device = Device::flex();
    let mut mixer = Mixer::new(2, &PersonalConfig::default(), &device);
    let label = |y: usize| {
        let mut v = vec![0.0f32; 2];
        v[y] = 1.0;
        Tensor::<2>::from_data(TensorData::new(v, [1, 2]), &device)
    };
    // Expert 0 always says class 0, expert 1 class 1 (both 0.9 sure).
    let fixed = || experts(&[[0.9, 0.1], [0.1, 0.9]], &device);
    for _ in 0..100 {
        mixer.predict_and_update(fixed(), &label(0));
    }
    assert!(mixer.weights().unwrap()[0] > 0.9);
    for _ in 0..100 {
        mixer.predict_and_update(fixed(), &label(1));
    }
    assert!(mixer.weights().unwrap()[1] > 0.9, "the floor let expert 1 come back: {:?}", mixer.weights().unwrap());
}

#[test]
fn prior_adaptation_and_calibration_offsets() {
    let device = Device::flex();
    assert_eq!(label_prior(&[3, 0, 1]), vec![4.0 / 7.0, 1.0 / 7.0, 2.0 / 7.0]);
    let p = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 0.5], [1, 2]), &device);
    let prior = Tensor::<2>::from_data(TensorData::new(vec![0.8f32, 0.2], [1, 2]), &device);
    let adapted = read(adapt_to_prior(p, prior)).unwrap();
    assert!((adapted[0] - 0.8).abs() < 1e-6 && (adapted[1] - 0.2).abs() < 1e-6);
    let config = PersonalConfig { calibration_tau: 2.0, ..PersonalConfig::default() };
    let offset = config.calibration_offset(&[0, 1, 16]).unwrap();
    assert_eq!(offset, vec![-2.0, -2.0, -1.0]);
    assert!(PersonalConfig { calibration_tau: 0.0, ..config }.calibration_offset(&[1]).is_none());
    assert!(PersonalConfig { beta: 1.0, ..config }.validate().is_err());
    assert!(PersonalConfig { floor: 0.5, ..config }.validate().is_err());
    assert!(PersonalConfig { bias_lr: 0.0, ..config }.validate().is_err());
    assert!(config.validate().is_ok());
}

#[test]
fn the_local_bias_learns_the_label_shift() {
    // The global model says 50/50 on every sample; this device's labels are 80 % class 0.
    let device = Device::flex();
    let config = PersonalConfig::default();
    let mut bias = LocalBias::new(2, &config, &device);
    let uniform = || Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 0.5], [1, 2]), &device);
    let label = |y: usize| {
        let mut v = vec![0.0f32; 2];
        v[y] = 1.0;
        Tensor::<2>::from_data(TensorData::new(v, [1, 2]), &device)
    };
    let first = read(bias.predict_and_update(uniform(), &label(0))).unwrap();
    assert!((first[0] - 0.5).abs() < 1e-6, "it starts as the global model: {first:?}");
    for i in 0..4000 {
        bias.predict_and_update(uniform(), &label(usize::from(i % 5 == 4)));
    }
    let p = read(bias.predict_and_update(uniform(), &label(0))).unwrap();
    assert!((p[0] - 0.8).abs() < 0.05, "softmax(ln ½ + b) tends to the local prior 0.8: {p:?}");
    let b = bias.values().unwrap();
    assert!(((b[0] - b[1]) - 4.0f32.ln()).abs() < 0.3, "b₀ − b₁ ≈ ln(0.8/0.2): {b:?}");
}
