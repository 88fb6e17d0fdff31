//! The coordinator's HTTP API (`--http ADDR`, off by default): predictions from the served
//! global model, the model itself, health, readiness and Prometheus metrics.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/predict` | `{"features":[…]}` → `{"class":k,"probabilities":[…],"model_version":v}` |
//! | `POST /v1/predict/batch` | `{"rows":[[…],…]}` or a `text/csv` body (an optional header line) → `{"classes":[…],"probabilities":[[…]],"model_version":v}` |
//! | `GET /v1/model` | the served checkpoint (the file `flotilla-coordinator` writes) |
//! | `GET /v1/model/json` | the served network as JSON (shape, standardisation, named weight segments), for other runtimes |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once a trained model can predict, 503 with the reason before |
//! | `GET /activez` | 200 on the active coordinator; 503 on a standby (`--lease-url`), which serves only this, `/healthz` and `/readyz` |
//! | `GET /metrics` | OpenMetrics text ([`crate::metrics`]) |
//!
//! Predictions run on one dedicated thread fed by a bounded channel: it takes every request
//! waiting and predicts all their rows in one pass over the weights, with the latest model,
//! which the persister swaps in through a `watch` channel after every commit. Every refusal
//! is a 4xx (or 503) with a JSON body `{"error": "…"}`; when the coordinator has tokens,
//! every route but `/healthz` and `/readyz` wants one as `Authorization: Bearer TOKEN`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_learner::infer::{Prediction, Predictor, Standardization};
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::model::FeatureMoments;
use flotilla_serve::{ApiError, Auth, Backend, json_response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Rows waiting for the inference thread before requests are turned away (503).
const QUEUE: usize = 1024;
/// Most rows predicted in one pass when requests are coalesced.
const COALESCE_ROWS: usize = 4096;

/// The HTTP API's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// TCP address to listen on.
    pub listen: SocketAddr,
    /// Most rows in one batch request.
    pub max_rows: usize,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// HTTPS with the QUIC certificate (`--http-tls`).
    pub tls: bool,
    /// Connections held at once, in all and per address, and the header-read timeout.
    pub limits: flotilla_serve::ConnectionLimits,
}

/// The model the API serves: the latest committed checkpoint and a predictor built from it.
#[derive(Debug)]
pub struct ServedModel {
    /// Version of the served model.
    pub model_version: u64,
    /// The encoded checkpoint (`GET /v1/model`).
    pub checkpoint: Bytes,
    /// The predictor, or why this model cannot predict.
    pub predictor: Result<Predictor, String>,
}

impl ServedModel {
    /// The served parameters of `checkpoint` (encoded as `encoded`), standardised with the
    /// fleet's feature statistics or, without any, with `fallback` (the coordinator's own
    /// held-back rows).
    pub fn new(checkpoint: &Checkpoint, encoded: Bytes, fallback: Option<&FeatureMoments>) -> Self {
        Self {
            model_version: checkpoint.model_version,
            checkpoint: encoded,
            predictor: predictor(checkpoint, fallback),
        }
    }

    /// Why this model cannot answer predictions yet, if it cannot.
    fn unready(&self) -> Option<String> {
        if self.model_version == 0 {
            return Some("no round has been committed yet: the model is untrained".into());
        }
        self.predictor.as_ref().err().cloned()
    }
}

fn predictor(checkpoint: &Checkpoint, fallback: Option<&FeatureMoments>) -> Result<Predictor, String> {
    let Some(spec) = checkpoint.spec.hbp() else {
        return Err(format!("this coordinator trains a {}, which has no prediction", checkpoint.spec));
    };
    let moments = checkpoint.feature_moments.as_ref().filter(|m| m.count > 0).or(fallback);
    let Some(standardization) = moments.and_then(Standardization::from_moments) else {
        return Err("no feature statistics to standardise raw features with (yet): clients send none under \
                    differential privacy; give the coordinator --eval-data rows"
            .into());
    };
    Predictor::new(spec, checkpoint.served_params(), Some(standardization)).map_err(|e| e.to_string())
}

/// A prediction request for the inference thread.
struct Job {
    rows: Vec<Vec<f32>>,
    reply: oneshot::Sender<Result<(Vec<Prediction>, u64), ApiError>>,
}

/// Shared by every handler.
#[derive(Clone)]
struct Api {
    jobs: std_mpsc::SyncSender<Job>,
    model: watch::Receiver<Option<Arc<ServedModel>>>,
    metrics: Arc<Metrics>,
    auth: Auth,
}

/// Binds the API's listener (so that a bad address fails at start).
pub async fn bind(config: &HttpConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.listen).await.with_context(|| format!("binding HTTP {}", config.listen))
}

/// Serves the API on `listener` until `shutdown`; starts (and ends with it) the inference thread.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    config: HttpConfig,
    model: watch::Receiver<Option<Arc<ServedModel>>>,
    metrics: Arc<Metrics>,
    tokens: Option<BTreeSet<String>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (jobs, queue) = std_mpsc::sync_channel(QUEUE);
    let thread_model = model.clone();
    let inference = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || inference_loop(&queue, &thread_model))
        .context("starting the inference thread")?;
    let auth = Auth::new(tokens);
    let api = Api { jobs, model, metrics, auth: auth.clone() };
    let app = Router::new()
        .route("/v1/model", get(model_file))
        .route("/v1/model/json", get(model_json))
        .route("/readyz", get(readyz))
        .route("/activez", get(|| async { json_response(StatusCode::OK, &json!({ "active": true })) }))
        .route("/metrics", get(metrics_text))
        .with_state(api.clone())
        .merge(flotilla_serve::prediction_routes(api, auth, config.max_rows))
        .fallback(flotilla_serve::not_found)
        .layer(DefaultBodyLimit::max(config.max_body));
    tracing::info!(listen = %listener.local_addr()?, "HTTP API listening");
    let served = flotilla_serve::serve(listener, tls, app, config.limits, shutdown.cancelled_owned()).await;
    // The router (and with it the last job sender) is gone: the thread ends.
    let _ = tokio::task::spawn_blocking(move || inference.join()).await;
    served.context("HTTP API")
}

