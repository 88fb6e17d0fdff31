//! The served network packed for the CPU's vector units: the same graph as [`Network`]
//! (input stage → ReLU trunk → softmax heads → α-mix), with every trunk layer's weights stored
//! zero-padded to a multiple of [`PAD`] columns, so that a batch runs as register-blocked
//! multiply-adds over contiguous vectors. A head reading the same depth as a trunk layer is
//! folded into it (its logits are extra columns of that layer, mostly in what would be
//! padding); the heads on the deepest computed depth keep transposed weights for a dot product
//! per row and class. [`pulp`] picks the widest instruction set the machine has at run time
//! (AVX-512, AVX2 + FMA, or plain scalar code), so one portable binary uses all of it.
//!
//! A batch is cut into chunks of [`CHUNK`] rows that go through the whole network while their
//! activations stay in the L1/L2 cache; a large batch spreads its chunks over rayon's pool.
//! [`Network::forward`] stays the reference: a test checks both on the same rows.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::network::{InputStage, Network, Storage, mix};

/// Every packed width is a multiple of this many f32 (the widest vector, AVX-512's 16 lanes),
/// so that rows hold whole vectors on every instruction set.
pub const PAD: usize = 16;

/// Rows that go through the whole network together.
pub const CHUNK: usize = 64;

/// Rows from which a batch is spread over every core.
pub const PARALLEL_ROWS: usize = 4 * CHUNK;

