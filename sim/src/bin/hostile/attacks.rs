//! The hostile peers: raw QUIC connections (quinn, trusting the development CA, ALPN
//! `flotilla/1`, like a real client) and raw UDP sockets that misbehave on purpose.
//!
//! An attack is a set of tasks, one per hostile peer, that repeat their misbehaviour until
//! [`Running::stop`]; every network step has its own timeout, so nothing waits unbounded, and
//! what the peers saw (handshakes, refusals, how long the coordinator let them hold a
//! connection, how it closed them) is counted in [`Stats`].

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use flotilla_net::close::error_of_close_code;
use flotilla_net::framed::FrameReader;
use flotilla_net::tls::{ClientTls, quic_client_config};
use flotilla_net::transport::Tuning;
use flotilla_protocol::params::ParameterVector;
use flotilla_protocol::round::ANY_MODEL_VERSION;
use flotilla_protocol::secagg;
use flotilla_protocol::wire::framing::{FrameLimit, HEADER_LEN, decode_message, encode_frame};
use flotilla_protocol::wire::{ClientMessage, CoordinatorMessage, ErrorCode, LocalMetrics, PROTOCOL_VERSION, Update};
use flotilla_protocol::workload::{self, splitmix64};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream};
use serde_json::{Value, json};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// Longest wait for a QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one write (a blocked flow-control window counts as a failed write).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Payload bytes announced by a slow upload: an update of the benchmark's 100,000-parameter
/// model is about this large.
const SLOW_UPLOAD_FRAME: u32 = 400_100;
/// Every coordinate of an inflated update's delta.
const INFLATED_DELTA: f32 = 1_000.0;
/// Receive windows of peers that never read: small, so that their never-read bytes stay few
/// on this side while the coordinator's sends block.
const NEVER_READ_WINDOW: u32 = 64 << 10;
/// Connections each hostile peer holds open to the HTTP API in [`Attack::HttpSlowloris`].
pub const SLOWLORIS_CONNECTIONS: u32 = 20;
/// How often a slowloris connection sends one more byte of its headers.
const SLOWLORIS_BYTE_EVERY: Duration = Duration::from_secs(2);
/// Distinct notes (error texts, close reasons) kept; further ones are counted as `other`.
const MAX_NOTES: usize = 24;

/// What the hostile peers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Join with a valid token, wait for an update request and send a real update (~400 KB)
    /// at 1 byte/s; or, without a token, announce a ~400 KB frame right after the Join and
    /// trickle it the same way. Reconnect when closed.
    SlowUpload {
        /// Join with a valid token (else with none: the Join is refused).
        token: bool,
    },
    /// Join with a valid token and never read the stream (its flow-control window never
    /// reopens); reconnect when closed.
    NeverRead,
    /// [`SLOWLORIS_CONNECTIONS`] TCP connections per peer to the HTTP API, each sending a
    /// request line and then one byte of a header every 2 s, never finishing the headers;
    /// reconnect when closed.
    HttpSlowloris,
    /// Connect and, without joining, send garbage, a header just under the frame limit or a
    /// malformed small frame; close after a second and reconnect at once.
    PrejoinFlood,
    /// Raw UDP garbage (half of it shaped like QUIC Initial packets) to the coordinator's port
    /// at `pps` packets per second, plus QUIC connections trying unreliable datagrams.
    DatagramFlood {
        /// Packets per second, all sockets together.
        pps: u64,
    },
    /// Half the peers join and, once asked for an update, send a `SecAgg { ShareKeys }` of
    /// millions of empty entries filling the frame limit; the other half send a Join with
    /// megabytes-long strings.
    Oversized,
    /// Once per peer: a Join (half with a token) whose client name, then an `Error` and a
    /// `Goodbye` whose texts, hold newlines, carriage returns and ANSI escapes forging log
    /// lines.
    LogInjection,
    /// Join with a valid token and answer every update request at once with a delta of
    /// `1000.0` everywhere claiming 2^62 (or u64::MAX) samples.
    Inflate,
    /// Join with a valid token and answer every update request at once with a plausible
    /// update (the workload's step, 99 samples: one fewer than an honest client, so that
    /// rounds.jsonl tells them apart): floods `--mode async`'s buffer.
    AsyncFlood,
}

