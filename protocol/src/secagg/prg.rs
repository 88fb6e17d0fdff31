//! Key derivation, the mask PRG and the sealing of shares.
//!
//! Every derived value is HKDF-SHA256 with the session id as salt and a label naming its use
//! (and the ids concerned) as info, so no key or seed serves two purposes or two sessions.
//! Derived seeds and keys, plaintext shares and keystream buffers are zeroised on drop.

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::shamir::{LIMBS, P, Share};
use super::{SEED_LEN, SecAggError};

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

/// Whether `key` is the canonical encoding (top bit clear, below `2^255 − 19`) of a point whose
/// X25519 products are never all-zero, i.e. of a point outside the small subgroups of the curve
/// and its twist. X25519 clamps every scalar to a multiple of the cofactor 8 that is nonzero
/// modulo the large prime orders, so one product with any fixed scalar tells: it is all-zero
/// exactly for the low-order points (0, 1, p − 1, the two points of order 8, …).
pub(crate) fn is_valid_public_key(key: &[u8; 32]) -> bool {
    // p = 2^255 − 19 in little-endian bytes: 0xed, thirty times 0xff, 0x7f.
    let at_least_p = key[31] == 0x7f && key[1..31].iter().all(|&b| b == 0xff) && key[0] >= 0xed;
    if key[31] & 0x80 != 0 || at_least_p {
        return false;
    }
    let probe = StaticSecret::from([0x5a; 32]);
    probe.diffie_hellman(&PublicKey::from(*key)).was_contributory()
}

/// The PRG seed of the pairwise mask of `a` and `b`, from `X25519(s_sk_a, s_pk_b)` (the same
/// from either side). `None` when the peer's key is a low-order point.
pub(crate) fn pairwise_seed(
    session_id: &[u8; SEED_LEN],
    secret: &StaticSecret,
    peer_key: &[u8; 32],
    a: u64,
    b: u64,
) -> Result<Option<Seed>, SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_key));
    if !shared.was_contributory() {
        return Ok(None);
    }
    derive(session_id, shared.as_bytes(), LABEL_PAIRWISE, [a.min(b), a.max(b)]).map(Some)
}

/// Adds (`subtract == false`) or subtracts the PRG stream of `seed` to `acc`, mod 2^32.
pub(crate) fn apply_mask(acc: &mut [u32], seed: &[u8; 32], subtract: bool) {
    // The keystream is drawn in 4 KiB blocks (the cipher's vectorised path) rather than word
    // by word; the words are the same little-endian sequence either way.
    const WORDS: usize = 1024;
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut stream = Zeroizing::new([0u8; WORDS * 4]);
    for chunk in acc.chunks_mut(WORDS) {
        let bytes = &mut stream[..chunk.len() * 4];
        rng.fill_bytes(bytes);
        let (words, _) = bytes.as_chunks::<4>();
        if subtract {
            chunk.iter_mut().zip(words).for_each(|(a, w)| *a = a.wrapping_sub(u32::from_le_bytes(*w)));
        } else {
            chunk.iter_mut().zip(words).for_each(|(a, w)| *a = a.wrapping_add(u32::from_le_bytes(*w)));
        }
    }
    // chacha20's `zeroize` feature (which would wipe the generator itself) is off: turning it on
    // would rebuild rand and the burn stack. Overwrite the generator's key state instead.
    wipe_rng(&mut rng);
}

/// Overwrites a generator's state (key, counter, buffered output) with that of the all-zero
/// seed, so the seed it was built from does not linger in memory.
pub(crate) fn wipe_rng(rng: &mut ChaCha20Rng) {
    *rng = ChaCha20Rng::from_seed([0; 32]);
    std::hint::black_box(rng);
}

/// The symmetric cipher of the shares `from` sends `to`, from `X25519(c_sk_from, c_pk_to)` on
/// the sender's side or `X25519(c_sk_to, c_pk_from)` on the recipient's. `None` when the peer's
/// key is a low-order point.
pub(crate) fn share_cipher(
    session_id: &[u8; SEED_LEN],
    secret: &StaticSecret,
    peer_key: &[u8; 32],
    from: u64,
    to: u64,
) -> Result<Option<ChaCha20Poly1305>, SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer_key));
    if !shared.was_contributory() {
        return Ok(None);
    }
    let key = derive(session_id, shared.as_bytes(), LABEL_SHARE_KEY, [from, to])?;
    let mut key = Key::from(*key);
    let cipher = ChaCha20Poly1305::new(&key);
    key.as_mut_slice().zeroize();
    Ok(Some(cipher))
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
