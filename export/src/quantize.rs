//! Post-training weight quantisation: symmetric int8 with one scale per output unit.
//!
//! For each dense layer and output unit `j`: `scale_j = max_k |W[k][j]| / 127` and
//! `W[k][j] ← round(W[k][j] / scale_j) · scale_j`. The network then computes with exactly the
//! weights the exported `DequantizeLinear` reproduces, so its predictions are the ONNX
//! model's. Biases, α and the input stage stay f32 (they are a few hundred values).

use flotilla_learner::network::{Dense, Network, Storage};

/// Quantises every dense layer of `network` in place.
pub fn int8(network: &mut Network) {
    network.dense_layers_mut().for_each(quantize);
}

fn quantize(dense: &mut Dense) {
    let n = dense.outputs.max(1);
    let mut scales = vec![0.0f32; dense.outputs];
    for row in dense.weight.chunks_exact(n) {
        for (s, w) in scales.iter_mut().zip(row) {
            *s = s.max(w.abs());
        }
    }
    scales.iter_mut().for_each(|s| *s /= 127.0);
    for row in dense.weight.chunks_exact_mut(n) {
        for (w, &s) in row.iter_mut().zip(&scales) {
            *w = f32::from(level(*w, s)) * s;
        }
    }
    dense.storage = Storage::Int8 { scales };
}

/// The int8 level of weight `w` at scale `s` (0 for a column of zeros).
pub fn level(w: f32, s: f32) -> i8 {
    if s > 0.0 { (w / s).round().clamp(-127.0, 127.0) as i8 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_become_multiples_of_their_column_scale() {
        let mut dense = Dense::new(3, 2, vec![1.0, -0.5, 0.25, 0.0, -2.0, 0.3], vec![0.0; 2]);
        quantize(&mut dense);
        let Storage::Int8 { scales } = &dense.storage else { panic!("not int8") };
        assert!((scales[0] - 2.0 / 127.0).abs() < 1e-9);
        assert!((scales[1] - 0.5 / 127.0).abs() < 1e-9);
        for row in dense.weight.chunks(2) {
            for (w, s) in row.iter().zip(scales) {
                let q = w / s;
                assert!((q - q.round()).abs() < 1e-3 && q.abs() <= 127.001, "{w} / {s}");
            }
        }
        // The largest magnitude of each column is kept exactly.
        assert!((dense.weight[4] + 2.0).abs() < 1e-6);
        assert!((dense.weight[1] + 0.5).abs() < 1e-6);
    }
}
