//! Loopback: pre-shared tokens and mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use flotilla_net::SessionRefused;
use flotilla_net::tls::{ClientTls, DevPki};
use flotilla_protocol::wire::ErrorCode;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_token_are_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), "# fleet\nsecret\n");
    let running = start(options(dir.path(), &["--min-clients", "1", "--rounds", "1", "--tokens-file", &tokens])).await;

    for token in [None, Some("wrong")] {
        let mut config = session_config(&running, "intruder");
        config.auth_token = token.map(String::from);
        let intruder = fake_client(config, 1.0, 1);
        let error = tokio::time::timeout(std::time::Duration::from_secs(10), intruder.task).await.unwrap().unwrap();
        let refused = error.unwrap_err().downcast::<SessionRefused>().unwrap();
        assert_eq!(refused.code, ErrorCode::Unauthorized, "{refused}");
        assert_eq!(intruder.answered.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    let mut config = session_config(&running, "member");
    config.auth_token = Some("secret".into());
    let member = fake_client(config, 1.0, 1);
    let summary = running.finished(10).await;
    member.stop().await.unwrap();
    assert_eq!(summary.rounds_committed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::load_or_create(&dir.path().join("pki"), &[]).unwrap();
    let identity = pki.issue_client_cert("edge-1").unwrap();
    let ca = pki.ca_cert.to_string_lossy().into_owned();
    let running = start(options(dir.path(), &["--min-clients", "1", "--rounds", "1", "--client-ca", &ca])).await;

    // Without a certificate the handshake, or the first read after it, fails.
    let tls = ClientTls { ca: running.ca.clone(), identity: None };
    match RawPeer::connect(running.addr, &tls).await {
        Err(_) => {}
        Ok(mut peer) => {
            peer.join(flotilla_protocol::wire::PROTOCOL_VERSION, None).await;
            assert!(peer.next().await.is_err(), "a client without a certificate was served");
        }
    }

    let mut config = session_config(&running, "edge-1");
    config.tls.identity = Some(identity);
    let member = fake_client(config, 1.0, 1);
    let summary = running.finished(10).await;
    member.stop().await.unwrap();
    assert_eq!(summary.rounds_committed, 1);
}
