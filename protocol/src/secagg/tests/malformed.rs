//! Malformed and out-of-place messages are refused with typed errors and change nothing.

use super::harness::*;
use crate::secagg::*;

/// A session of 6 clients (complete graph, t = 3) driven up to the masked inputs.
fn session_at_masking() -> Session {
    let mut s = Session::new(setup(6, 5, 3, 10), 2);
    let ids = s.ids();
    s.advertise(&ids);
    s.share(&ids);
    s.receive_shares(&ids);
    s
}

#[test]
fn server_refuses_malformed_client_messages() {
    let mut s = Session::new(setup(6, 5, 3, 10), 2);
    let ids = s.ids();
    let keys = s.client(ids[0]).advertise_keys().unwrap();
    let server = &mut s.server;
    assert_eq!(server.handle(7, ClientMessage::AdvertiseKeys(keys.clone())), Err(SecAggError::NotInCohort { id: 7 }));
    server.handle(ids[0], ClientMessage::AdvertiseKeys(keys.clone())).unwrap();
    assert_eq!(server.handle(ids[0], ClientMessage::AdvertiseKeys(keys)), Err(SecAggError::Duplicate { id: ids[0] }));
    let early = server.handle(ids[1], ClientMessage::MaskedInput(MaskedInput { masked: vec![0; 10], missing: vec![] }));
    assert_eq!(early, Err(SecAggError::UnexpectedMessage { message: "MaskedInput", phase: "AdvertiseKeys" }));
    s.advertise(&ids[1..]);
    assert_eq!(s.server.phase(), ServerPhase::ShareKeys);

    // ShareKeys out of the cohort or twice. (Badly addressed or malformed entries only cost their
    // pair: see `robustness.rs`.)
    let Some(ServerMessage::KeyDirectory(directory)) = s.next_for(ids[0]) else { panic!() };
    let good = s.client(ids[0]).handle_key_directory(&directory).unwrap();
    assert_eq!(s.server.handle(7, ClientMessage::ShareKeys(good.clone())), Err(SecAggError::NotInCohort { id: 7 }));
    s.server.handle(ids[0], ClientMessage::ShareKeys(good.clone())).unwrap();
    assert_eq!(s.server.handle(ids[0], ClientMessage::ShareKeys(good)), Err(SecAggError::Duplicate { id: ids[0] }));
}

#[test]
fn server_refuses_bad_masked_inputs_and_unmasking_shares() {
    let mut s = session_at_masking();
    let ids = s.ids();
    let wrong =
        s.server.handle(ids[0], ClientMessage::MaskedInput(MaskedInput { masked: vec![1; 9], missing: vec![] }));
    assert_eq!(wrong, Err(SecAggError::WrongLength { expected: 10, got: 9 }));
    // Missing shares of a client that is no partner, or listed twice.
    let stranger = MaskedInput { masked: vec![1; 10], missing: vec![ids[0]] };
    assert_eq!(
        s.server.handle(ids[0], ClientMessage::MaskedInput(stranger)),
        Err(SecAggError::NotANeighbour { peer: ids[0] })
    );
    let twice = MaskedInput { masked: vec![1; 10], missing: vec![ids[1], ids[1]] };
    assert_eq!(
        s.server.handle(ids[0], ClientMessage::MaskedInput(twice)),
        Err(SecAggError::DuplicatePeer { peer: ids[1] })
    );
    let updates = updates(&ids, 10, 3);
    s.mask(&ids, &updates);
    assert_eq!(s.server.phase(), ServerPhase::Unmasking);

    let Some(ServerMessage::UnmaskRequest(request)) = s.next_for(ids[0]) else { panic!() };
    let good = s.client(ids[0]).handle_unmask_request(&request).unwrap();
    // One share missing.
    let mut missing = good.clone();
    let gone = missing.self_mask.pop().unwrap();
    assert_eq!(
        s.server.handle(ids[0], ClientMessage::UnmaskingShares(missing)),
        Err(SecAggError::UnexpectedShares { from: ids[0], owner: gone.owner })
    );
    // A mask-key share nobody asked for (that peer survived).
    let mut both = good.clone();
    both.mask_key.push(both.self_mask[0].clone());
    assert!(matches!(
        s.server.handle(ids[0], ClientMessage::UnmaskingShares(both)),
        Err(SecAggError::UnexpectedShares { .. })
    ));
    // A share at another holder's index, or outside the field.
    let mut moved = good.clone();
    moved.self_mask[0].share.x += 1;
    assert!(matches!(
        s.server.handle(ids[0], ClientMessage::UnmaskingShares(moved)),
        Err(SecAggError::BadShare { .. })
    ));
    let mut huge = good.clone();
    huge.self_mask[0].share.y[0] = u64::MAX;
    assert!(matches!(s.server.handle(ids[0], ClientMessage::UnmaskingShares(huge)), Err(SecAggError::BadShare { .. })));
    s.server.handle(ids[0], ClientMessage::UnmaskingShares(good)).unwrap();
    s.unmask(&ids[1..]);
    assert_eq!(s.server.phase(), ServerPhase::Done);
}

