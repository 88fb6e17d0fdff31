//! End-to-end: the real coordinator and client binaries learn together over QUIC on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failure here is a test failure")]

use std::path::Path;
use std::time::Duration;

use flotilla_tests::{Daemon, binary, free_udp_port, rounds, split_phishing, wait_for_rounds};

/// A small model so that a 2-core CI machine runs these in seconds.
fn coordinator_args(port: u16, data_dir: &Path, eval: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--inputs",
        "9",
        "--classes",
        "2",
        "--hidden-layers",
        "4",
        "--width",
        "32",
        "--eval-data",
        eval.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn client_args(port: u16, data_dir: &Path, shard: &Path, name: &str, rate: &str, state: &Path) -> Vec<String> {
    [
        "run",
        "--coordinator",
        &format!("127.0.0.1:{port}"),
        "--ca",
        data_dir.join("pki/ca.pem").to_str().unwrap(),
        "--data",
        shard.to_str().unwrap(),
        "--name",
        name,
        "--rate",
        rate,
        "--backend",
        "cpu",
        "--state-dir",
        state.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn wait_for_pki(data_dir: &Path, coordinator: &Daemon) {
    for _ in 0..200 {
        if data_dir.join("pki/ca.pem").exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the coordinator made no dev CA:\n{}", coordinator.log());
}

/// Starts the coordinator with `args`, waits for its dev CA, then one client per shard
/// learning at `rate` samples/s (each with its own state folder).
fn start_fleet(
    dir: &Path,
    data_dir: &Path,
    port: u16,
    args: &[String],
    shards: &[std::path::PathBuf],
    rate: &str,
) -> (Daemon, Vec<Daemon>) {
    let coordinator = Daemon::start("coordinator", &binary("flotilla-coordinator"), args, dir);
    wait_for_pki(data_dir, &coordinator);
    let clients = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let name = format!("client{i}");
            let args = client_args(port, data_dir, shard, &name, rate, &dir.join(&name));
            Daemon::start(&name, &binary("flotilla-client"), &args, dir)
        })
        .collect();
    (coordinator, clients)
}

/// One HTTP/1.1 request to `port` on loopback; the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn three_clients_learn_together_and_the_global_model_improves() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let (shards, eval) = split_phishing(dir.path(), 3, 1000);
    let port = free_udp_port();
    let http_port = free_tcp_port();
    let http_addr = format!("127.0.0.1:{http_port}");
    let extra = ["--min-clients", "3", "--round-interval", "400ms", "--http", &http_addr];
    let args = coordinator_args(port, &data_dir, &eval, &extra);
    let coordinator = Daemon::start("coordinator", &binary("flotilla-coordinator"), &args, dir.path());
    wait_for_pki(&data_dir, &coordinator);
    let predictions = dir.path().join("client0-predictions.jsonl");
    let device_port = free_tcp_port();
    let clients: Vec<Daemon> = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let name = format!("client{i}");
            let mut args = client_args(port, &data_dir, shard, &name, "150", &dir.path().join(&name));
            if i == 0 {
                args.extend(["--predictions".to_string(), predictions.to_string_lossy().into_owned()]);
            }
            if i == 1 {
                args.extend(["--http".to_string(), format!("127.0.0.1:{device_port}")]);
            }
            Daemon::start(&name, &binary("flotilla-client"), &args, dir.path())
        })
        .collect();
    let mut logs: Vec<&Daemon> = clients.iter().collect();
    logs.push(&coordinator);
    let records = wait_for_rounds(&data_dir, Duration::from_secs(60), "5 committed rounds", &logs, |r| r.len() >= 5);
    let errors: Vec<f64> = records.iter().map(|r| r["global_error_pct"].as_f64().unwrap()).collect();
    eprintln!("global error: round 0 {}, then {errors:?}", records[0]["start_global_error_pct"]);
    let baseline = records[0]["start_global_error_pct"].as_f64().expect("the initial model was evaluated");
    assert!(records.iter().all(|r| r["participants"] == 3), "{records:?}");
    assert!(errors[4] < baseline - 5.0, "global error {baseline} -> {errors:?}");

    // The coordinator serves the trained model over HTTP (raw features, the fleet's statistics).
    let (status, ready) = http(http_port, "GET", "/readyz", "");
    assert_eq!(status, 200, "{ready}\n{}", coordinator.log());
    let row = std::fs::read_to_string(&eval).unwrap().lines().nth(1).unwrap().to_string();
    let features: Vec<&str> = row.split(',').collect();
    let body = format!("{{\"features\":[{}]}}", features[..features.len() - 1].join(","));
    let (status, answer) = http(http_port, "POST", "/v1/predict", &body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(answer["model_version"].as_u64().unwrap() >= 1, "{answer}");

    // A device serves its own (personalised) model with the same API.
    let (status, ready) = http(device_port, "GET", "/readyz", "");
    assert_eq!(status, 200, "{ready}\n{}", clients[1].log());
    let (status, answer) = http(device_port, "POST", "/v1/predict", &body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let p: Vec<f64> = answer["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(p.len() == 2 && (p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{answer}");
    let rows = features[..features.len() - 1].join(",");
    let (status, answer) = http(device_port, "POST", "/v1/predict/batch", &format!("{{\"rows\":[[{rows}],[{rows}]]}}"));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&answer).unwrap()["classes"].as_array().unwrap().len(), 2);
    let (status, answer) = http(device_port, "POST", "/v1/predict", r#"{"features":[1.0]}"#);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("the model takes 9"), "{answer}");

    // The client wrote each row's prediction as a JSON line, rows in order.
    let text = std::fs::read_to_string(&predictions).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 100, "{} predictions", lines.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["row"].as_u64(), Some(i as u64 + 1), "{line}");
        let p: Vec<f64> = line["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4 && p.len() == 2, "{line}");
        assert!(line["class"].as_u64().unwrap() < 2, "{line}");
    }
    assert!(lines.last().unwrap()["model_version"].as_u64().is_some(), "the device adopted a global model");
}

