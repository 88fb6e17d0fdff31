//! Child processes the simulator starts, and the guarantee that it leaves none behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A started process, SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Name for messages.
    pub name: String,
    /// Where its stderr goes.
    pub log: PathBuf,
    child: Option<Child>,
}

/// The environment the deployment files (deploy/: the container images, the systemd unit, the
/// Kubernetes manifests) give the coordinator, which benchmarks give it too: one glibc malloc
/// arena. Per-thread arenas each keep the model-sized blocks freed in them (a 1M-parameter
/// fleet of 50 measured 120-133 MiB peak with the default arenas, 92 MiB with one, at the
/// same round time).
pub const COORDINATOR_ENV: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "1")];

impl Proc {
    /// Starts `binary args…` with stdout to `stdout` and stderr to `log`.
    pub fn start(name: &str, binary: &Path, args: &[String], stdout: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(name, binary, args, stdout, log, &[])
    }

    /// Like [`Proc::start`], with `env` added to the child's environment.
    pub fn start_with_env(
        name: &str,
        binary: &Path,
        args: &[String],
        stdout: &Path,
        log: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let filter = std::env::var("FLEET_CHILD_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(name, binary, args, stdout, log, &filter, env)
    }

    /// Like [`Proc::start_with_env`], with `filter` as the child's `RUST_LOG`.
    pub fn start_logging(
        name: &str,
        binary: &Path,
        args: &[String],
        stdout: &Path,
        log: &Path,
        filter: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let out = std::fs::File::create(stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", filter)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} ({})", name, binary.display()))?;
        Ok(Self { name: name.to_string(), log: log.to_path_buf(), child: Some(child) })
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(success)` once the process has exited (reaped), `None` while it runs.
    pub fn exited(&mut self) -> Option<bool> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.success())
            }
            Ok(None) => None,
            Err(_) => Some(false),
        }
    }

    /// Sends SIGTERM (by PID), without waiting.
    pub fn signal_term(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits until `deadline` for the process to exit; SIGKILLs it past that. Whether it exited 0.
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            match self.exited() {
                Some(success) => return success,
                None if self.child.is_none() => return false,
                None => std::thread::sleep(Duration::from_millis(25)),
            }
        }
        self.kill();
        false
    }

    /// SIGTERM, then up to `timeout` for a clean exit, then SIGKILL. Whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        if self.child.is_none() {
            return false;
        }
        self.signal_term();
        self.wait_until(Instant::now() + timeout)
    }

    /// SIGKILL (by PID) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Set once SIGINT or SIGTERM reaches the simulator.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Watches SIGINT (Ctrl-C) and SIGTERM on a background thread.
    pub fn install() -> anyhow::Result<Self> {
        let flag = Self::default();
        let set = flag.0.clone();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_io().build().context("starting the signal watcher")?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                runtime.block_on(async {
                    #[cfg(unix)]
                    let terminate = async {
                        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                            Ok(mut signal) => {
                                signal.recv().await;
                            }
                            Err(_) => std::future::pending::<()>().await,
                        }
                    };
                    #[cfg(not(unix))]
                    let terminate = std::future::pending::<()>();
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate => {}
                    }
                });
                set.store(true, Ordering::SeqCst);
            })
            .context("starting the signal watcher")?;
        Ok(flag)
    }

    /// Whether a signal came.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// An error if a signal came.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.is_set() { anyhow::bail!("interrupted; every process started was stopped") } else { Ok(()) }
    }
}
