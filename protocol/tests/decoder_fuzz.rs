//! Fuzzing of every decoder a peer or a file reaches: the frame decoder, both message sets
//! (secure-aggregation messages included), checkpoints and client state. Inputs are valid
//! encodings mutated at random (bit flips, interesting bytes, huge length prefixes, cut,
//! spliced and repeated ranges) plus hand-built nested-length attacks; every decode must
//! return (never panic) and allocate at most [`AMPLIFICATION`] × its input plus
//! [`SLACK`] bytes at its peak, measured by a counting global allocator (`peak_alloc`).
//!
//! The short run is part of the suite; the long one is ignored and run by hand:
//! `FUZZ_SECS=600 cargo nextest run --release --workspace -E 'test(fuzz_decoders_long)' --run-ignored only --no-capture`
//! (it prints executions and findings).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::time::{Duration, Instant};

use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::compress::{CompressedDelta, Compression, Int8Chunks, SparseValues};
use flotilla_protocol::model::HbpConfig;
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};
use flotilla_protocol::secagg;
use flotilla_protocol::wire::framing::{FrameDecoder, FrameLimit, decode_message, encode_frame};
use flotilla_protocol::wire::{
    ClientMessage, CompressedUpdate, CoordinatorMessage, ErrorCode, LocalMetrics, PROTOCOL_VERSION, Update, UpdateRules,
};

/// Peak bytes a decode may allocate per input byte…
const AMPLIFICATION: usize = 16;
/// …plus this much: serde preallocates a sequence from its announced length, capped at
/// 1 MiB (its "cautious" size hint), before the elements arrive.
const SLACK: usize = (1 << 20) + (256 << 10);

// Counts every allocation of this test binary (current and peak bytes).
#[global_allocator]
static ALLOCATOR: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// Peak bytes allocated (above the start) while `f` runs. Tests in this file run one at a
/// time per process (nextest), so no other thread allocates meanwhile.
fn peak_of(f: impl FnOnce()) -> usize {
    let start = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    f();
    ALLOCATOR.peak_usage().saturating_sub(start)
}

/// xorshift64*: a fast, seedable generator (the fuzzer needs no more).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(7), values }
}

/// Payloads (without frame headers) of valid messages of every kind, and a checkpoint.
fn corpus() -> Vec<Vec<u8>> {
    let limit = FrameLimit::DEFAULT;
    let metrics = LocalMetrics { samples: 10, prequential_errors: 3 };
    let int8 = Int8Chunks { chunk: 4, scales: vec![0.5, 0.25], values: vec![1, 2, 3, 4, 250, 6] };
    let sparse = CompressedDelta::Sparse { len: 100, gaps: vec![1, 5, 9], values: SparseValues::F32(vec![0.1; 3]) };
    let compressed = |delta| {
        ClientMessage::CompressedUpdate(CompressedUpdate {
            round: 3,
            base_version: 2,
            format_version: PARAMETER_FORMAT_VERSION,
            fingerprint: Fingerprint(7),
            delta,
            metrics,
            moments: None,
        })
    };
    let client = [
        ClientMessage::Join {
            protocol_version: PROTOCOL_VERSION,
            client_name: "edge".into(),
            auth_token: Some("t".into()),
        },
        ClientMessage::Update(Update {
            round: 3,
            base_version: 2,
            delta: vector(vec![0.5; 16]),
            metrics,
            moments: None,
        }),
        ClientMessage::Heartbeat,
        ClientMessage::Error { code: ErrorCode::Malformed, message: "bad\nline".into() },
        ClientMessage::Goodbye { reason: "bye".into() },
        compressed(sparse),
        compressed(CompressedDelta::Int8(int8.clone())),
        compressed(CompressedDelta::Dense(vec![1.0; 8])),
    ];
    let spec = ModelSpec::from(HbpConfig::new(4, 2));
    let coordinator = [
        CoordinatorMessage::Welcome {
            client_id: 1,
            protocol_version: PROTOCOL_VERSION,
            spec: spec.clone(),
            fingerprint: Fingerprint(7),
            round: 1,
            model_version: 1,
        },
        CoordinatorMessage::Model { model_version: 1, round: 1, params: vector(vec![0.25; 16]) },
        CoordinatorMessage::UpdateRequest { round: 1, model_version: 1, deadline_ms: 500 },
        CoordinatorMessage::Rules(UpdateRules { compression: Compression::None, ..UpdateRules::default() }),
    ];
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    corpus.extend(client.iter().map(|m| encode_frame(m, limit).unwrap()[4..].to_vec()));
    corpus.extend(coordinator.iter().map(|m| encode_frame(m, limit).unwrap()[4..].to_vec()));
    corpus.extend(secure_corpus());
    corpus.push(Checkpoint::initial(spec, vector(vec![0.5; 16])).encode().unwrap());
    corpus
}

/// Secure-aggregation messages (client and server), wrapped as on the wire.
fn secure_corpus() -> Vec<Vec<u8>> {
    let limit = FrameLimit::DEFAULT;
    let share = secagg::shamir::Share { x: 3, y: Default::default() };
    let revealed = secagg::RevealedShare { owner: 2, share };
    let client = [
        secagg::ClientMessage::MaskedInput(secagg::MaskedInput { masked: vec![1, 2, 3, 4], missing: vec![2] }),
        secagg::ClientMessage::UnmaskingShares(secagg::UnmaskingShares {
            self_mask: vec![revealed.clone(); 3],
            mask_key: vec![revealed],
        }),
    ];
    let server =
        [secagg::ServerMessage::UnmaskRequest(secagg::UnmaskRequest { survivors: vec![1, 2], dropped: vec![3] })];
    let mut out: Vec<Vec<u8>> = client
        .into_iter()
        .map(|message| encode_frame(&ClientMessage::SecAgg { round: 4, message }, limit).unwrap()[4..].to_vec())
        .collect();
    out.extend(
        server.into_iter().map(|message| {
            encode_frame(&CoordinatorMessage::SecAgg { round: 4, message }, limit).unwrap()[4..].to_vec()
        }),
    );
    out
}

