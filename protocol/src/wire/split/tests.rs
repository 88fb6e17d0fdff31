use proptest::prelude::*;

use super::*;
use crate::wire::framing::{FrameDecoder, FrameLimit, HEADER_LEN, Payload, SPLIT_MIN, encode_frame, peek_variant};

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: 3, fingerprint: Fingerprint(0xF1E2_D3C4_B5A6_9788), values }
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len).map(|i| (i as f32 * 0.37 + seed as f32).sin() * 1e3).collect()
}

fn update(len: usize, seed: u32, moments: bool) -> ClientMessage {
    let mut sums = FeatureMoments::new(3);
    sums.count = 7;
    sums.sum = vec![1.5, -2.0, 3.25];
    ClientMessage::Update(Update {
        round: 70_000 + u64::from(seed),
        base_version: u64::MAX - 5,
        delta: vector(values(len, seed)),
        metrics: LocalMetrics { samples: 1 << 40, prequential_errors: 12 },
        moments: moments.then_some(sums),
    })
}

fn masked(len: usize, seed: u32) -> ClientMessage {
    let masked = values(len, seed).into_iter().map(f32::to_bits).chain([u32::MAX, 0x7FC0_0001]).collect();
    let message = secagg::ClientMessage::MaskedInput(MaskedInput { masked, missing: vec![3, 9, u64::MAX] });
    ClientMessage::SecAgg { round: 12, message }
}

fn model(len: usize, seed: u32) -> CoordinatorMessage {
    CoordinatorMessage::Model { model_version: 250, round: 1 << 33, params: vector(values(len, seed)) }
}

/// Feeds `stream` to `decoder` in pieces of the given sizes (cycled) and returns every payload.
fn feed(decoder: &mut FrameDecoder, stream: &[u8], pieces: &[usize]) -> Vec<Payload> {
    let mut payloads = Vec::new();
    let mut at = 0;
    for piece in pieces.iter().cycle() {
        if at == stream.len() {
            break;
        }
        let end = (at + piece.max(&1)).min(stream.len());
        decoder.push(&stream[at..end]);
        at = end;
        decoder.reserve_frame();
        while let Some(payload) = decoder.poll_payload().unwrap() {
            payloads.push(payload);
        }
    }
    assert_eq!(decoder.buffered(), 0);
    payloads
}

#[test]
fn the_variant_constants_are_those_on_the_wire() {
    let update = encode_frame(&update(3, 0, false), FrameLimit::DEFAULT).unwrap();
    assert_eq!(peek_variant(&update[HEADER_LEN..]), Some(ClientMessage::UPDATE_VARIANT));
    let model = encode_frame(&model(3, 0), FrameLimit::DEFAULT).unwrap();
    assert_eq!(peek_variant(&model[HEADER_LEN..]), Some(CoordinatorMessage::MODEL_VARIANT));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Updates and models split off their values in any chunking, decode to what was sent,
    /// and give back the payload's exact bytes; the small frames between them stay whole.
    #[test]
    fn split_frames_decode_to_the_message_sent(
        len in SPLIT_MIN / 4..SPLIT_MIN / 4 + 3000,
        seed in 0u32..1000,
        moments in any::<bool>(),
        pieces in proptest::collection::vec(prop_oneof![1usize..8, 1000usize..70_000], 1..6),
    ) {
        let sent = [
            update(len, seed, moments),
            ClientMessage::Heartbeat,
            masked(len, seed),
            update(len + 1, seed + 1, !moments),
        ];
        let frames: Vec<Vec<u8>> = sent.iter().map(|m| encode_frame(m, FrameLimit::DEFAULT).unwrap()).collect();
        let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT).split::<ClientMessage>();
        let payloads = feed(&mut decoder, &frames.concat(), &pieces);
        prop_assert_eq!(payloads.len(), 4);
        for ((payload, message), frame) in payloads.into_iter().zip(&sent).zip(&frames) {
            let split = matches!(payload, Payload::Split { .. });
            prop_assert_eq!(split, !matches!(message, ClientMessage::Heartbeat));
            prop_assert_eq!(payload.len(), frame.len() - HEADER_LEN);
            prop_assert_eq!(&payload.clone().into_bytes()[..], &frame[HEADER_LEN..]);
            prop_assert_eq!(&payload.decode::<ClientMessage>().unwrap(), message);
        }

        let sent = model(len, seed);
        let frame = encode_frame(&sent, FrameLimit::DEFAULT).unwrap();
        let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT).split::<CoordinatorMessage>();
        let mut payloads = feed(&mut decoder, &frame, &pieces);
        let payload = payloads.pop().unwrap();
        let split = matches!(payload, Payload::Split { .. });
        prop_assert!(split);
        prop_assert_eq!(payload.decode::<CoordinatorMessage>().unwrap(), sent);
    }
}

#[test]
fn small_payloads_and_other_messages_stay_whole() {
    let small = encode_frame(&update(100, 1, false), FrameLimit::DEFAULT).unwrap();
    let goodbye = ClientMessage::Goodbye { reason: "x".repeat(SPLIT_MIN * 2) };
    let large_other = encode_frame(&goodbye, FrameLimit::DEFAULT).unwrap();
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT).split::<ClientMessage>();
    let payloads = feed(&mut decoder, &[small, large_other].concat(), &[70_000]);
    assert!(payloads.iter().all(|payload| matches!(payload, Payload::Whole(_))));
    assert_eq!(payloads[1].clone().decode::<ClientMessage>().unwrap(), goodbye);
}

