//! Where the parameter vector of a model, an update or a secure-aggregation masked input sits
//! in its frame ([`SplitDecode`] for [`CoordinatorMessage`] and [`ClientMessage`]), so that a
//! receiver decodes the values into place as they arrive (see [`super::framing`]).
//!
//! bincode writes an enum as its variant index and then the variant's fields in order, and a
//! struct as its fields in order; a vector's values are one byte string (a length, then the
//! bytes). The bytes in front of a `Model`'s, an `Update`'s or a `MaskedInput`'s values are
//! therefore exactly those of a [`ModelHead`], an [`UpdateHead`] or a [`MaskedHead`]; what
//! follows an update's values is its metrics and moments, what follows a masked input's its
//! list of missing partners. The tests encode real messages and read them back through these
//! heads, so a change of the messages' fields that breaks the correspondence fails them.
//!
//! The same heads let a client send an update or a masked input from its own memory
//! ([`encode_client_frame`]): the frame goes out as three pieces, the header and head, the
//! values, the tail, instead of being copied into one buffer first.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::framing::{
    FrameLimit, FramingError, HEADER_LEN, Located, SplitDecode, config, decode_bounded, encode_frame, header,
};
use super::{ClientMessage, CoordinatorMessage, LocalMetrics, Update};
use crate::model::FeatureMoments;
use crate::params::le_words;
use crate::params::{Fingerprint, ParameterVector};
use crate::secagg::{self, MaskedInput};

/// A parameter vector's fields before its values, and the length of the values in bytes.
#[derive(Debug, Serialize, Deserialize)]
struct VectorHead {
    format_version: u16,
    fingerprint: Fingerprint,
    len: u64,
}

impl VectorHead {
    /// The vector, once `values` match the announced length.
    fn with(self, values: Vec<f32>) -> Result<ParameterVector, FramingError> {
        check_len(self.len, values.len())?;
        Ok(ParameterVector { format_version: self.format_version, fingerprint: self.fingerprint, values })
    }
}

/// The bytes of a [`CoordinatorMessage::Model`] before its values.
#[derive(Debug, Serialize, Deserialize)]
struct ModelHead {
    variant: u32,
    model_version: u64,
    round: u64,
    params: VectorHead,
}

/// The bytes of a [`ClientMessage::Update`] before its values.
#[derive(Debug, Serialize, Deserialize)]
struct UpdateHead {
    variant: u32,
    round: u64,
    base_version: u64,
    delta: VectorHead,
}

/// The bytes of a [`ClientMessage::SecAgg`] carrying a [`MaskedInput`] before its words.
#[derive(Debug, Serialize, Deserialize)]
struct MaskedHead {
    variant: u32,
    round: u64,
    /// [`MASKED_INPUT_VARIANT`].
    message: u32,
    len: u64,
}

/// Variant index of [`secagg::ClientMessage::MaskedInput`] on the wire.
const MASKED_INPUT_VARIANT: u32 = 2;

