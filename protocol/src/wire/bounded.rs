//! Sequences with a hard bound on their length, for everything a peer sends.
//!
//! bincode's serde decoder allocates a `Vec` element by element as it reads them, and an
//! element can be far larger in memory than on the wire (an empty `Vec<u8>` is one byte on
//! the wire and 24 in memory): a 64 MiB frame of empty entries would become more than a GiB.
//! Every sequence a peer sends is therefore declared with a bound (`#[serde(with =
//! "bounded::seq::<N>")]`-style helpers below): a longer announced length is refused from the
//! length prefix, before anything is allocated, and the vector is preallocated to at most
//! the bound. The bounds follow from the protocol (a secure-aggregation session has at most
//! [`MAX_COHORT`] clients, a sealed share pair is [`MAX_SEALED_BYTES`] bytes at most).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error as _, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// Most clients in one secure-aggregation session (and so neighbours, shares, keys listed in
/// one message). The fixed-point headroom allows 32,767 summands at the default precision.
pub const MAX_COHORT: usize = 65_536;

/// Most bytes of one sealed share pair (two shares and the AEAD tag, with room to spare).
pub const MAX_SEALED_BYTES: usize = 256;

/// Most features of a model's input (and so entries of its feature statistics).
pub const MAX_FEATURES: usize = 1 << 20;

/// Deserialises a `Vec<T>` of at most `MAX` elements; serialises it unchanged.
pub fn deserialize<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(BoundedVisitor::<T, MAX>(PhantomData))
}

/// Serialises a slice as a sequence (the counterpart of [`deserialize`]).
pub fn serialize<S, T>(values: &[T], serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Serialize,
{
    serializer.collect_seq(values)
}

struct BoundedVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for BoundedVisitor<T, MAX> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        if let Some(len) = seq.size_hint()
            && len > MAX
        {
            return Err(A::Error::custom(format!("a sequence of {len} elements exceeds the bound of {MAX}")));
        }
        // Grown as elements actually arrive: a prefix alone reserves at most 4,096 slots.
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(4096));
        while let Some(value) = seq.next_element()? {
            if values.len() == MAX {
                return Err(A::Error::custom(format!("a sequence exceeds the bound of {MAX} elements")));
            }
            values.push(value);
        }
        Ok(values)
    }
}

/// `#[serde(with = "…")]` modules for the bounds in use.
macro_rules! bounded_module {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        pub mod $name {
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            /// See [`super::deserialize`].
            pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
                super::deserialize::<D, T, { $max }>(d)
            }

            /// See [`super::serialize`].
            pub fn serialize<S: Serializer, T: Serialize>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
                super::serialize(values, s)
            }
        }
    };
}

bounded_module!(
    /// At most [`MAX_COHORT`] elements: one per client of a session.
    cohort,
    super::MAX_COHORT
);
bounded_module!(
    /// At most [`MAX_FEATURES`] elements: one per input feature.
    features,
    super::MAX_FEATURES
);
bounded_module!(
    /// At most [`MAX_SEALED_BYTES`] bytes: one sealed share pair.
    sealed_bytes,
    super::MAX_SEALED_BYTES
);

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::wire::framing::{FrameLimit, decode_message, encode_frame};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Lists {
        #[serde(with = "super::sealed_bytes")]
        bytes: Vec<u8>,
        #[serde(with = "super::cohort")]
        nested: Vec<Vec<u8>>,
    }

    #[test]
    fn sequences_within_their_bound_round_trip_and_longer_ones_are_refused_from_the_prefix() {
        let fine = Lists { bytes: vec![7; 256], nested: vec![vec![1, 2]; 3] };
        let frame = encode_frame(&fine, FrameLimit::DEFAULT).unwrap();
        assert_eq!(decode_message::<Lists>(&frame[4..]).unwrap(), fine);
        let long = Lists { bytes: vec![7; 257], nested: vec![] };
        let frame = encode_frame(&long, FrameLimit::DEFAULT).unwrap();
        let error = decode_message::<Lists>(&frame[4..]).unwrap_err().to_string();
        assert!(error.contains("exceeds the bound of 256"), "{error}");
        // A prefix announcing 10 million empty entries, with none of them sent.
        let mut payload = vec![0u8]; // empty `bytes`
        payload.push(252); // bincode varint: a u32 follows
        payload.extend_from_slice(&10_000_000u32.to_le_bytes());
        let error = decode_message::<Lists>(&payload).unwrap_err().to_string();
        assert!(error.contains("exceeds the bound of 65536"), "{error}");
    }
}
