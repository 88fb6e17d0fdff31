//! The prediction API both daemons serve over HTTP (the coordinator with the global model,
//! a device with its own): one definition of the routes, bodies, errors and auth.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/predict` | `{"features":[…]}` → `{"class":k,"probabilities":[…],"model_version":v}` |
//! | `POST /v1/predict/batch` | `{"rows":[[…],…]}` or a `text/csv` body (an optional header line) → `{"classes":[…],"probabilities":[[…]],"model_version":v}` |
//! | `GET /healthz` | 200 while the process serves |
//!
//! A daemon implements [`Backend`] (how rows are predicted and by which model version) and
//! adds its own routes (readiness, the model file, metrics) with [`json_response`],
//! [`ApiError`] and [`Auth`]. Every refusal is a 4xx (or 503) with a JSON body
//! `{"error": "…"}`. [`serve`] runs the router on a TCP listener, or over HTTPS through
//! [`tls::TlsListener`], within [`ConnectionLimits`].
//!
//! Module map: this file (routes, bodies, errors, tokens); [`accept`] (the accept loop and its
//! limits); [`tls`] (the HTTPS listener).

pub mod accept;
pub mod tls;

pub use accept::ConnectionLimits;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use flotilla_protocol::model::Prediction;
use flotilla_protocol::round::coordinator::token_accepted;
use serde::Deserialize;
use serde_json::json;

/// A refusal: a status and a message, sent as `{"error": message}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// A refusal with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({ "error": self.message }))
    }
}

/// `value` as a JSON response with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Bearer tokens a request must carry, when configured.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<BTreeSet<String>>>,
}

impl Auth {
    /// Requests need one of `tokens` (`None`: no token needed).
    pub fn new(tokens: Option<BTreeSet<String>>) -> Self {
        Self { tokens: tokens.map(Arc::new) }
    }

    /// Refuses a request without an accepted `Authorization: Bearer TOKEN` header, when
    /// tokens are configured; tokens are compared in constant time.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(token) if token_accepted(tokens, token) => Ok(()),
            Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "token not accepted")),
            None => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer TOKEN)"))
            }
        }
    }
}

/// How a daemon predicts rows.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Predicts `rows` (checked here against the model's shape: a bad row fails its request
    /// alone, with a 422) with the served model; returns one prediction per row and the
    /// model's version.
    fn predict(&self, rows: Vec<Vec<f32>>) -> impl Future<Output = Result<(Vec<Prediction>, u64), ApiError>> + Send;

    /// Told after each answered request: the route (`predict` or `batch`), rows and seconds.
    fn served(&self, _route: &'static str, _rows: usize, _seconds: f64) {}
}

#[derive(Clone)]
struct Routes<B> {
    backend: B,
    auth: Auth,
    max_rows: usize,
}

/// `/v1/predict`, `/v1/predict/batch` (at most `max_rows` rows) and `/healthz` on `backend`.
/// The caller adds its other routes, a body limit and a fallback.
pub fn prediction_routes<B: Backend>(backend: B, auth: Auth, max_rows: usize) -> Router {
    Router::new()
        .route("/v1/predict", post(predict_one::<B>))
        .route("/v1/predict/batch", post(predict_batch::<B>))
        .route("/healthz", get(|| async { json_response(StatusCode::OK, &json!({ "status": "ok" })) }))
        .with_state(Routes { backend, auth, max_rows })
}

/// The answer to an unknown route.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {error}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct One {
    features: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Many {
    rows: Vec<Vec<f32>>,
}

async fn predict_one<B: Backend>(
    State(routes): State<Routes<B>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = async {
        routes.auth.check(&headers)?;
        let One { features } = parse_json(&body(raw)?)?;
        let (mut predictions, version) = routes.backend.predict(vec![features]).await?;
        let Prediction { class, probabilities } = predictions
            .pop()
            .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no prediction came back"))?;
        Ok::<_, ApiError>((1, json!({ "class": class, "probabilities": probabilities, "model_version": version })))
    }
    .await;
    respond(&routes.backend, "predict", started, answer)
}

async fn predict_batch<B: Backend>(
    State(routes): State<Routes<B>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = async {
        routes.auth.check(&headers)?;
        let bytes = body(raw)?;
        let csv = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim_start().starts_with("text/csv"));
        let rows = if csv { parse_csv(&bytes, routes.max_rows)? } else { parse_json::<Many>(&bytes)?.rows };
        if rows.len() > routes.max_rows {
            let (found, max) = (rows.len(), routes.max_rows);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{found} rows; at most {max} per request"),
            ));
        }
        if rows.is_empty() {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no rows"));
        }
        let count = rows.len();
        let (predictions, version) = routes.backend.predict(rows).await?;
        let classes: Vec<usize> = predictions.iter().map(|p| p.class).collect();
        let probabilities: Vec<Vec<f32>> = predictions.into_iter().map(|p| p.probabilities).collect();
        Ok::<_, ApiError>((
            count,
            json!({ "classes": classes, "probabilities": probabilities, "model_version": version }),
        ))
    }
    .await;
    respond(&routes.backend, "batch", started, answer)
}

/// A route's response: the answer (its row count told to the backend with the time since
/// `started`), or the error.
fn respond<B: Backend>(
    backend: &B,
    route: &'static str,
    started: Instant,
    answer: Result<(usize, serde_json::Value), ApiError>,
) -> Response {
    match answer {
        Ok((rows, value)) => {
            backend.served(route, rows, started.elapsed().as_secs_f64());
            json_response(StatusCode::OK, &value)
        }
        Err(error) => error.into_response(),
    }
}

/// Rows of comma-separated numbers; a first line that is not all numbers is a header.
fn parse_csv(bytes: &[u8], max_rows: usize) -> Result<Vec<Vec<f32>>, ApiError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "CSV body is not UTF-8"))?;
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed: Result<Vec<f32>, _> = line.split(',').map(|field| field.trim().parse::<f32>()).collect();
        match parsed {
            Ok(row) => rows.push(row),
            Err(_) if index == 0 => continue, // a header
            Err(error) => {
                let line_number = index + 1;
                return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("CSV line {line_number}: {error}")));
            }
        }
        if rows.len() > max_rows {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("more than {max_rows} rows per request")));
        }
    }
    Ok(rows)
}

/// Serves `app` on `listener` (over TLS with `tls`) within `limits` until `shutdown`
/// completes (see [`accept`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => accept::serve_connections(listener, app, limits, shutdown).await,
        Some(tls) => accept::serve_connections(tls::TlsListener::new(listener, tls)?, app, limits, shutdown).await,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_bodies_skip_a_header_and_name_bad_lines() {
        assert_eq!(parse_csv(b"a,b\n1,2\n\n3, 4\n", 10).unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(parse_csv(b"1,2\nx,3\n", 10).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(parse_csv(b"1\n2\n3\n", 2).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(parse_csv(&[0xff, 0xfe], 2).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn tokens_are_required_where_configured() {
        let mut headers = HeaderMap::new();
        assert!(Auth::default().check(&headers).is_ok());
        let auth = Auth::new(Some(["secret".to_string()].into()));
        assert_eq!(auth.check(&headers).unwrap_err().status, StatusCode::UNAUTHORIZED);
        headers.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(auth.check(&headers).unwrap_err().message.contains("not accepted"));
        headers.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        assert!(auth.check(&headers).is_ok());
    }
}
