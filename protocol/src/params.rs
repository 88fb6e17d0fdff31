//! Flat, versioned parameter vectors: the unit the wire protocol ships and checkpoints store.
//!
//! A [`Layout`] names every tensor of a model in order with its shape; its
//! [`Fingerprint`] is a hash of that description, so two peers agree on a vector's
//! meaning exactly when their fingerprints are equal. A [`ParameterVector`] is the
//! values of all those tensors, concatenated row-major, tagged with the layout's
//! fingerprint and [`PARAMETER_FORMAT_VERSION`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the flat parameter format; bumped whenever its meaning changes.
pub const PARAMETER_FORMAT_VERSION: u16 = 2;

/// A stable 64-bit hash of a [`Layout`]'s names and shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub u64);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One named tensor of a layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Name of the tensor, e.g. `hidden.3.weight`.
    pub name: String,
    /// Shape of the tensor, outermost dimension first.
    pub shape: Vec<usize>,
}

impl Segment {
    /// Number of scalars in this tensor.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor holds no scalar at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ordered list of tensors that a flat vector concatenates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    segments: Vec<Segment>,
}

impl Layout {
    /// A layout of the given segments, in order.
    pub fn new(segments: Vec<Segment>) -> Self {
        Self { segments }
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Segment::len).sum()
    }

    /// Whether the layout holds no scalar at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Zeroes in `values` every weight (a scalar of a segment named `*.weight`) that is zero
    /// in `base`: a pruned model's mask, kept through federated fine-tuning. Biases and other
    /// segments are left alone (a fresh model's zero biases are not pruned weights). Vectors
    /// not of this layout's length are left alone.
    pub fn keep_pruned(&self, base: &[f32], values: &mut [f32]) {
        if base.len() != self.len() || values.len() != self.len() {
            return;
        }
        let mut offset = 0;
        for segment in &self.segments {
            let range = offset..offset + segment.len();
            offset = range.end;
            if !segment.name.ends_with(".weight") {
                continue;
            }
            for (v, b) in values[range.clone()].iter_mut().zip(&base[range]) {
                if *b == 0.0 {
                    *v = 0.0;
                }
            }
        }
    }

    /// Hash of the format version and every segment's name and shape.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hasher = Sha256::new();
        hasher.update(PARAMETER_FORMAT_VERSION.to_le_bytes());
        for segment in &self.segments {
            hasher.update((segment.name.len() as u64).to_le_bytes());
            hasher.update(segment.name.as_bytes());
            hasher.update((segment.shape.len() as u64).to_le_bytes());
            for dim in &segment.shape {
                hasher.update((*dim as u64).to_le_bytes());
            }
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Fingerprint(u64::from_le_bytes(first))
    }
}

/// Why a parameter vector was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParameterError {
    /// The vector was written in a format version this build does not read.
    #[error("parameter format version {found} is not supported (this build reads version {expected})")]
    UnsupportedVersion {
        /// Version this build reads.
        expected: u16,
        /// Version found in the vector.
        found: u16,
    },
    /// The vector was made for a model of another shape.
    #[error(
        "parameter layout mismatch: expected fingerprint {expected} ({expected_len} values), found {found} ({found_len} values)"
    )]
    LayoutMismatch {
        /// Fingerprint of the model's layout.
        expected: Fingerprint,
        /// Number of values the model's layout has.
        expected_len: usize,
        /// Fingerprint carried by the vector.
        found: Fingerprint,
        /// Number of values the vector carries.
        found_len: usize,
    },
    /// The fingerprint matched but the number of values did not.
    #[error("parameter vector has {found} values, its layout needs {expected}")]
    LengthMismatch {
        /// Values the layout needs.
        expected: usize,
        /// Values present.
        found: usize,
    },
    /// A value is NaN or infinite.
    #[error("parameter {index} is not finite ({value})")]
    NotFinite {
        /// Position of the first offending value.
        index: usize,
        /// The value itself.
        value: f32,
    },
}

