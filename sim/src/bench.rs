//! Measuring child processes for benchmarks: peak and current resident memory from
//! `/proc`, and the CPU time of reaped children.

use std::collections::HashMap;

/// A `VmHWM`/`VmRSS`-style field of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process's children that have been waited for
/// (`cutime` + `cstime` of `/proc/self/stat`, in clock ticks of 1/100 s).
pub fn reaped_children_cpu_s() -> Option<f64> {
    // cutime and cstime are fields 16 and 17 (1-based).
    stat_cpu_s("self", 16)
}

/// User + system CPU seconds process `pid` (or `"self"`) has used so far, all its threads
/// (`utime` + `stime` of `/proc/<pid>/stat`); `None` once it is gone.
pub fn process_cpu_s(pid: &str) -> Option<f64> {
    // utime and stime are fields 14 and 15 (1-based).
    stat_cpu_s(pid, 14)
}

/// Fields `first` and `first + 1` (1-based, as in proc(5)) of `/proc/<pid>/stat`, clock ticks
/// of 1/100 s, summed, in seconds.
fn stat_cpu_s(pid: &str, first: usize) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(first)? + field(first + 1)?) as f64 / 100.0)
}

/// Peak resident memory seen per process (from polling `VmHWM`, which only grows).
#[derive(Debug, Default)]
pub struct PeakMemory {
    peaks: HashMap<u32, u64>,
}

impl PeakMemory {
    /// Reads the current `VmHWM` of `pid` (a process that already exited keeps its last value).
    pub fn sample(&mut self, pid: u32) {
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            let peak = self.peaks.entry(pid).or_default();
            *peak = (*peak).max(kib);
        }
    }

    /// Peak of one process, MiB.
    pub fn mib(&self, pid: u32) -> f64 {
        self.peaks.get(&pid).copied().unwrap_or(0) as f64 / 1024.0
    }

    /// Sum of the peaks of `pids`, MiB.
    pub fn total_mib(&self, pids: impl IntoIterator<Item = u32>) -> f64 {
        pids.into_iter().map(|pid| self.mib(pid)).sum()
    }
}

/// The median of `values` (mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A benchmark binary's exit: its JSON line on stdout and success, or the error on stderr.
pub fn exit_with(result: anyhow::Result<String>) -> std::process::ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            flotilla_net::exit::print_error(&error);
            std::process::ExitCode::FAILURE
        }
    }
}

/// The directory holding the daemons: `given`, else the running binary's own.
pub fn binaries_dir(given: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    match given {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(std::env::current_exe()?.parent().context("locating the binaries")?.to_path_buf()),
    }
}

/// A fresh working directory `flotilla-<name>-<pid>` in the system's temporary directory.
pub fn work_dir(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let work = std::env::temp_dir().join(format!("flotilla-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// Writes the fleet-round workload's initial model of `params` values to `path`, in the form
/// `flotilla-coordinator --initial-params` reads (a bincode `ParameterVector`).
pub fn write_workload_model(path: &std::path::Path, params: u64) -> anyhow::Result<()> {
    use anyhow::Context;
    use flotilla_protocol::model::ModelSpec;
    use flotilla_protocol::params::ParameterVector;
    let len = usize::try_from(params).context("--params does not fit this machine")?;
    let vector = ParameterVector::new(
        &ModelSpec::Vector { len: params }.layout(),
        flotilla_protocol::workload::initial_model(len),
    )?;
    let bytes = bincode::serde::encode_to_vec(&vector, bincode::config::standard())?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn own_memory_and_children_cpu_are_readable() {
        let me = std::process::id();
        assert!(status_kib(me, "VmRSS:").is_some_and(|kib| kib > 0));
        let mut peaks = PeakMemory::default();
        peaks.sample(me);
        assert!(peaks.mib(me) > 0.0);
        assert!(reaped_children_cpu_s().is_some());
    }
}
