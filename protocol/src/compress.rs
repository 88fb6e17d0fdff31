//! Compression of model updates: int8 quantisation and top-k sparsification with error feedback.
//!
//! A client turns its f32 delta into a [`CompressedDelta`], the one wire type of this module:
//!
//! - [`CompressedDelta::Dense`]: the values as they are (no compression);
//! - [`CompressedDelta::Int8`]: [`Int8Chunks`], the values in chunks of [`DEFAULT_CHUNK`]
//!   values with one f32 scale per chunk (`max |x| / 127`) and one `i8` per value, rounded
//!   stochastically so that the decoded value is an unbiased estimate of the original. About
//!   a quarter of the fp32 bytes (0.254× at the default chunk, scales and headers included);
//! - [`CompressedDelta::Sparse`]: the `k = ⌈fraction·n⌉` coordinates of largest magnitude,
//!   their indices sorted and sent as gaps (bincode's varints make a gap below 251 one byte),
//!   their values either f32 or [`Int8Chunks`]. Top-1 % with int8 values is about 0.5 % of
//!   the fp32 bytes.
//!
//! Top-k is biased: what is not sent is lost. An [`ErrorFeedback`] keeps it instead (Stich et
//! al., "Sparsified SGD with Memory", 2018; Karimireddy et al., "Error Feedback Fixes SignSGD",
//! 2019): every delta is added to the residual of the previous ones before compression, and
//! whatever of that sum was not sent (after dequantisation) becomes the new residual. The sum
//! of what a client sends over its rounds thus stays within one residual of the sum of its
//! deltas. Int8 with stochastic rounding is unbiased on its own and is used without it.
//!
//! [`Compression`] names a scheme as a command-line flag would (`none`, `int8`, `int8:128`,
//! `topk:0.01`, `topk:0.01+int8`); a [`Compressor`] holds one and the client's error
//! feedback, and compresses one delta per round. Randomness (stochastic rounding) comes from
//! the caller's RNG.
//!
//! Everything decoded from a peer goes through [`CompressedDelta::validate`] (which
//! [`CompressedDelta::to_dense`] and [`CompressedDelta::fold_into`] call themselves): lengths,
//! indices, chunk sizes and scales are checked and refused with a [`CompressError`], never a
//! panic. A sparse delta declares its length: compare [`CompressedDelta::len`] with the
//! model's length before [`CompressedDelta::to_dense`] allocates it (`fold_into` does so).

use std::num::NonZeroU32;

use rand_core::Rng;
use rand_distr::{Distribution, StandardUniform};
use serde::{Deserialize, Serialize};

/// Values per int8 chunk unless configured otherwise: one f32 scale per 256 values.
pub const DEFAULT_CHUNK: NonZeroU32 = match NonZeroU32::new(256) {
    Some(chunk) => chunk,
    None => NonZeroU32::MIN,
};

/// Longest delta a sparse encoding can index (indices are `u32`).
pub const MAX_SPARSE_LEN: usize = u32::MAX as usize;

/// Why a delta could not be compressed, or a compressed delta was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CompressError {
    /// A value to compress (or a transmitted f32 value) is NaN or infinite.
    #[error("value {index} is not finite")]
    NotFinite {
        /// Position of the first offending value.
        index: usize,
    },
    /// A delta is too long for a sparse encoding's `u32` indices.
    #[error("{len} values are more than a sparse delta can index ({max})", max = MAX_SPARSE_LEN)]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Int8 chunks of zero values.
    #[error("int8 chunk size is zero")]
    ZeroChunk,
    /// The number of int8 scales does not match the number of chunks.
    #[error("{found} int8 scales for {expected} chunks")]
    ScaleCount {
        /// Chunks of the values (`⌈values / chunk⌉`).
        expected: usize,
        /// Scales present.
        found: usize,
    },
    /// An int8 scale is negative, NaN, or so large that decoded values overflow.
    #[error("int8 scale {scale} of chunk {chunk} is not a finite non-negative scale")]
    BadScale {
        /// The chunk.
        chunk: usize,
        /// Its scale.
        scale: f32,
    },
    /// An int8 value is −128, outside the symmetric range ±127 that quantisation produces.
    #[error("int8 value {index} is -128, outside ±127")]
    Int8OutOfRange {
        /// Position of the value.
        index: usize,
    },
    /// A sparse delta carries another number of values than of indices.
    #[error("sparse delta has {indices} indices but {values} values")]
    ValueCount {
        /// Indices (gaps) present.
        indices: usize,
        /// Values present.
        values: usize,
    },
    /// A sparse index is not below the declared length.
    #[error("sparse index {index} (entry {position}) is out of range for length {len}")]
    IndexOutOfRange {
        /// Entry of the offending index.
        position: usize,
        /// The index (sum of the gaps so far).
        index: u64,
        /// The declared length.
        len: u32,
    },
    /// A gap of zero after the first entry: indices must be strictly increasing.
    #[error("sparse index of entry {position} does not increase")]
    IndexNotIncreasing {
        /// Entry of the zero gap.
        position: usize,
    },
    /// A delta (or an accumulator, or an error-feedback residual) has the wrong length.
    #[error("expected {expected} values, found {found}")]
    LengthMismatch {
        /// Length required.
        expected: usize,
        /// Length found.
        found: usize,
    },
    /// A top-k fraction outside (0, 1].
    #[error("top-k fraction {0} is not in (0, 1]")]
    BadFraction(f64),
    /// A compression flag that names no scheme.
    #[error("unknown compression {0:?} (none, int8, int8:<chunk>, topk:<fraction>, topk:<fraction>+int8)")]
    UnknownScheme(String),
}

