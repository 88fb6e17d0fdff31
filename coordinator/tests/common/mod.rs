//! Shared helpers of the loopback tests: an in-process coordinator on 127.0.0.1:0, fake
//! learners behind real client sessions, and raw QUIC peers that misbehave on purpose.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_coordinator::{Options, RunSummary};
use flotilla_net::framed::{FrameReader, send_message};
use flotilla_net::session::{ClientSessionConfig, LearnerRequest};
use flotilla_net::tls::{ClientTls, quic_client_config};
use flotilla_protocol::model::FeatureMoments;
use flotilla_protocol::model::hbp::{HbpConfig, layout};
use flotilla_protocol::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};
use flotilla_protocol::wire::Contribution;
use flotilla_protocol::wire::framing::FrameLimit;
use flotilla_protocol::wire::{ALPN, ClientMessage, CoordinatorMessage, LocalMetrics, PROTOCOL_VERSION, Update};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info,flotilla=debug,flotilla_net=debug,flotilla_coordinator=debug")
        .try_init();
}

/// Writes `lines` as `dir/tokens`; the path as a `--tokens-file` argument.
pub fn tokens_file(dir: &Path, lines: &str) -> String {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, lines).unwrap();
    tokens.to_string_lossy().into_owned()
}

/// Options of a tiny model (3 inputs, 2 classes, 2 hidden layers of 8) on 127.0.0.1:0.
pub fn options(data_dir: &Path, extra: &[&str]) -> Options {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }
    let mut args = vec!["coordinator", "--listen", "127.0.0.1:0", "--inputs", "3", "--classes", "2"];
    args.extend(["--hidden-layers", "2", "--width", "8", "--round-deadline", "5s", "--data-dir"]);
    let data_dir = data_dir.to_string_lossy().into_owned();
    args.push(&data_dir);
    args.extend(extra);
    Cli::try_parse_from(args).unwrap().options
}

pub fn spec() -> HbpConfig {
    HbpConfig { hidden_layers: 2, width: 8, ..HbpConfig::new(3, 2) }
}

/// A coordinator running in-process.
pub struct Running {
    pub addr: SocketAddr,
    /// The HTTP API's address, with `--http`.
    pub http: Option<SocketAddr>,
    pub ca: PathBuf,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<RunSummary>>,
}

pub async fn start(options: Options) -> Running {
    // A port just released by an in-process endpoint can stay busy until its driver task
    // ends: retry the bind briefly (a restarted process does not have this race).
    let config = options.into_config().unwrap();
    let mut attempts = 0;
    let server = loop {
        match flotilla_coordinator::bind(config.clone()).await {
            Ok(server) => break server,
            Err(error) if attempts < 30 && format!("{error:#}").contains("binding UDP") => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => panic!("coordinator failed to start: {error:#}"),
        }
    };
    let addr = server.local_addr().unwrap();
    let http = server.http_addr();
    let ca = server.dev_pki().unwrap().ca_cert.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Running { addr, http, ca, shutdown, task }
}

impl Running {
    /// Waits for the run to end by itself (round limit), at most `secs` seconds.
    pub async fn finished(self, secs: u64) -> RunSummary {
        tokio::time::timeout(Duration::from_secs(secs), self.task)
            .await
            .expect("coordinator did not stop")
            .unwrap()
            .unwrap()
    }

    /// Stops the run and returns its summary.
    pub async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        self.finished(10).await
    }
}

/// A learner that answers every update request with `step` on every parameter but α.
pub fn fake_learner(step: f32, samples: u64) -> (mpsc::Sender<LearnerRequest>, Arc<AtomicU64>) {
    fake_learner_after(step, samples, Duration::ZERO)
}

/// Like [`fake_learner`], but each answer takes `delay` ("training"); models are adopted at once.
pub fn fake_learner_after(step: f32, samples: u64, delay: Duration) -> (mpsc::Sender<LearnerRequest>, Arc<AtomicU64>) {
    let (tx, mut rx) = mpsc::channel(16);
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        let mut shape: Option<(HbpConfig, Fingerprint)> = None;
        while let Some(request) = rx.recv().await {
            match request {
                LearnerRequest::Welcome { spec, fingerprint } => {
                    shape = spec.hbp().cloned().map(|spec| (spec, fingerprint))
                }
                LearnerRequest::Adopt { .. } => {}
                LearnerRequest::Update { reply, .. } => {
                    let (spec, _) = shape.as_ref().unwrap();
                    let heads = spec.heads();
                    let len = layout(spec).len();
                    let values = (0..len).map(|i| if i < len - heads { step } else { 0.0 }).collect();
                    let delta = ParameterVector::new(&layout(spec), values).unwrap();
                    let metrics = LocalMetrics { samples, prequential_errors: samples / 2 };
                    // Rows of mean 1 and variance 1 in every feature (the session drops them
                    // where the rules take none).
                    let n = samples as f64;
                    let moments = FeatureMoments {
                        count: samples,
                        sum: vec![n; spec.inputs],
                        sum_squares: vec![2.0 * n; spec.inputs],
                    };
                    let counter = counter.clone();
                    let answer = async move {
                        tokio::time::sleep(delay).await;
                        if reply.send(Contribution { delta, metrics, moments: Some(moments), cohort: None }).is_ok() {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                    };
                    if delay.is_zero() {
                        answer.await;
                    } else {
                        tokio::spawn(answer);
                    }
                }
            }
        }
    });
    (tx, answered)
}

