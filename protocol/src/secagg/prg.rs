//! Key derivation, the mask PRG (AES-256-CTR) and the sealing of shares.
//!
//! Every derived value is HKDF-SHA256 with the session id as salt and a label naming its use
//! (and the ids concerned) as info, so no key or seed serves two purposes or two sessions.
//! Derived seeds and keys, plaintext shares and keystream buffers are zeroised on drop (the
//! expanded AES key inside aws-lc's AEAD context by aws-lc, see [`apply_mask`]).

use chacha20::ChaCha20Rng;
use chacha20::rand_core::SeedableRng;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, UnboundKey};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::shamir::{LIMBS, P, Share};
use super::{SEED_LEN, SecAggError};
use crate::kernels;

const LABEL_SELF_MASK: &[u8] = b"flotilla/secagg/v1 self mask";
const LABEL_PAIRWISE: &[u8] = b"flotilla/secagg/v1 pairwise mask";
const LABEL_SHARE_KEY: &[u8] = b"flotilla/secagg/v1 share key";
const LABEL_AAD: &[u8] = b"flotilla/secagg/v1 sealed shares";
const LABEL_COMMITMENT: &[u8] = b"flotilla/secagg/v1 self-mask commitment";

/// A derived 32-byte seed or key, wiped when dropped.
pub(crate) type Seed = Zeroizing<[u8; 32]>;

/// Bytes of the opened shares one client sends another: the index, then the limbs of the share
/// of the self-mask seed, then those of the share of the mask key.
pub(crate) const PLAINTEXT_LEN: usize = 8 + 2 * LIMBS * 8;

/// Bytes of sealed shares: the plaintext and the Poly1305 tag.
pub(crate) const CIPHERTEXT_LEN: usize = PLAINTEXT_LEN + 16;