/// The fraction of coordinates top-k keeps, in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct KeepFraction(f64);

impl KeepFraction {
    /// `fraction` if it lies in (0, 1].
    pub fn new(fraction: f64) -> Result<Self, CompressError> {
        if fraction > 0.0 && fraction <= 1.0 { Ok(Self(fraction)) } else { Err(CompressError::BadFraction(fraction)) }
    }

    /// The fraction.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Coordinates kept out of `len`: `⌈fraction·len⌉`, at most `len`.
    pub fn keep(self, len: usize) -> usize {
        let kept = (self.0 * len as f64).ceil();
        if kept >= len as f64 { len } else { kept as usize }
    }
}

impl std::fmt::Display for KeepFraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Int8-quantised values: chunks of `chunk` values sharing one f32 scale.
///
/// Value `i` decodes to `values[i] as i8 · scales[i / chunk]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Chunks {
    /// Values per chunk; the last chunk may be shorter.
    pub chunk: u32,
    /// One scale per chunk, `max |x| / 127` of its values.
    pub scales: Vec<f32>,
    /// The quantised values, each an `i8` in ±127 stored as its two's-complement byte
    /// (serialised as one byte string, not as a sequence).
    #[serde(with = "byte_string")]
    pub values: Vec<u8>,
}

impl Int8Chunks {
    /// Quantises `values` in chunks of `chunk`, rounding stochastically with `rng`.
    ///
    /// A value `x` of a chunk with scale `s` becomes `⌊x/s⌋` or `⌊x/s⌋ + 1`, the latter with
    /// probability `x/s − ⌊x/s⌋`, so the decoded value is `x` in expectation and within one
    /// step `s` of it. Values should be finite (a chunk holding ∞ decodes to zeros).
    pub fn quantize<R: Rng + ?Sized>(values: &[f32], chunk: NonZeroU32, rng: &mut R) -> Self {
        let size = chunk.get() as usize;
        let mut scales = Vec::with_capacity(values.len().div_ceil(size));
        let mut bytes = Vec::with_capacity(values.len());
        for block in values.chunks(size) {
            let max = block.iter().fold(0.0f32, |max, value| max.max(value.abs()));
            let scale = max / 127.0;
            if scale > 0.0 && scale.is_finite() {
                scales.push(scale);
                let scale = f64::from(scale);
                for &value in block {
                    let scaled = f64::from(value) / scale;
                    let low = scaled.floor();
                    let up: f64 = StandardUniform.sample(rng);
                    let rounded = if up < scaled - low { low + 1.0 } else { low };
                    bytes.push((rounded.clamp(-127.0, 127.0) as i8).cast_unsigned());
                }
            } else {
                scales.push(0.0);
                bytes.resize(bytes.len() + block.len(), 0);
            }
        }
        Self { chunk: chunk.get(), scales, values: bytes }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Checks the chunk size, the number of scales, every scale and every value.
    pub fn validate(&self) -> Result<(), CompressError> {
        let size = NonZeroU32::new(self.chunk).ok_or(CompressError::ZeroChunk)?.get() as usize;
        let expected = self.values.len().div_ceil(size);
        if self.scales.len() != expected {
            return Err(CompressError::ScaleCount { expected, found: self.scales.len() });
        }
        // ±127 · scale must stay finite.
        if let Some((chunk, &scale)) =
            self.scales.iter().enumerate().find(|(_, scale)| !(**scale >= 0.0 && (**scale * 127.0).is_finite()))
        {
            return Err(CompressError::BadScale { chunk, scale });
        }
        if let Some(index) = self.values.iter().position(|&byte| byte.cast_signed() == i8::MIN) {
            return Err(CompressError::Int8OutOfRange { index });
        }
        Ok(())
    }

    /// The decoded values, in order (of a validated instance: a missing scale reads as 0).
    fn decoded(&self) -> impl Iterator<Item = f32> + '_ {
        let size = (self.chunk as usize).max(1);
        self.values.chunks(size).enumerate().flat_map(move |(chunk, bytes)| {
            let scale = self.scales.get(chunk).copied().unwrap_or(0.0);
            bytes.iter().map(move |&byte| f32::from(byte.cast_signed()) * scale)
        })
    }