/// A real client session with a fake learner.
pub struct FakeClient {
    pub answered: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub fn session_config(running: &Running, name: &str) -> ClientSessionConfig {
    let mut config = ClientSessionConfig::new(running.addr, "localhost", running.ca.clone(), name);
    config.connect_timeout = Duration::from_secs(1);
    config
}

pub fn fake_client(config: ClientSessionConfig, step: f32, samples: u64) -> FakeClient {
    fake_client_after(config, step, samples, Duration::ZERO)
}

/// A real client session whose fake learner takes `delay` per answer.
pub fn fake_client_after(config: ClientSessionConfig, step: f32, samples: u64, delay: Duration) -> FakeClient {
    let (learner, answered) = fake_learner_after(step, samples, delay);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(flotilla_net::run_client_session(config, learner, shutdown.clone()));
    FakeClient { answered, shutdown, task }
}

impl FakeClient {
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("client did not stop").unwrap()
    }

    /// Waits until the learner has answered `count` requests in all.
    pub async fn answered_at_least(&self, count: u64, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while self.answered.load(Ordering::SeqCst) < count {
            assert!(tokio::time::Instant::now() < deadline, "only {} answers", self.answered.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A minimal HTTP/1.1 client for the API tests: one request per connection; returns the
/// status and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // A server refusing an oversized body may answer and close before reading it all.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let start = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = text[..start].to_ascii_lowercase();
    let mut content = response[start..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        content = dechunk(&content);
    }
    (status, content)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// An update of `values` for `round` on `base_version` (one sample, no feature statistics).
pub fn update(round: u64, base_version: u64, fingerprint: Fingerprint, values: Vec<f32>) -> ClientMessage {
    let delta = ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint, values };
    let metrics = LocalMetrics { samples: 1, prequential_errors: 0 };
    ClientMessage::Update(Update { round, base_version, delta, metrics, moments: None })
}

/// A hand-driven QUIC peer speaking (or not) the protocol.
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub reader: FrameReader,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr, tls: &ClientTls) -> anyhow::Result<Self> {
        Self::connect_with(addr, tls, &flotilla_net::transport::Tuning::CLIENT).await
    }

    /// Connects with the given windows (e.g. tiny ones for a peer that never reads).
    pub async fn connect_with(
        addr: SocketAddr,
        tls: &ClientTls,
        tuning: &flotilla_net::transport::Tuning,
    ) -> anyhow::Result<Self> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quic_client_config(tls, ALPN, tuning)?);
        let connection = endpoint.connect(addr, "localhost")?.await?;
        let (send, recv) = connection.open_bi().await?;
        Ok(Self { endpoint, connection, send, reader: FrameReader::new(recv, FrameLimit::DEFAULT) })
    }

    pub async fn send(&mut self, message: &ClientMessage) {
        send_message(&mut self.send, message, FrameLimit::DEFAULT).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    pub async fn join(&mut self, version: u16, token: Option<&str>) {
        let join = ClientMessage::Join {
            protocol_version: version,
            client_name: "raw".into(),
            auth_token: token.map(String::from),
        };
        self.send(&join).await;
    }

    /// The next message, failing the test after 10 s.
    pub async fn next(&mut self) -> anyhow::Result<Option<CoordinatorMessage>> {
        let next = tokio::time::timeout(Duration::from_secs(10), self.reader.next_message());
        Ok(next.await??)
    }

    /// Joins, then reads until an update request; returns (round, model_version, fingerprint, len).
    pub async fn join_and_wait_for_request(&mut self) -> (u64, u64, Fingerprint, usize) {
        self.join(PROTOCOL_VERSION, None).await;
        let mut shape = None;
        loop {
            match self.next().await.unwrap().unwrap() {
                CoordinatorMessage::Model { params, .. } => shape = Some((params.fingerprint, params.values.len())),
                CoordinatorMessage::UpdateRequest { round, model_version, .. } => {
                    let (fingerprint, len) = shape.unwrap();
                    return (round, model_version, fingerprint, len);
                }
                _ => {}
            }
        }
    }

    /// How the coordinator closed the connection, within 10 s.
    pub async fn closed(&self) -> quinn::ConnectionError {
        tokio::time::timeout(Duration::from_secs(10), self.connection.closed()).await.expect("connection stayed open")
    }
}
