//! The server's side of a session.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use x25519_dalek::{PublicKey, StaticSecret};

use super::messages::{
    AdvertiseKeys, ClientMessage, ForwardedShares, KeyDirectory, MaskedInput, PublicKeys, RevealedShare, Sealed,
    ServerMessage, ShareKeys, UnmaskRequest, UnmaskingShares,
};
use super::shamir::{self, Share};
use super::{NeighbourGraph, ParamsError, SecAggError, SessionSetup, prg};

/// Where the server stands in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPhase {
    /// Collecting [`AdvertiseKeys`].
    AdvertiseKeys,
    /// Collecting [`ShareKeys`].
    ShareKeys,
    /// Collecting [`MaskedInput`], folded into the running sum as they arrive.
    MaskedInput,
    /// Collecting [`UnmaskingShares`].
    Unmasking,
    /// The sum is ready ([`SecAggServer::output`]).
    Done,
    /// The session failed ([`SecAggServer::failure`]).
    Failed,
}

impl ServerPhase {
    /// The phase's name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdvertiseKeys => "AdvertiseKeys",
            Self::ShareKeys => "ShareKeys",
            Self::MaskedInput => "MaskedInput",
            Self::Unmasking => "Unmasking",
            Self::Done => "Done",
            Self::Failed => "Failed",
        }
    }
}

/// The result of a session: the sum of the survivors' encoded updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecAggOutput {
    /// `Σ x_u mod 2^32` over the survivors.
    pub sum: Vec<u32>,
    /// The clients whose updates are in the sum, ascending.
    pub survivors: Vec<u64>,
}

impl SecAggOutput {
    /// Decodes the sum with the session's fixed-point encoding.
    pub fn decode(&self, setup: &SessionSetup) -> Result<Vec<f32>, SecAggError> {
        Ok(setup.params.fixed_point()?.decode(&self.sum, self.survivors.len())?)
    }
}

/// The server's state machine for one session.
///
/// Feed it every client message with [`Self::handle`] (or the `handle_*` of its kind) and tell
/// it when the current phase's deadline passed ([`Self::handle_deadline`]); send what
/// [`Self::poll_message`] yields to the client it names. A phase also closes by itself when
/// every client it waits for has answered. A refused message (`Err`) changes nothing; `Ok`
/// means it was taken, and if it closed the phase the session may have ended: check
/// [`Self::phase`].
#[derive(Debug)]
pub struct SecAggServer {
    setup: SessionSetup,
    graph: NeighbourGraph,
    min_survivors: usize,
    phase: ServerPhase,
    failure: Option<SecAggError>,
    outbound: VecDeque<(u64, ServerMessage)>,
    /// Clients the current phase waits for.
    expected: BTreeSet<u64>,
    /// Clients that answered the current phase.
    answered: BTreeSet<u64>,
    keys: BTreeMap<u64, PublicKeys>,
    /// Sealed shares by sender, then by recipient.
    sealed: BTreeMap<u64, BTreeMap<u64, Vec<u8>>>,
    sum: Vec<u32>,
    /// Clients that held shares but sent no masked input.
    dropped: BTreeSet<u64>,
    requests: BTreeMap<u64, UnmaskRequest>,
    self_mask_shares: BTreeMap<u64, Vec<Share>>,
    mask_key_shares: BTreeMap<u64, Vec<Share>>,
    output: Option<SecAggOutput>,
}

impl SecAggServer {
    /// Opens the session `setup`, failing the round when fewer than `min_survivors` (at least 2)
    /// clients' inputs would be summed. Queues a [`ServerMessage::Setup`] for every client.
    pub fn new(setup: SessionSetup, min_survivors: usize) -> Result<Self, SecAggError> {
        setup.validate()?;
        let cohort = setup.cohort.len();
        if min_survivors < 2 || min_survivors > cohort {
            return Err(ParamsError::MinSurvivors { min: min_survivors, cohort }.into());
        }
        let graph = setup.graph()?;
        let outbound = setup.cohort.iter().map(|&id| (id, ServerMessage::Setup(setup.clone()))).collect();
        Ok(Self {
            expected: setup.cohort.iter().copied().collect(),
            setup,
            graph,
            min_survivors,
            phase: ServerPhase::AdvertiseKeys,
            failure: None,
            outbound,
            answered: BTreeSet::new(),
            keys: BTreeMap::new(),
            sealed: BTreeMap::new(),
            sum: Vec::new(),
            dropped: BTreeSet::new(),
            requests: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            output: None,
        })
    }

