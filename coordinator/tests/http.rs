//! The HTTP API on loopback: readiness, predictions before and after rounds, the model file,
//! Prometheus metrics, bearer tokens and bad bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{fake_client, http, init_tracing, options, session_config, start};
use flotilla_protocol::checkpoint::Checkpoint;
use serde_json::Value;

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = http(addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes()).await;
    (status, json(&body))
}

/// Waits until /readyz reports `model_version` at least `version`.
async fn ready_at(addr: SocketAddr, version: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(addr, "GET", "/readyz", &[], b"").await;
        let body = json(&body);
        if status == 200 && body["model_version"].as_u64().unwrap_or(0) >= version {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "not ready at version {version}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text");
    let sample = scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name} is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_follow_the_committed_model_and_metrics_parse() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let running = start(options(dir.path(), &["--min-clients", "2", "--http", "127.0.0.1:0"])).await;
    let api = running.http.unwrap();

    // Before any round: alive, not ready, predictions refused with the reason.
    assert_eq!(http(api, "GET", "/healthz", &[], b"").await.0, 200);
    let (status, body) = http(api, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let (status, body) = post(api, "/v1/predict", r#"{"features":[1.0,2.0,3.0]}"#).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("untrained"), "{body}");

    let a = fake_client(session_config(&running, "a"), 0.05, 10);
    let b = fake_client(session_config(&running, "b"), 0.05, 10);
    ready_at(api, 1).await;
    let (status, first) = post(api, "/v1/predict", r#"{"features":[1.0,2.0,3.0]}"#).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["probabilities"].as_array().unwrap().len(), 2);
    let total: f64 = first["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5, "{first}");
    let version = first["model_version"].as_u64().unwrap();
    assert!(version >= 1);

    // A later commit changes the served predictions. The fake learners step every weight and
    // bias alike, which leaves a softmax unchanged wherever a row's ReLU trunk is dead: rows on
    // both sides of the fleet's mean, so that the steps wake some trunk up whatever their sign.
    let probe = r#"{"rows":[[1.0,2.0,3.0],[6.0,6.0,6.0],[-4.0,-4.0,-4.0],[9.0,-7.0,1.0]]}"#;
    let (status, before) = post(api, "/v1/predict/batch", probe).await;
    assert_eq!(status, 200, "{before}");
    let version = before["model_version"].as_u64().unwrap();
    ready_at(api, version + 2).await;
    let (_, later) = post(api, "/v1/predict/batch", probe).await;
    assert!(later["model_version"].as_u64().unwrap() > version, "{later}");
    assert_ne!(later["probabilities"], before["probabilities"], "no prediction changed after commits");

    // Batches: JSON and CSV (with a header) give the same answer as single rows.
    let (status, batch) = post(api, "/v1/predict/batch", r#"{"rows":[[1.0,2.0,3.0],[-4.0,0.5,9.0]]}"#).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["classes"].as_array().unwrap().len(), 2);
    let csv = b"a,b,c\n1.0,2.0,3.0\n-4.0,0.5,9.0\n";
    let (status, body) = http(api, "POST", "/v1/predict/batch", &[("Content-Type", "text/csv")], csv).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["classes"].as_array().unwrap().len(), 2);

    // The model file is the checkpoint.
    let (status, file) = http(api, "GET", "/v1/model", &[], b"").await;
    assert_eq!(status, 200);
    let checkpoint = Checkpoint::decode(&file).unwrap();
    assert!(checkpoint.model_version >= version);
    assert!(checkpoint.feature_moments.unwrap().count >= 20, "the fleet's feature statistics are kept");

    // Metrics parse and count what happened.
    let (status, text) = http(api, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    assert!(metric(&text, "flotilla_rounds_committed_total") >= 3.0, "{text}");
    assert!(metric(&text, "flotilla_updates_accepted_total") >= 6.0, "{text}");
    assert_eq!(metric(&text, "flotilla_clients_joined"), 2.0, "{text}");
    assert!(text.contains("flotilla_prediction_latency_seconds"), "{text}");

    a.stop().await.unwrap();
    b.stop().await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_json_errors_and_tokens_are_required() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "reader-token\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let tokens_arg = tokens.to_string_lossy().into_owned();
    let data = dir.path().join("data");
    let extra = ["--min-clients", "1", "--http", "127.0.0.1:0", "--tokens-file", &tokens_arg, "--http-max-rows", "3"];
    let running = start(options(&data, &extra)).await;
    let api = running.http.unwrap();
    let auth = [("Authorization", "Bearer reader-token"), ("Content-Type", "application/json")];

    // Tokens: none or a wrong one is refused; health and readiness need none.
    let (status, _) = http(api, "POST", "/v1/predict", &[], br#"{"features":[1,2,3]}"#).await;
    assert_eq!(status, 401);
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(http(api, "GET", "/metrics", &wrong, b"").await.0, 401);
    assert_eq!(http(api, "GET", "/healthz", &[], b"").await.0, 200);

    // Train one round so that shape errors are about rows, not readiness.
    let mut config = session_config(&running, "a");
    config.auth_token = Some("reader-token".into());
    let a = fake_client(config, 0.05, 10);
    ready_at(api, 1).await;

    let cases: [(&str, &[u8], u16); 8] = [
        ("/v1/predict", br#"{"features":[1,2]}"#, 422),
        ("/v1/predict", br#"{"features":[1,2,NaN]}"#, 400),
        ("/v1/predict", br#"{"features":[1,2,"x"]}"#, 400),
        ("/v1/predict", br#"{"features":[1,2,1e39]}"#, 422),
        ("/v1/predict", b"not json", 400),
        ("/v1/predict", br#"{"features":[1,2,3],"extra":1}"#, 400),
        ("/v1/predict/batch", br#"{"rows":[[1,2,3],[1,2,3],[1,2,3],[1,2,3]]}"#, 413),
        ("/v1/predict/batch", br#"{"rows":[]}"#, 422),
    ];
    for (path, body, expected) in cases {
        let (status, answer) = http(api, "POST", path, &auth, body).await;
        let answer = json(&answer);
        assert_eq!(status, expected, "{path} {}: {answer}", String::from_utf8_lossy(body));
        assert!(answer["error"].is_string(), "{answer}");
    }
    let oversized = vec![b' '; 2 << 20];
    let (status, _) = http(api, "POST", "/v1/predict", &auth, &oversized).await;
    assert_eq!(status, 413);
    let (status, answer) = http(api, "POST", "/v1/predict", &auth, br#"{"features":[1,2,3]}"#).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(http(api, "GET", "/no/such/route", &auth, b"").await.0, 404);

    a.stop().await.unwrap();
    running.stop().await;
}

/// One GET over TLS trusting `ca`; returns the raw response.
async fn https_get(addr: SocketAddr, ca: &std::path::Path, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = flotilla_net::tls::ClientTls { ca: ca.to_path_buf(), identity: None };
    let config = flotilla_net::tls::client_crypto(&tls, b"http/1.1").unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_with_the_quic_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let running = start(options(dir.path(), &["--min-clients", "2", "--http", "127.0.0.1:0", "--http-tls"])).await;
    let api = running.http.unwrap();
    let response = https_get(api, &running.ca, "/healthz").await;
    assert!(response.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&response));

    // A peer that opens a connection and says nothing does not hold up the others.
    let _silent = tokio::net::TcpStream::connect(api).await.unwrap();
    let response = https_get(api, &running.ca, "/readyz").await;
    assert!(response.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&response));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(api).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await.unwrap();
    assert!(!answer.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&answer));
    running.stop().await;
}
