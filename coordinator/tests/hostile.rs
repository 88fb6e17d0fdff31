//! Loopback: hostile peers (oversized pre-Join frames, unrequested uploads, trickled uploads,
//! peers that never read, connection floods) are closed or refused while an honest client
//! keeps committing rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use flotilla_net::close::error_of_close_code;
use flotilla_net::tls::ClientTls;
use flotilla_net::transport::Tuning;
use flotilla_protocol::wire::{CoordinatorMessage, ErrorCode, PROTOCOL_VERSION};
use quinn::ConnectionError;

use common::*;

/// The error code `peer` was closed with, and the close reason.
async fn closed_code(connection: &quinn::Connection, within: Duration) -> (Option<ErrorCode>, String) {
    let error = tokio::time::timeout(within, connection.closed()).await.expect("connection stayed open");
    match error {
        ConnectionError::ApplicationClosed(close) => {
            (error_of_close_code(close.error_code), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// One client a round, rounds 50 ms apart, and width 32, which makes an update (≈6 KB) larger
/// than half the 4 KiB idle window: every upload needs a permit.
fn permit_sized_updates(data_dir: &std::path::Path) -> flotilla_coordinator::Options {
    let mut options = options(data_dir, &["--min-clients", "1", "--round-interval", "50ms"]);
    options.width = Some(32);
    options.idle_window_kib = Some(4);
    options
}

/// A frame header announcing `len` payload bytes.
fn header(len: u32) -> [u8; 4] {
    len.to_le_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_join_only_a_small_join_frame_is_read() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let running = start(options(dir.path(), &["--min-clients", "5"])).await;
    let tls = ClientTls { ca: running.ca.clone(), identity: None };

    // The header of a 400 KB frame before any Join: closed at once, nothing buffered.
    let started = Instant::now();
    let mut big = RawPeer::connect(running.addr, &tls).await.unwrap();
    big.send_raw(&header(400_000)).await;
    let (code, reason) = closed_code(&big.connection, Duration::from_secs(5)).await;
    assert_eq!(code, Some(ErrorCode::Malformed), "{reason}");
    assert!(reason.contains("exceeds the limit of 4096"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(3), "closed at once, not after a timeout");

    // A joined peer announcing an upload nobody asked for (over half the idle window, under
    // the upload limit): refused at the header.
    let mut eager = RawPeer::connect(running.addr, &tls).await.unwrap();
    eager.join(PROTOCOL_VERSION, None).await;
    assert!(matches!(eager.next().await.unwrap(), Some(CoordinatorMessage::Welcome { .. })));
    eager.send_raw(&header(20_000)).await;
    let (code, reason) = closed_code(&eager.connection, Duration::from_secs(5)).await;
    assert_eq!(code, Some(ErrorCode::UnexpectedMessage), "{reason}");
    assert!(reason.contains("not asked for"), "{reason}");

    // A joined peer announcing more than any update of this model can be: refused at the header.
    let mut huge = RawPeer::connect(running.addr, &tls).await.unwrap();
    huge.join(PROTOCOL_VERSION, None).await;
    assert!(matches!(huge.next().await.unwrap(), Some(CoordinatorMessage::Welcome { .. })));
    huge.send_raw(&header(60 << 20)).await;
    let (code, reason) = closed_code(&huge.connection, Duration::from_secs(5)).await;
    assert_eq!(code, Some(ErrorCode::Malformed), "{reason}");
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // QUIC datagrams are not offered at all.
    let quiet = RawPeer::connect(running.addr, &tls).await.unwrap();
    assert_eq!(quiet.connection.max_datagram_size(), None);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_per_address() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let running = start(options(dir.path(), &["--min-clients", "5", "--max-connections-per-address", "3"])).await;
    let tls = ClientTls { ca: running.ca.clone(), identity: None };
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(RawPeer::connect(running.addr, &tls).await.unwrap());
    }
    let refused = RawPeer::connect(running.addr, &tls).await;
    let error = format!("{:#}", refused.err().expect("a fourth connection from one address"));
    assert!(error.to_lowercase().contains("refused"), "{error}");
    // A place given back is free again.
    let first = peers.remove(0);
    first.connection.close(0u32.into(), b"bye");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match RawPeer::connect(running.addr, &tls).await {
            Ok(peer) => break peers.push(peer),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("no place after a close: {error:#}"),
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_and_a_peer_that_never_reads_cannot_stall_training() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Every upload needs the single upload permit.
    let mut options = permit_sized_updates(dir.path());
    options.concurrent_uploads = Some(1);
    options.round_deadline = Some("3s".parse().unwrap());
    let running = start(options).await;
    let tls = ClientTls { ca: running.ca.clone(), identity: None };

    // The trickler waits to be asked, announces a 60 KB update (within the upload limit) and
    // sends one byte a second.
    let mut trickler = RawPeer::connect(running.addr, &tls).await.unwrap();
    trickler.join_and_wait_for_request().await;
    trickler.send_raw(&header(60_000)).await;
    let RawPeer { endpoint: _endpoint, connection: trickler, send: mut trickled, reader: _reader } = trickler;
    let trickle = tokio::spawn({
        async move {
            let send = &mut trickled;
            for _ in 0..30 {
                if send.write_all(&[0]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    // The silent peer joins with a stream window smaller than one model and never reads.
    let tiny = Tuning { receive_window: 2048, stream_receive_window: 2048, ..Tuning::CLIENT };
    let mut silent = RawPeer::connect_with(running.addr, &tls, &tiny).await.unwrap();
    silent.join(PROTOCOL_VERSION, None).await;

    let good = fake_client(session_config(&running, "good"), 0.01, 3);
    let started = Instant::now();
    let (code, reason) = closed_code(&trickler, Duration::from_secs(20)).await;
    assert_eq!(code, Some(ErrorCode::Timeout), "{reason}");
    let (code, reason) = closed_code(&silent.connection, Duration::from_secs(20)).await;
    assert_eq!(code, Some(ErrorCode::Timeout), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(16), "both closed by their frame deadlines");
    trickle.abort();
    // The permit is free again: the honest client's rounds commit.
    let answered = good.answered.load(std::sync::atomic::Ordering::SeqCst);
    good.answered_at_least(answered + 3, 15).await;
    let summary = running.stop().await;
    good.stop().await.unwrap();
    assert!(summary.rounds_committed >= 3, "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insider_that_never_reads_is_dropped_and_barred_for_the_penalty() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), "honest\ninsider\n");
    // Rounds as fast as the honest client answers: models pile up in the silent peer's queue
    // long before a frame's deadline (FRAME_GRACE) runs out.
    let extra = ["--min-clients", "1", "--round-goal", "1", "--tokens-file", &tokens, "--penalty", "60s"];
    let mut options = options(dir.path(), &extra);
    options.width = Some(32);
    let running = start(options).await;
    let tls = ClientTls { ca: running.ca.clone(), identity: None };
    let mut config = session_config(&running, "honest");
    config.auth_token = Some("honest".into());
    let good = fake_client(config, 0.01, 3);

    let tiny = Tuning { receive_window: 2048, stream_receive_window: 2048, ..Tuning::CLIENT };
    let mut silent = RawPeer::connect_with(running.addr, &tls, &tiny).await.unwrap();
    silent.join(PROTOCOL_VERSION, Some("insider")).await;
    let started = Instant::now();
    let (code, reason) = closed_code(&silent.connection, Duration::from_secs(20)).await;
    assert_eq!(code, Some(ErrorCode::Timeout), "{reason}");
    assert!(reason.contains("send queue is full"), "dropped for its queue, not a frame deadline: {reason}");
    assert!(started.elapsed() < Duration::from_secs(9), "before FRAME_GRACE");

    // Its identity waits out the penalty: the same token is refused at Join.
    let mut again = RawPeer::connect(running.addr, &tls).await.unwrap();
    again.join(PROTOCOL_VERSION, Some("insider")).await;
    let (code, reason) = closed_code(&again.connection, Duration::from_secs(10)).await;
    assert_eq!(code, Some(ErrorCode::Timeout), "{reason}");
    assert!(reason.contains("misbehaved"), "{reason}");

    let answered = good.answered.load(std::sync::atomic::Ordering::SeqCst);
    good.answered_at_least(answered + 3, 15).await;
    running.stop().await;
    good.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_leaves_its_peer_no_credit_past_the_idle_window() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // The upload window keeps its default (4 MiB).
    let running = start(permit_sized_updates(dir.path())).await;
    let tls = ClientTls { ca: running.ca.clone(), identity: None };
    let mut peer = RawPeer::connect(running.addr, &tls).await.unwrap();
    let (round, base_version, fingerprint, len) = peer.join_and_wait_for_request().await;
    peer.send(&update(round, base_version, fingerprint, vec![0.0; len])).await;
    // The next round's request: the update was read (and folded) and the window closed.
    loop {
        match peer.next().await.unwrap().unwrap() {
            CoordinatorMessage::UpdateRequest { round: next, .. } if next > round => break,
            CoordinatorMessage::Error { code, message } => panic!("{code}: {message}"),
            _ => {}
        }
    }
    // What the peer may still send unasked is the credit it holds: one write takes all of it
    // at once (quinn accepts what flow control allows), or blocks when there is none.
    let junk = vec![0u8; 8 << 20];
    let accepted = match tokio::time::timeout(Duration::from_millis(500), peer.send.write(&junk)).await {
        Ok(Ok(n)) => n,
        Ok(Err(error)) => panic!("write failed: {error}"),
        Err(_) => 0,
    };
    assert!(accepted <= 8 << 10, "the peer could send {accepted} bytes unasked after its upload (idle window 4 KiB)");
    running.stop().await;
}