fn derive(session_id: &[u8; SEED_LEN], ikm: &[u8], label: &[u8], ids: [u64; 2]) -> Result<Seed, SecAggError> {
    let hkdf = Hkdf::<Sha256>::new(Some(session_id), ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(&[label, &ids[0].to_le_bytes(), &ids[1].to_le_bytes()], okm.as_mut_slice())
        .map_err(|_| SecAggError::KeyDerivation)?;
    Ok(okm)
}

/// The PRG seed of `owner`'s self mask, from its seed `b`.
pub(crate) fn self_mask_seed(session_id: &[u8; SEED_LEN], owner: u64, b: &[u8; SEED_LEN]) -> Result<Seed, SecAggError> {
    derive(session_id, b, LABEL_SELF_MASK, [owner, owner])
}

/// `owner`'s commitment to its self-mask seed `b`: `SHA-256(label ‖ session id ‖ owner ‖ b)`.
/// Hiding (`b` is 32 random bytes) and binding (collision resistance): the server checks the
/// `b` it rebuilds from revealed shares against it.
pub(crate) fn self_mask_commitment(session_id: &[u8; SEED_LEN], owner: u64, b: &[u8; SEED_LEN]) -> [u8; 32] {
    Sha256::new()
        .chain_update(LABEL_COMMITMENT)
        .chain_update(session_id)
        .chain_update(owner.to_le_bytes())
        .chain_update(b)
        .finalize()
        .into()
}

/// Whether `key` is the canonical encoding of a field element: top bit clear, below
/// `2^255 − 19`. The cheap half of [`is_valid_public_key`]; an agreement with such a key must
/// still be checked for contribution (as [`pairwise_seed`] and [`share_keys`] do).
pub(crate) fn is_canonical_public_key(key: &[u8; 32]) -> bool {
    // p = 2^255 − 19 in little-endian bytes: 0xed, thirty times 0xff, 0x7f.
    let at_least_p = key[31] == 0x7f && key[1..31].iter().all(|&b| b == 0xff) && key[0] >= 0xed;
    key[31] & 0x80 == 0 && !at_least_p
}

/// Whether `key` is the canonical encoding of a point whose X25519 products are never
/// all-zero, i.e. of a point outside the small subgroups of the curve and its twist. X25519
/// clamps every scalar to a multiple of the cofactor 8 that is nonzero modulo the large prime
/// orders, so its product is all-zero exactly for the points of order dividing 8 (curve) or 4
/// (twist), whose canonical u-coordinates are the five of [`LOW_ORDER`]: a comparison, where
/// a probe agreement (which tells the same, a test checks) cost the server two scalar
/// multiplications per client and round. For the same reason, an agreement with a canonical
/// key that turns out contributory proves the key valid.
pub(crate) fn is_valid_public_key(key: &[u8; 32]) -> bool {
    is_canonical_public_key(key) && !LOW_ORDER.contains(key)
}

/// The canonical u-coordinates of the low-order points of the curve and its twist: 0, 1,
/// the two u-coordinates of the points of order 8, and p − 1 (the same list as libsodium's, less its
/// non-canonical entries); little-endian, as keys are encoded.
/// Their non-canonical aliases (p, p + 1, a top bit set) are refused as non-canonical.
const LOW_ORDER: [[u8; 32]; 5] = [
    [0; 32],
    {
        let mut one = [0; 32];
        one[0] = 1;
        one
    },
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09,
        0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44,
        0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
];

/// An X25519 secret key and its public key. The agreement is aws-lc's (twice as fast as a
/// portable ladder here); aws-lc wipes its copy of the secret when the key is dropped, and
/// the shared secrets it computes.
pub(crate) struct AgreementKey {
    key: PrivateKey,
    public: [u8; 32],
}

impl AgreementKey {
    /// The key of the 32 secret bytes `secret` (clamped as X25519 does, RFC 7748).
    pub(crate) fn from_secret(secret: &[u8; 32]) -> Result<Self, SecAggError> {
        let key = PrivateKey::from_private_key(&X25519, secret).map_err(|_| SecAggError::KeyAgreement)?;
        let public = key.compute_public_key().map_err(|_| SecAggError::KeyAgreement)?;
        let public = public.as_ref().try_into().map_err(|_| SecAggError::KeyAgreement)?;
        Ok(Self { key, public })
    }

    /// The public key, `X25519(secret, 9)`.
    pub(crate) fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// `X25519(secret, peer)`; `None` when it is all-zero (a low-order `peer`, which aws-lc
    /// refuses) or `peer` is otherwise refused.
    fn agree(&self, peer: &[u8; 32]) -> Option<Seed> {
        agreement::agree(&self.key, UnparsedPublicKey::new(&X25519, peer), (), |shared| {
            let mut out = Zeroizing::new([0u8; 32]);
            match <&[u8; 32]>::try_from(shared) {
                Ok(bytes) => out.copy_from_slice(bytes),
                Err(_) => return Err(()),
            }
            Ok(out)
        })
        .ok()
    }
}

impl std::fmt::Debug for AgreementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgreementKey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The PRG seed of the pairwise mask of `a` and `b`, from `X25519(s_sk_a, s_pk_b)` (the same
/// from either side). `None` when the peer's key is a low-order point.
pub(crate) fn pairwise_seed(
    session_id: &[u8; SEED_LEN],
    secret: &AgreementKey,
    peer_key: &[u8; 32],
    a: u64,
    b: u64,
) -> Result<Option<Seed>, SecAggError> {
    let Some(shared) = secret.agree(peer_key) else {
        return Ok(None);
    };
    derive(session_id, shared.as_slice(), LABEL_PAIRWISE, [a.min(b), a.max(b)]).map(Some)
}

/// Words of the mask stream drawn per AES-GCM call: 16 KiB, the unit [`apply_masks`] splits
/// a vector on.
const BLOCK_WORDS: usize = 4096;

/// Adds (`subtract == false`) or subtracts the PRG stream of `seed` to `acc`, mod 2^32: the
/// stream's bytes taken four at a time as little-endian words.
///
/// The PRG is AES-256 in counter mode keyed by the seed: the stream is drawn in 16 KiB blocks,
/// block `i` being the AES-256-GCM encryption of zeros under nonce `i` (the ciphertext of
/// zeros is the counter-mode keystream, the tag is dropped). AES-GCM is the fastest AES
/// aws-lc offers: its AVX-512 VAES code drew 13.5 GB/s of this stream on the 2-core test
/// machine, against 9 GB/s for ring's AES-GCM (which drew it before, the same bytes) and
/// 7.4 GB/s for aws-lc's plain AES-CTR (AES-NI). Each seed keys one stream (a self mask, or
/// one pair's mask in one session), and nonces never repeat within a stream.
pub(crate) fn apply_mask(acc: &mut [u32], seed: &[u8; 32], subtract: bool) -> Result<(), SecAggError> {
    apply_mask_from(acc, 0, seed, subtract)
}

/// Applies each `(seed, subtract)` of `masks` to `acc` as [`apply_mask`] does, the vector cut
/// into ranges of whole blocks, one per thread of rayon's pool: each range draws only its own
/// blocks of every stream (block `i` needs only nonce `i`), so the threads share nothing and
/// the result is the same bits as one thread's. For the server's unmasking, which regenerates
/// a stream per survivor while every client waits.
pub(crate) fn apply_masks(acc: &mut [u32], masks: &[(Seed, bool)]) -> Result<(), SecAggError> {
    use rayon::prelude::*;
    let blocks = acc.len().div_ceil(BLOCK_WORDS);
    let per_range = blocks.div_ceil(rayon::current_num_threads().max(1)).max(1);
    acc.par_chunks_mut(per_range * BLOCK_WORDS).enumerate().try_for_each(|(range, chunk)| {
        masks.iter().try_for_each(|(seed, subtract)| apply_mask_from(chunk, range * per_range, seed, *subtract))
    })
}

/// [`apply_mask`] on the part of a vector that starts at block `first_block` of the stream.
fn apply_mask_from(acc: &mut [u32], first_block: usize, seed: &[u8; 32], subtract: bool) -> Result<(), SecAggError> {
    let key = UnboundKey::new(&AES_256_GCM, seed).map_err(|_| SecAggError::Keystream)?;
    let key = LessSafeKey::new(key);
    let mut buffer = Zeroizing::new([0u8; BLOCK_WORDS * 4]);
    for (block, chunk) in acc.chunks_mut(BLOCK_WORDS).enumerate() {
        let bytes = &mut buffer[..chunk.len() * 4];
        bytes.fill(0);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&((first_block + block) as u64).to_le_bytes());
        // The tag authenticates nothing here: dropped.
        let _tag = key
            .seal_in_place_separate_tag(aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce), Aad::empty(), bytes)
            .map_err(|_| SecAggError::Keystream)?;
        let (words, _) = bytes.as_chunks::<4>();
        if subtract {
            kernels::combine(chunk, words, |a: u32, w: [u8; 4]| a.wrapping_sub(u32::from_le_bytes(w)));
        } else {
            kernels::combine(chunk, words, |a: u32, w: [u8; 4]| a.wrapping_add(u32::from_le_bytes(w)));
        }
    }
    // The expanded key lives in aws-lc's AEAD context until `key` is dropped when this
    // returns; aws-lc zeroes the context when it frees it.
    Ok(())
}