/// Where and as whom the hostile peers connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// The coordinator's UDP address.
    pub addr: SocketAddr,
    /// Its HTTP API's address, when it serves one.
    pub http: Option<SocketAddr>,
    /// Its development CA (PEM).
    pub ca: PathBuf,
    /// One valid token per hostile peer (a set of compromised devices).
    pub tokens: Arc<Vec<String>>,
    /// The coordinator's frame limit.
    pub frame_limit: FrameLimit,
    /// Seed of the garbage bytes.
    pub seed: u64,
}

/// What the hostile peers saw.
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    handshake_failures: AtomicU64,
    welcomed: AtomicU64,
    coordinator_errors: AtomicU64,
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    updates_sent: AtomicU64,
    closed_by_coordinator: AtomicU64,
    datagrams_sent: AtomicU64,
    /// Milliseconds each connection stayed open before the coordinator closed it.
    holds_ms: Mutex<Vec<u64>>,
    /// How the coordinator closed connections, and what failed on this side.
    notes: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Peers that received a Welcome.
    pub fn welcomed(&self) -> u64 {
        self.welcomed.load(Ordering::Relaxed)
    }

    /// Counts one occurrence of `note` (at most [`MAX_NOTES`] distinct texts).
    pub fn note(&self, note: impl Into<String>) {
        // Numbers (sizes, ports, ids) would make every note distinct.
        let mut text = String::new();
        for c in note.into().chars() {
            if !c.is_ascii_digit() {
                text.push(c);
            } else if !text.ends_with('#') {
                text.push('#');
            }
        }
        if text.len() > 120 {
            let cut = (0..=120).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.truncate(cut);
        }
        if let Ok(mut notes) = self.notes.lock() {
            let key = if notes.contains_key(&text) || notes.len() < MAX_NOTES { text } else { "other".into() };
            *notes.entry(key).or_default() += 1;
        }
    }

    fn closed(&self, connection: &Connection, opened: Instant) {
        let Some(reason) = connection.close_reason() else { return };
        if matches!(reason, ConnectionError::LocallyClosed) {
            return;
        }
        self.closed_after(opened, &describe_close(&reason));
    }

    /// Counts a connection the coordinator closed `opened.elapsed()` after it opened, and how.
    fn closed_after(&self, opened: Instant, how: &str) {
        Self::add(&self.closed_by_coordinator, 1);
        if let Ok(mut holds) = self.holds_ms.lock() {
            holds.push(u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        self.note(format!("closed: {how}"));
    }

    /// Everything counted, as JSON.
    pub fn snapshot(&self) -> Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut holds = self.holds_ms.lock().map(|h| h.clone()).unwrap_or_default();
        holds.sort_unstable();
        let hold_s = |q: f64| -> Option<f64> {
            let last = holds.len().checked_sub(1)?;
            let index = ((last as f64) * q).round() as usize;
            holds.get(index.min(last)).map(|ms| *ms as f64 / 1000.0)
        };
        json!({
            "connections": load(&self.connections),
            "handshake_failures": load(&self.handshake_failures),
            "welcomed": load(&self.welcomed),
            "coordinator_errors": load(&self.coordinator_errors),
            "frames_sent": load(&self.frames_sent),
            "bytes_sent": load(&self.bytes_sent),
            "updates_sent": load(&self.updates_sent),
            "datagrams_sent": load(&self.datagrams_sent),
            "closed_by_coordinator": load(&self.closed_by_coordinator),
            "hold_s_median": hold_s(0.5),
            "hold_s_max": hold_s(1.0),
            "notes": self.notes.lock().map(|n| n.clone()).unwrap_or_default(),
        })
    }
}

/// A close reason in a few words, naming Flotilla's close codes.
fn describe_close(reason: &ConnectionError) -> String {
    match reason {
        ConnectionError::ApplicationClosed(close) => {
            let code = error_of_close_code(close.error_code).map_or_else(|| "goodbye".to_string(), |c| c.to_string());
            let text = String::from_utf8_lossy(&close.reason);
            let short: String = text.chars().take(60).collect();
            format!("{code} ({short})")
        }
        ConnectionError::TimedOut => "idle timeout".into(),
        ConnectionError::ConnectionClosed(close) => format!("transport close {}", close.error_code),
        other => other.to_string(),
    }
}

/// A running attack.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// What the peers saw so far.
    pub stats: Arc<Stats>,
}

