//! Messages over QUIC streams: one length-prefixed frame per message.
//!
//! [`encode`] turns a message into a shareable [`Bytes`] frame (encode a model once, send
//! the same bytes to every client); [`send_frame`] writes a frame without copying it;
//! [`FrameReader`] pulls chunks from a [`RecvStream`] into a [`FrameDecoder`] and yields
//! complete payloads or decoded messages; a reader told the message type it reads
//! ([`FrameReader::split`]) decodes the values of a model, an update or a masked input as
//! they arrive. A frame over the limit, a stream ending inside a frame or an undecodable
//! payload is an error the caller turns into a closed connection.

use bytes::Bytes;
use flotilla_protocol::wire::framing::{
    FrameDecoder, FrameLimit, FramingError, Payload, SplitDecode, decode_message, encode_frame,
};
use quinn::{ReadError, RecvStream, SendStream, WriteError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    /// The frame is over the limit, or its payload is not a valid message.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The stream ended with a partial frame buffered.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// Reading from the stream failed (connection lost, stream reset…).
    #[error("read failed: {0}")]
    Read(#[from] ReadError),
    /// Writing to the stream failed (connection lost, stream stopped…).
    #[error("write failed: {0}")]
    Write(#[from] WriteError),
}

/// Encodes `message` as one frame, refusing payloads over `limit`.
pub fn encode<M: Serialize>(message: &M, limit: FrameLimit) -> Result<Bytes, FramingError> {
    encode_frame(message, limit).map(Bytes::from)
}

/// Writes one encoded frame; the bytes are shared, not copied.
pub async fn send_frame(send: &mut SendStream, frame: Bytes) -> Result<(), FramedError> {
    send.write_chunk(frame).await?;
    Ok(())
}

/// Encodes and writes one message; returns the bytes written.
pub async fn send_message<M: Serialize>(
    send: &mut SendStream,
    message: &M,
    limit: FrameLimit,
) -> Result<usize, FramedError> {
    let frame = encode(message, limit)?;
    let len = frame.len();
    send_frame(send, frame).await?;
    Ok(len)
}

/// Reads frames from one receive stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
    bytes_read: u64,
}

impl FrameReader {
    /// A reader refusing payloads over `limit`.
    pub fn new(recv: RecvStream, limit: FrameLimit) -> Self {
        Self { recv, decoder: FrameDecoder::new(limit), bytes_read: 0 }
    }

    /// Decodes the large vector of `M`'s messages into place as it arrives (see
    /// [`FrameDecoder::split`]); such frames come out of [`Self::next_payload`] split.
    pub fn split<M: SplitDecode>(mut self) -> Self {
        self.decoder = self.decoder.split::<M>();
        self
    }

    /// Refuses payloads over `limit` from the next frame on.
    pub fn set_limit(&mut self, limit: FrameLimit) {
        self.decoder.set_limit(limit);
    }

    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next frame's payload in one piece; `Ok(None)` when the peer finished the stream
    /// between frames.
    ///
    /// Cancel-safe: bytes read are kept in the decoder if the future is dropped.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, FramedError> {
        Ok(self.next_payload().await?.map(Payload::into_bytes))
    }

    /// The next frame's payload, split where this reader splits; `Ok(None)` when the peer
    /// finished the stream between frames. Cancel-safe.
    pub async fn next_payload(&mut self) -> Result<Option<Payload>, FramedError> {
        self.next_payload_with(|_| {}).await
    }

    /// As [`Self::next_payload`], calling `before_read` before each read from the stream with
    /// the bytes the frame still lacks once its header has arrived (a receiver sizes its
    /// flow-control window with it).
    pub async fn next_payload_with(
        &mut self,
        mut before_read: impl FnMut(usize),
    ) -> Result<Option<Payload>, FramedError> {
        loop {
            if let Some(payload) = self.decoder.poll_payload()? {
                return Ok(Some(payload));
            }
            self.decoder.reserve_frame();
            if let Some(missing) = self.decoder.missing() {
                before_read(missing);
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads until the next frame's header has arrived and returns its payload length;
    /// `Ok(None)` when the peer finished the stream between frames. The caller can then decide
    /// whether (and when) to read the payload with [`Self::next_frame`].
    pub async fn next_len(&mut self) -> Result<Option<u32>, FramedError> {
        loop {
            if let Some(len) = self.decoder.next_len()? {
                return Ok(Some(len));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Reads one more chunk into the decoder; `false` when the stream finished between frames,
    /// an error when it finished inside one. Cancel-safe: a chunk read is kept.
    async fn read_more(&mut self) -> Result<bool, FramedError> {
        match self.recv.read_chunk(usize::MAX, true).await? {
            Some(chunk) => {
                self.bytes_read += chunk.bytes.len() as u64;
                self.decoder.push(&chunk.bytes);
                Ok(true)
            }
            None if self.decoder.buffered() == 0 => Ok(false),
            None => Err(FramedError::Truncated { buffered: self.decoder.buffered() }),
        }
    }

    /// The next decoded message; `Ok(None)` when the peer finished the stream.
    pub async fn next_message<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FramedError> {
        match self.next_frame().await? {
            Some(payload) => Ok(Some(decode_message(&payload)?)),
            None => Ok(None),
        }
    }
}
