//! The coordinator's options (command line and TOML file) and their resolved [`Config`].
//!
//! Every flag has a TOML key of the same name without the dashes' prefix (`--min-clients 3`
//! is `min-clients = 3`, durations as strings: `round-deadline = "30s"`); flags override the
//! file, and defaults fill the rest.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
pub use flotilla_net::endpoint::Limits;

use crate::http::HttpConfig;
use flotilla_net::transport::{ETHERNET_UDP_PAYLOAD, MAX_UDP_PAYLOAD, Tuning};
use flotilla_protocol::aggregate::{StrategyConfig, StrategyKind};
use flotilla_protocol::compress::Compression;
use flotilla_protocol::model::HbpConfig;
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::round::config::{AdaptiveClipping, NoisePlacement, PrivacyConfig, SecureConfig};
use flotilla_protocol::round::{CoordinatorConfig, Hierarchy, Mode};
use flotilla_protocol::wire::framing::FrameLimit;
use flotilla_serve::ConnectionLimits;

/// A duration written as `30s`, `500ms`, `2m`, `1h` or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
        if unit.trim() == "ns" && value.fract() == 0.0 && value < u64::MAX as f64 {
            return Ok(Self(Duration::from_nanos(value as u64)));
        }
        let seconds = match unit.trim() {
            "" | "s" => value,
            "ms" => value / 1000.0,
            "m" | "min" => value * 60.0,
            "h" => value * 3600.0,
            other => return Err(format!("unknown duration unit {other:?} in {text:?} (use ms, s, m, h or ns)")),
        };
        Duration::try_from_secs_f64(seconds).map(Self).map_err(|e| format!("{text:?}: {e}"))
    }
}

/// Written back exactly, in nanoseconds (how flags are layered over a config file).
impl From<HumanDuration> for String {
    fn from(duration: HumanDuration) -> String {
        format!("{}ns", duration.0.as_nanos())
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// How updates become models: `sync` (rounds) or `async` (FedBuff's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModeName {
    /// `sync`: rounds with a quorum and a deadline.
    #[default]
    Sync,
    /// `async`: buffered asynchronous aggregation.
    Async,
}

impl FromStr for ModeName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sync" => Ok(Self::Sync),
            "async" => Ok(Self::Async),
            other => Err(format!("unknown mode {other:?} (sync or async)")),
        }
    }
}

impl From<ModeName> for String {
    fn from(mode: ModeName) -> String {
        match mode {
            ModeName::Sync => "sync".into(),
            ModeName::Async => "async".into(),
        }
    }
}

