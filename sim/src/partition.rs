//! Splitting a dataset into client streams and a held-back evaluation set.
//!
//! Everything is a pure function of the dataset and a [`PartitionConfig`] (its seed
//! included), so a simulation can be rerun on exactly the same streams.

use anyhow::bail;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Gamma};
use serde::Serialize;

use crate::dataset::{Dataset, Row};

/// How rows are dealt to the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// Rows shuffled, then dealt round-robin: every client sees the same label mix.
    Iid,
    /// Each client draws a label distribution from Dirichlet(α) and its rows follow it; each
    /// stream is then shuffled, so its label mix is the same throughout (skew, not drift).
    LabelSkew,
    /// File order kept (temporal data stays temporal), rows dealt round-robin; after
    /// `drift_at` of each client's stream its labels are permuted (the concept changes).
    Drift,
}

/// Parameters of a partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionConfig {
    /// Dealing scheme.
    pub scheme: Scheme,
    /// Number of client streams.
    pub clients: usize,
    /// Fraction of all rows held back for evaluation, in [0, 1).
    pub eval_fraction: f64,
    /// Concentration α of the per-client label distributions (label skew only); smaller is
    /// more skewed.
    pub dirichlet_alpha: f64,
    /// Fraction of each client's stream after which its labels are permuted (drift only).
    pub drift_at: f64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// The result: one row sequence per client, in stream order, and the evaluation rows.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Client streams.
    pub clients: Vec<Vec<Row>>,
    /// Held-back evaluation rows (never in any client's stream).
    pub eval: Vec<Row>,
    /// The label permutation applied after the drift point (drift only): `new = perm[old]`.
    pub drift_permutation: Option<Vec<u32>>,
}

/// Splits `data` as `config` says.
pub fn partition(data: &Dataset, config: &PartitionConfig) -> anyhow::Result<Partition> {
    if config.clients == 0 {
        bail!("at least one client is needed");
    }
    if !(0.0..1.0).contains(&config.eval_fraction) {
        bail!("the evaluation fraction must be in [0, 1), got {}", config.eval_fraction);
    }
    let eval_rows = (data.rows.len() as f64 * config.eval_fraction).round() as usize;
    if data.rows.len().saturating_sub(eval_rows) < config.clients {
        bail!("{} rows ({} held back) cannot feed {} clients", data.rows.len(), eval_rows, config.clients);
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    match config.scheme {
        Scheme::Iid | Scheme::LabelSkew => {
            let mut order: Vec<usize> = (0..data.rows.len()).collect();
            order.shuffle(&mut rng);
            let (eval, train) = order.split_at(eval_rows);
            let mut eval: Vec<Row> = eval.iter().map(|&i| data.rows[i].clone()).collect();
            eval.sort_by_key(|row| row.index);
            let train: Vec<&Row> = train.iter().map(|&i| &data.rows[i]).collect();
            let clients = if config.scheme == Scheme::Iid {
                deal(&train, config.clients)
            } else {
                label_skew(&train, data.classes, config, &mut rng)?
            };
            Ok(Partition { clients, eval, drift_permutation: None })
        }
        Scheme::Drift => drift(data, config, eval_rows, &mut rng),
    }
}

/// Round-robin dealing of `rows` in their order.
fn deal(rows: &[&Row], clients: usize) -> Vec<Vec<Row>> {
    (0..clients).map(|c| rows.iter().skip(c).step_by(clients).map(|row| (*row).clone()).collect()).collect()
}

/// One Dirichlet(α, …, α) draw over `k` outcomes, through normalised Gamma(α, 1) draws.
pub fn dirichlet(alpha: f64, k: usize, rng: &mut StdRng) -> anyhow::Result<Vec<f64>> {
    let gamma = Gamma::new(alpha, 1.0).map_err(|e| anyhow::anyhow!("Dirichlet α = {alpha}: {e}"))?;
    let mut draws: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let sum: f64 = draws.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        draws.iter_mut().for_each(|p| *p /= sum);
    } else {
        // Tiny α underflows every draw to 0: the limit is all mass on one outcome.
        draws.iter_mut().for_each(|p| *p = 0.0);
        draws[rng.random_range(0..k)] = 1.0;
    }
    Ok(draws)
}

