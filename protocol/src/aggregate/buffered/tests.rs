//! FedBuff's buffer: staleness weights, refusals and the applied step, worked out by hand.

use crate::aggregate::{AggregateError, Hygiene, Momentum, Sgd};
use crate::params::{Fingerprint, PARAMETER_FORMAT_VERSION, ParameterVector};

use super::*;

fn vector(values: Vec<f32>) -> ParameterVector {
    ParameterVector { format_version: PARAMETER_FORMAT_VERSION, fingerprint: Fingerprint(7), values }
}

#[test]
fn staleness_weighs_updates_by_one_over_the_root_of_one_plus_it() {
    assert_eq!((staleness_weight(0), staleness_weight(3), staleness_weight(8)), (1.0, 0.5, 1.0 / 3.0));
    let mut buffer = Buffered::new(2, 5, Sgd, 1.0, Hygiene::default());
    let model = vector(vec![1.0, 1.0]);
    // At version 10: a fresh update (weight 1) and one resting on version 7 (weight 1/2).
    buffer.fold(&model, 10, &vector(vec![2.0, 0.0]), 10).unwrap();
    assert!(!buffer.ready());
    assert_eq!(buffer.apply(&model), Err(AggregateError::Empty));
    buffer.fold(&model, 10, &vector(vec![0.0, 4.0]), 7).unwrap();
    assert!(buffer.ready());
    assert_eq!(buffer.fold(&model, 10, &vector(vec![0.0, 0.0]), 10), Err(AggregateError::BufferFull { size: 2 }));
    // Δ̄ = (1·(2, 0) + ½·(0, 4)) / 2 = (1, 1).
    assert_eq!(buffer.apply(&model).unwrap().values, vec![2.0, 2.0]);
    assert_eq!(buffer.buffered(), 0);
}

#[test]
fn too_stale_future_and_malformed_updates_are_refused() {
    let mut buffer = Buffered::new(1, 2, Sgd, 1.0, Hygiene::default());
    let model = vector(vec![0.0]);
    assert_eq!(buffer.fold(&model, 10, &vector(vec![1.0]), 7), Err(AggregateError::TooStale { staleness: 3, max: 2 }));
    assert_eq!(
        buffer.fold(&model, 10, &vector(vec![1.0]), 11),
        Err(AggregateError::FutureBase { base: 11, current: 10 })
    );
    assert!(matches!(buffer.fold(&model, 10, &vector(vec![f32::NAN]), 10), Err(AggregateError::Parameters(_))));
    assert_eq!(buffer.buffered(), 0);
    buffer.fold(&model, 10, &vector(vec![1.0]), 8).unwrap();
    assert!((buffer.apply(&model).unwrap().values[0] - 1.0 / 3f32.sqrt()).abs() < 1e-6);
}

#[test]
fn the_server_optimiser_state_carries_over_between_buffers() {
    let mut buffer = Buffered::new(1, 0, Momentum::new(0.5), 1.0, Hygiene::default());
    let mut model = vector(vec![0.0]);
    for (version, expected) in [(0, 1.0), (1, 2.5), (2, 4.25)] {
        buffer.fold(&model, version, &vector(vec![1.0]), version).unwrap();
        model = buffer.apply(&model).unwrap();
        assert_eq!(model.values, vec![expected]);
    }
}