    /// The decoded values, after [`Int8Chunks::validate`].
    pub fn to_dense(&self) -> Result<Vec<f32>, CompressError> {
        self.validate()?;
        Ok(self.decoded().collect())
    }
}

/// The values of a sparse delta, in index order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SparseValues {
    /// Plain f32 values.
    F32(Vec<f32>),
    /// Int8-quantised values (chunks over the kept values, not over the whole delta).
    Int8(Int8Chunks),
}

impl SparseValues {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(values) => values.len(),
            Self::Int8(chunks) => chunks.len(),
        }
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn validate(&self) -> Result<(), CompressError> {
        match self {
            Self::F32(values) => check_finite(values),
            Self::Int8(chunks) => chunks.validate(),
        }
    }

    /// The decoded values (of a validated instance).
    fn decoded(&self) -> Box<dyn Iterator<Item = f32> + '_> {
        match self {
            Self::F32(values) => Box::new(values.iter().copied()),
            Self::Int8(chunks) => Box::new(chunks.decoded()),
        }
    }
}

/// A compressed delta as it crosses the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompressedDelta {
    /// Every value as f32.
    Dense(Vec<f32>),
    /// Every value, int8-quantised.
    Int8(Int8Chunks),
    /// Some coordinates; all others are zero.
    Sparse {
        /// Length of the delta.
        len: u32,
        /// Index gaps: the first index, then each index minus the previous one (≥ 1).
        gaps: Vec<u32>,
        /// One value per index.
        values: SparseValues,
    },
}

impl CompressedDelta {
    /// Length of the delta (declared, for a sparse one).
    pub fn len(&self) -> usize {
        match self {
            Self::Dense(values) => values.len(),
            Self::Int8(chunks) => chunks.len(),
            Self::Sparse { len, .. } => *len as usize,
        }
    }

    /// Whether the delta has no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A short name of the encoding, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dense(_) => "dense",
            Self::Int8(_) => "int8",
            Self::Sparse { values: SparseValues::F32(_), .. } => "sparse",
            Self::Sparse { values: SparseValues::Int8(_), .. } => "sparse+int8",
        }
    }

    /// Checks everything a peer could get wrong: finite values, consistent int8 chunks and
    /// scales, as many values as indices, indices strictly increasing and below the length.
    pub fn validate(&self) -> Result<(), CompressError> {
        match self {
            Self::Dense(values) => check_finite(values),
            Self::Int8(chunks) => chunks.validate(),
            Self::Sparse { len, gaps, values } => {
                if values.len() != gaps.len() {
                    return Err(CompressError::ValueCount { indices: gaps.len(), values: values.len() });
                }
                let mut index = 0u64;
                for (position, &gap) in gaps.iter().enumerate() {
                    if position > 0 && gap == 0 {
                        return Err(CompressError::IndexNotIncreasing { position });
                    }
                    index += u64::from(gap);
                    if index >= u64::from(*len) {
                        return Err(CompressError::IndexOutOfRange { position, index, len: *len });
                    }
                }
                values.validate()
            }
        }
    }

    /// The `(index, value)` pairs a validated delta carries (every index for dense ones).
    fn entries(&self) -> Box<dyn Iterator<Item = (usize, f32)> + '_> {
        match self {
            Self::Dense(values) => Box::new(values.iter().copied().enumerate()),
            Self::Int8(chunks) => Box::new(chunks.decoded().enumerate()),
            Self::Sparse { gaps, values, .. } => Box::new(
                gaps.iter()
                    .scan(0usize, |index, &gap| {
                        *index = index.saturating_add(gap as usize);
                        Some(*index)
                    })
                    .zip(values.decoded()),
            ),
        }
    }

    /// The delta as dense f32 values, after [`CompressedDelta::validate`].
    ///
    /// This allocates [`CompressedDelta::len`] values: check a peer's declared length first.
    pub fn to_dense(&self) -> Result<Vec<f32>, CompressError> {
        self.validate()?;
        if let Self::Dense(values) = self {
            return Ok(values.clone());
        }
        let mut dense = vec![0.0; self.len()];
        for (index, value) in self.entries() {
            if let Some(slot) = dense.get_mut(index) {
                *slot = value;
            }
        }
        Ok(dense)
    }

    /// Adds `weight · value` to `acc` for every value carried, after
    /// [`CompressedDelta::validate`] and a check that `acc` has the delta's length.
    ///
    /// No dense f32 vector is built: a sparse delta touches only its indices. The values
    /// added are exactly those of [`CompressedDelta::to_dense`], widened to f64.
    pub fn fold_into(&self, acc: &mut [f64], weight: f64) -> Result<(), CompressError> {
        if acc.len() != self.len() {
            return Err(CompressError::LengthMismatch { expected: acc.len(), found: self.len() });
        }
        self.validate()?;
        for (index, value) in self.entries() {
            if let Some(slot) = acc.get_mut(index) {
                *slot += weight * f64::from(value);
            }
        }
        Ok(())
    }
}

