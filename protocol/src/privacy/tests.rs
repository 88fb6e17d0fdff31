use std::num::NonZeroUsize;

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rand_distr::StandardUniform;

use super::*;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn bound(value: f32) -> ClipBound {
    ClipBound::new(value).unwrap()
}

fn close(actual: f64, expected: f64, tolerance: f64) {
    assert!((actual - expected).abs() <= tolerance, "{actual} is not within {tolerance} of {expected}");
}

fn mean_and_variance(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
    let variance = values.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance)
}

#[test]
fn clipping_scales_down_to_the_bound_only() {
    let mut values = [3.0, 4.0];
    assert_eq!(clip_l2(&mut values, bound(1.0)), 5.0);
    assert_eq!(values, [0.6, 0.8]);
    let mut small = [3.0, 4.0];
    assert_eq!(clip_l2(&mut small, bound(10.0)), 5.0);
    assert_eq!(small, [3.0, 4.0]);
    let mut zero = [0.0; 3];
    assert_eq!(clip_l2(&mut zero, bound(1.0)), 0.0);
    assert_eq!(zero, [0.0; 3]);
    let mut long: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
    let norm = clip_l2(&mut long, bound(0.5));
    assert!(norm > 0.5);
    close(l2_norm(&long), 0.5, 1e-6);
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(ClipBound::new(bad), Err(PrivacyError::BadClip(_))), "{bad}");
    }
}

#[test]
fn gaussian_noise_has_the_requested_standard_deviation() {
    let mut values = vec![0.0f32; 200_000];
    add_gaussian(&mut values, 0.7, &mut rng(1)).unwrap();
    let (mean, variance) = mean_and_variance(&values);
    // Standard error of the mean 0.7/√200000 ≈ 0.0016; of the variance 0.49·√(2/200000) ≈ 0.0015.
    close(mean, 0.0, 0.008);
    close(variance, 0.49, 0.01);
    let mut untouched = vec![1.5f32; 10];
    add_gaussian(&mut untouched, 0.0, &mut rng(1)).unwrap();
    assert_eq!(untouched, vec![1.5; 10]);
    assert_eq!(add_gaussian(&mut untouched, -1.0, &mut rng(1)), Err(PrivacyError::BadNoise(-1.0)));
    assert!(add_gaussian(&mut untouched, f64::NAN, &mut rng(1)).is_err());
}

#[test]
fn central_and_distributed_noise_carry_the_same_total() {
    let z = NoiseMultiplier::new(1.2).unwrap();
    let clip = bound(0.5);
    close(z.central_std(clip), 0.6, 1e-12);
    let clients = NonZeroUsize::new(16).unwrap();
    close(z.distributed_std(clip, clients), 0.15, 1e-12);
    // Sixteen clients each add their share; the sum carries z·C.
    let mut rng = rng(2);
    let mut sum = vec![0.0f32; 100_000];
    for _ in 0..clients.get() {
        let mut share = vec![0.0f32; sum.len()];
        add_gaussian(&mut share, z.distributed_std(clip, clients), &mut rng).unwrap();
        for (total, value) in sum.iter_mut().zip(share) {
            *total += value;
        }
    }
    let (_, variance) = mean_and_variance(&sum);
    close(variance.sqrt(), 0.6, 0.01);
    assert!(NoiseMultiplier::new(-0.1).is_err());
}

#[test]
fn adaptive_clip_moves_to_the_target_quantile() {
    // Update norms uniform on [0, 10]: the median is 5, the 0.8-quantile 8.
    for (target, expected) in [(0.5, 5.0), (0.8, 8.0)] {
        for initial in [0.1, 50.0] {
            let clients = 100;
            let mut adaptive =
                AdaptiveClip::new(bound(initial), target, 0.2, clients as f64 / 20.0, clients as f64).unwrap();
            let mut rng = rng(3);
            for _ in 0..400 {
                let clip = f64::from(adaptive.clip().get());
                let below = (0..clients)
                    .filter(|_| {
                        let u: f64 = StandardUniform.sample(&mut rng);
                        10.0 * u <= clip
                    })
                    .count() as u64;
                adaptive.update(below, clients, &mut rng).unwrap();
            }
            let clip = f64::from(adaptive.clip().get());
            assert!((clip - expected).abs() < 0.15 * expected, "γ = {target} from {initial}: C = {clip}");
        }
    }
}

