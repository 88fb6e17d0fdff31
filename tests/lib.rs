//! Helpers for the workspace's end-to-end tests: run the real binaries, split bundled data,
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test support: a failure here is a test failure")]
//! read the coordinator's `rounds.jsonl`.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The folder holding the workspace's built binaries (next to this test's executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("test executables live in target/<profile>/deps");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// The path of a workspace binary, e.g. `flotilla-client`.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is not built; run `cargo build --release --workspace` first", path.display());
    path
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binding an ephemeral UDP port");
    socket.local_addr().expect("bound socket has an address").port()
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Daemon {
    /// Name for messages.
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `binary args…`, stdout and stderr to `dir/name.out` and `dir/name.log`.
    pub fn start(name: &str, binary: &Path, args: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("creating a log file");
        let stdout = std::fs::File::create(dir.join(format!("{name}.out"))).expect("creating an output file");
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Self { name: name.to_string(), child: Some(child), log }
    }

    /// Sends SIGKILL and waits for the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The process's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Splits the bundled `data/phishing.csv`: `shards` interleaved training shards of the first
/// `train_rows` rows, and the rest as the coordinator's held-back evaluation rows.
/// Returns the shard paths and the evaluation path.
pub fn split_phishing(dir: &Path, shards: usize, train_rows: usize) -> (Vec<PathBuf>, PathBuf) {
    let text = std::fs::read_to_string(repo_root().join("data/phishing.csv")).expect("bundled data");
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    let rows: Vec<&str> = lines.collect();
    let write = |path: &Path, body: &mut dyn Iterator<Item = &&str>| {
        let mut out = format!("{header}\n");
        for row in body {
            out.push_str(row);
            out.push('\n');
        }
        std::fs::write(path, out).expect("writing a shard");
    };
    let paths: Vec<PathBuf> = (0..shards)
        .map(|s| {
            let path = dir.join(format!("shard{s}.csv"));
            write(&path, &mut rows[..train_rows].iter().skip(s).step_by(shards));
            path
        })
        .collect();
    let eval = dir.join("eval.csv");
    write(&eval, &mut rows[train_rows..].iter());
    (paths, eval)
}

/// The coordinator's per-round records so far.
pub fn rounds(data_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data_dir.join("rounds.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Waits until `done(records)` holds, panicking with `what` and the logs after `timeout`.
pub fn wait_for_rounds(
    data_dir: &Path,
    timeout: Duration,
    what: &str,
    logs: &[&Daemon],
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = rounds(data_dir);
        if done(&records) {
            return records;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|d| format!("--- {}\n{}", d.name, tail(&d.log(), 30))).collect();
            panic!("timed out waiting for {what}; rounds: {records:?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
