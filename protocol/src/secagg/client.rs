//! The client's side of a session.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};
use zeroize::Zeroizing;

use super::messages::{
    AdvertiseKeys, ClientMessage, ForwardedShares, KeyDirectory, MaskedInput, PublicKeys, RevealedShare, Sealed,
    ServerMessage, ShareKeys, UnmaskRequest, UnmaskingShares,
};
use super::shamir::{self, Share};
use super::{NeighbourGraph, SEED_LEN, SecAggError, SessionSetup, prg};

/// Where a client stands in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// Created: call [`SecAggClient::advertise_keys`].
    AdvertiseKeys,
    /// Keys sent: waiting for the [`KeyDirectory`].
    AwaitingKeys,
    /// Shares sent: waiting for the [`ForwardedShares`].
    AwaitingShares,
    /// Shares held: call [`SecAggClient::masked_input`] once the update is ready.
    ReadyForInput,
    /// Masked input sent: waiting for the [`UnmaskRequest`].
    AwaitingUnmask,
    /// Unmasking shares sent; the session is over for this client.
    Done,
}

impl ClientPhase {
    /// The phase's name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::AdvertiseKeys => "AdvertiseKeys",
            Self::AwaitingKeys => "AwaitingKeys",
            Self::AwaitingShares => "AwaitingShares",
            Self::ReadyForInput => "ReadyForInput",
            Self::AwaitingUnmask => "AwaitingUnmask",
            Self::Done => "Done",
        }
    }
}

/// One client's state machine for one session.
///
/// Each `handle_*` either refuses its input with a [`SecAggError`], leaving the client as it
/// was, or moves to the next [`ClientPhase`] and returns the answer to send to the server.
/// A neighbour whose keys are unusable (low-order, repeated) or whose sealed shares do not open
/// is not an error: only that pair is affected, and the session goes on with the others as long
/// as the threshold allows.
///
/// Secrets are wiped when the client is dropped: the X25519 secrets (aws-lc cleanses its key
/// on free), the self-mask seed, the pairwise seeds and the held shares ([`Zeroizing`],
/// [`Share`]); the generator that drew them is overwritten once its last draw is made.
pub struct SecAggClient {
    id: u64,
    setup: SessionSetup,
    graph: NeighbourGraph,
    phase: ClientPhase,
    /// Draws the Shamir coefficients; overwritten once they are drawn, and on drop.
    rng: ChaCha20Rng,
    cipher_secret: prg::AgreementKey,
    mask_secret: prg::AgreementKey,
    /// The mask key's secret bytes, which the client secret-shares.
    mask_secret_bytes: Zeroizing<[u8; SEED_LEN]>,
    self_seed: Zeroizing<[u8; SEED_LEN]>,
    /// Usable neighbours of the directory (the client's share holders).
    directory: BTreeMap<u64, Neighbour>,
    /// Neighbours the server forwarded shares from: the client masks with each of them.
    partners: BTreeSet<u64>,
    /// Partners whose shares opened: (share of `b_v`, share of `s_sk_v`).
    held: BTreeMap<u64, (Share, Share)>,
}

/// A usable neighbour: its pairwise mask seed and the key of the shares it seals for this
/// client (both wiped on drop).
struct Neighbour {
    pairwise: prg::Seed,
    inbound: prg::Seed,
}

impl fmt::Debug for SecAggClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecAggClient")
            .field("id", &self.id)
            .field("phase", &self.phase)
            .field("directory", &self.directory.keys().collect::<Vec<_>>())
            .field("partners", &self.partners)
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for SecAggClient {
    fn drop(&mut self) {
        prg::wipe_rng(&mut self.rng);
    }
}

