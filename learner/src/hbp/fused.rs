//! HBP at micro-batch 1 on the CPU in plain Rust: the whole step (forward through every layer
//! and head, the mixture, the analytic backward pass, SGD and the hedge) over the flat
//! parameter vector, with no tensor set-up and no allocation per step.
//!
//! The arithmetic is [`super::math`]'s, row by row: `g_k = α_k (p_k − y)` for every head,
//! each hidden layer's error the sum of what flows down from the layer above and from its own
//! head, every gradient taken with the weights before the step. It differs from the burn path
//! only in the order of float additions; a test holds the two to the same predictions and to
//! parameters within 1e-4.
//!
//! Each weight matrix is read once forward and once backward, where the backward pass reads
//! a row (the error it sends down) and updates it in the same sweep; rows whose input is zero
//! (a ReLU that did not fire) are skipped both ways, as their gradient and the error they would
//! send down are zero. The forward pass and the first layer's step take four rows per sweep
//! over their `w`-wide output or error (a quarter of its loads and stores). The heads' weights
//! are held transposed, `[C, n]` instead of the layout's `[n, C]` (converted at
//! [`FusedHbp::from_parameters`] and [`FusedHbp::to_parameters`]), so that a head is `C` rows
//! of `n` rather than `n` rows of `C` (10 for most data: too short to vectorise).

use flotilla_protocol::model::hbp::{HbpConfig, layout};
use flotilla_protocol::params::ParameterVector;

use super::model::{HbpModel, ModelError};

/// Offsets of each segment in the flat vector.
#[derive(Debug, Clone)]
struct Offsets {
    /// Per hidden layer: weight `[in, w]` and bias `[w]`.
    hidden: Vec<(usize, usize)>,
    /// The input head's weight `[d, C]` (held as `[C, d]`) and bias `[C]`.
    input_head: Option<(usize, usize)>,
    /// The hidden heads' weights `[L, w, C]` (held as `[L, C, w]`).
    heads_weight: usize,
    /// The hidden heads' biases `[L, C]`.
    heads_bias: usize,
    /// α `[K]`.
    alpha: usize,
}

/// An HBP network learning one row at a time on the CPU.
#[derive(Debug, Clone)]
pub struct FusedHbp {
    config: HbpConfig,
    values: Vec<f32>,
    offsets: Offsets,
    /// Hidden activations `[L, w]` of the current row.
    hidden: Vec<f32>,
    /// Every head's probabilities `[K, C]` (input head first when present).
    probabilities: Vec<f32>,
    /// The error each hidden layer receives from its own head `[L, w]`.
    from_heads: Vec<f32>,
    /// Error at a layer's pre-activation, and the one sent down to the layer below.
    dz: Vec<f32>,
    down: Vec<f32>,
    /// α as the step found it, and every head's loss.
    alpha_before: Vec<f32>,
    losses: Vec<f32>,
}

impl FusedHbp {
    /// A freshly initialised network, with exactly [`HbpModel::new`]'s weights.
    pub fn new(config: HbpConfig) -> Result<Self, ModelError> {
        let params = HbpModel::new(config.clone(), &burn::tensor::Device::flex())?.to_parameters()?;
        Self::from_parameters(config, &params)
    }

