//! Loopback: misbehaving peers are refused one by one while a well-behaved client keeps
//! completing rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use flotilla_net::close::error_of_close_code;
use flotilla_net::tls::ClientTls;
use flotilla_protocol::params::Fingerprint;
use flotilla_protocol::wire::{ClientMessage, CoordinatorMessage, ErrorCode};
use quinn::ConnectionError;

use common::*;

/// Asserts the coordinator closed `peer`'s connection with `code`; returns the close reason.
async fn closed_with(peer: &RawPeer, code: ErrorCode) -> String {
    match peer.closed().await {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(error_of_close_code(close.error_code), Some(code), "{close:?}");
            String::from_utf8_lossy(&close.reason).into_owned()
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// The detail of the `code` refusal `peer` gets: from an `Error` message, or from the close
/// frame of a connection closed at once.
async fn expect_error(peer: &mut RawPeer, code: ErrorCode) -> String {
    loop {
        match peer.next().await {
            Ok(Some(CoordinatorMessage::Error { code: got, message })) => {
                assert_eq!(got, code, "{message}");
                return message;
            }
            Ok(Some(CoordinatorMessage::Model { .. } | CoordinatorMessage::UpdateRequest { .. })) => {}
            Err(_) => return closed_with(peer, code).await,
            other => panic!("expected an error {code}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_are_refused_and_a_good_client_keeps_training() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let running = start(options(dir.path(), &["--min-clients", "1", "--round-interval", "50ms"])).await;
    let good = fake_client(session_config(&running, "good"), 0.01, 3);
    good.answered_at_least(1, 10).await;
    let tls = ClientTls { ca: running.ca.clone(), identity: None };

    // Garbage payload in a well-formed frame: a Malformed error, then the connection closes.
    let mut garbage = RawPeer::connect(running.addr, &tls).await.unwrap();
    garbage.send_raw(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    expect_error(&mut garbage, ErrorCode::Malformed).await;
    closed_with(&garbage, ErrorCode::Malformed).await;

    // A header announcing 2 GiB: closed as soon as the header is read.
    let oversized = RawPeer::connect(running.addr, &tls).await.unwrap();
    let mut oversized = oversized;
    oversized.send_raw(&[0, 0, 0, 0x80]).await;
    let reason = closed_with(&oversized, ErrorCode::Malformed).await;
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // Another protocol version.
    let mut old = RawPeer::connect(running.addr, &tls).await.unwrap();
    old.join(99, None).await;
    let message = expect_error(&mut old, ErrorCode::UnsupportedVersion).await;
    assert!(message.contains("99"), "{message}");
    closed_with(&old, ErrorCode::UnsupportedVersion).await;

    // An update holding NaN.
    let mut nan = RawPeer::connect(running.addr, &tls).await.unwrap();
    let (round, version, fingerprint, len) = nan.join_and_wait_for_request().await;
    let mut values = vec![0.0; len];
    values[3] = f32::NAN;
    nan.send(&update(round, version, fingerprint, values)).await;
    let message = expect_error(&mut nan, ErrorCode::InvalidUpdate).await;
    assert!(message.contains("not finite"), "{message}");
    nan.send(&ClientMessage::Goodbye { reason: "done".into() }).await;

    // An update for another layout.
    let mut alien = RawPeer::connect(running.addr, &tls).await.unwrap();
    let (round, version, fingerprint, len) = alien.join_and_wait_for_request().await;
    alien.send(&update(round, version, Fingerprint(fingerprint.0 ^ 1), vec![0.0; len])).await;
    let message = expect_error(&mut alien, ErrorCode::InvalidUpdate).await;
    assert!(message.contains("layout mismatch"), "{message}");
    alien.send(&ClientMessage::Goodbye { reason: "done".into() }).await;

    // Meanwhile, and after, the good client's rounds commit.
    let answered = good.answered.load(std::sync::atomic::Ordering::SeqCst);
    good.answered_at_least(answered + 3, 10).await;
    let summary = running.stop().await;
    good.stop().await.unwrap();
    assert!(summary.rounds_committed >= 4, "{summary:?}");
}
