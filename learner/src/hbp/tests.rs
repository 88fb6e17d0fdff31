//! Deterministic checks of the HBP maths on the CPU backend.

use burn::tensor::{Device, Tensor, TensorData};

use super::model::read;
use super::*;
use flotilla_protocol::params::ParameterVector;

fn tiny_config() -> HbpConfig {
    HbpConfig { hidden_layers: 3, width: 4, seed: 3, ..HbpConfig::new(3, 3) }
}

/// A tiny model whose α is deliberately uneven, so that the weighting is tested too.
fn tiny_model(device: &Device) -> HbpModel {
    let config = tiny_config();
    let mut params = HbpModel::new(config.clone(), device).unwrap().to_parameters().unwrap();
    let alpha = [0.1f32, 0.2, 0.3, 0.4];
    let n = params.values.len();
    params.values[n - 4..].copy_from_slice(&alpha);
    HbpModel::from_parameters(config, &params, device).unwrap()
}

fn tiny_batch(model: &HbpModel) -> Batch {
    model.batch(&[0.5, -1.0, 2.0, 1.5, 0.3, -0.7], &[2, 0])
}

fn flatten(gradients: math::Gradients) -> Vec<f32> {
    let mut flat = Vec::new();
    for (w, b) in gradients.hidden_weights.into_iter().zip(gradients.hidden_biases) {
        flat.extend(read(w).unwrap());
        flat.extend(read(b).unwrap());
    }
    if let Some((w, b)) = gradients.input_head {
        flat.extend(read(w).unwrap());
        flat.extend(read(b).unwrap());
    }
    flat.extend(read(gradients.head_weights).unwrap());
    flat.extend(read(gradients.head_biases).unwrap());
    flat
}

/// Checks the analytic gradient against central finite differences of the objective, on
/// raw logits or on calibrated logits `z + offset`.
fn check_gradient(offset: Option<Vec<f32>>) {
    let device = Device::flex();
    let model = tiny_model(&device);
    let batch = tiny_batch(&model);
    let classes = model.config().classes;
    let offset_tensor = || offset.clone().map(|o| Tensor::<2>::from_data(TensorData::new(o, [1, classes]), &device));
    let mut forward = model.forward(batch.features.clone());
    if let Some(o) = offset_tensor() {
        HbpModel::calibrate(&mut forward, o);
    }
    let analytic = flatten(model.gradients(&forward, &batch.targets));
    let base = model.to_parameters().unwrap();
    let trainable = base.values.len() - model.config().heads();
    assert_eq!(analytic.len(), trainable);
    let objective_at = |index: usize, delta: f32| {
        let mut values = base.values.clone();
        values[index] += delta;
        let shifted = ParameterVector { values, ..base.clone() };
        let m = HbpModel::from_parameters(model.config().clone(), &shifted, &device).unwrap();
        m.objective(batch.features.clone(), &batch.targets, offset_tensor())
    };
    let eps = 1e-3;
    let mut worst = 0.0f32;
    for (index, &grad) in analytic.iter().enumerate() {
        let numeric = (objective_at(index, eps) - objective_at(index, -eps)) / (2.0 * eps);
        let error = (numeric - grad).abs() / (1e-2 + numeric.abs().max(grad.abs()));
        worst = worst.max(error);
        assert!(error < 2e-2, "parameter {index}: analytic {grad}, numeric {numeric}");
    }
    assert!(analytic.iter().any(|g| g.abs() > 1e-3), "gradient is all zero");
    eprintln!("worst relative gradient error {worst:e}");
}

#[test]
fn analytic_gradient_matches_finite_differences() {
    check_gradient(None);
}

#[test]
fn calibrated_gradient_matches_finite_differences() {
    // FedLC offsets −τ·n_c^(−1/4) for class counts (1, 16, 81): τ = 1.
    let counts = [1.0f32, 16.0, 81.0];
    let classes = tiny_model(&Device::flex()).config().classes;
    let offset: Vec<f32> = (0..classes).map(|c| -counts[c % counts.len()].powf(-0.25)).collect();
    check_gradient(Some(offset));
}

#[test]
fn calibration_changes_the_step_not_the_prediction() {
    let device = Device::flex();
    let mut plain = tiny_model(&device);
    let mut calibrated = plain.clone();
    let classes = plain.config().classes;
    let offset = Tensor::<2>::from_data(
        TensorData::new(
            vec![-2.0f32; classes]
                .into_iter()
                .enumerate()
                .map(|(c, v)| if c == 0 { 0.0 } else { v })
                .collect::<Vec<_>>(),
            [1, classes],
        ),
        &device,
    );
    let batch = tiny_batch(&plain);
    let before_plain = read(plain.learn_proba(tiny_batch(&plain), None)).unwrap();
    let before_calibrated = read(calibrated.learn_proba(batch, Some(offset))).unwrap();
    assert_eq!(before_plain, before_calibrated, "the prediction is made on raw logits");
    assert_ne!(plain.to_parameters().unwrap(), calibrated.to_parameters().unwrap(), "the step differs");
}

