//! Pruning: unstructured magnitude pruning of every weight matrix, and structured pruning of
//! depth guided by HBP's α.
//!
//! - [`magnitude`] zeroes the `fraction` smallest-magnitude weights of each dense layer (per
//!   layer, so that no layer is emptied); biases and α stay. [`mask`] gives the same choice
//!   over a flat HBP parameter vector, for federated fine-tuning: clients keep the pruned
//!   weights at zero while the fleet recovers the accuracy.
//! - [`units`] removes whole hidden units, the `fraction` of each layer that matters least (the
//!   product of the norms of the weights into and out of a unit): the layers get physically
//!   narrower.
//! - [`drop_depth_below`] removes the heads whose α is below a threshold, and the hidden
//!   layers that only those heads needed (every layer deeper than the deepest head kept); the
//!   kept α are renormalised to sum to one. HBP's α is the fleet's own measure of which
//!   depths predict well.

use flotilla_learner::network::{Dense, Network, Storage};
use flotilla_protocol::model::hbp::{HbpConfig, layout};
use flotilla_protocol::params::ParameterVector;

/// Why a network could not be pruned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PruneError {
    /// The fraction is not in [0, 1).
    #[error("the fraction of weights to prune must be in [0, 1), got {0}")]
    Fraction(f64),
    /// The α threshold is not a number in [0, 1].
    #[error("the alpha threshold must be in [0, 1], got {0}")]
    Threshold(f32),
    /// The threshold is above every head's α.
    #[error("every head has alpha below {threshold} (the largest is {largest}): nothing would be left")]
    NothingLeft {
        /// The threshold given.
        threshold: f32,
        /// The largest α.
        largest: f32,
    },
}

/// Zeroes the `fraction` smallest-magnitude weights of every dense layer; pruned layers are
/// exported sparse.
pub fn magnitude(network: &mut Network, fraction: f64) -> Result<(), PruneError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(PruneError::Fraction(fraction));
    }
    for dense in network.dense_layers_mut() {
        let keep = keep_mask(&dense.weight, fraction);
        dense.weight.iter_mut().zip(&keep).for_each(|(w, &k)| {
            if !k {
                *w = 0.0;
            }
        });
        if fraction > 0.0 {
            dense.storage = Storage::Sparse;
        }
    }
    Ok(())
}

/// Which of `weights` survive pruning `fraction` of them by magnitude (ties broken by
/// position, so exactly `round(fraction · n)` are pruned).
pub fn keep_mask(weights: &[f32], fraction: f64) -> Vec<bool> {
    let n = weights.len();
    let prune = ((fraction * n as f64).round() as usize).min(n);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| weights[a].abs().total_cmp(&weights[b].abs()).then(a.cmp(&b)));
    let mut keep = vec![true; n];
    order.into_iter().take(prune).for_each(|i| keep[i] = false);
    keep
}

/// Removes the heads with α below `threshold` (always keeping the largest), the hidden layers
/// deeper than the deepest head kept, and renormalises the kept α.
pub fn drop_depth_below(network: &Network, threshold: f32) -> Result<Network, PruneError> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(PruneError::Threshold(threshold));
    }
    let largest = network.heads.iter().map(|h| h.alpha).fold(0.0f32, f32::max);
    if largest < threshold {
        return Err(PruneError::NothingLeft { threshold, largest });
    }
    let mut pruned = network.clone();
    pruned.heads.retain(|h| h.alpha >= threshold);
    let total: f32 = pruned.heads.iter().map(|h| h.alpha).sum();
    if total > 0.0 {
        pruned.heads.iter_mut().for_each(|h| h.alpha /= total);
    }
    let deepest = pruned.heads.iter().map(|h| h.source).max().unwrap_or(0);
    pruned.layers.truncate(deepest);
    Ok(pruned)
}