impl SecAggClient {
    /// Joins the session `setup` as client `id`. All secrets (key pairs, self-mask seed, share
    /// polynomials) are drawn from ChaCha20 seeded with `rng_seed`, which the caller takes from
    /// a CSPRNG and never reuses.
    pub fn new(id: u64, setup: SessionSetup, rng_seed: [u8; SEED_LEN]) -> Result<Self, SecAggError> {
        let rng_seed = Zeroizing::new(rng_seed);
        setup.validate()?;
        if setup.cohort.binary_search(&id).is_err() {
            return Err(SecAggError::NotInCohort { id });
        }
        let graph = setup.graph()?;
        let mut rng = ChaCha20Rng::from_seed(*rng_seed);
        let mut draw = || {
            let mut bytes = Zeroizing::new([0u8; SEED_LEN]);
            rng.fill_bytes(bytes.as_mut_slice());
            bytes
        };
        let cipher_secret = prg::AgreementKey::from_secret(&draw())?;
        let mask_secret_bytes = draw();
        let mask_secret = prg::AgreementKey::from_secret(&mask_secret_bytes)?;
        let self_seed = draw();
        Ok(Self {
            id,
            setup,
            graph,
            phase: ClientPhase::AdvertiseKeys,
            rng,
            cipher_secret,
            mask_secret,
            mask_secret_bytes,
            self_seed,
            directory: BTreeMap::new(),
            partners: BTreeSet::new(),
            held: BTreeMap::new(),
        })
    }

    /// The client's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current phase.
    pub fn phase(&self) -> ClientPhase {
        self.phase
    }

    /// The session.
    pub fn setup(&self) -> &SessionSetup {
        &self.setup
    }

    /// The client's neighbours in the session's graph, ascending.
    pub fn neighbours(&self) -> &[u64] {
        self.graph.neighbours(self.id).unwrap_or(&[])
    }

