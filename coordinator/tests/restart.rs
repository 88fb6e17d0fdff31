//! Loopback: a restarted coordinator resumes from its checkpoint (and its client reconnects);
//! a corrupt checkpoint stops it with an error naming the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use flotilla_coordinator::Origin;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_checkpoint_and_refuses_a_corrupt_one() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let first = start(options(dir.path(), &["--min-clients", "1", "--rounds", "2"])).await;
    let addr = first.addr;
    let client = fake_client(session_config(&first, "edge"), 0.5, 2);
    let summary = first.finished(10).await;
    assert_eq!((summary.origin.clone(), summary.checkpoint.model_version), (Origin::Fresh, 2));

    // Same data dir, same port: the client's session reconnects by itself.
    let mut same_port = options(dir.path(), &["--min-clients", "1", "--rounds", "1"]);
    same_port.listen = Some(addr);
    let second = start(same_port).await;
    let resumed = second.finished(15).await;
    client.stop().await.unwrap();
    assert_eq!(resumed.origin, Origin::Resumed);
    assert_eq!(resumed.started_at.1, 2);
    assert_eq!(resumed.checkpoint.model_version, 3);
    assert!(resumed.checkpoint.round > summary.checkpoint.round - 1);
    let lines = std::fs::read_to_string(dir.path().join("rounds.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 3);

    // A flipped byte: a clear error naming the file, and the file left as it was.
    let path = dir.path().join("checkpoint.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let config = options(dir.path(), &["--min-clients", "1"]).into_config().unwrap();
    let error = flotilla_coordinator::run(config, tokio_util::sync::CancellationToken::new()).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("checkpoint.bin") && message.contains("checksum"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}
