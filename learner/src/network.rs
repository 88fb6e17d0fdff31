//! A served network in plain Rust: the HBP prediction graph (input stage → ReLU trunk → softmax
//! heads → α-mix) as explicit dense layers, so that it can be reshaped after training (fused,
//! pruned, quantised, cut at a depth) and still be evaluated and exported.
//!
//! [`Network::from_hbp`] builds the graph of a trained HBP network; [`Network::forward`] is
//! the one plain-Rust forward pass of the served model (the HTTP API's [`crate::infer`] uses
//! it for a few rows). The layers are general: a pruned trunk may be narrower than the HBP
//! config's width, and a head may read any depth.

use flotilla_protocol::model::hbp::{HbpConfig, layout};
use flotilla_protocol::params::{ParameterError, ParameterVector};

/// How raw features become the trunk's input.
#[derive(Debug, Clone, PartialEq)]
pub enum InputStage {
    /// The rows are used as they are (already standardised).
    Identity,
    /// `z = clamp((x − mean) · inv_std, −clip, clip)`: the learner's standardisation.
    Standardize {
        /// Per-feature mean.
        mean: Vec<f32>,
        /// Per-feature 1 / standard deviation (0 for a feature without spread).
        inv_std: Vec<f32>,
        /// The clip on standardised values.
        clip: f32,
    },
    /// `x' = min(max(x, low), high)`: what remains of a standardisation folded into the
    /// layers that read the input (see `flotilla-export`'s fusion): the clip, moved to the
    /// raw scale, so that folding changes no prediction.
    Clamp {
        /// Per-feature lower bound.
        low: Vec<f32>,
        /// Per-feature upper bound.
        high: Vec<f32>,
    },
}

impl InputStage {
    /// Depth 0 of every row of `rows` (row-major, `inputs` a row).
    pub fn apply(&self, rows: &[f32], inputs: usize) -> Vec<f32> {
        let d = inputs.max(1);
        match self {
            InputStage::Identity => rows.to_vec(),
            InputStage::Standardize { mean, inv_std, clip } => rows
                .chunks_exact(d)
                .flat_map(|row| {
                    row.iter().zip(mean).zip(inv_std).map(|((&x, &m), &s)| ((x - m) * s).clamp(-clip, *clip))
                })
                .collect(),
            InputStage::Clamp { low, high } => rows
                .chunks_exact(d)
                .flat_map(|row| row.iter().zip(low).zip(high).map(|((&x, &lo), &hi)| x.max(lo).min(hi)))
                .collect(),
        }
    }
}

/// How a layer's weights are stored when exported (the values used by [`Network::forward`]
/// are always [`Dense::weight`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// Every weight as an f32.
    Dense,
    /// Only the non-zero weights, with their indices (a pruned layer).
    Sparse,
    /// Symmetric int8 per output unit: `weight[k][j] = q[k][j] · scales[j]`, `q` in −127..=127.
    Int8 {
        /// One scale per output unit.
        scales: Vec<f32>,
    },
}

/// `y = x · W + b`, W row-major `[inputs, outputs]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Row-major `[inputs, outputs]`.
    pub weight: Vec<f32>,
    /// `[outputs]`.
    pub bias: Vec<f32>,
    /// How the weights are exported.
    pub storage: Storage,
}

impl Dense {
    /// A dense layer from its parts (lengths must agree).
    pub fn new(inputs: usize, outputs: usize, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        debug_assert_eq!(weight.len(), inputs * outputs);
        debug_assert_eq!(bias.len(), outputs);
        Self { inputs, outputs, weight, bias, storage: Storage::Dense }
    }

    /// Number of non-zero weights.
    pub fn nonzero(&self) -> usize {
        self.weight.iter().filter(|w| **w != 0.0).count()
    }

    /// `out[r] = x[r] · W + b` for every row of `x` (`rows × inputs`); each row of W is read
    /// once for all rows, and zero inputs (dead ReLUs, pruned weights' sources) are skipped.
    pub fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        let (m, n) = (self.inputs, self.outputs);
        let rows = x.len().checked_div(m).unwrap_or(0);
        out.clear();
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        for k in 0..m {
            let w_row = &self.weight[k * n..(k + 1) * n];
            for r in 0..rows {
                let xv = x[r * m + k];
                if xv != 0.0 {
                    let o = &mut out[r * n..(r + 1) * n];
                    o.iter_mut().zip(w_row).for_each(|(o, w)| *o += xv * w);
                }
            }
        }
    }
}

/// A classifier head: a dense layer on one depth of the trunk, and its weight in the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The depth it reads: 0 the input stage's output, `l + 1` hidden layer `l`'s output.
    pub source: usize,
    /// Its logits.
    pub dense: Dense,
    /// Its weight α in the mixture of the heads' probabilities.
    pub alpha: f32,
}

/// The prediction graph: `probabilities = Σ_h α_h · softmax(head_h(depth_{source_h}))`.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Raw features per row.
    pub inputs: usize,
    /// Classes.
    pub classes: usize,
    /// How raw rows become depth 0.
    pub input: InputStage,
    /// The ReLU trunk, in order.
    pub layers: Vec<Dense>,
    /// The heads, in the order of their α.
    pub heads: Vec<Head>,
}

/// Why a network could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The parameters do not fit the HBP config.
    #[error(transparent)]
    Parameters(#[from] ParameterError),
    /// The standardisation is for another number of features.
    #[error("feature statistics for {found} features, the model has {expected}")]
    Statistics {
        /// The model's inputs.
        expected: usize,
        /// The statistics' features.
        found: usize,
    },
}

