//! Shamir sharing, the fixed-point encoding, the parameters, the neighbour graph and the mask PRG.

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};

use super::harness::cohort;
use crate::secagg::shamir::{self, P, ShamirError, Share};
use crate::secagg::*;

fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

/// [`shamir::combine`] with the secret out of its wiping wrapper, for comparisons.
fn combine(shares: &[Share], t: usize) -> Result<[u8; 32], ShamirError> {
    shamir::combine(shares, t).map(|secret| *secret)
}

fn random_secret(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    secret
}

#[test]
fn shamir_any_t_shares_reconstruct() {
    let mut r = rng(1);
    let secret = random_secret(&mut r);
    let xs: Vec<u64> = (1..=7).collect();
    let shares = shamir::split(&secret, 4, &xs, &mut r).unwrap();
    let mut subsets = 0;
    for mask in 0u32..(1 << 7) {
        if mask.count_ones() >= 4 {
            let subset: Vec<Share> = (0..7).filter(|i| mask & (1 << i) != 0).map(|i| shares[i].clone()).collect();
            assert_eq!(combine(&subset, 4).unwrap(), secret, "subset {mask:#b}");
            subsets += 1;
        }
    }
    assert_eq!(subsets, 64);
    // Extreme secrets and indices, threshold 1 (every share is the secret) and t = holders.
    for secret in [[0u8; 32], [0xFF; 32]] {
        let xs = [P - 1, P - 2, 12_345_678_901, 1];
        for t in [1, 2, 4] {
            let shares = shamir::split(&secret, t, &xs, &mut r).unwrap();
            let reversed: Vec<Share> = shares.iter().rev().cloned().collect();
            assert_eq!(combine(&reversed, t).unwrap(), secret);
        }
    }
}

#[test]
fn shamir_fewer_than_t_shares_do_not_determine_the_secret() {
    let mut r = rng(2);
    let secret = random_secret(&mut r);
    let xs: Vec<u64> = (1..=5).collect();
    let shares = shamir::split(&secret, 3, &xs, &mut r).unwrap();
    assert_eq!(combine(&shares[..2], 3), Err(ShamirError::TooFewShares { got: 2, need: 3 }));
    // Interpolating through t − 1 shares gives another value than the secret.
    let refs: Vec<&Share> = shares.iter().collect();
    let exact = shamir::interpolate_at_zero(&refs[..3]);
    let short = shamir::interpolate_at_zero(&refs[..2]);
    assert_ne!(*short, *exact);
    assert_eq!(combine(&shares[..3], 3).unwrap(), secret);
}

#[test]
fn shamir_refuses_invalid_and_duplicate_indices() {
    let mut r = rng(3);
    let secret = random_secret(&mut r);
    assert_eq!(shamir::split(&secret, 2, &[1, 0, 3], &mut r), Err(ShamirError::InvalidIndex { x: 0 }));
    assert_eq!(shamir::split(&secret, 2, &[1, P, 3], &mut r), Err(ShamirError::InvalidIndex { x: P }));
    assert_eq!(shamir::split(&secret, 2, &[1, 2, 1], &mut r), Err(ShamirError::DuplicateIndex { x: 1 }));
    assert_eq!(shamir::split(&secret, 0, &[1, 2], &mut r), Err(ShamirError::ZeroThreshold));
    assert_eq!(
        shamir::split(&secret, 3, &[1, 2], &mut r),
        Err(ShamirError::TooFewHolders { threshold: 3, holders: 2 })
    );

    let shares = shamir::split(&secret, 2, &[1, 2, 3], &mut r).unwrap();
    let duplicate = [shares[0].clone(), shares[0].clone()];
    assert_eq!(combine(&duplicate, 2), Err(ShamirError::DuplicateIndex { x: 1 }));
    let mut zero = shares.clone();
    zero[1].x = 0;
    assert_eq!(combine(&zero, 2), Err(ShamirError::InvalidIndex { x: 0 }));
    let mut outside = shares.clone();
    outside[2].y[4] = P;
    assert_eq!(combine(&outside, 2), Err(ShamirError::ValueOutOfField { x: 3 }));
    assert!(!outside[2].is_well_formed());
    // An altered share interpolates to something that is not this secret.
    let mut altered = shares.clone();
    altered[0].y[2] ^= 1 << 40;
    assert_ne!(combine(&altered, 2), Ok(secret));
    let mut garbage = shares;
    garbage[0].y = [P - 1; 5];
    assert_eq!(combine(&garbage, 2), Err(ShamirError::NotASecret));
}

