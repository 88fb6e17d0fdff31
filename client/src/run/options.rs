//! Options of `flotilla-client run`, from flags and an optional TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use flotilla_learner::personal::PersonalConfig;

use crate::learn::BackendChoiceArg;

/// Command-line options; all optional so that a TOML file (`--config`) can supply them.
/// Each TOML key is the flag's name without the dashes (`state-dir = "/var/lib/flotilla"`);
/// flags override the file.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunOptions {
    /// TOML file whose keys mirror these flags; flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The coordinator's UDP address, HOST:PORT (e.g. 127.0.0.1:4433).
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// Name the coordinator's certificate must carry [default: the host part of --coordinator].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// CA certificate (PEM) the coordinator's certificate must chain to (its dev CA: DATA_DIR/pki/ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Mutual TLS: the private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// File holding this client's pre-shared token, when the coordinator requires one: the
    /// first token line (`fleet` gives virtual client i line i mod n: one identity each).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Local stream: a CSV file (header, numeric features, integer label last), or `-` for stdin.
    #[arg(long, value_name = "SOURCE")]
    pub data: Option<PathBuf>,
    /// Keep reading rows appended to the file, like `tail -f`.
    #[arg(long)]
    #[serde(default)]
    pub follow: bool,
    /// Learn at most this many samples per second (emulates a live stream) [default: as fast as possible].
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Learn at most N rows on each global model, then wait for the next one. A round's request
    /// is answered once those rows are learnt (or the stream ends, or the request's deadline
    /// is near). Bounds the device's work per round, and makes runs reproducible: when every
    /// client takes part in every round (`--min-clients` = all at the coordinator), the same
    /// data gives the same models whatever the timing [default: no limit].
    #[arg(long, value_name = "N")]
    pub rows_per_round: Option<u64>,
    /// This client's name in both sides' logs [default: the host name and process id].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Directory for this client's durable state (model, counters, stream position); a
    /// restarted daemon resumes from it [default: none, nothing kept].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Save the state every this many samples [default: 1000].
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// Where the kernels run: auto, gpu or cpu [default: auto].
    #[arg(long, value_name = "BACKEND")]
    #[serde(default, deserialize_with = "backend_from_str", serialize_with = "backend_to_str")]
    pub backend: Option<BackendChoiceArg>,
    /// Write a JSON summary (samples, error, bytes on the wire) here on exit.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Write each row's prediction, made before the row is learnt from (the personalised
    /// one where personalisation is on), as a JSON line `{"row", "class", "probabilities",
    /// "model_version"}`: appended to FILE, or on stdout with `-` (the exit summary then goes
    /// to stderr).
    #[arg(long, value_name = "FILE|-")]
    pub predictions: Option<PathBuf>,
    /// Serve this device's own model (the personalised prediction) on this TCP address with
    /// the coordinator's prediction API (`POST /v1/predict`, `/v1/predict/batch`, `GET
    /// /healthz`, `/readyz`), for an application on the device [default: off]. A
    /// non-loopback address needs --http-tokens-file.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Bearer tokens (one a line) the device's HTTP API accepts as `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub http_tokens_file: Option<PathBuf>,
    /// Most rows in one POST /v1/predict/batch request to the device [default: 10000].
    #[arg(long, value_name = "N")]
    pub http_max_rows: Option<usize>,
    /// Predict with the shared (global) model alone, without a local model mixed in
    /// [default: personalised: a Hedge mix of this device's own model, the global model, the
    /// global model adapted to the local label mix, and the global model with a class bias
    /// learnt on this device].
    #[arg(long)]
    #[serde(default)]
    pub no_personalise: bool,
    /// Hedge discount β of the personalised mix's weights, in (0, 1); smaller adapts faster [default: 0.9].
    #[arg(long, value_name = "BETA")]
    pub mix_beta: Option<f32>,
    /// FedLC logit calibration τ of the shared model's steps against this device's label
    /// skew (softmax(z − τ·n_c^(−1/4)) with running class counts n_c); 0 turns it off [default: 1].
    #[arg(long, value_name = "TAU")]
    pub calibration_tau: Option<f32>,
}

/// How a Byzantine test client corrupts its updates (robustness experiments only: set by the
/// simulator's `flotilla-sim-client run --attack`, never by the daemon's own flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// Sends −Δ.
    SignFlip,
    /// Sends 100·Δ.
    Scale,
    /// Sends Δ with a NaN in it.
    Nan,
}

