//! Whole sessions: the secure sum against the plain sum, dropouts, failures, privacy.

use super::harness::*;
use crate::secagg::*;

/// Complete graph (k = n − 1) and a sparse one (k < n − 1).
fn graphs() -> [(usize, usize, usize); 2] {
    // (n, k, t): t is at most the degree minus the 5 clients dropped in the test below, so every
    // secret keeps t live holders whatever the graph.
    [(12, 11, 6), (24, 12, 7)]
}

#[test]
fn secure_sum_equals_plain_sum_without_dropouts() {
    for (n, k, t) in graphs() {
        let outcome = run(setup(n, k, t, 300), 2, &Dropouts::default());
        outcome.assert_matches_plain_sum();
        assert_eq!(outcome.session.server.phase(), ServerPhase::Done);
        assert!(outcome.session.clients.values().all(|c| c.phase() == ClientPhase::Done));
    }
}

#[test]
fn secure_sum_with_one_dropout_before_masked_input() {
    for (n, k, t) in graphs() {
        let drops = Dropouts { before_input: vec![3], ..Dropouts::default() };
        let outcome = run(setup(n, k, t, 300), 2, &drops);
        outcome.assert_matches_plain_sum();
        assert_eq!(outcome.result.as_ref().unwrap().survivors.len(), n - 1);
    }
}

#[test]
fn secure_sum_with_one_dropout_after_masked_input() {
    for (n, k, t) in graphs() {
        let drops = Dropouts { after_input: vec![0], ..Dropouts::default() };
        let outcome = run(setup(n, k, t, 300), 2, &drops);
        // The client dropped after its input was folded: it is in the sum.
        outcome.assert_matches_plain_sum();
        assert_eq!(outcome.result.as_ref().unwrap().survivors.len(), n);
    }
}

#[test]
fn secure_sum_with_several_dropouts_at_every_phase() {
    for (n, k, t) in graphs() {
        let drops = Dropouts { silent: vec![1], after_keys: vec![4], before_input: vec![2, 7], after_input: vec![5] };
        let outcome = run(setup(n, k, t, 300), 2, &drops);
        outcome.assert_matches_plain_sum();
        assert_eq!(outcome.result.as_ref().unwrap().survivors.len(), n - 4);
    }
}

#[test]
fn secure_sum_of_a_small_cohort_with_the_smallest_graph() {
    // n = 3, k = 2, t = 2: every neighbour is needed.
    run(setup(3, 2, 2, 50), 2, &Dropouts::default()).assert_matches_plain_sum();
    // n = 4, k = 3, t = 2: one may drop before its input.
    let drops = Dropouts { before_input: vec![2], ..Dropouts::default() };
    run(setup(4, 3, 2, 50), 2, &drops).assert_matches_plain_sum();
    // Odd k with odd n: every client gets k + 1 neighbours.
    run(setup(11, 3, 3, 50), 2, &Dropouts::default()).assert_matches_plain_sum();
}

#[test]
fn too_few_survivors_fail_with_typed_errors() {
    // Fewer survivors than the minimum.
    let drops = Dropouts { before_input: vec![0, 1, 2], ..Dropouts::default() };
    let outcome = run(setup(6, 5, 3, 20), 4, &drops);
    assert_eq!(outcome.result, Err(SecAggError::TooFewClients { phase: "MaskedInput", have: 3, need: 4 }));
    assert_eq!(outcome.session.server.phase(), ServerPhase::Failed);

    // Two survivors, each with one surviving neighbour: their self masks have too few holders.
    let drops = Dropouts { before_input: vec![0, 1, 2, 3], ..Dropouts::default() };
    let outcome = run(setup(6, 5, 3, 20), 2, &drops);
    assert!(matches!(outcome.result, Err(SecAggError::TooFewHolders { have: 1, need: 3, .. })), "{:?}", outcome.result);

    // Three survivors stop after their input: the other three hold 2 < 3 shares of each other.
    let drops = Dropouts { after_input: vec![0, 1, 2], ..Dropouts::default() };
    let outcome = run(setup(6, 5, 3, 20), 2, &drops);
    assert!(matches!(outcome.result, Err(SecAggError::TooFewShares { got: 2, need: 3, .. })), "{:?}", outcome.result);

    // Nobody advertises keys.
    let drops = Dropouts { silent: (0..6).collect(), ..Dropouts::default() };
    let outcome = run(setup(6, 5, 3, 20), 2, &drops);
    assert_eq!(outcome.result, Err(SecAggError::TooFewClients { phase: "AdvertiseKeys", have: 0, need: 2 }));
    // A failed server refuses anything further.
    let mut server = outcome.session.server;
    assert!(matches!(server.handle_deadline(), Err(SecAggError::UnexpectedMessage { .. })));
    assert!(server.poll_message().is_none());
}

