//! Length-prefixed frames: a `u32` little-endian payload length, then a bincode payload.
//!
//! [`encode_frame`] turns one message into one frame; a [`FrameDecoder`] is fed the bytes
//! of a stream in chunks of any size and hands back complete payloads, which
//! [`decode_message`] turns back into messages. Nothing here trusts the peer: a frame
//! announcing more than the [`FrameLimit`] is refused as soon as its header is read, before
//! any buffer of that size exists, and decoding bounds bincode's allocations by the size of
//! the bytes actually received.
//!
//! A decoder may also be told where the one large parameter vector of a message type sits
//! ([`FrameDecoder::split`], [`SplitDecode`]): it then decodes that vector's values into place
//! as its bytes arrive, instead of assembling the whole payload and copying the values out of
//! it afterwards, and hands the frame over as a [`Payload::Split`].

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

pub(crate) fn config() -> bincode::config::Configuration {
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
    let header = header(payload_len, limit)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload_len);
    frame.extend_from_slice(&header);
    bincode::serde::encode_into_std_write(message, &mut frame, config()).map_err(encode_error)?;
    if frame.len() != HEADER_LEN + payload_len {
        return Err(FramingError::Encode(format!(
            "the message encoded to {} bytes after measuring {payload_len}",
            frame.len() - HEADER_LEN
        )));
    }
    Ok(frame)
}

/// The header of a frame whose payload is `payload_len` bytes; a payload over `limit` is
/// refused.
pub(crate) fn header(payload_len: usize, limit: FrameLimit) -> Result<[u8; HEADER_LEN], FramingError> {
    u32::try_from(payload_len)
        .ok()
        .filter(|len| *len <= limit.bytes())
        .map(u32::to_le_bytes)
        .ok_or(FramingError::FrameTooLarge { announced: payload_len as u64, limit: limit.bytes() })
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

/// Payloads smaller than this are assembled whole, even where a decoder splits.
pub const SPLIT_MIN: usize = 64 << 10;

/// A split that has not located its vector within this many bytes of the payload assembles it
/// whole.
const LOCATE_WITHIN: usize = 4 << 10;

/// Where a message's large vector sits in a payload, as [`SplitDecode::locate`] answers from
/// the payload's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// The first bytes do not tell yet.
    NeedMore,
    /// The payload holds no vector to split off (another message, or one that does not decode).
    Nothing,
    /// The vector's little-endian `f32` bytes start `offset` bytes into the payload (just after
    /// their length prefix) and run for `len` bytes.
    At {
        /// Bytes of the payload before the vector's values.
        offset: usize,
        /// Bytes of the vector's values.
        len: usize,
    },
}

/// A message type whose one large parameter vector (a model, an update) a [`FrameDecoder`] can
/// decode into place while it arrives.
pub trait SplitDecode: DeserializeOwned {
    /// Where the vector sits in a payload that begins with `head`.
    fn locate(head: &[u8]) -> Located;

    /// The message from the parts of a [`Payload::Split`]: the payload's bytes before the
    /// vector's values, the values, the bytes after them.
    fn from_parts(head: &[u8], values: Vec<f32>, tail: &[u8]) -> Result<Self, FramingError>;
}

/// One frame's payload, as a [`FrameDecoder`] hands it over.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// The payload's bytes in one piece.
    Whole(Bytes),
    /// A payload whose large vector was decoded while it arrived: the bytes before the
    /// vector's values (through their length prefix), the values, the bytes after them.
    Split {
        /// The payload's bytes before the values.
        head: Bytes,
        /// The values.
        values: Vec<f32>,
        /// The payload's bytes after the values.
        tail: Bytes,
    },
}

impl Payload {
    /// Bytes of the payload on the wire.
    pub fn len(&self) -> usize {
        match self {
            Payload::Whole(bytes) => bytes.len(),
            Payload::Split { head, values, tail } => head.len() + 4 * values.len() + tail.len(),
        }
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message's variant index, as [`peek_variant`] reads it.
    pub fn variant(&self) -> Option<u32> {
        match self {
            Payload::Whole(bytes) => peek_variant(bytes),
            Payload::Split { head, .. } => peek_variant(head),
        }
    }

    /// The payload's bytes in one piece (a copy of a split payload's).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Payload::Whole(bytes) => bytes,
            Payload::Split { head, values, tail } => {
                Bytes::from([head, crate::params::le_words::into_bytes(values), tail].concat())
            }
        }
    }

    /// Decodes the payload into a message, as [`decode_message`] does.
    pub fn decode<M: SplitDecode>(self) -> Result<M, FramingError> {
        match self {
            Payload::Whole(bytes) => decode_message(&bytes),
            Payload::Split { head, values, tail } => M::from_parts(&head, values, &tail),
        }
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload::Whole(bytes)
    }
}

