//! Where the parameter vector of a model or an update sits in its frame ([`SplitDecode`] for
//! [`CoordinatorMessage`] and [`ClientMessage`]), so that a receiver decodes the values into
//! place as they arrive (see [`super::framing`]).
//!
//! bincode writes an enum as its variant index and then the variant's fields in order, and a
//! struct as its fields in order; a parameter vector's values are one byte string (a length,
//! then the bytes). The bytes in front of a `Model`'s or an `Update`'s values are therefore
//! exactly those of a [`ModelHead`] or an [`UpdateHead`], and what follows an update's values
//! is its metrics and moments. The tests encode real messages and read them back through these
//! heads, so a change of either message's fields that breaks the correspondence fails them.
//!
//! The same heads let a client send an update from the update's own memory
//! ([`encode_client_frame`]): the frame goes out as three pieces, the header and head, the
//! values, the tail, instead of being copied into one buffer first.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::framing::{
    FrameLimit, FramingError, HEADER_LEN, Located, SplitDecode, config, decode_bounded, encode_frame,
};
use super::{ClientMessage, CoordinatorMessage, LocalMetrics, Update};
use crate::model::FeatureMoments;
use crate::params::{Fingerprint, ParameterVector};

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
        if Some(self.len) != u64::try_from(values.len()).ok().and_then(|n| n.checked_mul(4)) {
            return Err(FramingError::Malformed(format!(
                "a vector of {} bytes announced, {} values received",
                self.len,
                values.len()
            )));
        }
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

/// Where the values of the message of variant `variant` begin, read through its head `H`.
fn locate<H: DeserializeOwned>(head: &[u8], variant: u32, values_len: impl Fn(&H) -> u64) -> Located {
    match bincode::decode_from_slice::<u32, _>(head, config()) {
        Ok((found, _)) if found == variant => {}
        Ok(_) => return Located::Nothing,
        Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => return Located::NeedMore,
        Err(_) => return Located::Nothing,
    }
    match bincode::serde::decode_from_slice::<H, _>(head, config()) {
        Ok((decoded, offset)) => match usize::try_from(values_len(&decoded)) {
            Ok(len) => Located::At { offset, len },
            Err(_) => Located::Nothing,
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
        locate::<ModelHead>(head, CoordinatorMessage::MODEL_VARIANT, |head| head.params.len)
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
        locate::<UpdateHead>(head, ClientMessage::UPDATE_VARIANT, |head| head.delta.len)
    }

    fn from_parts(head: &[u8], values: Vec<f32>, tail: &[u8]) -> Result<Self, FramingError> {
        let head = decode_all::<UpdateHead>(head)?;
        if head.variant != ClientMessage::UPDATE_VARIANT {
            return Err(wrong_variant(head.variant, ClientMessage::UPDATE_VARIANT));
        }
        let (metrics, moments) = decode_all::<(LocalMetrics, Option<FeatureMoments>)>(tail)?;
        let delta = head.delta.with(values)?;
        Ok(ClientMessage::Update(Update {
            round: head.round,
            base_version: head.base_version,
            delta,
            metrics,
            moments,
        }))
    }
}

/// `values` as their little-endian bytes: on a little-endian machine their own memory.
#[derive(Debug)]
struct LeBytes(Vec<f32>);

impl AsRef<[u8]> for LeBytes {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

fn le_bytes(values: Vec<f32>) -> Bytes {
    if cfg!(target_endian = "little") {
        return Bytes::from_owner(LeBytes(values));
    }
    Bytes::from(values.iter().flat_map(|value| value.to_le_bytes()).collect::<Vec<u8>>())
}

/// Encodes `message` as one frame, in pieces whose concatenation is what [`encode_frame`]
/// makes of it; an update's values are not copied (see the module docs). A payload over
/// `limit` is refused.
pub fn encode_client_frame(message: ClientMessage, limit: FrameLimit) -> Result<Vec<Bytes>, FramingError> {
    let ClientMessage::Update(update) = message else {
        return Ok(vec![Bytes::from(encode_frame(&message, limit)?)]);
    };
    let Update { round, base_version, delta, metrics, moments } = update;
    let ParameterVector { format_version, fingerprint, values } = delta;
    let values_len = 4 * values.len();
    let delta = VectorHead { format_version, fingerprint, len: values_len as u64 };
    let head = UpdateHead { variant: ClientMessage::UPDATE_VARIANT, round, base_version, delta };
    let encode_error = |e: bincode::error::EncodeError| FramingError::Encode(e.to_string());
    let head = bincode::serde::encode_to_vec(&head, config()).map_err(encode_error)?;
    let tail = bincode::serde::encode_to_vec((metrics, moments), config()).map_err(encode_error)?;
    let payload_len = head.len() + values_len + tail.len();
    let announced = u32::try_from(payload_len)
        .ok()
        .filter(|len| *len <= limit.bytes())
        .ok_or(FramingError::FrameTooLarge { announced: payload_len as u64, limit: limit.bytes() })?;
    let mut front = Vec::with_capacity(HEADER_LEN + head.len());
    front.extend_from_slice(&announced.to_le_bytes());
    front.extend_from_slice(&head);
    Ok(vec![Bytes::from(front), le_bytes(values), Bytes::from(tail)])
}

#[cfg(test)]
mod tests;