fn padded(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// A trunk layer: `inputs` real inputs (read from activations `PAD`-strided), then `outputs`
/// ReLU units, then the logits of the heads folded into it, padded.
#[derive(Debug, Clone)]
struct Layer {
    inputs: usize,
    outputs: usize,
    /// Padded columns: the stride of the activations this layer writes.
    stride: usize,
    /// `inputs × stride`, row-major, zero in the padding columns.
    weight: Vec<f32>,
    /// `stride`, zero in the padding.
    bias: Vec<f32>,
    /// α of the heads folded into this layer, whose logits are its columns `outputs + i·C ..`.
    heads: Vec<f32>,
}

/// A softmax head on the deepest computed depth.
#[derive(Debug, Clone)]
struct Head {
    /// `classes × stride of that depth`, each class's weights contiguous, zero padded.
    weight: Vec<f32>,
    bias: Vec<f32>,
    alpha: f32,
}

/// A dense network ready for batched prediction on the CPU's vector units.
#[derive(Debug, Clone)]
pub struct PackedNetwork {
    inputs: usize,
    classes: usize,
    input: InputStage,
    layers: Vec<Layer>,
    /// The heads reading depth `depth` (every other head is folded into a layer).
    heads: Vec<Head>,
    /// The trunk depth the deepest head reads (deeper layers are never computed).
    depth: usize,
    arch: Arch,
}

impl PackedNetwork {
    /// Packs `network`; `None` when a layer is not plain dense storage (a sparse or quantised
    /// network keeps [`Network::forward`]) or the layers do not chain (a layer reading another
    /// width than the one below it writes, a head reading another width than its depth's or
    /// writing another number of classes).
    pub fn new(network: &Network) -> Option<Self> {
        let dense = network.dense_layers().all(|d| d.storage == Storage::Dense);
        let widths: Vec<usize> = [network.inputs].into_iter().chain(network.layers.iter().map(|l| l.outputs)).collect();
        let chained = network.layers.iter().zip(&widths).all(|(layer, &below)| layer.inputs == below)
            && network.heads.iter().all(|head| {
                widths.get(head.source) == Some(&head.dense.inputs) && head.dense.outputs == network.classes
            });
        if !dense || !chained || network.classes == 0 || network.inputs == 0 {
            return None;
        }
        let c = network.classes;
        let depth = network.heads.iter().map(|h| h.source).max().unwrap_or(0).min(network.layers.len());
        // A head below the deepest computed depth is folded into the layer that reads the
        // same activations: its logits are extra output columns of that layer (mostly in
        // what would be padding), computed in the same sweep.
        let layers: Vec<Layer> = network
            .layers
            .iter()
            .enumerate()
            .map(|(l, d)| {
                let folded: Vec<_> = network.heads.iter().filter(|h| h.source == l && l < depth).collect();
                let stride = padded(d.outputs + folded.len() * c);
                let mut weight = vec![0.0; d.inputs * stride];
                let mut bias = vec![0.0; stride];
                for (k, row) in d.weight.chunks_exact(d.outputs.max(1)).enumerate() {
                    weight[k * stride..k * stride + d.outputs].copy_from_slice(row);
                }
                bias[..d.outputs].copy_from_slice(&d.bias);
                for (i, head) in folded.iter().enumerate() {
                    let at = d.outputs + i * c;
                    for (k, row) in head.dense.weight.chunks_exact(c).enumerate() {
                        weight[k * stride + at..k * stride + at + c].copy_from_slice(row);
                    }
                    bias[at..at + c].copy_from_slice(&head.dense.bias);
                }
                let heads = folded.iter().map(|h| h.alpha).collect();
                Layer { inputs: d.inputs, outputs: d.outputs, stride, weight, bias, heads }
            })
            .collect();
        // The deepest depth's heads, transposed to its activations' stride.
        let stride = if depth == 0 { padded(network.inputs) } else { layers[depth - 1].stride };
        let heads = network
            .heads
            .iter()
            .filter(|head| head.source == depth)
            .map(|head| {
                let mut weight = vec![0.0; c * stride];
                for (k, row) in head.dense.weight.chunks_exact(c).enumerate() {
                    for (j, w) in row.iter().enumerate() {
                        weight[j * stride + k] = *w;
                    }
                }
                Head { weight, bias: head.dense.bias.clone(), alpha: head.alpha }
            })
            .collect();
        Some(Self {
            inputs: network.inputs,
            classes: c,
            input: network.input.clone(),
            layers,
            heads,
            depth,
            arch: Arch::new(),
        })
    }

    /// The mixture's class probabilities of every row (`b × classes`, row-major) of `rows`
    /// (`b × inputs`, row-major; the caller checks lengths and finiteness). A batch of
    /// [`PARALLEL_ROWS`] rows or more spreads its chunks over rayon's pool (every core, as
    /// burn's CPU backend does).
    pub fn forward(&self, rows: &[f32]) -> Vec<f32> {
        let (d, c) = (self.inputs.max(1), self.classes);
        let b = rows.len() / d;
        let mut mixed = vec![0.0f32; b * c];
        let rows = &rows[..b * d];
        if b < PARALLEL_ROWS {
            let mut buffers = self.buffers();
            for (input, out) in rows.chunks(CHUNK * d).zip(mixed.chunks_mut(CHUNK * c)) {
                self.forward_chunk(input, out, &mut buffers);
            }
        } else {
            rows.par_chunks(CHUNK * d)
                .zip(mixed.par_chunks_mut(CHUNK * c))
                .for_each_init(|| self.buffers(), |buffers, (input, out)| self.forward_chunk(input, out, buffers));
        }
        mixed
    }

    /// Activations and logits of one chunk.
    fn buffers(&self) -> Buffers {
        let widest = self.layers.iter().map(|l| l.stride).chain([padded(self.inputs)]).max().unwrap_or(PAD);
        Buffers {
            current: vec![0.0; CHUNK * widest],
            next: vec![0.0; CHUNK * widest],
            logits: vec![0.0; CHUNK * self.classes],
        }
    }

    /// Runs up to [`CHUNK`] rows through the network, adding each head's share to `mixed`.
    fn forward_chunk(&self, input: &[f32], mixed: &mut [f32], buffers: &mut Buffers) {
        let (d, c) = (self.inputs.max(1), self.classes);
        let Buffers { current, next, logits } = buffers;
        let n = input.len() / d;
        // Depth 0: the input stage, padded to whole vectors.
        let staged = self.input.apply(input, d);
        let mut stride = padded(d);
        current[..n * stride].fill(0.0);
        for (row, z) in current.chunks_exact_mut(stride).zip(staged.chunks_exact(d)) {
            row[..d].copy_from_slice(z);
        }
        for layer in &self.layers[..self.depth] {
            let out = &mut next[..n * layer.stride];
            self.arch.dispatch(Dense { x: &current[..n * stride], x_stride: stride, layer, out: &mut *out });
            stride = layer.stride;
            std::mem::swap(current, next);
            // The folded heads' logits, in the heads' order; then the columns past the ReLU
            // units are cleared (a later dot product reads whole rows).
            for (i, &alpha) in layer.heads.iter().enumerate() {
                let at = layer.outputs + i * c;
                for (row, logits) in current.chunks_exact(stride).zip(logits.chunks_exact_mut(c)).take(n) {
                    logits.copy_from_slice(&row[at..at + c]);
                }
                mix(&mut logits[..n * c], c, alpha, mixed);
            }
            for row in current.chunks_exact_mut(stride).take(n) {
                row[layer.outputs..].fill(0.0);
            }
        }
        for head in &self.heads {
            let logits = &mut logits[..n * c];
            self.arch.dispatch(Logits { x: &current[..n * stride], x_stride: stride, head, classes: c, out: logits });
            mix(logits, c, head.alpha, mixed);
        }
    }
}

/// One chunk's working memory.
struct Buffers {
    current: Vec<f32>,
    next: Vec<f32>,
    logits: Vec<f32>,
}

/// Rows of output tiles computed together (registers hold `TILE_ROWS × TILE_VECTORS`
/// accumulators: 8 of 16 on AVX2, of 32 on AVX-512).
const TILE_ROWS: usize = 4;
const TILE_VECTORS: usize = 2;
/// Vectors computed together for a row alone.
const TILE_VECTORS_ONE_ROW: usize = 4;

/// `out = relu(x · W + b)` for one trunk layer over a chunk of rows.
struct Dense<'a> {
    x: &'a [f32],
    x_stride: usize,
    layer: &'a Layer,
    out: &'a mut [f32],
}

