//! An in-memory session: one server, n clients, messages carried by hand.

use std::collections::{BTreeMap, BTreeSet};

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};

use crate::secagg::*;

/// Client ids of a cohort of `n`: not contiguous, not starting at 0.
pub fn cohort(n: usize) -> Vec<u64> {
    (0..n as u64).map(|i| 1000 + 7 * i).collect()
}

pub fn setup(n: usize, k: usize, t: usize, len: usize) -> SessionSetup {
    SessionSetup {
        session_id: [42; SEED_LEN],
        params: SecAggParams { neighbours: k, threshold: t, clip_range: 1.0, scale_bits: 16 },
        vector_len: len,
        cohort: cohort(n),
    }
}

pub fn client_seed(id: u64) -> [u8; SEED_LEN] {
    let mut seed = [0xC1; SEED_LEN];
    seed[..8].copy_from_slice(&id.to_le_bytes());
    seed
}

/// Uniform values in `[-1, 1)`, one vector per client.
pub fn updates(ids: &[u64], len: usize, seed: u8) -> BTreeMap<u64, Vec<f32>> {
    let mut rng = ChaCha20Rng::from_seed([seed; 32]);
    ids.iter()
        .map(|&id| {
            let v = (0..len).map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0).collect();
            (id, v)
        })
        .collect()
}

pub struct Session {
    pub setup: SessionSetup,
    pub server: SecAggServer,
    pub clients: BTreeMap<u64, SecAggClient>,
    pub inbox: BTreeMap<u64, Vec<ServerMessage>>,
    /// The masked inputs as the server saw them.
    pub masked: BTreeMap<u64, Vec<u32>>,
}

impl Session {
    /// A server and every client of the cohort, built from the server's `Setup` messages.
    pub fn new(setup: SessionSetup, min_survivors: usize) -> Self {
        let server = SecAggServer::new(setup.clone(), min_survivors).unwrap();
        let mut session =
            Session { setup, server, clients: BTreeMap::new(), inbox: BTreeMap::new(), masked: BTreeMap::new() };
        session.pump();
        for (id, messages) in std::mem::take(&mut session.inbox) {
            let [ServerMessage::Setup(setup)] = messages.as_slice() else { panic!("expected one Setup") };
            session.clients.insert(id, SecAggClient::new(id, setup.clone(), client_seed(id)).unwrap());
        }
        session
    }

    pub fn ids(&self) -> Vec<u64> {
        self.setup.cohort.clone()
    }

    /// Moves the server's queued messages to the clients' inboxes.
    pub fn pump(&mut self) {
        while let Some((to, msg)) = self.server.poll_message() {
            self.inbox.entry(to).or_default().push(msg);
        }
    }

    /// The oldest undelivered message for `id`.
    pub fn next_for(&mut self, id: u64) -> Option<ServerMessage> {
        let inbox = self.inbox.get_mut(&id)?;
        if inbox.is_empty() { None } else { Some(inbox.remove(0)) }
    }

    pub fn client(&mut self, id: u64) -> &mut SecAggClient {
        self.clients.get_mut(&id).unwrap()
    }

