//! Durable state: the checkpoint (written atomically) and the per-round metrics log.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
pub use flotilla_net::persist::write_atomically;
use flotilla_protocol::checkpoint::Checkpoint;

/// File name of the checkpoint inside the data directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.bin";
/// File name of the per-round metrics log inside the data directory.
pub const ROUNDS_FILE: &str = "rounds.jsonl";

/// File name of the stateless-reset key inside the data directory.
pub const RESET_KEY_FILE: &str = "reset.key";

/// The 32-byte key of QUIC stateless resets kept at `path` (owner-only), created on first
/// use: a restarted coordinator resets its predecessor's connections, so clients notice the
/// crash at their next packet instead of after the idle timeout.
pub fn load_or_create_reset_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    match fs::read(path) {
        Ok(bytes) => {
            return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                anyhow::anyhow!("{} is not a 32-byte reset key; delete it to make a new one", path.display())
            });
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    }
    let key = flotilla_net::tls::os_random().context("the operating system's random generator failed")?;
    // Written owner-only from the start, then renamed into place: never readable by others,
    // never half-written.
    let temp = path.with_extension("tmp");
    let write = || -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = fs::remove_file(&temp);
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(&key)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

/// The checkpoint at `path`, `None` if there is none. A file that is not a valid
/// checkpoint is an error naming it: it is never ignored, and never overwritten by a fresh start.
pub fn load_checkpoint(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading checkpoint {}", path.display())),
    };
    Checkpoint::decode(&bytes).map(Some).with_context(|| {
        format!(
            "checkpoint {} is unusable; refusing to start (restore a good copy, or move it away to start afresh)",
            path.display()
        )
    })
}

/// Writes `checkpoint` atomically to `path`; returns the bytes written.
pub fn save_checkpoint(path: &Path, checkpoint: &Checkpoint) -> anyhow::Result<Vec<u8>> {
    let bytes = checkpoint.encode().context("encoding the checkpoint")?;
    write_atomically(path, &bytes).with_context(|| format!("writing checkpoint {}", path.display()))?;
    Ok(bytes)
}

/// Where the coordinator's checkpoints live: `DATA_DIR/checkpoint.bin` (rewritten atomically),
/// or an object store (`--checkpoint-url`: one object per model version, each created once).
#[derive(Debug, Clone)]
pub enum Checkpoints {
    /// A file.
    File(PathBuf),
    /// An object store.
    Store(crate::store::CheckpointStore),
}

impl Checkpoints {
    /// Where, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Store(store) => store.url().to_owned(),
        }
    }

    /// The newest checkpoint, `None` if there is none; an unusable one is an error.
    pub async fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        match self {
            Self::File(path) => load_checkpoint(path),
            Self::Store(store) => Ok(store.latest().await?),
        }
    }

    /// Makes `checkpoint` durable; returns its encoding. In a store, a model version another
    /// coordinator has committed is refused ([`crate::store::StoreError::Fenced`]).
    pub async fn save(&self, checkpoint: &Checkpoint) -> anyhow::Result<Vec<u8>> {
        match self {
            Self::File(path) => save_checkpoint(path, checkpoint),
            Self::Store(store) => {
                let bytes = checkpoint.encode().context("encoding the checkpoint")?;
                store.commit(checkpoint.model_version, bytes.clone()).await?;
                Ok(bytes)
            }
        }
    }
}

/// One line of `rounds.jsonl` (the endpoint fills it at commit, the server adds the
/// evaluation and appends it).
pub use flotilla_net::endpoint::RoundRecord;

/// Appends one JSON line to `path`.
pub fn append_record(path: &Path, record: &RoundRecord) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(record).context("encoding a round record")?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(&line).with_context(|| format!("appending to {}", path.display()))?;
    file.sync_data().with_context(|| format!("syncing {}", path.display()))
}

/// Paths of the durable files of a data directory.
#[derive(Debug, Clone)]
pub struct DataFiles {
    /// `checkpoint.bin`.
    pub checkpoint: PathBuf,
    /// `rounds.jsonl`.
    pub rounds: PathBuf,
    /// `reset.key`.
    pub reset_key: PathBuf,
}

impl DataFiles {
    /// The files of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            checkpoint: data_dir.join(CHECKPOINT_FILE),
            rounds: data_dir.join(ROUNDS_FILE),
            reset_key: data_dir.join(RESET_KEY_FILE),
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_learner::hbp::HbpConfig;
    use flotilla_protocol::params::{Layout, ParameterVector, Segment};

    use super::*;

    fn checkpoint(round: u64) -> Checkpoint {
        let layout = Layout::new(vec![Segment { name: "w".into(), shape: vec![3] }]);
        let params = ParameterVector::new(&layout, vec![1.0, 2.0, 3.0]).unwrap();
        Checkpoint {
            round,
            model_version: round,
            spec: HbpConfig::new(2, 2).into(),
            params,
            served: None,
            accountant: None,
            adaptive_clip: None,
            feature_moments: None,
        }
    }

    #[test]
    fn the_reset_key_is_kept_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESET_KEY_FILE);
        let key = load_or_create_reset_key(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_reset_key(&path).unwrap(), key, "a restart keeps the key");
        fs::write(&path, b"short").unwrap();
        let error = format!("{:#}", load_or_create_reset_key(&path).unwrap_err());
        assert!(error.contains("not a 32-byte reset key"), "{error}");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        assert!(load_checkpoint(&path).unwrap().is_none());
        save_checkpoint(&path, &checkpoint(1)).unwrap();
        save_checkpoint(&path, &checkpoint(2)).unwrap();
        assert_eq!(load_checkpoint(&path).unwrap(), Some(checkpoint(2)));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [CHECKPOINT_FILE]);
    }

    #[test]
    fn truncated_or_corrupt_checkpoint_is_a_named_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let bytes = checkpoint(3).encode().unwrap();
        fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let message = format!("{:#}", load_checkpoint(&path).unwrap_err());
        assert!(message.contains("checkpoint.bin") && message.contains("truncated"), "{message}");
        let mut corrupt = bytes.clone();
        corrupt[30] ^= 0xff;
        fs::write(&path, &corrupt).unwrap();
        let message = format!("{:#}", load_checkpoint(&path).unwrap_err());
        assert!(message.contains("checkpoint.bin") && message.contains("checksum"), "{message}");
    }

    #[test]
    fn records_are_appended_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROUNDS_FILE);
        let record = RoundRecord {
            round: 1,
            model_version: 1,
            participants: 2,
            samples: 10,
            mean_local_error: Some(0.5),
            global_error_pct: None,
            start_global_error_pct: None,
            duration_s: 0.25,
            bytes_in: 100,
            bytes_out: 200,
            udp_bytes: 0,
            epsilon: None,
            unix_time: 1.0,
        };
        append_record(&path, &record).unwrap();
        append_record(&path, &RoundRecord { round: 2, ..record.clone() }).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<RoundRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], record);
        assert!(text.contains("\"global_error_pct\":null"));
    }
}