/// Overwrites a generator's state (key, counter, buffered output) with that of the all-zero
/// seed, so the seed it was built from does not linger in memory.
pub(crate) fn wipe_rng(rng: &mut ChaCha20Rng) {
    *rng = ChaCha20Rng::from_seed([0; 32]);
    std::hint::black_box(rng);
}

/// The keys of the shares `me` and `peer` seal for each other, both from the one agreement
/// `X25519(c_sk_me, c_pk_peer)` (equal to `X25519(c_sk_peer, c_pk_me)` on the peer's side):
/// `(me → peer, peer → me)`, each derived with its direction. `None` when the peer's key is a
/// low-order point.
pub(crate) fn share_keys(
    session_id: &[u8; SEED_LEN],
    secret: &AgreementKey,
    peer_key: &[u8; 32],
    me: u64,
    peer: u64,
) -> Result<Option<(Seed, Seed)>, SecAggError> {
    let Some(shared) = secret.agree(peer_key) else {
        return Ok(None);
    };
    let outbound = derive(session_id, shared.as_slice(), LABEL_SHARE_KEY, [me, peer])?;
    let inbound = derive(session_id, shared.as_slice(), LABEL_SHARE_KEY, [peer, me])?;
    Ok(Some((outbound, inbound)))
}

/// The symmetric cipher of one direction's shares, from its key (see [`share_keys`]).
pub(crate) fn share_cipher(key: &Seed) -> ChaCha20Poly1305 {
    let mut key = Key::from(**key);
    let cipher = ChaCha20Poly1305::new(&key);
    key.as_mut_slice().zeroize();
    cipher
}

fn aad(session_id: &[u8; SEED_LEN], from: u64, to: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(LABEL_AAD.len() + SEED_LEN + 16);
    aad.extend_from_slice(LABEL_AAD);
    aad.extend_from_slice(session_id);
    aad.extend_from_slice(&from.to_le_bytes());
    aad.extend_from_slice(&to.to_le_bytes());
    aad
}

/// Seals the two shares `from` gives `to`. The key is used for this one message, hence the
/// fixed nonce.
pub(crate) fn seal(
    cipher: &ChaCha20Poly1305,
    session_id: &[u8; SEED_LEN],
    from: u64,
    to: u64,
    shares: (&Share, &Share),
) -> Result<Vec<u8>, SecAggError> {
    let mut plaintext = Zeroizing::new(Vec::with_capacity(PLAINTEXT_LEN));
    plaintext.extend_from_slice(&shares.0.x.to_le_bytes());
    for y in shares.0.y.iter().chain(&shares.1.y) {
        plaintext.extend_from_slice(&y.to_le_bytes());
    }
    let aad = aad(session_id, from, to);
    cipher.encrypt(&Nonce::default(), Payload { msg: &plaintext, aad: &aad }).map_err(|_| SecAggError::Sealing)
}

