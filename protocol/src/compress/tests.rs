use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::*;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// `n` standard normal values, the chunks scaled by very different magnitudes.
fn normal_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rng(seed);
    (0..n)
        .map(|i| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * 10f64.powi((i / 300 % 5) as i32 - 2)) as f32
        })
        .collect()
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap().len()
}

fn round_trip(delta: &CompressedDelta) -> CompressedDelta {
    let bytes = bincode::serde::encode_to_vec(delta, bincode::config::standard()).unwrap();
    let (decoded, read): (CompressedDelta, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(read, bytes.len());
    decoded
}

fn fraction(value: f64) -> KeepFraction {
    KeepFraction::new(value).unwrap()
}

fn chunk(size: u32) -> NonZeroU32 {
    NonZeroU32::new(size).unwrap()
}

#[test]
fn int8_round_trip_is_within_one_step_per_coordinate() {
    let values = normal_values(10_000, 1);
    let chunks = Int8Chunks::quantize(&values, DEFAULT_CHUNK, &mut rng(2));
    assert_eq!(chunks.scales.len(), 10_000usize.div_ceil(256));
    let decoded = chunks.to_dense().unwrap();
    for (block, (originals, decoded)) in values.chunks(256).zip(decoded.chunks(256)).enumerate() {
        let max = originals.iter().fold(0.0f32, |max, value| max.max(value.abs()));
        assert_eq!(chunks.scales[block], max / 127.0);
        for (original, decoded) in originals.iter().zip(decoded) {
            assert!((original - decoded).abs() <= max / 127.0 * (1.0 + 1e-6), "{original} → {decoded}");
        }
    }
    // The largest value of a chunk is exact; a zero chunk stays zero.
    let exact = Int8Chunks::quantize(&[0.5, -2.0, 1.0, 0.0, 0.0], chunk(3), &mut rng(3));
    let decoded = exact.to_dense().unwrap();
    assert_eq!((decoded[1], decoded[3], decoded[4]), (-2.0, 0.0, 0.0));
    assert_eq!(exact.scales[1], 0.0);
}

#[test]
fn int8_stochastic_rounding_is_unbiased() {
    let values = normal_values(64, 4);
    let max = values.iter().fold(0.0f32, |max, value| max.max(value.abs()));
    let step = f64::from(max) / 127.0;
    let draws = 4000;
    let mut sums = vec![0.0f64; values.len()];
    let mut rng = rng(5);
    for _ in 0..draws {
        let decoded = Int8Chunks::quantize(&values, chunk(64), &mut rng).to_dense().unwrap();
        for (sum, value) in sums.iter_mut().zip(decoded) {
            *sum += f64::from(value);
        }
    }
    // Each draw errs by at most one step with variance ≤ step²/4: the mean of 4000 draws has
    // a standard deviation ≤ step/(2·√4000); allow five of them.
    let tolerance = 5.0 * step / (2.0 * (draws as f64).sqrt());
    for (sum, value) in sums.iter().zip(&values) {
        let mean = sum / draws as f64;
        assert!((mean - f64::from(*value)).abs() <= tolerance, "mean {mean} for {value} (±{tolerance})");
    }
    // Deterministic rounding would be off by up to half a step on some coordinate.
    assert!(tolerance < step / 4.0);
}

#[test]
fn byte_ratios_with_bincode() {
    let n = 100_000;
    let values = normal_values(n, 6);
    let fp32 = (n * 4) as f64;
    let mut rng = rng(7);
    let dense = Compressor::new(Compression::None).compress(&values, &mut rng).unwrap();
    let int8 = Compressor::new("int8".parse().unwrap()).compress(&values, &mut rng).unwrap();
    let topk = Compressor::new("topk:0.01".parse().unwrap()).compress(&values, &mut rng).unwrap();
    let topk_int8 = Compressor::new("topk:0.01+int8".parse().unwrap()).compress(&values, &mut rng).unwrap();
    let ratio = |delta: &CompressedDelta| encoded_len(delta) as f64 / fp32;
    println!(
        "bytes / fp32 bytes, n = {n}: dense {:.4}, int8 {:.4}, top-1% f32 {:.4}, top-1% int8 {:.4}",
        ratio(&dense),
        ratio(&int8),
        ratio(&topk),
        ratio(&topk_int8)
    );
    assert!(ratio(&int8) <= 0.26, "int8: {}", ratio(&int8));
    assert!(ratio(&topk_int8) <= 0.05, "top-k + int8: {}", ratio(&topk_int8));
    assert!(ratio(&topk) <= 0.05, "top-k: {}", ratio(&topk));
    for delta in [&dense, &int8, &topk, &topk_int8] {
        let decoded = round_trip(delta);
        assert_eq!(&decoded, delta);
        assert_eq!(decoded.len(), n);
        decoded.validate().unwrap();
    }
    let CompressedDelta::Sparse { gaps, .. } = &topk_int8 else { panic!("top-k is sparse") };
    assert_eq!(gaps.len(), 1000);
}

#[test]
fn top_k_keeps_the_largest_magnitudes() {
    let values = [0.1, -5.0, 0.0, 3.0, -0.2, 4.0, 0.3];
    let sparse = top_k(&values, fraction(0.4), None, &mut rng(8)).unwrap();
    // ⌈0.4 · 7⌉ = 3 coordinates: −5, 4 and 3, at indices 1, 3, 5.
    assert_eq!(
        sparse,
        CompressedDelta::Sparse { len: 7, gaps: vec![1, 2, 2], values: SparseValues::F32(vec![-5.0, 3.0, 4.0]) }
    );
    assert_eq!(sparse.to_dense().unwrap(), vec![0.0, -5.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
    let all = top_k(&values, fraction(1.0), None, &mut rng(8)).unwrap();
    assert_eq!(all.to_dense().unwrap(), values.to_vec());
    let empty = top_k(&[], fraction(0.5), Some(DEFAULT_CHUNK), &mut rng(8)).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.to_dense().unwrap(), Vec::<f32>::new());
    assert_eq!(fraction(0.01).keep(100_000), 1000);
    assert_eq!(fraction(0.01).keep(1), 1);
    assert_eq!(KeepFraction::new(0.0), Err(CompressError::BadFraction(0.0)));
    assert!(KeepFraction::new(f64::NAN).is_err());
    assert!(KeepFraction::new(1.5).is_err());
}

#[test]
fn error_feedback_sends_the_sum_of_the_inputs_in_the_long_run() {
    let n = 1000;
    let mut rng = rng(9);
    // A constant drift plus noise: without feedback, top-k would send the same few
    // coordinates of the drift every round.
    let drift: Vec<f32> = (0..n).map(|_| StandardUniform.sample(&mut rng)).map(|u: f32| 2.0 * u - 1.0).collect();
    let mut compressor = Compressor::new("topk:0.05+int8".parse().unwrap());
    let mut inputs = vec![0.0f64; n];
    let mut sent = vec![0.0f64; n];
    let mut residual_norms = Vec::new();
    for _ in 0..500 {
        let delta: Vec<f32> = drift
            .iter()
            .map(|d| {
                let z: f64 = StandardNormal.sample(&mut rng);
                d + 0.1 * z as f32
            })
            .collect();
        for (sum, value) in inputs.iter_mut().zip(&delta) {
            *sum += f64::from(*value);
        }
        let compressed = compressor.compress(&delta, &mut rng).unwrap();
        let compressed = round_trip(&compressed);
        compressed.fold_into(&mut sent, 1.0).unwrap();
        let residual = compressor.residual().unwrap();
        residual_norms.push(residual.iter().map(|r| f64::from(*r).powi(2)).sum::<f64>().sqrt());
        // Σ inputs − Σ sent is the residual (up to f32 rounding).
        for ((input, sent), residual) in inputs.iter().zip(&sent).zip(residual) {
            assert!((input - sent - f64::from(*residual)).abs() < 1e-2, "{input} − {sent} ≠ {residual}");
        }
    }
    let norm = |values: &[f64]| values.iter().map(|v| v * v).sum::<f64>().sqrt();
    let gap: Vec<f64> = inputs.iter().zip(&sent).map(|(input, sent)| input - sent).collect();
    let relative = norm(&gap) / norm(&inputs);
    let early = residual_norms[..250].iter().copied().fold(0.0, f64::max);
    let late = residual_norms[250..].iter().copied().fold(0.0, f64::max);
    println!("error feedback: relative gap {relative:.4}, residual norm max {early:.1} then {late:.1}");
    assert!(relative < 0.1, "relative gap {relative}");
    assert!(late < 1.5 * early, "residual grows: {early} then {late}");
    compressor.reset();
    assert_eq!(compressor.residual(), Some(&[][..]));
}

#[test]
fn error_feedback_refuses_bad_input_and_keeps_its_residual() {
    let mut feedback = ErrorFeedback::new(fraction(0.5), false);
    let sent = feedback.compress(&[1.0, 0.25, -3.0, 0.5], &mut rng(10)).unwrap();
    assert_eq!(sent.to_dense().unwrap(), vec![1.0, 0.0, -3.0, 0.0]);
    assert_eq!(feedback.residual(), &[0.0, 0.25, 0.0, 0.5]);
    assert_eq!(feedback.compress(&[1.0], &mut rng(10)), Err(CompressError::LengthMismatch { expected: 4, found: 1 }));
    assert_eq!(feedback.compress(&[0.0, f32::NAN, 0.0, 0.0], &mut rng(10)), Err(CompressError::NotFinite { index: 1 }));
    assert_eq!(feedback.residual(), &[0.0, 0.25, 0.0, 0.5]);
    // The residual is added first: 0.25 + 0.5 now beats 0.6, and the 0.5 left over waits.
    let sent = feedback.compress(&[0.0, 0.5, 0.6, 0.0], &mut rng(10)).unwrap();
    assert_eq!(sent.to_dense().unwrap(), vec![0.0, 0.75, 0.6, 0.0]);
    assert_eq!(feedback.residual(), &[0.0, 0.0, 0.0, 0.5]);
}

#[test]
fn validate_refuses_malformed_deltas() {
    let sparse = |len, gaps: Vec<u32>, values: Vec<f32>| CompressedDelta::Sparse {
        len,
        gaps,
        values: SparseValues::F32(values),
    };
    assert_eq!(sparse(5, vec![0, 4], vec![1.0, 2.0]).validate(), Ok(()));
    assert_eq!(
        sparse(5, vec![1, 4], vec![1.0, 2.0]).validate(),
        Err(CompressError::IndexOutOfRange { position: 1, index: 5, len: 5 })
    );
    assert_eq!(
        sparse(5, vec![1, 0], vec![1.0, 2.0]).validate(),
        Err(CompressError::IndexNotIncreasing { position: 1 })
    );
    assert_eq!(
        sparse(0, vec![0], vec![1.0]).validate(),
        Err(CompressError::IndexOutOfRange { position: 0, index: 0, len: 0 })
    );
    // u32::MAX gaps do not wrap around.
    assert!(matches!(
        sparse(u32::MAX, vec![u32::MAX - 1, u32::MAX], vec![1.0, 2.0]).validate(),
        Err(CompressError::IndexOutOfRange { position: 1, .. })
    ));
    assert_eq!(sparse(5, vec![1], vec![1.0, 2.0]).validate(), Err(CompressError::ValueCount { indices: 1, values: 2 }));
    assert_eq!(sparse(5, vec![1], vec![f32::INFINITY]).validate(), Err(CompressError::NotFinite { index: 0 }));
    assert_eq!(CompressedDelta::Dense(vec![0.0, f32::NAN]).validate(), Err(CompressError::NotFinite { index: 1 }));

    let chunks = |chunk, scales: Vec<f32>, values: Vec<u8>| CompressedDelta::Int8(Int8Chunks { chunk, scales, values });
    assert_eq!(chunks(2, vec![1.0, 0.5], vec![1, 2, 3]).validate(), Ok(()));
    assert_eq!(
        chunks(2, vec![1.0], vec![1, 2, 3]).validate(),
        Err(CompressError::ScaleCount { expected: 2, found: 1 })
    );
    assert_eq!(chunks(0, vec![], vec![1, 2, 3]).validate(), Err(CompressError::ZeroChunk));
    assert!(matches!(
        chunks(2, vec![1.0, f32::NAN], vec![1, 2, 3]).validate(),
        Err(CompressError::BadScale { chunk: 1, scale }) if scale.is_nan()
    ));
    assert!(matches!(
        chunks(2, vec![-1.0, 1.0], vec![1, 2, 3]).validate(),
        Err(CompressError::BadScale { chunk: 0, .. })
    ));
    assert!(matches!(
        chunks(2, vec![f32::MAX, 1.0], vec![1, 2, 3]).validate(),
        Err(CompressError::BadScale { chunk: 0, .. })
    ));
    assert_eq!(chunks(2, vec![1.0, 1.0], vec![1, 0x80, 3]).validate(), Err(CompressError::Int8OutOfRange { index: 1 }));
    let sparse_int8 = CompressedDelta::Sparse {
        len: 9,
        gaps: vec![2, 3],
        values: SparseValues::Int8(Int8Chunks { chunk: 256, scales: vec![], values: vec![1, 2] }),
    };
    assert_eq!(sparse_int8.validate(), Err(CompressError::ScaleCount { expected: 1, found: 0 }));

    // What decodes from a peer is refused the same way, by to_dense and fold_into too.
    let decoded = round_trip(&sparse(5, vec![3, 0], vec![1.0, 2.0]));
    assert_eq!(decoded.to_dense(), Err(CompressError::IndexNotIncreasing { position: 1 }));
    assert_eq!(decoded.fold_into(&mut [0.0; 5], 1.0), Err(CompressError::IndexNotIncreasing { position: 1 }));
    assert_eq!(
        sparse(5, vec![1], vec![1.0]).fold_into(&mut [0.0; 4], 1.0),
        Err(CompressError::LengthMismatch { expected: 4, found: 5 })
    );
}

#[test]
fn fold_into_adds_what_to_dense_decodes() {
    let values = normal_values(3000, 11);
    let mut rng = rng(12);
    let deltas = [
        CompressedDelta::Dense(values.clone()),
        CompressedDelta::Int8(Int8Chunks::quantize(&values, chunk(100), &mut rng)),
        top_k(&values, fraction(0.1), None, &mut rng).unwrap(),
        top_k(&values, fraction(0.1), Some(chunk(64)), &mut rng).unwrap(),
    ];
    let base: Vec<f64> = (0..values.len()).map(|i| i as f64 * 0.001).collect();
    for delta in &deltas {
        let mut folded = base.clone();
        delta.fold_into(&mut folded, 0.3).unwrap();
        let expected: Vec<f64> =
            base.iter().zip(delta.to_dense().unwrap()).map(|(acc, value)| acc + 0.3 * f64::from(value)).collect();
        assert_eq!(folded, expected, "{}", delta.kind());
    }
}

#[test]
fn compression_flags_parse_and_display() {
    for (text, expected) in [
        ("none", Compression::None),
        ("int8", Compression::Int8 { chunk: DEFAULT_CHUNK }),
        ("int8:64", Compression::Int8 { chunk: chunk(64) }),
        ("topk:0.01", Compression::TopK { fraction: fraction(0.01), int8: false }),
        ("topk:0.25+int8", Compression::TopK { fraction: fraction(0.25), int8: true }),
        ("topk:1", Compression::TopK { fraction: fraction(1.0), int8: false }),
    ] {
        let parsed: Compression = text.parse().unwrap();
        assert_eq!(parsed, expected);
        assert_eq!(parsed.to_string(), text);
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<Compression>(&json).unwrap(), parsed);
    }
    assert_eq!("int8:256".parse::<Compression>().unwrap().to_string(), "int8");
    for bad in ["", "fp16", "int8:0", "int8:x", "topk", "topk:", "topk:abc", "topk:0.1+fp16"] {
        assert_eq!(bad.parse::<Compression>(), Err(CompressError::UnknownScheme(bad.to_owned())), "{bad}");
    }
    assert_eq!("topk:0".parse::<Compression>(), Err(CompressError::BadFraction(0.0)));
    assert_eq!("topk:2+int8".parse::<Compression>(), Err(CompressError::BadFraction(2.0)));
}

#[test]
fn compressor_follows_its_scheme() {
    let values = [1.0, -2.0, 0.5];
    let mut none = Compressor::new(Compression::None);
    assert_eq!(none.compress(&values, &mut rng(13)).unwrap(), CompressedDelta::Dense(values.to_vec()));
    assert_eq!(none.compress(&[f32::NAN], &mut rng(13)), Err(CompressError::NotFinite { index: 0 }));
    assert_eq!(none.residual(), None);
    let mut int8 = Compressor::new("int8".parse().unwrap());
    assert_eq!(int8.compress(&values, &mut rng(13)).unwrap().kind(), "int8");
    assert_eq!(int8.compress(&[0.0, f32::INFINITY], &mut rng(13)), Err(CompressError::NotFinite { index: 1 }));
    let mut topk = Compressor::new("topk:0.5".parse().unwrap());
    assert_eq!(topk.compress(&values, &mut rng(13)).unwrap().to_dense().unwrap(), vec![1.0, -2.0, 0.0]);
    assert_eq!(topk.residual(), Some(&[0.0, 0.0, 0.5][..]));
}

#[test]
fn int8_values_travel_as_a_byte_string() {
    let chunks = Int8Chunks { chunk: 256, scales: vec![1.0], values: vec![0x7f; 200] };
    // A sequence would cost a varint per byte: 0x7f is one byte either way, so compare with
    // values ≥ 251, which a varint spends three bytes on.
    let high = Int8Chunks { chunk: 256, scales: vec![1.0], values: vec![0xff; 200] };
    assert_eq!(encoded_len(&chunks), encoded_len(&high));
    assert!(encoded_len(&high) < 200 + 16);
    let json = serde_json::to_string(&high).unwrap();
    assert_eq!(serde_json::from_str::<Int8Chunks>(&json).unwrap(), high);
}