    /// The current phase.
    pub fn phase(&self) -> ServerPhase {
        self.phase
    }

    /// The session.
    pub fn setup(&self) -> &SessionSetup {
        &self.setup
    }

    /// The session's neighbour graph.
    pub fn graph(&self) -> &NeighbourGraph {
        &self.graph
    }

    /// The clients the current phase waits for, ascending.
    pub fn expected(&self) -> impl Iterator<Item = u64> + '_ {
        self.expected.iter().copied()
    }

    /// The next message to send, with the id of its recipient.
    pub fn poll_message(&mut self) -> Option<(u64, ServerMessage)> {
        self.outbound.pop_front()
    }

    /// The sum, once [`ServerPhase::Done`].
    pub fn output(&self) -> Option<&SecAggOutput> {
        self.output.as_ref()
    }

    /// Takes the sum out, once [`ServerPhase::Done`].
    pub fn take_output(&mut self) -> Option<SecAggOutput> {
        self.output.take()
    }

    /// Why the session failed, once [`ServerPhase::Failed`].
    pub fn failure(&self) -> Option<&SecAggError> {
        self.failure.as_ref()
    }

    /// Dispatches a client message to the `handle_*` of its kind.
    pub fn handle(&mut self, from: u64, msg: ClientMessage) -> Result<(), SecAggError> {
        match msg {
            ClientMessage::AdvertiseKeys(m) => self.handle_advertise_keys(from, m),
            ClientMessage::ShareKeys(m) => self.handle_share_keys(from, m),
            ClientMessage::MaskedInput(m) => self.handle_masked_input(from, &m),
            ClientMessage::UnmaskingShares(m) => self.handle_unmasking_shares(from, m),
        }
    }

    /// The deadline of the current phase passed: go on with the clients that answered, or fail
    /// (the error is also kept in [`Self::failure`]).
    pub fn handle_deadline(&mut self) -> Result<(), SecAggError> {
        match self.phase {
            ServerPhase::Done | ServerPhase::Failed => {
                Err(SecAggError::UnexpectedMessage { message: "deadline", phase: self.phase.name() })
            }
            _ => self.close_phase(),
        }
    }

    /// Phase 1: a client's public keys.
    pub fn handle_advertise_keys(&mut self, from: u64, msg: AdvertiseKeys) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::AdvertiseKeys, "AdvertiseKeys")?;
        self.keys.insert(from, msg.keys);
        self.answered(from);
        Ok(())
    }

    /// Phase 2: a client's sealed shares, one per neighbour of the directory it was sent.
    pub fn handle_share_keys(&mut self, from: u64, msg: ShareKeys) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::ShareKeys, "ShareKeys")?;
        let recipients = self.live_neighbours(from, &self.expected);
        let mut sealed = BTreeMap::new();
        for Sealed { peer, ciphertext } in msg.sealed {
            if recipients.binary_search(&peer).is_err() {
                return Err(SecAggError::RecipientsMismatch { from });
            }
            if ciphertext.len() != prg::CIPHERTEXT_LEN {
                return Err(SecAggError::BadCiphertext { peer: from });
            }
            if sealed.insert(peer, ciphertext).is_some() {
                return Err(SecAggError::DuplicatePeer { peer });
            }
        }
        if sealed.len() != recipients.len() {
            return Err(SecAggError::RecipientsMismatch { from });
        }
        self.sealed.insert(from, sealed);
        self.answered(from);
        Ok(())
    }

    /// Phase 3: a client's masked input, folded into the running sum.
    pub fn handle_masked_input(&mut self, from: u64, msg: &MaskedInput) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::MaskedInput, "MaskedInput")?;
        if msg.masked.len() != self.sum.len() {
            return Err(SecAggError::WrongLength { expected: self.sum.len(), got: msg.masked.len() });
        }
        self.sum.iter_mut().zip(&msg.masked).for_each(|(s, &y)| *s = s.wrapping_add(y));
        self.answered(from);
        Ok(())
    }

    /// Phase 4: a survivor's shares, exactly those its [`UnmaskRequest`] asked for.
    pub fn handle_unmasking_shares(&mut self, from: u64, msg: UnmaskingShares) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::Unmasking, "UnmaskingShares")?;
        let request = self.requests.get(&from).ok_or(SecAggError::NotExpected { id: from })?;
        self.check_revealed(from, &msg.self_mask, &request.survivors)?;
        self.check_revealed(from, &msg.mask_key, &request.dropped)?;
        for r in msg.self_mask {
            self.self_mask_shares.entry(r.owner).or_default().push(r.share);
        }
        for r in msg.mask_key {
            self.mask_key_shares.entry(r.owner).or_default().push(r.share);
        }
        self.answered(from);
        Ok(())
    }

    fn admit(&self, from: u64, phase: ServerPhase, message: &'static str) -> Result<(), SecAggError> {
        if self.phase != phase {
            return Err(SecAggError::UnexpectedMessage { message, phase: self.phase.name() });
        }
        if self.setup.cohort.binary_search(&from).is_err() {
            return Err(SecAggError::NotInCohort { id: from });
        }
        if !self.expected.contains(&from) {
            return Err(SecAggError::NotExpected { id: from });
        }
        if self.answered.contains(&from) {
            return Err(SecAggError::Duplicate { id: from });
        }
        Ok(())
    }

    /// Records an accepted answer and closes the phase once everyone answered.
    fn answered(&mut self, from: u64) {
        self.answered.insert(from);
        if self.answered.len() == self.expected.len() {
            // A failure is kept in `self.failure` and shown by the phase.
            let _ = self.close_phase();
        }
    }

    /// Revealed shares must name exactly the owners asked for, once each, at the holder's index.
    fn check_revealed(&self, from: u64, revealed: &[RevealedShare], asked: &[u64]) -> Result<(), SecAggError> {
        let mut owners = BTreeSet::new();
        for r in revealed {
            if asked.binary_search(&r.owner).is_err() || !owners.insert(r.owner) {
                return Err(SecAggError::UnexpectedShares { from, owner: r.owner });
            }
            if !r.share.is_well_formed() || Some(r.share.x) != self.graph.share_index(r.owner, from) {
                return Err(SecAggError::BadShare { from, owner: r.owner });
            }
        }
        if let Some(&owner) = asked.iter().find(|o| !owners.contains(*o)) {
            return Err(SecAggError::UnexpectedShares { from, owner });
        }
        Ok(())
    }

    /// The neighbours of `id` within `live`, ascending.
    fn live_neighbours(&self, id: u64, live: &BTreeSet<u64>) -> Vec<u64> {
        self.graph.neighbours(id).unwrap_or(&[]).iter().copied().filter(|v| live.contains(v)).collect()
    }

    /// Leaves out, until none is left, the clients with fewer than `t` neighbours in `live`.
    fn peel(&self, live: &mut BTreeSet<u64>) {
        let t = self.setup.params.threshold;
        loop {
            let weak: Vec<u64> = live.iter().copied().filter(|&u| self.live_neighbours(u, live).len() < t).collect();
            if weak.is_empty() {
                return;
            }
            weak.iter().for_each(|u| {
                live.remove(u);
            });
        }
    }

    fn close_phase(&mut self) -> Result<(), SecAggError> {
        let result = match self.phase {
            ServerPhase::AdvertiseKeys => self.close_advertise_keys(),
            ServerPhase::ShareKeys => self.close_share_keys(),
            ServerPhase::MaskedInput => self.close_masked_input(),
            ServerPhase::Unmasking => self.close_unmasking(),
            ServerPhase::Done | ServerPhase::Failed => Ok(()),
        };
        if let Err(e) = &result {
            self.phase = ServerPhase::Failed;
            self.failure = Some(e.clone());
            self.outbound.clear();
            self.sum = Vec::new();
        }
        result
    }

    fn enough(&self, phase: ServerPhase, live: &BTreeSet<u64>) -> Result<(), SecAggError> {
        if live.len() < self.min_survivors {
            return Err(SecAggError::TooFewClients { phase: phase.name(), have: live.len(), need: self.min_survivors });
        }
        Ok(())
    }

    fn next_phase(&mut self, phase: ServerPhase, expected: BTreeSet<u64>) {
        self.phase = phase;
        self.expected = expected;
        self.answered.clear();
    }

    fn close_advertise_keys(&mut self) -> Result<(), SecAggError> {
        let mut live = std::mem::take(&mut self.answered);
        self.peel(&mut live);
        self.enough(ServerPhase::AdvertiseKeys, &live)?;
        self.keys.retain(|id, _| live.contains(id));
        for &u in &live {
            let keys = self.live_neighbours(u, &live).into_iter().filter_map(|v| Some((v, *self.keys.get(&v)?)));
            self.outbound.push_back((u, ServerMessage::KeyDirectory(KeyDirectory { keys: keys.collect() })));
        }
        self.next_phase(ServerPhase::ShareKeys, live);
        Ok(())
    }

    fn close_share_keys(&mut self) -> Result<(), SecAggError> {
        let mut live = std::mem::take(&mut self.answered);
        self.peel(&mut live);
        self.enough(ServerPhase::ShareKeys, &live)?;
        let mut sealed = std::mem::take(&mut self.sealed);
        for &u in &live {
            let forwarded = self
                .live_neighbours(u, &live)
                .into_iter()
                .filter_map(|v| Some(Sealed { peer: v, ciphertext: sealed.get_mut(&v)?.remove(&u)? }))
                .collect();
            self.outbound.push_back((u, ServerMessage::ForwardedShares(ForwardedShares { sealed: forwarded })));
        }
        self.sum = vec![0; self.setup.vector_len];
        self.next_phase(ServerPhase::MaskedInput, live);
        Ok(())
    }

    fn close_masked_input(&mut self) -> Result<(), SecAggError> {
        let survivors = std::mem::take(&mut self.answered);
        self.enough(ServerPhase::MaskedInput, &survivors)?;
        let t = self.setup.params.threshold;
        let dropped: BTreeSet<u64> = self.expected.difference(&survivors).copied().collect();
        // Every survivor's self mask and every mask key a survivor used need t live holders.
        for &owner in survivors.iter().chain(&dropped) {
            let have = self.live_neighbours(owner, &survivors).len();
            let needed = survivors.contains(&owner) || have > 0;
            if needed && have < t {
                return Err(SecAggError::TooFewHolders { owner, have, need: t });
            }
        }
        for &u in &survivors {
            let request = UnmaskRequest {
                survivors: self.live_neighbours(u, &survivors),
                dropped: self.live_neighbours(u, &dropped),
            };
            self.requests.insert(u, request.clone());
            self.outbound.push_back((u, ServerMessage::UnmaskRequest(request)));
        }
        self.dropped = dropped;
        self.next_phase(ServerPhase::Unmasking, survivors);
        Ok(())
    }

    fn close_unmasking(&mut self) -> Result<(), SecAggError> {
        let t = self.setup.params.threshold;
        let session = self.setup.session_id;
        let survivors = self.expected.clone();
        let shares_of = |map: &BTreeMap<u64, Vec<Share>>, owner: u64| -> Result<[u8; 32], SecAggError> {
            let shares = map.get(&owner).map(Vec::as_slice).unwrap_or(&[]);
            if shares.len() < t {
                return Err(SecAggError::TooFewShares { owner, got: shares.len(), need: t });
            }
            shamir::combine(shares, t).map_err(|source| SecAggError::Reconstruction { owner, source })
        };
        // Check that every secret can be rebuilt before touching the sum.
        let mut self_seeds = Vec::with_capacity(survivors.len());
        for &u in &survivors {
            let b = shares_of(&self.self_mask_shares, u)?;
            self_seeds.push(prg::self_mask_seed(&session, u, &b)?);
        }
        let mut mask_keys = Vec::new();
        for &v in &self.dropped {
            let partners = self.live_neighbours(v, &survivors);
            if partners.is_empty() {
                continue;
            }
            let secret = StaticSecret::from(shares_of(&self.mask_key_shares, v)?);
            let advertised = self.keys.get(&v).ok_or(SecAggError::KeyMismatch { owner: v })?;
            if PublicKey::from(&secret).to_bytes() != advertised.mask_key {
                return Err(SecAggError::KeyMismatch { owner: v });
            }
            mask_keys.push((v, secret, partners));
        }
        let mut sum = std::mem::take(&mut self.sum);
        for seed in &self_seeds {
            prg::apply_mask(&mut sum, seed, true);
        }
        for (v, secret, partners) in &mask_keys {
            for &u in partners {
                let key = self.keys.get(&u).ok_or(SecAggError::NotExpected { id: u })?;
                let seed = prg::pairwise_seed(&session, secret, &key.mask_key, u, *v)?
                    .ok_or(SecAggError::WeakKey { peer: u })?;
                // u added the mask if u < v and subtracted it otherwise: undo that.
                prg::apply_mask(&mut sum, &seed, u < *v);
            }
        }
        self.output = Some(SecAggOutput { sum, survivors: survivors.iter().copied().collect() });
        self.self_mask_shares.clear();
        self.mask_key_shares.clear();
        self.phase = ServerPhase::Done;
        self.answered.clear();
        Ok(())
    }
}
