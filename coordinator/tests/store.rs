//! Loopback: checkpoints in an object store (`--checkpoint-url`). A coordinator resumes from the
//! store's newest checkpoint, and a stale one (another committed its next model version
//! meanwhile) is refused by the conditional put and stops with the reason, leaving the other's
//! checkpoint in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use flotilla_coordinator::Origin;
use flotilla_coordinator::store::CheckpointStore;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_coordinator_is_fenced_by_the_store() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("store").display());
    let flags = ["--min-clients", "1", "--rounds", "1", "--checkpoint-url", &url];

    let first = start(options(&dir.path().join("a"), &flags)).await;
    let client = fake_client(session_config(&first, "edge"), 0.5, 2);
    let summary = first.finished(15).await;
    client.stop().await.unwrap();
    assert_eq!((summary.origin, summary.checkpoint.model_version), (Origin::Fresh, 1));
    assert!(!dir.path().join("a/checkpoint.bin").exists(), "the checkpoint went to the data dir, not the store");

    // A second coordinator (its own data dir) resumes from the store at version 1 …
    let second = start(options(&dir.path().join("b"), &flags)).await;
    // … while a third commits version 2 to the same store.
    let store = CheckpointStore::open(&url).unwrap();
    let mut other = summary.checkpoint.clone();
    other.round += 1;
    other.model_version = 2;
    store.commit(2, other.encode().unwrap()).await.unwrap();

    // The second's own version 2 is refused: it stops, naming the reason.
    let client = fake_client(session_config(&second, "edge"), 0.5, 2);
    let result = tokio::time::timeout(Duration::from_secs(20), second.task).await.expect("did not stop").unwrap();
    client.stop().await.ok();
    let message = format!("{:#}", result.unwrap_err());
    assert!(message.contains("model version 2 is already in") && message.contains("stale"), "{message}");
    assert_eq!(store.latest().await.unwrap(), Some(other));
}
