use proptest::prelude::*;

use super::*;
use crate::wire::{ClientMessage, CoordinatorMessage};

fn heartbeat_frame() -> Vec<u8> {
    encode_frame(&ClientMessage::Heartbeat, FrameLimit::DEFAULT).unwrap()
}

#[test]
fn header_is_little_endian_payload_length() {
    let goodbye = ClientMessage::Goodbye { reason: "bye".into() };
    let frame = encode_frame(&goodbye, FrameLimit::DEFAULT).unwrap();
    let announced = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(announced, frame.len() - HEADER_LEN);
}

#[test]
fn byte_by_byte_feeding_yields_the_frame_once_complete() {
    let frame = heartbeat_frame();
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT);
    for (i, byte) in frame.iter().enumerate() {
        assert_eq!(decoder.poll_frame(), Ok(None), "frame complete too early at byte {i}");
        decoder.push(&[*byte]);
    }
    assert_eq!(decoder.poll_message::<ClientMessage>(), Ok(Some(ClientMessage::Heartbeat)));
    assert_eq!(decoder.poll_frame(), Ok(None));
}

#[test]
fn oversized_header_is_refused_before_allocation_and_stays_refused() {
    // Only a header announcing 4 GiB - 1: the decoder must refuse without waiting for (or
    // reserving) the payload.
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT);
    decoder.push(&u32::MAX.to_le_bytes());
    let refused = Err(FramingError::FrameTooLarge { announced: u64::from(u32::MAX), limit: 64 << 20 });
    assert_eq!(decoder.poll_frame(), refused);
    assert_eq!(decoder.buffered(), 0);
    decoder.push(&heartbeat_frame());
    assert_eq!(decoder.poll_frame(), refused, "a desynchronised stream is never resumed");
}

#[test]
fn frame_exactly_at_the_limit_passes_one_byte_over_fails() {
    let frame = heartbeat_frame();
    let payload = (frame.len() - HEADER_LEN) as u32;
    let mut decoder = FrameDecoder::new(FrameLimit::new(payload));
    decoder.push(&frame);
    assert!(matches!(decoder.poll_frame(), Ok(Some(_))));
    let goodbye = ClientMessage::Goodbye { reason: "x".repeat(100) };
    assert!(matches!(
        encode_frame(&goodbye, FrameLimit::new(100)),
        Err(FramingError::FrameTooLarge { limit: 100, .. })
    ));
    let mut decoder = FrameDecoder::new(FrameLimit::new(payload - 1));
    decoder.push(&frame);
    assert!(matches!(decoder.poll_frame(), Err(FramingError::FrameTooLarge { .. })));
}

#[test]
fn garbage_payloads_are_malformed_not_panics() {
    // Variant 200 does not exist; a Goodbye whose string claims 2^40 bytes must not allocate them.
    assert!(matches!(decode_message::<ClientMessage>(&[200]), Err(FramingError::Malformed(_))));
    let huge_string = [4u8, 0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
    assert!(matches!(decode_message::<ClientMessage>(&huge_string), Err(FramingError::Malformed(_))));
    assert!(matches!(decode_message::<CoordinatorMessage>(&[]), Err(FramingError::Malformed(_))));
    let mut heartbeat = heartbeat_frame()[HEADER_LEN..].to_vec();
    heartbeat.push(0);
    assert_eq!(decode_message::<ClientMessage>(&heartbeat), Err(FramingError::TrailingBytes(1)));
}

/// `payload` framed: its length header, then its bytes.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn missing_counts_what_the_next_frame_still_lacks() {
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT);
    let mut stream = framed(&[7u8; 1_000]);
    stream.extend_from_slice(&framed(&[8u8; 10]));
    assert_eq!(decoder.missing(), None, "no header yet");
    decoder.push(&stream[..3]);
    assert_eq!(decoder.missing(), None, "a partial header");
    decoder.push(&stream[3..404]);
    assert_eq!(decoder.missing(), Some(600));
    // The read that ends the frame carries the next one's header: only the first counts.
    decoder.push(&stream[404..1_009]);
    assert_eq!(decoder.missing(), Some(0));
    assert_eq!(decoder.poll_frame().unwrap().unwrap().len(), 1_000);
    assert_eq!(decoder.missing(), Some(9));
    let mut refused = FrameDecoder::new(FrameLimit::DEFAULT);
    refused.push(&u32::MAX.to_le_bytes());
    assert!(refused.next_len().is_err());
    assert_eq!(refused.missing(), None, "a refused frame is not waited for");
}

#[test]
fn a_read_ending_one_frame_and_starting_the_next_does_not_regrow_the_first() {
    // A large frame arrives in reads of 1,000 bytes; its last read also carries the next
    // frame's header and part of its payload (as QUIC delivers a model followed by a request).
    let large: Vec<u8> = (0..100_000u32).map(|i| i.to_le_bytes()[0]).collect();
    let small = vec![9u8; 300];
    let mut stream = framed(&large);
    stream.extend_from_slice(&framed(&small));
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT);
    let (first, rest) = stream.split_at(1_000);
    decoder.push(first);
    decoder.reserve_frame();
    let reserved = decoder.buffer.capacity();
    assert!(reserved >= HEADER_LEN + large.len());
    let mut frames = Vec::new();
    for chunk in rest.chunks(1_000) {
        decoder.reserve_frame();
        decoder.push(chunk);
        if frames.is_empty() {
            assert_eq!(decoder.buffer.capacity(), reserved, "the frame's buffer was regrown");
        }
        while let Some(frame) = decoder.poll_frame().unwrap() {
            frames.push(frame);
        }
    }
    assert_eq!(frames, [large.as_slice(), small.as_slice()]);
    assert_eq!(decoder.buffered(), 0);
}

proptest! {
    #[test]
    fn frames_survive_any_split_into_reads(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
        cuts in prop::collection::vec(1usize..200, 1..40),
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|payload| framed(payload)).collect();
        let mut decoder = FrameDecoder::new(FrameLimit::new(300));
        let mut frames = Vec::new();
        let mut rest = stream.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (read, after) = rest.split_at((*cut).min(rest.len()));
            rest = after;
            decoder.reserve_frame();
            decoder.push(read);
            while let Some(frame) = decoder.poll_frame().unwrap() {
                frames.push(frame.to_vec());
            }
        }
        prop_assert_eq!(frames, payloads);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        limit in 0u32..256,
    ) {
        let mut decoder = FrameDecoder::new(FrameLimit::new(limit));
        for chunk in &chunks {
            decoder.push(chunk);
            for _ in 0..4 {
                match decoder.poll_message::<ClientMessage>() {
                    Ok(Some(_)) | Err(FramingError::Malformed(_)) | Err(FramingError::TrailingBytes(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic_message_decoding(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_message::<ClientMessage>(&payload);
        let _ = decode_message::<CoordinatorMessage>(&payload);
    }
}
