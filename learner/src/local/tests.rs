use burn::tensor::Device;

use super::*;

fn spec() -> HbpConfig {
    HbpConfig { hidden_layers: 2, width: 6, ..HbpConfig::new(3, 2) }
}

fn sample(i: u32) -> Sample {
    let x = [(i % 5) as f32, (i % 3) as f32 - 1.0, (i % 7) as f32 / 3.0];
    Sample { label: u32::from(x[0] + x[1] > 2.0), features: x.to_vec(), line: u64::from(i) + 2 }
}

fn learner_with_base() -> (LocalLearner, ParameterVector) {
    let device = Device::flex();
    let mut learner = LocalLearner::new(spec(), &device).unwrap();
    let global = HbpModel::new(HbpConfig { seed: 9, ..spec() }, &device).unwrap().to_parameters().unwrap();
    learner.adopt(1, global.clone()).unwrap();
    (learner, global)
}

fn current(learner: &mut LocalLearner) -> ParameterVector {
    learner.state().unwrap().params
}

#[test]
fn no_contribution_without_base_samples_or_matching_version() {
    let device = Device::flex();
    let mut learner = LocalLearner::new(spec(), &device).unwrap();
    learner.learn(&sample(0)).unwrap();
    assert!(learner.contribute(0).unwrap().is_none(), "no base yet");
    let (mut learner, _) = learner_with_base();
    assert!(learner.contribute(1).unwrap().is_none(), "nothing learnt");
    learner.learn(&sample(1)).unwrap();
    assert!(learner.contribute(2).unwrap().is_none(), "other version");
    assert!(learner.contribute(1).unwrap().is_some());
}

#[test]
fn contribution_is_local_minus_base_with_counts() {
    let (mut learner, global) = learner_with_base();
    for i in 0..10 {
        learner.learn(&sample(i)).unwrap();
    }
    let local = current(&mut learner);
    let contribution = learner.contribute(1).unwrap().unwrap();
    assert_eq!(contribution.metrics.samples, 10);
    assert_eq!(contribution.metrics.samples, 10);
    assert!(contribution.metrics.prequential_errors <= 10);
    for ((d, l), g) in contribution.delta.values.iter().zip(&local.values).zip(&global.values) {
        assert!((d - (l - g)).abs() < 1e-6);
    }
    assert!(contribution.delta.values.iter().any(|d| d.abs() > 1e-6));
    assert!(learner.contribute(1).unwrap().is_none(), "counts were reset");
}

#[test]
fn adopting_keeps_progress_made_after_the_contribution() {
    let (mut learner, global) = learner_with_base();
    for i in 0..5 {
        learner.learn(&sample(i)).unwrap();
    }
    let sent = learner.contribute(1).unwrap().unwrap();
    let at_snapshot = current(&mut learner);
    for i in 5..8 {
        learner.learn(&sample(i)).unwrap();
    }
    let before_adopt = current(&mut learner);
    // The coordinator's new model: base + this client's delta (it was the only one).
    let values = global.values.iter().zip(&sent.delta.values).map(|(g, d)| g + d).collect();
    let new_global = ParameterVector { values, ..global.clone() };
    learner.adopt(2, new_global.clone()).unwrap();
    let after = current(&mut learner);
    let k = spec().heads();
    let n = after.values.len();
    for i in 0..n - k {
        let expected = new_global.values[i] + before_adopt.values[i] - at_snapshot.values[i];
        assert!((after.values[i] - expected).abs() < 1e-5, "parameter {i}");
    }
    let alpha_sum: f32 = after.values[n - k..].iter().sum();
    assert!((alpha_sum - 1.0).abs() < 1e-5);
    assert_eq!(learner.base_version(), Some(2));
    let next = learner.contribute(2).unwrap().unwrap();
    assert_eq!(next.metrics.samples, 3, "samples after the snapshot are reported next round");
}