#[test]
fn server_fails_when_every_revealed_share_is_corrupt() {
    // Every holder shifts its share of the dropped client's mask key the same way: every subset
    // interpolates to the same wrong key, which does not match the advertised public key. (The
    // alteration avoids the low bits of byte 0, which X25519 clamps away.)
    let mut s = session_at_masking();
    let ids = s.ids();
    s.mask(&ids[..5], &updates(&ids, 10, 3));
    s.close(ServerPhase::MaskedInput).unwrap();
    for &id in &ids[..5] {
        let Some(ServerMessage::UnmaskRequest(request)) = s.next_for(id) else { panic!() };
        let mut answer = s.client(id).handle_unmask_request(&request).unwrap();
        answer.mask_key[0].share.y[0] = (answer.mask_key[0].share.y[0] + (1 << 20)) % shamir::P;
        s.server.handle(id, ClientMessage::UnmaskingShares(answer)).unwrap();
    }
    assert_eq!(s.server.phase(), ServerPhase::Failed);
    assert_eq!(s.server.failure(), Some(&SecAggError::KeyMismatch { owner: ids[5] }));
    assert!(s.server.output().is_none());
}

#[test]
fn client_refuses_malformed_server_messages() {
    let mut s = Session::new(setup(6, 5, 3, 10), 2);
    let ids = s.ids();
    let me = ids[0];
    assert!(matches!(
        s.client(me).handle_unmask_request(&UnmaskRequest { survivors: vec![], dropped: vec![] }),
        Err(SecAggError::UnexpectedMessage { .. })
    ));
    s.advertise(&ids);
    let Some(ServerMessage::KeyDirectory(directory)) = s.next_for(me) else { panic!() };
    let client = s.client(me);
    let mut unknown = directory.clone();
    unknown.keys[0].0 = 99;
    assert_eq!(client.handle_key_directory(&unknown), Err(SecAggError::NotANeighbour { peer: 99 }));
    let mut itself = directory.clone();
    itself.keys[0].0 = me;
    assert_eq!(client.handle_key_directory(&itself), Err(SecAggError::NotANeighbour { peer: me }));
    let mut twice = directory.clone();
    twice.keys[1] = twice.keys[0];
    assert!(matches!(client.handle_key_directory(&twice), Err(SecAggError::DuplicatePeer { .. })));
    let few = KeyDirectory { keys: directory.keys[..2].to_vec() };
    assert_eq!(client.handle_key_directory(&few), Err(SecAggError::TooFewNeighbours { have: 2, need: 3 }));
    // Unusable keys leave their neighbour out; with too few usable ones the client cannot go on.
    let mut weak = directory.clone();
    for (_, keys) in &mut weak.keys[..3] {
        keys.mask_key = [0; 32];
    }
    assert_eq!(client.handle_key_directory(&weak), Err(SecAggError::TooFewNeighbours { have: 2, need: 3 }));
    assert_eq!(client.phase(), ClientPhase::AwaitingKeys);
    let share_keys = client.handle_key_directory(&directory).unwrap();
    s.server.handle(me, ClientMessage::ShareKeys(share_keys)).unwrap();
    s.share(&ids[1..]);

    // Forwarded shares from too few partners (entries from strangers or named twice do not count;
    // tampered ones only cost their pair: see `robustness.rs`).
    let Some(ServerMessage::ForwardedShares(forwarded)) = s.next_for(me) else { panic!() };
    let client = s.client(me);
    let few = ForwardedShares { sealed: forwarded.sealed[..2].to_vec() };
    assert_eq!(client.handle_forwarded_shares(&few), Err(SecAggError::TooFewNeighbours { have: 2, need: 3 }));
    let mut strangers = forwarded.clone();
    strangers.sealed[0].peer = 5;
    strangers.sealed[1].peer = 6;
    strangers.sealed[2].peer = strangers.sealed[3].peer;
    assert_eq!(client.handle_forwarded_shares(&strangers), Err(SecAggError::TooFewNeighbours { have: 1, need: 3 }));
    assert_eq!(client.phase(), ClientPhase::AwaitingShares);
    client.handle_forwarded_shares(&forwarded).unwrap();
    assert_eq!(client.masked_input(&[0; 3]), Err(SecAggError::WrongLength { expected: 10, got: 3 }));
    assert!(matches!(client.masked_update(&[f32::NAN; 10], 1.0, &[]), Err(SecAggError::FixedPoint(_))));
    client.masked_input(&[0; 10]).unwrap();

    // Unmask requests that would reveal both secrets of a peer, or that do not add up.
    let held = client.neighbours().to_vec();
    let both = UnmaskRequest { survivors: held.clone(), dropped: vec![held[0]] };
    assert_eq!(client.handle_unmask_request(&both), Err(SecAggError::RevealBoth { peer: held[0] }));
    let stranger = UnmaskRequest { survivors: held[1..].to_vec(), dropped: vec![77] };
    assert_eq!(client.handle_unmask_request(&stranger), Err(SecAggError::UnmaskMismatch { peer: 77 }));
    let partial = UnmaskRequest { survivors: held[1..].to_vec(), dropped: vec![] };
    assert_eq!(client.handle_unmask_request(&partial), Err(SecAggError::UnmaskMismatch { peer: held[0] }));
    let few = UnmaskRequest { survivors: held[..2].to_vec(), dropped: held[2..].to_vec() };
    assert_eq!(client.handle_unmask_request(&few), Err(SecAggError::TooFewSurvivors { have: 2, need: 3 }));
    let fine = UnmaskRequest { survivors: held[1..].to_vec(), dropped: vec![held[0]] };
    let answer = client.handle_unmask_request(&fine).unwrap();
    assert_eq!((answer.self_mask.len(), answer.mask_key.len()), (4, 1));
    assert_eq!(client.phase(), ClientPhase::Done);
    // Answered once: a second request (say, naming the other secret) is refused.
    assert!(matches!(client.handle_unmask_request(&fine), Err(SecAggError::UnexpectedMessage { .. })));
}

#[test]
fn clients_and_servers_refuse_bad_setups() {
    let mut bad = setup(6, 5, 3, 10);
    bad.cohort.swap(0, 1);
    assert!(matches!(SecAggServer::new(bad.clone(), 2), Err(SecAggError::CohortNotSorted)));
    assert!(matches!(SecAggClient::new(bad.cohort[0], bad, [0; 32]), Err(SecAggError::CohortNotSorted)));
    let mut empty = setup(6, 5, 3, 10);
    empty.vector_len = 0;
    assert!(matches!(SecAggServer::new(empty, 2), Err(SecAggError::EmptyVector)));
    assert!(matches!(SecAggClient::new(3, setup(6, 5, 3, 10), [0; 32]), Err(SecAggError::NotInCohort { id: 3 })));
    assert!(matches!(
        SecAggServer::new(setup(6, 5, 2, 10), 2),
        Err(SecAggError::Params(ParamsError::ThresholdTooLow { threshold: 2, degree: 5 }))
    ));
    for min in [1, 7] {
        assert_eq!(
            SecAggServer::new(setup(6, 5, 3, 10), min).err(),
            Some(SecAggError::Params(ParamsError::MinSurvivors { min, cohort: 6 }))
        );
    }
}