/// Keeps the `⌈fraction·n⌉` values of largest magnitude of `values` (ties broken arbitrarily),
/// as f32 or, with `int8` set, as int8 chunks of that size.
pub fn top_k<R: Rng + ?Sized>(
    values: &[f32],
    fraction: KeepFraction,
    int8: Option<NonZeroU32>,
    rng: &mut R,
) -> Result<CompressedDelta, CompressError> {
    let len = u32::try_from(values.len()).map_err(|_| CompressError::TooLong { len: values.len() })?;
    let keep = fraction.keep(values.len());
    let mut indices: Vec<u32> = (0..len).collect();
    if keep < indices.len() {
        let magnitude = |index: u32| values.get(index as usize).map_or(0.0, |value| value.abs());
        if let Some(last) = keep.checked_sub(1) {
            indices.select_nth_unstable_by(last, |&a, &b| magnitude(b).total_cmp(&magnitude(a)));
        }
        indices.truncate(keep);
        indices.sort_unstable();
    }
    let mut gaps = Vec::with_capacity(indices.len());
    let mut previous = 0;
    for &index in &indices {
        gaps.push(index - previous);
        previous = index;
    }
    let kept: Vec<f32> = indices.iter().map(|&index| values.get(index as usize).copied().unwrap_or(0.0)).collect();
    let values = match int8 {
        Some(chunk) => SparseValues::Int8(Int8Chunks::quantize(&kept, chunk, rng)),
        None => SparseValues::F32(kept),
    };
    Ok(CompressedDelta::Sparse { len, gaps, values })
}

/// A client's error-feedback memory for top-k: what it did not send yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorFeedback {
    fraction: KeepFraction,
    int8: Option<NonZeroU32>,
    residual: Vec<f32>,
}

impl ErrorFeedback {
    /// Top-k of `fraction` with error feedback, values int8-quantised (in chunks of
    /// [`DEFAULT_CHUNK`]) if `int8`; the residual starts at zero.
    pub fn new(fraction: KeepFraction, int8: bool) -> Self {
        Self { fraction, int8: int8.then_some(DEFAULT_CHUNK), residual: Vec::new() }
    }

