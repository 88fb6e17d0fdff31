//! Loopback, one test per class of round settings: every combination of `--mode`,
//! `--secure-aggregation`, `--dp-*`, `--compression` and `--strategy` either trains (three
//! real client sessions with fake learners commit two rounds through the one update
//! pipeline) or is refused at start with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use flotilla_coordinator::persist::RoundRecord;
use flotilla_protocol::checkpoint::Checkpoint;

use common::*;

/// Runs two rounds with three clients under `args`; the final checkpoint and the round records.
async fn two_rounds(args: &[&str]) -> (Checkpoint, Vec<RoundRecord>) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let all = [&["--min-clients", "3", "--rounds", "2"][..], args].concat();
    let running = start(options(dir.path(), &all)).await;
    let initial = Checkpoint::decode(&std::fs::read(dir.path().join("checkpoint.bin")).unwrap()).unwrap();
    let clients: Vec<FakeClient> =
        (0..3).map(|i| fake_client(session_config(&running, &format!("edge-{i}")), 0.01 * (i + 1) as f32, 2)).collect();
    let summary = running.finished(30).await;
    for client in clients {
        client.stop().await.unwrap();
    }
    assert_eq!(summary.rounds_committed, 2, "{args:?}");
    let moved = summary.checkpoint.params.values.iter().zip(&initial.params.values).any(|(a, b)| a != b);
    assert!(moved, "{args:?}: the model did not move");
    assert!(summary.checkpoint.params.values.iter().all(|v| v.is_finite()), "{args:?}");
    let text = std::fs::read_to_string(dir.path().join("rounds.jsonl")).unwrap();
    let records: Vec<RoundRecord> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 2, "{args:?}: {text}");
    (summary.checkpoint, records)
}

/// No privacy: no ε reported, no accountant kept.
fn no_privacy((checkpoint, records): (Checkpoint, Vec<RoundRecord>)) {
    assert!(records.iter().all(|r| r.epsilon.is_none()), "{records:?}");
    assert!(checkpoint.accountant.is_none() && checkpoint.adaptive_clip.is_none());
}

/// Differential privacy: ε reported and growing, the accountant in the checkpoint.
fn private(records: &[RoundRecord], checkpoint: &Checkpoint) {
    let epsilons: Vec<f64> = records.iter().map(|r| r.epsilon.expect("ε reported")).collect();
    assert!(epsilons[0] > 0.0 && epsilons[1] > epsilons[0], "{epsilons:?}");
    assert_eq!(checkpoint.accountant.as_ref().map(|a| a.composed_steps()), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_plain() {
    no_privacy(two_rounds(&[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_int8_compression() {
    no_privacy(two_rounds(&["--compression", "int8"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_top_k_compression() {
    no_privacy(two_rounds(&["--compression", "topk:0.5+int8"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_robust_strategy() {
    no_privacy(two_rounds(&["--strategy", "median"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_adaptive_server_optimiser() {
    no_privacy(two_rounds(&["--strategy", "fedadam"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_central_dp() {
    let (checkpoint, records) = two_rounds(&["--dp-noise-multiplier", "0.5", "--dp-clip", "1"]).await;
    private(&records, &checkpoint);
    assert!(checkpoint.adaptive_clip.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_central_dp_with_compression_and_adaptive_clipping() {
    // Every fake update's norm (≥ 0.01·√P ≈ 0.17) exceeds the initial bound: it must grow.
    let args =
        ["--dp-noise-multiplier", "0.5", "--dp-clip", "0.01", "--dp-adaptive-clip", "0.5", "--compression", "int8"];
    let (checkpoint, records) = two_rounds(&args).await;
    private(&records, &checkpoint);
    let clip = checkpoint.adaptive_clip.expect("the adaptive clip is checkpointed").clip().get();
    assert!(clip > 0.01, "the bound did not grow towards the median norm: {clip}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_aggregation() {
    let (checkpoint, records) = two_rounds(&["--secure-aggregation"]).await;
    // The clients' feature statistics (rows of mean 1 and variance 1) came masked with their
    // deltas: the coordinator holds their sum, which gives the pooled mean and deviation.
    let moments = checkpoint.feature_moments.clone().expect("feature statistics under secure aggregation");
    assert!(moments.count > 0);
    let (mean, std) = moments.mean_std().unwrap();
    assert!(mean.iter().chain(&std).all(|v| (v - 1.0).abs() < 1e-6), "{mean:?} {std:?}");
    no_privacy((checkpoint, records));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_aggregation_with_distributed_dp() {
    let (checkpoint, records) =
        two_rounds(&["--secure-aggregation", "--dp-noise-multiplier", "0.5", "--dp-clip", "1"]).await;
    assert_eq!(checkpoint.feature_moments, None, "no feature statistics under DP");
    private(&records, &checkpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous() {
    no_privacy(two_rounds(&["--mode", "async", "--buffer-size", "3"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_with_compression_and_momentum() {
    no_privacy(
        two_rounds(&["--mode", "async", "--buffer-size", "3", "--compression", "int8", "--strategy", "fedavgm"]).await,
    );
}

#[test]
fn combinations_that_cannot_work_are_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dp = ["--dp-noise-multiplier", "1", "--dp-clip", "1"];
    let cases: &[(&[&str], &str)] = &[
        (&[&["--mode", "async"][..], &dp].concat(), "differential privacy with --mode async is refused"),
        (&["--mode", "async", "--secure-aggregation"], "secure aggregation needs a cohort fixed"),
        (&["--mode", "async", "--strategy", "median"], "asynchronous mode needs a mean-based strategy"),
        (&["--secure-aggregation", "--compression", "int8"], "compression cannot be masked"),
        (&["--secure-aggregation", "--strategy", "krum"], "robust strategies need each update"),
        (&["--secure-aggregation", "--server-step", "fedexp"], "FedExP's step needs each update's norm"),
        (&[&["--secure-aggregation", "--dp-noise", "central"][..], &dp].concat(), "use distributed DP noise"),
        (&[&["--dp-noise", "distributed"][..], &dp].concat(), "distributed DP noise protects only a secure sum"),
        (
            &[&["--secure-aggregation", "--dp-adaptive-clip", "0.5"][..], &dp].concat(),
            "adaptive clipping needs each update's norm",
        ),
        (&[&["--dp-adaptive-clip", "1.5"][..], &dp].concat(), "an adaptive clip's quantile in [0, 1]"),
    ];
    for (args, reason) in cases {
        let all = [&["--min-clients", "3"][..], args].concat();
        let error = options(dir.path(), &all).into_config().err().unwrap_or_else(|| panic!("{args:?} was accepted"));
        let text = format!("{error:#}");
        assert!(text.contains(reason), "{args:?}: {text}");
    }
}