/// Opens the shares `from` sealed for `to`: (share of the self-mask seed, share of the mask
/// key), both at the same index.
pub(crate) fn open(
    cipher: &ChaCha20Poly1305,
    session_id: &[u8; SEED_LEN],
    from: u64,
    to: u64,
    ciphertext: &[u8],
) -> Result<(Share, Share), SecAggError> {
    if ciphertext.len() != CIPHERTEXT_LEN {
        return Err(SecAggError::BadCiphertext { peer: from });
    }
    let aad = aad(session_id, from, to);
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(&Nonce::default(), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| SecAggError::BadCiphertext { peer: from })?,
    );
    let words: Zeroizing<Vec<u64>> = Zeroizing::new(
        plaintext
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect(),
    );
    if words.len() != 1 + 2 * LIMBS || words.iter().skip(1).any(|&y| y >= P) {
        return Err(SecAggError::MalformedShare { peer: from });
    }
    let x = words[0];
    let mut b = Share { x, y: [0; LIMBS] };
    let mut s = Share { x, y: [0; LIMBS] };
    b.y.copy_from_slice(&words[1..=LIMBS]);
    s.y.copy_from_slice(&words[1 + LIMBS..]);
    Ok((b, s))
}

#[cfg(test)]
mod tests {
    use super::{AgreementKey, BLOCK_WORDS, Seed, apply_mask, apply_masks};

    #[test]
    fn parallel_masks_are_the_sequential_masks() {
        let masks: Vec<(Seed, bool)> = (0..5u8).map(|i| (Seed::new([i * 37 + 1; 32]), i % 2 == 0)).collect();
        // Lengths below, at and past one block, ending inside a block; 1 to 4 threads (so 1
        // to 4 ranges, of different lengths).
        for len in [0, 1, BLOCK_WORDS - 1, BLOCK_WORDS, 3 * BLOCK_WORDS + 5, 10 * BLOCK_WORDS + 123] {
            let start: Vec<u32> = (0..len as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
            let mut sequential = start.clone();
            for (seed, subtract) in &masks {
                apply_mask(&mut sequential, seed, *subtract).unwrap();
            }
            assert!(len == 0 || sequential != start);
            for threads in 1..=4 {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut parallel = start.clone();
                pool.install(|| apply_masks(&mut parallel, &masks)).unwrap();
                assert!(parallel == sequential, "{len} words on {threads} threads");
            }
        }
    }

    fn hex(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        }
        out
    }

    #[test]
    fn x25519_matches_rfc_7748() {
        // RFC 7748, section 6.1: Alice's and Bob's keys and their shared secret.
        let alice = AgreementKey::from_secret(&hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
            .unwrap();
        let bob = AgreementKey::from_secret(&hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
            .unwrap();
        assert_eq!(alice.public_key(), hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
        assert_eq!(bob.public_key(), hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"));
        let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*alice.agree(&bob.public_key()).unwrap(), shared);
        assert_eq!(*bob.agree(&alice.public_key()).unwrap(), shared);
        // A low-order point (u = 1) gives the all-zero product: no agreement.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(alice.agree(&one).is_none());
        assert!(alice.agree(&[0; 32]).is_none());
    }

    /// The comparison with the five low-order points tells what an agreement tells: for every
    /// canonical key, the product with a probe scalar is all-zero exactly for those five.
    #[test]
    fn the_low_order_list_is_what_an_agreement_refuses() {
        use rand_core::{Rng, SeedableRng};
        let probe = AgreementKey::from_secret(&[0x5a; 32]).unwrap();
        for point in super::LOW_ORDER {
            assert!(super::is_canonical_public_key(&point));
            assert!(probe.agree(&point).is_none() && !super::is_valid_public_key(&point), "{point:02x?}");
        }
        let mut rng = chacha20::ChaCha20Rng::from_seed([7; 32]);
        let mut canonical = 0;
        for i in 0..2000u32 {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            // Small values and the top of the field too, not only uniform ones.
            match i % 4 {
                0 => key[1..].fill(0),
                1 => key[1..31].fill(0xff),
                _ => {}
            }
            key[31] &= 0x7f;
            if super::is_canonical_public_key(&key) {
                canonical += 1;
                assert_eq!(super::is_valid_public_key(&key), probe.agree(&key).is_some(), "{key:02x?}");
            }
        }
        assert!(canonical > 1500);
    }
}