#[test]
fn fixed_point_sums_decode_within_the_documented_error() {
    let fixed = FixedPoint::new(1.0, 16).unwrap();
    assert_eq!(fixed.max_summands(), 32_767);
    let mut r = rng(4);
    let n = 50;
    let weight = 0.8;
    let values: Vec<Vec<f32>> =
        (0..n).map(|_| (0..1000).map(|_| (r.next_u32() >> 8) as f32 / (1u32 << 22) as f32 - 2.0).collect()).collect();
    let clipped_sum = |i: usize| -> f64 { values.iter().map(|v| (f64::from(v[i]) * 0.8).clamp(-1.0, 1.0)).sum() };
    for rounding in [Rounding::Nearest, Rounding::Stochastic] {
        let mut sum = vec![0u32; 1000];
        for v in &values {
            let encoded = match rounding {
                Rounding::Nearest => fixed.encode(v, weight).unwrap(),
                Rounding::Stochastic => fixed.encode_stochastic(v, weight, &mut r).unwrap(),
            };
            sum.iter_mut().zip(&encoded).for_each(|(s, e)| *s = s.wrapping_add(*e));
        }
        let decoded = fixed.decode(&sum, n).unwrap();
        let bound = fixed.max_error(n, rounding);
        for (i, got) in decoded.iter().enumerate() {
            let want = clipped_sum(i);
            assert!((f64::from(*got) - want).abs() <= bound + want.abs() * 1e-7, "{rounding:?} {i}: {got} vs {want}");
        }
    }
    // Stochastic rounding is unbiased: 10.25 steps average to 10.25 steps.
    let v = [10.25 / fixed.scale() as f32];
    let draws = 4000;
    let total: f64 = (0..draws).map(|_| f64::from(fixed.encode_stochastic(&v, 1.0, &mut r).unwrap()[0])).sum();
    assert!((total / f64::from(draws) - 10.25).abs() < 0.05);
    // The extremes: the most summands of ±c decode exactly.
    for c in [1.0f32, -1.0] {
        let one = fixed.encode(&[c * 3.0], 1.0).unwrap()[0];
        let sum = (0..fixed.max_summands()).fold(0u32, |s, _| s.wrapping_add(one));
        assert_eq!(fixed.decode(&[sum], fixed.max_summands()).unwrap()[0], c * 32_767.0);
    }
}

#[test]
fn nearest_encoding_rounds_as_f64_round_does_ties_included() {
    let reference = |fixed: &FixedPoint, v: f32, w: f32| {
        let c = f64::from(fixed.clip_range());
        ((f64::from(v) * f64::from(w)).clamp(-c, c) * fixed.scale()).round() as i32 as u32
    };
    let mut r = rng(9);
    for (clip, bits, weight) in [(1.0f32, 16, 1.0f32), (2.0, 12, 0.8), (1e-3, 30, 3.0), (100.0, 4, -0.5)] {
        let fixed = FixedPoint::new(clip, bits).unwrap();
        let step = 1.0 / fixed.scale() as f32;
        // Exact ties (k + ½ steps, either sign), their neighbours one ulp away, the clip range,
        // zeros and tiny values, then random finite bit patterns.
        let mut values = vec![0.0f32, -0.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, clip, -clip, clip * 7.0];
        for k in 0..64 {
            let tie = (k as f32 + 0.5) * step;
            for v in [tie, -tie] {
                values.extend([v, f32::from_bits(v.to_bits() + 1), f32::from_bits(v.to_bits() - 1)]);
            }
        }
        while values.len() < 20_000 {
            let v = f32::from_bits(r.next_u32());
            if v.is_finite() {
                values.push(v);
            }
        }
        let encoded = fixed.encode(&values, weight).unwrap();
        for (v, got) in values.iter().zip(&encoded) {
            assert_eq!(*got, reference(&fixed, *v, weight), "{v:e} x {weight} at 2^{bits}, clip {clip}");
        }
    }
}

