//! Secure aggregation: the server learns the sum of the clients' updates, never one update.
//!
//! This is the pairwise-masking protocol of Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning" (CCS 2017), in the SecAgg+ variant of Bell et al.,
//! "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS 2020): each client
//! masks its update only with its `k` neighbours in a public random graph instead of with every
//! other client, and secret-shares its mask keys among those neighbours only. With
//! `k = n − 1` the graph is complete and the protocol is the original one.
//!
//! Everything here is sans-IO: [`SecAggClient`] and [`SecAggServer`] are state machines fed
//! with messages (`handle_*`) and told when a phase's deadline passed
//! ([`SecAggServer::handle_deadline`]); they never read a clock, open a socket or draw OS
//! randomness. Randomness comes in as 32-byte seeds chosen by the caller (from the OS CSPRNG in
//! production, fixed in tests), expanded with ChaCha20 (secrets) and AES-256-CTR (masks).
//!
//! # The protocol
//!
//! A session is described by a [`SessionSetup`] the server sends to every client of the
//! cohort ([`ServerMessage::Setup`]): a 32-byte session id the server derives from a secret
//! key (nobody can predict it before the session opens; it is public once sent), the
//! [`SecAggParams`], the length of the vectors and the sorted client ids. The session id seeds
//! the neighbour graph ([`NeighbourGraph`]) and is mixed into every key derivation, commitment
//! and ciphertext, so nothing of one session can be replayed in another.
//!
//! 1. **AdvertiseKeys.** Each client `u` draws two X25519 key pairs, `(c_sk, c_pk)` to encrypt
//!    the shares it sends to its neighbours and `(s_sk, s_pk)` to agree pairwise mask seeds,
//!    and sends both public keys ([`AdvertiseKeys`]). The server drops (from the session, which
//!    goes on) a client whose keys are not canonical encodings of points of large order, whose
//!    two keys are equal, or one of whose keys another client advertised too (then all of
//!    them: see [`SecAggServer::handle_advertise_keys`]). When every client has answered, or
//!    at the deadline, the server sends each client the keys of its neighbours that answered
//!    ([`KeyDirectory`]). Clients left with fewer than `t` such neighbours cannot have their
//!    secrets reconstructed and are left out (repeatedly, until every remaining client has `t`).
//! 2. **ShareKeys.** Each client draws a self-mask seed `b_u`, splits `b_u` and `s_sk_u` into
//!    `t`-of-`k` Shamir shares ([`shamir`]), one pair per neighbour, and seals each pair with
//!    ChaCha20-Poly1305 under a key derived (HKDF-SHA256) from `X25519(c_sk_u, c_pk_v)` and the
//!    direction `u → v` ([`ShareKeys`]); it also sends a commitment
//!    `SHA-256(label ‖ session id ‖ u ‖ b_u)` to its self-mask seed. A neighbour whose keys give
//!    a non-contributory agreement (or repeat another's) is left out, as if it had dropped.
//!    The server relays to each client the sealed shares of its *partners*, the neighbours it
//!    exchanged shares with both ways ([`ForwardedShares`]); it cannot open them. A sealed
//!    share of the wrong length, addressed to a non-neighbour or repeated only breaks that pair.
//!    Clients left with fewer than `t` partners are left out as above.
//! 3. **MaskedInput.** Each client sends `y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2^32`
//!    ([`MaskedInput`]), where `x_u` is its fixed-point update ([`FixedPoint`]), `v` runs over
//!    its partners, `s_uv` is derived from `X25519(s_sk_u, s_pk_v)` (the same on both sides)
//!    and the sign is `+` when `u < v`, `−` otherwise, so the pairwise masks cancel in the sum.
//!    It also lists the partners whose sealed shares did not open: it masks with them all the
//!    same, but cannot help rebuild their secrets. The server folds each `y_u` into one running
//!    sum as it arrives (memory O(model), whatever the number of clients).
//! 4. **Unmasking.** The server tells each client whose input it folded which of its
//!    partners survived and which dropped ([`UnmaskRequest`]). Each answers with the shares it
//!    holds of `b_v` for the surviving partners and of `s_sk_v` for the dropped ones
//!    ([`UnmaskingShares`]); a client refuses to reveal both for the same peer. From `t` shares
//!    each, the server rebuilds the seeds and checks them: each `b_u` against `u`'s commitment,
//!    each `s_sk_v` against `v`'s advertised `s_pk_v`. When a neighbour revealed a wrong share
//!    the first `t` do not match; the server then looks for `t` shares that do (and names the
//!    holders of the others, [`SecAggServer::flagged`]) or fails naming the owner
//!    ([`SecAggError::CommitmentMismatch`], [`SecAggError::KeyMismatch`]): it never unmasks
//!    with a wrong secret. It then removes the survivors' self masks and the masks between
//!    survivors and dropped clients, and is left with `Σ x_u` over the survivors
//!    ([`SecAggOutput`]).
//!
//! A client may drop at any point. If it drops before its masked input, its pairwise masks are
//! removed with its reconstructed `s_sk`; if after, its self mask is removed with its
//! reconstructed `b_u`. The server fails cleanly ([`SecAggError`]) when fewer survivors than its
//! configured minimum remain or when some secret it needs has fewer than `t` live holders.
//!
//! # Parameters
//!
//! - `k` ([`SecAggParams::neighbours`]): neighbours per client, `1 ≤ k ≤ n − 1`. Masks and
//!   shares cost O(k) per client instead of O(n). Bell et al. show `k = O(log n)` suffices
//!   against a fraction of corrupted and dropped clients; `k = n − 1` is the original protocol.
//!   When `k` and `n` are both odd and `k < n − 1` no `k`-regular graph exists and every client
//!   gets `k + 1` neighbours ([`SecAggParams::degree`]).
//! - `t` ([`SecAggParams::threshold`]): shares needed to rebuild a secret. It must exceed half
//!   the degree (`2t > degree`), otherwise two disjoint minorities of a client's neighbours
//!   could each be asked for a different secret of the same client (its self mask by one, its
//!   mask key by the other) and together unmask it; and `t ≤ k`, otherwise nothing can be
//!   rebuilt. A client survives only with at least `t` live neighbours.
//! - `c` ([`SecAggParams::clip_range`]) and the precision ([`SecAggParams::scale_bits`]): see
//!   below.
//!
//! # Fixed-point encoding
//!
//! Masking needs a group; sums are taken in `Z/2^32`, the native wrapping arithmetic of `u32`,
//! so masks are raw 32-bit PRG words, folding is one wrapping add per coordinate and a masked
//! update is exactly as large as an f32 update. An f32 value `v` (times the client's weight) is
//! clipped to `[−c, c]`, multiplied by `scale = 2^scale_bits`, rounded to the nearest integer
//! (or stochastically, unbiased, with a caller RNG) and stored in two's complement. A sum of
//! `n` encoded values lies in `[−n·⌈c·scale⌉, n·⌈c·scale⌉]`; it decodes without wrapping as long
//! as that fits in an `i32`, i.e. `n · ⌈c·scale⌉ ≤ 2^31 − 1` (the headroom,
//! [`FixedPoint::max_summands`]), which [`SecAggParams::validate`] checks for the whole cohort.
//! For example `c = 1` and `scale = 2^16` (steps of 1.5·10⁻⁵) allow 32,767 clients; `c = 1`
//! and `scale = 2^20` allow 2,047. The error per coordinate of a decoded sum of `n` values is
//! at most `n / (2·scale)` with round-to-nearest and below `n / scale` with stochastic rounding
//! (whose error has mean zero), plus the f32 rounding of the result, plus whatever clipping
//! removed ([`FixedPoint::max_error`]). A 64-bit group would allow more precision or clients at
//! twice the traffic; 2^32 keeps a masked update the size of the plain one.
//!
//! # Cryptographic building blocks
//!
//! X25519 (`aws-lc-rs`: 21 µs per agreement on the 2-core test machine, against 44 µs for
//! `x25519-dalek`'s portable ladder it replaced) for both key agreements, HKDF-SHA256 (`hkdf`, `sha2`) to derive the
//! pairwise mask seeds, the self-mask seeds and the share-encryption keys, AES-256 in counter
//! mode keyed by the seed as the mask PRG (`aws-lc-rs`'s AES-256-GCM encryption of zeros: its
//! AVX-512 VAES code draws the stream 1.5x faster than `ring`'s AES-GCM, which drew the same
//! bytes before, and several times faster than a ChaCha20 keystream on x86), ChaCha20-Poly1305
//! (`chacha20poly1305`) to seal the shares, SHA-256 (`sha2`) for the commitments to the
//! self-mask seeds. Each share-encryption key is used for exactly one
//! message (it is bound to the session and to the ordered pair of ids), so a fixed nonce is
//! safe. Shamir sharing is a small implementation over the prime field `GF(2^61 − 1)`, see
//! [`shamir`] for why no crate was used.
//!
//! # Threat model and limits
//!
//! This is the semi-honest ("honest-but-curious") server version: the server follows the
//! protocol but tries to learn individual updates from what it sees; clients may drop at any
//! time. A server that lies about who dropped could ask different neighbours for different
//! secrets of one client; the active-adversary version of Bonawitz et al. (signed messages and
//! a consistency round) is not implemented.
//!
//! Against misbehaving *clients* the session is robust as long as the threshold allows: bad
//! public keys drop their sender, a bad sealed share only breaks one pair, and a wrong revealed
//! share is caught by the owner's commitment (or public key) and worked around or reported.
//! A client can still spoil the sum with an arbitrary (in-range) input — secure aggregation
//! hides inputs, it does not check them — or end the session by withholding shares another
//! client's unmasking needs.
//!
//! Seeds, X25519 secrets (the client's copy of its mask key's secret, which it shares, is
//! `zeroize`d; aws-lc wipes its own copies and the shared secrets on free), Shamir shares and polynomial
//! coefficients, derived seeds and keys, opened plaintexts and the mask keystream buffers are
//! zeroised when dropped (`zeroize`). Beyond that: the ChaCha20 generators are overwritten
//! rather than zeroised (`chacha20`'s own `zeroize` feature would rebuild the burn stack), the
//! expanded AES key of a mask lives in aws-lc's AEAD context until the mask is drawn (aws-lc
//! zeroes it when the key is freed),
//! HKDF's internal state and copies the compiler makes on the stack are not wiped, and the field
//! arithmetic of [`shamir`] is not constant-time.

