//! The leader lease (`--lease-url`): of the coordinators pointed at one lease, one is active
//! (it binds, serves and commits rounds); the others stand by until the lease expires, then
//! one takes it over and resumes from the shared checkpoint (`--checkpoint-url`).
//!
//! The rule is [`decide`], a pure function of the stored [`LeaseRecord`], the caller and the
//! time; the backends only read the record and swap it conditionally ([`LeaseBackend`]):
//! - [`ObjectLease`]: an object written with conditional puts (create-if-absent, then
//!   update-if-unchanged by ETag): `s3://`, `gs://`, `az://` (feature `cloud`) and
//!   `memory://` (one process: tests).
//! - [`FileLease`]: a JSON file swapped under an exclusive `flock` on a lock file beside it:
//!   coordinators on one host, or on a shared POSIX volume whose locks work across hosts.
//! - `kubernetes::KubeLease` (feature `kubernetes`, on by default): a Kubernetes `Lease`
//!   object, `k8s://NAMESPACE/NAME`, swapped by its `resourceVersion`.
//!
//! Expiry is judged by wall clocks: the hosts' clocks must agree to well within the lease
//! duration (NTP does). An active coordinator that cannot renew stops serving before its lease
//! could have expired anywhere; and should two ever overlap, the checkpoint store's
//! conditional create (one object per model version) still lets only one commit a round.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::store::{StoreError, open_url};

#[cfg(feature = "kubernetes")]
mod kubernetes;

/// The stored state of a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it (`--lease-holder`).
    pub holder: String,
    /// Bumped at every change of holder: the fencing epoch.
    pub epoch: u64,
    /// When the holder last renewed it (Unix milliseconds).
    pub renewed_unix_ms: u64,
    /// How long a renewal lasts (milliseconds).
    pub duration_ms: u64,
}

impl LeaseRecord {
    fn expires_unix_ms(&self) -> u64 {
        self.renewed_unix_ms.saturating_add(self.duration_ms)
    }
}

/// What [`decide`] says a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this record (acquire, take over or renew).
    Write(LeaseRecord),
    /// Another holder's lease is live for `remaining_ms` more.
    Wait {
        /// The live holder.
        holder: String,
        /// Milliseconds until it expires.
        remaining_ms: u64,
    },
}

/// The lease rule: a free or expired lease goes to `me` (a new epoch); my own is renewed
/// (same epoch); another's live lease is waited for.
pub fn decide(current: Option<&LeaseRecord>, me: &str, now_unix_ms: u64, duration: Duration) -> Decision {
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let write = |epoch| {
        Decision::Write(LeaseRecord { holder: me.to_owned(), epoch, renewed_unix_ms: now_unix_ms, duration_ms })
    };
    match current {
        None => write(1),
        Some(record) if record.holder == me => write(record.epoch),
        Some(record) if now_unix_ms >= record.expires_unix_ms() => write(record.epoch.saturating_add(1)),
        Some(record) => {
            Decision::Wait { holder: record.holder.clone(), remaining_ms: record.expires_unix_ms() - now_unix_ms }
        }
    }
}

/// An opaque version of a stored record, for the conditional swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordVersion {
    /// An object's ETag and version.
    Object(UpdateVersion),
    /// A file's exact bytes.
    File(Vec<u8>),
    /// A Kubernetes object's `resourceVersion`.
    Resource(String),
}