impl Running {
    /// Stops every peer (their connections and sockets are dropped) and returns the counts.
    pub fn stop(mut self) -> Value {
        self.halt();
        self.stats.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.tasks.drain(..).for_each(|task| task.abort());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Shared by the tasks of one attack.
struct Peer {
    target: Arc<Target>,
    stats: Arc<Stats>,
    /// Small receive windows (peers that never read).
    tight: quinn::ClientConfig,
    /// A real client's windows.
    normal: quinn::ClientConfig,
}

/// Starts `peers` hostile peers running `attack` on `runtime`.
pub fn start(attack: Attack, target: Target, peers: u32, runtime: &Handle) -> anyhow::Result<Running> {
    let tls = ClientTls { ca: target.ca.clone(), identity: None };
    let tight =
        Tuning { receive_window: NEVER_READ_WINDOW, stream_receive_window: NEVER_READ_WINDOW, ..Tuning::CLIENT };
    let peer = Arc::new(Peer {
        target: Arc::new(target),
        stats: Arc::new(Stats::default()),
        tight: quic_client_config(&tls, flotilla_protocol::wire::ALPN, &tight).context("client TLS (tight windows)")?,
        normal: quic_client_config(&tls, flotilla_protocol::wire::ALPN, &Tuning::CLIENT).context("client TLS")?,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Running { tasks: Vec::new(), threads: Vec::new(), stop: stop.clone(), stats: peer.stats.clone() };
    let big = match attack {
        Attack::Oversized => Some((
            share_keys_frame(peer.target.frame_limit).context("building the ShareKeys frame")?,
            long_join_frame(peer.target.frame_limit).context("building the long Join frame")?,
        )),
        _ => None,
    };
    if let Attack::DatagramFlood { pps } = attack {
        let sockets = peers.max(1);
        let threads = 2.min(sockets);
        for t in 0..threads {
            let share = sockets / threads + u32::from(t < sockets % threads);
            let (addr, seed, stats, stop) =
                (peer.target.addr, peer.target.seed ^ u64::from(t), peer.stats.clone(), stop.clone());
            let rate = pps / u64::from(threads);
            let thread = std::thread::Builder::new()
                .name(format!("udp-flood-{t}"))
                .spawn(move || udp_flood(addr, share, rate, seed, &stats, &stop))
                .context("starting a flood thread")?;
            running.threads.push(thread);
        }
    }
    // A slowloris peer is many connections: a task each.
    let tasks = if attack == Attack::HttpSlowloris { peers.saturating_mul(SLOWLORIS_CONNECTIONS) } else { peers };
    for index in 0..tasks {
        let peer = peer.clone();
        let big = big.clone();
        let task = runtime.spawn(async move {
            let result = match attack {
                Attack::SlowUpload { token } => repeat(&peer, index, |p, i| slow_upload(p, i, token)).await,
                Attack::NeverRead => repeat(&peer, index, never_read).await,
                Attack::HttpSlowloris => repeat(&peer, index, http_slowloris).await,
                Attack::PrejoinFlood => repeat(&peer, index, prejoin).await,
                Attack::DatagramFlood { .. } if index < 10 => datagram_probe(&peer).await,
                Attack::DatagramFlood { .. } => Ok(()),
                Attack::Oversized => match big {
                    Some((share_keys, join)) => {
                        let frame = if index.is_multiple_of(2) { share_keys } else { join };
                        let join_first = index.is_multiple_of(2);
                        repeat(&peer, index, |p, i| oversized(p, i, frame.clone(), join_first)).await
                    }
                    None => Ok(()),
                },
                Attack::LogInjection => log_injection(&peer, index).await,
                Attack::Inflate | Attack::AsyncFlood => {
                    repeat(&peer, index, |p, i| answer_requests(p, i, attack == Attack::Inflate)).await
                }
            };
            if let Err(error) = result {
                peer.stats.note(format!("{error:#}"));
            }
        });
        running.tasks.push(task);
    }
    Ok(running)
}

/// Runs one session of an attack again and again (a second apart) until aborted, noting
/// each session's error.
async fn repeat<'a, F, Fut>(peer: &'a Arc<Peer>, index: u32, session: F) -> anyhow::Result<()>
where
    F: Fn(&'a Arc<Peer>, u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'a,
{
    loop {
        if let Err(error) = session(peer, index).await {
            peer.stats.note(format!("{error:#}"));
            sleep(Duration::from_millis(500)).await;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// One slowloris connection to the HTTP API: a request line, then a header a byte every 2 s,
/// never finished, until the coordinator closes it (counted with how long it was held).
async fn http_slowloris(peer: &Arc<Peer>, _index: u32) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = peer.target.http.context("the coordinator serves no HTTP API")?;
    let mut stream = match timeout(HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            Stats::add(&peer.stats.handshake_failures, 1);
            return Err(error).context("TCP connect refused");
        }
        Err(_) => {
            Stats::add(&peer.stats.handshake_failures, 1);
            bail!("TCP connect timed out")
        }
    };
    Stats::add(&peer.stats.connections, 1);
    let opened = Instant::now();
    let start = b"GET /v1/model HTTP/1.1\r\nHost: localhost\r\n";
    if stream.write_all(start).await.is_err() {
        peer.stats.closed_after(opened, "HTTP connection reset at once");
        sleep(Duration::from_secs(1)).await;
        return Ok(());
    }
    Stats::add(&peer.stats.bytes_sent, start.len() as u64);
    let mut answer = [0u8; 512];
    for byte in b"X-Slow: 1\r\n".iter().cycle() {
        tokio::select! {
            read = stream.read(&mut answer) => {
                let how = match read {
                    Ok(0) => "HTTP connection closed",
                    Ok(_) => "HTTP answer before the headers ended",
                    Err(_) => "HTTP connection reset",
                };
                peer.stats.closed_after(opened, how);
                // Reconnect a second later: 2,000 tasks reconnecting at once would measure a
                // connection flood from this machine's own cores instead.
                sleep(Duration::from_secs(1)).await;
                return Ok(());
            }
            () = sleep(SLOWLORIS_BYTE_EVERY) => {
                if stream.write_all(&[*byte]).await.is_err() {
                    peer.stats.closed_after(opened, "HTTP connection reset");
                    sleep(Duration::from_secs(1)).await;
                    return Ok(());
                }
                Stats::add(&peer.stats.bytes_sent, 1);
            }
        }
    }
    Ok(())
}

fn endpoint(config: &quinn::ClientConfig) -> anyhow::Result<Endpoint> {
    let mut endpoint =
        Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding a hostile peer's UDP socket")?;
    endpoint.set_default_client_config(config.clone());
    Ok(endpoint)
}

/// A fresh endpoint and a connection to the coordinator.
async fn dial(peer: &Peer, config: &quinn::ClientConfig) -> anyhow::Result<(Endpoint, Connection)> {
    let endpoint = endpoint(config)?;
    let connecting = endpoint.connect(peer.target.addr, "localhost").context("starting a handshake")?;
    match timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => {
            Stats::add(&peer.stats.connections, 1);
            Ok((endpoint, connection))
        }
        Ok(Err(error)) => {
            Stats::add(&peer.stats.handshake_failures, 1);
            Err(error).context("handshake refused")
        }
        Err(_) => {
            Stats::add(&peer.stats.handshake_failures, 1);
            bail!("handshake timed out")
        }
    }
}

fn join_frame(peer: &Peer, index: u32, name: String, token: bool) -> anyhow::Result<Vec<u8>> {
    let auth_token = if token { peer.target.tokens.get(index as usize).cloned() } else { None };
    let join = ClientMessage::Join { protocol_version: PROTOCOL_VERSION, client_name: name, auth_token };
    encode_frame(&join, peer.target.frame_limit).context("encoding a Join")
}

/// Writes `bytes`, bounded by [`WRITE_TIMEOUT`]; counts them.
async fn write(peer: &Peer, send: &mut quinn::SendStream, bytes: &[u8]) -> anyhow::Result<()> {
    timeout(WRITE_TIMEOUT, send.write_all(bytes)).await.context("write blocked")?.context("write failed")?;
    Stats::add(&peer.stats.bytes_sent, bytes.len() as u64);
    Ok(())
}

/// Reads and discards what the coordinator sends, counting Welcomes and Errors.
async fn drain(recv: RecvStream, stats: Arc<Stats>) {
    drain_reader(FrameReader::new(recv, FrameLimit::DEFAULT), stats).await;
}

async fn drain_reader(mut reader: FrameReader, stats: Arc<Stats>) {
    while let Ok(Some(payload)) = reader.next_frame().await {
        note_message(&stats, decode_message::<CoordinatorMessage>(&payload).ok());
    }
}

fn note_message(stats: &Stats, message: Option<CoordinatorMessage>) {
    match message {
        Some(CoordinatorMessage::Welcome { .. }) => Stats::add(&stats.welcomed, 1),
        Some(CoordinatorMessage::Error { code, .. }) => {
            Stats::add(&stats.coordinator_errors, 1);
            stats.note(format!("coordinator error: {code}"));
        }
        _ => {}
    }
}

/// What a joined peer follows of the coordinator's messages.
struct Listener {
    reader: FrameReader,
    layout: Option<flotilla_protocol::params::Layout>,
    /// The latest model version announced (Welcome, then each Model).
    latest: u64,
}

impl Listener {
    fn new(recv: RecvStream) -> Self {
        Self { reader: FrameReader::new(recv, FrameLimit::DEFAULT), layout: None, latest: 0 }
    }

    /// The next update request as (round, version the delta must rest on); `None` when the
    /// stream ends. A standing request (asynchronous mode) rests on the latest model.
    async fn next_request(&mut self, stats: &Stats) -> anyhow::Result<Option<(u64, u64)>> {
        while let Some(payload) = self.reader.next_frame().await.context("reading")? {
            let message = decode_message::<CoordinatorMessage>(&payload).ok();
            match &message {
                Some(CoordinatorMessage::Welcome { spec, model_version, .. }) => {
                    self.layout = Some(spec.layout());
                    self.latest = *model_version;
                }
                Some(CoordinatorMessage::Model { model_version, .. }) => self.latest = *model_version,
                Some(CoordinatorMessage::UpdateRequest { round, model_version, .. }) if self.layout.is_some() => {
                    let base = if *model_version == ANY_MODEL_VERSION { self.latest } else { *model_version };
                    return Ok(Some((*round, base)));
                }
                _ => {}
            }
            note_message(stats, message);
        }
        Ok(None)
    }

    /// An encoded update for the request (round, base) with these values and samples.
    fn update_frame(
        &self,
        round: u64,
        base: u64,
        values: Vec<f32>,
        samples: u64,
        limit: FrameLimit,
    ) -> anyhow::Result<Vec<u8>> {
        let layout = self.layout.as_ref().context("no Welcome yet")?;
        let delta = ParameterVector::new(layout, values).context("building a delta")?;
        let metrics = LocalMetrics { samples, prequential_errors: 0 };
        let update = Update { round, base_version: base, delta, metrics, moments: None };
        encode_frame(&ClientMessage::Update(update), limit).context("encoding an update")
    }

    fn len(&self) -> usize {
        self.layout.as_ref().map_or(0, |layout| layout.len())
    }
}

/// Waits until the coordinator closes `connection` or `limit` passes (then closes it here).
async fn hold(peer: &Peer, connection: &Connection, opened: Instant, limit: Duration) {
    if timeout(limit, connection.closed()).await.is_ok() {
        peer.stats.closed(connection, opened);
    } else {
        connection.close(0u32.into(), b"hostile peer leaving");
    }
}

async fn slow_upload(peer: &Arc<Peer>, index: u32, token: bool) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.normal).await?;
    let opened = Instant::now();
    let (mut send, recv) = connection.open_bi().await.context("opening the stream")?;
    let mut reading = None;
    let result = async {
        write(peer, &mut send, &join_frame(peer, index, format!("slow-{index}"), token)?).await?;
        let frame = if token {
            // A joined peer waits to be asked, then sends a real update of the model's size:
            // only its pace is hostile.
            let mut listener = Listener::new(recv);
            let request = timeout(Duration::from_secs(60), listener.next_request(&peer.stats)).await;
            let Ok(Ok(Some((round, base)))) = request else { bail!("no update request") };
            let values = vec![0.0; listener.len()];
            let frame = listener.update_frame(round, base, values, workload::SAMPLES, peer.target.frame_limit)?;
            reading = Some(tokio::spawn(drain_reader(listener.reader, peer.stats.clone())));
            frame
        } else {
            // Refused at Join: the upload follows at once, before the refusal lands.
            reading = Some(tokio::spawn(drain(recv, peer.stats.clone())));
            let mut frame = SLOW_UPLOAD_FRAME.to_le_bytes().to_vec();
            frame.resize(HEADER_LEN + SLOW_UPLOAD_FRAME as usize, 0);
            frame
        };
        write(peer, &mut send, &frame[..HEADER_LEN]).await?;
        Stats::add(&peer.stats.frames_sent, 1);
        // One byte a second, until the coordinator closes the connection (or the phase ends).
        for byte in &frame[HEADER_LEN..] {
            tokio::select! {
                _ = connection.closed() => return Ok(()),
                () = sleep(Duration::from_secs(1)) => write(peer, &mut send, &[*byte]).await?,
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(task) = reading {
        task.abort();
    }
    peer.stats.closed(&connection, opened);
    result
}

async fn never_read(peer: &Arc<Peer>, index: u32) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.tight).await?;
    let opened = Instant::now();
    let (mut send, _recv) = connection.open_bi().await.context("opening the stream")?;
    write(peer, &mut send, &join_frame(peer, index, format!("never-read-{index}"), true)?).await?;
    Stats::add(&peer.stats.frames_sent, 1);
    // The receive stream is held, never read: its window never reopens.
    connection.closed().await;
    peer.stats.closed(&connection, opened);
    Ok(())
}

async fn prejoin(peer: &Arc<Peer>, index: u32) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.normal).await?;
    let opened = Instant::now();
    let (mut send, _recv) = connection.open_bi().await.context("opening the stream")?;
    let count = peer.stats.connections.load(Ordering::Relaxed);
    let seed = peer.target.seed ^ (u64::from(index) << 32) ^ count;
    let bytes = match count % 3 {
        // Random bytes: a random header, almost always over the limit.
        0 => garbage(seed, 4096),
        // A header just under the limit, then garbage: an "upload" that never completes.
        1 => {
            let mut bytes = (peer.target.frame_limit.bytes() - 1).to_le_bytes().to_vec();
            bytes.extend(garbage(seed, 60 << 10));
            bytes
        }
        // A small frame whose payload is no message.
        _ => {
            let mut bytes = 64u32.to_le_bytes().to_vec();
            bytes.extend(garbage(seed, 64));
            bytes
        }
    };
    let result = write(peer, &mut send, &bytes).await;
    Stats::add(&peer.stats.frames_sent, 1);
    hold(peer, &connection, opened, Duration::from_secs(1)).await;
    result
}

/// Whether the coordinator takes unreliable datagrams (it should not: they are disabled).
async fn datagram_probe(peer: &Arc<Peer>) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.normal).await?;
    peer.stats.note(format!("max_datagram_size: {:?}", connection.max_datagram_size()));
    for _ in 0..10 {
        match connection.send_datagram(Bytes::from_static(b"hostile datagram")) {
            Ok(()) => peer.stats.note("send_datagram: ok (accepted)"),
            Err(error) => peer.stats.note(format!("send_datagram: refused ({error})")),
        }
    }
    connection.close(0u32.into(), b"probe done");
    Ok(())
}

