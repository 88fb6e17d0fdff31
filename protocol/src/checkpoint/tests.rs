use super::*;
use crate::model::HbpConfig;
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION};

fn checkpoint() -> Checkpoint {
    Checkpoint {
        round: 12,
        model_version: 9,
        spec: HbpConfig::new(4, 3).into(),
        params: ParameterVector {
            format_version: PARAMETER_FORMAT_VERSION,
            fingerprint: Fingerprint(0xfeed),
            values: vec![0.5, -1.25, 3.0, 0.0],
        },
        served: None,
        accountant: None,
        adaptive_clip: None,
        feature_moments: None,
    }
}

#[test]
fn served_model_round_trips_and_format_2_is_still_read() {
    let mut with_served = checkpoint();
    with_served.served = Some(ParameterVector { values: vec![0.25, -1.0, 2.0, 0.5], ..with_served.params.clone() });
    assert_eq!(Checkpoint::decode(&with_served.encode().unwrap()).unwrap(), with_served);
    // A format-2 file (no served model) written by an older build.
    #[derive(serde::Serialize)]
    struct V2<'a> {
        round: u64,
        model_version: u64,
        spec: &'a ModelSpec,
        params: &'a ParameterVector,
    }
    let old = checkpoint();
    let v2 = V2 { round: old.round, model_version: old.model_version, spec: &old.spec, params: &old.params };
    let bytes = seal(CHECKPOINT_MAGIC, 2, &v2).unwrap();
    assert_eq!(Checkpoint::decode(&bytes).unwrap(), old);
    let bytes = seal(CHECKPOINT_MAGIC, 1, &v2).unwrap();
    assert!(matches!(Checkpoint::decode(&bytes), Err(CheckpointError::UnsupportedVersion { found: 1, .. })));
}

#[test]
fn format_3_is_read_and_an_adaptive_clip_round_trips_or_is_refused_when_invalid() {
    #[derive(serde::Serialize)]
    struct V3<'a> {
        round: u64,
        model_version: u64,
        spec: &'a ModelSpec,
        params: &'a ParameterVector,
        served: Option<ParameterVector>,
        accountant: Option<crate::privacy::RdpAccountant>,
    }
    let old = checkpoint();
    let v3 = V3 {
        round: old.round,
        model_version: old.model_version,
        spec: &old.spec,
        params: &old.params,
        served: None,
        accountant: Some(crate::privacy::RdpAccountant::default()),
    };
    let expected = Checkpoint { accountant: Some(crate::privacy::RdpAccountant::default()), ..old.clone() };
    assert_eq!(Checkpoint::decode(&seal(CHECKPOINT_MAGIC, 3, &v3).unwrap()).unwrap(), expected);

    let bound = crate::privacy::ClipBound::new(0.5).unwrap();
    let clip = crate::privacy::AdaptiveClip::new(bound, 0.5, 0.2, 1.0, 10.0).unwrap();
    let with_clip = Checkpoint { adaptive_clip: Some(clip.clone()), ..old.clone() };
    assert_eq!(Checkpoint::decode(&with_clip.encode().unwrap()).unwrap(), with_clip);
    // A valid envelope around a negative bound (a file written by something else).
    let mut value = serde_json::to_value(&clip).unwrap();
    value["clip"] = serde_json::json!(-1.0);
    let invalid = Checkpoint { adaptive_clip: Some(serde_json::from_value(value).unwrap()), ..old.clone() };
    let tampered = seal(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT_VERSION, &invalid).unwrap();
    assert_eq!(Checkpoint::decode(&tampered), Err(CheckpointError::AdaptiveClip));
}

#[test]
fn round_trip() {
    let bytes = checkpoint().encode().unwrap();
    assert_eq!(&bytes[..8], b"FLOTCKPT");
    assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint()));
}

#[test]
fn every_truncation_is_detected() {
    let bytes = checkpoint().encode().unwrap();
    for len in 0..bytes.len() {
        let err = Checkpoint::decode(&bytes[..len]).unwrap_err();
        assert!(matches!(err, CheckpointError::Truncated { .. }), "{len} bytes: {err}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(Checkpoint::decode(&longer), Err(CheckpointError::TrailingBytes(1)));
}

#[test]
fn every_flipped_byte_is_detected() {
    let bytes = checkpoint().encode().unwrap();
    for i in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[i] ^= 0x10;
        let err = Checkpoint::decode(&corrupt).unwrap_err();
        let expected = match i {
            0..8 => matches!(err, CheckpointError::BadMagic),
            8..10 => matches!(err, CheckpointError::UnsupportedVersion { .. }),
            10..18 => matches!(err, CheckpointError::Truncated { .. } | CheckpointError::TrailingBytes(_)),
            _ => matches!(err, CheckpointError::ChecksumMismatch),
        };
        assert!(expected, "byte {i}: {err}");
    }
}

#[test]
fn bad_magic_and_future_version_are_refused() {
    assert_eq!(Checkpoint::decode(b"PK\x03\x04 not a checkpoint at all"), Err(CheckpointError::BadMagic));
    let mut bytes = checkpoint().encode().unwrap();
    bytes[8..10].copy_from_slice(&(CHECKPOINT_FORMAT_VERSION + 1).to_le_bytes());
    let supported = CHECKPOINT_FORMAT_VERSION;
    assert_eq!(
        Checkpoint::decode(&bytes),
        Err(CheckpointError::UnsupportedVersion { found: supported + 1, supported })
    );
}

#[test]
fn a_checksummed_but_invalid_payload_is_refused() {
    let mut state = checkpoint();
    state.params.values[1] = f32::NAN;
    let err = Checkpoint::decode(&state.encode().unwrap()).unwrap_err();
    assert!(matches!(err, CheckpointError::Parameters(ParameterError::NotFinite { index: 1, .. })));
}

#[test]
fn format_4_is_read_and_feature_statistics_round_trip_or_are_refused_when_they_do_not_fit() {
    #[derive(serde::Serialize)]
    struct V4<'a> {
        round: u64,
        model_version: u64,
        spec: &'a ModelSpec,
        params: &'a ParameterVector,
        served: Option<ParameterVector>,
        accountant: Option<crate::privacy::RdpAccountant>,
        adaptive_clip: Option<crate::privacy::AdaptiveClip>,
    }
    let old = checkpoint();
    let v4 = V4 {
        round: old.round,
        model_version: old.model_version,
        spec: &old.spec,
        params: &old.params,
        served: None,
        accountant: None,
        adaptive_clip: None,
    };
    assert_eq!(Checkpoint::decode(&seal(CHECKPOINT_MAGIC, 4, &v4).unwrap()).unwrap(), old);

    let inputs = old.spec.hbp().map_or(0, |hbp| hbp.inputs);
    let mut moments = crate::model::FeatureMoments::new(inputs);
    moments.add_row(&vec![1.5; inputs]);
    let with_moments = Checkpoint { feature_moments: Some(moments.clone()), ..old.clone() };
    assert_eq!(Checkpoint::decode(&with_moments.encode().unwrap()).unwrap(), with_moments);
    let mut wrong = moments;
    wrong.sum.push(1.0);
    wrong.sum_squares.push(1.0);
    let wrong = Checkpoint { feature_moments: Some(wrong), ..old };
    let bytes = seal(CHECKPOINT_MAGIC, CHECKPOINT_FORMAT_VERSION, &wrong).unwrap();
    assert!(matches!(Checkpoint::decode(&bytes), Err(CheckpointError::FeatureMoments(_))));
}
