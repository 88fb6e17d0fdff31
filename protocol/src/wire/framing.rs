//! Length-prefixed frames: a `u32` little-endian payload length, then a bincode payload.
//!
//! [`encode_frame`] turns one message into one frame; a [`FrameDecoder`] is fed the bytes
//! of a stream in chunks of any size and hands back complete payloads, which
//! [`decode_message`] turns back into messages. Nothing here trusts the peer: a frame
//! announcing more than the [`FrameLimit`] is refused as soon as its header is read, before
//! any buffer of that size exists, and decoding bounds bincode's allocations by the size of
//! the bytes actually received.

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length header in front of every payload.
pub const HEADER_LEN: usize = 4;

/// Largest payload, in bytes, a peer may send in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FrameLimit(u32);

impl FrameLimit {
    /// 64 MiB: a few million `f32` parameters plus headroom.
    pub const DEFAULT: FrameLimit = FrameLimit(64 << 20);

    /// A limit of `bytes` per payload.
    pub const fn new(bytes: u32) -> Self {
        Self(bytes)
    }

    /// The limit in bytes.
    pub const fn bytes(self) -> u32 {
        self.0
    }
}

impl Default for FrameLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a frame could not be built or read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FramingError {
    /// A frame's payload is larger than the limit (on either side of the wire).
    #[error("frame of {announced} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Payload size announced by the header, or produced by the encoder.
        announced: u64,
        /// The limit in force.
        limit: u32,
    },
    /// The payload is not a valid bincode message of the expected type.
    #[error("malformed frame payload: {0}")]
    Malformed(String),
    /// The payload decoded to a message but bytes were left over.
    #[error("frame payload has {0} trailing bytes")]
    TrailingBytes(usize),
    /// The message could not be serialised.
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `message` as one frame (header and payload), refusing payloads over `limit`.
///
/// The payload is measured first (a pass that writes nothing; a parameter vector's bytes are
/// only counted), so the frame is allocated once at its size, and a payload over `limit` is
/// refused before anything is allocated.
pub fn encode_frame<M: Serialize>(message: &M, limit: FrameLimit) -> Result<Vec<u8>, FramingError> {
    let encode_error = |e: bincode::error::EncodeError| FramingError::Encode(e.to_string());
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(message, &mut size, config()).map_err(encode_error)?;
    let payload_len = size.bytes_written;
    let announced = u32::try_from(payload_len)
        .ok()
        .filter(|len| *len <= limit.bytes())
        .ok_or(FramingError::FrameTooLarge { announced: payload_len as u64, limit: limit.bytes() })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload_len);
    frame.extend_from_slice(&announced.to_le_bytes());
    bincode::serde::encode_into_std_write(message, &mut frame, config()).map_err(encode_error)?;
    if frame.len() != HEADER_LEN + payload_len {
        return Err(FramingError::Encode(format!(
            "the message encoded to {} bytes after measuring {payload_len}",
            frame.len() - HEADER_LEN
        )));
    }
    Ok(frame)
}

/// Decodes one payload (without its header) into a message.
///
/// Bincode's allocation limit is set to the smallest power of four that covers eight
/// times the payload (an in-memory value never needs more than eight bytes per wire
/// byte), so a lying length prefix inside the payload cannot allocate more than a small
/// multiple of what was actually received.
pub fn decode_message<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FramingError> {
    let (message, used) = decode_bounded::<M>(payload)?;
    if used != payload.len() {
        return Err(FramingError::TrailingBytes(payload.len() - used));
    }
    Ok(message)
}

macro_rules! decode_within {
    ($payload:expr, $needed:expr; $($bits:literal)*) => {
        match $needed {
            $(n if n <= 1usize << $bits => bincode::serde::decode_from_slice(
                $payload,
                config().with_limit::<{ 1usize << $bits }>(),
            ),)*
            _ => Err(bincode::error::DecodeError::LimitExceeded),
        }
    };
}

/// Decodes a value from the front of `bytes` with allocations bounded by `8 × bytes.len()`
/// (rounded up to a power of four, at least 4 KiB); returns it and the bytes it used.
pub(crate) fn decode_bounded<M: DeserializeOwned>(bytes: &[u8]) -> Result<(M, usize), FramingError> {
    let needed = bytes.len().saturating_mul(8);
    let decoded: Result<(M, usize), _> = decode_within!(bytes, needed; 12 14 16 18 20 22 24 26 28 30 32 34 36);
    decoded.map_err(|e| FramingError::Malformed(e.to_string()))
}

/// The variant index at the front of a payload, read as the decoder reads it (bincode's
/// varint `u32`), without decoding the rest; `None` when the bytes cannot start a message.
pub fn peek_variant(payload: &[u8]) -> Option<u32> {
    bincode::decode_from_slice::<u32, _>(payload, config()).ok().map(|(variant, _)| variant)
}