/// Takes every waiting job, predicts all their rows in one pass with the latest model and
/// answers each; ends when every sender is gone.
fn inference_loop(queue: &std_mpsc::Receiver<Job>, model: &watch::Receiver<Option<Arc<ServedModel>>>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        let mut rows = jobs[0].rows.len();
        while rows < COALESCE_ROWS {
            match queue.try_recv() {
                Ok(job) => {
                    rows += job.rows.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let served = model.borrow().clone();
        let ready = served.as_ref().ok_or_else(|| "no model yet".to_string()).and_then(|served| {
            match (served.unready(), &served.predictor) {
                (None, Ok(predictor)) => Ok((predictor, served.model_version)),
                (Some(reason), _) => Err(reason),
                (None, Err(reason)) => Err(reason.clone()),
            }
        });
        let (predictor, version) = match ready {
            Ok(ready) => ready,
            Err(reason) => {
                for job in jobs {
                    let _ = job.reply.send(Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason.clone())));
                }
                continue;
            }
        };
        // Rows were checked by the handlers; a failure here fails every request of the pass,
        // and a bug (a panic) fails them with a 500 without taking the thread down.
        let all: Vec<&[f32]> = jobs.iter().flat_map(|job| job.rows.iter().map(Vec::as_slice)).collect();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| predictor.predict(&all)));
        let Ok(outcome) = outcome else {
            tracing::error!(rows = all.len(), "the prediction pass panicked; its requests get a 500");
            for job in jobs {
                let _ = job.reply.send(Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")));
            }
            continue;
        };
        match outcome {
            Ok(predictions) => {
                let mut predictions = predictions.into_iter();
                for job in jobs {
                    let mine: Vec<Prediction> = predictions.by_ref().take(job.rows.len()).collect();
                    let _ = job.reply.send(Ok((mine, version)));
                }
            }
            Err(error) => {
                for job in jobs {
                    let _ = job.reply.send(Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())));
                }
            }
        }
    }
}

impl Backend for Api {
    /// Checks `rows` against the served model's shape, then has them predicted.
    async fn predict(&self, rows: Vec<Vec<f32>>) -> Result<(Vec<Prediction>, u64), ApiError> {
        // Checked here, so that one bad request never fails the others of a coalesced pass.
        let checked = match self.model.borrow().as_ref().map(|m| &m.predictor) {
            Some(Ok(predictor)) => predictor.check_rows(&rows),
            _ => Ok(()),
        };
        checked.map_err(|error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.jobs.try_send(Job { rows, reply }).map_err(|error| match error {
            std_mpsc::TrySendError::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded: try again"),
            std_mpsc::TrySendError::Disconnected(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the inference thread has stopped")
            }
        })?;
        answer.await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the inference thread has stopped"))?
    }

    fn served(&self, route: &'static str, rows: usize, seconds: f64) {
        self.metrics.predicted(route, rows, seconds);
    }
}

async fn model_file(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(error) = api.auth.check(&headers) {
        return error.into_response();
    }
    let served = api.model.borrow().clone();
    match served {
        Some(served) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::HeaderName::from_static("x-flotilla-model-version"), served.model_version.to_string()),
            ],
            served.checkpoint.clone(),
        )
            .into_response(),
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no model yet").into_response(),
    }
}

async fn model_json(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(error) = api.auth.check(&headers) {
        return error.into_response();
    }
    let served = api.model.borrow().clone();
    match served.as_ref().map(|served| (served.model_version, &served.predictor)) {
        Some((version, Ok(predictor))) => {
            let mut value = predictor.to_json();
            value["model_version"] = json!(version);
            json_response(StatusCode::OK, &value)
        }
        Some((_, Err(reason))) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason.clone()).into_response(),
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no model yet").into_response(),
    }
}

/// The API of a standby coordinator (one waiting for the lease): alive, neither active nor
/// ready, until `shutdown` (it acquired the lease, or stops).
pub async fn standby(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: flotilla_serve::ConnectionLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let waiting = || async {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "active": false, "ready": false, "reason": "standing by: another coordinator holds the lease" }),
        )
    };
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &json!({ "status": "ok", "role": "standby" })) }),
        )
        .route("/readyz", get(waiting))
        .route("/activez", get(waiting))
        .fallback(waiting);
    tracing::info!(listen = %listener.local_addr()?, "HTTP API listening (standby)");
    flotilla_serve::serve(listener, tls, app, limits, shutdown.cancelled_owned()).await.context("HTTP API (standby)")
}

async fn readyz(State(api): State<Api>) -> Response {
    let served = api.model.borrow().clone();
    match served.as_ref().map(|served| (served.model_version, served.unready())) {
        Some((version, None)) => json_response(StatusCode::OK, &json!({ "ready": true, "model_version": version })),
        Some((version, Some(reason))) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "model_version": version, "reason": reason }),
        ),
        None => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "ready": false, "reason": "no model yet" })),
    }
}

async fn metrics_text(State(api): State<Api>, headers: HeaderMap) -> Response {
    if let Err(error) = api.auth.check(&headers) {
        return error.into_response();
    }
    match api.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded").into_response(),
    }
}