#[test]
fn missing_and_buffered_count_the_values_captured() {
    let frame = encode_frame(&model(SPLIT_MIN, 2), FrameLimit::DEFAULT).unwrap();
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT).split::<CoordinatorMessage>();
    decoder.push(&frame[..100_001]);
    assert_eq!(decoder.missing(), Some(frame.len() - 100_001));
    assert_eq!(decoder.buffered(), 100_001);
    decoder.push(&frame[100_001..]);
    decoder.push(&[1, 0]);
    assert_eq!(decoder.missing(), Some(0));
    assert!(matches!(decoder.poll_payload(), Ok(Some(Payload::Split { .. }))));
    assert_eq!(decoder.buffered(), 2);
}

/// Rewrites the length prefix of a model's values (a `u32` varint: tag 252, then four bytes).
fn with_values_len(frame: &[u8], len: u32) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let payload = &frame[HEADER_LEN..];
    let Located::At { offset, .. } = CoordinatorMessage::locate(payload) else { panic!("not located") };
    assert_eq!(payload[offset - 5], 252);
    frame[HEADER_LEN + offset - 4..HEADER_LEN + offset].copy_from_slice(&len.to_le_bytes());
    frame
}

/// A peer announcing values that run past the payload, or that are not whole `f32`s, gets the
/// whole-payload decoder's error; nothing is captured.
#[test]
fn lying_lengths_are_not_split_and_fail_to_decode() {
    let frame = encode_frame(&model(SPLIT_MIN, 3), FrameLimit::DEFAULT).unwrap();
    let values = u32::try_from(SPLIT_MIN * 4).unwrap();
    for lie in [values + 4, values - 2, u32::MAX - 3] {
        let frame = with_values_len(&frame, lie);
        let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT).split::<CoordinatorMessage>();
        let payloads = feed(&mut decoder, &frame, &[65_000]);
        assert!(matches!(payloads[..], [Payload::Whole(_)]), "{lie}");
        let error = payloads[0].clone().decode::<CoordinatorMessage>().unwrap_err();
        assert!(matches!(error, FramingError::Malformed(_)), "{lie}: {error}");
    }
}

#[test]
fn parts_that_do_not_match_their_head_are_refused() {
    let frame = encode_frame(&update(SPLIT_MIN, 4, true), FrameLimit::DEFAULT).unwrap();
    let Located::At { offset, len } = ClientMessage::locate(&frame[HEADER_LEN..]) else { panic!("not located") };
    let head = &frame[HEADER_LEN..HEADER_LEN + offset];
    let tail = &frame[HEADER_LEN + offset + len..];
    let values = values(len / 4, 4);
    assert!(ClientMessage::from_parts(head, values.clone(), tail).is_ok());
    let short = values[1..].to_vec();
    assert!(matches!(ClientMessage::from_parts(head, short, tail), Err(FramingError::Malformed(_))));
    let longer_tail = [tail, &[0]].concat();
    assert!(matches!(
        ClientMessage::from_parts(head, values.clone(), &longer_tail),
        Err(FramingError::TrailingBytes(1))
    ));
    assert!(CoordinatorMessage::from_parts(head, values, tail).is_err(), "an update's head is no model's");
}

#[test]
fn client_frames_in_pieces_are_the_encoded_frame() {
    for message in [update(5000, 1, true), update(0, 2, false), masked(5000, 3), ClientMessage::Heartbeat] {
        let pieces = encode_client_frame(message.clone(), FrameLimit::DEFAULT).unwrap();
        assert_eq!(pieces.concat(), encode_frame(&message, FrameLimit::DEFAULT).unwrap());
    }
    let limit = FrameLimit::new(19_999);
    let refused = encode_client_frame(update(5000, 3, false), limit).unwrap_err();
    assert!(matches!(refused, FramingError::FrameTooLarge { limit: 19_999, .. }), "{refused}");
}

/// Masked words keep their exact bits through the f32s they are captured as (NaN patterns
/// included), and a secure-aggregation message other than a masked input is not split.
#[test]
fn masked_words_keep_their_bits_and_other_secagg_messages_stay_whole() {
    let sent = masked(SPLIT_MIN, 5);
    let frame = encode_frame(&sent, FrameLimit::DEFAULT).unwrap();
    let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT).split::<ClientMessage>();
    let payloads = feed(&mut decoder, &frame, &[3, 65_000]);
    assert!(matches!(payloads[..], [Payload::Split { .. }]));
    assert_eq!(payloads[0].clone().decode::<ClientMessage>().unwrap(), sent);

    let keys =
        secagg::ClientMessage::UnmaskingShares(secagg::UnmaskingShares { self_mask: Vec::new(), mask_key: Vec::new() });
    let frame = encode_frame(&ClientMessage::SecAgg { round: 1, message: keys }, FrameLimit::DEFAULT).unwrap();
    assert_eq!(ClientMessage::locate(&frame[HEADER_LEN..]), Located::Nothing);
}
