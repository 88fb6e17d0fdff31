//! The server's side of a session.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use zeroize::Zeroizing;

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
    /// Decodes the first `values` words of the sum with the session's fixed-point encoding;
    /// the words after them (the clients' trailing words, summed) are returned as they are.
    pub fn decode(&self, setup: &SessionSetup, values: usize) -> Result<(Vec<f32>, &[u32]), SecAggError> {
        let (head, trailing) = self.sum.split_at(values.min(self.sum.len()));
        Ok((setup.params.fixed_point()?.decode(head, self.survivors.len())?, trailing))
    }
}

/// How many `t`-subsets of a secret's revealed shares the server tries before giving up on
/// finding one that matches the owner's commitment (or public key). Subsets come in an order
/// that finds a single wrong share among the first `t + 1` within `t + 1` tries.
pub const SUBSET_BUDGET: usize = 4096;

/// The server's state machine for one session.
///
/// Feed it every client message with [`Self::handle`] (or the `handle_*` of its kind) and tell
/// it when the current phase's deadline passed ([`Self::handle_deadline`]); send what
/// [`Self::poll_message`] yields to the client it names. A phase also closes by itself when
/// every client it waits for has answered. A refused message (`Err`) changes nothing, except
/// the keys that prove their sender misbehaved ([`SecAggError::WeakKey`],
/// [`SecAggError::ReusedKey`], [`SecAggError::DuplicateKey`]): those drop the sender (and the
/// client whose key it repeated) from the session, which goes on without them
/// ([`Self::excluded`]). `Ok` means it was taken, and if it closed the phase the session may
/// have ended: check [`Self::phase`].
///
/// Misbehaviour that concerns one pair only costs that pair: a sealed share of the wrong length,
/// addressed to a non-neighbour or repeated is not relayed (the two clients do not mask with
/// each other), a share a client cannot open is reported by it and it is not asked to reveal
/// it. Revealed shares are checked against the owner's commitment to its self-mask seed
/// ([`ShareKeys::commitment`]) or against its advertised mask key; when they do not match, the
/// server looks for `t` shares that do ([`SUBSET_BUDGET`]) and names the holders of the others
/// ([`Self::flagged`]), or fails naming the owner — it never unmasks with a wrong secret.
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
    /// Every valid key advertised in the session, with the first client that advertised it.
    key_owners: BTreeMap<[u8; 32], u64>,
    /// Clients dropped for unusable or duplicated keys.
    excluded: BTreeSet<u64>,
    /// Sealed shares by sender, then by recipient.
    sealed: BTreeMap<u64, BTreeMap<u64, Vec<u8>>>,
    /// Each client's commitment to its self-mask seed.
    commitments: BTreeMap<u64, [u8; 32]>,
    /// Each live client's partners: the neighbours it exchanged sealed shares with both ways.
    partners: BTreeMap<u64, BTreeSet<u64>>,
    /// The partners each survivor holds no shares of (reported in its masked input).
    missing: BTreeMap<u64, BTreeSet<u64>>,
    sum: Vec<u32>,
    /// Clients that held shares but sent no masked input.
    dropped: BTreeSet<u64>,
    /// The owners each survivor must reveal shares of: (self masks, mask keys).
    asked: BTreeMap<u64, (Vec<u64>, Vec<u64>)>,
    /// Revealed shares by owner, with their holder.
    self_mask_shares: BTreeMap<u64, Vec<(u64, Share)>>,
    mask_key_shares: BTreeMap<u64, Vec<(u64, Share)>>,
    /// Holders whose revealed shares were found inconsistent with the owner's secret.
    flagged: BTreeSet<u64>,
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
            key_owners: BTreeMap::new(),
            excluded: BTreeSet::new(),
            sealed: BTreeMap::new(),
            commitments: BTreeMap::new(),
            partners: BTreeMap::new(),
            missing: BTreeMap::new(),
            sum: Vec::new(),
            dropped: BTreeSet::new(),
            asked: BTreeMap::new(),
            self_mask_shares: BTreeMap::new(),
            mask_key_shares: BTreeMap::new(),
            flagged: BTreeSet::new(),
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

    /// The clients dropped for advertising unusable keys (low-order, non-canonical, the same key
    /// twice) or a key another client also advertised, ascending.
    pub fn excluded(&self) -> impl Iterator<Item = u64> + '_ {
        self.excluded.iter().copied()
    }

    /// The clients whose revealed shares were found wrong (off the polynomial of a secret rebuilt
    /// and checked from other shares), ascending.
    pub fn flagged(&self) -> impl Iterator<Item = u64> + '_ {
        self.flagged.iter().copied()
    }

    /// The partners of `id` (the live neighbours it exchanged sealed shares with both ways, and
    /// masks with), once the shares were relayed; ascending.
    pub fn partners(&self, id: u64) -> impl Iterator<Item = u64> + '_ {
        self.partners.get(&id).into_iter().flatten().copied()
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
    ///
    /// Keys that are not valid public keys of large order ([`SecAggError::WeakKey`]), a cipher
    /// key equal to the mask key ([`SecAggError::ReusedKey`]) or a key some other client of the
    /// session advertised too ([`SecAggError::DuplicateKey`]) drop the sender. A duplicated key
    /// also drops the client that advertised it first, and whoever advertises it later: fresh
    /// keys collide with negligible probability, so a repeated key means a copy, and the server
    /// cannot tell the owner from the copier. Dropping every holder keeps the outcome
    /// independent of arrival order; a copier learns nobody's keys before the directories go
    /// out (when the phase is over), so it cannot use this to knock an honest client out.
    pub fn handle_advertise_keys(&mut self, from: u64, msg: AdvertiseKeys) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::AdvertiseKeys, "AdvertiseKeys")?;
        let PublicKeys { cipher_key, mask_key } = msg.keys;
        let verdict = if !prg::is_valid_public_key(&cipher_key) || !prg::is_valid_public_key(&mask_key) {
            Some(SecAggError::WeakKey { peer: from })
        } else if cipher_key == mask_key {
            Some(SecAggError::ReusedKey { peer: from })
        } else {
            let other = [cipher_key, mask_key].iter().find_map(|key| self.key_owners.get(key).copied());
            for key in [cipher_key, mask_key] {
                self.key_owners.entry(key).or_insert(from);
            }
            other.map(|other| {
                self.exclude(other);
                SecAggError::DuplicateKey { peer: from, other }
            })
        };
        if let Some(error) = verdict {
            self.exclude(from);
            self.close_if_complete();
            return Err(error);
        }
        self.keys.insert(from, msg.keys);
        self.answered(from);
        Ok(())
    }

    /// Phase 2: a client's sealed shares for the neighbours of the directory it was sent, and
    /// its commitment to its self-mask seed. Entries addressed to a client that is not a live
    /// neighbour, of the wrong length or repeated are dropped one by one (that pair does not
    /// exchange shares); the rest are relayed.
    pub fn handle_share_keys(&mut self, from: u64, msg: ShareKeys) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::ShareKeys, "ShareKeys")?;
        let recipients: BTreeSet<u64> = self.live_neighbours(from, &self.expected).into_iter().collect();
        let mut kept = BTreeMap::new();
        let mut repeated = BTreeSet::new();
        for Sealed { peer, ciphertext } in msg.sealed {
            if !recipients.contains(&peer) || ciphertext.len() != prg::CIPHERTEXT_LEN || repeated.contains(&peer) {
                continue;
            }
            if kept.insert(peer, ciphertext).is_some() {
                kept.remove(&peer);
                repeated.insert(peer);
            }
        }
        self.sealed.insert(from, kept);
        self.commitments.insert(from, msg.commitment);
        self.answered(from);
        Ok(())
    }

    /// Phase 3: a client's masked input, folded into the running sum, and the partners whose
    /// shares it could not open.
    pub fn handle_masked_input(&mut self, from: u64, msg: &MaskedInput) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::MaskedInput, "MaskedInput")?;
        if msg.masked.len() != self.sum.len() {
            return Err(SecAggError::WrongLength { expected: self.sum.len(), got: msg.masked.len() });
        }
        let partners = self.partners.get(&from);
        let mut missing = BTreeSet::new();
        for &peer in &msg.missing {
            if !partners.is_some_and(|p| p.contains(&peer)) {
                return Err(SecAggError::NotANeighbour { peer });
            }
            if !missing.insert(peer) {
                return Err(SecAggError::DuplicatePeer { peer });
            }
        }
        crate::kernels::combine(&mut self.sum, &msg.masked, u32::wrapping_add);
        if !missing.is_empty() {
            self.missing.insert(from, missing);
        }
        self.answered(from);
        Ok(())
    }

    /// Phase 4: a survivor's shares, exactly those its [`UnmaskRequest`] asked for, less those of
    /// the partners it reported missing.
    pub fn handle_unmasking_shares(&mut self, from: u64, msg: UnmaskingShares) -> Result<(), SecAggError> {
        self.admit(from, ServerPhase::Unmasking, "UnmaskingShares")?;
        let (self_masks, mask_keys) = self.asked.get(&from).ok_or(SecAggError::NotExpected { id: from })?;
        self.check_revealed(from, &msg.self_mask, self_masks)?;
        self.check_revealed(from, &msg.mask_key, mask_keys)?;
        for r in msg.self_mask {
            self.self_mask_shares.entry(r.owner).or_default().push((from, r.share));
        }
        for r in msg.mask_key {
            self.mask_key_shares.entry(r.owner).or_default().push((from, r.share));
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
        self.close_if_complete();
    }

    fn close_if_complete(&mut self) {
        if self.answered.len() == self.expected.len() {
            // A failure is kept in `self.failure` and shown by the phase.
            let _ = self.close_phase();
        }
    }

    /// Drops `id` from the session for misbehaviour (phase 1 only: nothing of it was relayed).
    fn exclude(&mut self, id: u64) {
        self.expected.remove(&id);
        self.answered.remove(&id);
        self.keys.remove(&id);
        self.excluded.insert(id);
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

    /// The partners of `id` within `live`, ascending.
    fn live_partners(&self, id: u64, live: &BTreeSet<u64>) -> Vec<u64> {
        self.partners(id).filter(|v| live.contains(v)).collect()
    }

    /// Leaves out, until none is left, the clients with fewer than `t` links in `live`, where
    /// `links(u, live)` counts them.
    fn peel(&self, live: &mut BTreeSet<u64>, links: impl Fn(u64, &BTreeSet<u64>) -> usize) {
        let t = self.setup.params.threshold;
        loop {
            let weak: Vec<u64> = live.iter().copied().filter(|&u| links(u, live) < t).collect();
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
            self.self_mask_shares.clear();
            self.mask_key_shares.clear();
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
        self.peel(&mut live, |u, live| self.live_neighbours(u, live).len());
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
        let mut sealed = std::mem::take(&mut self.sealed);
        let sent = |from: u64, to: u64| sealed.get(&from).is_some_and(|m| m.contains_key(&to));
        // Partners exchanged shares both ways: each masks with the other and holds its shares.
        self.partners = live
            .iter()
            .map(|&u| {
                let partners = self.live_neighbours(u, &live).into_iter().filter(|&v| sent(u, v) && sent(v, u));
                (u, partners.collect())
            })
            .collect();
        self.peel(&mut live, |u, live| self.live_partners(u, live).len());
        self.enough(ServerPhase::ShareKeys, &live)?;
        self.partners.retain(|u, _| live.contains(u));
        self.partners.values_mut().for_each(|p| p.retain(|v| live.contains(v)));
        self.commitments.retain(|u, _| live.contains(u));
        for &u in &live {
            let forwarded = self
                .partners(u)
                .filter_map(|v| Some(Sealed { peer: v, ciphertext: sealed.get_mut(&v)?.remove(&u)? }))
                .collect();
            self.outbound.push_back((u, ServerMessage::ForwardedShares(ForwardedShares { sealed: forwarded })));
        }
        self.sum = vec![0; self.setup.vector_len];
        self.next_phase(ServerPhase::MaskedInput, live);
        Ok(())
    }

    /// The survivors among `owner`'s partners that hold its shares (did not report them missing).
    fn holders(&self, owner: u64, survivors: &BTreeSet<u64>) -> usize {
        self.live_partners(owner, survivors)
            .into_iter()
            .filter(|v| !self.missing.get(v).is_some_and(|m| m.contains(&owner)))
            .count()
    }

    fn close_masked_input(&mut self) -> Result<(), SecAggError> {
        let survivors = std::mem::take(&mut self.answered);
        self.enough(ServerPhase::MaskedInput, &survivors)?;
        let t = self.setup.params.threshold;
        let dropped: BTreeSet<u64> = self.expected.difference(&survivors).copied().collect();
        // Every survivor's self mask and every mask key a survivor used need t live holders.
        for &owner in survivors.iter().chain(&dropped) {
            let needed = survivors.contains(&owner) || !self.live_partners(owner, &survivors).is_empty();
            let have = self.holders(owner, &survivors);
            if needed && have < t {
                return Err(SecAggError::TooFewHolders { owner, have, need: t });
            }
        }
        for &u in &survivors {
            let request = UnmaskRequest {
                survivors: self.live_partners(u, &survivors),
                dropped: self.live_partners(u, &dropped),
            };
            let missing = self.missing.get(&u);
            let held = |owners: &[u64]| -> Vec<u64> {
                owners.iter().copied().filter(|o| !missing.is_some_and(|m| m.contains(o))).collect()
            };
            self.asked.insert(u, (held(&request.survivors), held(&request.dropped)));
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
        let no_shares = Vec::new();
        let mut flagged = BTreeSet::new();
        // Rebuild and check every secret before touching the sum.
        let mut self_seeds = Vec::with_capacity(survivors.len());
        for &u in &survivors {
            let mismatch = SecAggError::CommitmentMismatch { owner: u };
            let commitment = *self.commitments.get(&u).ok_or_else(|| mismatch.clone())?;
            let shares = self.self_mask_shares.get(&u).unwrap_or(&no_shares);
            let matches = |b: &[u8; 32]| prg::self_mask_commitment(&session, u, b) == commitment;
            let (b, liars) = rebuild(u, shares, t, &flagged, matches, mismatch)?;
            flagged.extend(liars);
            self_seeds.push(prg::self_mask_seed(&session, u, &b)?);
        }
        let mut mask_keys = Vec::new();
        for &v in &self.dropped {
            let partners = self.live_partners(v, &survivors);
            if partners.is_empty() {
                continue;
            }
            let mismatch = SecAggError::KeyMismatch { owner: v };
            let advertised = self.keys.get(&v).ok_or_else(|| mismatch.clone())?.mask_key;
            let shares = self.mask_key_shares.get(&v).unwrap_or(&no_shares);
            let matches =
                |s: &[u8; 32]| prg::AgreementKey::from_secret(s).is_ok_and(|key| key.public_key() == advertised);
            let (s, liars) = rebuild(v, shares, t, &flagged, matches, mismatch)?;
            flagged.extend(liars);
            mask_keys.push((v, prg::AgreementKey::from_secret(&s)?, partners));
        }
        // The masks to take off: every survivor's self mask, and the masks between survivors
        // and dropped clients (u added the pair's mask if u < v and subtracted it otherwise:
        // undo that). All are applied in one parallel pass over the sum.
        let mut masks: Vec<(prg::Seed, bool)> = self_seeds.into_iter().map(|seed| (seed, true)).collect();
        for (v, secret, partners) in &mask_keys {
            for &u in partners {
                let key = self.keys.get(&u).ok_or(SecAggError::NotExpected { id: u })?;
                let seed = prg::pairwise_seed(&session, secret, &key.mask_key, u, *v)?
                    .ok_or(SecAggError::WeakKey { peer: u })?;
                masks.push((seed, u < *v));
            }
        }
        let mut sum = std::mem::take(&mut self.sum);
        prg::apply_masks(&mut sum, &masks)?;
        self.flagged = flagged;
        self.output = Some(SecAggOutput { sum, survivors: survivors.iter().copied().collect() });
        self.self_mask_shares.clear();
        self.mask_key_shares.clear();
        self.phase = ServerPhase::Done;
        self.answered.clear();
        Ok(())
    }
}

/// Rebuilds `owner`'s secret from its revealed `shares` (with their holders): the first `t`
/// if they pass `check` (the owner's commitment or public key), otherwise the first `t`-subset
/// that does, within [`SUBSET_BUDGET`] tries. The shares of holders already caught lying
/// (`suspects`) come last, so one liar costs the search of one secret, not of all it holds.
/// Returns the secret and, when the first `t` did not do, the holders whose shares lie off the
/// polynomial of the accepted subset. Fails with `mismatch` when no subset passes: a wrong
/// secret never leaves this function.
fn rebuild(
    owner: u64,
    shares: &[(u64, Share)],
    t: usize,
    suspects: &BTreeSet<u64>,
    check: impl Fn(&[u8; 32]) -> bool,
    mismatch: SecAggError,
) -> Result<(Zeroizing<[u8; 32]>, BTreeSet<u64>), SecAggError> {
    if shares.len() < t {
        return Err(SecAggError::TooFewShares { owner, got: shares.len(), need: t });
    }
    let mut ordered: Vec<&(u64, Share)> = shares.iter().collect();
    ordered.sort_by_key(|(holder, _)| suspects.contains(holder));
    // Indices were checked on receipt: distinct (one per holder), nonzero, values in the field.
    let refs: Vec<&Share> = ordered.iter().map(|(_, share)| share).collect();
    let mut found = None;
    let accepted =
        shamir::search_subsets(refs.len(), t, SUBSET_BUDGET, |subset| match shamir::combine_subset(&refs, subset) {
            Ok(secret) if check(&secret) => {
                found = Some(secret);
                true
            }
            _ => false,
        });
    let (Some(subset), Some(secret)) = (accepted, found) else { return Err(mismatch) };
    let mut liars = BTreeSet::new();
    if subset.iter().copied().ne(0..t) {
        for (i, (holder, share)) in ordered.iter().enumerate() {
            if !subset.contains(&i) && !shamir::consistent(&refs, &subset, share) {
                liars.insert(*holder);
            }
        }
    }
    Ok((secret, liars))
}
