//! Loopback, asynchronous mode: four real client sessions with fake learners, one ten times
//! slower than the others; model versions advance without waiting for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_coordinator::persist::RoundRecord;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_advance_without_waiting_for_a_slow_client() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--mode", "async", "--buffer-size", "3", "--max-staleness", "50", "--rounds", "12"];
    let running = start(options(dir.path(), &args)).await;
    let started = Instant::now();
    let speeds = [("fast-0", 30), ("fast-1", 30), ("fast-2", 30), ("slow", 300)];
    let clients: Vec<FakeClient> = speeds
        .into_iter()
        .map(|(name, ms)| fake_client_after(session_config(&running, name), 1.0, 2, Duration::from_millis(ms)))
        .collect();
    let summary = running.finished(30).await;
    let elapsed = started.elapsed();
    let answered: Vec<u64> = clients.iter().map(|client| client.answered.load(Ordering::SeqCst)).collect();
    for client in clients {
        client.stop().await.unwrap();
    }

    assert_eq!((summary.rounds_committed, summary.checkpoint.model_version, summary.checkpoint.round), (12, 12, 12));
    // 36 updates made 12 versions; a round barrier would have waited 12 times for the slow
    // client (≥ 3.6 s), which answered only a few times.
    let fast: u64 = answered[..3].iter().sum();
    assert!(fast >= 30, "fast clients answered {answered:?}");
    assert!(answered[3] < 6, "the slow client answered {answered:?}, as often as the versions advanced");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    assert!(summary.checkpoint.params.values.iter().all(|v| v.is_finite()));

    let text = std::fs::read_to_string(dir.path().join("rounds.jsonl")).unwrap();
    let records: Vec<RoundRecord> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 12, "{text}");
    for (i, record) in records.iter().enumerate() {
        assert_eq!((record.round, record.model_version), (i as u64 + 1, i as u64 + 1));
        assert_eq!((record.participants, record.samples), (3, 6));
        assert_eq!(record.mean_local_error, Some(0.5));
    }
}