/// What follows a masked input's words.
#[derive(Debug, Serialize, Deserialize)]
struct MaskedTail(#[serde(with = "crate::wire::bounded::cohort")] Vec<u64>);

/// An error unless `announced` bytes are `words` four-byte values.
fn check_len(announced: u64, words: usize) -> Result<(), FramingError> {
    if Some(announced) == u64::try_from(words).ok().and_then(|n| n.checked_mul(4)) {
        return Ok(());
    }
    Err(FramingError::Malformed(format!("{announced} bytes of values announced, {words} values received")))
}

/// The variant index at the front of `head`, or what to answer without it.
fn variant(head: &[u8]) -> Result<u32, Located> {
    match bincode::decode_from_slice::<u32, _>(head, config()) {
        Ok((found, _)) => Ok(found),
        Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => Err(Located::NeedMore),
        Err(_) => Err(Located::Nothing),
    }
}

/// Where the values begin, read through the message's head `H` (`values_len`: their length,
/// `None` when the message has none to split off).
fn locate<H: DeserializeOwned>(head: &[u8], values_len: impl Fn(&H) -> Option<u64>) -> Located {
    match bincode::serde::decode_from_slice::<H, _>(head, config()) {
        Ok((decoded, offset)) => match values_len(&decoded).map(usize::try_from) {
            Some(Ok(len)) => Located::At { offset, len },
            _ => Located::Nothing,
        },
        Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => Located::NeedMore,
        Err(_) => Located::Nothing,
    }
}

/// Decodes all of `bytes` as an `H`.
fn decode_all<H: DeserializeOwned>(bytes: &[u8]) -> Result<H, FramingError> {
    let (decoded, used) = decode_bounded::<H>(bytes)?;
    if used != bytes.len() {
        return Err(FramingError::TrailingBytes(bytes.len() - used));
    }
    Ok(decoded)
}

fn wrong_variant(found: u32, expected: u32) -> FramingError {
    FramingError::Malformed(format!("a split payload of variant {found}, not {expected}"))
}

impl SplitDecode for CoordinatorMessage {
    fn locate(head: &[u8]) -> Located {
        match variant(head) {
            Ok(CoordinatorMessage::MODEL_VARIANT) => locate::<ModelHead>(head, |head| Some(head.params.len)),
            Ok(_) => Located::Nothing,
            Err(answer) => answer,
        }
    }

    fn from_parts(head: &[u8], values: Vec<f32>, tail: &[u8]) -> Result<Self, FramingError> {
        let head = decode_all::<ModelHead>(head)?;
        if head.variant != CoordinatorMessage::MODEL_VARIANT {
            return Err(wrong_variant(head.variant, CoordinatorMessage::MODEL_VARIANT));
        }
        if !tail.is_empty() {
            return Err(FramingError::TrailingBytes(tail.len()));
        }
        let params = head.params.with(values)?;
        Ok(CoordinatorMessage::Model { model_version: head.model_version, round: head.round, params })
    }
}

impl SplitDecode for ClientMessage {
    fn locate(head: &[u8]) -> Located {
        match variant(head) {
            Ok(ClientMessage::UPDATE_VARIANT) => locate::<UpdateHead>(head, |head| Some(head.delta.len)),
            Ok(ClientMessage::SECAGG_VARIANT) => {
                locate::<MaskedHead>(head, |head| (head.message == MASKED_INPUT_VARIANT).then_some(head.len))
            }
            Ok(_) => Located::Nothing,
            Err(answer) => answer,
        }
    }

    fn from_parts(head: &[u8], values: Vec<f32>, tail: &[u8]) -> Result<Self, FramingError> {
        if variant(head) == Ok(ClientMessage::SECAGG_VARIANT) {
            let head = decode_all::<MaskedHead>(head)?;
            if head.message != MASKED_INPUT_VARIANT {
                return Err(wrong_variant(head.message, MASKED_INPUT_VARIANT));
            }
            check_len(head.len, values.len())?;
            let MaskedTail(missing) = decode_all::<MaskedTail>(tail)?;
            // The words arrived as f32s of the same four bytes each: reinterpreted in place
            // (the same size and alignment).
            let masked = bytemuck::allocation::try_cast_vec::<f32, u32>(values)
                .map_err(|(error, _)| FramingError::Malformed(error.to_string()))?;
            let message = secagg::ClientMessage::MaskedInput(MaskedInput { masked, missing });
            return Ok(ClientMessage::SecAgg { round: head.round, message });
        }
        let head = decode_all::<UpdateHead>(head)?;
        if head.variant != ClientMessage::UPDATE_VARIANT {
            return Err(wrong_variant(head.variant, ClientMessage::UPDATE_VARIANT));
        }
        let (metrics, moments) = decode_all::<(LocalMetrics, Option<FeatureMoments>)>(tail)?;
        let delta = head.delta.with(values)?;
        let update = Update { round: head.round, base_version: head.base_version, delta, metrics, moments };
        Ok(ClientMessage::Update(update))
    }
}

/// The frame in pieces: the header and `head`, the values, `tail`; refused over `limit`.
fn pieces<H: Serialize, T: Serialize>(
    head: &H,
    values: Bytes,
    tail: T,
    limit: FrameLimit,
) -> Result<Vec<Bytes>, FramingError> {
    let encode_error = |e: bincode::error::EncodeError| FramingError::Encode(e.to_string());
    let head = bincode::serde::encode_to_vec(head, config()).map_err(encode_error)?;
    let tail = bincode::serde::encode_to_vec(tail, config()).map_err(encode_error)?;
    let header = header(head.len() + values.len() + tail.len(), limit)?;
    let mut front = Vec::with_capacity(HEADER_LEN + head.len());
    front.extend_from_slice(&header);
    front.extend_from_slice(&head);
    Ok(vec![Bytes::from(front), values, Bytes::from(tail)])
}

/// Encodes `message` as one frame, in pieces whose concatenation is what [`encode_frame`]
/// makes of it; the values of an update or a masked input are not copied (see the module
/// docs). A payload over `limit` is refused.
pub fn encode_client_frame(message: ClientMessage, limit: FrameLimit) -> Result<Vec<Bytes>, FramingError> {
    match message {
        ClientMessage::Update(Update { round, base_version, delta, metrics, moments }) => {
            let ParameterVector { format_version, fingerprint, values } = delta;
            let delta = VectorHead { format_version, fingerprint, len: 4 * values.len() as u64 };
            let head = UpdateHead { variant: ClientMessage::UPDATE_VARIANT, round, base_version, delta };
            pieces(&head, le_words::into_bytes(values), (metrics, moments), limit)
        }
        ClientMessage::SecAgg {
            round,
            message: secagg::ClientMessage::MaskedInput(MaskedInput { masked, missing }),
        } => {
            let len = 4 * masked.len() as u64;
            let head = MaskedHead { variant: ClientMessage::SECAGG_VARIANT, round, message: MASKED_INPUT_VARIANT, len };
            pieces(&head, le_words::into_bytes(masked), MaskedTail(missing), limit)
        }
        message => Ok(vec![Bytes::from(encode_frame(&message, limit)?)]),
    }
}

#[cfg(test)]
mod tests;