/// What went wrong with a lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store could not be opened or refused an operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored record is not a lease.
    #[error("the lease at {url} is not a lease record ({reason}); delete it to start afresh")]
    Corrupt {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// This process no longer holds the lease.
    #[error("lost the lease at {url}: {reason}; stopped serving (another coordinator is active or takes over)")]
    Lost {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// The coordination service refused or failed an operation.
    #[error("{operation} at {url}: {source}")]
    Service {
        /// What was being done.
        operation: &'static str,
        /// Where.
        url: String,
        /// The service's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A lease file or its lock failed.
    #[error("lease file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Where a lease record lives: read it, and swap it only if unchanged since that read.
#[async_trait::async_trait]
pub trait LeaseBackend: Send + Sync + fmt::Display {
    /// The stored record and its version; `None` when there is none.
    async fn read(&self) -> Result<Option<(LeaseRecord, RecordVersion)>, LeaseError>;
    /// Writes `record` if the stored one is still `expected` (`None`: still absent).
    /// `Ok(false)` when another writer got there first.
    async fn swap(&self, expected: Option<&RecordVersion>, record: &LeaseRecord) -> Result<bool, LeaseError>;
}

/// Opens the lease at `url`: `file:///…` is a [`FileLease`], `k8s://NAMESPACE/NAME` a
/// Kubernetes `Lease`, anything else an [`ObjectLease`].
pub fn open(url: &str) -> Result<Arc<dyn LeaseBackend>, LeaseError> {
    if url.starts_with("k8s://") {
        #[cfg(feature = "kubernetes")]
        return Ok(Arc::new(kubernetes::KubeLease::open(url)?));
        #[cfg(not(feature = "kubernetes"))]
        return Err(LeaseError::Store(StoreError::Url {
            url: url.to_owned(),
            reason: "this coordinator was built without the `kubernetes` feature".into(),
        }));
    }
    if let Ok(parsed) = Url::parse(url)
        && parsed.scheme() == "file"
    {
        let path = parsed.to_file_path().map_err(|()| StoreError::Url {
            url: url.to_owned(),
            reason: "a file:// URL needs an absolute path".into(),
        })?;
        return Ok(Arc::new(FileLease::new(path)));
    }
    let (store, location) = open_url(url)?;
    Ok(Arc::new(ObjectLease { store, location, url: url.to_owned() }))
}

/// A lease object in an object store with conditional puts.
pub struct ObjectLease {
    store: Arc<dyn ObjectStore>,
    location: Path,
    url: String,
}

impl ObjectLease {
    /// The lease at `location` of `store` (tests: an in-memory store shared by coordinators).
    pub fn new(store: Arc<dyn ObjectStore>, location: Path) -> Self {
        let url = format!("{store}/{location}");
        Self { store, location, url }
    }

    fn failed(&self, operation: &'static str) -> impl FnOnce(object_store::Error) -> LeaseError + '_ {
        move |source| LeaseError::Store(StoreError::Store { operation, url: self.url.clone(), source })
    }
}

impl fmt::Display for ObjectLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[async_trait::async_trait]
impl LeaseBackend for ObjectLease {
    async fn read(&self) -> Result<Option<(LeaseRecord, RecordVersion)>, LeaseError> {
        let got = match self.store.get(&self.location).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(self.failed("reading the lease")(source)),
        };
        let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
        let bytes = got.bytes().await.map_err(self.failed("reading the lease"))?;
        let record = serde_json::from_slice(&bytes)
            .map_err(|e| LeaseError::Corrupt { url: self.url.clone(), reason: e.to_string() })?;
        Ok(Some((record, RecordVersion::Object(version))))
    }

    async fn swap(&self, expected: Option<&RecordVersion>, record: &LeaseRecord) -> Result<bool, LeaseError> {
        let mode = match expected {
            None => PutMode::Create,
            Some(RecordVersion::Object(version)) => PutMode::Update(version.clone()),
            // Another backend's version cannot match an object: the record changed hands.
            Some(RecordVersion::File(_) | RecordVersion::Resource(_)) => return Ok(false),
        };
        let bytes = serde_json::to_vec(record)
            .map_err(|e| LeaseError::Corrupt { url: self.url.clone(), reason: e.to_string() })?;
        let options = PutOptions { mode, ..PutOptions::default() };
        match self.store.put_opts(&self.location, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(source) => Err(self.failed("writing the lease")(source)),
        }
    }
}

/// A lease file swapped under an exclusive lock on `<file>.lock`.
#[derive(Clone)]
pub struct FileLease {
    path: PathBuf,
    lock: PathBuf,
}

impl FileLease {
    /// The lease file at `path`.
    pub fn new(path: PathBuf) -> Self {
        let mut lock = path.clone().into_os_string();
        lock.push(".lock");
        Self { path, lock: PathBuf::from(lock) }
    }

    fn file_error(&self, path: &std::path::Path) -> impl FnOnce(io::Error) -> LeaseError {
        let path = path.to_path_buf();
        move |source| LeaseError::File { path, source }
    }

    fn read_bytes(&self) -> Result<Option<Vec<u8>>, LeaseError> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.file_error(&self.path)(error)),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<LeaseRecord, LeaseError> {
        serde_json::from_slice(bytes)
            .map_err(|e| LeaseError::Corrupt { url: self.path.display().to_string(), reason: e.to_string() })
    }

    /// Holds the lock while `f` runs (released when the file closes).
    fn locked<T>(&self, f: impl FnOnce() -> Result<T, LeaseError>) -> Result<T, LeaseError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(self.file_error(dir))?;
        }
        let lock: File = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(self.file_error(&self.lock))?;
        lock.lock().map_err(self.file_error(&self.lock))?;
        f()
    }

    fn swap_blocking(&self, expected: Option<&RecordVersion>, record: &LeaseRecord) -> Result<bool, LeaseError> {
        self.locked(|| {
            let current = self.read_bytes()?;
            let unchanged = match (expected, &current) {
                (None, None) => true,
                (Some(RecordVersion::File(seen)), Some(now)) => seen == now,
                _ => false,
            };
            if !unchanged {
                return Ok(false);
            }
            let bytes = serde_json::to_vec(record)
                .map_err(|e| LeaseError::Corrupt { url: self.path.display().to_string(), reason: e.to_string() })?;
            flotilla_net::persist::write_atomically(&self.path, &bytes).map_err(self.file_error(&self.path))?;
            Ok(true)
        })
    }
}