#[test]
fn adaptive_clip_steps_geometrically() {
    let mut adaptive = AdaptiveClip::new(bound(2.0), 0.5, 0.2, 0.0, 10.0).unwrap();
    // All ten below the clip: b̄ = 1, C ← 2·e^(−0.2·0.5).
    let clip = adaptive.update(10, 10, &mut rng(4)).unwrap();
    close(f64::from(clip.get()), 2.0 * (-0.1f64).exp(), 1e-6);
    // None below: b̄ = 0, back up by e^(0.1).
    let clip = adaptive.update(0, 10, &mut rng(4)).unwrap();
    close(f64::from(clip.get()), 2.0, 1e-6);
    // Half of a round with fewer clients than expected: b̄ = (3 − 3)/10 + ½ = ½, no move.
    let clip = adaptive.update(3, 6, &mut rng(4)).unwrap();
    close(f64::from(clip.get()), 2.0, 1e-6);
    assert_eq!(adaptive.update(7, 6, &mut rng(4)), Err(PrivacyError::BadCount { below: 7, reported: 6 }));
    assert!(matches!(adaptive.update_with_fraction(f64::NAN), Err(PrivacyError::BadFraction(_))));
    // The clip stays a valid bound whatever the noise does.
    let clip = adaptive.update_with_fraction(1e6).unwrap();
    assert!(clip.get() > 0.0);
    assert!(AdaptiveClip::new(bound(1.0), 1.5, 0.2, 1.0, 10.0).is_err());
    assert!(AdaptiveClip::new(bound(1.0), 0.5, -0.2, 1.0, 10.0).is_err());
    assert!(AdaptiveClip::new(bound(1.0), 0.5, 0.2, 1.0, 0.0).is_err());
}

#[test]
fn count_noise_is_paid_for_by_the_update_noise() {
    // Andrew et al.: z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2); with m = 100 clients, σ_b = m/20 = 5.
    let z_delta = update_noise_multiplier(1.0, 5.0).unwrap();
    close(z_delta, 0.99f64.powf(-0.5), 1e-12);
    close(combined_noise_multiplier(z_delta, 5.0), 1.0, 1e-12);
    assert_eq!(update_noise_multiplier(0.0, 0.0), Ok(0.0));
    assert_eq!(
        update_noise_multiplier(2.0, 1.0),
        Err(PrivacyError::CountNoiseTooSmall { noise_multiplier: 2.0, count_noise: 1.0 })
    );
    let adaptive = AdaptiveClip::new(bound(1.0), 0.5, 0.2, 5.0, 100.0).unwrap();
    assert_eq!(adaptive.update_noise_multiplier(1.0), Ok(z_delta));
    // No noise on the count: no privacy at all.
    assert_eq!(combined_noise_multiplier(1.0, 0.0), 0.0);
}

#[test]
fn rdp_without_subsampling_is_the_closed_form() {
    // TF Privacy rdp_accountant_test: compute_rdp(1, 10, 1, 20) == 0.1.
    assert_eq!(subsampled_gaussian_rdp(1.0, 10.0, 20.0), 0.1);
    let orders = vec![1.5, 2.0, 3.25, 32.0, 64.0];
    let mut accountant = RdpAccountant::new(orders.clone()).unwrap();
    accountant.steps(2.0, 1.0, 7).unwrap();
    for (rdp, order) in accountant.rdp().iter().zip(&orders) {
        close(*rdp, 7.0 * order / (2.0 * 4.0), 1e-12);
    }
    assert_eq!(subsampled_gaussian_rdp(0.0, 1.0, 5.0), 0.0);
    assert_eq!(subsampled_gaussian_rdp(0.5, 0.0, 5.0), f64::INFINITY);
}

#[test]
fn rdp_matches_tensorflow_privacy() {
    // TF Privacy rdp_accountant_test.py, test_compute_rdp_scalar: compute_rdp(0.1, 2, 10, 5)
    // ≈ 0.07737 (5 places).
    close(10.0 * subsampled_gaussian_rdp(0.1, 2.0, 5.0), 0.07737, 5e-6);
    // test_compute_rdp_sequence: compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100, inf]),
    // within 1e-5 — fractional and integer orders.
    let expected = [(1.5, 0.00065), (2.5, 0.001085), (5.0, 0.00218075), (50.0, 0.023846), (100.0, 167.416307)];
    for (order, rdp) in expected {
        close(50.0 * subsampled_gaussian_rdp(0.01, 2.5, order), rdp, 1e-5);
    }
    assert_eq!(subsampled_gaussian_rdp(0.01, 2.5, f64::INFINITY), f64::INFINITY);
}