/// Sends `rate` packets per second of garbage from `sockets` sockets until `stop`.
fn udp_flood(addr: SocketAddr, sockets: u32, rate: u64, seed: u64, stats: &Stats, stop: &AtomicBool) {
    let sockets: Vec<UdpSocket> = (0..sockets).filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok()).collect();
    if sockets.is_empty() {
        return stats.note("no UDP socket could be bound");
    }
    let packets: Vec<Vec<u8>> = (0..64u64).map(|i| flood_packet(seed.wrapping_add(i), i % 2 == 0)).collect();
    let tick = Duration::from_millis(10);
    let per_tick = rate.div_ceil(100).max(1);
    let mut next = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..per_tick {
            let socket = &sockets[(sent % sockets.len() as u64) as usize];
            let packet = &packets[(sent % packets.len() as u64) as usize];
            match socket.send_to(packet, addr) {
                Ok(_) => Stats::add(&stats.datagrams_sent, 1),
                Err(error) => stats.note(format!("udp send: {}", error.kind())),
            }
            sent += 1;
        }
        next += tick;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => next = Instant::now(), // Behind: no catching up in bursts.
        }
    }
}

/// 1,200 bytes of garbage; `initial` shapes it as a QUIC v1 Initial packet (long header,
/// version 1, 8-byte connection ids) so that the coordinator tries to process it.
fn flood_packet(seed: u64, initial: bool) -> Vec<u8> {
    let mut packet = garbage(seed, 1200);
    if initial {
        packet[0] = 0xC3;
        packet[1..5].copy_from_slice(&1u32.to_be_bytes());
        packet[5] = 8;
        packet[14] = 8;
        packet[23] = 0; // No token.
    } else {
        packet[0] = 0x40 | (packet[0] & 0x3F);
    }
    packet
}

