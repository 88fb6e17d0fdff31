//! `flotilla-client run --http ADDR`: this device's own model behind the coordinator's
//! prediction API (`flotilla-serve`), for an application on the device. Requests go to the
//! learner thread, which answers them between two rows with the prediction the next stream
//! row would get (the personalised mix where personalisation is on); `/readyz` is 200 once
//! the device has a model.

use std::sync::mpsc::{SyncSender, TrySendError};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use flotilla_serve::{ApiError, Auth, Backend, Prediction, json_response};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::options::DeviceHttp;
use super::worker::{PredictJob, PredictRefusal};

/// Requests waiting for the learner thread before more are turned away (503).
pub const QUEUE: usize = 256;
/// Largest request body.
const MAX_BODY: usize = 64 << 20;

/// Hands requests to the learner thread.
#[derive(Clone)]
struct Device {
    jobs: SyncSender<PredictJob>,
}

impl Backend for Device {
    async fn predict(&self, rows: Vec<Vec<f32>>) -> Result<(Vec<Prediction>, u64), ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs.try_send(PredictJob { rows, reply }).map_err(|error| match error {
            TrySendError::Full(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded: try again"),
            TrySendError::Disconnected(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the learner has stopped"),
        })?;
        match answer.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(PredictRefusal::NotReady(reason))) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)),
            Ok(Err(PredictRefusal::BadRow(reason))) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)),
            Err(_) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the learner has stopped")),
        }
    }
}

async fn readyz(State(device): State<Device>) -> Response {
    match device.predict(Vec::new()).await {
        Ok((_, version)) => json_response(StatusCode::OK, &json!({ "ready": true, "model_version": version })),
        Err(error) => json_response(error.status, &json!({ "ready": false, "reason": error.message })),
    }
}

/// Binds the API's listener (so that a bad address fails at start).
pub async fn bind(settings: &DeviceHttp) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(settings.listen).await.with_context(|| format!("binding HTTP {}", settings.listen))
}

/// Serves the device's API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    settings: DeviceHttp,
    jobs: SyncSender<PredictJob>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let device = Device { jobs };
    let app = Router::new()
        .route("/readyz", get(readyz))
        .with_state(device.clone())
        .merge(flotilla_serve::prediction_routes(device, Auth::new(settings.tokens), settings.max_rows))
        .fallback(flotilla_serve::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    tracing::info!(listen = %listener.local_addr()?, "device HTTP API listening");
    flotilla_serve::serve(listener, None, app, flotilla_serve::ConnectionLimits::DEFAULT, shutdown.cancelled_owned())
        .await
}