/// All of a model's scalars in layout order, tagged with version and fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterVector {
    /// [`PARAMETER_FORMAT_VERSION`] of the writer.
    pub format_version: u16,
    /// Fingerprint of the writer's [`Layout`].
    pub fingerprint: Fingerprint,
    /// The values, concatenated row-major in layout order; on the wire one byte string of
    /// little-endian `f32`s (see [`le_words`]), not a sequence of separately encoded floats.
    #[serde(with = "le_words")]
    pub values: Vec<f32>,
}

impl ParameterVector {
    /// A vector of `values` for `layout`, at the current format version.
    pub fn new(layout: &Layout, values: Vec<f32>) -> Result<Self, ParameterError> {
        if values.len() != layout.len() {
            return Err(ParameterError::LengthMismatch { expected: layout.len(), found: values.len() });
        }
        Ok(Self { format_version: PARAMETER_FORMAT_VERSION, fingerprint: layout.fingerprint(), values })
    }

    /// Checks that this vector can be loaded into a model of `layout`.
    pub fn check(&self, layout: &Layout) -> Result<(), ParameterError> {
        self.check_shape(layout.fingerprint(), layout.len())
    }

    /// Checks that this vector (a model or a delta) has the current format version, the
    /// given layout fingerprint and length, and only finite values: what both ends check of
    /// every vector the other sends.
    pub fn check_shape(&self, fingerprint: Fingerprint, len: usize) -> Result<(), ParameterError> {
        self.check_layout(fingerprint, len)?;
        self.check_finite()
    }

    /// [`Self::check_shape`], returning the vector's L2 norm (in f64) from the same pass: the
    /// f64 sum of squares of f32 values is finite exactly when every value is (no sum of
    /// squared f32s can overflow it), so one pass over an update both checks and measures it.
    pub fn check_shape_and_norm(&self, fingerprint: Fingerprint, len: usize) -> Result<f64, ParameterError> {
        self.check_layout(fingerprint, len)?;
        let squares = crate::kernels::sum_of_squares(&self.values);
        if !squares.is_finite() {
            self.check_finite()?;
        }
        Ok(squares.sqrt())
    }

    /// The version, fingerprint and length half of [`Self::check_shape`].
    fn check_layout(&self, fingerprint: Fingerprint, len: usize) -> Result<(), ParameterError> {
        if self.format_version != PARAMETER_FORMAT_VERSION {
            return Err(ParameterError::UnsupportedVersion {
                expected: PARAMETER_FORMAT_VERSION,
                found: self.format_version,
            });
        }
        if self.fingerprint != fingerprint {
            return Err(ParameterError::LayoutMismatch {
                expected: fingerprint,
                expected_len: len,
                found: self.fingerprint,
                found_len: self.values.len(),
            });
        }
        if self.values.len() != len {
            return Err(ParameterError::LengthMismatch { expected: len, found: self.values.len() });
        }
        Ok(())
    }

    /// Checks that every value is finite.
    pub fn check_finite(&self) -> Result<(), ParameterError> {
        match first_non_finite(&self.values) {
            Some(index) => Err(ParameterError::NotFinite { index, value: self.values[index] }),
            None => Ok(()),
        }
    }

    /// Splits the values into one slice per segment of `layout` (call [`Self::check`] first).
    pub fn split<'a>(&'a self, layout: &'a Layout) -> impl Iterator<Item = (&'a Segment, &'a [f32])> + 'a {
        let mut offset = 0;
        layout.segments().iter().map(move |segment| {
            let slice = &self.values[offset..offset + segment.len()];
            offset += segment.len();
            (segment, slice)
        })
    }
}

/// The index of the first value that is NaN or infinite, if any: the check every vector and
/// aggregate goes through (one vectorised pass, see [`crate::kernels`]).
pub use crate::kernels::first_non_finite;