/// A bincode varint announcing `n` (bincode's own encoding of a length).
fn varint(n: u64) -> Vec<u8> {
    bincode::encode_to_vec(n, bincode::config::standard()).expect("a u64 always encodes")
}

/// One random mutation of `input`, drawing material from `corpus`.
fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    let at = rng.below(input.len() + 1);
    match rng.below(9) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = [0, 1, 0x7f, 0x80, 0xff, 250, 251, 252, 253, 254][rng.below(10)];
        }
        2 => {
            let n = [rng.next() & 0xFFFF, rng.next() & 0xFFFF_FFFF, rng.next(), 1 << 30, u64::MAX][rng.below(5)];
            input.splice(at..at, varint(n));
        }
        3 if !input.is_empty() => {
            let end = (at + rng.below(16)).min(input.len());
            input.drain(at.min(end)..end);
        }
        4 => input.truncate(at),
        5 => {
            let other = &corpus[rng.below(corpus.len())];
            let from = rng.below(other.len());
            let end = (from + rng.below(64)).min(other.len());
            input.splice(at..at, other[from..end].iter().copied());
        }
        6 if !input.is_empty() => {
            // Repeat a short range many times: long sequences of small elements.
            let end = (at + 1 + rng.below(4)).min(input.len());
            let range = input[at.min(end.saturating_sub(1))..end].to_vec();
            let times = 1 + rng.below(2000);
            let tail = input.split_off(end);
            for _ in 0..times {
                input.extend_from_slice(&range);
            }
            input.extend(tail);
        }
        7 => input.extend((0..rng.below(32)).map(|_| rng.next() as u8)),
        _ => {
            let i = rng.below(input.len().max(1));
            if i < input.len() {
                input[i] = input[i].wrapping_add(1 + rng.below(3) as u8);
            }
        }
    }
}

/// A named decoder run on one input.
type Decoder<'a> = (&'a str, &'a dyn Fn(&[u8]));

/// Every decoder on `input`; panics (the test fails) on a panic or an over-allocation.
fn decode_all(input: &[u8]) {
    let bound = AMPLIFICATION * input.len() + SLACK;
    let runs: [Decoder; 4] = [
        ("ClientMessage", &|b| drop(decode_message::<ClientMessage>(b))),
        ("CoordinatorMessage", &|b| drop(decode_message::<CoordinatorMessage>(b))),
        ("Checkpoint", &|b| drop(Checkpoint::decode(b))),
        ("frames", &|b| {
            let mut decoder = FrameDecoder::new(FrameLimit::new(1 << 20));
            for chunk in b.chunks(7) {
                decoder.push(chunk);
                while let Ok(Some(_)) = decoder.poll_frame() {}
            }
        }),
    ];
    for (name, run) in runs {
        let peak = peak_of(|| run(input));
        assert!(peak <= bound, "{name}: {peak} bytes allocated for a {}-byte input {:02x?}", input.len(), input);
    }
}

/// Hand-built nested-length attacks: sequences of the smallest possible elements, and
/// length prefixes announcing far more than is sent.
fn nested_length_attacks() -> Vec<Vec<u8>> {
    let mut attacks = Vec::new();
    for n in [1_000u64, 100_000, 1 << 20] {
        // ClientMessage::SecAgg (variant 6), round 1, secagg::ClientMessage::ShareKeys
        // (variant 1), n entries of { peer: 0, ciphertext: [] }.
        let mut share_keys = vec![6, 1, 1];
        share_keys.extend(varint(n));
        share_keys.extend(std::iter::repeat_n([0u8, 0], n as usize).flatten());
        attacks.push(share_keys);
        // UnmaskingShares (variant 3) announcing n shares, sending none.
        let mut unmasking = vec![6, 1, 3];
        unmasking.extend(varint(n));
        attacks.push(unmasking);
        // An Error whose message announces n bytes, sending none.
        let mut error = vec![3, 0];
        error.extend(varint(n));
        attacks.push(error);
    }
    attacks
}

fn fuzz_for(budget: Duration, seed: u64) -> u64 {
    let corpus = corpus();
    for input in corpus.iter().chain(&nested_length_attacks()) {
        decode_all(input);
    }
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut execs = 0u64;
    while started.elapsed() < budget {
        for _ in 0..64 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            for _ in 0..1 + rng.below(6) {
                mutate(&mut input, &corpus, &mut rng);
            }
            decode_all(&input);
            execs += 1;
        }
    }
    execs
}

#[test]
fn fuzz_decoders_briefly() {
    let execs = fuzz_for(Duration::from_secs(3), 0x5eed);
    assert!(execs > 1000, "only {execs} executions");
}

#[test]
#[ignore = "long: run by hand with FUZZ_SECS (default 600)"]
fn fuzz_decoders_long() {
    let secs = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let started = Instant::now();
    let execs = fuzz_for(Duration::from_secs(secs), seed);
    // Any panic or over-allocation fails the test above with its input; reaching here means none.
    println!("{{\"fuzz_execs\":{execs},\"seconds\":{:.0},\"seed\":{seed}}}", started.elapsed().as_secs_f64());
}