impl TryFrom<String> for ModeName {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// Command-line options; all optional so that a TOML file can supply them.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Options {
    /// TOML file whose keys mirror these flags (e.g. `min-clients = 3`); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// UDP address to listen on [default: 0.0.0.0:4433].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory for the checkpoint, the development PKI and rounds.jsonl [default: flotilla-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the checkpoints in an object store instead of DATA_DIR/checkpoint.bin:
    /// `file:///abs/dir`, `s3://bucket/prefix`, `gs://…`, `az://…` (the cloud stores need the
    /// `cloud` build feature; credentials from the environment). Each model version is
    /// created once (a conditional put): two coordinators can never both commit a round.
    #[arg(long, value_name = "URL")]
    pub checkpoint_url: Option<String>,
    /// Be one of several coordinators sharing a leader lease (a Kubernetes Lease
    /// `k8s://NAMESPACE/NAME`, `file:///abs/lease.json`, or an object such as
    /// `s3://bucket/lease.json`): only the holder binds and serves; the others stand by and
    /// take over, resuming from --checkpoint-url, when its lease expires.
    #[arg(long, value_name = "URL")]
    pub lease_url: Option<String>,
    /// How long the lease lasts without renewal (renewed every quarter of it) [default: 15s].
    #[arg(long, value_name = "DURATION")]
    pub lease_duration: Option<HumanDuration>,
    /// This coordinator's name in the lease, unique among those sharing it (e.g. the pod's
    /// name) [default: HOSTNAME-PID].
    #[arg(long, value_name = "NAME")]
    pub lease_holder: Option<String>,
    /// Be an edge aggregator: a coordinator to its own clients and a client of the parent
    /// coordinator at HOST:PORT. For each of the parent's rounds it runs a round over its
    /// clients and forwards their aggregate (Σ nᵢΔᵢ / Σ nᵢ with Σ nᵢ, the counters and
    /// FedExP's norms), so FedAvg over the tree equals FedAvg over the flat fleet. The parent
    /// holds the model, the checkpoints and the server optimiser.
    #[arg(long, value_name = "HOST:PORT")]
    pub parent: Option<String>,
    /// CA certificate (PEM) the parent's certificate chains to (with --parent).
    #[arg(long, value_name = "FILE")]
    pub parent_ca: Option<PathBuf>,
    /// Name the parent's certificate must carry [default: the host of --parent].
    #[arg(long, value_name = "NAME")]
    pub parent_server_name: Option<String>,
    /// File holding this aggregator's token, one of the parent's --aggregator-tokens-file
    /// (with --parent).
    #[arg(long, value_name = "FILE")]
    pub parent_token_file: Option<PathBuf>,
    /// Be the root of a tree of coordinators: peers presenting one of these tokens (one per
    /// line) are edge aggregators, whose cohort updates are folded as the updates of every
    /// client behind them. Refused with robust strategies, secure aggregation or DP at the
    /// root (each says why); run robust strategies and secure aggregation on the aggregators.
    #[arg(long, value_name = "FILE")]
    pub aggregator_tokens_file: Option<PathBuf>,
    /// At a root: answer each client's join with a redirect to the edge aggregator serving the
    /// fewest redirected clients (among those that gave --advertise); clients join the root
    /// itself while none has. Clients must trust the aggregators' certificates (one CA).
    #[arg(long)]
    #[serde(default)]
    pub redirect_clients: bool,
    /// At an edge aggregator: the HOST:PORT its clients reach it at, announced to the root for
    /// its redirects (with --parent).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// The name of this aggregator's certificate that redirected clients check [default: the
    /// host of --advertise].
    #[arg(long, value_name = "NAME")]
    pub advertise_name: Option<String>,
    /// Server certificate chain (PEM) for production; without it a development CA and
    /// certificate are created in DATA_DIR/pki on first start and reused after.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Extra DNS name or IP for the development certificate (repeatable; localhost,
    /// 127.0.0.1 and ::1 are always in it). Only used when the PKI is first created.
    #[arg(long = "dev-cert-name", value_name = "NAME")]
    #[serde(default)]
    pub dev_cert_names: Vec<String>,
    /// Mutual TLS: refuse clients without a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// File of pre-shared tokens, one per line (blank lines and lines starting with # are
    /// skipped); clients must present one of them. Each token is an identity with at most
    /// --sessions-per-identity live sessions.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Let any client join on a non-loopback address, without --tokens-file or --client-ca
    /// (refused otherwise: anyone who can reach the port could join and send updates).
    #[arg(long)]
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Serve the HTTP API on this TCP address: predictions from the global model, the model
    /// file, /healthz, /readyz and Prometheus /metrics [default: off]. With --tokens-file, a
    /// token is required as `Authorization: Bearer TOKEN` (not by /healthz and /readyz).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Most rows in one POST /v1/predict/batch request [default: 100000].
    #[arg(long, value_name = "N")]
    pub http_max_rows: Option<usize>,
    /// Most HTTP connections open at once; more are closed when accepted, and each must send
    /// a request's headers within 15 s [default: 512].
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Most HTTP connections open at once from one IP address (a proxy in front of the API
    /// counts as one) [default: 64].
    #[arg(long, value_name = "N")]
    pub http_max_connections_per_address: Option<usize>,
    /// Serve the HTTP API over TLS (HTTPS, TLS 1.3) with the QUIC certificate and key (--cert
    /// and --key, or the development PKI); with --client-ca, HTTP clients must present a
    /// certificate too.
    #[arg(long)]
    #[serde(default)]
    pub http_tls: bool,
    /// Number of input features D of the model (with --classes, unless resuming or
    /// loading a checkpoint with --initial-params).
    #[arg(long, value_name = "D")]
    pub inputs: Option<usize>,
    /// Number of classes C of the model.
    #[arg(long, value_name = "C")]
    pub classes: Option<usize>,
    /// Hidden ReLU layers L [default: 19].
    #[arg(long)]
    pub hidden_layers: Option<usize>,
    /// Units per hidden layer [default: 100].
    #[arg(long)]
    pub width: Option<usize>,
    /// Clients' SGD learning rate η [default: 0.01].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Hedge discount β in (0, 1) [default: 0.99].
    #[arg(long)]
    pub beta: Option<f32>,
    /// Smoothing s: each head's weight α is floored at s/L [default: 0.2].
    #[arg(long)]
    pub smoothing: Option<f32>,
    /// Drop the classifier head on the raw input.
    #[arg(long)]
    #[serde(default)]
    pub no_input_head: bool,
    /// Seed of the initial weights (NumPy RandomState compatible) and of client sampling [default: 0].
    #[arg(long)]
    pub seed: Option<u32>,
    /// Initial global model instead of a fresh one: either a Flotilla checkpoint file (its
    /// spec, round and model version are taken too) or a bincode-encoded (standard config)
    /// ParameterVector matching --inputs/--classes and the shape flags (or --vector-len). Ignored, with a
    /// warning, when DATA_DIR already holds a checkpoint.
    #[arg(long, value_name = "FILE")]
    pub initial_params: Option<PathBuf>,
    /// Train a bare vector of P f32 parameters instead of an HBP network (no learner: for
    /// benchmarks and external trainers); starts from --initial-params, else from zeros.
    #[arg(long, value_name = "P", conflicts_with_all = ["inputs", "classes"])]
    pub vector_len: Option<u64>,
    /// Joined clients needed to start a round, and updates needed to commit it [default: 2].
    #[arg(long)]
    pub min_clients: Option<usize>,
    /// Fraction of joined clients asked for an update each round, in (0, 1] [default: 1.0].
    #[arg(long)]
    pub sample_fraction: Option<f64>,
    /// Time a round waits for updates before committing with what it has [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub round_deadline: Option<HumanDuration>,
    /// Pause before each round once a quorum is joined [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub round_interval: Option<HumanDuration>,
    /// Time a new connection has to send Join [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub join_timeout: Option<HumanDuration>,
    /// Stop after this many rounds committed by this run [default: unlimited].
    #[arg(long, value_name = "N")]
    pub rounds: Option<u64>,
    /// Largest frame accepted from or sent to a client, in MiB [default: 64].
    #[arg(long, value_name = "MIB")]
    pub max_frame_mib: Option<u32>,
    /// Held-out labelled CSV owned by the coordinator: after each committed round the global
    /// model is evaluated on it on the CPU and global_error_pct is logged and recorded. Its
    /// features are standardised with the file's own mean and variance (not the clients').
    #[arg(long, value_name = "FILE.csv")]
    pub eval_data: Option<PathBuf>,
    /// Aggregation strategy: fedavg, fedavgm, fedadam, fedyogi, fedadagrad (server optimisers
    /// over the sample-weighted mean of the deltas), median, trimmed-mean, krum, multi-krum
    /// (robust; they hold every update of a round and ignore sample counts) [default: fedavgm].
    #[arg(long, value_name = "NAME")]
    pub strategy: Option<StrategyKind>,
    /// Server learning rate η_s: the model moves by η_s · g times the round's step, g set by
    /// --server-step [default: 1].
    #[arg(long, value_name = "ETA")]
    pub server_lr: Option<f64>,
    /// Server step scaling g: `participants` (g = updates in the step: the fleet moves as far
    /// as all its clients' local steps together, as one learner on all their samples would),
    /// `fedexp` (FedExP's adaptive extrapolation, 1 ≤ g ≤ n/2), or `fixed` (g = 1, textbook
    /// FedAvg) [default: participants; fixed with --dp-noise-multiplier].
    #[arg(long, value_name = "KIND")]
    pub server_step: Option<flotilla_protocol::aggregate::StepSize>,
    /// Most samples one update may claim; a larger claim weighs (and counts) as this many, so
    /// that one client cannot take the model over with a huge count [default: 100 samples/s ×
    /// (round interval + round deadline), at least 1,000].
    #[arg(long, value_name = "N")]
    pub max_samples_per_update: Option<u64>,
    /// Fine-tune a pruned model (from `flotilla-coordinator export --prune … --checkpoint-out`,
    /// started with --initial-params): every weight that is zero in the global model stays
    /// zero; clients zero those coordinates of their updates and every commit zeroes them again.
    #[arg(long)]
    #[serde(default)]
    pub keep_pruned: bool,
    /// Iterate averaging ρ in [0, 1): the served model (evaluated, checkpointed) is
    /// ρ·served + (1 − ρ)·latest after each commit; clients train on the latest; 0 serves
    /// the latest [default: 0.85].
    #[arg(long, value_name = "RHO")]
    pub serve_average: Option<f64>,
    /// Momentum decay β1 of fedavgm (default 0.5), fedadam, fedyogi (default 0.9).
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Second-moment decay β2 of fedadam, fedyogi [default: 0.99].
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Adaptivity τ of fedadagrad, fedadam, fedyogi [default: 0.001].
    #[arg(long)]
    pub tau: Option<f64>,
    /// Fraction β of trimmed-mean: drops the ⌊β·n⌋ smallest and largest values of each
    /// parameter, in [0, 0.5) [default: 0.1].
    #[arg(long, value_name = "BETA")]
    pub trim_fraction: Option<f64>,
    /// Byzantine clients f assumed by krum and multi-krum; a round needs more than 2f + 2
    /// updates [default: 0].
    #[arg(long, value_name = "F")]
    pub byzantine: Option<usize>,
    /// Updates averaged by multi-krum [default: n − f].
    #[arg(long, value_name = "M")]
    pub multi_krum_m: Option<usize>,
    /// Scale every update down to this L2 norm when it is larger.
    #[arg(long, value_name = "NORM")]
    pub clip_norm: Option<f64>,
    /// Log updates whose L2 norm (before clipping) exceeds this as outliers (they are kept).
    #[arg(long, value_name = "NORM")]
    pub outlier_norm: Option<f64>,
    /// Most updates a robust strategy holds per round (memory: this × model parameters ×
    /// 4 bytes); further updates of the round are refused [default: 256].
    #[arg(long, value_name = "N")]
    pub max_held_updates: Option<usize>,
    /// `sync`: rounds (quorum, deadline); `async`: FedBuff, no round barrier — every client is
    /// asked again as soon as its update is folded (or its request lapses after
    /// --round-deadline), updates are weighted by 1/√(1 + staleness) and a new model version
    /// is made after --buffer-size updates; a "round" then counts buffer applications
    /// [default: sync].
    #[arg(long, value_name = "MODE")]
    pub mode: Option<ModeName>,
    /// Updates per new model version in --mode async (K) [default: 10].
    #[arg(long, value_name = "K")]
    pub buffer_size: Option<usize>,
    /// Most versions an update may lag the model in --mode async; staler ones are refused
    /// and the client asked again [default: 20].
    #[arg(long, value_name = "S")]
    pub max_staleness: Option<u64>,
    /// Updates received at the same time; the others wait in their clients (each connection's
    /// flow-control window stays at --idle-window-kib until its upload is admitted), so
    /// memory stays O(model) whatever the number of clients [default: as many as
    /// --upload-memory-mib holds at the largest update's size, at least 4].
    #[arg(long, value_name = "N")]
    pub concurrent_uploads: Option<usize>,
    /// Memory for updates being received, MiB: sets --concurrent-uploads from the size of the
    /// largest update (e.g. 140 uploads of a 100,000-parameter model, 15 of a million), so
    /// that a few slow or hostile uploaders cannot hold every slot [default: 64].
    #[arg(long, value_name = "MIB", conflicts_with = "concurrent_uploads")]
    pub upload_memory_mib: Option<u32>,
    /// Receive window of a connection outside an admitted upload, KiB: what each client may
    /// have in flight towards the coordinator before it is admitted [default: 32].
    #[arg(long, value_name = "KIB")]
    pub idle_window_kib: Option<u32>,
    /// Receive window of a connection while its upload is admitted, KiB [default: 4096].
    #[arg(long, value_name = "KIB")]
    pub upload_window_kib: Option<u32>,
    /// Ceiling of QUIC's MTU discovery, in UDP payload bytes (1200–65000). The default suits
    /// Ethernet; on loopback or jumbo-frame links a larger one (e.g. 65000) sends large models
    /// in far fewer packets [default: 1452].
    #[arg(long, value_name = "BYTES")]
    pub max_udp_payload: Option<u16>,
    /// Datagrams per segmentation-offload send (1–10). quinn keeps a transmit buffer of this
    /// many datagrams per connection: with thousands of clients a smaller value saves memory
    /// (10,000 connections × 10 × 1,452 bytes ≈ 140 MiB) [default: 10].
    #[arg(long, value_name = "N")]
    pub gso_segments: Option<usize>,
    /// How clients compress updates: `none`, `int8` (per-chunk scale, stochastic rounding:
    /// ~0.25× the bytes), `int8:<chunk>`, `topk:<fraction>` or `topk:<fraction>+int8` (top-k
    /// with error feedback, e.g. `topk:0.01+int8`) [default: none].
    #[arg(long, value_name = "SCHEME")]
    pub compression: Option<String>,
    /// Client-level differential privacy: noise multiplier z (noise std z·C on the sum of
    /// updates clipped to --dp-clip; every update weighs the same). ε is logged per round.
    /// At the root of a tree: its aggregators sample their clients at --sample-fraction and
    /// clip, the root adds the noise (give no --dp-* option to an aggregator).
    #[arg(long, value_name = "Z", requires = "dp_clip")]
    pub dp_noise_multiplier: Option<f64>,
    /// L2 bound C each update is clipped to under differential privacy.
    #[arg(long, value_name = "C", requires = "dp_noise_multiplier")]
    pub dp_clip: Option<f32>,
    /// Where DP noise is added: `central` (coordinator) or `distributed` (each client adds
    /// z·C/√min-clients; needed with --secure-aggregation) [default: distributed with secure
    /// aggregation, else central].
    #[arg(long, value_name = "WHERE")]
    pub dp_noise: Option<NoiseWhere>,
    /// δ of the (ε, δ) reported [default: 1e-5].
    #[arg(long, value_name = "DELTA")]
    pub dp_delta: Option<f64>,
    /// Adaptive clipping (Andrew et al. 2021): --dp-clip is only the initial bound, which
    /// then tracks this quantile of the update norms (0.5: the median), from a noised count
    /// whose privacy cost is folded into z. Central noise only [default: a fixed bound].
    #[arg(long, value_name = "QUANTILE", requires = "dp_clip")]
    pub dp_adaptive_clip: Option<f64>,
    /// Learning rate η of the adaptive bound's step C ← C·exp(−η·(b̄ − γ)) [default: 0.2].
    #[arg(long, value_name = "ETA", requires = "dp_adaptive_clip")]
    pub dp_clip_learning_rate: Option<f64>,
    /// Over-selection: a round commits as soon as this many updates are accepted, without
    /// waiting for the other sampled clients — stragglers, or joined peers that never answer,
    /// then cost nothing (sample more than the goal with --sample-fraction). Not used with
    /// --secure-aggregation [default: wait for every sampled client, up to the deadline].
    #[arg(long, value_name = "N")]
    pub round_goal: Option<usize>,
    /// Time a client identity (certificate or token) closed for misbehaviour — a missed frame
    /// deadline, a send queue left to fill, a protocol violation, unreadable or unasked-for data
    /// — may not join again (every device of a shared token waits); 0s for none [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub penalty: Option<HumanDuration>,
    /// Live sessions per identity (client certificate, else auth token): a new session closes
    /// the oldest beyond this many, so a device that reconnects replaces its half-dead session
    /// and one leaked credential cannot open thousands; 0 = no limit (a fleet sharing one
    /// token) [default: 1].
    #[arg(long, value_name = "N")]
    pub sessions_per_identity: Option<usize>,
    /// Slowest transfer served, KiB/s: a frame must arrive (or be sent) within 10 s plus its
    /// size at this rate, or the connection is closed — a peer trickling an upload cannot hold
    /// an upload slot, nor a peer that never reads hold a send [default: 64].
    #[arg(long, value_name = "KIB_PER_S")]
    pub min_upload_rate: Option<u32>,
    /// Most connections open at once, handshakes included; more are refused [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one IP address [default: 256].
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// New connections per second one IP address may open once it used its burst (as many as
    /// --max-connections-per-address); more are dropped unanswered, before the handshake (the
    /// peer retries after its QUIC retransmission timeout) [default: 32].
    #[arg(long, value_name = "N")]
    pub handshake_rate: Option<u32>,
    /// Secure aggregation (SecAgg+): the coordinator only sees masked updates and their sum.
    #[arg(long)]
    #[serde(default)]
    pub secure_aggregation: bool,
    /// Neighbours each client masks with (k); 0 = the whole cohort [default: 0].
    #[arg(long, value_name = "K")]
    pub secagg_neighbours: Option<usize>,
    /// Shares needed to unmask a dropped client (t > k/2); 0 = the smallest valid [default: 0].
    #[arg(long, value_name = "T")]
    pub secagg_threshold: Option<usize>,
    /// Coordinates are clipped to [−c, c] before fixed-point encoding [default: 1].
    #[arg(long, value_name = "C")]
    pub secagg_clip_range: Option<f32>,
    /// Fixed-point precision bits (values scaled by 2^bits) [default: 16].
    #[arg(long, value_name = "BITS")]
    pub secagg_scale_bits: Option<u32>,
    /// How long each secure-aggregation phase waits for answers [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub secagg_phase_timeout: Option<HumanDuration>,
}

/// Where differential-privacy noise is added (flag values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoiseWhere {
    /// The coordinator noises the sum.
    Central,
    /// Each client adds its share.
    Distributed,
}

