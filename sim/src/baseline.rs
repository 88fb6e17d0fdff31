//! The baselines on the same streams: each client `alone` (one `flotilla-client learn` pass
//! on its own stream) and `centralised` (one pass on all the streams interleaved).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::dataset::{Row, to_csv};
use crate::procs::{Interrupt, Proc};

/// The model and the binary every `learn` pass uses.
#[derive(Debug, Clone)]
pub struct LearnSpec {
    /// `flotilla-client`.
    pub client_bin: PathBuf,
    /// Hidden layers.
    pub hidden_layers: usize,
    /// Units per hidden layer.
    pub width: usize,
    /// Classes (explicit: a skewed shard may lack some labels).
    pub classes: u32,
    /// Initial-weights seed (the coordinator's, so every line starts from the same model).
    pub seed: u64,
    /// Held-back rows every final model is scored on (`eval_error_pct`), as the coordinator
    /// scores the global model.
    pub eval_data: PathBuf,
}

/// One `learn` pass to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Name of the pass (file names).
    pub name: String,
    /// Its stream.
    pub data: PathBuf,
    /// Only the first `limit` rows.
    pub limit: Option<u64>,
}

/// Runs `jobs` with at most `parallel` at a time; returns each pass's JSON report in order.
pub fn run_all(
    spec: &LearnSpec,
    jobs: &[Job],
    dir: &Path,
    parallel: usize,
    interrupt: &Interrupt,
) -> anyhow::Result<Vec<serde_json::Value>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut results: Vec<Option<serde_json::Value>> = vec![None; jobs.len()];
    let mut running: Vec<(usize, Proc)> = Vec::new();
    let mut next = 0;
    while next < jobs.len() || !running.is_empty() {
        interrupt.check()?;
        while next < jobs.len() && running.len() < parallel.max(1) {
            let job = &jobs[next];
            let mut args: Vec<String> = vec![
                "learn".into(),
                "--data".into(),
                job.data.display().to_string(),
                "--backend".into(),
                "cpu".into(),
                "--hidden-layers".into(),
                spec.hidden_layers.to_string(),
                "--width".into(),
                spec.width.to_string(),
                "--classes".into(),
                spec.classes.to_string(),
                "--seed".into(),
                spec.seed.to_string(),
                "--report".into(),
                dir.join(format!("{}.json", job.name)).display().to_string(),
                "--eval-data".into(),
                spec.eval_data.display().to_string(),
                // Cumulative marks on the fleet clients' grid (drift recovery is read off them).
                "--mark-every".into(),
                flotilla_learner::local::MARK_EVERY.to_string(),
            ];
            if let Some(limit) = job.limit {
                args.extend(["--limit".into(), limit.to_string()]);
            }
            let out = dir.join(format!("{}.out", job.name));
            let log = dir.join(format!("{}.log", job.name));
            running.push((next, Proc::start(&job.name, &spec.client_bin, &args, &out, &log)?));
            next += 1;
        }
        let mut still = Vec::new();
        for (i, mut proc) in running.drain(..) {
            match proc.exited() {
                None => still.push((i, proc)),
                Some(true) => {
                    let path = dir.join(format!("{}.json", jobs[i].name));
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    results[i] =
                        Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?);
                }
                Some(false) => bail!("`flotilla-client learn` failed on {}:\n{}", jobs[i].name, proc.log_tail(15)),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(50));
    }
    results.into_iter().map(|r| r.context("a pass left no report")).collect()
}

/// All the streams interleaved round-robin (one row of each in turn while any is left).
pub fn interleave(streams: &[Vec<Row>]) -> Vec<Row> {
    let longest = streams.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|i| streams.iter().filter_map(move |s| s.get(i).cloned())).collect()
}

/// Writes `rows` as CSV under `header` at `path`.
pub fn write_stream(path: &Path, header: &str, rows: &[Row]) -> anyhow::Result<()> {
    std::fs::write(path, to_csv(header, rows)).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(index: usize) -> Row {
        Row { index, features: index.to_string(), label: 0 }
    }

    #[test]
    fn interleaving_takes_one_row_of_each_stream_in_turn() {
        let streams = vec![vec![row(0), row(1), row(2)], vec![row(10)], vec![row(20), row(21)]];
        let order: Vec<usize> = interleave(&streams).iter().map(|r| r.index).collect();
        assert_eq!(order, vec![0, 10, 20, 1, 21, 2]);
    }
}