#[test]
fn hedge_update_follows_the_paper() {
    let device = Device::flex();
    let mut model = tiny_model(&device);
    let losses = [0.5f32, 1.0, 2.0, 30.0];
    model.hedge(Tensor::from_data(TensorData::new(losses.to_vec(), [4]), &device));
    let config = model.config().clone();
    let floor = config.smoothing / config.hidden_layers as f32;
    let mut expected: Vec<f32> =
        [0.1f32, 0.2, 0.3, 0.4].iter().zip(losses).map(|(a, l)| (a * config.beta.powf(l)).max(floor)).collect();
    let total: f32 = expected.iter().sum();
    expected.iter_mut().for_each(|a| *a /= total);
    let alpha = model.alpha().unwrap();
    for (got, want) in alpha.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-6, "{alpha:?} vs {expected:?}");
    }
}

#[test]
fn alpha_stays_a_floored_distribution_while_learning() {
    let device = Device::flex();
    let config = HbpConfig { hidden_layers: 4, width: 8, smoothing: 0.2, beta: 0.5, ..HbpConfig::new(3, 3) };
    let mut model = HbpModel::new(config.clone(), &device).unwrap();
    let floor = config.smoothing / config.hidden_layers as f32;
    for step in 0..200u32 {
        let x = [(step % 7) as f32 - 3.0, (step % 3) as f32, 1.0];
        let batch = model.batch(&x, &[step % 3]);
        model.learn(batch);
        let alpha = model.alpha().unwrap();
        let sum: f32 = alpha.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "step {step}: sum {sum}");
        // Normalising after the floor can only lower a floored value by the total's excess.
        assert!(alpha.iter().all(|a| *a >= floor / (1.0 + floor * alpha.len() as f32)), "{alpha:?}");
    }
    assert!(model.alpha().unwrap().iter().any(|a| (a - 0.2).abs() > 1e-3), "alpha never moved");
}

#[test]
fn learning_reduces_the_loss_on_a_separable_stream() {
    let device = Device::flex();
    let mut model = HbpModel::new(HbpConfig { hidden_layers: 3, width: 16, ..HbpConfig::new(2, 2) }, &device).unwrap();
    let point = |i: u32| {
        let x = [(i % 10) as f32 / 5.0 - 1.0, ((i * 7) % 10) as f32 / 5.0 - 1.0];
        (x, u32::from(x[0] + x[1] > 0.0))
    };
    let test = model
        .batch(&(0..20).flat_map(|i| point(i).0).collect::<Vec<_>>(), &(0..20).map(|i| point(i).1).collect::<Vec<_>>());
    let before = model.objective(test.features.clone(), &test.targets, None);
    for i in 0..2000 {
        let (x, y) = point(i);
        let batch = model.batch(&x, &[y]);
        model.learn(batch);
    }
    let after = model.objective(test.features.clone(), &test.targets, None);
    assert!(after < 0.5 * before, "loss {before} -> {after}");
}

#[test]
fn parameters_round_trip_and_refuse_other_layouts() {
    let device = Device::flex();
    let model = tiny_model(&device);
    let params = model.to_parameters().unwrap();
    let again = HbpModel::from_parameters(model.config().clone(), &params, &device).unwrap();
    assert_eq!(again.to_parameters().unwrap(), params);
    let wider = HbpConfig { width: 5, ..tiny_config() };
    let err = HbpModel::from_parameters(wider, &params, &device).unwrap_err();
    assert!(err.to_string().contains("layout mismatch"), "{err}");
    let mut bad_alpha = params.clone();
    let n = bad_alpha.values.len();
    bad_alpha.values[n - 1] = 5.0;
    assert!(matches!(
        HbpModel::from_parameters(tiny_config(), &bad_alpha, &device),
        Err(ModelError::InvalidAlpha { .. })
    ));
}

#[test]
fn initial_weights_match_the_numpy_reference_draws() {
    // First weight of W[0] for RandomState(0), i = 3, o = 4: -r + 2r * 0.5488135039273248.
    let config = HbpConfig { hidden_layers: 2, width: 4, ..HbpConfig::new(3, 2) };
    let params = HbpModel::new(config, &Device::flex()).unwrap().to_parameters().unwrap();
    let r = (6.0f64 / 7.0).sqrt();
    assert!((f64::from(params.values[0]) - (-r + 2.0 * r * 0.548_813_503_927_324_8)).abs() < 1e-6);
}

#[test]
fn projecting_alpha_restores_a_floored_distribution() {
    let config = tiny_config();
    let device = Device::flex();
    let mut params = HbpModel::new(config.clone(), &device).unwrap().to_parameters().unwrap();
    let n = params.values.len();
    // What a server step of size 20 can do: sum still 1, one entry negative.
    params.values[n - 4..].copy_from_slice(&[1.3, -0.5, 0.1, 0.1]);
    assert!(HbpModel::from_parameters(config.clone(), &params, &device).is_err());
    flotilla_protocol::model::hbp::project_alpha(&config, &mut params);
    let alpha = &params.values[n - 4..];
    let floor = config.smoothing / config.hidden_layers as f32;
    assert!((alpha.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    // Floored at s/L, then normalised (as the paper's update does): 1.3 + 3 entries.
    let total = 1.3 + floor + 0.1 + 0.1;
    assert!((alpha[1] - floor / total).abs() < 1e-6, "{alpha:?}");
    assert!(alpha.iter().all(|a| *a > 0.0), "{alpha:?}");
    assert!(HbpModel::from_parameters(config, &params, &device).is_ok());
}