impl Attack {
    /// Corrupts `delta` in place.
    pub fn apply(self, delta: &mut [f32]) {
        match self {
            Self::SignFlip => delta.iter_mut().for_each(|v| *v = -*v),
            Self::Scale => delta.iter_mut().for_each(|v| *v *= 100.0),
            Self::Nan => {
                if let Some(first) = delta.first_mut() {
                    *first = f32::NAN;
                }
            }
        }
    }
}

fn backend_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<BackendChoiceArg>, D::Error> {
    let text: Option<String> = serde::Deserialize::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
}

fn backend_to_str<S: serde::Serializer>(backend: &Option<BackendChoiceArg>, s: S) -> Result<S::Ok, S::Error> {
    match backend {
        Some(BackendChoiceArg(choice)) => s.serialize_some(choice.name()),
        None => s.serialize_none(),
    }
}

/// Resolved options (see [`RunOptions`] for each one's meaning and default).
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The coordinator's address.
    pub coordinator: SocketAddr,
    /// The name its certificate must carry.
    pub server_name: String,
    /// The CA certificate the coordinator's certificate must chain to.
    pub ca: PathBuf,
    /// This client's certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Tokens of --token-file: a daemon presents the first, virtual client `i` line `i mod n`.
    pub tokens: Vec<String>,
    /// The stream: a CSV file, or `-` for stdin.
    pub data: PathBuf,
    /// Keep reading the file as it grows.
    pub follow: bool,
    /// Samples per second to learn at most (none: as fast as the stream comes).
    pub rate: Option<f64>,
    /// Rows learnt at most on each global model (none: no limit).
    pub rows_per_round: Option<u64>,
    /// This client's name in the coordinator's logs.
    pub name: String,
    /// Where the learner's state is kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// Samples between two saves of the state.
    pub checkpoint_every: u64,
    /// Where the kernels run.
    pub backend: BackendChoiceArg,
    /// Where the exit report is written.
    pub report: Option<PathBuf>,
    /// Where each row's prediction is written (`-`: stdout).
    pub predictions: Option<PathBuf>,
    /// The device's own prediction API, when `--http` is given.
    pub http: Option<DeviceHttp>,
    /// Corrupts every update sent (robustness experiments; `None` in the daemon).
    pub attack: Option<Attack>,
    /// The personalised prediction's settings.
    pub personal: PersonalConfig,
}

/// The device's own prediction API (`--http`).
#[derive(Debug, Clone)]
pub struct DeviceHttp {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Bearer tokens accepted (none: no token needed; loopback only).
    pub tokens: Option<std::collections::BTreeSet<String>>,
    /// Most rows in one batch request.
    pub max_rows: usize,
}

