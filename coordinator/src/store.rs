//! Checkpoints in an object store (`--checkpoint-url`): one object per model version, each
//! created with a conditional put (create-if-absent), so that two coordinators can never both
//! commit the same version. The version in the object's name is the fencing token: a stale
//! coordinator (one that lost its lease, or never had one) finds its next version taken and
//! stops instead of overwriting the active one's work.
//!
//! Layout under the URL's path: `checkpoint-<model version, 20 digits>.bin`, the same bytes as
//! `checkpoint.bin` in a data directory (the newest [`KEEP`] are kept), and `reset.key`, the
//! QUIC stateless-reset key the coordinators sharing the store share.
//!
//! Stores: `file:///…` and `memory://` always; `s3://`, `gs://` and `az://`/`abfss://` when
//! built with the `cloud` feature (credentials from the environment, as each SDK reads them:
//! `AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).

use std::fmt;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use flotilla_protocol::checkpoint::Checkpoint;

/// Checkpoints kept in the store (older ones are deleted after each commit).
pub const KEEP: usize = 3;

const NAME_PREFIX: &str = "checkpoint-";
const NAME_SUFFIX: &str = ".bin";
const RESET_KEY_NAME: &str = "reset.key";

/// What can go wrong with a checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one this build can open.
    #[error("{url:?} is not a usable store URL: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Another coordinator already committed this model version.
    #[error(
        "model version {model_version} is already in {url}: another coordinator committed it (this one is stale \
         and stops; restart it to resume from the store's newest checkpoint)"
    )]
    Fenced {
        /// The store.
        url: String,
        /// The version this coordinator tried to commit.
        model_version: u64,
    },
    /// A stored checkpoint that does not decode.
    #[error("checkpoint {location} in {url} is unusable ({reason}); refusing to start (restore or delete it)")]
    Corrupt {
        /// The store.
        url: String,
        /// The object.
        location: String,
        /// The decoder's message.
        reason: String,
    },
    /// The store refused or failed an operation.
    #[error("{operation} in {url}: {source}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// The store.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// Opens `url` as an object store: the store and the path inside it.
pub fn open_url(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
    let bad = |reason: String| StoreError::Url { url: url.to_owned(), reason };
    let parsed = Url::parse(url).map_err(|e| {
        bad(format!("{e} (give a URL such as file:///var/lib/flotilla/checkpoints or s3://bucket/prefix)"))
    })?;
    if parsed.scheme() == "file" && parsed.to_file_path().is_err() {
        return Err(bad("a file:// URL needs an absolute path".into()));
    }
    // The cloud builders read their settings from lower-case keys (`aws_region`, …); the
    // environment's upper-case variables are passed on as such.
    let options = std::env::vars().filter_map(|(key, value)| {
        let key = key.to_ascii_lowercase();
        ["aws_", "google_", "azure_"].iter().any(|p| key.starts_with(p)).then_some((key, value))
    });
    let (store, path) = object_store::parse_url_opts(&parsed, options).map_err(|e| {
        let hint = match parsed.scheme() {
            "s3" | "s3a" | "gs" | "az" | "adl" | "azure" | "abfs" | "abfss" if !cfg!(feature = "cloud") => {
                " (this build has no cloud stores: build flotilla-coordinator with --features cloud)"
            }
            _ => "",
        };
        bad(format!("{e}{hint}"))
    })?;
    Ok((Arc::from(store), path))
}

/// The checkpoints of one coordinator (or of a root and its standby) in an object store.
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointStore").field("url", &self.url).finish()
    }
}