pub mod fixed_point;
pub mod graph;
pub mod messages;
pub mod shamir;

mod client;
mod prg;
mod server;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use client::{ClientPhase, SecAggClient};
pub use fixed_point::{FixedPoint, FixedPointError, Rounding};
pub use graph::NeighbourGraph;
pub use messages::{
    AdvertiseKeys, ClientMessage, ForwardedShares, KeyDirectory, MaskedInput, PublicKeys, RevealedShare, Sealed,
    ServerMessage, ShareKeys, UnmaskRequest, UnmaskingShares,
};
pub use server::{SUBSET_BUDGET, SecAggOutput, SecAggServer, ServerPhase};
pub use shamir::ShamirError;

/// Length of a session id, of every seed and of every X25519 key, in bytes.
pub const SEED_LEN: usize = 32;

/// Public parameters of a secure-aggregation session, the same for the server and all clients.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SecAggParams {
    /// Neighbours per client, `k` (`cohort − 1` for the complete graph of the original protocol).
    pub neighbours: usize,
    /// Shares needed to rebuild a client's secrets, `t`; must exceed half the degree.
    pub threshold: usize,
    /// Clipping range `c`: every weighted coordinate is clipped to `[−c, c]` before encoding.
    pub clip_range: f32,
    /// Precision: values are scaled by `2^scale_bits` and rounded to integers.
    pub scale_bits: u32,
}

