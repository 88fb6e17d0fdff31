//! The messages of a secure-aggregation session, serde-serialisable (bincode on the wire).
//!
//! Every list is bounded on decoding ([`crate::wire::bounded`]): at most one entry per
//! client of the largest session, at most one sealed share pair's bytes per ciphertext.
//!
//! Client ids are the cohort's `u64` ids; every message names its sender implicitly (the
//! connection it arrives on) and the server addresses each of its messages to one client.

use serde::{Deserialize, Serialize};

use super::SessionSetup;
use super::shamir::Share;

/// A client's two X25519 public keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeys {
    /// `c_pk`: agrees the keys that seal the shares sent to this client.
    pub cipher_key: [u8; 32],
    /// `s_pk`: agrees the pairwise mask seeds with this client.
    pub mask_key: [u8; 32],
}

/// Phase 1, client → server: the client's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertiseKeys {
    /// The keys.
    pub keys: PublicKeys,
}

/// Phase 1, server → client: the keys of the recipient's neighbours that advertised them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectory {
    /// `(neighbour id, its keys)`, ascending by id.
    #[serde(with = "crate::wire::bounded::cohort")]
    pub keys: Vec<(u64, PublicKeys)>,
}

/// Sealed shares between two clients, relayed by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The recipient in [`ShareKeys`], the sender in [`ForwardedShares`].
    pub peer: u64,
    /// ChaCha20-Poly1305 ciphertext of the two shares and its tag.
    #[serde(with = "crate::wire::bounded::sealed_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Phase 2, client → server: the client's shares for each usable neighbour of its directory,
/// sealed, and its commitment to its self-mask seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    /// One entry per neighbour, addressed by [`Sealed::peer`]. Neighbours whose keys the client
    /// found unusable (low-order, repeated) are left out: the pair is treated as dropped.
    #[serde(with = "crate::wire::bounded::cohort")]
    pub sealed: Vec<Sealed>,
    /// `SHA-256(label ‖ session id ‖ client id ‖ b_u)`: the server checks the self-mask seed it
    /// rebuilds from revealed shares against it.
    pub commitment: [u8; 32],
}

/// Phase 2, server → client: the sealed shares the recipient's live neighbours sent it, one per
/// neighbour that exchanged shares with it both ways (its *partners*: it masks with each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedShares {
    /// One entry per sender ([`Sealed::peer`]).
    #[serde(with = "crate::wire::bounded::cohort")]
    pub sealed: Vec<Sealed>,
}

/// Phase 3, client → server: the masked, fixed-point update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    /// `x_u + PRG(b_u) + Σ ±PRG(s_uv) mod 2^32`, one word per coordinate (on the wire: one
    /// byte string, four bytes per word).
    #[serde(with = "crate::params::le_words")]
    pub masked: Vec<u32>,
    /// Partners whose sealed shares did not open (or were malformed), ascending: the client
    /// masked with them but holds none of their shares, so it cannot help rebuild their secrets.
    #[serde(with = "crate::wire::bounded::cohort")]
    pub missing: Vec<u64>,
}

/// Phase 4, server → client: which of the recipient's partners sent their masked input and
/// which did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    /// Partners whose input was folded: reveal their self-mask shares (where held).
    #[serde(with = "crate::wire::bounded::cohort")]
    pub survivors: Vec<u64>,
    /// Partners whose input is missing: reveal their mask-key shares (where held).
    #[serde(with = "crate::wire::bounded::cohort")]
    pub dropped: Vec<u64>,
}

/// One revealed share of a peer's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    /// The owner of the secret.
    pub owner: u64,
    /// The share.
    pub share: Share,
}

/// Phase 4, client → server: the shares asked for by an [`UnmaskRequest`], except those of the
/// partners the client reported [`MaskedInput::missing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskingShares {
    /// Shares of the self-mask seeds `b_v` of the surviving neighbours.
    #[serde(with = "crate::wire::bounded::cohort")]
    pub self_mask: Vec<RevealedShare>,
    /// Shares of the mask keys `s_sk_v` of the dropped neighbours.
    #[serde(with = "crate::wire::bounded::cohort")]
    pub mask_key: Vec<RevealedShare>,
}

/// Any message from a client to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Phase 1.
    AdvertiseKeys(AdvertiseKeys),
    /// Phase 2.
    ShareKeys(ShareKeys),
    /// Phase 3.
    MaskedInput(MaskedInput),
    /// Phase 4.
    UnmaskingShares(UnmaskingShares),
}

/// Any message from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Opens the session: build a [`super::SecAggClient`] from it.
    Setup(SessionSetup),
    /// End of phase 1.
    KeyDirectory(KeyDirectory),
    /// End of phase 2.
    ForwardedShares(ForwardedShares),
    /// End of phase 3.
    UnmaskRequest(UnmaskRequest),
}

impl ClientMessage {
    /// The message's kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AdvertiseKeys(_) => "AdvertiseKeys",
            Self::ShareKeys(_) => "ShareKeys",
            Self::MaskedInput(_) => "MaskedInput",
            Self::UnmaskingShares(_) => "UnmaskingShares",
        }
    }
}

impl ServerMessage {
    /// The message's kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Setup(_) => "Setup",
            Self::KeyDirectory(_) => "KeyDirectory",
            Self::ForwardedShares(_) => "ForwardedShares",
            Self::UnmaskRequest(_) => "UnmaskRequest",
        }
    }
}