async fn oversized(peer: &Arc<Peer>, index: u32, frame: Bytes, join_first: bool) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.normal).await?;
    let opened = Instant::now();
    let (mut send, recv) = connection.open_bi().await.context("opening the stream")?;
    let mut reading = None;
    let result = async {
        if join_first {
            // Joined, and asked for an upload: the nested lengths come as the answer.
            write(peer, &mut send, &join_frame(peer, index, format!("nested-{index}"), true)?).await?;
            Stats::add(&peer.stats.frames_sent, 1);
            let mut listener = Listener::new(recv);
            let request = timeout(Duration::from_secs(60), listener.next_request(&peer.stats)).await;
            if !matches!(request, Ok(Ok(Some(_)))) {
                bail!("no update request");
            }
            reading = Some(tokio::spawn(drain_reader(listener.reader, peer.stats.clone())));
        } else {
            reading = Some(tokio::spawn(drain(recv, peer.stats.clone())));
        }
        let len = frame.len() as u64;
        tokio::select! {
            result = timeout(WRITE_TIMEOUT, send.write_chunk(frame)) => {
                result.context("write blocked")?.context("write failed")?;
                Stats::add(&peer.stats.bytes_sent, len);
                Stats::add(&peer.stats.frames_sent, 1);
            }
            _ = connection.closed() => {}
        }
        anyhow::Ok(())
    }
    .await;
    hold(peer, &connection, opened, Duration::from_secs(30)).await;
    if let Some(task) = reading {
        task.abort();
    }
    result
}

