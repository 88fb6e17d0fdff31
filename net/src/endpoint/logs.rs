//! Log budgets: what a peer makes the coordinator log is limited per source address, so a
//! flood of bad connections cannot flood the logs (and the disk). Peer-supplied text is
//! escaped before it reaches a log line ([`flotilla_protocol::round::sanitize_peer_text`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines one address may cause per [`WINDOW`].
pub(crate) const LINES_PER_WINDOW: u32 = 10;
/// Length of a budget window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond, new addresses share one budget.
const MAX_TRACKED: usize = 4096;

/// Per-address budgets of log lines (cheap to clone, shared by every connection task).
#[derive(Debug, Clone, Default)]
pub(crate) struct LogBudget {
    inner: Arc<Mutex<HashMap<Option<IpAddr>, Window>>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether a line caused by `ip` may be logged now; when a window closes with lines
    /// suppressed, says how many (once).
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut windows = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&Some(ip)) {
            windows.retain(|_, w| now.duration_since(w.started) < WINDOW);
        }
        let key = if windows.len() >= MAX_TRACKED && !windows.contains_key(&Some(ip)) { None } else { Some(ip) };
        let window = windows.entry(key).or_insert(Window { started: now, lines: 0, suppressed: 0 });
        if now.duration_since(window.started) >= WINDOW {
            if window.suppressed > 0 {
                let source = key.map_or_else(|| "many addresses".to_string(), |ip| ip.to_string());
                tracing::warn!(%source, suppressed = window.suppressed, "log lines about this source were suppressed");
            }
            *window = Window { started: now, lines: 0, suppressed: 0 };
        }
        if window.lines < LINES_PER_WINDOW {
            window.lines += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_lines_per_window_then_silence() {
        let budget = LogBudget::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| budget.allow_at(a, t0)).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        assert!(budget.allow_at(b, t0), "another address has its own budget");
        assert!(budget.allow_at(a, t0 + WINDOW), "a new window");
    }
}