impl WithSimd for Dense<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Dense { x, x_stride, layer, out } = self;
        let m = layer.inputs;
        let vectors = layer.stride / S::F32_LANES;
        let (weight, _) = S::as_simd_f32s(&layer.weight);
        let (bias, _) = S::as_simd_f32s(&layer.bias);
        // Vectors wholly of ReLU units; a vector that also holds folded heads' logits is
        // stored as it is and its ReLU units rectified below.
        let relu = layer.outputs / S::F32_LANES;
        let (out_vectors, _) = S::as_mut_simd_f32s(out);
        let rows = x.len() / x_stride.max(1);
        let mut r = 0;
        while r + TILE_ROWS <= rows {
            let xs = std::array::from_fn(|i| &x[(r + i) * x_stride..(r + i) * x_stride + m]);
            let out = &mut out_vectors[r * vectors..(r + TILE_ROWS) * vectors];
            block::<S, TILE_ROWS, TILE_VECTORS>(simd, xs, weight, bias, relu, out);
            r += TILE_ROWS;
        }
        // The last rows one by one, with more vectors at a time (independent accumulators).
        while r < rows {
            let xs = [&x[r * x_stride..r * x_stride + m]];
            let out = &mut out_vectors[r * vectors..(r + 1) * vectors];
            block::<S, 1, TILE_VECTORS_ONE_ROW>(simd, xs, weight, bias, relu, out);
            r += 1;
        }
        if relu * S::F32_LANES < layer.outputs {
            for row in out.chunks_exact_mut(layer.stride) {
                row[relu * S::F32_LANES..layer.outputs].iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    }
}

/// Output rows `out` (`R × vectors`) = `xs` · weight + bias, rectified in the first `relu`
/// vectors, `V` vectors at a time.
#[inline(always)]
fn block<S: Simd, const R: usize, const V: usize>(
    simd: S,
    xs: [&[f32]; R],
    weight: &[S::f32s],
    bias: &[S::f32s],
    relu: usize,
    out: &mut [S::f32s],
) {
    let vectors = bias.len();
    let m = xs[0].len();
    let zero = simd.splat_f32s(0.0);
    let mut j = 0;
    while j + V <= vectors {
        let acc = tile::<S, R, V>(simd, xs, weight, vectors, j, bias, m);
        for (i, acc) in acc.iter().enumerate() {
            for (v, value) in acc.iter().enumerate() {
                out[i * vectors + j + v] = if j + v < relu { simd.max_f32s(*value, zero) } else { *value };
            }
        }
        j += V;
    }
    while j < vectors {
        let acc = tile::<S, R, 1>(simd, xs, weight, vectors, j, bias, m);
        for (i, acc) in acc.iter().enumerate() {
            out[i * vectors + j] = if j < relu { simd.max_f32s(acc[0], zero) } else { acc[0] };
        }
        j += 1;
    }
}