impl CheckpointStore {
    /// The store at `url` (see the module documentation for the schemes).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        // Nothing is created here (a reader must not make directories): a local store's
        // directories are made by its first write.
        let (store, prefix) = open_url(url)?;
        Ok(Self::new(store, prefix, url))
    }

    /// Checkpoints under `prefix` of `store` (tests: an in-memory store shared by two coordinators).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, url: &str) -> Self {
        Self { store, prefix, url: url.to_owned() }
    }

    /// The store's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn location(&self, model_version: u64) -> Path {
        self.prefix.clone().join(format!("{NAME_PREFIX}{model_version:020}{NAME_SUFFIX}"))
    }

    fn error(&self, operation: &'static str) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        move |source| StoreError::Store { operation, url: self.url.clone(), source }
    }

    /// The model versions stored, ascending.
    async fn versions(&self) -> Result<Vec<(u64, Path)>, StoreError> {
        let listed: Vec<_> = match self.store.list(Some(&self.prefix)).try_collect().await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => return Err(self.error("listing checkpoints")(source)),
        };
        let mut versions: Vec<(u64, Path)> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
                let version = digits.parse().ok()?;
                Some((version, meta.location))
            })
            .collect();
        versions.sort_by_key(|(version, _)| *version);
        Ok(versions)
    }

    /// The newest checkpoint, `None` when the store holds none. One that does not decode is
    /// an error: it is never skipped for an older one (that would silently roll back).
    pub async fn latest(&self) -> Result<Option<Checkpoint>, StoreError> {
        let Some((_, location)) = self.versions().await?.pop() else {
            return Ok(None);
        };
        let bytes = self
            .store
            .get(&location)
            .await
            .map_err(self.error("reading the newest checkpoint"))?
            .bytes()
            .await
            .map_err(self.error("reading the newest checkpoint"))?;
        Checkpoint::decode(&bytes).map(Some).map_err(|e| StoreError::Corrupt {
            url: self.url.clone(),
            location: location.to_string(),
            reason: e.to_string(),
        })
    }

    /// The QUIC stateless-reset key shared by the coordinators of this store, created by the
    /// first that asks (a conditional put: all of them end up with the same key). A standby
    /// that takes over then resets the clients' connections to its dead predecessor at their
    /// next packet, instead of after the idle timeout. Anyone who can read the store can forge
    /// such resets (as anyone who can read a checkpoint has the model): guard it alike.
    pub async fn reset_key(&self) -> Result<[u8; 32], StoreError> {
        let location = self.prefix.clone().join(RESET_KEY_NAME);
        for _ in 0..3 {
            match self.store.get(&location).await {
                Ok(got) => {
                    let bytes = got.bytes().await.map_err(self.error("reading the reset key"))?;
                    return <[u8; 32]>::try_from(bytes.as_ref()).map_err(|_| StoreError::Corrupt {
                        url: self.url.clone(),
                        location: location.to_string(),
                        reason: format!("{} bytes, not a 32-byte key", bytes.len()),
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(self.error("reading the reset key")(source)),
            }
            let key = flotilla_net::tls::os_random().ok_or_else(|| StoreError::Url {
                url: self.url.clone(),
                reason: "the operating system's random generator failed".into(),
            })?;
            let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
            match self.store.put_opts(&location, PutPayload::from(key.to_vec()), options).await {
                Ok(_) => return Ok(key),
                // Another coordinator created it first: read theirs.
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {}
                Err(source) => return Err(self.error("writing the reset key")(source)),
            }
        }
        Err(StoreError::Corrupt {
            url: self.url.clone(),
            location: location.to_string(),
            reason: "created by another coordinator but not readable".into(),
        })
    }

    /// Commits `encoded` (the encoding of a checkpoint at `model_version`) if and only if no
    /// coordinator has committed that version yet; then deletes all but the newest [`KEEP`].
    pub async fn commit(&self, model_version: u64, encoded: Vec<u8>) -> Result<(), StoreError> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&self.location(model_version), PutPayload::from(encoded), options).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                return Err(StoreError::Fenced { url: self.url.clone(), model_version });
            }
            Err(source) => return Err(self.error("writing a checkpoint")(source)),
        }
        let versions = self.versions().await?;
        let stale = versions.len().saturating_sub(KEEP);
        for (_, location) in versions.into_iter().take(stale) {
            // A failed clean-up costs space, never correctness.
            if let Err(error) = self.store.delete(&location).await {
                tracing::warn!(%location, error = %error, "could not delete an old checkpoint");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use flotilla_protocol::model::ModelSpec;
    use flotilla_protocol::params::ParameterVector;
    use object_store::memory::InMemory;

    fn checkpoint(model_version: u64) -> Checkpoint {
        let spec = ModelSpec::Vector { len: 4 };
        let params = ParameterVector::new(&spec.layout(), vec![model_version as f32; 4]).unwrap();
        let mut checkpoint = Checkpoint::initial(spec, params);
        checkpoint.round = model_version;
        checkpoint.model_version = model_version;
        checkpoint
    }

    async fn commit(store: &CheckpointStore, version: u64) -> Result<(), StoreError> {
        store.commit(version, checkpoint(version).encode().unwrap()).await
    }

    #[tokio::test]
    async fn newest_wins_and_old_ones_are_pruned() {
        let store = CheckpointStore::new(Arc::new(InMemory::new()), Path::from("fleet"), "memory://fleet");
        assert!(store.latest().await.unwrap().is_none());
        for version in 0..=9 {
            commit(&store, version).await.unwrap();
        }
        assert_eq!(store.latest().await.unwrap(), Some(checkpoint(9)));
        let kept: Vec<u64> = store.versions().await.unwrap().into_iter().map(|(v, _)| v).collect();
        assert_eq!(kept, vec![7, 8, 9]);
    }

    #[tokio::test]
    async fn a_stale_writer_is_fenced() {
        let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let active = CheckpointStore::new(shared.clone(), Path::from("root"), "memory://root");
        let stale = CheckpointStore::new(shared, Path::from("root"), "memory://root");
        commit(&active, 5).await.unwrap();
        // The stale coordinator (also at version 4) tries to commit version 5: refused, and
        // the active one's checkpoint is untouched.
        let error = stale.commit(5, checkpoint(4).encode().unwrap()).await.unwrap_err();
        assert!(matches!(error, StoreError::Fenced { model_version: 5, .. }), "{error}");
        assert!(error.to_string().contains("another coordinator committed it"), "{error}");
        assert_eq!(active.latest().await.unwrap(), Some(checkpoint(5)));
    }

    #[tokio::test]
    async fn local_files_fence_too() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path().join("ckpt")).unwrap().to_string();
        let first = CheckpointStore::open(&url).unwrap();
        let second = CheckpointStore::open(&url).unwrap();
        assert!(first.latest().await.unwrap().is_none());
        commit(&first, 0).await.unwrap();
        commit(&first, 1).await.unwrap();
        assert!(matches!(commit(&second, 1).await, Err(StoreError::Fenced { .. })));
        commit(&second, 2).await.unwrap();
        assert_eq!(first.latest().await.unwrap(), Some(checkpoint(2)));
    }

    #[tokio::test]
    async fn a_corrupt_newest_checkpoint_is_an_error_not_a_rollback() {
        let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = CheckpointStore::new(shared.clone(), Path::from("x"), "memory://x");
        commit(&store, 1).await.unwrap();
        shared.put(&store.location(2), PutPayload::from(b"not a checkpoint".to_vec())).await.unwrap();
        let error = store.latest().await.unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    }

    #[tokio::test]
    async fn coordinators_of_a_store_share_one_reset_key() {
        let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let first = CheckpointStore::new(shared.clone(), Path::from("r"), "memory://r");
        let second = CheckpointStore::new(shared.clone(), Path::from("r"), "memory://r");
        let key = first.reset_key().await.unwrap();
        assert_eq!(second.reset_key().await.unwrap(), key);
        assert_ne!(CheckpointStore::new(shared, Path::from("other"), "memory://o").reset_key().await.unwrap(), key);
        // The key is not mistaken for a checkpoint.
        assert!(first.latest().await.unwrap().is_none());
    }

    #[test]
    fn bad_urls_say_why() {
        let message = CheckpointStore::open("checkpoints/here").unwrap_err().to_string();
        assert!(message.contains("file:///"), "{message}");
        let message = CheckpointStore::open("ftp://example.com/x").unwrap_err().to_string();
        assert!(message.contains("ftp://example.com/x"), "{message}");
        if !cfg!(feature = "cloud") {
            let message = CheckpointStore::open("s3://bucket/prefix").unwrap_err().to_string();
            assert!(message.contains("--features cloud"), "{message}");
        }
    }
}
