//! The coordinator's Prometheus metrics (`GET /metrics` of the HTTP API), fed by the
//! endpoint's events ([`Observer`]), the persister's round records and the predictions served.

use std::sync::atomic::AtomicU64;

use flotilla_net::endpoint::{Observer, RoundRecord};
use flotilla_protocol::round::CoordinatorEvent;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A reason label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// A prediction endpoint label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

/// Every metric, registered once under the `flotilla_` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rounds_committed: Counter,
    rounds_failed: Family<Reason, Counter>,
    round_duration: Histogram,
    participants: Gauge,
    samples: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    updates_accepted: Counter,
    updates_refused: Family<Reason, Counter>,
    clients_joined: Gauge,
    model_version: Gauge,
    global_error: Gauge<f64, AtomicU64>,
    epsilon: Gauge<f64, AtomicU64>,
    predicted_rows: Family<Route, Counter>,
    prediction_latency: Family<Route, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let metrics = Self {
            rounds_committed: Counter::default(),
            rounds_failed: Family::default(),
            round_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            participants: Gauge::default(),
            samples: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            updates_accepted: Counter::default(),
            updates_refused: Family::default(),
            clients_joined: Gauge::default(),
            model_version: Gauge::default(),
            global_error: Gauge::default(),
            epsilon: Gauge::default(),
            predicted_rows: Family::default(),
            prediction_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1e-5, 2.0, 20))),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("rounds_committed", "Rounds committed", metrics.rounds_committed.clone());
        r.register("rounds_failed", "Rounds failed, by reason", metrics.rounds_failed.clone());
        r.register("round_duration_seconds", "Round start to commit", metrics.round_duration.clone());
        r.register("round_participants", "Updates folded into the last committed round", metrics.participants.clone());
        r.register("round_samples", "Samples behind the committed rounds' updates", metrics.samples.clone());
        r.register(
            "received_bytes",
            "Stream bytes received from clients in committed rounds",
            metrics.bytes_in.clone(),
        );
        r.register("sent_bytes", "Frame bytes queued to clients in committed rounds", metrics.bytes_out.clone());
        r.register("updates_accepted", "Updates accepted", metrics.updates_accepted.clone());
        r.register("updates_refused", "Updates refused, by reason", metrics.updates_refused.clone());
        r.register("clients_joined", "Clients joined now", metrics.clients_joined.clone());
        r.register("model_version", "Version of the global model", metrics.model_version.clone());
        r.register(
            "global_error_ratio",
            "Error of the served model on the held-back rows (0 to 1)",
            metrics.global_error.clone(),
        );
        r.register(
            "dp_epsilon",
            "Differential privacy spent so far (epsilon at the configured delta)",
            metrics.epsilon.clone(),
        );
        r.register("predicted_rows", "Rows predicted over HTTP, by endpoint", metrics.predicted_rows.clone());
        r.register(
            "prediction_latency_seconds",
            "Request to response of the HTTP prediction endpoints",
            metrics.prediction_latency.clone(),
        );
        Self { registry, ..metrics }
    }

    /// A committed round as the persister recorded it (with its evaluation).
    pub fn record(&self, record: &RoundRecord) {
        self.round_duration.observe(record.duration_s);
        self.participants.set(i64::try_from(record.participants).unwrap_or(i64::MAX));
        self.samples.inc_by(record.samples);
        self.bytes_in.inc_by(record.bytes_in);
        self.bytes_out.inc_by(record.bytes_out);
        self.model_version.set(i64::try_from(record.model_version).unwrap_or(i64::MAX));
        if let Some(pct) = record.global_error_pct {
            self.global_error.set(pct / 100.0);
        }
        if let Some(epsilon) = record.epsilon {
            self.epsilon.set(epsilon);
        }
    }

    /// The model version a run starts from.
    pub fn start(&self, model_version: u64, global_error_pct: Option<f64>) {
        self.model_version.set(i64::try_from(model_version).unwrap_or(i64::MAX));
        if let Some(pct) = global_error_pct {
            self.global_error.set(pct / 100.0);
        }
    }

    /// `rows` rows predicted by `route` in `seconds`.
    pub fn predicted(&self, route: &'static str, rows: usize, seconds: f64) {
        let route = Route { route };
        self.predicted_rows.get_or_create(&route).inc_by(rows as u64);
        self.prediction_latency.get_or_create(&route).observe(seconds);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl Observer for Metrics {
    fn observe(&self, event: &CoordinatorEvent, joined: usize) {
        self.clients_joined.set(i64::try_from(joined).unwrap_or(i64::MAX));
        match event {
            CoordinatorEvent::RoundCommitted { .. } => {
                self.rounds_committed.inc();
            }
            CoordinatorEvent::RoundFailed { reason, .. } => {
                self.rounds_failed.get_or_create(&Reason { reason: reason.label() }).inc();
            }
            CoordinatorEvent::UpdateAccepted { .. } => {
                self.updates_accepted.inc();
            }
            CoordinatorEvent::UpdateRefused { reason, .. } => {
                self.updates_refused.get_or_create(&Reason { reason: reason.label() }).inc();
            }
            _ => {}
        }
    }
}