    /// A network of `config` holding `params` (checked as [`HbpModel::from_parameters`] checks).
    pub fn from_parameters(config: HbpConfig, params: &ParameterVector) -> Result<Self, ModelError> {
        config.validate()?;
        // Version, layout, length and finite values.
        params.check(&layout(&config))?;
        let (d, w, c, layers) = (config.inputs, config.width, config.classes, config.hidden_layers);
        let mut offset = 0;
        let mut next = |len: usize| {
            let at = offset;
            offset += len;
            at
        };
        let hidden = (0..layers).map(|l| (next(if l == 0 { d } else { w } * w), next(w))).collect();
        let input_head = config.input_head.then(|| (next(d * c), next(c)));
        let heads_weight = next(layers * w * c);
        let heads_bias = next(layers * c);
        let alpha = next(config.heads());
        let sum: f32 = params.values[alpha..].iter().sum();
        if (sum - 1.0).abs() > 1e-3 || params.values[alpha..].iter().any(|a| *a < 0.0) {
            return Err(ModelError::InvalidAlpha { sum });
        }
        let offsets = Offsets { hidden, input_head, heads_weight, heads_bias, alpha };
        let mut values = params.values.clone();
        for (at, rows, cols) in head_matrices(&config, &offsets) {
            transpose(&mut values[at..at + rows * cols], rows, cols);
        }
        Ok(Self {
            values,
            offsets,
            hidden: vec![0.0; layers * w],
            probabilities: vec![0.0; config.heads() * c],
            from_heads: vec![0.0; layers * w],
            dz: vec![0.0; w.max(d)],
            down: vec![0.0; w.max(d)],
            alpha_before: vec![0.0; config.heads()],
            losses: vec![0.0; config.heads()],
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HbpConfig {
        &self.config
    }

    /// Every parameter in layout order.
    pub fn to_parameters(&self) -> Result<ParameterVector, ModelError> {
        let mut values = self.values.clone();
        for (at, rows, cols) in head_matrices(&self.config, &self.offsets) {
            // Held as [cols, rows]: back to the layout's [rows, cols].
            transpose(&mut values[at..at + rows * cols], cols, rows);
        }
        Ok(ParameterVector::new(&layout(&self.config), values)?)
    }

    /// Current hedge weights α, input head first when present.
    pub fn alpha(&self) -> &[f32] {
        &self.values[self.offsets.alpha..]
    }

    /// Predicts the standardised row `x` (writing the mixture's class probabilities to
    /// `mixture`, `C` long), then takes one HBP step on `label`; returns the predicted class.
    /// `x` must have the model's inputs and `label` be below its classes (the data readers
    /// guarantee both).
    pub fn learn(&mut self, x: &[f32], label: usize, mixture: &mut [f32]) -> usize {
        let Self { config, values, offsets: o, hidden, probabilities, from_heads, dz, down, alpha_before, losses } =
            self;
        let (d, w, c, layers) = (config.inputs, config.width, config.classes, config.hidden_layers);
        let k = config.heads();
        let first_hidden_head = k - layers;
        let lr = config.learning_rate;

        // Forward: hidden layers, then every head's softmax.
        for l in 0..layers {
            let (weight, bias) = o.hidden[l];
            let (below, rest) = hidden.split_at_mut(l * w);
            let input = if l == 0 { x } else { &below[(l - 1) * w..] };
            let m = if l == 0 { d } else { w };
            let out = &mut rest[..w];
            out.copy_from_slice(&values[bias..bias + w]);
            accumulate_rows(out, &input[..m], &values[weight..weight + m * w]);
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        if let Some((weight, bias)) = o.input_head {
            head_probabilities(values, x, weight, bias, &mut probabilities[..c]);
        }
        for l in 0..layers {
            let at = (first_hidden_head + l) * c;
            let h = &hidden[l * w..(l + 1) * w];
            let (weight, bias) = (o.heads_weight + l * w * c, o.heads_bias + l * c);
            head_probabilities(values, h, weight, bias, &mut probabilities[at..at + c]);
        }
        alpha_before.copy_from_slice(&values[o.alpha..o.alpha + k]);
        mixture.iter_mut().for_each(|m| *m = 0.0);
        for (head, a) in alpha_before.iter().enumerate() {
            axpy(mixture, *a, &probabilities[head * c..(head + 1) * c]);
        }
        let predicted = crate::network::argmax(mixture);

        // Each head's loss, then its logit error g = α (p − y) in place of its probabilities.
        for (head, (a, loss)) in alpha_before.iter().zip(losses.iter_mut()).enumerate() {
            let g = &mut probabilities[head * c..(head + 1) * c];
            *loss = -g[label].max(super::math::PROBABILITY_FLOOR).ln();
            g[label] -= 1.0;
            g.iter_mut().for_each(|v| *v *= a);
        }

        // Heads: the error each sends down (with its weights before the step), then the step.
        if let Some((weight, bias)) = o.input_head {
            let g = &probabilities[..c];
            for (class, &gc) in g.iter().enumerate() {
                axpy(&mut values[weight + class * d..weight + (class + 1) * d], -lr * gc, &x[..d]);
            }
            axpy(&mut values[bias..bias + c], -lr, g);
        }
        for l in 0..layers {
            let g = &probabilities[(first_hidden_head + l) * c..(first_hidden_head + l + 1) * c];
            let h = &hidden[l * w..(l + 1) * w];
            let from = &mut from_heads[l * w..(l + 1) * w];
            let base = o.heads_weight + l * w * c;
            // The error sent down is Wᵀg with the weights before the step (only where the
            // ReLU fired is it used); each class's row takes its step in the same sweep.
            from.fill(0.0);
            for (class, &gc) in g.iter().enumerate() {
                let row = &mut values[base + class * w..base + (class + 1) * w];
                let a = -lr * gc;
                for ((f, r), hj) in from.iter_mut().zip(row.iter_mut()).zip(h) {
                    *f += gc * *r;
                    *r += a * hj;
                }
            }
            let bias = o.heads_bias + l * c;
            axpy(&mut values[bias..bias + c], -lr, g);
        }

        // Hidden layers, top down: dz = (down + from head) masked by the ReLU; each weight row
        // sends its error down and takes its step in one sweep.
        for l in (0..layers).rev() {
            let h = &hidden[l * w..(l + 1) * w];
            let from = &from_heads[l * w..(l + 1) * w];
            let top = l + 1 == layers;
            for j in 0..w {
                let upstream = if top { 0.0 } else { down[j] };
                dz[j] = if h[j] > 0.0 { upstream + from[j] } else { 0.0 };
            }
            let (weight, bias) = o.hidden[l];
            let dz = &dz[..w];
            if l == 0 {
                step_rows(&mut values[weight..weight + d * w], &x[..d], dz, lr);
            } else {
                for (kk, &input) in hidden[(l - 1) * w..l * w].iter().enumerate() {
                    let row = &mut values[weight + kk * w..weight + (kk + 1) * w];
                    down[kk] = if input == 0.0 { 0.0 } else { dot_then_axpy(row, -lr * input, dz) };
                }
            }
            axpy(&mut values[bias..bias + w], -lr, dz);
        }

        // Hedge: α ← α · β^loss, floored at s / L, renormalised.
        let ln_beta = config.beta.ln();
        let floor = config.smoothing / layers as f32;
        let alpha = &mut values[o.alpha..o.alpha + k];
        for (a, loss) in alpha.iter_mut().zip(losses.iter()) {
            *a = (*a * (loss * ln_beta).exp()).max(floor);
        }
        let total: f32 = alpha.iter().sum();
        alpha.iter_mut().for_each(|a| *a /= total);
        predicted
    }
}

/// `softmax(x · W + b)` of one head into `out` (`C` long), W held as `[C, len(x)]` at `weight`.
fn head_probabilities(values: &[f32], x: &[f32], weight: usize, bias: usize, out: &mut [f32]) {
    let n = x.len();
    for (class, o) in out.iter_mut().enumerate() {
        *o = values[bias + class] + dot(x, &values[weight + class * n..weight + (class + 1) * n]);
    }
    let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    out.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        total += *v;
    });
    out.iter_mut().for_each(|v| *v /= total);
}

/// `out ← out + Σ_k input_k · row_k` over the rows of `weights` (row-major, `out`-wide) whose
/// input is not zero, four rows per sweep over `out` (a quarter of the loads and stores of one
/// row at a time).
#[inline]
fn accumulate_rows(out: &mut [f32], input: &[f32], weights: &[f32]) {
    let w = out.len();
    let row = |k: usize| &weights[k * w..(k + 1) * w];
    let mut pending = [(0usize, 0.0f32); 4];
    let mut n = 0;
    for (k, &x) in input.iter().enumerate() {
        if x != 0.0 {
            pending[n] = (k, x);
            n += 1;
            if n == 4 {
                let [(k0, a0), (k1, a1), (k2, a2), (k3, a3)] = pending;
                let rows = row(k0).iter().zip(row(k1)).zip(row(k2)).zip(row(k3));
                for (y, (((r0, r1), r2), r3)) in out.iter_mut().zip(rows) {
                    *y += (a0 * r0 + a1 * r1) + (a2 * r2 + a3 * r3);
                }
                n = 0;
            }
        }
    }
    for &(k, x) in &pending[..n] {
        axpy(out, x, row(k));
    }
}

/// The heads' weight matrices as `(offset, rows, columns)` in the layout's `[rows, columns]`
/// order; [`FusedHbp`] holds each transposed, so that a head is `C` long rows.
fn head_matrices(config: &HbpConfig, offsets: &Offsets) -> Vec<(usize, usize, usize)> {
    let (d, w, c) = (config.inputs, config.width, config.classes);
    let input = offsets.input_head.map(|(weight, _)| (weight, d, c));
    input.into_iter().chain((0..config.hidden_layers).map(|l| (offsets.heads_weight + l * w * c, w, c))).collect()
}

/// Transposes the row-major `[rows, cols]` matrix `m` in place into `[cols, rows]`.
fn transpose(m: &mut [f32], rows: usize, cols: usize) {
    let source = m.to_vec();
    for r in 0..rows {
        for c in 0..cols {
            m[c * rows + r] = source[r * cols + c];
        }
    }
}

/// `Σ a_i · b_i` in eight independent partial sums (so that the compiler vectorises it).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The SGD step of the first layer's weights (row-major, `dz`-wide): each row `k` whose input
/// is not zero takes `row_k ← row_k − lr · input_k · dz`, four rows per sweep over `dz`. (The
/// layers above also send their error down, row by row: four rows per sweep measured slower.)
fn step_rows(weights: &mut [f32], input: &[f32], dz: &[f32], lr: f32) {
    let w = dz.len();
    let single = |weights: &mut [f32], k: usize, x: f32| axpy(&mut weights[k * w..(k + 1) * w], -lr * x, dz);
    let mut pending = [(0usize, 0.0f32); 4];
    let mut n = 0;
    for (k, &x) in input.iter().enumerate() {
        if x == 0.0 {
            continue;
        }
        pending[n] = (k, x);
        n += 1;
        if n < 4 {
            continue;
        }
        n = 0;
        let [(k0, x0), (k1, x1), (k2, x2), (k3, x3)] = pending;
        // Distinct rows (k rises), so the ranges are disjoint.
        let ranges = [k0 * w..(k0 + 1) * w, k1 * w..(k1 + 1) * w, k2 * w..(k2 + 1) * w, k3 * w..(k3 + 1) * w];
        match weights.get_disjoint_mut(ranges) {
            Ok(rows) => axpy4(rows, [-lr * x0, -lr * x1, -lr * x2, -lr * x3], dz),
            Err(_) => pending.iter().for_each(|&(k, x)| single(weights, k, x)),
        }
    }
    pending[..n].iter().for_each(|&(k, x)| single(weights, k, x));
}

/// `row_i ← row_i + a_i · g` for four rows in one sweep over `g`.
#[inline]
fn axpy4(rows: [&mut [f32]; 4], a: [f32; 4], g: &[f32]) {
    let [r0, r1, r2, r3] = rows;
    let rows = r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter_mut());
    for ((((q0, q1), q2), q3), x) in rows.zip(g) {
        *q0 += a[0] * x;
        *q1 += a[1] * x;
        *q2 += a[2] * x;
        *q3 += a[3] * x;
    }
}

/// `y ← y + a · x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// `Σ row_i · g_i` with the row as it was, then `row ← row + a · g`, in one sweep; the sum
/// in eight independent partial sums (so that the compiler vectorises it).
#[inline]
fn dot_then_axpy(row: &mut [f32], a: f32, g: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut row_chunks = row.chunks_exact_mut(8);
    let mut g_chunks = g.chunks_exact(8);
    for (r, x) in (&mut row_chunks).zip(&mut g_chunks) {
        for i in 0..8 {
            lanes[i] += r[i] * x[i];
            r[i] += a * x[i];
        }
    }
    let mut tail = 0.0;
    for (r, x) in row_chunks.into_remainder().iter_mut().zip(g_chunks.remainder()) {
        tail += *r * x;
        *r += a * x;
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// A learnable stream: standardised-looking features, the label a function of them.
    fn stream(n: usize, d: usize, classes: usize, seed: u64) -> Vec<(Vec<f32>, u32)> {
        let mut state = seed;
        (0..n)
            .map(|i| {
                let x: Vec<f32> = (0..d)
                    .map(|j| {
                        state = flotilla_protocol::workload::splitmix64(state);
                        // Some exact zeros, as standardisation gives the first rows.
                        if (i + j) % 11 == 0 { 0.0 } else { ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0 }
                    })
                    .collect();
                let score = x[0] + 0.5 * x[1] - x[d - 1];
                let label = ((score + 3.0).max(0.0) as usize).min(classes - 1) as u32;
                (x, label)
            })
            .collect()
    }

    /// Same predictions over 1,000 rows as the burn learner on the CPU, and parameters
    /// within 1e-4 (relative, or absolute below 1) after them, with and without the input
    /// head.
    #[test]
    fn matches_the_burn_learner() {
        for input_head in [true, false] {
            let config = HbpConfig { hidden_layers: 4, width: 24, input_head, seed: 5, ..HbpConfig::new(6, 3) };
            let device = Device::flex();
            let mut reference = HbpModel::new(config.clone(), &device).unwrap();
            let mut fused = FusedHbp::new(config.clone()).unwrap();
            assert_eq!(fused.to_parameters().unwrap(), reference.to_parameters().unwrap());
            let mut mixture = vec![0.0; 3];
            let mut agree = 0;
            for (row, (x, y)) in stream(1000, 6, 3, 42).iter().enumerate() {
                let batch = reference.batch(x, &[*y]);
                let expected: Vec<f32> = reference.learn_proba(batch, None).try_into_vec_as::<f32>().unwrap();
                let class = fused.learn(x, *y as usize, &mut mixture);
                for (a, b) in mixture.iter().zip(&expected) {
                    assert!((a - b).abs() < 1e-4, "row {row}: {mixture:?} vs {expected:?}");
                }
                agree += usize::from(class == crate::network::argmax(&expected));
            }
            assert_eq!(agree, 1000, "input head {input_head}");
            let (a, b) = (fused.to_parameters().unwrap(), reference.to_parameters().unwrap());
            for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
                assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "parameter {i}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let config = HbpConfig { hidden_layers: 1, width: 4, ..HbpConfig::new(2, 2) };
        let mut params = FusedHbp::new(config.clone()).unwrap().to_parameters().unwrap();
        let last = params.values.len() - 1;
        params.values[last] = 5.0;
        assert!(matches!(FusedHbp::from_parameters(config.clone(), &params), Err(ModelError::InvalidAlpha { .. })));
        params.values[0] = f32::NAN;
        assert!(FusedHbp::from_parameters(config.clone(), &params).is_err());
        let other = HbpConfig { width: 5, ..config };
        assert!(FusedHbp::from_parameters(other, &params).is_err());
    }
}