impl fmt::Display for FileLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

#[async_trait::async_trait]
impl LeaseBackend for FileLease {
    async fn read(&self) -> Result<Option<(LeaseRecord, RecordVersion)>, LeaseError> {
        let lease = self.clone();
        let read = tokio::task::spawn_blocking(move || lease.locked(|| lease.read_bytes()));
        let Some(bytes) = read.await.map_err(|e| self.file_error(&self.path)(io::Error::other(e)))?? else {
            return Ok(None);
        };
        let record = self.decode(&bytes)?;
        Ok(Some((record, RecordVersion::File(bytes))))
    }

    async fn swap(&self, expected: Option<&RecordVersion>, record: &LeaseRecord) -> Result<bool, LeaseError> {
        let (lease, expected, record) = (self.clone(), expected.cloned(), record.clone());
        let swap = tokio::task::spawn_blocking(move || lease.swap_blocking(expected.as_ref(), &record));
        swap.await.map_err(|e| self.file_error(&self.path)(io::Error::other(e)))?
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This process's side of a lease: who it is, how long a renewal lasts.
#[derive(Clone)]
pub struct Leadership {
    backend: Arc<dyn LeaseBackend>,
    holder: String,
    duration: Duration,
}

/// A lease this process holds.
#[derive(Debug, Clone)]
pub struct Held {
    /// The record written.
    pub record: LeaseRecord,
    version: Option<RecordVersion>,
    /// When (by this process's monotonic clock) the write was started: the lease is ours until
    /// `renewed + duration` at the latest.
    renewed: Instant,
}

impl Held {
    /// The fencing epoch.
    pub fn epoch(&self) -> u64 {
        self.record.epoch
    }
}

impl Leadership {
    /// `holder` (unique among the coordinators sharing the lease) holding `backend` for
    /// `duration` at a time.
    pub fn new(backend: Arc<dyn LeaseBackend>, holder: String, duration: Duration) -> Self {
        Self { backend, holder, duration }
    }

    /// How often the holder renews and a standby looks: a quarter of the duration.
    fn interval(&self) -> Duration {
        (self.duration / 4).max(Duration::from_millis(50))
    }

    /// One attempt: acquire, take over or renew; `Ok(Err(Decision::Wait { .. }))` while another
    /// holds it.
    pub async fn try_hold(&self) -> Result<Result<Held, Decision>, LeaseError> {
        let started = Instant::now();
        let current = self.backend.read().await?;
        let decision = decide(current.as_ref().map(|(record, _)| record), &self.holder, now_unix_ms(), self.duration);
        let Decision::Write(record) = decision else {
            return Ok(Err(decision));
        };
        let expected = current.as_ref().map(|(_, version)| version);
        match self.write(expected, record, started).await? {
            Some(held) => Ok(Ok(held)),
            // Someone wrote between our read and our swap; look again.
            None => Ok(Err(Decision::Wait { holder: "another coordinator".into(), remaining_ms: 0 })),
        }
    }

    /// Writes `record` if the stored one is still `expected` (an attempt `started` then): the
    /// lease held, with the version of what was written (the next write's precondition), or
    /// `None` when another writer got there first.
    async fn write(
        &self,
        expected: Option<&RecordVersion>,
        record: LeaseRecord,
        started: Instant,
    ) -> Result<Option<Held>, LeaseError> {
        if !self.backend.swap(expected, &record).await? {
            return Ok(None);
        }
        let version = match self.backend.read().await? {
            Some((stored, version)) if stored == record => Some(version),
            _ => None,
        };
        Ok(Some(Held { record, version, renewed: started }))
    }

    /// Waits until this process holds the lease, or `shutdown` is cancelled (`Ok(None)`).
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Result<Option<Held>, LeaseError> {
        let poll = self.interval();
        let mut announced = None;
        loop {
            // Look again every quarter of the duration, and just after the holder's lease
            // expires: a dead holder is replaced within the lease's duration.
            let mut wait = poll;
            match self.try_hold().await? {
                Ok(held) => {
                    tracing::info!(lease = %self.backend, holder = %self.holder, epoch = held.epoch(), "holding the lease: active");
                    return Ok(Some(held));
                }
                Err(Decision::Wait { holder, remaining_ms }) => {
                    wait = wait.min(Duration::from_millis(remaining_ms.saturating_add(5)));
                    if announced.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.backend, active = %holder, expires_in_ms = remaining_ms,
                            "standing by: another coordinator holds the lease");
                        announced = Some(holder);
                    }
                }
                Err(Decision::Write(_)) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Renews `held` every quarter of the duration until `stop` is cancelled, then releases
    /// it. Cancels `lost` and returns an error when the lease is lost (another holder took it)
    /// or could not be renewed before it would expire.
    pub async fn keep(
        &self,
        mut held: Held,
        stop: CancellationToken,
        lost: CancellationToken,
    ) -> Result<(), LeaseError> {
        let every = self.interval();
        loop {
            let deadline = held.renewed + self.duration;
            tokio::select! {
                () = stop.cancelled() => {
                    self.release(&held).await;
                    return Ok(());
                }
                () = tokio::time::sleep(every) => {}
            }
            let renewal = tokio::time::timeout_at(deadline.into(), self.renew(&held)).await;
            match renewal {
                Ok(Ok(Some(renewed))) => held = renewed,
                Ok(Ok(None)) => {
                    lost.cancel();
                    return Err(LeaseError::Lost {
                        url: self.backend.to_string(),
                        reason: format!("{} no longer holds it: another coordinator took it over", self.holder),
                    });
                }
                Ok(Err(error)) if Instant::now() + every < deadline => {
                    tracing::warn!(lease = %self.backend, error = %error, "renewing the lease failed; retrying");
                }
                Ok(Err(error)) => {
                    lost.cancel();
                    return Err(error);
                }
                Err(_) => {
                    lost.cancel();
                    return Err(LeaseError::Lost {
                        url: self.backend.to_string(),
                        reason: "could not renew it before it expired".into(),
                    });
                }
            }
        }
    }

    /// One renewal: `None` when the stored record is no longer ours.
    async fn renew(&self, held: &Held) -> Result<Option<Held>, LeaseError> {
        let started = Instant::now();
        let record = LeaseRecord { renewed_unix_ms: now_unix_ms(), ..held.record.clone() };
        let expected = match &held.version {
            Some(version) => version.clone(),
            None => match self.backend.read().await? {
                Some((stored, version)) if stored.holder == self.holder && stored.epoch == held.epoch() => version,
                _ => return Ok(None),
            },
        };
        self.write(Some(&expected), record, started).await
    }

    /// Gives the lease up (a standby takes over at once instead of after the expiry).
    async fn release(&self, held: &Held) {
        let record = LeaseRecord { renewed_unix_ms: 0, ..held.record.clone() };
        match self.backend.swap(held.version.as_ref(), &record).await {
            Ok(true) => tracing::info!(lease = %self.backend, "lease released"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(lease = %self.backend, error = %error, "releasing the lease failed; it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use object_store::memory::InMemory;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_rule() {
        let Decision::Write(first) = decide(None, "a", 1_000, SECOND) else { panic!() };
        assert_eq!((first.holder.as_str(), first.epoch, first.expires_unix_ms()), ("a", 1, 2_000));
        // Live and someone else's: wait, with what remains.
        assert_eq!(decide(Some(&first), "b", 1_400, SECOND), Decision::Wait { holder: "a".into(), remaining_ms: 600 });
        // Mine: renewed in the same epoch.
        let Decision::Write(renewed) = decide(Some(&first), "a", 1_900, SECOND) else { panic!() };
        assert_eq!((renewed.epoch, renewed.renewed_unix_ms), (1, 1_900));
        // Expired: taken over in a new epoch.
        let Decision::Write(taken) = decide(Some(&renewed), "b", 2_900, SECOND) else { panic!() };
        assert_eq!((taken.holder.as_str(), taken.epoch), ("b", 2));
    }

    /// The lease rule on `backend`: one holder at a time, fail-over within the duration, a
    /// stale holder refused, a clean release handed over at once (every backend's test).
    pub(super) async fn exclusive(backend: Arc<dyn LeaseBackend>) {
        let duration = Duration::from_millis(400);
        let a = Leadership::new(backend.clone(), "a".into(), duration);
        let b = Leadership::new(backend, "b".into(), duration);
        let held = a.try_hold().await.unwrap().unwrap();
        assert_eq!(held.epoch(), 1);
        assert!(matches!(b.try_hold().await.unwrap(), Err(Decision::Wait { .. })));
        // a keeps renewing: b never gets it.
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let keeper = tokio::spawn({
            let (a, stop, lost) = (a.clone(), stop.clone(), lost.clone());
            async move { a.keep(held, stop, lost).await }
        });
        for _ in 0..8 {
            tokio::time::sleep(duration / 4).await;
            assert!(matches!(b.try_hold().await.unwrap(), Err(Decision::Wait { .. })));
        }
        // a stops (as on a crash, without releasing: abort the keeper) and b takes over
        // within the duration, in a new epoch.
        keeper.abort();
        let before = Instant::now();
        let shutdown = CancellationToken::new();
        let held = b.acquire(&shutdown).await.unwrap().unwrap();
        assert!(before.elapsed() <= duration + duration / 4, "{:?}", before.elapsed());
        assert_eq!(held.epoch(), 2);
        assert!(!lost.is_cancelled());
        // a, back, is the one refused now, and a keeper that finds the lease taken reports it lost.
        assert!(matches!(a.try_hold().await.unwrap(), Err(Decision::Wait { .. })));
        let stale = Held {
            record: LeaseRecord { holder: "a".into(), epoch: 1, renewed_unix_ms: 0, duration_ms: 400 },
            version: None,
            renewed: Instant::now(),
        };
        let lost = CancellationToken::new();
        assert!(a.keep(stale, CancellationToken::new(), lost.clone()).await.is_err());
        assert!(lost.is_cancelled());
        // A clean release hands over at once.
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let keeper = tokio::spawn({
            let (b, stop, lost) = (b.clone(), stop.clone(), lost.clone());
            async move { b.keep(held, stop, lost).await }
        });
        stop.cancel();
        keeper.await.unwrap().unwrap();
        assert_eq!(a.try_hold().await.unwrap().unwrap().epoch(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn object_lease_is_exclusive_and_fails_over() {
        exclusive(Arc::new(ObjectLease::new(Arc::new(InMemory::new()), Path::from("lease.json")))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_lease_is_exclusive_and_fails_over() {
        let dir = tempfile::tempdir().unwrap();
        exclusive(Arc::new(FileLease::new(dir.path().join("lease.json")))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_swaps_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let backends: [Arc<dyn LeaseBackend>; 2] = [
            Arc::new(ObjectLease::new(Arc::new(InMemory::new()), Path::from("l"))),
            Arc::new(FileLease::new(dir.path().join("l.json"))),
        ];
        for backend in backends {
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let leadership = Leadership::new(backend.clone(), format!("c{i}"), SECOND);
                    tokio::spawn(async move { leadership.try_hold().await.unwrap().is_ok() })
                })
                .collect();
            let mut winners = 0;
            for task in tasks {
                winners += usize::from(task.await.unwrap());
            }
            assert_eq!(winners, 1, "{backend}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_lease_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease.json");
        fs::write(&path, b"{not json").unwrap();
        let leadership = Leadership::new(Arc::new(FileLease::new(path)), "a".into(), SECOND);
        let message = leadership.try_hold().await.unwrap_err().to_string();
        assert!(message.contains("lease.json") && message.contains("not a lease record"), "{message}");
    }
}
