//! The coordinator's durable state, as bytes, in a checksummed envelope that the client's
//! local state (`flotilla_learner::local`) uses too, under its own magic bytes.
//!
//! Layout of an encoded checkpoint:
//!
//! | bytes | content                                                     |
//! |-------|-------------------------------------------------------------|
//! | 8     | [`CHECKPOINT_MAGIC`]                                        |
//! | 2     | [`CHECKPOINT_FORMAT_VERSION`], little-endian                |
//! | 8     | payload length `n`, little-endian                           |
//! | n     | bincode payload: round, model version, spec, parameters, …  |
//! | 32    | SHA-256 of everything above                                 |
//!
//! [`Checkpoint::decode`] refuses anything that is not exactly such a blob, with a typed
//! error; it never returns a partially read state. Writing the bytes durably (temporary
//! file, fsync, rename) is the binary's job.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::ModelSpec;
use crate::params::{ParameterError, ParameterVector};
use crate::wire::framing::{FramingError, decode_bounded};

/// First bytes of every checkpoint.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"FLOTCKPT";

/// Version of the checkpoint format written by this build.
pub const CHECKPOINT_FORMAT_VERSION: u16 = 5;

const HEADER_LEN: usize = 8 + 2 + 8;
const CHECKSUM_LEN: usize = 32;

/// Everything a coordinator needs to resume training where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Latest round started (rounds are numbered from 1).
    pub round: u64,
    /// Version of `params` (number of committed rounds).
    pub model_version: u64,
    /// Shape and hyper-parameters of the model.
    pub spec: ModelSpec,
    /// The global parameters.
    pub params: ParameterVector,
    /// The served model (an average of the iterates), when iterate averaging is on.
    pub served: Option<ParameterVector>,
    /// The privacy accountant (RDP orders and what was spent at each), when DP is on: ε
    /// keeps growing across restarts instead of starting again from zero.
    pub accountant: Option<crate::privacy::RdpAccountant>,
    /// The adaptive clipping bound and its settings, when adaptive clipping is on: a
    /// restarted coordinator goes on from the clip it had reached.
    pub adaptive_clip: Option<crate::privacy::AdaptiveClip>,
    /// The fleet's feature statistics (an HBP model's served standardiser), when clients
    /// have sent any.
    pub feature_moments: Option<crate::model::FeatureMoments>,
}

/// Format 2: round, version, spec and parameters (read, never written). Each later format
/// appended fields; bincode lays a nested struct out as its fields in order, so each older
/// format is the one before it plus what it appended.
#[derive(Deserialize)]
struct CheckpointV2 {
    round: u64,
    model_version: u64,
    spec: ModelSpec,
    params: ParameterVector,
}

/// Format 3: format 2 plus the served model and the accountant.
#[derive(Deserialize)]
struct CheckpointV3 {
    v2: CheckpointV2,
    served: Option<ParameterVector>,
    accountant: Option<crate::privacy::RdpAccountant>,
}

/// Format 4: format 3 plus the adaptive clip.
#[derive(Deserialize)]
struct CheckpointV4 {
    v3: CheckpointV3,
    adaptive_clip: Option<crate::privacy::AdaptiveClip>,
}

impl From<CheckpointV2> for Checkpoint {
    fn from(v2: CheckpointV2) -> Self {
        let CheckpointV2 { round, model_version, spec, params } = v2;
        Self { round, model_version, ..Self::initial(spec, params) }
    }
}

impl From<CheckpointV3> for Checkpoint {
    fn from(v3: CheckpointV3) -> Self {
        Self { served: v3.served, accountant: v3.accountant, ..Self::from(v3.v2) }
    }
}

impl From<CheckpointV4> for Checkpoint {
    fn from(v4: CheckpointV4) -> Self {
        Self { adaptive_clip: v4.adaptive_clip, ..Self::from(v4.v3) }
    }
}