/// The values of a split frame's vector, decoded as their bytes arrive.
#[derive(Debug)]
struct Capture {
    /// Bytes of the payload before the values.
    offset: usize,
    /// Bytes of the values.
    len: usize,
    values: Vec<f32>,
    /// The first bytes of a value split between two reads.
    partial: [u8; 4],
    partial_len: usize,
}

impl Capture {
    fn new(offset: usize, len: usize) -> Self {
        Self { offset, len, values: Vec::new(), partial: [0; 4], partial_len: 0 }
    }

    fn received(&self) -> usize {
        4 * self.values.len() + self.partial_len
    }

    /// Takes the front of `bytes` that belongs to the values; returns how many bytes it took.
    fn fill(&mut self, bytes: &[u8]) -> usize {
        let taken = self.len.saturating_sub(self.received()).min(bytes.len());
        let mut bytes = &bytes[..taken];
        if self.partial_len > 0 {
            let n = (4 - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + n].copy_from_slice(&bytes[..n]);
            self.partial_len += n;
            bytes = &bytes[n..];
            if self.partial_len < 4 {
                return taken;
            }
            self.values.push(f32::from_le_bytes(self.partial));
            self.partial_len = 0;
        }
        let (words, rest) = bytes.as_chunks::<4>();
        self.values.extend(words.iter().map(|word| f32::from_le_bytes(*word)));
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
        taken
    }
}

/// What a splitting decoder knows of the frame it is assembling.
#[derive(Debug)]
enum Split {
    /// Not located yet (or the header has not arrived).
    Undecided,
    /// Assembled whole.
    Whole,
    /// The values go to the capture; the header, head and tail to the buffer.
    Capturing(Capture),
}

/// Splits a byte stream into frame payloads (sans-IO: the caller feeds it what it read).
///
/// After a [`FramingError::FrameTooLarge`] the stream cannot be resynchronised: the
/// decoder keeps answering that error and the caller should close the connection.
#[derive(Debug)]
pub struct FrameDecoder {
    /// The frame being assembled (and, before its header is known, whatever arrived); while
    /// a split captures the frame's values, only its header, head and tail.
    buffer: BytesMut,
    /// Bytes that arrived after the end of the frame in `buffer`, kept apart so that the
    /// frame's allocation (reserved at its exact size) is never regrown for them.
    after: BytesMut,
    limit: FrameLimit,
    failed: Option<u64>,
    /// Where the vector of the message type sits, when this decoder splits.
    locate: Option<fn(&[u8]) -> Located>,
    split: Split,
}

impl FrameDecoder {
    /// An empty decoder refusing payloads over `limit`.
    pub fn new(limit: FrameLimit) -> Self {
        Self {
            buffer: BytesMut::new(),
            after: BytesMut::new(),
            limit,
            failed: None,
            locate: None,
            split: Split::Undecided,
        }
    }

    /// Decodes the large vector of `M`'s messages (payloads of at least [`SPLIT_MIN`] bytes)
    /// into place as it arrives, handing such frames over as [`Payload::Split`].
    pub fn split<M: SplitDecode>(mut self) -> Self {
        self.locate = Some(M::locate);
        self
    }

    /// Refuses payloads over `limit` from the next frame on (a peer's limit grows once it is
    /// admitted).
    pub fn set_limit(&mut self, limit: FrameLimit) {
        self.limit = limit;
    }

    /// Bytes of the frame being assembled that have arrived (header included).
    fn received(&self) -> usize {
        match &self.split {
            Split::Capturing(capture) => self.buffer.len() + capture.received(),
            Split::Undecided | Split::Whole => self.buffer.len(),
        }
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
        let room = self.frame_end().map_or(bytes.len(), |end| end.saturating_sub(self.received()));
        let (mut frame, after) = bytes.split_at(room.min(bytes.len()));
        self.after.extend_from_slice(after);
        if let Split::Capturing(capture) = &mut self.split {
            let taken = capture.fill(frame);
            frame = &frame[taken..];
        }
        self.buffer.extend_from_slice(frame);
        if matches!(self.split, Split::Undecided) {
            self.locate_values();
        }
    }