#[test]
fn fixed_point_refuses_non_finite_values_and_overflows() {
    let fixed = FixedPoint::new(2.0, 12).unwrap();
    assert_eq!(fixed.encode(&[0.0, 1.0, f32::NAN], 1.0), Err(FixedPointError::NotFinite { index: 2 }));
    assert_eq!(fixed.encode(&[0.0], f32::INFINITY), Err(FixedPointError::NotFinite { index: usize::MAX }));
    // The first non-finite value is named whatever follows it, in both roundings, on vectors
    // long enough for the encoding's vector code.
    let mut values = vec![0.5_f32; 1000];
    values[700] = f32::NEG_INFINITY;
    values[900] = f32::NAN;
    assert_eq!(fixed.encode(&values, 1.0), Err(FixedPointError::NotFinite { index: 700 }));
    let mut rng = rng(7);
    assert_eq!(fixed.encode_stochastic(&values, 1.0, &mut rng), Err(FixedPointError::NotFinite { index: 700 }));
    let max = fixed.max_summands();
    assert_eq!(max, (i32::MAX as usize) / 8192);
    assert_eq!(fixed.decode(&[0], max + 1), Err(FixedPointError::TooManySummands { summands: max + 1, max }));
    assert_eq!(FixedPoint::new(0.0, 16), Err(FixedPointError::BadClipRange(0.0)));
    assert!(matches!(FixedPoint::new(f32::NAN, 16), Err(FixedPointError::BadClipRange(_))));
    assert_eq!(FixedPoint::new(1.0, 31), Err(FixedPointError::BadScale { scale_bits: 31, clip: 1.0 }));
    assert_eq!(FixedPoint::new(1.0, 99), Err(FixedPointError::BadScale { scale_bits: 99, clip: 1.0 }));
}

fn params(k: usize, t: usize) -> SecAggParams {
    SecAggParams { neighbours: k, threshold: t, clip_range: 1.0, scale_bits: 16 }
}

#[test]
fn params_refuse_configurations_without_privacy_or_headroom() {
    assert_eq!(params(4, 2).validate(10), Err(ParamsError::ThresholdTooLow { threshold: 2, degree: 4 }));
    assert_eq!(params(4, 3).validate(10), Ok(()));
    assert_eq!(params(4, 5).validate(10), Err(ParamsError::ThresholdAboveNeighbours { threshold: 5, neighbours: 4 }));
    assert_eq!(params(10, 6).validate(10), Err(ParamsError::TooManyNeighbours { neighbours: 10, cohort: 10 }));
    assert_eq!(params(0, 0).validate(10), Err(ParamsError::NoNeighbours));
    assert_eq!(params(1, 1).validate(1), Err(ParamsError::CohortTooSmall { cohort: 1 }));
    assert_eq!(params(1, 1).validate(2), Ok(()));
    // Odd k on an odd cohort: degree k + 1, so t must exceed (k + 1) / 2.
    assert_eq!(params(3, 2).validate(9), Err(ParamsError::ThresholdTooLow { threshold: 2, degree: 4 }));
    assert_eq!(params(3, 3).validate(9), Ok(()));
    // Headroom: c = 1 at 2^16 fits 32,767 clients.
    assert_eq!(SecAggParams::complete(32_767, 1.0, 16).validate(32_767), Ok(()));
    assert_eq!(params(4, 3).validate(32_768), Err(ParamsError::Headroom { cohort: 32_768, max: 32_767 }));
    let precise = SecAggParams { scale_bits: 20, ..params(4, 3) };
    assert_eq!(precise.validate(2_048), Err(ParamsError::Headroom { cohort: 2_048, max: 2_047 }));
    let bad_clip = SecAggParams { clip_range: -1.0, ..params(4, 3) };
    assert_eq!(bad_clip.validate(10), Err(ParamsError::Encoding(FixedPointError::BadClipRange(-1.0))));
    for n in 2..40 {
        assert_eq!(SecAggParams::complete(n, 1.0, 16).validate(n), Ok(()), "complete graph of {n}");
    }
}