/// Why bytes were not accepted as a checkpoint.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CheckpointError {
    /// The bytes stop before the end announced by the header.
    #[error("checkpoint truncated: {found} bytes, at least {needed} needed")]
    Truncated {
        /// Bytes the header (or the header's own length) requires.
        needed: u64,
        /// Bytes present.
        found: u64,
    },
    /// The bytes do not start with [`CHECKPOINT_MAGIC`].
    #[error("not a Flotilla checkpoint (bad magic bytes)")]
    BadMagic,
    /// The checkpoint was written in a format this build does not read.
    #[error("checkpoint format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion {
        /// Version found in the header.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// Bytes follow the checksum.
    #[error("checkpoint has {0} unexpected trailing bytes")]
    TrailingBytes(u64),
    /// The checksum does not match the content: the file is corrupt.
    #[error("checkpoint checksum mismatch (corrupt file)")]
    ChecksumMismatch,
    /// The checksum matched but the payload is not a valid state.
    #[error("checkpoint payload is malformed: {0}")]
    Malformed(#[from] FramingError),
    /// The stored privacy accountant is not a valid one.
    #[error("checkpoint privacy accountant refused: orders and spent RDP must match, orders finite and > 1, RDP ≥ 0")]
    Accountant,
    /// The stored adaptive clip is not a valid one.
    #[error("checkpoint adaptive clip refused: bound, quantile, learning rate or noise out of range")]
    AdaptiveClip,
    /// The stored feature statistics do not fit the model, or hold a non-finite value.
    #[error("checkpoint feature statistics refused: {0}")]
    FeatureMoments(crate::model::MomentsError),
    /// The stored parameters are not usable (NaN or ∞).
    #[error("checkpoint parameters refused: {0}")]
    Parameters(#[from] ParameterError),
}

impl Checkpoint {
    /// The state before round 1: version 0 of `params`, nothing served or spent yet.
    pub fn initial(spec: ModelSpec, params: ParameterVector) -> Self {
        Self {
            round: 0,
            model_version: 0,
            spec,
            params,
            served: None,
            accountant: None,
            adaptive_clip: None,
            feature_moments: None,
        }
    }

    /// The model served to users and evaluated: the iterate average when there is one, the
    /// latest global parameters otherwise.
    pub fn served_params(&self) -> &ParameterVector {
        self.served.as_ref().unwrap_or(&self.params)
    }

    /// Encodes this checkpoint with magic bytes, format version, length and checksum.
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        seal(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT_VERSION, self)
    }

    /// Decodes a checkpoint, refusing truncation, other magic, other versions, trailing
    /// bytes, a checksum mismatch, a malformed payload and non-finite parameters.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let checkpoint: Checkpoint = match open(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT_VERSION, bytes) {
            Err(CheckpointError::UnsupportedVersion { found: 2, .. }) => {
                open::<CheckpointV2>(CHECKPOINT_MAGIC, 2, bytes)?.into()
            }
            Err(CheckpointError::UnsupportedVersion { found: 3, .. }) => {
                open::<CheckpointV3>(CHECKPOINT_MAGIC, 3, bytes)?.into()
            }
            Err(CheckpointError::UnsupportedVersion { found: 4, .. }) => {
                open::<CheckpointV4>(CHECKPOINT_MAGIC, 4, bytes)?.into()
            }
            other => other?,
        };
        checkpoint.params.check_finite()?;
        if let Some(served) = &checkpoint.served {
            served.check_finite()?;
        }
        if let Some(accountant) = &checkpoint.accountant {
            let (orders, rdp) = (accountant.orders(), accountant.rdp());
            let valid = orders.len() == rdp.len()
                && !orders.is_empty()
                && orders.iter().all(|a| a.is_finite() && *a > 1.0)
                // +∞ is what a noise multiplier of 0 spends: no privacy, still a valid account.
                && rdp.iter().all(|r| *r >= 0.0);
            if !valid {
                return Err(CheckpointError::Accountant);
            }
        }
        if checkpoint.adaptive_clip.as_ref().is_some_and(|clip| !clip.is_valid()) {
            return Err(CheckpointError::AdaptiveClip);
        }
        if let Some(moments) = &checkpoint.feature_moments {
            let features = checkpoint.spec.hbp().map_or(0, |hbp| hbp.inputs);
            moments.check(features).map_err(CheckpointError::FeatureMoments)?;
        }
        Ok(checkpoint)
    }
}

/// Encodes `value` in the envelope described in the module docs, under `magic` and `version`.
pub fn seal<T: Serialize>(magic: [u8; 8], version: u16, value: &T) -> Result<Vec<u8>, CheckpointError> {
    let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| FramingError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN);
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    Ok(bytes)
}

/// Decodes what [`seal`] wrote with the same `magic` and `version`; never a partial value.
pub fn open<T: DeserializeOwned>(magic: [u8; 8], version: u16, bytes: &[u8]) -> Result<T, CheckpointError> {
    let found = bytes.len() as u64;
    let magic_len = bytes.len().min(magic.len());
    if bytes[..magic_len] != magic[..magic_len] {
        return Err(CheckpointError::BadMagic);
    }
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(CheckpointError::Truncated { needed: HEADER_LEN as u64, found });
    };
    let found_version = u16::from_le_bytes([header[8], header[9]]);
    if found_version != version {
        return Err(CheckpointError::UnsupportedVersion { found: found_version, supported: version });
    }
    let mut payload_len = [0u8; 8];
    payload_len.copy_from_slice(&header[10..]);
    let payload_len = u64::from_le_bytes(payload_len);
    let needed = (HEADER_LEN as u64).saturating_add(payload_len).saturating_add(CHECKSUM_LEN as u64);
    if found < needed {
        return Err(CheckpointError::Truncated { needed, found });
    }
    if found > needed {
        return Err(CheckpointError::TrailingBytes(found - needed));
    }
    let (content, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if Sha256::digest(content).as_slice() != checksum {
        return Err(CheckpointError::ChecksumMismatch);
    }
    let payload = &rest[..rest.len() - CHECKSUM_LEN];
    let (value, used): (T, usize) = decode_bounded(payload)?;
    if used != payload.len() {
        return Err(FramingError::TrailingBytes(payload.len() - used).into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