impl SecAggParams {
    /// Parameters of the original protocol on a cohort of `cohort_size`: the complete graph
    /// (`k = n − 1`) and the smallest threshold above half of it.
    pub fn complete(cohort_size: usize, clip_range: f32, scale_bits: u32) -> Self {
        let neighbours = cohort_size.saturating_sub(1);
        Self { neighbours, threshold: neighbours / 2 + 1, clip_range, scale_bits }
    }

    /// The number of neighbours each client actually gets in a cohort of `cohort_size`: `k`,
    /// or `k + 1` when `k` and the cohort are both odd and `k < n − 1` (no `k`-regular graph
    /// exists then).
    pub fn degree(&self, cohort_size: usize) -> usize {
        let k = self.neighbours;
        if k + 1 < cohort_size && k % 2 == 1 && cohort_size % 2 == 1 { k + 1 } else { k }
    }

    /// The fixed-point encoding these parameters describe.
    pub fn fixed_point(&self) -> Result<FixedPoint, ParamsError> {
        FixedPoint::new(self.clip_range, self.scale_bits).map_err(ParamsError::Encoding)
    }

    /// Refuses parameters that give no privacy or cannot work on a cohort of `cohort_size`.
    pub fn validate(&self, cohort_size: usize) -> Result<(), ParamsError> {
        let k = self.neighbours;
        let t = self.threshold;
        if cohort_size < 2 {
            return Err(ParamsError::CohortTooSmall { cohort: cohort_size });
        }
        if cohort_size > crate::wire::bounded::MAX_COHORT {
            return Err(ParamsError::CohortTooLarge { cohort: cohort_size });
        }
        if k < 1 {
            return Err(ParamsError::NoNeighbours);
        }
        if k >= cohort_size {
            return Err(ParamsError::TooManyNeighbours { neighbours: k, cohort: cohort_size });
        }
        if t > k {
            return Err(ParamsError::ThresholdAboveNeighbours { threshold: t, neighbours: k });
        }
        let degree = self.degree(cohort_size);
        if 2 * t <= degree {
            return Err(ParamsError::ThresholdTooLow { threshold: t, degree });
        }
        let fixed = self.fixed_point()?;
        let max = fixed.max_summands();
        if cohort_size > max {
            return Err(ParamsError::Headroom { cohort: cohort_size, max });
        }
        Ok(())
    }
}