    /// Closes `phase` by its deadline if it did not close by itself.
    pub fn close(&mut self, phase: ServerPhase) -> Result<(), SecAggError> {
        if self.server.phase() == phase {
            self.server.handle_deadline()?;
        }
        self.pump();
        match self.server.failure() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    pub fn advertise(&mut self, ids: &[u64]) {
        for &id in ids {
            let msg = self.client(id).advertise_keys().unwrap();
            self.server.handle(id, ClientMessage::AdvertiseKeys(msg)).unwrap();
        }
        self.pump();
    }

    pub fn share(&mut self, ids: &[u64]) {
        for &id in ids {
            // Clients left out by the server get no directory.
            let Some(ServerMessage::KeyDirectory(directory)) = self.next_for(id) else { continue };
            let msg = self.client(id).handle_key_directory(&directory).unwrap();
            self.server.handle(id, ClientMessage::ShareKeys(msg)).unwrap();
        }
        self.pump();
    }

    /// Delivers the forwarded shares to `ids` (clients still running).
    pub fn receive_shares(&mut self, ids: &[u64]) {
        for &id in ids {
            let Some(ServerMessage::ForwardedShares(shares)) = self.next_for(id) else { continue };
            self.client(id).handle_forwarded_shares(&shares).unwrap();
        }
    }

    pub fn mask(&mut self, ids: &[u64], updates: &BTreeMap<u64, Vec<f32>>) {
        for &id in ids {
            if self.client(id).phase() != ClientPhase::ReadyForInput {
                continue;
            }
            let msg = self.client(id).masked_update(&updates[&id], 1.0, &[]).unwrap();
            self.masked.insert(id, msg.masked.clone());
            self.server.handle(id, ClientMessage::MaskedInput(msg)).unwrap();
        }
        self.pump();
    }

    pub fn unmask(&mut self, ids: &[u64]) {
        for &id in ids {
            let Some(ServerMessage::UnmaskRequest(request)) = self.next_for(id) else { continue };
            let msg = self.client(id).handle_unmask_request(&request).unwrap();
            self.server.handle(id, ClientMessage::UnmaskingShares(msg)).unwrap();
        }
        self.pump();
    }
}

/// Who drops when, by cohort index.
#[derive(Default, Clone)]
pub struct Dropouts {
    /// Never advertise keys.
    pub silent: Vec<usize>,
    /// Advertise keys, then send no shares.
    pub after_keys: Vec<usize>,
    /// Send shares, then no masked input.
    pub before_input: Vec<usize>,
    /// Send the masked input, then no unmasking shares.
    pub after_input: Vec<usize>,
}

pub struct Outcome {
    pub result: Result<SecAggOutput, SecAggError>,
    pub session: Session,
    pub updates: BTreeMap<u64, Vec<f32>>,
    /// The clients whose input must be in the sum (if none is left out for want of neighbours).
    pub expected_survivors: Vec<u64>,
}

/// Runs a whole session with these dropouts; phases close by deadline where someone is missing.
pub fn run(setup: SessionSetup, min_survivors: usize, drops: &Dropouts) -> Outcome {
    let mut s = Session::new(setup, min_survivors);
    let ids = s.ids();
    let updates = updates(&ids, s.setup.vector_len, 9);
    let pick = |idx: &[usize]| idx.iter().map(|&i| ids[i]).collect::<BTreeSet<u64>>();
    let (silent, after_keys, before_input, after_input) =
        (pick(&drops.silent), pick(&drops.after_keys), pick(&drops.before_input), pick(&drops.after_input));
    let live = |gone: &[&BTreeSet<u64>]| -> Vec<u64> {
        ids.iter().copied().filter(|id| gone.iter().all(|g| !g.contains(id))).collect()
    };
    let expected_survivors = live(&[&silent, &after_keys, &before_input]);
    let result = (|| {
        s.advertise(&live(&[&silent]));
        s.close(ServerPhase::AdvertiseKeys)?;
        s.share(&live(&[&silent, &after_keys]));
        s.close(ServerPhase::ShareKeys)?;
        s.receive_shares(&live(&[&silent, &after_keys]));
        s.mask(&expected_survivors, &updates);
        s.close(ServerPhase::MaskedInput)?;
        s.unmask(&live(&[&silent, &after_keys, &before_input, &after_input]));
        s.close(ServerPhase::Unmasking)?;
        s.server.take_output().ok_or_else(|| s.server.failure().cloned().unwrap())
    })();
    Outcome { result, session: s, updates, expected_survivors }
}

impl Outcome {
    /// Checks the decoded secure sum against the plain sum of the survivors' updates.
    pub fn assert_matches_plain_sum(&self) {
        let output = self.result.as_ref().unwrap();
        assert_eq!(output.survivors, self.expected_survivors);
        let (decoded, trailing) = output.decode(&self.session.setup, self.session.setup.vector_len).unwrap();
        assert!(trailing.is_empty());
        let fixed = self.session.setup.params.fixed_point().unwrap();
        let bound = fixed.max_error(output.survivors.len(), Rounding::Nearest);
        for (i, got) in decoded.iter().enumerate() {
            let plain: f64 = output.survivors.iter().map(|id| f64::from(self.updates[id][i])).sum();
            let err = (f64::from(*got) - plain).abs();
            assert!(err <= bound + plain.abs() * 1e-7, "coordinate {i}: {got} vs {plain} (bound {bound})");
        }
    }
}