#[test]
fn epsilon_matches_opacus() {
    // Opacus tests/accountants_test.py, test_rdp_accountant: z = 1.5, q = 0.04,
    // 90/0.04 = 2250 steps, δ = 1e-5, default orders: ε = 7.32911117143.
    let mut accountant = RdpAccountant::default();
    for _ in 0..2250 {
        accountant.step(1.5, 0.04).unwrap();
    }
    let (epsilon, order) = accountant.epsilon(1e-5).unwrap();
    println!("opacus example: ε = {epsilon:.11} at order {order}");
    close(epsilon, 7.32911117143, 1e-6);
    assert_eq!(accountant.composed_steps(), 2250);
    let mut at_once = RdpAccountant::default();
    at_once.steps(1.5, 0.04, 2250).unwrap();
    close(at_once.epsilon(1e-5).unwrap().0, epsilon, 1e-9);

    // Opacus analysis/rdp.py module docstring: (q, σ, steps) = (1e-5, 1.0, 10) then
    // (1e-4, 3.0, 4), orders 2..=32, δ = 1e-5: (ε, order) = (0.336, 23).
    let mut accountant = RdpAccountant::new((2..=32).map(f64::from).collect()).unwrap();
    accountant.steps(1.0, 1e-5, 10).unwrap();
    accountant.steps(3.0, 1e-4, 4).unwrap();
    let (epsilon, order) = accountant.epsilon(1e-5).unwrap();
    close(epsilon, 0.336, 5e-4);
    assert_eq!(order, 23.0);
}

#[test]
fn rdp_conversion_matches_tensorflow_privacy() {
    // TF Privacy test_get_privacy_spent_check_target_delta: a constant RDP of 1.1 at orders
    // 2..=32 (pure DP) picks order 32 and ε = 1.32783806176 at δ = 1e-5.
    let orders: Vec<f64> = (2..=32).map(f64::from).collect();
    let (epsilon, order) = rdp_to_epsilon(&orders, &vec![1.1; orders.len()], 1e-5).unwrap();
    close(epsilon, 1.32783806176, 1e-9);
    assert_eq!(order, 32.0);
    // Same test, no subsampling: σ = 4.530877117 over the fine orders 1.001, 1.002, … gives
    // exactly (1, 1e-6)-DP.
    let fine: Vec<f64> = (1001..100_000).map(|i| f64::from(i) * 0.001).collect();
    let mut accountant = RdpAccountant::new(fine).unwrap();
    accountant.step(4.530877117, 1.0).unwrap();
    close(accountant.epsilon(1e-6).unwrap().0, 1.0, 1e-6);
    // test_check_composition: still below the old conversion's 8.509656.
    let orders =
        vec![1.25, 1.5, 1.75, 2., 2.5, 3., 4., 5., 6., 7., 8., 10., 12., 14., 16., 20., 24., 28., 32., 64., 256.];
    let mut accountant = RdpAccountant::new(orders).unwrap();
    accountant.steps(0.4, 1e-4, 40_000).unwrap();
    accountant.steps(2.0, 0.1, 100).unwrap();
    let (epsilon, _) = accountant.epsilon(1e-5).unwrap();
    assert!(epsilon <= 8.509656, "{epsilon}");
}

#[test]
fn accountant_edge_cases() {
    let accountant = RdpAccountant::default();
    let (epsilon, order) = accountant.epsilon(1e-5).unwrap();
    assert_eq!(epsilon, 0.0);
    assert!(order.is_nan());
    let mut noiseless = RdpAccountant::default();
    noiseless.step(0.0, 0.1).unwrap();
    assert_eq!(noiseless.epsilon(1e-5).unwrap().0, f64::INFINITY);
    // More noise spends less; more steps spend more.
    let epsilon = |z: f64, steps: u64| {
        let mut accountant = RdpAccountant::default();
        accountant.steps(z, 0.01, steps).unwrap();
        accountant.epsilon(1e-5).unwrap().0
    };
    assert!(epsilon(1.0, 100) > epsilon(2.0, 100));
    assert!(epsilon(1.0, 1000) > epsilon(1.0, 100));
    assert_eq!(RdpAccountant::new(vec![]), Err(PrivacyError::NoOrders));
    assert_eq!(RdpAccountant::new(vec![2.0, 1.0]), Err(PrivacyError::BadOrder(1.0)));
    assert!(RdpAccountant::new(vec![f64::INFINITY]).is_err());
    let mut accountant = RdpAccountant::default();
    assert_eq!(accountant.step(1.0, 1.5), Err(PrivacyError::BadSampleRate(1.5)));
    assert_eq!(accountant.step(-1.0, 0.5), Err(PrivacyError::BadNoise(-1.0)));
    assert_eq!(accountant.epsilon(0.0), Err(PrivacyError::BadDelta(0.0)));
    assert_eq!(accountant.epsilon(1.0), Err(PrivacyError::BadDelta(1.0)));
    assert_eq!(rdp_to_epsilon(&[2.0], &[], 1e-5), Err(PrivacyError::OrderCount { orders: 1, rdp: 0 }));
    assert_eq!(default_orders().len(), 99 + 52);
}