    /// Once enough of a large payload has arrived, asks where its vector sits and, if it has
    /// one, moves the values already buffered to a capture that takes the rest as it comes.
    fn locate_values(&mut self) {
        let Some(locate) = self.locate else {
            self.split = Split::Whole;
            return;
        };
        let Some(end) = self.frame_end() else { return };
        let payload_len = end - HEADER_LEN;
        if payload_len < SPLIT_MIN {
            self.split = Split::Whole;
            return;
        }
        let head = &self.buffer[HEADER_LEN..];
        match locate(head) {
            Located::NeedMore if head.len() < LOCATE_WITHIN.min(payload_len) => {}
            Located::NeedMore | Located::Nothing => self.split = Split::Whole,
            Located::At { offset, len } => {
                let fits = offset.checked_add(len).is_some_and(|values_end| values_end <= payload_len);
                if !fits || len % 4 != 0 || len < SPLIT_MIN / 2 {
                    self.split = Split::Whole;
                    return;
                }
                let mut capture = Capture::new(offset, len);
                let start = HEADER_LEN + offset;
                if self.buffer.len() > start {
                    let rest = self.buffer.split_off(start);
                    let taken = capture.fill(&rest);
                    self.buffer.extend_from_slice(&rest[taken..]);
                }
                self.split = Split::Capturing(capture);
            }
        }
    }

    /// Where the frame at the front of `buffer` ends, once its header has arrived and if it
    /// is within the limit.
    fn frame_end(&self) -> Option<usize> {
        let announced = u32::from_le_bytes(*self.buffer.first_chunk::<HEADER_LEN>()?);
        (announced <= self.limit.bytes()).then_some(HEADER_LEN + announced as usize)
    }

    /// Once the next frame's header is known (and within the limit), reserves room for the
    /// whole frame at once (for a split frame, for all its values), so that a large payload is
    /// copied in once instead of regrown. Nothing is reserved before this is called: a receiver
    /// calls it once it has decided to read the frame (the coordinator, once it holds an
    /// upload permit), so the size a peer announces is not allocated before then (only the
    /// bytes that arrived with the header are held). A frame a split may still capture is not
    /// reserved: its values will not go to the buffer.
    pub fn reserve_frame(&mut self) {
        if self.failed.is_some() {
            return;
        }
        match &mut self.split {
            Split::Capturing(capture) => {
                capture.values.reserve_exact((capture.len / 4).saturating_sub(capture.values.len()))
            }
            Split::Whole => {
                if let Some(end) = self.frame_end() {
                    self.buffer.reserve(end.saturating_sub(self.buffer.len()));
                }
            }
            Split::Undecided => {}
        }
    }

    /// Bytes the next frame still lacks once its header has arrived (`None` before, or when
    /// it is over the limit): what a receiver must still let the peer send for it.
    pub fn missing(&self) -> Option<usize> {
        if self.failed.is_some() {
            return None;
        }
        self.frame_end().map(|end| end.saturating_sub(self.received()))
    }

    /// Bytes received but not yet returned as part of a frame.
    pub fn buffered(&self) -> usize {
        self.received() + self.after.len()
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
            self.split = Split::Undecided;
            return Err(FramingError::FrameTooLarge { announced: u64::from(announced), limit });
        }
        Ok(Some(announced))
    }

    /// The next complete payload, `None` if more bytes are needed. A whole payload is split off
    /// the buffer without copying.
    pub fn poll_payload(&mut self) -> Result<Option<Payload>, FramingError> {
        let Some(announced) = self.next_len()? else {
            return Ok(None);
        };
        let end = HEADER_LEN + announced as usize;
        if self.received() < end {
            return Ok(None);
        }
        let split = std::mem::replace(&mut self.split, Split::Undecided);
        let captured = match &split {
            Split::Capturing(capture) => capture.len,
            Split::Undecided | Split::Whole => 0,
        };
        let mut frame = self.buffer.split_to(end - captured);
        frame.advance(HEADER_LEN);
        let payload = match split {
            Split::Capturing(capture) => {
                let head = frame.split_to(capture.offset).freeze();
                Payload::Split { head, values: capture.values, tail: frame.freeze() }
            }
            Split::Undecided | Split::Whole => Payload::Whole(frame.freeze()),
        };
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
        self.locate_values();
        Ok(Some(payload))
    }

    /// The next complete payload in one piece, `None` if more bytes are needed (a split
    /// payload is copied back together: see [`Self::poll_payload`]).
    pub fn poll_frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        Ok(self.poll_payload()?.map(Payload::into_bytes))
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn poll_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FramingError> {
        self.poll_frame()?.map(|payload| decode_message(&payload)).transpose()
    }
}

#[cfg(test)]
mod tests;