#[test]
fn state_round_trips_and_detects_corruption() {
    let (mut learner, _) = learner_with_base();
    for i in 0..4 {
        learner.learn(&sample(i)).unwrap();
    }
    let state = learner.state().unwrap();
    assert_eq!(state.rows_consumed, 4);
    let bytes = state.encode().unwrap();
    assert_eq!(ClientState::decode(&bytes).unwrap(), state);
    let mut resumed = LocalLearner::from_state(state.clone(), &Device::flex()).unwrap();
    assert_eq!(resumed.state().unwrap(), state);
    let mut corrupt = bytes.clone();
    corrupt[bytes.len() / 2] ^= 0x40;
    assert!(ClientState::decode(&corrupt).is_err());
    assert!(ClientState::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn samples_of_another_shape_are_refused() {
    let (mut learner, _) = learner_with_base();
    let wide = Sample { features: vec![0.0; 4], label: 0, line: 7 };
    assert!(learner.learn(&wide).unwrap_err().to_string().contains("line 7: 4 features"));
    let bad_label = Sample { features: vec![0.0; 3], label: 5, line: 8 };
    assert!(learner.learn(&bad_label).unwrap_err().to_string().contains("out of range"));
}

#[test]
fn the_local_model_survives_adoption_and_both_predictions_are_scored() {
    let (mut learner, global) = learner_with_base();
    assert!(learner.mix_weights().unwrap().is_some(), "personalisation is on by default");
    for i in 0..40 {
        learner.learn(&sample(i)).unwrap();
    }
    let before = learner.state().unwrap();
    let local_before = before.local.clone().expect("a local model is kept");
    assert_eq!(before.class_counts.iter().sum::<u64>(), 40);
    learner.contribute(1).unwrap().unwrap();
    learner.adopt(2, global).unwrap();
    let after = learner.state().unwrap();
    assert_eq!(after.local, Some(local_before), "adopting a global model never touches the local one");
    assert_ne!(after.params, before.params, "the shared model is rebased");
    assert_eq!(learner.total().unwrap().samples, 40);
    assert_eq!(learner.global_total().unwrap().samples, 40);
    let weights = learner.mix_weights().unwrap().unwrap();
    assert_eq!(weights.len(), crate::personal::EXPERTS.len());
    assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{weights:?}");
}

#[test]
fn personalisation_can_be_turned_off_and_on() {
    let (mut learner, _) = learner_with_base();
    let off = PersonalConfig { enabled: false, ..PersonalConfig::default() };
    learner.set_personal(off).unwrap();
    for i in 0..10 {
        learner.learn(&sample(i)).unwrap();
    }
    assert_eq!(learner.total().unwrap(), learner.global_total().unwrap(), "without a mix, one prediction");
    let state = learner.state().unwrap();
    assert!(state.local.is_none() && state.mix.is_empty());
    learner.set_personal(PersonalConfig::default()).unwrap();
    assert!(learner.state().unwrap().local.is_some());
}

#[test]
fn pruned_weights_stay_zero_when_the_rules_say_so() {
    let device = Device::flex();
    let mut global = HbpModel::new(HbpConfig { seed: 9, ..spec() }, &device).unwrap().to_parameters().unwrap();
    // Prune a few weights of hidden layer 0 (its weight segment comes first).
    let pruned = [0usize, 4, 7];
    pruned.iter().for_each(|&i| global.values[i] = 0.0);
    let mut learner = LocalLearner::new(spec(), &device).unwrap();
    learner.set_keep_pruned(true);
    learner.adopt(1, global.clone()).unwrap();
    for i in 0..20 {
        learner.learn(&sample(i)).unwrap();
    }
    let delta = learner.contribute(1).unwrap().unwrap().delta;
    assert!(pruned.iter().all(|&i| delta.values[i] == 0.0));
    assert!(delta.values.iter().filter(|d| d.abs() > 1e-7).count() > pruned.len());
    // A rebase onto the next global drops local progress on the pruned weights.
    for i in 20..30 {
        learner.learn(&sample(i)).unwrap();
    }
    learner.adopt(2, global.clone()).unwrap();
    let params = current(&mut learner);
    assert!(pruned.iter().all(|&i| params.values[i] == 0.0));
    // Without the rule the same learning moves them.
    let mut free = LocalLearner::new(spec(), &device).unwrap();
    free.adopt(1, global).unwrap();
    for i in 0..20 {
        free.learn(&sample(i)).unwrap();
    }
    let delta = free.contribute(1).unwrap().unwrap().delta;
    assert!(pruned.iter().any(|&i| delta.values[i] != 0.0));
}

#[test]
fn predicting_rows_learns_nothing() {
    let (mut learner, _) = learner_with_base();
    for i in 0..30 {
        learner.learn(&sample(i)).unwrap();
    }
    let before = current(&mut learner);
    let rows: Vec<Vec<f32>> = (30..40).map(|i| sample(i).features).collect();
    let first = learner.predict(&rows).unwrap();
    let second = learner.predict(&rows).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.len(), 10);
    for p in &first {
        assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(p.class, crate::infer::argmax(&p.probabilities));
    }
    let after = current(&mut learner);
    assert_eq!(before.values, after.values);
    assert_eq!(learner.rows_consumed(), 30);
    assert!(matches!(learner.predict(&[vec![1.0]]), Err(LocalError::FeatureCount { expected: 3, found: 1, .. })));
    assert!(learner.predict(&[]).unwrap().is_empty());
}

/// A learner whose model learning drove to NaN or infinity (a global model it cannot learn
/// from, here weights a billion times too large) neither sends that nor fails: it restarts
/// from the global model, drops the rows' contribution and goes on.
#[test]
fn a_diverged_local_model_restarts_from_the_global_one() {
    let (mut learner, global) = learner_with_base();
    // The global model with every weight (not α) a billion times larger.
    let wild = |global: &ParameterVector| {
        let mut wild = global.clone();
        let weights = global.values.len() - spec().heads();
        wild.values[..weights].iter_mut().for_each(|v| *v *= 1e9);
        wild
    };
    let wild_1 = wild(&global);
    learner.adopt(2, wild_1.clone()).unwrap();
    let diverge = |learner: &mut LocalLearner| {
        for i in 0..20 {
            learner.learn(&sample(i)).unwrap();
        }
        let params = learner.model.to_parameters().unwrap();
        assert!(flotilla_protocol::params::first_non_finite(&params.values).is_some(), "the setup diverges");
    };
    diverge(&mut learner);
    assert!(learner.contribute(2).unwrap().is_none(), "no non-finite delta is sent");
    assert_eq!(current(&mut learner).values, wild_1.values, "back on the global model it rests on");
    assert!(learner.contribute(2).unwrap().is_none(), "the diverged rows are not reported later");
    assert_eq!(learner.total().unwrap().samples, 20, "the rows still count as learnt");

    // Adopting over a diverged model takes the global model as it is (no local progress kept).
    diverge(&mut learner);
    learner.adopt(3, global.clone()).unwrap();
    assert_eq!(current(&mut learner).values, global.values);
    assert_eq!(learner.base_version(), Some(3));
    learner.learn(&sample(0)).unwrap();
    assert!(learner.contribute(3).unwrap().is_some(), "learning goes on");

    // A durable state is never written with a diverged model (it could not be restored).
    let wild_again = wild(&global);
    learner.adopt(4, wild_again.clone()).unwrap();
    diverge(&mut learner);
    let state = learner.state().unwrap();
    assert_eq!(state.params.values, wild_again.values);
    assert!(LocalLearner::from_state(state, &Device::flex()).is_ok());
}
