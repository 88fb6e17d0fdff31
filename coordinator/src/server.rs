//! The coordinator's wiring: loads the state and the evaluation data, binds the QUIC endpoint,
//! hands it to [`flotilla_net::endpoint::serve`] (accept loop, connections, the round task
//! driving [`flotilla_protocol::round::Coordinator`]) and persists what it commits.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use flotilla_learner::compute::{BackendChoice, select};
use flotilla_net::endpoint::{self, Committed, EndpointConfig, Observer};
use flotilla_net::tls::{DevPki, ServerTls, quic_server_config};
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::round::Coordinator;
use flotilla_protocol::wire::framing::encode_frame;
use flotilla_protocol::wire::{ALPN, CoordinatorMessage};
use quinn::Endpoint;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TlsSource, read_tokens};
use crate::eval::Evaluator;
use crate::http::{self, HttpConfig, ServedModel};
use crate::metrics::Metrics;
use crate::persist::{Checkpoints, DataFiles, append_record};
use crate::state::{Origin, initial_state};

/// A bound coordinator, ready to [`Server::run`].
pub struct Server {
    endpoint: Endpoint,
    machine: Coordinator,
    config: Config,
    files: DataFiles,
    checkpoints: Checkpoints,
    origin: Origin,
    start: (u64, u64),
    dev_pki: Option<DevPki>,
    eval: Option<Evaluator>,
    /// Error of the starting model on the held-out data, when there is any.
    start_error: Option<f64>,
    /// Largest frame a client may send.
    upload_limit: flotilla_protocol::wire::framing::FrameLimit,
    /// The HTTP API's listener, the served model's channel and the metrics.
    /// The HTTP API's listener, settings and HTTPS configuration.
    http: Option<(TcpListener, HttpConfig, Option<Arc<rustls::ServerConfig>>)>,
    served: watch::Sender<Option<Arc<ServedModel>>>,
    metrics: Arc<Metrics>,
    /// An edge aggregator's link to its parent's session.
    parent: Option<mpsc::Receiver<endpoint::ParentInput>>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Where the starting model came from.
    pub origin: Origin,
    /// Round and model version at start.
    pub started_at: (u64, u64),
    /// Rounds committed by this run.
    pub rounds_committed: u64,
    /// The final durable state (as written to the checkpoint).
    pub checkpoint: Checkpoint,
}

/// Loads the state, the PKI and the evaluation data, and binds the endpoint.
pub async fn bind(config: Config) -> anyhow::Result<Server> {
    bind_from(config, None).await
}

/// Binds an edge aggregator on its parent's model `start` (nothing loaded or saved: the root
/// keeps the checkpoints); its round task takes the parent's requests from `parent`.
pub(crate) async fn bind_edge(
    config: Config,
    start: Checkpoint,
    parent: mpsc::Receiver<endpoint::ParentInput>,
) -> anyhow::Result<Server> {
    let mut server = bind_from(config, Some(start)).await?;
    server.parent = Some(parent);
    Ok(server)
}