/// Where the server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// A development PKI in `DATA_DIR/pki`, created on first start.
    Dev {
        /// Extra names for the server certificate.
        extra_names: Vec<String>,
    },
    /// Production certificate chain and key.
    Files {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
}

/// Everything the coordinator needs to run, with defaults applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Checkpoint, PKI and metrics directory.
    pub data_dir: PathBuf,
    /// Server certificate source.
    pub tls: TlsSource,
    /// CA that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// File of accepted tokens.
    pub tokens_file: Option<PathBuf>,
    /// Model spec from the flags, when `--inputs` and `--classes` were given.
    pub spec: Option<ModelSpec>,
    /// Initial model file.
    pub initial_params: Option<PathBuf>,
    /// Round settings (auth tokens are filled from `tokens_file` at start).
    pub rounds: CoordinatorConfig,
    /// Stop after this many committed rounds.
    pub max_rounds: Option<u64>,
    /// Frame size limit.
    pub max_frame: FrameLimit,
    /// Held-out evaluation CSV.
    pub eval_data: Option<PathBuf>,
    /// Updates received at the same time: a number, or what a memory budget holds.
    pub concurrent_uploads: UploadSlots,
    /// Flow-control windows and MTU ceiling (`receive_window` is the idle window).
    pub tuning: Tuning,
    /// What one peer may take of the coordinator.
    pub limits: Limits,
    /// The HTTP API, when `--http` is given.
    pub http: Option<HttpConfig>,
    /// The object store of the checkpoints, when `--checkpoint-url` is given.
    pub checkpoint_url: Option<String>,
    /// The leader lease, when `--lease-url` is given.
    pub lease: Option<LeaseConfig>,
    /// The parent coordinator, for an edge aggregator (`--parent`).
    pub parent: Option<ParentConfig>,
}