#[test]
fn graph_is_symmetric_regular_and_deterministic() {
    for (n, k) in [(10, 4), (11, 4), (10, 3), (11, 3), (12, 11), (7, 6), (2, 1), (3, 1), (40, 7)] {
        let ids = cohort(n);
        let graph = NeighbourGraph::new(&[5; 32], &ids, k).unwrap();
        let degree = params(k, k).degree(n);
        assert_eq!(degree, if k % 2 == 1 && n % 2 == 1 && k + 1 < n { k + 1 } else { k });
        for &u in &ids {
            let list = graph.neighbours(u).unwrap();
            assert_eq!(list.len(), degree, "n {n} k {k}");
            assert!(list.windows(2).all(|w| w[0] < w[1]));
            assert!(!list.contains(&u));
            for (rank, &v) in list.iter().enumerate() {
                assert!(graph.are_neighbours(v, u), "n {n} k {k}: {u}–{v} not symmetric");
                assert_eq!(graph.share_index(u, v), Some(rank as u64 + 1));
            }
        }
        if k == n - 1 {
            assert!(ids.iter().all(|&u| ids.iter().all(|&v| u == v || graph.are_neighbours(u, v))));
        }
        assert_eq!(NeighbourGraph::new(&[5; 32], &ids, k).unwrap(), graph);
    }
    let ids = cohort(30);
    let a = NeighbourGraph::new(&[1; 32], &ids, 4).unwrap();
    let b = NeighbourGraph::new(&[2; 32], &ids, 4).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.neighbours(3), None);
    assert_eq!(a.share_index(ids[0], ids[0]), None);
    assert!(matches!(NeighbourGraph::new(&[1; 32], &[3, 2], 1), Err(SecAggError::CohortNotSorted)));
    assert!(matches!(NeighbourGraph::new(&[1; 32], &ids, 30), Err(SecAggError::Params(_))));
}

#[test]
fn the_mask_prg_is_aes_256_in_counter_mode() {
    // The GCM specification's test case 14 (AES-256, zero key, zero 96-bit IV, one zero
    // block): ciphertext cea7403d4d606b6e074ec5d3baf39d18, i.e. E_K(IV ‖ 2), the first block of
    // the counter-mode keystream; the mask adds it as little-endian words.
    let mut words = [0u32; 4];
    crate::secagg::prg::apply_mask(&mut words, &[0; 32], false).unwrap();
    assert_eq!(words, [0x3d40_a7ce, 0x6e6b_604d, 0xd3c5_4e07, 0x189d_f3ba]);
    // Subtracting the same stream undoes it, across the 16 KiB blocks (nonce = block index).
    let seed = [7u8; 32];
    let original: Vec<u32> = (0..10_000u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let mut masked = original.clone();
    crate::secagg::prg::apply_mask(&mut masked, &seed, false).unwrap();
    let changed = masked.iter().zip(&original).filter(|(a, b)| a != b).count();
    assert!(changed > 9_990, "{changed} of 10,000 words changed");
    // Two blocks never share keystream (a repeated nonce would make them equal).
    let deltas: Vec<u32> = masked.iter().zip(&original).map(|(m, o)| m.wrapping_sub(*o)).collect();
    assert_ne!(deltas[..4096], deltas[4096..8192]);
    crate::secagg::prg::apply_mask(&mut masked, &seed, true).unwrap();
    assert_eq!(masked, original);
}