/// The flat HBP parameters `params` with `fraction` of every weight matrix zeroed, as
/// [`magnitude`] prunes the network's layers (each hidden layer, the input head, each hidden
/// head): the starting point of federated fine-tuning with `--keep-pruned`.
pub fn hbp_params(config: &HbpConfig, params: &ParameterVector, fraction: f64) -> Result<ParameterVector, PruneError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(PruneError::Fraction(fraction));
    }
    let mut pruned = params.clone();
    let mut offset = 0;
    for segment in layout(config).segments() {
        let range = offset..offset + segment.len();
        offset = range.end;
        if !segment.name.ends_with(".weight") || range.end > pruned.values.len() {
            continue;
        }
        // A matrix is the last two dimensions (the hidden heads are stacked `[L, width, C]`).
        let matrix = segment.shape.iter().rev().take(2).product::<usize>().max(1);
        for chunk in pruned.values[range].chunks_mut(matrix) {
            let keep = keep_mask(chunk, fraction);
            chunk.iter_mut().zip(keep).filter(|(_, k)| !k).for_each(|(w, _)| *w = 0.0);
        }
    }
    Ok(pruned)
}

/// Removes the `fraction` of each hidden layer's units with the smallest importance
/// `‖W_in[:, j]‖ · ‖W_out[j, :]‖` (the weights into the unit, and out of it into the next
/// layer and its head), keeping at least one unit a layer; every layer and head that reads a
/// removed unit loses that input row. Returns the network and the units removed.
pub fn units(network: &Network, fraction: f64) -> Result<(Network, usize), PruneError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(PruneError::Fraction(fraction));
    }
    let mut pruned = network.clone();
    let mut removed = 0;
    for l in 0..pruned.layers.len() {
        let width = pruned.layers[l].outputs;
        let importance: Vec<f32> = (0..width)
            .map(|j| {
                let incoming = column_norm(&pruned.layers[l], j);
                let mut outgoing = pruned.layers.get(l + 1).map_or(0.0, |next| row_norm_squared(next, j));
                for head in pruned.heads.iter().filter(|h| h.source == l + 1) {
                    outgoing += row_norm_squared(&head.dense, j);
                }
                incoming * outgoing.sqrt()
            })
            .collect();
        let drop = ((fraction * width as f64).round() as usize).min(width.saturating_sub(1));
        let keep = keep_mask(&importance, drop as f64 / width.max(1) as f64);
        removed += keep.iter().filter(|k| !**k).count();
        keep_columns(&mut pruned.layers[l], &keep);
        if let Some(next) = pruned.layers.get_mut(l + 1) {
            keep_rows(next, &keep);
        }
        for head in pruned.heads.iter_mut().filter(|h| h.source == l + 1) {
            keep_rows(&mut head.dense, &keep);
        }
    }
    Ok((pruned, removed))
}

fn column_norm(dense: &Dense, j: usize) -> f32 {
    let n = dense.outputs;
    let sum: f32 = (0..dense.inputs).map(|k| dense.weight[k * n + j].powi(2)).sum::<f32>() + dense.bias[j].powi(2);
    sum.sqrt()
}

fn row_norm_squared(dense: &Dense, row: usize) -> f32 {
    dense.weight[row * dense.outputs..(row + 1) * dense.outputs].iter().map(|w| w * w).sum()
}

/// Keeps the output units (columns, bias entries, int8 scales) marked in `keep`.
fn keep_columns(dense: &mut Dense, keep: &[bool]) {
    let n = dense.outputs.max(1);
    dense.weight = dense
        .weight
        .chunks_exact(n)
        .flat_map(|row| row.iter().zip(keep).filter(|(_, k)| **k).map(|(w, _)| *w).collect::<Vec<_>>())
        .collect();
    dense.bias = dense.bias.iter().zip(keep).filter(|(_, k)| **k).map(|(b, _)| *b).collect();
    if let Storage::Int8 { scales } = &mut dense.storage {
        *scales = scales.iter().zip(keep).filter(|(_, k)| **k).map(|(s, _)| *s).collect();
    }
    dense.outputs = dense.bias.len();
}

/// Keeps the input rows marked in `keep`.
fn keep_rows(dense: &mut Dense, keep: &[bool]) {
    let n = dense.outputs.max(1);
    dense.weight =
        dense.weight.chunks_exact(n).zip(keep).filter(|(_, k)| **k).flat_map(|(row, _)| row.to_vec()).collect();
    dense.inputs = keep.iter().filter(|k| **k).count();
}