impl Network {
    /// The graph of an HBP network of `config` holding `params`, reading raw rows through
    /// `input`.
    pub fn from_hbp(config: &HbpConfig, params: &ParameterVector, input: InputStage) -> Result<Self, NetworkError> {
        params.check(&layout(config))?;
        let (d, w, c) = (config.inputs, config.width, config.classes);
        match &input {
            InputStage::Standardize { mean, inv_std, .. } if mean.len() != d || inv_std.len() != d => {
                return Err(NetworkError::Statistics { expected: d, found: mean.len() });
            }
            InputStage::Clamp { low, high } if low.len() != d || high.len() != d => {
                return Err(NetworkError::Statistics { expected: d, found: low.len() });
            }
            _ => {}
        }
        let mut rest = params.values.as_slice();
        let mut take = |len: usize| {
            let (head, tail) = rest.split_at(len);
            rest = tail;
            head.to_vec()
        };
        let layers: Vec<Dense> = (0..config.hidden_layers)
            .map(|l| {
                let m = if l == 0 { d } else { w };
                let weight = take(m * w);
                Dense::new(m, w, weight, take(w))
            })
            .collect();
        let input_head = config.input_head.then(|| {
            let weight = take(d * c);
            Dense::new(d, c, weight, take(c))
        });
        let head_weights = take(config.hidden_layers * w * c);
        let head_biases = take(config.hidden_layers * c);
        let alpha = take(config.heads());
        let mut alphas = alpha.into_iter();
        let mut heads = Vec::with_capacity(config.heads());
        if let Some(dense) = input_head {
            heads.push(Head { source: 0, dense, alpha: alphas.next().unwrap_or(0.0) });
        }
        for l in 0..config.hidden_layers {
            let dense = Dense::new(
                w,
                c,
                head_weights[l * w * c..(l + 1) * w * c].to_vec(),
                head_biases[l * c..(l + 1) * c].to_vec(),
            );
            heads.push(Head { source: l + 1, dense, alpha: alphas.next().unwrap_or(0.0) });
        }
        Ok(Self { inputs: d, classes: c, input, layers, heads })
    }

    /// Depth 0 of every row of `rows` (`b × inputs`, row-major): what the trunk and the input
    /// head read.
    pub fn input_stage(&self, rows: &[f32]) -> Vec<f32> {
        self.input.apply(rows, self.inputs)
    }

    /// The mixture's class probabilities of every row (`b × classes`, row-major) of `rows`
    /// (`b × inputs`, row-major; the caller checks lengths and finiteness).
    pub fn forward(&self, rows: &[f32]) -> Vec<f32> {
        let c = self.classes;
        let b = rows.len().checked_div(self.inputs).unwrap_or(0);
        let mut mixed = vec![0.0f32; b * c];
        let mut logits = Vec::with_capacity(b * c);
        let mut h = self.input_stage(rows);
        let mut next = Vec::with_capacity(h.len());
        let deepest = self.heads.iter().map(|head| head.source).max().unwrap_or(0);
        for depth in 0..=deepest.min(self.layers.len()) {
            if depth > 0 {
                self.layers[depth - 1].apply(&h, &mut next);
                next.iter_mut().for_each(|v| *v = v.max(0.0));
                std::mem::swap(&mut h, &mut next);
            }
            for head in self.heads.iter().filter(|head| head.source == depth) {
                head.dense.apply(&h, &mut logits);
                mix(&mut logits, c, head.alpha, &mut mixed);
            }
        }
        mixed
    }

    /// The most probable class of every row.
    pub fn classify(&self, rows: &[f32]) -> Vec<usize> {
        self.forward(rows).chunks_exact(self.classes.max(1)).map(argmax).collect()
    }

    /// Weights and biases of every layer and head, plus α (what the model holds).
    pub fn parameters(&self) -> usize {
        let dense = self.layers.iter().chain(self.heads.iter().map(|h| &h.dense));
        dense.map(|d| d.weight.len() + d.bias.len()).sum::<usize>() + self.heads.len()
    }

    /// Non-zero weights and every bias and α.
    pub fn nonzero_parameters(&self) -> usize {
        let dense = self.layers.iter().chain(self.heads.iter().map(|h| &h.dense));
        dense.map(|d| d.nonzero() + d.bias.len()).sum::<usize>() + self.heads.len()
    }

    /// Every dense layer, trunk first, then the heads.
    pub fn dense_layers_mut(&mut self) -> impl Iterator<Item = &mut Dense> {
        self.layers.iter_mut().chain(self.heads.iter_mut().map(|h| &mut h.dense))
    }

    /// Every dense layer, trunk first, then the heads.
    pub fn dense_layers(&self) -> impl Iterator<Item = &Dense> {
        self.layers.iter().chain(self.heads.iter().map(|h| &h.dense))
    }
}

/// The index of the largest probability (the first of equals).
pub fn argmax(probabilities: &[f32]) -> usize {
    probabilities
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (k, &p)| if p > best.1 { (k, p) } else { best })
        .0
}

/// Turns each row of `logits` into probabilities (a stable softmax) and adds `alpha` times
/// them to `mixed`.
pub(crate) fn mix(logits: &mut [f32], c: usize, alpha: f32, mixed: &mut [f32]) {
    for (z, m) in logits.chunks_exact_mut(c).zip(mixed.chunks_exact_mut(c)) {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0;
        z.iter_mut().for_each(|v| {
            *v = (*v - max).exp();
            total += *v;
        });
        m.iter_mut().zip(z.iter()).for_each(|(m, p)| *m += alpha * p / total);
    }
}
