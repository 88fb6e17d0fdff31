//! Layer fusion: the standardiser folded into the layers that read the input.
//!
//! A layer reading standardised features computes `((x − μ) · s) · W + b`; with
//! `W' = diag(s) · W` and `b' = b − (μ · s) · W` it reads raw features: `x · W' + b'`. The
//! learner also clips standardised values to ±10; folded, that clip becomes a clamp of each
//! raw feature to `[μ − 10/s, μ + 10/s]` (2 element-wise ops instead of 3), so fusion
//! changes no prediction beyond float rounding, on rows where the clip binds as on any other.
//! [`clip_binding_rows`] reports how often it binds, for deciding whether the clamp could go.
//! (The mix of the heads is fused in the ONNX graph: see [`crate::onnx::Mix::Fused`].)

use flotilla_learner::network::{Dense, InputStage, Network};

/// `network` with its standardisation folded into the layer and head that read depth 0.
/// A network without a standardisation stage is returned as it is.
pub fn fuse(network: &Network) -> Network {
    let InputStage::Standardize { mean, inv_std, clip } = &network.input else {
        return network.clone();
    };
    let mut fused = network.clone();
    let (low, high) = mean
        .iter()
        .zip(inv_std)
        .map(|(&m, &s)| if s > 0.0 { (m - clip / s, m + clip / s) } else { (f32::MIN, f32::MAX) })
        .unzip();
    fused.input = InputStage::Clamp { low, high };
    if let Some(first) = fused.layers.first_mut() {
        fold(first, mean, inv_std);
    }
    for head in fused.heads.iter_mut().filter(|h| h.source == 0) {
        fold(&mut head.dense, mean, inv_std);
    }
    fused
}

/// `W ← diag(s) · W`, `b ← b − (μ · s) · W` (in f64, rounded once).
fn fold(dense: &mut Dense, mean: &[f32], inv_std: &[f32]) {
    let n = dense.outputs;
    let mut bias: Vec<f64> = dense.bias.iter().map(|&b| f64::from(b)).collect();
    for (k, (&m, &s)) in mean.iter().zip(inv_std).enumerate() {
        let row = &mut dense.weight[k * n..(k + 1) * n];
        for (w, b) in row.iter_mut().zip(bias.iter_mut()) {
            *b -= f64::from(m) * f64::from(s) * f64::from(*w);
            *w = (f64::from(*w) * f64::from(s)) as f32;
        }
    }
    dense.bias = bias.into_iter().map(|b| b as f32).collect();
}

/// How many of `rows` (`b × inputs`) have a feature whose standardised value the clip bounds.
pub fn clip_binding_rows(network: &Network, rows: &[f32]) -> usize {
    let InputStage::Standardize { mean, inv_std, clip } = &network.input else {
        return 0;
    };
    rows.chunks_exact(network.inputs.max(1))
        .filter(|row| row.iter().zip(mean).zip(inv_std).any(|((&x, &m), &s)| ((x - m) * s).abs() > *clip))
        .count()
}