/// Serde of a `Vec<f32>` or `Vec<u32>` as one byte string of little-endian words.
///
/// Serialising a sequence costs one serializer call per value and, for bincode's
/// variable-length integers, five bytes per uniformly random word (masked secure-aggregation
/// inputs); a byte string is one length and one copy each way, which matters for
/// multi-megabyte vectors sent every round.
pub mod le_words {
    use std::marker::PhantomData;

    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};

    /// A four-byte value stored little-endian.
    pub trait Word: bytemuck::Pod {
        /// The value from its little-endian bytes.
        fn from_le(bytes: [u8; 4]) -> Self;
        /// The value's little-endian bytes.
        fn to_le(self) -> [u8; 4];
    }

    impl Word for f32 {
        fn from_le(bytes: [u8; 4]) -> Self {
            f32::from_le_bytes(bytes)
        }
        fn to_le(self) -> [u8; 4] {
            self.to_le_bytes()
        }
    }

    impl Word for u32 {
        fn from_le(bytes: [u8; 4]) -> Self {
            u32::from_le_bytes(bytes)
        }
        fn to_le(self) -> [u8; 4] {
            self.to_le_bytes()
        }
    }

    /// Serialises `values` as one byte string of little-endian words: on a little-endian
    /// machine the values' own bytes, without an intermediate copy.
    pub fn serialize<S: Serializer, T: Word>(values: &[T], serializer: S) -> Result<S::Ok, S::Error> {
        if cfg!(target_endian = "little") {
            return serializer.serialize_bytes(bytemuck::cast_slice(values));
        }
        serializer.serialize_bytes(&copied(values))
    }

    /// `values`' little-endian bytes, copied (what a big-endian machine needs).
    fn copied<T: Word>(values: &[T]) -> Vec<u8> {
        values.iter().flat_map(|value| value.to_le()).collect()
    }

    /// `values` as one byte string of little-endian words, owned: on a little-endian machine
    /// the values' own memory, without a copy.
    pub fn into_bytes<T: Word + Send + 'static>(values: Vec<T>) -> bytes::Bytes {
        if cfg!(target_endian = "little") {
            return bytes::Bytes::from_owner(LeBytes(values));
        }
        bytes::Bytes::from(copied(&values))
    }

    /// Words viewed as their bytes (little-endian on a little-endian machine).
    #[derive(Debug)]
    struct LeBytes<T>(Vec<T>);

    impl<T: bytemuck::Pod> AsRef<[u8]> for LeBytes<T> {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }

    /// Reads a byte string whose length is a multiple of four back into words.
    pub fn deserialize<'de, D: Deserializer<'de>, T: Word>(deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_bytes(Words(PhantomData))
    }

    struct Words<T>(PhantomData<T>);

    impl<'de, T: Word> Visitor<'de> for Words<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string of little-endian 4-byte words")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<T>, E> {
            let (chunks, rest) = bytes.as_chunks::<4>();
            if !rest.is_empty() {
                return Err(E::invalid_length(bytes.len(), &"a multiple of 4 bytes"));
            }
            // One pass writing each word once: the payload need not be aligned for `T`, and
            // collecting from an exact-size iterator does not zero the vector first (a
            // zeroed vector plus a copy measured 1.5x slower for a 4 MB model).
            Ok(chunks.iter().map(|chunk| T::from_le(*chunk)).collect())
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<T>, E> {
            self.visit_bytes(&bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(shape: Vec<usize>) -> Layout {
        Layout::new(vec![Segment { name: "w".into(), shape }, Segment { name: "b".into(), shape: vec![3] }])
    }

    #[test]
    fn fingerprint_depends_on_shapes_and_names() {
        assert_eq!(layout(vec![2, 3]).fingerprint(), layout(vec![2, 3]).fingerprint());
        assert_ne!(layout(vec![2, 3]).fingerprint(), layout(vec![3, 2]).fingerprint());
        let renamed = Layout::new(vec![
            Segment { name: "v".into(), shape: vec![2, 3] },
            Segment { name: "b".into(), shape: vec![3] },
        ]);
        assert_ne!(renamed.fingerprint(), layout(vec![2, 3]).fingerprint());
    }

    #[test]
    fn mismatched_layout_is_refused_with_both_fingerprints() {
        let vector = ParameterVector::new(&layout(vec![2, 3]), vec![0.5; 9]).unwrap();
        assert_eq!(vector.check(&layout(vec![2, 3])), Ok(()));
        let err = vector.check(&layout(vec![3, 3])).unwrap_err();
        assert!(matches!(err, ParameterError::LayoutMismatch { expected_len: 12, found_len: 9, .. }), "{err}");
        assert!(err.to_string().contains("fingerprint"));
    }

    proptest::proptest! {
        #[test]
        fn first_non_finite_finds_the_first_bad_value(
            len in 0usize..400,
            bad in proptest::collection::vec((0usize..400, 0usize..3), 0..4),
        ) {
            let mut values: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 7.0).collect();
            for (at, kind) in bad {
                if at < len {
                    values[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][kind];
                }
            }
            let expected = values.iter().position(|v| !v.is_finite());
            proptest::prop_assert_eq!(first_non_finite(&values), expected);
            // The fused check finds the same value, or measures the vector.
            let shape = Layout::new(vec![Segment { name: "w".into(), shape: vec![len] }]);
            let vector = ParameterVector::new(&shape, values.clone()).unwrap();
            match (vector.check_shape_and_norm(shape.fingerprint(), len), expected) {
                (Err(ParameterError::NotFinite { index, .. }), Some(at)) => proptest::prop_assert_eq!(index, at),
                (Ok(norm), None) => {
                    let plain = values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                    proptest::prop_assert!((norm - plain).abs() <= 1e-12 * plain.max(1.0));
                }
                (other, _) => proptest::prop_assert!(false, "{other:?} for {expected:?}"),
            }
        }
    }

    #[test]
    fn the_largest_floats_are_finite_to_the_fused_check() {
        let shape = Layout::new(vec![Segment { name: "w".into(), shape: vec![100_000] }]);
        let vector = ParameterVector::new(&shape, vec![f32::MAX; 100_000]).unwrap();
        let norm = vector.check_shape_and_norm(shape.fingerprint(), 100_000).unwrap();
        assert!((norm / (f64::from(f32::MAX) * 100_000f64.sqrt()) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn wrong_length_version_and_nan_are_refused() {
        assert!(ParameterVector::new(&layout(vec![2, 3]), vec![0.0; 8]).is_err());
        let mut vector = ParameterVector::new(&layout(vec![2, 3]), vec![0.0; 9]).unwrap();
        vector.values[4] = f32::NAN;
        assert!(matches!(vector.check(&layout(vec![2, 3])), Err(ParameterError::NotFinite { index: 4, .. })));
        vector.values[4] = 0.0;
        vector.format_version = 99;
        assert!(matches!(vector.check(&layout(vec![2, 3])), Err(ParameterError::UnsupportedVersion { found: 99, .. })));
    }

    #[test]
    fn values_travel_as_one_byte_string() {
        let l = layout(vec![2, 3]);
        let vector = ParameterVector::new(&l, (0..9).map(|v| v as f32 - 4.5).collect()).unwrap();
        let bytes = bincode::serde::encode_to_vec(&vector, bincode::config::standard()).unwrap();
        // Version (1 byte), fingerprint (a varint, at most 9), length (1) and the 36 value bytes.
        assert!(bytes.len() <= 1 + 9 + 1 + 36, "{} bytes", bytes.len());
        let (back, _): (ParameterVector, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, vector);
        // The same shape of payload with 35 value bytes: not a whole number of floats.
        let ragged =
            bincode::serde::encode_to_vec((2u16, vector.fingerprint, vec![0u8; 35]), bincode::config::standard())
                .unwrap();
        assert!(bincode::serde::decode_from_slice::<ParameterVector, _>(&ragged, bincode::config::standard()).is_err());
    }

    #[test]
    fn split_follows_the_layout() {
        let l = layout(vec![2, 3]);
        let vector = ParameterVector::new(&l, (0..9).map(|v| v as f32).collect()).unwrap();
        let parts: Vec<_> = vector.split(&l).map(|(s, v)| (s.name.clone(), v.to_vec())).collect();
        assert_eq!(parts[0], ("w".to_string(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
        assert_eq!(parts[1], ("b".to_string(), vec![6.0, 7.0, 8.0]));
    }
}
