//! The leader lease as a Kubernetes `Lease` (coordination.k8s.io/v1): `--lease-url
//! k8s://NAMESPACE/NAME`, through kube-rs.
//!
//! The record maps onto the Lease's spec: the holder is `holderIdentity`, the fencing epoch
//! `leaseTransitions`, the renewal `renewTime`, the duration `leaseDurationSeconds` (whole
//! seconds, rounded up; the exact milliseconds ride in an annotation, so a sub-second test
//! lease keeps its duration). The conditional swap is Kubernetes' optimistic concurrency: a
//! create fails when the object exists, a replace when its `resourceVersion` moved on (409).
//!
//! The client comes from the environment, as `kubectl`'s does: the pod's service account in a
//! cluster (it needs `get`, `create` and `update` on `leases` in NAMESPACE: deploy/k8s grants
//! them), otherwise `$KUBECONFIG` or `~/.kube/config`.

use std::fmt;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;

use super::{LeaseBackend, LeaseError, LeaseRecord, RecordVersion};
use crate::store::StoreError;

/// The annotation holding the lease duration in milliseconds.
const DURATION_MS: &str = "flotilla.dev/lease-duration-ms";

/// A `Lease` object in a Kubernetes namespace.
pub struct KubeLease {
    namespace: String,
    name: String,
    url: String,
    /// Made on first use (reading the environment's configuration is async).
    api: OnceCell<Api<Lease>>,
}

impl KubeLease {
    /// The lease named by `k8s://NAMESPACE/NAME` (names as Kubernetes spells them: lowercase
    /// letters, digits, `-` and `.`); its client is made on first use.
    pub fn open(url: &str) -> Result<Self, LeaseError> {
        let bad = |reason: &str| LeaseError::Store(StoreError::Url { url: url.to_owned(), reason: reason.to_owned() });
        let rest = url.strip_prefix("k8s://").ok_or_else(|| bad("a Kubernetes lease is k8s://NAMESPACE/NAME"))?;
        let (namespace, name) =
            rest.split_once('/').ok_or_else(|| bad("a Kubernetes lease is k8s://NAMESPACE/NAME"))?;
        for (what, value, longest) in [("namespace", namespace, 63), ("name", name, 253)] {
            let valid = !value.is_empty()
                && value.len() <= longest
                && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !valid {
                return Err(bad(&format!(
                    "the lease's {what} {value:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.', \
                     at most {longest} characters)"
                )));
            }
        }
        Ok(Self { namespace: namespace.to_owned(), name: name.to_owned(), url: url.to_owned(), api: OnceCell::new() })
    }

    /// The same lease through `client` (a client of a local API server).
    #[cfg(test)]
    fn with_client(client: kube::Client, namespace: &str, name: &str) -> Self {
        let url = format!("k8s://{namespace}/{name}");
        let api = OnceCell::new_with(Some(Api::namespaced(client, namespace)));
        Self { namespace: namespace.to_owned(), name: name.to_owned(), url, api }
    }

    async fn api(&self) -> Result<&Api<Lease>, LeaseError> {
        self.api
            .get_or_try_init(|| async {
                let client = kube::Client::try_default().await.map_err(self.failed("connecting to Kubernetes"))?;
                Ok(Api::namespaced(client, &self.namespace))
            })
            .await
    }

    fn failed(&self, operation: &'static str) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
        move |source| LeaseError::Service { operation, url: self.url.clone(), source: Box::new(source) }
    }

    fn corrupt(&self, reason: impl Into<String>) -> LeaseError {
        LeaseError::Corrupt { url: self.url.clone(), reason: reason.into() }
    }

    /// The record a stored Lease holds (a Lease nobody holds reads as an expired one).
    fn record_of(&self, lease: &Lease) -> Result<LeaseRecord, LeaseError> {
        let spec = lease.spec.clone().unwrap_or_default();
        let annotated = lease.metadata.annotations.as_ref().and_then(|a| a.get(DURATION_MS));
        let duration_ms = match annotated {
            Some(text) => text.parse().map_err(|_| self.corrupt(format!("annotation {DURATION_MS} is {text:?}")))?,
            None => u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0).saturating_mul(1000),
        };
        let renewed_unix_ms = spec.renew_time.map_or(0, |t| u64::try_from(t.0.as_millisecond()).unwrap_or(0));
        Ok(LeaseRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            epoch: u64::try_from(spec.lease_transitions.unwrap_or(0)).unwrap_or(0),
            renewed_unix_ms,
            duration_ms,
        })
    }

    /// The Lease object holding `record` (with `resource_version` for a replace).
    fn lease_of(&self, record: &LeaseRecord, resource_version: Option<String>) -> Result<Lease, LeaseError> {
        let millis = i64::try_from(record.renewed_unix_ms).map_err(|_| self.corrupt("renewal time out of range"))?;
        let renew_time = Timestamp::from_millisecond(millis).map_err(|e| self.corrupt(e.to_string()))?;
        let seconds = i32::try_from(record.duration_ms.div_ceil(1000).max(1)).unwrap_or(i32::MAX);
        let annotations = [(DURATION_MS.to_owned(), record.duration_ms.to_string())].into();
        Ok(Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(record.holder.clone()),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(i32::try_from(record.epoch).unwrap_or(i32::MAX)),
                renew_time: Some(MicroTime(renew_time)),
                ..LeaseSpec::default()
            }),
        })
    }
}

impl fmt::Display for KubeLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[async_trait::async_trait]
impl LeaseBackend for KubeLease {
    async fn read(&self) -> Result<Option<(LeaseRecord, RecordVersion)>, LeaseError> {
        let api = self.api().await?;
        let Some(lease) = api.get_opt(&self.name).await.map_err(self.failed("reading the lease"))? else {
            return Ok(None);
        };
        let version = lease.metadata.resource_version.clone().ok_or_else(|| self.corrupt("no resourceVersion"))?;
        Ok(Some((self.record_of(&lease)?, RecordVersion::Resource(version))))
    }