/// How an edge aggregator reaches its parent.
#[derive(Debug, Clone)]
pub struct ParentConfig {
    /// The parent's UDP address.
    pub addr: SocketAddr,
    /// The name its certificate must carry.
    pub server_name: String,
    /// The CA its certificate chains to.
    pub ca: PathBuf,
    /// This aggregator's token.
    pub token: String,
    /// Where its clients reach it, announced to the parent (`--advertise`).
    pub advertise: Option<flotilla_protocol::wire::Endpoint>,
}

/// A leader lease's settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Where the lease lives.
    pub url: String,
    /// How long one renewal lasts.
    pub duration: Duration,
    /// This coordinator's name in it.
    pub holder: String,
}

/// How many updates may be received at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadSlots {
    /// This many.
    Count(usize),
    /// As many as this many bytes hold at the largest update's size (at least
    /// [`UploadSlots::MIN`]).
    Memory(u64),
}

impl UploadSlots {
    /// Fewest slots a memory budget gives.
    pub const MIN: usize = 4;

    /// The number of slots for updates of at most `largest` bytes.
    pub fn count(self, largest: u64) -> usize {
        match self {
            Self::Count(n) => n.max(1),
            Self::Memory(bytes) => usize::try_from(bytes / largest.max(1)).unwrap_or(usize::MAX).max(Self::MIN),
        }
    }
}