#[test]
fn rounds_survive_a_killed_client_and_a_killed_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let (shards, eval) = split_phishing(dir.path(), 3, 1000);
    let port = free_udp_port();
    let args = coordinator_args(
        port,
        &data_dir,
        &eval,
        &["--min-clients", "2", "--round-interval", "300ms", "--round-deadline", "2s"],
    );
    let (mut coordinator, mut clients) = start_fleet(dir.path(), &data_dir, port, &args, &shards, "12");
    let before = wait_for_rounds(&data_dir, Duration::from_secs(30), "2 rounds", &[&coordinator], |r| r.len() >= 2);
    assert!(before.iter().all(|r| r["participants"] == 3), "{before:?}");

    // A client dies mid-stream: the next round commits with the two others by its deadline.
    clients[2].kill();
    let after_kill =
        wait_for_rounds(&data_dir, Duration::from_secs(30), "a round without client2", &[&coordinator], |r| {
            r.iter().any(|x| x["participants"] == 2)
        });
    let last_round = after_kill.last().unwrap()["round"].as_u64().unwrap();

    // The coordinator dies without warning and comes back on the same data directory.
    coordinator.kill();
    let mut coordinator = Daemon::start("coordinator-restarted", &binary("flotilla-coordinator"), &args, dir.path());
    let watched = [&coordinator, &clients[0], &clients[1]];
    let resumed =
        wait_for_rounds(&data_dir, Duration::from_secs(40), "2 more rounds after the restart", &watched, |r| {
            r.last().and_then(|x| x["round"].as_u64()).is_some_and(|round| round >= last_round + 2)
        });
    let log = coordinator.log();
    assert!(log.contains("resum"), "the restarted coordinator did not say it resumed:\n{log}");
    let rounds: Vec<u64> = resumed.iter().map(|r| r["round"].as_u64().unwrap()).collect();
    assert!(rounds.windows(2).all(|w| w[1] > w[0]), "round numbers went back: {rounds:?}");
    // The restarted coordinator kept its stateless-reset key: the clients' old connections
    // were reset at their next packet instead of waiting out the idle timeout.
    let reset = clients.iter().take(2).any(|client| client.log().contains("reset by peer"));
    assert!(reset, "no client saw its old connection reset:\n{}", clients[0].log());

    for client in clients.iter_mut().take(2) {
        assert!(client.terminate(Duration::from_secs(10)), "{} did not exit cleanly:\n{}", client.name, client.log());
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("client0.out")).unwrap()).unwrap();
    assert!(report["connections"].as_u64().unwrap() >= 2, "client0 never reconnected: {report}");
    assert!(report["updates_sent"].as_u64().unwrap() >= 3, "{report}");
    assert!(coordinator.terminate(Duration::from_secs(10)), "the coordinator did not exit cleanly on SIGTERM");
}