/// Rows `xs` times output vectors `j..j + V` of `weight` (`m` rows of `vectors` vectors),
/// plus the bias.
#[inline(always)]
fn tile<S: Simd, const R: usize, const V: usize>(
    simd: S,
    xs: [&[f32]; R],
    weight: &[S::f32s],
    vectors: usize,
    j: usize,
    bias: &[S::f32s],
    m: usize,
) -> [[S::f32s; V]; R] {
    let start: [S::f32s; V] = std::array::from_fn(|v| bias[j + v]);
    let mut acc = [start; R];
    for k in 0..m {
        let w = &weight[k * vectors + j..k * vectors + j + V];
        for (i, x) in xs.iter().enumerate() {
            let broadcast = simd.splat_f32s(x[k]);
            for v in 0..V {
                acc[i][v] = simd.mul_add_f32s(broadcast, w[v], acc[i][v]);
            }
        }
    }
    acc
}

/// One head's logits for a chunk of rows: a dot product per row and class.
struct Logits<'a> {
    x: &'a [f32],
    x_stride: usize,
    head: &'a Head,
    classes: usize,
    out: &'a mut [f32],
}

impl WithSimd for Logits<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Logits { x, x_stride, head, classes, out } = self;
        let stride = x_stride.max(1);
        for (row, logits) in x.chunks_exact(stride).zip(out.chunks_exact_mut(classes.max(1))) {
            let (row, _) = S::as_simd_f32s(row);
            for (j, logit) in logits.iter_mut().enumerate() {
                let (weight, _) = S::as_simd_f32s(&head.weight[j * stride..(j + 1) * stride]);
                let mut acc = simd.splat_f32s(0.0);
                for (x, w) in row.iter().zip(weight) {
                    acc = simd.mul_add_f32s(*x, *w, acc);
                }
                *logit = simd.reduce_sum_f32s(acc) + head.bias[j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Dense, Head as NetworkHead};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = flotilla_protocol::workload::splitmix64(state);
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Widths that are not whole vectors (7 inputs, layers of 20 and 33), a head on every
    /// depth, 3 classes, clamped inputs.
    fn network() -> Network {
        let dense = |m: usize, n: usize, seed: u64| Dense::new(m, n, values(m * n, seed), values(n, seed + 100));
        let heads = [(0, 7), (1, 20), (2, 33)]
            .into_iter()
            .map(|(source, m)| NetworkHead {
                source,
                dense: dense(m, 3, 10 + source as u64),
                alpha: 0.2 + 0.1 * source as f32,
            })
            .collect();
        Network {
            inputs: 7,
            classes: 3,
            input: InputStage::Clamp { low: vec![-0.4; 7], high: vec![0.4; 7] },
            layers: vec![dense(7, 20, 1), dense(20, 33, 2)],
            heads,
        }
    }

    /// On the machine's widest instruction set, on AVX2 where there is one, and on plain
    /// scalar code; with a head on every depth, and cut below its last layer (the deepest
    /// head reads a middle depth, the layer above it is never computed).
    #[test]
    fn every_batch_size_matches_the_plain_pass() {
        let full = network();
        let mut cut = network();
        cut.heads.pop();
        let mut archs = vec![Arch::new(), Arch::Scalar];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        archs.extend(pulp::x86::V3::try_new().map(Arch::V3));
        for (network, arch) in [&full, &cut].into_iter().flat_map(|n| archs.iter().map(move |a| (n, *a))) {
            let packed = PackedNetwork { arch, ..PackedNetwork::new(network).unwrap() };
            for size in (1..=2 * CHUNK + 3).chain([PARALLEL_ROWS + 37]) {
                let rows = values(size * 7, size as u64);
                let (expected, found) = (network.forward(&rows), packed.forward(&rows));
                assert_eq!(expected.len(), found.len());
                for (a, b) in expected.iter().zip(&found) {
                    assert!((a - b).abs() < 1e-5, "{arch:?}, {size} rows: {a} vs {b}");
                }
            }
            assert!(packed.forward(&[]).is_empty());
        }
    }

    #[test]
    fn layers_that_do_not_chain_are_not_packed() {
        let mut network = network();
        network.layers[1] = Dense::new(21, 33, vec![0.0; 21 * 33], vec![0.0; 33]);
        assert!(PackedNetwork::new(&network).is_none());
        let mut network = self::network();
        network.heads[1].source = 2;
        assert!(PackedNetwork::new(&network).is_none());
        let mut network = self::network();
        network.layers[0].storage = Storage::Sparse;
        assert!(PackedNetwork::new(&network).is_none());
    }
}