/// Why [`SecAggParams`] (or a server's survivor minimum) were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// Secure aggregation of fewer than two clients would reveal the one update.
    #[error("a cohort of {cohort} clients is too small for secure aggregation (at least 2)")]
    CohortTooSmall {
        /// Clients in the cohort.
        cohort: usize,
    },
    /// More clients than any session message may list (see [`crate::wire::bounded`]).
    #[error("a cohort of {cohort} clients exceeds the {} a session may hold", crate::wire::bounded::MAX_COHORT)]
    CohortTooLarge {
        /// Clients in the cohort.
        cohort: usize,
    },
    /// `k = 0`: a client without neighbours cannot share its secrets.
    #[error("each client needs at least one neighbour (k ≥ 1)")]
    NoNeighbours,
    /// `k ≥ n`: a client has at most `n − 1` neighbours (use `k = n − 1` for the complete graph).
    #[error("{neighbours} neighbours per client in a cohort of {cohort}: at most cohort − 1")]
    TooManyNeighbours {
        /// `k`.
        neighbours: usize,
        /// `n`.
        cohort: usize,
    },
    /// `t > k`: more shares needed than there are holders.
    #[error("threshold {threshold} exceeds the {neighbours} neighbours holding shares")]
    ThresholdAboveNeighbours {
        /// `t`.
        threshold: usize,
        /// `k`.
        neighbours: usize,
    },
    /// `t ≤ degree / 2`: a minority of a client's neighbours could rebuild its secrets.
    #[error("threshold {threshold} is at most half of the {degree} neighbours: a minority could unmask a client")]
    ThresholdTooLow {
        /// `t`.
        threshold: usize,
        /// Neighbours per client ([`SecAggParams::degree`]).
        degree: usize,
    },
    /// The clipping range or the precision cannot be encoded.
    #[error("fixed-point encoding refused: {0}")]
    Encoding(FixedPointError),
    /// A sum over the whole cohort could wrap around 2^32.
    #[error("a sum of {cohort} clipped updates overflows 2^32 at this precision (at most {max} clients)")]
    Headroom {
        /// `n`.
        cohort: usize,
        /// The most clients the encoding leaves room for.
        max: usize,
    },
    /// The server's minimum number of survivors is below 2 or above the cohort.
    #[error("minimum of {min} survivors out of range 2..={cohort}")]
    MinSurvivors {
        /// The configured minimum.
        min: usize,
        /// `n`.
        cohort: usize,
    },
}