/// The log-forging text of peer `index`: newlines, a carriage return, ANSI escapes and
/// Unicode line separators, each followed by a fake log line dated 2099.
pub fn injection(index: u32) -> String {
    format!(
        "inj-{index}\n2099-01-01T00:00:00.000000Z  INFO flotilla_coordinator::server: round recorded round=999999 \
         FORGED-{index}\r\n2099-01-01T00:00:00.000000Z  WARN forged: \u{1b}[2K\u{1b}[1;31mFORGED-ANSI-{index}\u{1b}[0m\
         \u{85}2099-NEL-{index}\u{2028}2099-LS-{index}"
    )
}

async fn log_injection(peer: &Arc<Peer>, index: u32) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.normal).await?;
    let opened = Instant::now();
    let (mut send, recv) = connection.open_bi().await.context("opening the stream")?;
    let drain = tokio::spawn(drain(recv, peer.stats.clone()));
    let result = async {
        write(peer, &mut send, &join_frame(peer, index, injection(index), index.is_multiple_of(2))?).await?;
        sleep(Duration::from_millis(300)).await;
        let limit = peer.target.frame_limit;
        let error = ClientMessage::Error { code: ErrorCode::Malformed, message: injection(index) };
        let goodbye = ClientMessage::Goodbye { reason: injection(index) };
        for message in [error, goodbye] {
            write(peer, &mut send, &encode_frame(&message, limit).context("encoding")?).await?;
        }
        Stats::add(&peer.stats.frames_sent, 3);
        anyhow::Ok(())
    }
    .await;
    hold(peer, &connection, opened, Duration::from_secs(5)).await;
    drain.abort();
    result
}