impl Options {
    /// Reads `--config` (if any), merges it under these options and applies the defaults.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = self.config.clone();
        flotilla_net::options::layer(self, file.as_deref())?.into_config()
    }

    /// Applies the defaults (no file involved).
    pub fn into_config(self) -> anyhow::Result<Config> {
        let aggregation = self.aggregation()?;
        let (hierarchy, parent) = self.hierarchy()?;
        let tls = match (self.cert, self.key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => TlsSource::Dev { extra_names: self.dev_cert_names },
            _ => bail!("--cert and --key go together"),
        };
        let spec = match (self.inputs, self.classes) {
            (Some(inputs), Some(classes)) => {
                let paper = HbpConfig::new(inputs, classes);
                Some(
                    HbpConfig {
                        hidden_layers: self.hidden_layers.unwrap_or(paper.hidden_layers),
                        width: self.width.unwrap_or(paper.width),
                        learning_rate: self.lr.unwrap_or(paper.learning_rate),
                        beta: self.beta.unwrap_or(paper.beta),
                        smoothing: self.smoothing.unwrap_or(paper.smoothing),
                        input_head: !self.no_input_head,
                        seed: self.seed.unwrap_or(paper.seed),
                        ..paper
                    }
                    .into(),
                )
            }
            (None, None) => self.vector_len.map(|len| ModelSpec::Vector { len }),
            _ => bail!("--inputs and --classes go together"),
        };
        if spec.is_some() && self.inputs.is_some() && self.vector_len.is_some() {
            bail!("--vector-len and --inputs/--classes describe two different models; give one");
        }
        let mode = match self.mode.unwrap_or_default() {
            ModeName::Sync => {
                if self.buffer_size.is_some() || self.max_staleness.is_some() {
                    bail!("--buffer-size and --max-staleness apply to --mode async only");
                }
                Mode::Sync
            }
            ModeName::Async => Mode::Async {
                buffer_size: self.buffer_size.unwrap_or(10),
                max_staleness: self.max_staleness.unwrap_or(20),
            },
        };
        let duration = |value: Option<HumanDuration>, default: Duration| value.map_or(default, |d| d.0);
        let compression: Compression = match &self.compression {
            Some(text) => text.parse().map_err(|e| anyhow::anyhow!("--compression {text}: {e}"))?,
            None => Compression::None,
        };
        let privacy = match (self.dp_noise_multiplier, self.dp_clip) {
            (Some(noise_multiplier), Some(clip)) => Some(PrivacyConfig {
                noise_multiplier,
                clip,
                placement: match self.dp_noise {
                    Some(NoiseWhere::Central) => NoisePlacement::Central,
                    Some(NoiseWhere::Distributed) => NoisePlacement::Distributed,
                    None if self.secure_aggregation => NoisePlacement::Distributed,
                    None => NoisePlacement::Central,
                },
                delta: self.dp_delta.unwrap_or(1e-5),
                adaptive: self.dp_adaptive_clip.map(|target_quantile| AdaptiveClipping {
                    target_quantile,
                    learning_rate: self.dp_clip_learning_rate.unwrap_or(0.2),
                }),
            }),
            (None, None) => None,
            _ => bail!("--dp-noise-multiplier and --dp-clip go together"),
        };
        let secure = self.secure_aggregation.then(|| SecureConfig {
            neighbours: self.secagg_neighbours.unwrap_or(0),
            threshold: self.secagg_threshold.unwrap_or(0),
            clip_range: self.secagg_clip_range.unwrap_or(1.0),
            scale_bits: self.secagg_scale_bits.unwrap_or(16),
            phase_timeout: self.secagg_phase_timeout.map_or(Duration::from_secs(10), |d| d.0),
        });
        let rounds = CoordinatorConfig {
            min_clients: self.min_clients.unwrap_or(2),
            sample_fraction: self.sample_fraction.unwrap_or(1.0),
            round_deadline: duration(self.round_deadline, Duration::from_secs(30)),
            round_interval: duration(self.round_interval, Duration::ZERO),
            join_timeout: duration(self.join_timeout, Duration::from_secs(10)),
            seed: u64::from(self.seed.unwrap_or(0)),
            aggregation,
            mode,
            compression,
            privacy,
            secure,
            // Drawn afresh at every start and kept nowhere: central DP noise nobody can replay.
            noise_key: flotilla_net::tls::os_random().map(flotilla_protocol::privacy::NoiseKey),
            max_samples_per_update: self.max_samples_per_update,
            sessions_per_identity: self.sessions_per_identity.unwrap_or(1),
            round_goal: self.round_goal,
            misbehaviour_penalty: duration(self.penalty, Duration::from_secs(60)),
            keep_pruned: self.keep_pruned,
            hierarchy,
            ..CoordinatorConfig::default()
        };
        rounds.validate().context("invalid round settings")?;
        let mib = self.max_frame_mib.unwrap_or(64);
        let max_frame = match mib.checked_mul(1 << 20) {
            Some(bytes) if mib > 0 => FrameLimit::new(bytes),
            _ => bail!("--max-frame-mib must be in 1..=4095, got {mib}"),
        };
        let concurrent_uploads = match (self.concurrent_uploads, self.upload_memory_mib) {
            (Some(0), _) => bail!("--concurrent-uploads must be at least 1"),
            (Some(n), _) => UploadSlots::Count(n),
            (None, Some(0)) => bail!("--upload-memory-mib must be at least 1"),
            (None, mib) => UploadSlots::Memory(u64::from(mib.unwrap_or(64)) << 20),
        };
        let kib = |value: Option<u32>, default: u32, flag: &str| -> anyhow::Result<u32> {
            match value.unwrap_or(default).checked_mul(1024) {
                Some(bytes) if bytes >= 4096 => Ok(bytes),
                _ => bail!("{flag} must be in 4..=4194303 KiB"),
            }
        };
        let idle_window = kib(self.idle_window_kib, 32, "--idle-window-kib")?;
        let upload_window = kib(self.upload_window_kib, 4096, "--upload-window-kib")?.max(idle_window);
        let max_udp_payload = self.max_udp_payload.unwrap_or(ETHERNET_UDP_PAYLOAD);
        if !(1200..=MAX_UDP_PAYLOAD).contains(&max_udp_payload) {
            bail!("--max-udp-payload must be in 1200..={MAX_UDP_PAYLOAD}, got {max_udp_payload}");
        }
        let min_rate = match self.min_upload_rate.unwrap_or(64).checked_mul(1024) {
            Some(bytes) if bytes > 0 => bytes,
            _ => bail!("--min-upload-rate must be in 1..=4194303 KiB/s"),
        };
        let limits = Limits {
            min_rate,
            max_connections: self.max_connections.unwrap_or(10_000),
            per_address: self.max_connections_per_address.unwrap_or(256),
            handshake_rate: self.handshake_rate.unwrap_or(32),
        };
        if limits.max_connections == 0 || limits.per_address == 0 || limits.handshake_rate == 0 {
            bail!("--max-connections, --max-connections-per-address and --handshake-rate must be at least 1");
        }
        let listen = self.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 4433)));
        let authenticated = self.tokens_file.is_some() || self.client_ca.is_some();
        if !listen.ip().is_loopback() && !authenticated {
            if !self.allow_anonymous {
                bail!(
                    "listening on {listen} with neither --tokens-file nor --client-ca would let anyone who can \
                     reach the port join and send updates; give one of them, listen on a loopback address, \
                     or pass --allow-anonymous"
                );
            }
            tracing::warn!(%listen, "--allow-anonymous: any peer that reaches this port can join and send updates");
        }
        let http = match self.http {
            Some(http) => {
                if !http.ip().is_loopback() && self.tokens_file.is_none() && !self.allow_anonymous {
                    bail!(
                        "serving HTTP on {http} without --tokens-file would let anyone who can reach the port \
                         read the model and its predictions; give --tokens-file (bearer tokens), listen on a \
                         loopback address, or pass --allow-anonymous"
                    );
                }
                let max_rows = self.http_max_rows.unwrap_or(100_000);
                if max_rows == 0 {
                    bail!("--http-max-rows must be at least 1");
                }
                // A row of JSON is at most ~16 bytes a feature; room for the largest batch.
                let inputs = spec.as_ref().and_then(ModelSpec::hbp).map_or(1024, |hbp| hbp.inputs);
                let max_body = max_rows.saturating_mul(inputs.saturating_mul(24).max(64)).clamp(1 << 20, 256 << 20);
                let default = ConnectionLimits::DEFAULT;
                let limits = ConnectionLimits {
                    max_connections: self.http_max_connections.unwrap_or(default.max_connections),
                    max_per_address: self.http_max_connections_per_address.unwrap_or(default.max_per_address),
                    ..default
                };
                if limits.max_connections == 0 || limits.max_per_address == 0 {
                    bail!("--http-max-connections and --http-max-connections-per-address must be at least 1");
                }
                Some(HttpConfig { listen: http, max_rows, max_body, tls: self.http_tls, limits })
            }
            None if self.http_tls => bail!("--http-tls needs --http ADDR to serve on"),
            None => None,
        };
        let lease = match self.lease_url {
            Some(url) => {
                if self.checkpoint_url.is_none() {
                    bail!("--lease-url needs --checkpoint-url: a standby resumes from the checkpoints they share");
                }
                let duration = self.lease_duration.map_or(Duration::from_secs(15), |d| d.0);
                if duration < Duration::from_millis(200) {
                    bail!("--lease-duration must be at least 200ms");
                }
                let holder = match self.lease_holder {
                    Some(holder) if holder.trim().is_empty() => bail!("--lease-holder must not be empty"),
                    Some(holder) => holder,
                    None => default_holder(),
                };
                Some(LeaseConfig { url, duration, holder })
            }
            None if self.lease_duration.is_some() || self.lease_holder.is_some() => {
                bail!("--lease-duration and --lease-holder need --lease-url")
            }
            None => None,
        };
        Ok(Config {
            listen,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("flotilla-data")),
            tls,
            client_ca: self.client_ca,
            tokens_file: self.tokens_file,
            spec,
            initial_params: self.initial_params,
            rounds,
            max_rounds: self.rounds,
            max_frame,
            eval_data: self.eval_data,
            concurrent_uploads,
            tuning: Tuning::coordinator(
                idle_window,
                upload_window,
                max_udp_payload,
                self.gso_segments.unwrap_or(flotilla_net::transport::MAX_GSO_SEGMENTS),
            ),
            limits,
            http,
            checkpoint_url: self.checkpoint_url,
            lease,
            parent,
        })
    }

    /// Where this coordinator stands in a tree (`--parent`, `--aggregator-tokens-file`).
    fn hierarchy(&self) -> anyhow::Result<(Hierarchy, Option<ParentConfig>)> {
        let Some(parent) = &self.parent else {
            if self.parent_ca.is_some()
                || self.parent_server_name.is_some()
                || self.parent_token_file.is_some()
                || self.advertise.is_some()
                || self.advertise_name.is_some()
            {
                bail!(
                    "--parent-ca, --parent-server-name, --parent-token-file, --advertise and --advertise-name \
                     need --parent HOST:PORT"
                );
            }
            return Ok(match &self.aggregator_tokens_file {
                Some(path) => {
                    let aggregator_tokens = read_tokens(path).context("--aggregator-tokens-file")?;
                    (Hierarchy::Root { aggregator_tokens, redirect_clients: self.redirect_clients }, None)
                }
                None if self.redirect_clients => bail!("--redirect-clients needs --aggregator-tokens-file"),
                None => (Hierarchy::Flat, None),
            });
        };
        let conflicts = [
            ("--aggregator-tokens-file", self.aggregator_tokens_file.is_some()),
            ("--redirect-clients", self.redirect_clients),
            ("--checkpoint-url", self.checkpoint_url.is_some()),
            ("--lease-url", self.lease_url.is_some()),
            ("--rounds", self.rounds.is_some()),
            ("--eval-data", self.eval_data.is_some()),
            ("--http", self.http.is_some()),
            ("--initial-params", self.initial_params.is_some()),
            ("--inputs", self.inputs.is_some()),
            ("--vector-len", self.vector_len.is_some()),
            ("--mode", self.mode.is_some_and(|mode| mode != ModeName::Sync)),
        ];
        if let Some((flag, _)) = conflicts.iter().find(|(_, given)| *given) {
            bail!(
                "{flag} does not apply to an edge aggregator (--parent): the parent holds the model, its \
                 checkpoints, its rounds and its evaluation; a tree deeper than root and aggregators is not supported"
            );
        }
        let addr = flotilla_net::options::resolve("--parent", parent)?;
        let server_name =
            self.parent_server_name.clone().unwrap_or_else(|| flotilla_net::options::host_of(parent).to_string());
        let ca =
            self.parent_ca.clone().context("--parent needs --parent-ca FILE (the CA of the parent's certificate)")?;
        let token_file = self
            .parent_token_file
            .as_ref()
            .context("--parent needs --parent-token-file FILE (this aggregator's token)")?;
        let token = flotilla_net::tokens::read_token_file(token_file)
            .with_context(|| format!("--parent-token-file {}", token_file.display()))?
            .into_iter()
            .next()
            .with_context(|| format!("{}: no token in it", token_file.display()))?;
        let advertise = match &self.advertise {
            Some(address) => {
                let server_name =
                    self.advertise_name.clone().unwrap_or_else(|| flotilla_net::options::host_of(address).to_string());
                let endpoint = flotilla_protocol::wire::Endpoint { address: address.clone(), server_name };
                if !endpoint.is_valid() || address.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err())
                {
                    bail!("--advertise {address:?} must be HOST:PORT (at most 255 bytes)");
                }
                Some(endpoint)
            }
            None if self.advertise_name.is_some() => bail!("--advertise-name needs --advertise HOST:PORT"),
            None => None,
        };
        Ok((Hierarchy::Edge { privacy: None }, Some(ParentConfig { addr, server_name, ca, token, advertise })))
    }
}

