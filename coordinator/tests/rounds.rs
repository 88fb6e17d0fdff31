//! Loopback: three real client sessions with fake learners train three rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use flotilla_coordinator::persist::RoundRecord;
use flotilla_learner::compute::{BackendChoice, select};
use flotilla_learner::hbp::HbpModel;
use flotilla_protocol::checkpoint::Checkpoint;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_commit_three_fedavg_rounds() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let eval = dir.path().join("eval.csv");
    std::fs::write(&eval, "a,b,c,label\n0,1,2,0\n1,0,2,1\n2,2,0,1\n0,0,1,0\n").unwrap();
    let eval_arg = eval.to_string_lossy().into_owned();
    // Textbook FedAvg (the defaults scale the step and serve an average): the mean is checked exactly.
    let textbook = ["--strategy", "fedavg", "--server-step", "fixed", "--serve-average", "0"];
    let args = [&["--min-clients", "3", "--rounds", "3", "--eval-data", &eval_arg][..], &textbook[..]].concat();
    let running = start(options(dir.path(), &args)).await;
    let clients: Vec<FakeClient> = [(1.0, 1), (2.0, 1), (4.0, 2)]
        .into_iter()
        .enumerate()
        .map(|(i, (step, samples))| fake_client(session_config(&running, &format!("edge-{i}")), step, samples))
        .collect();
    let summary = running.finished(20).await;
    for client in clients {
        client.stop().await.unwrap();
    }

    // Each round moves every non-α parameter by (1·1 + 2·1 + 4·2) / 4 = 2.75.
    let initial = HbpModel::new(spec(), &select(BackendChoice::Cpu).unwrap().device).unwrap().to_parameters().unwrap();
    let heads = spec().heads();
    let len = initial.values.len();
    let expected: Vec<f32> = initial
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| if i < len - heads { (0..3).fold(*v, |v, _| (f64::from(v) + 2.75) as f32) } else { *v })
        .collect();
    assert_eq!((summary.rounds_committed, summary.checkpoint.model_version), (3, 3));
    for (i, (got, want)) in summary.checkpoint.params.values.iter().zip(&expected).enumerate() {
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "parameter {i}: {got} != {want}");
    }
    let stored = Checkpoint::decode(&std::fs::read(dir.path().join("checkpoint.bin")).unwrap()).unwrap();
    assert_eq!(stored, summary.checkpoint);

    let text = std::fs::read_to_string(dir.path().join("rounds.jsonl")).unwrap();
    let records: Vec<RoundRecord> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 3, "{text}");
    for (i, record) in records.iter().enumerate() {
        assert_eq!((record.round, record.model_version), (i as u64 + 1, i as u64 + 1));
        assert_eq!((record.participants, record.samples), (3, 4));
        assert_eq!(record.mean_local_error, Some(0.25)); // (0 + 0 + 1) / 4
        assert!(record.global_error_pct.is_some_and(|pct| (0.0..=100.0).contains(&pct)), "{record:?}");
        assert!(record.bytes_in > 0 && record.bytes_out > 0, "{record:?}");
    }
}