/// Joins and answers every update request at once: `inflate` with a huge delta claiming
/// 2^62 (even peers) or u64::MAX (odd peers) samples, else with a plausible update.
async fn answer_requests(peer: &Arc<Peer>, index: u32, inflate: bool) -> anyhow::Result<()> {
    let (_endpoint, connection) = dial(peer, &peer.normal).await?;
    let opened = Instant::now();
    let (mut send, recv) = connection.open_bi().await.context("opening the stream")?;
    let result = async {
        let name = format!("{}-{index}", if inflate { "inflate" } else { "async-flood" });
        write(peer, &mut send, &join_frame(peer, index, name, true)?).await?;
        let mut listener = Listener::new(recv);
        while let Some((round, base)) = listener.next_request(&peer.stats).await? {
            let len = listener.len();
            let (values, samples) = if inflate {
                (vec![INFLATED_DELTA; len], if index.is_multiple_of(2) { 1u64 << 62 } else { u64::MAX })
            } else {
                // One sample fewer than an honest client: tells their updates apart in
                // rounds.jsonl.
                (workload::client_delta(round, 1_000_000 + u64::from(index), len), workload::SAMPLES - 1)
            };
            let frame = listener.update_frame(round, base, values, samples, peer.target.frame_limit)?;
            write(peer, &mut send, &frame).await?;
            Stats::add(&peer.stats.updates_sent, 1);
        }
        anyhow::Ok(())
    }
    .await;
    peer.stats.closed(&connection, opened);
    result
}