/// Differential privacy across a crash: ε is in the checkpoint, so the rounds after a
/// `kill -9` and restart report more privacy spent than any round before, never round 1's ε.
#[test]
fn epsilon_keeps_growing_across_a_killed_and_restarted_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    // Streams long enough (500 rows at 12/s) to outlast the clients' reconnection after the crash.
    let (shards, eval) = split_phishing(dir.path(), 2, 1000);
    let port = free_udp_port();
    let dp = ["--min-clients", "2", "--round-interval", "200ms", "--round-deadline", "2s"];
    let dp = [&dp[..], &["--dp-noise-multiplier", "1.0", "--dp-clip", "1.0"]].concat();
    let args = coordinator_args(port, &data_dir, &eval, &dp);
    let (mut coordinator, clients) = start_fleet(dir.path(), &data_dir, port, &args, &shards, "12");
    let before = wait_for_rounds(&data_dir, Duration::from_secs(30), "2 rounds", &[&coordinator], |r| r.len() >= 2);
    coordinator.kill();
    let spent_before = before.last().and_then(|r| r["epsilon"].as_f64()).expect("ε is reported under DP");
    let last_round = before.last().and_then(|r| r["round"].as_u64()).unwrap_or(0);
    let coordinator = Daemon::start("coordinator-restarted", &binary("flotilla-coordinator"), &args, dir.path());
    let watched = [&coordinator, &clients[0], &clients[1]];
    let after = wait_for_rounds(&data_dir, Duration::from_secs(60), "a round after the restart", &watched, |r| {
        r.last().and_then(|x| x["round"].as_u64()).is_some_and(|round| round > last_round)
    });
    let epsilons: Vec<f64> = after.iter().filter_map(|r| r["epsilon"].as_f64()).collect();
    assert!(epsilons.windows(2).all(|w| w[1] > w[0]), "ε went back after the restart: {epsilons:?}");
    let spent_after = *epsilons.last().unwrap();
    assert!(spent_after > spent_before, "ε after the restart {spent_after} ≤ before {spent_before}");
}