/// Everything a client and the server must agree on before a session starts; sent by the server
/// to each client of the cohort ([`ServerMessage::Setup`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSetup {
    /// Id of the session, unpredictable before the server sends it (derived from its secret key):
    /// seeds the neighbour graph and binds every derived key, commitment and ciphertext to this
    /// session.
    pub session_id: [u8; SEED_LEN],
    /// Protocol parameters.
    pub params: SecAggParams,
    /// Number of coordinates of every update.
    pub vector_len: usize,
    /// The cohort's client ids, strictly ascending.
    #[serde(with = "crate::wire::bounded::cohort")]
    pub cohort: Vec<u64>,
}

impl SessionSetup {
    /// Checks the parameters against the cohort, the cohort's order and the vector length.
    pub fn validate(&self) -> Result<(), SecAggError> {
        if self.vector_len == 0 {
            return Err(SecAggError::EmptyVector);
        }
        if self.cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SecAggError::CohortNotSorted);
        }
        self.params.validate(self.cohort.len())?;
        Ok(())
    }

    /// The session's neighbour graph.
    pub fn graph(&self) -> Result<NeighbourGraph, SecAggError> {
        NeighbourGraph::new(&self.session_id, &self.cohort, self.params.neighbours)
    }
}

/// Why a secure-aggregation message, call or session was refused or failed.
///
/// A refused message leaves the state machine as it was, except that a server drops the sender
/// of refused keys (`WeakKey`, `ReusedKey`, `DuplicateKey`); failures of a whole session are the
/// `TooFew*`, `Reconstruction`, `CommitmentMismatch` and `KeyMismatch` variants, after which the
/// server is [`ServerPhase::Failed`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// The session's parameters were refused.
    #[error("invalid parameters: {0}")]
    Params(#[from] ParamsError),
    /// A value could not be encoded or a sum decoded.
    #[error("fixed-point: {0}")]
    FixedPoint(#[from] FixedPointError),
    /// Splitting a secret failed (local error, not a peer's).
    #[error("secret sharing: {0}")]
    Shamir(#[from] ShamirError),
    /// The session's vectors have no coordinate.
    #[error("vector length is zero")]
    EmptyVector,
    /// The cohort's ids are not strictly ascending (unsorted or repeated).
    #[error("cohort ids are not strictly ascending")]
    CohortNotSorted,
    /// A client id is not in the cohort.
    #[error("client {id} is not in the cohort")]
    NotInCohort {
        /// The id.
        id: u64,
    },
    /// A message arrived in a phase that does not expect it.
    #[error("unexpected {message} in phase {phase}")]
    UnexpectedMessage {
        /// The kind of message.
        message: &'static str,
        /// The phase the state machine is in.
        phase: &'static str,
    },
    /// A cohort client sent a message of a phase it is no longer part of (it dropped or was left
    /// out earlier).
    #[error("client {id} is not part of this phase")]
    NotExpected {
        /// The sender.
        id: u64,
    },
    /// A client sent the same phase's message twice.
    #[error("client {id} already answered this phase")]
    Duplicate {
        /// The sender.
        id: u64,
    },
    /// A message names a peer that is not a neighbour (or not a live one) of its recipient.
    #[error("client {peer} is not a neighbour here")]
    NotANeighbour {
        /// The peer.
        peer: u64,
    },
    /// A message names the same peer twice.
    #[error("peer {peer} is listed twice")]
    DuplicatePeer {
        /// The peer.
        peer: u64,
    },
    /// A peer's public key is not the canonical encoding of a point of large order (all-zero,
    /// a small-order point, ≥ 2^255 − 19): the key agreement would not be secret.
    #[error("the public key of {peer} is not contributory")]
    WeakKey {
        /// The peer.
        peer: u64,
    },
    /// A client advertised the same key as its cipher key and its mask key.
    #[error("client {peer} advertised one key for both purposes")]
    ReusedKey {
        /// The client.
        peer: u64,
    },
    /// A client advertised a key another client of the session advertised too: both are dropped.
    #[error("client {peer} advertised a key of client {other}")]
    DuplicateKey {
        /// The client whose message revealed the duplicate.
        peer: u64,
        /// The client that advertised the key first.
        other: u64,
    },
    /// A client has fewer live neighbours than the threshold.
    #[error("{have} live neighbours, at least {need} needed")]
    TooFewNeighbours {
        /// Live neighbours.
        have: usize,
        /// `t`.
        need: usize,
    },
    /// Sealed shares of a peer have the wrong length or fail authentication.
    #[error("the sealed shares of {peer} do not open")]
    BadCiphertext {
        /// The peer.
        peer: u64,
    },
    /// Opened shares of a peer are malformed (wrong index or value outside the field).
    #[error("the shares of {peer} are malformed")]
    MalformedShare {
        /// The peer.
        peer: u64,
    },
    /// A vector has the wrong number of coordinates.
    #[error("vector of {got} coordinates, the session has {expected}")]
    WrongLength {
        /// The session's vector length.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// An unmask request names a peer the client holds no shares of, or leaves one out.
    #[error("unmask request does not match the neighbours whose shares are held (peer {peer})")]
    UnmaskMismatch {
        /// The peer.
        peer: u64,
    },
    /// An unmask request asks for both secrets of one peer, which would unmask it.
    #[error("refusing to reveal both the self mask and the mask key of {peer}")]
    RevealBoth {
        /// The peer.
        peer: u64,
    },
    /// An unmask request lists fewer surviving neighbours than the threshold.
    #[error("only {have} surviving neighbours, at least {need} needed")]
    TooFewSurvivors {
        /// Surviving neighbours listed.
        have: usize,
        /// `t`.
        need: usize,
    },
    /// Fewer clients than the server's minimum remain after a phase.
    #[error("{have} clients left after {phase}, at least {need} needed")]
    TooFewClients {
        /// The phase that closed.
        phase: &'static str,
        /// Clients left.
        have: usize,
        /// The configured minimum.
        need: usize,
    },
    /// A secret the server needs has fewer live holders than the threshold.
    #[error("the secrets of {owner} have {have} live holders, {need} needed")]
    TooFewHolders {
        /// The owner of the secret.
        owner: u64,
        /// Live holders.
        have: usize,
        /// `t`.
        need: usize,
    },
    /// Fewer shares than the threshold arrived for a secret.
    #[error("{got} shares of a secret of {owner}, {need} needed")]
    TooFewShares {
        /// The owner of the secret.
        owner: u64,
        /// Shares received.
        got: usize,
        /// `t`.
        need: usize,
    },
    /// Unmasking shares name a secret that was not asked for, or miss one that was.
    #[error("client {from} revealed the wrong set of shares (owner {owner})")]
    UnexpectedShares {
        /// The sender.
        from: u64,
        /// The owner concerned.
        owner: u64,
    },
    /// A revealed share carries another index than its holder's or a value outside the field.
    #[error("client {from} revealed a malformed share of {owner}")]
    BadShare {
        /// The sender.
        from: u64,
        /// The owner of the secret.
        owner: u64,
    },
    /// A secret could not be rebuilt from its shares.
    #[error("rebuilding a secret of {owner}: {source}")]
    Reconstruction {
        /// The owner of the secret.
        owner: u64,
        /// Why.
        source: ShamirError,
    },
    /// No `t` of the revealed shares of a dropped client's mask key rebuild the key matching
    /// the public key it advertised: its neighbours revealed wrong shares.
    #[error("no threshold subset of the revealed mask-key shares of client {owner} matches its public key")]
    KeyMismatch {
        /// The owner.
        owner: u64,
    },
    /// No `t` of the revealed shares of a survivor's self-mask seed rebuild a seed matching the
    /// commitment it sent: its neighbours revealed wrong shares.
    #[error("no threshold subset of the revealed self-mask shares of client {owner} matches its commitment")]
    CommitmentMismatch {
        /// The owner.
        owner: u64,
    },
    /// HKDF refused an output length (cannot happen for the 32-byte outputs used here).
    #[error("key derivation failed")]
    KeyDerivation,
    /// The AEAD refused to seal (cannot happen for the short messages used here).
    #[error("sealing shares failed")]
    Sealing,
    /// The mask's keystream could not be drawn (cannot happen: 32-byte keys, 16 KiB blocks).
    #[error("drawing a mask's keystream failed")]
    Keystream,
    /// aws-lc refused a 32-byte X25519 secret key (cannot happen: every 32 bytes are one).
    #[error("X25519 key setup failed")]
    KeyAgreement,
}