    async fn swap(&self, expected: Option<&RecordVersion>, record: &LeaseRecord) -> Result<bool, LeaseError> {
        let api = self.api().await?;
        let written = match expected {
            None => api.create(&PostParams::default(), &self.lease_of(record, None)?).await,
            Some(RecordVersion::Resource(version)) => {
                let lease = self.lease_of(record, Some(version.clone()))?;
                api.replace(&self.name, &PostParams::default(), &lease).await
            }
            // Another backend's version cannot match a Kubernetes object: the record changed hands.
            Some(_) => return Ok(false),
        };
        match written {
            Ok(_) => Ok(true),
            // Created or changed by another writer since our read (or deleted: read again).
            Err(kube::Error::Api(status))
                if status.is_already_exists() || status.is_conflict() || status.is_not_found() =>
            {
                Ok(false)
            }
            Err(source) => Err(self.failed("writing the lease")(source)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use serde_json::{Value, json};

    use super::*;

    /// The one Lease a fake API server stores, with its resourceVersion.
    type Stored = Arc<Mutex<Option<(Value, u64)>>>;

    fn status(code: StatusCode, reason: &str) -> (StatusCode, String) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": reason, "reason": reason, "code": code.as_u16()});
        (code, body.to_string())
    }

    fn stamped(mut lease: Value, version: u64) -> Value {
        lease["metadata"]["resourceVersion"] = json!(version.to_string());
        lease["apiVersion"] = json!("coordination.k8s.io/v1");
        lease["kind"] = json!("Lease");
        lease
    }

    /// A Kubernetes API server that keeps one namespace's Leases with Kubernetes' optimistic
    /// concurrency: create refuses an existing name (409 AlreadyExists), replace a stale
    /// resourceVersion (409 Conflict).
    async fn api_server() -> (String, tokio::task::JoinHandle<()>) {
        let stored: Stored = Arc::default();
        let one = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}";
        let all = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases";
        let app = Router::new()
            .route(
                one,
                get(|State(s): State<Stored>, Path((_, _)): Path<(String, String)>| async move {
                    match &*s.lock().unwrap() {
                        Some((lease, version)) => (StatusCode::OK, stamped(lease.clone(), *version).to_string()),
                        None => status(StatusCode::NOT_FOUND, "NotFound"),
                    }
                })
                .put(
                    |State(s): State<Stored>, Path((_, _)): Path<(String, String)>, body: Bytes| async move {
                        let lease: Value = serde_json::from_slice(&body).unwrap();
                        let mut stored = s.lock().unwrap();
                        match &*stored {
                            None => status(StatusCode::NOT_FOUND, "NotFound"),
                            Some((_, version))
                                if lease["metadata"]["resourceVersion"] != json!(version.to_string()) =>
                            {
                                status(StatusCode::CONFLICT, "Conflict")
                            }
                            Some((_, version)) => {
                                let next = version + 1;
                                *stored = Some((lease.clone(), next));
                                (StatusCode::OK, stamped(lease, next).to_string())
                            }
                        }
                    },
                ),
            )
            .route(
                all,
                post(|State(s): State<Stored>, Path(_): Path<String>, body: Bytes| async move {
                    let lease: Value = serde_json::from_slice(&body).unwrap();
                    let mut stored = s.lock().unwrap();
                    if stored.is_some() {
                        return status(StatusCode::CONFLICT, "AlreadyExists");
                    }
                    *stored = Some((lease.clone(), 1));
                    (StatusCode::CREATED, stamped(lease, 1).to_string())
                }),
            )
            .with_state(stored);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, server)
    }

    fn lease_at(url: &str) -> Arc<dyn LeaseBackend> {
        let config = kube::Config::new(url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Arc::new(KubeLease::with_client(client, "flotilla", "flotilla-coordinator"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kubernetes_lease_is_exclusive_and_fails_over() {
        let (url, server) = api_server().await;
        super::super::tests::exclusive(lease_at(&url)).await;
        server.abort();
    }

    #[tokio::test]
    async fn a_second_writer_with_the_same_version_is_refused() {
        let (url, server) = api_server().await;
        let (a, b) = (lease_at(&url), lease_at(&url));
        let record = |holder: &str, epoch| LeaseRecord {
            holder: holder.into(),
            epoch,
            renewed_unix_ms: 1_700_000_000_123,
            duration_ms: 2_500,
        };
        assert!(a.swap(None, &record("a", 1)).await.unwrap());
        assert!(!b.swap(None, &record("b", 1)).await.unwrap(), "create refuses an existing lease");
        let (stored, version) = a.read().await.unwrap().unwrap();
        assert_eq!(stored, record("a", 1), "the record survives the round trip, milliseconds included");
        assert!(b.swap(Some(&version), &record("b", 2)).await.unwrap());
        assert!(!a.swap(Some(&version), &record("a", 2)).await.unwrap(), "a stale version is refused");
        assert_eq!(a.read().await.unwrap().unwrap().0.holder, "b");
        server.abort();
    }

    #[test]
    fn urls_name_a_namespace_and_a_lease() {
        let lease = KubeLease::open("k8s://flotilla/flotilla-coordinator").unwrap();
        assert_eq!((lease.namespace.as_str(), lease.name.as_str()), ("flotilla", "flotilla-coordinator"));
        for bad in ["k8s://flotilla", "k8s:///name", "k8s://Flotilla/x", "k8s://ns/", "k8s://ns/-x", "s3://b/x"] {
            assert!(KubeLease::open(bad).is_err(), "{bad}");
        }
    }
}