/// Fail-over: two coordinators (each its own data directory, one server certificate) share a
/// leader lease and an object-store checkpoint directory. The standby stays unbound (alive, not
/// active) until the active one is killed; it then holds the lease within about the lease's
/// duration, resumes from the newest stored checkpoint on the same address, resets the
/// clients' old connections with the key the store shares, and the clients go on with it: no
/// model version lost or committed twice.
#[test]
fn a_standby_takes_over_from_a_killed_active_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let standby_dir = dir.path().join("standby");
    let (shards, eval) = split_phishing(dir.path(), 2, 1000);
    let port = free_udp_port();
    let store = format!("file://{}", dir.path().join("store").display());
    let lease = format!("file://{}", dir.path().join("lease/root.json").display());
    let lease_duration = Duration::from_secs(2);
    let (cert, key) = (data_dir.join("pki/server.pem"), data_dir.join("pki/server.key"));
    let root = |holder: &str, http_port: u16, data_dir: &Path, tls: &[&str]| {
        let http = format!("127.0.0.1:{http_port}");
        let mut extra = vec![
            "--min-clients",
            "2",
            "--round-interval",
            "300ms",
            "--round-deadline",
            "2s",
            "--checkpoint-url",
            &store,
            "--lease-url",
            &lease,
            "--lease-duration",
            "2s",
            "--lease-holder",
            holder,
            "--http",
            &http,
        ];
        extra.extend(tls);
        coordinator_args(port, data_dir, &eval, &extra)
    };
    let (http_a, http_b) = (free_tcp_port(), free_tcp_port());
    let (mut active, clients) =
        start_fleet(dir.path(), &data_dir, port, &root("root-a", http_a, &data_dir, &[]), &shards, "12");
    let before = wait_for_rounds(&data_dir, Duration::from_secs(30), "2 rounds", &[&active], |r| r.len() >= 2);
    let tls = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let standby_args = root("root-b", http_b, &standby_dir, &tls);
    let standby = Daemon::start("standby", &binary("flotilla-coordinator"), &standby_args, dir.path());
    let mut standing_by = false;
    for _ in 0..100 {
        if standby.log().contains("standing by") {
            standing_by = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(standing_by, "the second coordinator did not stand by:\n{}", standby.log());
    // Probes: both alive, only the lease holder active.
    assert_eq!(http(http_a, "GET", "/activez", "").0, 200);
    assert_eq!(http(http_b, "GET", "/healthz", "").0, 200);
    let (status, body) = http(http_b, "GET", "/activez", "");
    assert_eq!(status, 503, "{body}");

    let last_before =
        wait_for_rounds(&data_dir, Duration::from_secs(30), "a round", &[&active], |r| r.len() > before.len());
    active.kill();
    let killed = std::time::Instant::now();
    let mut took_over = None;
    while killed.elapsed() < Duration::from_secs(15) {
        if standby.log().contains("holding the lease") {
            took_over = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took_over = took_over.unwrap_or_else(|| panic!("the standby never took over:\n{}", standby.log()));
    eprintln!("the standby held the lease {took_over:?} after the kill (lease duration {lease_duration:?})");
    // The lease expires at most its duration after the last renewal (which was before the
    // kill), and the standby looks again just after that; a loaded machine gets half a second.
    assert!(took_over <= lease_duration + Duration::from_millis(500), "{took_over:?}");

    let watched = [&standby, &clients[0], &clients[1]];
    let after = wait_for_rounds(&standby_dir, Duration::from_secs(40), "2 rounds after the take-over", &watched, |r| {
        r.len() >= 2
    });
    assert!(standby.log().contains("resuming from the checkpoint"), "{}", standby.log());
    let versions: Vec<u64> =
        rounds(&data_dir).iter().chain(&after).map(|r| r["model_version"].as_u64().unwrap()).collect();
    assert!(versions.len() > last_before.len());
    // Each version once, in order. One record may be missing: the kill can land between the
    // active one's checkpoint (which the standby resumes from) and its rounds.jsonl line.
    assert!(versions.windows(2).all(|w| w[1] > w[0]), "a model version was committed twice: {versions:?}");
    let gaps = versions.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert!(gaps <= 1 && versions.windows(2).all(|w| w[1] - w[0] <= 2), "model versions were lost: {versions:?}");
    // The standby shares the store's stateless-reset key: the clients' connections to the dead
    // coordinator were reset at their next packet, not left to the idle timeout.
    let reset = clients.iter().any(|client| client.log().contains("reset by peer"));
    assert!(reset, "no client saw its old connection reset:\n{}", clients[0].log());
    assert_eq!(http(http_b, "GET", "/activez", "").0, 200);
    // The store holds the newest versions, one object each (and the shared reset key).
    let mut stored: Vec<String> = std::fs::read_dir(dir.path().join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("checkpoint-"))
        .collect();
    stored.sort();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored.last().unwrap().contains(&format!("{:020}", versions.last().unwrap())), "{stored:?}");
}