/// `HOSTNAME-PID`: unique among processes on one host and, with the host's name, across hosts.
fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "coordinator".to_owned());
    format!("{host}-{}", std::process::id())
}

impl Options {
    /// The aggregation strategy; an option that the chosen strategy does not use is an error.
    fn aggregation(&self) -> anyhow::Result<StrategyConfig> {
        let defaults = StrategyConfig::recommended();
        let kind = self.strategy.unwrap_or(defaults.kind);
        let applies = [
            ("--beta1", self.beta1.is_some(), kind.uses_beta1()),
            ("--beta2", self.beta2.is_some(), kind.uses_beta2()),
            ("--tau", self.tau.is_some(), kind.uses_tau()),
            ("--trim-fraction", self.trim_fraction.is_some(), kind == StrategyKind::TrimmedMean),
            ("--byzantine", self.byzantine.is_some(), kind.uses_byzantine()),
            ("--multi-krum-m", self.multi_krum_m.is_some(), kind == StrategyKind::MultiKrum),
            ("--max-held-updates", self.max_held_updates.is_some(), kind.is_robust()),
        ];
        if let Some((flag, ..)) = applies.iter().find(|(_, given, used)| *given && !*used) {
            bail!("{flag} does not apply to --strategy {kind}");
        }
        Ok(StrategyConfig {
            kind,
            server_lr: self.server_lr.unwrap_or(defaults.server_lr),
            // Under DP the participant-scaled step would apply the noise of the whole sum to
            // the model each round: the textbook step unless one is asked for.
            step_size: self.server_step.unwrap_or(if self.dp_noise_multiplier.is_some() {
                flotilla_protocol::aggregate::StepSize::Fixed
            } else {
                defaults.step_size
            }),
            serve_average: self.serve_average.unwrap_or(defaults.serve_average),
            beta1: self.beta1.unwrap_or(kind.default_beta1()),
            beta2: self.beta2.unwrap_or(defaults.beta2),
            tau: self.tau.unwrap_or(defaults.tau),
            trim_fraction: self.trim_fraction.unwrap_or(defaults.trim_fraction),
            byzantine: self.byzantine.unwrap_or(defaults.byzantine),
            multi_krum_m: self.multi_krum_m,
            clip_norm: self.clip_norm,
            outlier_norm: self.outlier_norm,
            max_held_updates: self.max_held_updates.unwrap_or(defaults.max_held_updates),
            ..defaults
        })
    }
}

/// Reads a tokens file: one token per line, blank lines and `#` comments skipped.
pub fn read_tokens(path: &Path) -> anyhow::Result<BTreeSet<String>> {
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            let mode = format!("{:o}", meta.permissions().mode() & 0o777);
            tracing::warn!(path = %path.display(), mode, "the tokens file is readable by other users: chmod 600 it");
        }
    }
    let tokens = flotilla_net::tokens::read_token_file(path)
        .map_err(|error| anyhow::anyhow!("{error}: every client would be refused"))?;
    Ok(tokens.into_iter().collect())
}

#[cfg(test)]
mod tests;