async fn bind_from(mut config: Config, given: Option<Checkpoint>) -> anyhow::Result<Server> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let files = DataFiles::new(&config.data_dir);
    let device = select(BackendChoice::Cpu).context("selecting the CPU backend")?;
    let checkpoints = match &config.checkpoint_url {
        Some(url) => Checkpoints::Store(crate::store::CheckpointStore::open(url).context("--checkpoint-url")?),
        None => Checkpoints::File(files.checkpoint.clone()),
    };
    let (checkpoint, origin) = match given {
        Some(checkpoint) => (checkpoint, Origin::Parent),
        None => {
            let stored = checkpoints.load().await?;
            initial_state(&config, stored, &checkpoints.describe(), &device)?
        }
    };
    let start = (checkpoint.round, checkpoint.model_version);
    let encoded = match origin {
        Origin::Resumed => {
            tracing::info!(round = start.0, model_version = start.1, "resuming from the checkpoint");
            checkpoint.encode().context("encoding the checkpoint")?
        }
        Origin::Parent => {
            tracing::info!(round = start.0, model_version = start.1, "aggregating for the parent, on its model");
            checkpoint.encode().context("encoding the parent's model")?
        }
        _ => {
            tracing::info!(?origin, parameters = checkpoint.params.values.len(), "starting a new model");
            checkpoints.save(&checkpoint).await?
        }
    };
    let model_message = CoordinatorMessage::Model { model_version: 0, round: 0, params: checkpoint.params.clone() };
    let model_frame = encode_frame(&model_message, config.max_frame)
        .context("the model does not fit in one frame (--max-frame-mib)")?
        .len();
    let eval = match &config.eval_data {
        Some(path) => Some(Evaluator::load(path, &checkpoint.spec, device)?),
        None => None,
    };
    let start_error = match &eval {
        Some(evaluator) => {
            let pct = evaluator.error_pct(checkpoint.served_params())?;
            tracing::info!(global_error_pct = pct, model_version = start.1, "starting model evaluated");
            Some(pct)
        }
        None => None,
    };
    if let Some(path) = &config.tokens_file {
        config.rounds.auth_tokens = Some(read_tokens(path)?);
    }
    let metrics = Arc::new(Metrics::new());
    metrics.start(start.1, start_error);
    let fallback = eval.as_ref().map(Evaluator::moments);
    let (served, _) = watch::channel(Some(Arc::new(ServedModel::new(&checkpoint, encoded.into(), fallback))));
    let http = match &config.http {
        Some(settings) => Some((http::bind(settings).await?, settings.clone())),
        None => None,
    };
    let (tls, dev_pki) = server_tls(&config)?;
    let http_tls = http_tls(&config, &tls)?;
    let http = http.map(|(listener, settings)| (listener, settings, http_tls));
    let server_config = quic_server_config(&tls, ALPN, &config.tuning).context("server TLS configuration")?;
    let reset_key = match &checkpoints {
        Checkpoints::Store(store) => store.reset_key().await?,
        Checkpoints::File(_) => crate::persist::load_or_create_reset_key(&files.reset_key)?,
    };
    let endpoint =
        flotilla_net::transport::bind_endpoint(config.listen, Some(server_config), &config.tuning, Some(&reset_key))
            .with_context(|| format!("binding UDP {}", config.listen))?;
    // A masked input carries the clients' feature statistics after the delta (four bytes a word).
    let masked_statistics = 4 * config.rounds.masked_statistics_words(&checkpoint.spec);
    let machine = Coordinator::from_checkpoint(config.rounds.clone(), checkpoint).context("round settings")?;
    let secure_cohort = config.rounds.secure.map(|_| flotilla_protocol::wire::bounded::MAX_COHORT);
    let upload_limit = endpoint::upload_limit(model_frame + masked_statistics, secure_cohort, config.max_frame);
    let upload_slots = config.concurrent_uploads.count(u64::from(upload_limit.bytes()));
    tracing::info!(listen = %endpoint.local_addr()?, mtls = config.client_ca.is_some(),
        tokens = config.rounds.auth_tokens.is_some(), upload_limit_bytes = upload_limit.bytes(), upload_slots,
        "coordinator listening");
    Ok(Server {
        endpoint,
        machine,
        config,
        files,
        checkpoints,
        origin,
        start,
        dev_pki,
        eval,
        start_error,
        upload_limit,
        http,
        served,
        metrics,
        parent: None,
    })
}

/// HTTPS with the same certificate and key as QUIC (and the same client CA, if any), when
/// `--http-tls` is given.
fn http_tls(config: &Config, tls: &ServerTls) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match &config.http {
        Some(settings) if settings.tls => {
            Ok(Some(Arc::new(flotilla_net::tls::server_crypto(tls, b"http/1.1").context("HTTPS TLS configuration")?)))
        }
        _ => Ok(None),
    }
}

