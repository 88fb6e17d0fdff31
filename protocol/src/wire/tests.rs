use crate::model::HbpConfig;
use crate::model::ModelSpec;
use proptest::prelude::*;

use super::framing::{FrameDecoder, FrameLimit, decode_message, encode_frame};
use super::*;

fn spec() -> impl Strategy<Value = ModelSpec> {
    prop_oneof![hbp_spec().prop_map(ModelSpec::Hbp), any::<u64>().prop_map(|len| ModelSpec::Vector { len })]
}

fn hbp_spec() -> impl Strategy<Value = HbpConfig> {
    (1usize..64, 2usize..10, 0usize..20, 1usize..200, any::<bool>(), any::<u32>()).prop_map(
        |(inputs, classes, hidden_layers, width, input_head, seed)| HbpConfig {
            hidden_layers,
            width,
            input_head,
            seed,
            ..HbpConfig::new(inputs, classes)
        },
    )
}

fn params() -> impl Strategy<Value = ParameterVector> {
    (any::<u16>(), any::<u64>(), prop::collection::vec(-1e6f32..1e6, 0..64)).prop_map(
        |(format_version, fingerprint, values)| ParameterVector {
            format_version,
            fingerprint: Fingerprint(fingerprint),
            values,
        },
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::UnsupportedVersion),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::UnexpectedMessage),
        Just(ErrorCode::StaleUpdate),
        Just(ErrorCode::InvalidUpdate),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::ShuttingDown),
        Just(ErrorCode::Internal),
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (any::<u16>(), ".{0,20}", proptest::option::of(".{0,20}")).prop_map(
            |(protocol_version, client_name, auth_token)| ClientMessage::Join {
                protocol_version,
                client_name,
                auth_token
            }
        ),
        (any::<u64>(), any::<u64>(), params(), any::<u64>(), any::<u64>()).prop_map(
            |(round, base_version, delta, samples, prequential_errors)| {
                let metrics = LocalMetrics { samples, prequential_errors };
                ClientMessage::Update(Update { round, base_version, delta, metrics, moments: None })
            }
        ),
        Just(ClientMessage::Heartbeat),
        (error_code(), ".{0,20}").prop_map(|(code, message)| ClientMessage::Error { code, message }),
        ".{0,20}".prop_map(|reason| ClientMessage::Goodbye { reason }),
    ]
}