impl RunOptions {
    /// Reads `--config` (if any), lets the flags override it, checks and resolves everything.
    pub fn resolve(self) -> anyhow::Result<RunConfig> {
        let file = self.config.clone();
        let o = flotilla_net::options::layer(self, file.as_deref())?;
        let coordinator_text = o.coordinator.context("--coordinator HOST:PORT is required")?;
        let coordinator = flotilla_net::options::resolve("--coordinator", &coordinator_text)?;
        let server_name =
            o.server_name.unwrap_or_else(|| flotilla_net::options::host_of(&coordinator_text).to_string());
        let tokens = match &o.token_file {
            Some(path) => flotilla_net::tokens::read_token_file(path)?,
            None => Vec::new(),
        };
        let rate = o.rate.filter(|r| *r > 0.0);
        if o.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            bail!("--rate must be a positive number of samples per second");
        }
        if o.rows_per_round == Some(0) {
            bail!("--rows-per-round must be at least 1 (leave it out for no limit)");
        }
        let defaults = PersonalConfig::default();
        let personal = PersonalConfig {
            enabled: !o.no_personalise,
            beta: o.mix_beta.unwrap_or(defaults.beta),
            floor: defaults.floor,
            calibration_tau: o.calibration_tau.unwrap_or(defaults.calibration_tau),
            bias_lr: defaults.bias_lr,
        };
        personal.validate().context("--mix-beta / --calibration-tau")?;
        let http = match o.http {
            Some(listen) => {
                let tokens = match &o.http_tokens_file {
                    Some(path) => Some(flotilla_net::tokens::read_token_file(path)?.into_iter().collect()),
                    None if !listen.ip().is_loopback() => bail!(
                        "serving this device's model on {listen} would let anyone who can reach the port use it; \
                         give --http-tokens-file or listen on a loopback address"
                    ),
                    None => None,
                };
                let max_rows = o.http_max_rows.unwrap_or(10_000);
                if max_rows == 0 {
                    bail!("--http-max-rows must be at least 1");
                }
                Some(DeviceHttp { listen, tokens, max_rows })
            }
            None if o.http_tokens_file.is_some() => bail!("--http-tokens-file needs --http ADDR"),
            None => None,
        };
        Ok(RunConfig {
            personal,
            coordinator,
            server_name,
            ca: o.ca.context("--ca FILE is required (the coordinator's CA certificate)")?,
            identity: o.cert.zip(o.key),
            tokens,
            data: o.data.context("--data SOURCE is required (a CSV file or - for stdin)")?,
            follow: o.follow,
            rate,
            rows_per_round: o.rows_per_round,
            name: o.name.unwrap_or_else(default_name),
            state_dir: o.state_dir,
            checkpoint_every: o.checkpoint_every.unwrap_or(1000).max(1),
            backend: o.backend.unwrap_or(BackendChoiceArg(flotilla_learner::compute::BackendChoice::Auto)),
            report: o.report,
            predictions: o.predictions,
            http,
            attack: None,
        })
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "client".to_string() } else { host };
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn flags_override_the_file_and_required_options_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.toml");
        let text = "coordinator = \"127.0.0.1:4433\"\nca = \"ca.pem\"\nrate = 5.0\nbackend = \"cpu\"\nmix-beta = 0.8\n";
        std::fs::write(&file, text).unwrap();
        let flags = RunOptions {
            config: Some(file),
            data: Some("x.csv".into()),
            rate: Some(7.0),
            backend: Some(BackendChoiceArg(flotilla_learner::compute::BackendChoice::Gpu)),
            ..RunOptions::default()
        };
        let config = flags.resolve().unwrap();
        assert_eq!(config.coordinator, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(config.server_name, "127.0.0.1");
        assert_eq!(config.rate, Some(7.0));
        assert_eq!(config.backend, BackendChoiceArg(flotilla_learner::compute::BackendChoice::Gpu));
        assert_eq!(config.personal.beta, 0.8);
        let missing = RunOptions { data: Some("x.csv".into()), ..RunOptions::default() }.resolve().unwrap_err();
        assert!(missing.to_string().contains("--coordinator"), "{missing}");
        assert!(toml::from_str::<RunOptions>("no-such-key = 1").is_err());
    }

    #[test]
    fn rows_per_round_is_read_from_the_file_and_zero_is_refused() {
        let base = "coordinator = \"127.0.0.1:4433\"\nca = \"ca.pem\"\ndata = \"x.csv\"\n";
        let options: RunOptions = toml::from_str(&format!("{base}rows-per-round = 3\n")).unwrap();
        assert_eq!(options.resolve().unwrap().rows_per_round, Some(3));
        let options: RunOptions = toml::from_str(base).unwrap();
        assert_eq!(options.resolve().unwrap().rows_per_round, None);
        let zero: RunOptions = toml::from_str(&format!("{base}rows-per-round = 0\n")).unwrap();
        let error = zero.resolve().unwrap_err();
        assert!(error.to_string().contains("--rows-per-round"), "{error}");
    }

    /// The edge guide's example file (deploy/edge/client.toml) is a valid configuration; the
    /// simulator's `attack` is not a key a device's file can set.
    #[test]
    fn the_example_edge_config_resolves_and_attack_is_not_a_key() {
        let example: RunOptions = toml::from_str(include_str!("../../../deploy/edge/client.toml")).unwrap();
        assert_eq!(example.token_file.as_deref(), Some(Path::new("/etc/flotilla/token")));
        // The token file is read at resolution; this machine has none.
        let config = RunOptions { token_file: None, ..example }.resolve().unwrap();
        assert_eq!(config.server_name, "coordinator.example.org");
        assert!(config.follow && config.attack.is_none());
        assert_eq!(config.state_dir.as_deref(), Some(Path::new("/var/lib/flotilla/state")));
        assert!(toml::from_str::<RunOptions>("attack = \"nan\"").is_err());
    }
}