/// The standby's HTTP API (`--http`, with `--http-tls` as configured), while it waits for the lease.
pub(crate) async fn standby_http(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<JoinHandle<anyhow::Result<()>>>> {
    let Some(settings) = &config.http else {
        return Ok(None);
    };
    let listener = http::bind(settings).await?;
    let tls = http_tls(config, &server_tls(config)?.0)?;
    Ok(Some(tokio::spawn(http::standby(listener, tls, settings.limits, shutdown))))
}

fn server_tls(config: &Config) -> anyhow::Result<(ServerTls, Option<DevPki>)> {
    let client_ca = config.client_ca.clone();
    match &config.tls {
        TlsSource::Files { cert, key } => Ok((ServerTls { cert: cert.clone(), key: key.clone(), client_ca }, None)),
        TlsSource::Dev { extra_names } => {
            let pki = DevPki::load_or_create(&config.data_dir.join("pki"), extra_names)
                .context("development PKI (give --cert and --key in production)")?;
            tracing::info!(
                created = pki.created,
                ca = %pki.ca_cert.display(),
                cert = %pki.server_cert.display(),
                ca_sha256 = %pki.ca_fingerprint,
                "development PKI: clients must trust the CA file; check its fingerprint"
            );
            Ok((ServerTls { cert: pki.server_cert.clone(), key: pki.server_key.clone(), client_ca }, Some(pki)))
        }
    }
}

impl Server {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The HTTP API's address, when `--http` was given.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|(listener, ..)| listener.local_addr().ok())
    }

    /// The development PKI, when no production certificate was given.
    pub fn dev_pki(&self) -> Option<&DevPki> {
        self.dev_pki.as_ref()
    }

    /// Serves until `shutdown` is cancelled or `--rounds` rounds are committed, then says
    /// goodbye to every client, closes the endpoint and waits for the last checkpoint.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
        let Server {
            endpoint,
            machine,
            config,
            files,
            checkpoints,
            origin,
            start,
            eval,
            start_error,
            upload_limit,
            http,
            served,
            metrics,
            parent,
            ..
        } = self;
        let (persist_tx, persist_rx) = mpsc::unbounded_channel();
        // A persister that stops (a failed write, or a panic) stops the endpoint too: no round
        // is committed to clients that is not on disk.
        let stop = shutdown.child_token();
        let http_stop = shutdown.child_token();
        let http_task = http.map(|(listener, settings, tls)| {
            let tokens = config.rounds.auth_tokens.clone();
            let api =
                http::serve(listener, tls, settings, served.subscribe(), metrics.clone(), tokens, http_stop.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let result = api.await;
                if let Err(error) = &result {
                    tracing::error!(error = %flotilla_net::exit::error_chain(error), "HTTP API stopped; stopping the coordinator");
                    stop.cancel();
                }
                result
            })
        });
        let persister: JoinHandle<anyhow::Result<()>> = {
            let stop = stop.clone();
            let published = Published { served, metrics: metrics.clone() };
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _stop_on_exit = stop.drop_guard();
                let durable = Durable { files, checkpoints, runtime };
                persist_loop(persist_rx, &durable, eval, start_error, &published)
            })
        };
        let endpoint_config = EndpointConfig {
            limits: config.limits,
            join_timeout: config.rounds.join_timeout,
            upload_limit,
            max_frame: config.max_frame,
            upload_slots: config.concurrent_uploads.count(u64::from(upload_limit.bytes())),
            tuning: config.tuning,
            max_rounds: config.max_rounds,
        };
        let observer: Arc<dyn Observer> = metrics;
        let served =
            endpoint::serve(&endpoint, machine, endpoint_config, persist_tx, Some(observer), parent, stop).await;
        flatten(persister.await)?;
        // The API serves the last model until the rounds are over and persisted.
        http_stop.cancel();
        if let Some(task) = http_task {
            shutdown_http(task).await?;
        }
        Ok(RunSummary {
            origin,
            started_at: start,
            rounds_committed: served.rounds_committed,
            checkpoint: served.checkpoint,
        })
    }
}

fn flatten(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.context("persistence task panicked")?
}

/// Where a committed round is published besides the disk: the HTTP API's model and the metrics.
struct Published {
    served: watch::Sender<Option<Arc<ServedModel>>>,
    metrics: Arc<Metrics>,
}

/// Waits for the HTTP API to stop (its shutdown token is a child of the run's).
async fn shutdown_http(task: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
        Ok(result) => result.context("HTTP API task panicked")?,
        Err(_) => {
            tracing::warn!("HTTP API did not stop within 5 s");
            Ok(())
        }
    }
}

/// Where committed rounds are written: checkpoints (a file or an object store, reached through
/// the runtime) and `rounds.jsonl`.
struct Durable {
    files: DataFiles,
    checkpoints: Checkpoints,
    runtime: tokio::runtime::Handle,
}

/// Writes checkpoints and round records in commit order (on a blocking thread), then
/// publishes each round's model to the HTTP API and its record to the metrics.
fn persist_loop(
    mut queue: mpsc::UnboundedReceiver<Committed>,
    durable: &Durable,
    eval: Option<Evaluator>,
    start_error: Option<f64>,
    published: &Published,
) -> anyhow::Result<()> {
    let mut previous_error = start_error;
    let fallback = eval.as_ref().map(Evaluator::moments);
    while let Some(Committed { checkpoint, mut record }) = queue.blocking_recv() {
        record.start_global_error_pct = previous_error;
        let encoded = durable.runtime.block_on(durable.checkpoints.save(&checkpoint))?;
        if published.served.receiver_count() > 0 {
            let model = ServedModel::new(&checkpoint, encoded.into(), fallback);
            published.served.send_replace(Some(Arc::new(model)));
        }
        if let Some(evaluator) = &eval {
            match evaluator.error_pct(checkpoint.served_params()) {
                Ok(pct) => record.global_error_pct = Some(pct),
                Err(error) => {
                    tracing::warn!(round = record.round, error = %flotilla_net::exit::error_chain(&error), "evaluation failed")
                }
            }
        }
        previous_error = record.global_error_pct;
        append_record(&durable.files.rounds, &record)?;
        published.metrics.record(&record);
        tracing::info!(
            round = record.round,
            model_version = record.model_version,
            participants = record.participants,
            samples = record.samples,
            global_error_pct = record.global_error_pct,
            epsilon = record.epsilon,
            duration_s = record.duration_s,
            bytes_in = record.bytes_in,
            bytes_out = record.bytes_out,
            "round recorded"
        );
    }
    Ok(())
}