/// Splits a byte stream into frame payloads (sans-IO: the caller feeds it what it read).
///
/// After a [`FramingError::FrameTooLarge`] the stream cannot be resynchronised: the
/// decoder keeps answering that error and the caller should close the connection.
#[derive(Debug)]
pub struct FrameDecoder {
    /// The frame being assembled (and, before its header is known, whatever arrived).
    buffer: BytesMut,
    /// Bytes that arrived after the end of the frame in `buffer`, kept apart so that the
    /// frame's allocation (reserved at its exact size) is never regrown for them.
    after: BytesMut,
    limit: FrameLimit,
    failed: Option<u64>,
}

impl FrameDecoder {
    /// An empty decoder refusing payloads over `limit`.
    pub fn new(limit: FrameLimit) -> Self {
        Self { buffer: BytesMut::new(), after: BytesMut::new(), limit, failed: None }
    }

    /// Refuses payloads over `limit` from the next frame on (a peer's limit grows once it is
    /// admitted).
    pub fn set_limit(&mut self, limit: FrameLimit) {
        self.limit = limit;
    }

    /// Appends bytes read from the stream. Bytes past the end of a frame whose header has
    /// arrived are held apart until that frame is taken: a read usually ends a large frame
    /// and starts the next one, and appending it whole would regrow (copy) the frame.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if !self.after.is_empty() {
            self.after.extend_from_slice(bytes);
            return;
        }
        let room = self.frame_end().map_or(bytes.len(), |end| end.saturating_sub(self.buffer.len()));
        let (frame, after) = bytes.split_at(room.min(bytes.len()));
        self.buffer.extend_from_slice(frame);
        self.after.extend_from_slice(after);
    }

    /// Where the frame at the front of `buffer` ends, once its header has arrived and if it
    /// is within the limit.
    fn frame_end(&self) -> Option<usize> {
        let announced = u32::from_le_bytes(*self.buffer.first_chunk::<HEADER_LEN>()?);
        (announced <= self.limit.bytes()).then_some(HEADER_LEN + announced as usize)
    }

    /// Once the next frame's header is known (and within the limit), reserves room for the
    /// whole frame at once, so that a large payload is copied in once instead of regrown.
    pub fn reserve_frame(&mut self) {
        if self.failed.is_none()
            && let Some(end) = self.frame_end()
        {
            self.buffer.reserve(end.saturating_sub(self.buffer.len()));
        }
    }

    /// Bytes the next frame still lacks once its header has arrived (`None` before, or when
    /// it is over the limit): what a receiver must still let the peer send for it.
    pub fn missing(&self) -> Option<usize> {
        if self.failed.is_some() {
            return None;
        }
        self.frame_end().map(|end| end.saturating_sub(self.buffer.len()))
    }

    /// Bytes received but not yet returned as part of a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.after.len()
    }

    /// The payload length of the next frame once its header has arrived (`None` before);
    /// a length over the limit is refused here already.
    pub fn next_len(&mut self) -> Result<Option<u32>, FramingError> {
        let limit = self.limit.bytes();
        if let Some(announced) = self.failed {
            return Err(FramingError::FrameTooLarge { announced, limit });
        }
        let Some(header) = self.buffer.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let announced = u32::from_le_bytes(*header);
        if announced > limit {
            self.failed = Some(u64::from(announced));
            self.buffer = BytesMut::new();
            self.after = BytesMut::new();
            return Err(FramingError::FrameTooLarge { announced: u64::from(announced), limit });
        }
        Ok(Some(announced))
    }

    /// The next complete payload, `None` if more bytes are needed. The payload is split off
    /// the buffer without copying.
    pub fn poll_frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        let Some(announced) = self.next_len()? else {
            return Ok(None);
        };
        let end = HEADER_LEN + announced as usize;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let mut frame = self.buffer.split_to(end);
        frame.advance(HEADER_LEN);
        // What is left still points into the frame's allocation and would keep it alive as
        // long as the connection: start a fresh buffer with any bytes of the next frame.
        let after = std::mem::take(&mut self.after);
        self.buffer = if self.buffer.is_empty() {
            after
        } else {
            let mut rest = BytesMut::with_capacity(self.buffer.len() + after.len());
            rest.extend_from_slice(&self.buffer);
            rest.extend_from_slice(&after);
            rest
        };
        Ok(Some(frame.freeze()))
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn poll_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FramingError> {
        self.poll_frame()?.map(|payload| decode_message(&payload)).transpose()
    }
}

#[cfg(test)]
mod tests;