/// `len` bytes of splitmix64 output.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = splitmix64(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// bincode's (standard configuration) variable-length integer.
fn push_varint(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=250 => out.push(value as u8),
        251..=0xFFFF => {
            out.push(251);
            out.extend_from_slice(&(value as u16).to_le_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(252);
            out.extend_from_slice(&(value as u32).to_le_bytes());
        }
        _ => {
            out.push(253);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// `ClientMessage::SecAgg { round: 1, ShareKeys }` with these sealed shares.
fn share_keys(sealed: Vec<secagg::Sealed>) -> ClientMessage {
    ClientMessage::SecAgg {
        round: 1,
        message: secagg::ClientMessage::ShareKeys(secagg::ShareKeys { sealed, commitment: [0; 32] }),
    }
}

/// One frame (header included) holding a `ShareKeys` with `entries` empty sealed shares (peer
/// 0, no ciphertext: two bytes each on the wire, 32 in memory once decoded), written directly
/// instead of encoding a vector that large: the bytes around the vector are taken from real
/// encodings with none and with one entry, so the message's other fields may change.
pub fn share_keys_frame_of(entries: u64) -> anyhow::Result<Vec<u8>> {
    let empty = encode_frame(&share_keys(Vec::new()), FrameLimit::DEFAULT).context("encoding a ShareKeys")?;
    let one = encode_frame(&share_keys(vec![secagg::Sealed { peer: 0, ciphertext: Vec::new() }]), FrameLimit::DEFAULT)
        .context("encoding a ShareKeys")?;
    let (empty, one) = (&empty[HEADER_LEN..], &one[HEADER_LEN..]);
    // Where the vector's length is: the first byte the two encodings differ at (0 then 1).
    let at = empty.iter().zip(one).position(|(a, b)| a != b).context("ShareKeys encodings do not differ")?;
    if one.get(at..at + 3) != Some(&[1, 0, 0][..]) || one.get(at + 3..) != empty.get(at + 1..) {
        bail!("unexpected ShareKeys encoding");
    }
    let mut payload = empty[..at].to_vec();
    push_varint(&mut payload, entries);
    let total = usize::try_from(entries).context("too many entries")?.checked_mul(2).context("too many entries")?;
    payload.resize(payload.len() + total, 0);
    payload.extend_from_slice(&empty[at + 1..]);
    let len = u32::try_from(payload.len()).context("ShareKeys frame over 4 GiB")?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend(payload);
    Ok(out)
}

/// The largest such ShareKeys frame within `limit` (less a KiB of headroom).
fn share_keys_frame(limit: FrameLimit) -> anyhow::Result<Bytes> {
    let entries = u64::from(limit.bytes().saturating_sub(1024 + 64)) / 2;
    share_keys_frame_of(entries).map(Bytes::from)
}

/// A Join whose client name and token are each a quarter of the frame limit (at most 8 MiB).
fn long_join_frame(limit: FrameLimit) -> anyhow::Result<Bytes> {
    let long = (limit.bytes() as usize / 4).min(8 << 20);
    let join = ClientMessage::Join {
        protocol_version: PROTOCOL_VERSION,
        client_name: "N".repeat(long),
        auth_token: Some("T".repeat(long)),
    };
    encode_frame(&join, limit).map(Bytes::from).context("encoding the long Join")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_share_keys_matches_bincode() {
        for entries in [0u64, 3, 250, 251, 300, 70_000] {
            let sealed = vec![secagg::Sealed { peer: 0, ciphertext: Vec::new() }; entries as usize];
            let real = share_keys(sealed);
            let expected = encode_frame(&real, FrameLimit::DEFAULT).map_err(|e| e.to_string());
            assert_eq!(share_keys_frame_of(entries).map_err(|e| e.to_string()), expected, "{entries} entries");
        }
    }

    #[test]
    fn share_keys_frame_fills_the_limit() {
        let limit = FrameLimit::new(1 << 20);
        let frame = share_keys_frame(limit).map_err(|e| e.to_string());
        let len = frame.as_ref().map(|f| f.len()).unwrap_or(0);
        assert!(len <= HEADER_LEN + (1 << 20) && len > (1 << 20) - 2048, "{len}");
    }

    #[test]
    fn injection_holds_line_breaks_and_escapes() {
        let text = injection(7);
        assert!(text.contains('\n') && text.contains('\r') && text.contains('\u{1b}'));
        assert!(text.lines().any(|line| line.starts_with("2099-")));
    }

    #[test]
    fn flood_packets_are_full_size_and_shaped() {
        let initial = flood_packet(1, true);
        assert_eq!(initial.len(), 1200);
        assert_eq!(&initial[..6], &[0xC3, 0, 0, 0, 1, 8]);
        assert_eq!(flood_packet(2, false)[0] & 0xC0, 0x40);
    }
}