fn coordinator_message() -> impl Strategy<Value = CoordinatorMessage> {
    prop_oneof![
        (any::<u64>(), any::<u16>(), spec(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(client_id, protocol_version, spec, fingerprint, round, model_version)| {
                let fingerprint = Fingerprint(fingerprint);
                CoordinatorMessage::Welcome { client_id, protocol_version, spec, fingerprint, round, model_version }
            }
        ),
        (any::<u64>(), any::<u64>(), params()).prop_map(|(model_version, round, params)| CoordinatorMessage::Model {
            model_version,
            round,
            params
        }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(round, model_version, deadline_ms)| {
            CoordinatorMessage::UpdateRequest { round, model_version, deadline_ms }
        }),
        Just(CoordinatorMessage::Heartbeat),
        (error_code(), ".{0,20}").prop_map(|(code, message)| CoordinatorMessage::Error { code, message }),
        ".{0,20}".prop_map(|reason| CoordinatorMessage::Goodbye { reason }),
    ]
}

proptest! {
    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let frame = encode_frame(&message, FrameLimit::DEFAULT).unwrap();
        let decoded: ClientMessage = decode_message(&frame[4..]).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn coordinator_messages_round_trip(message in coordinator_message()) {
        let frame = encode_frame(&message, FrameLimit::DEFAULT).unwrap();
        let decoded: CoordinatorMessage = decode_message(&frame[4..]).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn a_stream_of_messages_survives_any_chunking(
        messages in prop::collection::vec(coordinator_message(), 1..6),
        chunk in 1usize..64,
    ) {
        let stream: Vec<u8> = messages
            .iter()
            .flat_map(|m| encode_frame(m, FrameLimit::DEFAULT).unwrap())
            .collect();
        let mut decoder = FrameDecoder::new(FrameLimit::DEFAULT);
        let mut decoded = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece);
            while let Some(message) = decoder.poll_message::<CoordinatorMessage>().unwrap() {
                decoded.push(message);
            }
        }
        prop_assert_eq!(decoded, messages);
        prop_assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn join_is_variant_zero_so_any_version_can_refuse_it() {
    let join = ClientMessage::Join { protocol_version: 7, client_name: "c".into(), auth_token: None };
    let frame = encode_frame(&join, FrameLimit::DEFAULT).unwrap();
    assert_eq!(frame[4], 0, "variant index of Join");
    assert_eq!(frame[5], 7, "protocol version right after the variant index");
}

#[test]
fn metrics_with_more_errors_than_samples_are_inconsistent() {
    assert!(LocalMetrics { samples: 3, prequential_errors: 3 }.is_consistent());
    assert!(!LocalMetrics { samples: 3, prequential_errors: 4 }.is_consistent());
}

#[test]
fn the_peeked_variant_is_the_decoded_one() {
    use super::framing::peek_variant;
    let join = ClientMessage::Join { protocol_version: 3, client_name: "a".into(), auth_token: None };
    let secagg = ClientMessage::SecAgg {
        round: 1,
        message: crate::secagg::ClientMessage::MaskedInput(crate::secagg::MaskedInput {
            masked: vec![],
            missing: vec![],
        }),
    };
    for (message, variant) in [(join, ClientMessage::JOIN_VARIANT), (secagg, ClientMessage::SECAGG_VARIANT)] {
        let frame = encode_frame(&message, FrameLimit::DEFAULT).unwrap();
        assert_eq!(peek_variant(&frame[4..]), Some(variant));
    }
    assert!(ClientMessage::allowed_before_join(ClientMessage::JOIN_VARIANT));
    let heartbeat = encode_frame(&ClientMessage::Heartbeat, FrameLimit::DEFAULT).unwrap();
    assert!(ClientMessage::allowed_before_join(peek_variant(&heartbeat[4..]).unwrap()));
    assert_eq!(peek_variant(&[]), None);
    assert_eq!(peek_variant(&[251, 1, 0]), Some(1));
}

proptest! {
    /// Nested lengths: a `ShareKeys` message announcing `announced` sealed entries and holding
    /// `sent` of them, each ciphertext announcing and holding `inner` bytes (or announcing 2^40
    /// and holding none), decodes only when every length is honoured and within its bound;
    /// anything else is an error, never a panic, whatever the lengths.
    #[test]
    fn nested_lengths_decode_only_within_their_bounds(
        announced in prop_oneof![0u64..64, 65_530u64..65_540, Just(u64::from(u32::MAX)), Just(u64::MAX)],
        sent in 0usize..64,
        inner in prop_oneof![0u64..300, Just(1u64 << 40)],
    ) {
        // bincode's own varint, as the decoder reads lengths.
        let varint = |n: u64| bincode::encode_to_vec(n, bincode::config::standard()).unwrap();
        let huge = inner > 1 << 20;
        // ClientMessage::SecAgg (6), round 1, secagg::ClientMessage::ShareKeys (1).
        let mut payload = vec![6, 1, 1];
        payload.extend(varint(announced));
        for peer in 0..sent {
            payload.extend(varint(peer as u64));
            payload.extend(varint(inner));
            if !huge {
                payload.extend(std::iter::repeat_n(7u8, inner as usize));
            }
        }
        payload.extend([0u8; 32]); // The commitment.
        let decoded = decode_message::<ClientMessage>(&payload);
        let well_formed = announced == sent as u64
            && (sent == 0 || (!huge && inner <= crate::wire::bounded::MAX_SEALED_BYTES as u64));
        prop_assert_eq!(decoded.is_ok(), well_formed, "announced {} sent {} inner {}", announced, sent, inner);
    }
}