    /// What was not sent so far (empty before the first delta, or after a reset).
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Forgets the residual (e.g. when the model's layout changes).
    pub fn reset(&mut self) {
        self.residual.clear();
    }

    /// Compresses `delta + residual` and keeps `delta + residual − sent` (what was sent after
    /// dequantisation) as the new residual.
    ///
    /// Refuses a non-finite delta, or one whose length differs from the residual's; the
    /// residual is left unchanged then. Call it only for a delta that is actually sent.
    pub fn compress<R: Rng + ?Sized>(&mut self, delta: &[f32], rng: &mut R) -> Result<CompressedDelta, CompressError> {
        check_finite(delta)?;
        if !self.residual.is_empty() && self.residual.len() != delta.len() {
            return Err(CompressError::LengthMismatch { expected: self.residual.len(), found: delta.len() });
        }
        let mut corrected = delta.to_vec();
        for (value, residual) in corrected.iter_mut().zip(&self.residual) {
            *value += residual;
        }
        check_finite(&corrected)?;
        let sent = top_k(&corrected, self.fraction, self.int8, rng)?;
        for (index, value) in sent.entries() {
            if let Some(slot) = corrected.get_mut(index) {
                *slot -= value;
            }
        }
        self.residual = corrected;
        Ok(sent)
    }
}

/// A compression scheme, as named on a command line.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Compression {
    /// `none`: dense f32.
    #[default]
    None,
    /// `int8` or `int8:<chunk>`: every value int8-quantised, one scale per `chunk` values.
    Int8 {
        /// Values per scale.
        chunk: NonZeroU32,
    },
    /// `topk:<fraction>` or `topk:<fraction>+int8`: the largest-magnitude fraction of the
    /// coordinates, with error feedback, values f32 or int8 (chunks of [`DEFAULT_CHUNK`]).
    TopK {
        /// Fraction of coordinates kept.
        fraction: KeepFraction,
        /// Whether the kept values are int8-quantised.
        int8: bool,
    },
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Int8 { chunk } if *chunk == DEFAULT_CHUNK => f.write_str("int8"),
            Self::Int8 { chunk } => write!(f, "int8:{chunk}"),
            Self::TopK { fraction, int8: false } => write!(f, "topk:{fraction}"),
            Self::TopK { fraction, int8: true } => write!(f, "topk:{fraction}+int8"),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = CompressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || CompressError::UnknownScheme(text.to_owned());
        match text {
            "none" => return Ok(Self::None),
            "int8" => return Ok(Self::Int8 { chunk: DEFAULT_CHUNK }),
            _ => {}
        }
        if let Some(chunk) = text.strip_prefix("int8:") {
            let chunk = chunk.parse::<NonZeroU32>().map_err(|_| unknown())?;
            return Ok(Self::Int8 { chunk });
        }
        let topk = text.strip_prefix("topk:").ok_or_else(unknown)?;
        let (fraction, int8) = match topk.strip_suffix("+int8") {
            Some(fraction) => (fraction, true),
            None => (topk, false),
        };
        let fraction = KeepFraction::new(fraction.parse::<f64>().map_err(|_| unknown())?)?;
        Ok(Self::TopK { fraction, int8 })
    }
}

impl TryFrom<String> for Compression {
    type Error = CompressError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Compression> for String {
    fn from(compression: Compression) -> Self {
        compression.to_string()
    }
}

/// A client's compressor: the scheme and, for top-k, its error feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct Compressor {
    config: Compression,
    feedback: Option<ErrorFeedback>,
}

impl Compressor {
    /// A compressor for `config`, with an empty residual.
    pub fn new(config: Compression) -> Self {
        let feedback = match config {
            Compression::TopK { fraction, int8 } => Some(ErrorFeedback::new(fraction, int8)),
            Compression::None | Compression::Int8 { .. } => None,
        };
        Self { config, feedback }
    }

    /// The scheme.
    pub fn config(&self) -> Compression {
        self.config
    }

    /// The error-feedback residual, for top-k.
    pub fn residual(&self) -> Option<&[f32]> {
        self.feedback.as_ref().map(ErrorFeedback::residual)
    }

    /// Forgets the error-feedback residual.
    pub fn reset(&mut self) {
        if let Some(feedback) = &mut self.feedback {
            feedback.reset();
        }
    }

    /// Compresses one delta (refusing NaN/∞); top-k folds in and updates the residual.
    pub fn compress<R: Rng + ?Sized>(&mut self, delta: &[f32], rng: &mut R) -> Result<CompressedDelta, CompressError> {
        if let Some(feedback) = &mut self.feedback {
            return feedback.compress(delta, rng);
        }
        check_finite(delta)?;
        Ok(match self.config {
            Compression::Int8 { chunk } => CompressedDelta::Int8(Int8Chunks::quantize(delta, chunk, rng)),
            Compression::None | Compression::TopK { .. } => CompressedDelta::Dense(delta.to_vec()),
        })
    }
}

fn check_finite(values: &[f32]) -> Result<(), CompressError> {
    match crate::params::first_non_finite(values) {
        Some(index) => Err(CompressError::NotFinite { index }),
        None => Ok(()),
    }
}

/// Serde for a `Vec<u8>` as one byte string (`serialize_bytes`): bincode writes its length and
/// the raw bytes, where a sequence would be a varint per byte.
mod byte_string {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a byte string")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        // Self-describing formats without byte strings (JSON) write a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests;