    /// The neighbours the client sent its shares to (those of the directory whose keys were
    /// usable), ascending.
    pub fn holders(&self) -> impl Iterator<Item = u64> + '_ {
        self.directory.keys().copied()
    }

    /// The neighbours the client masks with (the server forwarded their shares), ascending.
    pub fn partners(&self) -> impl Iterator<Item = u64> + '_ {
        self.partners.iter().copied()
    }

    /// The partners whose shares the client holds, ascending.
    pub fn held(&self) -> impl Iterator<Item = u64> + '_ {
        self.held.keys().copied()
    }

    fn require(&self, phase: ClientPhase, message: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::UnexpectedMessage { message, phase: self.phase.name() })
        }
    }

    fn public_keys(&self) -> PublicKeys {
        PublicKeys { cipher_key: self.cipher_secret.public_key(), mask_key: self.mask_secret.public_key() }
    }

    /// Phase 1: the public keys to send.
    pub fn advertise_keys(&mut self) -> Result<AdvertiseKeys, SecAggError> {
        self.require(ClientPhase::AdvertiseKeys, "advertise_keys")?;
        self.phase = ClientPhase::AwaitingKeys;
        Ok(AdvertiseKeys { keys: self.public_keys() })
    }

    /// Phase 2: shares the self-mask seed and the mask key among the usable neighbours of the
    /// directory, seals each neighbour's pair and commits to the self-mask seed.
    ///
    /// A neighbour is left out (treated as dropped) when one of its keys is not a valid
    /// public key or gives a non-contributory agreement, when its two keys are equal, or when
    /// a key of its equals one of this client's or another neighbour's (all of those are).
    pub fn handle_key_directory(&mut self, msg: &KeyDirectory) -> Result<ShareKeys, SecAggError> {
        self.require(ClientPhase::AwaitingKeys, "KeyDirectory")?;
        let session = self.setup.session_id;
        let t = self.setup.params.threshold;
        let mut seen = BTreeSet::new();
        for &(peer, _) in &msg.keys {
            if peer == self.id || !self.graph.are_neighbours(self.id, peer) {
                return Err(SecAggError::NotANeighbour { peer });
            }
            if !seen.insert(peer) {
                return Err(SecAggError::DuplicatePeer { peer });
            }
        }
        // Keys held by more than one party of the directory (this client included).
        let own = self.public_keys();
        let mut owners: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for keys in msg.keys.iter().map(|(_, k)| k).chain(std::iter::once(&own)) {
            for key in [keys.cipher_key, keys.mask_key] {
                *owners.entry(key).or_default() += 1;
            }
        }
        let shared = |key: &[u8; 32]| owners.get(key).is_some_and(|&n| n > 1);
        let mut directory = BTreeMap::new();
        let mut ciphers = Vec::with_capacity(msg.keys.len());
        for &(peer, keys) in &msg.keys {
            // Canonical here; low-order shows in the agreements themselves (not contributory).
            let canonical =
                prg::is_canonical_public_key(&keys.cipher_key) && prg::is_canonical_public_key(&keys.mask_key);
            if !canonical || keys.cipher_key == keys.mask_key || shared(&keys.cipher_key) || shared(&keys.mask_key) {
                continue;
            }
            let Some(pairwise) = prg::pairwise_seed(&session, &self.mask_secret, &keys.mask_key, self.id, peer)? else {
                continue;
            };
            let Some((outbound, inbound)) =
                prg::share_keys(&session, &self.cipher_secret, &keys.cipher_key, self.id, peer)?
            else {
                continue;
            };
            directory.insert(peer, Neighbour { pairwise, inbound });
            ciphers.push((peer, prg::share_cipher(&outbound)));
        }
        if directory.len() < t {
            return Err(SecAggError::TooFewNeighbours { have: directory.len(), need: t });
        }
        ciphers.sort_by_key(|&(peer, _)| peer);
        let xs = ciphers
            .iter()
            .map(|&(peer, _)| self.graph.share_index(self.id, peer).ok_or(SecAggError::NotANeighbour { peer }))
            .collect::<Result<Vec<_>, _>>()?;
        let b_shares = shamir::split(&self.self_seed, t, &xs, &mut self.rng)?;
        let s_shares = shamir::split(&self.mask_secret_bytes, t, &xs, &mut self.rng)?;
        let sealed = ciphers
            .iter()
            .zip(b_shares.iter().zip(&s_shares))
            .map(|((peer, cipher), (b, s))| {
                Ok(Sealed { peer: *peer, ciphertext: prg::seal(cipher, &session, self.id, *peer, (b, s))? })
            })
            .collect::<Result<Vec<_>, SecAggError>>()?;
        // Every secret is drawn: nothing may regenerate them from the generator's state.
        prg::wipe_rng(&mut self.rng);
        let commitment = prg::self_mask_commitment(&session, self.id, &self.self_seed);
        self.directory = directory;
        self.phase = ClientPhase::AwaitingShares;
        Ok(ShareKeys { sealed, commitment })
    }

    /// Phase 2, end: opens and keeps the shares the neighbours sent.
    ///
    /// Every neighbour of the directory named once is a partner (the client masks with it, as
    /// it does with this client); entries naming another peer or naming one twice are ignored.
    /// A partner whose shares do not open or carry the wrong index is reported
    /// ([`MaskedInput::missing`]) instead of failing the others. Refused only with fewer than
    /// `t` partners, which an honest server never sends.
    pub fn handle_forwarded_shares(&mut self, msg: &ForwardedShares) -> Result<(), SecAggError> {
        self.require(ClientPhase::AwaitingShares, "ForwardedShares")?;
        let session = self.setup.session_id;
        let t = self.setup.params.threshold;
        let mut named: BTreeMap<u64, usize> = BTreeMap::new();
        for sealed in &msg.sealed {
            *named.entry(sealed.peer).or_default() += 1;
        }
        let partners: BTreeSet<u64> =
            named.iter().filter(|&(peer, &n)| n == 1 && self.directory.contains_key(peer)).map(|(&p, _)| p).collect();
        if partners.len() < t {
            return Err(SecAggError::TooFewNeighbours { have: partners.len(), need: t });
        }
        let mut held = BTreeMap::new();
        for sealed in msg.sealed.iter().filter(|s| partners.contains(&s.peer)) {
            let peer = sealed.peer;
            let Some(neighbour) = self.directory.get(&peer) else { continue };
            let cipher = prg::share_cipher(&neighbour.inbound);
            let Ok((b, s)) = prg::open(&cipher, &session, peer, self.id, &sealed.ciphertext) else { continue };
            if Some(b.x) == self.graph.share_index(peer, self.id) {
                held.insert(peer, (b, s));
            }
        }
        self.partners = partners;
        self.held = held;
        self.phase = ClientPhase::ReadyForInput;
        Ok(())
    }

    /// Phase 3: masks an encoded update (see [`super::FixedPoint`]) of the session's length.
    pub fn masked_input(&mut self, encoded: &[u32]) -> Result<MaskedInput, SecAggError> {
        self.require(ClientPhase::ReadyForInput, "masked_input")?;
        self.mask(encoded.to_vec())
    }

    /// Masks `masked` (an encoded update) in place: [`Self::masked_input`]'s work, on a vector
    /// the caller gives up.
    fn mask(&mut self, mut masked: Vec<u32>) -> Result<MaskedInput, SecAggError> {
        if masked.len() != self.setup.vector_len {
            return Err(SecAggError::WrongLength { expected: self.setup.vector_len, got: masked.len() });
        }
        let seed = prg::self_mask_seed(&self.setup.session_id, self.id, &self.self_seed)?;
        prg::apply_mask(&mut masked, &seed, false)?;
        for peer in &self.partners {
            let neighbour = self.directory.get(peer).ok_or(SecAggError::NotANeighbour { peer: *peer })?;
            // + towards larger ids, − towards smaller: the two sides cancel.
            prg::apply_mask(&mut masked, &neighbour.pairwise, self.id > *peer)?;
        }
        let missing = self.partners.iter().copied().filter(|p| !self.held.contains_key(p)).collect();
        self.phase = ClientPhase::AwaitingUnmask;
        Ok(MaskedInput { masked, missing })
    }

    /// Phase 3 from f32 values: encodes `weight · values` (clipped, rounded to nearest) with the
    /// session's parameters, appends `trailing` words as they are (already in an encoding whose
    /// wrapping sum means something, e.g. feature statistics) and masks them.
    pub fn masked_update(&mut self, values: &[f32], weight: f32, trailing: &[u32]) -> Result<MaskedInput, SecAggError> {
        self.require(ClientPhase::ReadyForInput, "masked_update")?;
        let mut encoded = self.setup.params.fixed_point()?.encode(values, weight)?;
        encoded.extend_from_slice(trailing);
        self.mask(encoded)
    }

    /// Phase 4: reveals the shares of the surviving partners' self masks and of the dropped
    /// partners' mask keys, never both for one peer (and nothing for the partners whose shares
    /// it does not hold).
    pub fn handle_unmask_request(&mut self, msg: &UnmaskRequest) -> Result<UnmaskingShares, SecAggError> {
        self.require(ClientPhase::AwaitingUnmask, "UnmaskRequest")?;
        let t = self.setup.params.threshold;
        let mut survivors = BTreeSet::new();
        for &peer in &msg.survivors {
            if !self.partners.contains(&peer) {
                return Err(SecAggError::UnmaskMismatch { peer });
            }
            if !survivors.insert(peer) {
                return Err(SecAggError::DuplicatePeer { peer });
            }
        }
        let mut dropped = BTreeSet::new();
        for &peer in &msg.dropped {
            if survivors.contains(&peer) {
                return Err(SecAggError::RevealBoth { peer });
            }
            if !self.partners.contains(&peer) {
                return Err(SecAggError::UnmaskMismatch { peer });
            }
            if !dropped.insert(peer) {
                return Err(SecAggError::DuplicatePeer { peer });
            }
        }
        if let Some(&peer) = self.partners.iter().find(|p| !survivors.contains(*p) && !dropped.contains(*p)) {
            return Err(SecAggError::UnmaskMismatch { peer });
        }
        if survivors.len() < t {
            return Err(SecAggError::TooFewSurvivors { have: survivors.len(), need: t });
        }
        let reveal = |owners: &BTreeSet<u64>, pick: fn(&(Share, Share)) -> Share| {
            owners
                .iter()
                .filter_map(|&owner| self.held.get(&owner).map(|pair| RevealedShare { owner, share: pick(pair) }))
                .collect()
        };
        let answer = UnmaskingShares {
            self_mask: reveal(&survivors, |p| p.0.clone()),
            mask_key: reveal(&dropped, |p| p.1.clone()),
        };
        self.phase = ClientPhase::Done;
        Ok(answer)
    }

    /// Dispatches a server message: the answer to send, if it calls for one right away
    /// ([`ServerMessage::ForwardedShares`] is answered later by [`Self::masked_input`]).
    /// [`ServerMessage::Setup`] is refused: a client is built from it ([`Self::new`]).
    pub fn handle(&mut self, msg: &ServerMessage) -> Result<Option<ClientMessage>, SecAggError> {
        match msg {
            ServerMessage::Setup(_) => {
                Err(SecAggError::UnexpectedMessage { message: msg.kind(), phase: self.phase.name() })
            }
            ServerMessage::KeyDirectory(m) => self.handle_key_directory(m).map(|a| Some(ClientMessage::ShareKeys(a))),
            ServerMessage::ForwardedShares(m) => self.handle_forwarded_shares(m).map(|()| None),
            ServerMessage::UnmaskRequest(m) => {
                self.handle_unmask_request(m).map(|a| Some(ClientMessage::UnmaskingShares(a)))
            }
        }
    }
}