/// Label skew with equal stream lengths: client c draws pᶜ ~ Dir(α); then, one row per
/// client in turn until all rows are dealt, it takes a row of a label drawn from pᶜ
/// restricted to the labels that still have rows ([`deal_label_skew`]). Dealt in that order,
/// every stream would end with the labels left over once the popular ones ran out: a label
/// drift at the end of every stream at once, which is not label skew. So each client's stream
/// is then shuffled (same seeded `rng`): its label mix is stationary over the stream, while
/// stream lengths and per-client label counts are exactly those dealt.
fn label_skew(
    rows: &[&Row],
    classes: u32,
    config: &PartitionConfig,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<Vec<Row>>> {
    let mut clients = deal_label_skew(rows, classes, config, rng)?;
    for stream in &mut clients {
        stream.shuffle(rng);
    }
    Ok(clients)
}

/// The dealing of [`label_skew`], in dealing order (each stream ends with leftover labels).
fn deal_label_skew(
    rows: &[&Row],
    classes: u32,
    config: &PartitionConfig,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<Vec<Row>>> {
    if !(config.dirichlet_alpha > 0.0 && config.dirichlet_alpha.is_finite()) {
        bail!("the Dirichlet α must be positive, got {}", config.dirichlet_alpha);
    }
    let k = classes as usize;
    let mut pools: Vec<Vec<&Row>> = vec![Vec::new(); k];
    for row in rows {
        pools[row.label as usize].push(row);
    }
    let preferences: Vec<Vec<f64>> =
        (0..config.clients).map(|_| dirichlet(config.dirichlet_alpha, k, rng)).collect::<anyhow::Result<_>>()?;
    let mut clients: Vec<Vec<Row>> = vec![Vec::new(); config.clients];
    let mut left = rows.len();
    while left > 0 {
        for (client, p) in preferences.iter().enumerate() {
            if left == 0 {
                break;
            }
            let weight: f64 = (0..k).filter(|&l| !pools[l].is_empty()).map(|l| p[l]).sum();
            let label = if weight > 0.0 {
                let mut target = rng.random::<f64>() * weight;
                let mut chosen = None;
                for l in (0..k).filter(|&l| !pools[l].is_empty()) {
                    chosen = Some(l);
                    target -= p[l];
                    if target < 0.0 {
                        break;
                    }
                }
                chosen
            } else {
                // The labels this client likes are used up: any label left, uniformly by row.
                let mut pick = rng.random_range(0..left);
                (0..k).find(|&l| {
                    if pick < pools[l].len() {
                        true
                    } else {
                        pick -= pools[l].len();
                        false
                    }
                })
            };
            let Some(label) = label else { bail!("internal: no label left with {left} rows to deal") };
            let index = rng.random_range(0..pools[label].len());
            let row = pools[label].swap_remove(index);
            clients[client].push(row.clone());
            left -= 1;
        }
    }
    Ok(clients)
}

/// A random permutation of `0..k` that moves every label (for k ≥ 2).
fn derangement(k: usize, rng: &mut StdRng) -> Vec<u32> {
    // A random cyclic shift composed with a shuffle is not uniform, but fixed for a seed and
    // moving every label is all that matters here: relabel through a random k-cycle.
    let mut order: Vec<u32> = (0..k as u32).collect();
    order.shuffle(rng);
    let mut perm = vec![0u32; k];
    for i in 0..k {
        perm[order[i] as usize] = order[(i + 1) % k];
    }
    perm
}

fn drift(data: &Dataset, config: &PartitionConfig, eval_rows: usize, rng: &mut StdRng) -> anyhow::Result<Partition> {
    if !(0.0..=1.0).contains(&config.drift_at) {
        bail!("--drift-at must be in [0, 1], got {}", config.drift_at);
    }
    if data.classes < 2 {
        bail!("drift permutes labels: at least two classes are needed");
    }
    let perm = derangement(data.classes as usize, rng);
    // Evaluation rows evenly spaced through the file, so they span the whole period.
    let n = data.rows.len();
    let is_eval = |i: usize| eval_rows > 0 && (i * eval_rows) / n != ((i + 1) * eval_rows) / n;
    let (eval, train): (Vec<&Row>, Vec<&Row>) = data.rows.iter().partition(|row| is_eval(row.index));
    let mut clients = deal(&train, config.clients);
    for stream in &mut clients {
        let from = (stream.len() as f64 * config.drift_at).round() as usize;
        for row in stream.iter_mut().skip(from) {
            row.label = perm[row.label as usize];
        }
    }
    // The held-back rows carry the concept the streams end with.
    let eval = eval
        .into_iter()
        .map(|row| {
            let mut row = row.clone();
            if config.drift_at < 1.0 {
                row.label = perm[row.label as usize];
            }
            row
        })
        .collect();
    Ok(Partition { clients, eval, drift_permutation: Some(perm) })
}

#[cfg(test)]
mod tests;