#[test]
fn clients_with_too_few_live_neighbours_are_left_out() {
    // Degree 3 (ring ±1 and the opposite client), t = 2. Two of a victim's three neighbours stay
    // silent: it keeps one live neighbour, too few to hold its shares, and is left out. Whether
    // that leaves its other neighbours short too depends on which two: try all three pairs.
    let s = setup(12, 3, 2, 40);
    let ids = s.cohort.clone();
    let victim = ids[0];
    let around = s.graph().unwrap().neighbours(victim).unwrap().to_vec();
    let index = |id: u64| ids.iter().position(|&x| x == id).unwrap();
    let mut kept_going = 0;
    for skip in 0..3 {
        let silent: Vec<usize> = (0..3).filter(|&i| i != skip).map(|i| index(around[i])).collect();
        let mut outcome = run(s.clone(), 2, &Dropouts { silent: silent.clone(), ..Dropouts::default() });
        assert!(outcome.session.clients[&victim].phase() == ClientPhase::AwaitingKeys);
        match &outcome.result {
            Ok(output) => {
                kept_going += 1;
                assert!(!output.survivors.contains(&victim));
                outcome.expected_survivors = output.survivors.clone();
                outcome.assert_matches_plain_sum();
            }
            // Leaving the victim out left others short, and so on: a clean failure.
            Err(e) => assert!(matches!(e, SecAggError::TooFewClients { phase: "AdvertiseKeys", .. }), "{e:?}"),
        }
    }
    assert!(kept_going > 0);
}

#[test]
fn masked_input_is_uncorrelated_with_the_update() {
    let len = 10_000;
    let outcome = run(setup(5, 4, 3, len), 2, &Dropouts::default());
    outcome.assert_matches_plain_sum();
    let scale = outcome.session.setup.params.fixed_point().unwrap().scale();
    for (id, masked) in &outcome.session.masked {
        let seen: Vec<f64> = masked.iter().map(|&y| f64::from(y as i32) / scale).collect();
        let truth: Vec<f64> = outcome.updates[id].iter().map(|&x| f64::from(x)).collect();
        let r = pearson(&seen, &truth);
        assert!(r.abs() < 0.05, "client {id}: correlation {r}");
        // Sanity check of the statistic: the unmasked encoding is perfectly correlated.
        let encoded = outcome.session.setup.params.fixed_point().unwrap().encode(&outcome.updates[id], 1.0).unwrap();
        let plain: Vec<f64> = encoded.iter().map(|&y| f64::from(y as i32) / scale).collect();
        assert!(pearson(&plain, &truth) > 0.999);
    }
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn messages_survive_bincode() {
    let outcome = run(setup(4, 3, 2, 8), 2, &Dropouts { before_input: vec![1], ..Dropouts::default() });
    outcome.assert_matches_plain_sum();
    // Replay one session through the wire encoding, message by message.
    let config = bincode::config::standard();
    let mut s = Session::new(setup(4, 3, 2, 8), 2);
    let ids = s.ids();
    let roundtrip = |m: &ClientMessage| -> ClientMessage {
        let bytes = bincode::serde::encode_to_vec(m, config).unwrap();
        bincode::serde::decode_from_slice(&bytes, config).unwrap().0
    };
    for &id in &ids {
        let m = ClientMessage::AdvertiseKeys(s.client(id).advertise_keys().unwrap());
        s.server.handle(id, roundtrip(&m)).unwrap();
    }
    s.pump();
    for &id in &ids {
        let msg = s.next_for(id).unwrap();
        let bytes = bincode::serde::encode_to_vec(&msg, config).unwrap();
        let back: ServerMessage = bincode::serde::decode_from_slice(&bytes, config).unwrap().0;
        assert_eq!(back, msg);
        let reply = s.client(id).handle(&back).unwrap().unwrap();
        s.server.handle(id, roundtrip(&reply)).unwrap();
    }
    assert_eq!(s.server.phase(), ServerPhase::MaskedInput);
}
