//! A misbehaving client costs the session only itself or one pair: bad public keys drop their
//! sender, a bad sealed share breaks one pair, a wrong revealed share is caught by the owner's
//! commitment (or public key) and worked around, or reported naming the owner.

use std::collections::BTreeMap;

use super::harness::*;
use crate::privacy::NoiseKey;
use crate::secagg::prg;
use crate::secagg::shamir::{self, P, Share};
use crate::secagg::*;

/// Complete graph of 8 (degree 7), t = 4: a secret has up to 3 spare holders.
fn session() -> Session {
    Session::new(setup(8, 7, 4, 40), 2)
}

fn key(hex: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    key
}

/// The encodings X25519 maps to a non-contributory (all-zero) agreement whatever the secret:
/// the points of order 1, 2, 4 and 8 and their non-canonical encodings (libsodium's list).
fn low_order_points() -> Vec<[u8; 32]> {
    let mut points = vec![
        [0; 32],
        key("0100000000000000000000000000000000000000000000000000000000000000"),
        key("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        key("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        key("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        key("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        key("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ];
    // The same points with the top bit set (X25519 ignores it).
    let with_top_bit: Vec<[u8; 32]> = points
        .iter()
        .map(|p| {
            let mut p = *p;
            p[31] |= 0x80;
            p
        })
        .collect();
    points.extend(with_top_bit);
    points
}

/// Every client's keys, as its `advertise_keys` gives them (not yet sent).
fn draw_keys(s: &mut Session) -> BTreeMap<u64, PublicKeys> {
    s.ids().into_iter().map(|id| (id, s.client(id).advertise_keys().unwrap().keys)).collect()
}

/// Sends `keys` to the server in `order`; returns its answers.
fn send_keys(
    s: &mut Session,
    order: &[u64],
    keys: &BTreeMap<u64, PublicKeys>,
) -> BTreeMap<u64, Result<(), SecAggError>> {
    let answers = order
        .iter()
        .map(|&id| (id, s.server.handle(id, ClientMessage::AdvertiseKeys(AdvertiseKeys { keys: keys[&id] }))))
        .collect();
    s.pump();
    answers
}

/// Phase 2 with each client's `ShareKeys` passed through `tamper` on its way to the server.
fn share_tampered(s: &mut Session, tamper: impl Fn(u64, &mut ShareKeys)) {
    s.close(ServerPhase::AdvertiseKeys).unwrap();
    for id in s.ids() {
        let Some(ServerMessage::KeyDirectory(directory)) = s.next_for(id) else { continue };
        let mut msg = s.client(id).handle_key_directory(&directory).unwrap();
        tamper(id, &mut msg);
        s.server.handle(id, ClientMessage::ShareKeys(msg)).unwrap();
    }
    s.pump();
    s.close(ServerPhase::ShareKeys).unwrap();
}

/// Phase 3 for `inputs` (the others drop before their masked input).
fn mask(s: &mut Session, inputs: &[u64], updates: &BTreeMap<u64, Vec<f32>>) {
    let ids = s.ids();
    s.receive_shares(&ids);
    s.mask(inputs, updates);
    s.close(ServerPhase::MaskedInput).unwrap();
}

/// Phase 4, answers delivered in `order`, each passed through `tamper`.
fn unmask_tampered(
    s: &mut Session,
    order: &[u64],
    tamper: impl Fn(u64, &mut UnmaskingShares),
) -> Result<SecAggOutput, SecAggError> {
    for &id in order {
        let Some(ServerMessage::UnmaskRequest(request)) = s.next_for(id) else { continue };
        let mut msg = s.client(id).handle_unmask_request(&request).unwrap();
        tamper(id, &mut msg);
        s.server.handle(id, ClientMessage::UnmaskingShares(msg)).unwrap();
    }
    s.pump();
    s.close(ServerPhase::Unmasking)?;
    s.server.take_output().ok_or_else(|| s.server.failure().cloned().unwrap())
}

fn conclude(session: Session, result: Result<SecAggOutput, SecAggError>, expected: Vec<u64>) -> Outcome {
    let updates = updates(&session.ids(), session.setup.vector_len, 9);
    Outcome { result, session, updates, expected_survivors: expected }
}

fn all_but(ids: &[u64], gone: &[u64]) -> Vec<u64> {
    ids.iter().copied().filter(|id| !gone.contains(id)).collect()
}

/// Runs phases 2 to 4 honestly over whoever is left.
fn finish(mut s: Session, expected: Vec<u64>) -> Outcome {
    let ids = s.ids();
    let updates = updates(&ids, s.setup.vector_len, 9);
    share_tampered(&mut s, |_, _| {});
    mask(&mut s, &ids, &updates);
    let result = unmask_tampered(&mut s, &ids, |_, _| {});
    conclude(s, result, expected)
}

#[test]
fn low_order_and_non_canonical_keys_are_recognised() {
    for point in low_order_points() {
        assert!(!prg::is_valid_public_key(&point), "{point:02x?}");
    }
    let mut s = session();
    for (_, keys) in draw_keys(&mut s) {
        assert!(prg::is_valid_public_key(&keys.cipher_key) && prg::is_valid_public_key(&keys.mask_key));
        // A valid point with the top bit set: the same point for X25519, but not its canonical
        // encoding.
        let mut top = keys.mask_key;
        top[31] |= 0x80;
        assert!(!prg::is_valid_public_key(&top));
    }
}

#[test]
fn a_low_order_key_drops_only_its_client_and_the_sum_over_the_others_is_exact() {
    for (i, point) in low_order_points().into_iter().enumerate() {
        let mut s = session();
        let ids = s.ids();
        let bad = ids[2];
        let mut keys = draw_keys(&mut s);
        let entry = keys.get_mut(&bad).unwrap();
        if i % 2 == 0 {
            entry.mask_key = point;
        } else {
            entry.cipher_key = point;
        }
        let answers = send_keys(&mut s, &ids, &keys);
        assert_eq!(answers[&bad], Err(SecAggError::WeakKey { peer: bad }), "{point:02x?}");
        assert!(answers.iter().all(|(id, a)| *id == bad || a.is_ok()));
        assert_eq!(s.server.excluded().collect::<Vec<_>>(), [bad]);
        // Everyone else answered: the phase closed by itself, without the bad client.
        assert_eq!(s.server.phase(), ServerPhase::ShareKeys);
        assert!(!s.server.expected().any(|id| id == bad));
        // Later messages of the dropped client are refused.
        let late = ShareKeys { sealed: vec![], commitment: [0; 32] };
        assert_eq!(s.server.handle(bad, ClientMessage::ShareKeys(late)), Err(SecAggError::NotExpected { id: bad }));
        let outcome = finish(s, all_but(&ids, &[bad]));
        outcome.assert_matches_plain_sum();
    }
}

#[test]
fn a_key_used_twice_by_one_client_drops_it() {
    let mut s = session();
    let ids = s.ids();
    let mut keys = draw_keys(&mut s);
    let reuser = ids[6];
    let entry = keys.get_mut(&reuser).unwrap();
    entry.cipher_key = entry.mask_key;
    let answers = send_keys(&mut s, &ids, &keys);
    assert_eq!(answers[&reuser], Err(SecAggError::ReusedKey { peer: reuser }));
    assert_eq!(s.server.excluded().collect::<Vec<_>>(), [reuser]);
    finish(s, all_but(&ids, &[reuser])).assert_matches_plain_sum();
}

#[test]
fn duplicated_keys_drop_every_client_holding_them_whatever_the_order() {
    let mut excluded_sets = Vec::new();
    for reverse in [false, true] {
        let mut s = session();
        let ids = s.ids();
        let mut keys = draw_keys(&mut s);
        let (owner, copier, third) = (ids[1], ids[3], ids[5]);
        let copied = keys[&owner].mask_key;
        keys.get_mut(&copier).unwrap().cipher_key = copied;
        keys.get_mut(&third).unwrap().mask_key = copied;
        let mut order = ids.clone();
        if reverse {
            order.reverse();
        }
        let answers = send_keys(&mut s, &order, &keys);
        // The first to advertise the key is named as the other party of each duplicate.
        let first = if reverse { third } else { owner };
        for id in [owner, copier, third].into_iter().filter(|&id| id != first) {
            assert_eq!(answers[&id], Err(SecAggError::DuplicateKey { peer: id, other: first }));
        }
        assert_eq!(answers[&first], Ok(()), "accepted on arrival, dropped when the copy came");
        let excluded: Vec<u64> = s.server.excluded().collect();
        assert_eq!(excluded, [owner, copier, third]);
        excluded_sets.push(excluded);
        let outcome = finish(s, all_but(&ids, &[owner, copier, third]));
        outcome.assert_matches_plain_sum();
    }
    assert_eq!(excluded_sets[0], excluded_sets[1]);
}

#[test]
fn a_low_order_key_in_a_directory_leaves_only_that_pair_out() {
    // A directory whose entry for b carries a low-order key and whose entry for c repeats a's own
    // mask key (the server did not filter them): a treats b and c as dropped, neither pair
    // exchanges shares nor masks, and everyone's input is still in the exact sum.
    let mut s = session();
    let ids = s.ids();
    let (a, b, c) = (ids[0], ids[4], ids[6]);
    let keys = draw_keys(&mut s);
    let own_mask_key = keys[&a].mask_key;
    send_keys(&mut s, &ids, &keys);
    let Some(ServerMessage::KeyDirectory(directory)) = s.inbox.get_mut(&a).and_then(|m| m.first_mut()) else {
        panic!("a directory for a")
    };
    for (peer, keys) in &mut directory.keys {
        if *peer == b {
            keys.cipher_key = [0; 32];
        }
        if *peer == c {
            keys.mask_key = own_mask_key;
        }
    }
    let updates = updates(&ids, s.setup.vector_len, 9);
    share_tampered(&mut s, |_, _| {});
    assert_eq!(s.client(a).holders().collect::<Vec<_>>(), all_but(&ids, &[a, b, c]));
    assert_eq!(s.server.partners(a).collect::<Vec<_>>(), all_but(&ids, &[a, b, c]));
    assert!(!s.server.partners(b).any(|p| p == a));
    assert!(!s.server.partners(c).any(|p| p == a));
    assert_eq!(s.server.partners(ids[1]).count(), 7);
    mask(&mut s, &ids, &updates);
    assert!(!s.client(a).partners().any(|p| p == b || p == c));
    let result = unmask_tampered(&mut s, &ids, |_, _| {});
    conclude(s, result, ids.clone()).assert_matches_plain_sum();
}

#[test]
fn a_corrupted_sealed_share_drops_only_that_pair() {
    // The sealed shares sender → recipient are altered on their way: the recipient cannot open
    // them, reports them missing, and is not asked for them. The sender drops before its
    // masked input in the second run, so its mask key is rebuilt without the recipient.
    for sender_drops in [false, true] {
        let mut s = session();
        let ids = s.ids();
        let (sender, recipient) = (ids[2], ids[6]);
        s.advertise(&ids);
        share_tampered(&mut s, |_, _| {});
        let Some(ServerMessage::ForwardedShares(forwarded)) = s.inbox.get_mut(&recipient).and_then(|m| m.first_mut())
        else {
            panic!("forwarded shares for the recipient")
        };
        let entry = forwarded.sealed.iter_mut().find(|e| e.peer == sender).unwrap();
        entry.ciphertext[7] ^= 0x40;
        let updates = updates(&ids, s.setup.vector_len, 9);
        let inputs = if sender_drops { all_but(&ids, &[sender]) } else { ids.clone() };
        s.receive_shares(&ids);
        let client = s.client(recipient);
        assert_eq!(client.phase(), ClientPhase::ReadyForInput);
        assert!(client.partners().any(|p| p == sender), "still masks with the sender");
        assert!(!client.held().any(|p| p == sender));
        assert_eq!(client.held().count(), 6);
        let masked = client.masked_update(&updates[&recipient], 1.0, &[]).unwrap();
        assert_eq!(masked.missing, [sender]);
        s.server.handle(recipient, ClientMessage::MaskedInput(masked)).unwrap();
        s.mask(&all_but(&inputs, &[recipient]), &updates);
        s.close(ServerPhase::MaskedInput).unwrap();
        let result = unmask_tampered(&mut s, &ids, |id, answer| {
            if id == recipient {
                assert!(answer.self_mask.iter().chain(&answer.mask_key).all(|r| r.owner != sender));
            }
        });
        let outcome = conclude(s, result, inputs);
        outcome.assert_matches_plain_sum();
        assert_eq!(outcome.session.server.flagged().count(), 0);
    }
}

#[test]
fn badly_addressed_truncated_or_repeated_sealed_shares_break_only_their_pair() {
    let mut s = session();
    let ids = s.ids();
    let (sender, recipient) = (ids[1], ids[5]);
    let (repeater, target) = (ids[3], ids[7]);
    s.advertise(&ids);
    share_tampered(&mut s, |id, msg| {
        if id == sender {
            let entry = msg.sealed.iter_mut().find(|e| e.peer == recipient).unwrap();
            entry.ciphertext.truncate(20);
            // Entries for itself and for a stranger are ignored.
            let copy = msg.sealed[0].clone();
            msg.sealed.push(Sealed { peer: sender, ..copy.clone() });
            msg.sealed.push(Sealed { peer: 99, ..copy });
        }
        if id == repeater {
            let entry = msg.sealed.iter().find(|e| e.peer == target).unwrap().clone();
            msg.sealed.push(entry);
        }
    });
    let partners = |s: &Session, id: u64| s.server.partners(id).collect::<Vec<_>>();
    assert_eq!(partners(&s, sender), all_but(&ids, &[sender, recipient]));
    assert_eq!(partners(&s, recipient), all_but(&ids, &[recipient, sender]));
    assert_eq!(partners(&s, repeater), all_but(&ids, &[repeater, target]));
    assert_eq!(partners(&s, target), all_but(&ids, &[target, repeater]));
    assert_eq!(partners(&s, ids[0]).len(), 7);
    let updates = updates(&ids, s.setup.vector_len, 9);
    mask(&mut s, &ids, &updates);
    let result = unmask_tampered(&mut s, &ids, |_, _| {});
    conclude(s, result, ids.clone()).assert_matches_plain_sum();
}

#[test]
fn a_wrong_revealed_share_is_caught_and_worked_around() {
    // Self mask: the liar answers first, so its share is among the first t of the owner's.
    let mut s = session();
    let ids = s.ids();
    let (liar, owner) = (ids[5], ids[2]);
    let updates = updates(&ids, s.setup.vector_len, 9);
    s.advertise(&ids);
    share_tampered(&mut s, |_, _| {});
    mask(&mut s, &ids, &updates);
    let mut order = vec![liar];
    order.extend(all_but(&ids, &[liar]));
    let result = unmask_tampered(&mut s, &order, |id, answer| {
        if id == liar {
            let share = &mut answer.self_mask.iter_mut().find(|r| r.owner == owner).unwrap().share;
            share.y[1] = (share.y[1] + 12_345) % P;
        }
    });
    let outcome = conclude(s, result, ids.clone());
    outcome.assert_matches_plain_sum();
    assert_eq!(outcome.session.server.flagged().collect::<Vec<_>>(), [liar]);

    // Mask key of a client dropped before its input.
    let mut s = session();
    let (liar, dropped) = (ids[0], ids[4]);
    s.advertise(&ids);
    share_tampered(&mut s, |_, _| {});
    let inputs = all_but(&ids, &[dropped]);
    mask(&mut s, &inputs, &updates);
    let result = unmask_tampered(&mut s, &inputs, |id, answer| {
        if id == liar {
            let share = &mut answer.mask_key.iter_mut().find(|r| r.owner == dropped).unwrap().share;
            share.y[2] = (share.y[2] + (1 << 30)) % P;
        }
    });
    let outcome = conclude(s, result, inputs);
    outcome.assert_matches_plain_sum();
    assert_eq!(outcome.session.server.flagged().collect::<Vec<_>>(), [liar]);
}

#[test]
fn a_client_lying_about_every_share_it_reveals_is_flagged_and_worked_around() {
    let mut s = session();
    let ids = s.ids();
    let liar = ids[6];
    let updates = updates(&ids, s.setup.vector_len, 9);
    s.advertise(&ids);
    share_tampered(&mut s, |_, _| {});
    mask(&mut s, &ids, &updates);
    let mut order = vec![liar];
    order.extend(all_but(&ids, &[liar]));
    let result = unmask_tampered(&mut s, &order, |id, answer| {
        if id == liar {
            assert_eq!(answer.self_mask.len(), 7);
            for r in &mut answer.self_mask {
                r.share.y[3] = (r.share.y[3] + r.owner) % P;
            }
        }
    });
    let outcome = conclude(s, result, ids.clone());
    outcome.assert_matches_plain_sum();
    assert_eq!(outcome.session.server.flagged().collect::<Vec<_>>(), [liar]);
}

#[test]
fn too_many_wrong_revealed_shares_fail_naming_the_owner() {
    // Four of the owner's seven holders lie (differently): three honest shares are fewer than
    // t = 4, no subset matches the commitment, and the session fails instead of unmasking wrong.
    let mut s = session();
    let ids = s.ids();
    let owner = ids[3];
    let liars = [ids[0], ids[1], ids[5], ids[7]];
    let updates = updates(&ids, s.setup.vector_len, 9);
    s.advertise(&ids);
    share_tampered(&mut s, |_, _| {});
    mask(&mut s, &ids, &updates);
    let result = unmask_tampered(&mut s, &ids, |id, answer| {
        if let Some(i) = liars.iter().position(|&l| l == id) {
            let share = &mut answer.self_mask.iter_mut().find(|r| r.owner == owner).unwrap().share;
            share.y[0] = (share.y[0] + 1 + i as u64) % P;
        }
    });
    assert_eq!(result, Err(SecAggError::CommitmentMismatch { owner }));
    assert_eq!(s.server.phase(), ServerPhase::Failed);
    assert!(s.server.output().is_none());
}

#[test]
fn commitments_bind_the_seed_the_owner_and_the_session() {
    let (session_a, session_b) = ([1; 32], [2; 32]);
    let b = [7; 32];
    let c = prg::self_mask_commitment(&session_a, 10, &b);
    assert_eq!(c, prg::self_mask_commitment(&session_a, 10, &b));
    assert_ne!(c, prg::self_mask_commitment(&session_b, 10, &b));
    assert_ne!(c, prg::self_mask_commitment(&session_a, 11, &b));
    assert_ne!(c, prg::self_mask_commitment(&session_a, 10, &[8; 32]));
    assert_ne!(&c, &b, "the commitment is not the seed");
}

#[test]
fn subset_search_tries_every_threshold_subset_once_and_finds_one_bad_share_fast() {
    for (m, t) in [(1, 1), (4, 1), (5, 5), (7, 4), (9, 3), (10, 6)] {
        let mut seen = std::collections::BTreeSet::new();
        let found = shamir::search_subsets(m, t, usize::MAX, |subset| {
            assert_eq!(subset.len(), t);
            assert!(subset.windows(2).all(|w| w[0] < w[1]) && subset.iter().all(|&i| i < m));
            assert!(seen.insert(subset.to_vec()), "{subset:?} twice");
            false
        });
        assert_eq!(found, None);
        let binomial = (0..t).fold(1usize, |acc, i| acc * (m - i) / (i + 1));
        assert_eq!(seen.len(), binomial, "m {m} t {t}");
    }
    // One bad index among the first t: found within t + 1 tries.
    for bad in 0..5 {
        let mut tries = 0;
        let found = shamir::search_subsets(9, 5, usize::MAX, |subset| {
            tries += 1;
            !subset.contains(&bad)
        });
        assert!(found.is_some_and(|s| !s.contains(&bad)) && tries <= 6, "bad {bad}: {tries} tries");
    }
    // The budget bounds the work.
    let mut tries = 0;
    assert_eq!(
        shamir::search_subsets(30, 15, 100, |_| {
            tries += 1;
            false
        }),
        None
    );
    assert_eq!(tries, 100);
}

#[test]
fn shares_wipe_themselves_and_do_not_show_their_values() {
    let mut share = Share { x: 3, y: [11, 22, 33, 44, 55] };
    assert_eq!(format!("{share:?}"), "Share { x: 3, .. }");
    zeroize::Zeroize::zeroize(&mut share);
    assert_eq!((share.x, share.y), (0, [0; shamir::LIMBS]));
}

#[test]
fn session_ids_come_from_the_secret_key() {
    let (a, b) = (NoiseKey([1; 32]), NoiseKey([2; 32]));
    assert_eq!(a.secagg_session_id(4), a.secagg_session_id(4));
    assert_ne!(a.secagg_session_id(4), b.secagg_session_id(4), "another key, another id");
    assert_ne!(a.secagg_session_id(4), a.secagg_session_id(5), "another round, another id");
    // Independent of the key's other uses.
    assert_ne!(a.secagg_session_id(4), a.round_seed(4));
    assert_ne!(a.secagg_session_id(4), a.derive(b"poisson sampling", 4));
}
