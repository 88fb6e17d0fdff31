//! Shamir secret sharing of 32-byte secrets over the prime field `GF(2^61 − 1)`.
//!
//! A secret of [`SECRET_LEN`] bytes is cut into [`LIMBS`] little-endian limbs of 7 bytes (the
//! last one of 4), each below `2^56 < p = 2^61 − 1`, so every limb is a field element. Each limb
//! is shared with its own random polynomial of degree `t − 1` whose constant term is the limb;
//! a share is the evaluation of all of them at one nonzero point `x`. Any `t` shares give the
//! limbs back by Lagrange interpolation at 0; `t − 1` shares are consistent with every possible
//! value of each limb, so they tell nothing about the secret.
//!
//! Why not a crate: the reviewed candidate, `vsss-rs` (audited), pulls features of `rand` and
//! `num-traits` that would rebuild the burn stack with other features, plus an elliptic-curve
//! stack, and its byte-wise GF(256) sharing caps a secret at 255 holders (the complete graph
//! of 257 clients needs more). Sharing over a Mersenne prime is a few dozen lines of
//! arithmetic (one 128-bit multiply and two folds per product) that the tests below check
//! directly; indices run up to `2^61 − 2`, so any neighbour count works.
//!
//! The arithmetic is not constant-time (conditional subtractions); shares are only computed
//! once per session by their owner and combined by the server. Shares, polynomial
//! coefficients, limbs and rebuilt secrets are zeroised when dropped ([`Share`] wipes itself,
//! the rest lives in [`Zeroizing`] buffers).

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use chacha20::rand_core::Rng;

/// The field's prime, `2^61 − 1`.
pub const P: u64 = (1 << 61) - 1;

/// Bytes of a shared secret.
pub const SECRET_LEN: usize = 32;

/// Field elements per shared secret (7 bytes each, the last one 4).
pub const LIMBS: usize = 5;

const LIMB_BYTES: usize = 7;

/// One holder's share of a secret: the evaluations of the [`LIMBS`] polynomials at `x`.
///
/// Not `Copy`, and wiped when dropped: `t` shares are the secret. Its `Debug` shows `x` only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The evaluation point, nonzero and below [`P`]; distinct for the holders of one secret.
    pub x: u64,
    /// The evaluations, each below [`P`].
    pub y: [u64; LIMBS],
}

impl Share {
    /// Whether `x` and every `y` are valid field elements and `x ≠ 0`.
    pub fn is_well_formed(&self) -> bool {
        valid_index(self.x) && self.y.iter().all(|&y| y < P)
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share").field("x", &self.x).finish_non_exhaustive()
    }
}

impl Zeroize for Share {
    fn zeroize(&mut self) {
        self.x.zeroize();
        self.y.zeroize();
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Share {}

/// Why a secret could not be split or rebuilt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShamirError {
    /// A threshold of zero shares.
    #[error("threshold must be at least 1")]
    ZeroThreshold,
    /// Fewer holders than the threshold: the secret could never be rebuilt.
    #[error("{holders} holders for a threshold of {threshold}")]
    TooFewHolders {
        /// `t`.
        threshold: usize,
        /// Holders.
        holders: usize,
    },
    /// Fewer shares than the threshold.
    #[error("{got} shares, {need} needed")]
    TooFewShares {
        /// Shares given.
        got: usize,
        /// `t`.
        need: usize,
    },
    /// An evaluation point is 0 (where the secret lies) or not below the prime.
    #[error("share index {x} is not a valid nonzero field element")]
    InvalidIndex {
        /// The index.
        x: u64,
    },
    /// Two shares (or holders) have the same index.
    #[error("share index {x} appears twice")]
    DuplicateIndex {
        /// The index.
        x: u64,
    },
    /// A share's value is not a field element.
    #[error("share {x} holds a value outside the field")]
    ValueOutOfField {
        /// The share's index.
        x: u64,
    },
    /// The shares interpolate to something that is no encoded secret: they come from different
    /// polynomials or were altered.
    #[error("the shares do not interpolate to a secret")]
    NotASecret,
}

/// Splits `secret` into one share per evaluation point of `xs`, any `threshold` of which rebuild
/// it. Coefficients are drawn from `rng`.
pub fn split<R: Rng + ?Sized>(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    xs: &[u64],
    rng: &mut R,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if xs.len() < threshold {
        return Err(ShamirError::TooFewHolders { threshold, holders: xs.len() });
    }
    check_indices(xs.iter().copied())?;
    let limbs = to_limbs(secret);
    // coefficients[l] = [limb, a_1, …, a_{t−1}] for limb l.
    let coefficients: Zeroizing<Vec<Vec<u64>>> = Zeroizing::new(
        limbs
            .iter()
            .map(|&limb| std::iter::once(limb).chain((1..threshold).map(|_| random_element(rng))).collect())
            .collect(),
    );
    Ok(xs
        .iter()
        .map(|&x| {
            let mut y = [0; LIMBS];
            for (yl, coeffs) in y.iter_mut().zip(coefficients.iter()) {
                *yl = coeffs.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c));
            }
            Share { x, y }
        })
        .collect())
}

/// Rebuilds a secret from at least `threshold` shares (the first `threshold` are used).
pub fn combine(shares: &[Share], threshold: usize) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if shares.len() < threshold {
        return Err(ShamirError::TooFewShares { got: shares.len(), need: threshold });
    }
    check_indices(shares.iter().map(|s| s.x))?;
    if let Some(bad) = shares.iter().find(|s| s.y.iter().any(|&y| y >= P)) {
        return Err(ShamirError::ValueOutOfField { x: bad.x });
    }
    let first: Vec<&Share> = shares[..threshold].iter().collect();
    from_limbs(&interpolate_at_zero(&first))
}

/// Lagrange interpolation at 0 of the polynomials through `shares`, whatever their number
/// (no validation: indices must be distinct, nonzero field elements).
pub(crate) fn interpolate_at_zero(shares: &[&Share]) -> Zeroizing<[u64; LIMBS]> {
    interpolate_at(shares, 0)
}

/// Lagrange interpolation at `x` of the polynomials through `shares` (no validation: indices
/// must be distinct field elements).
pub(crate) fn interpolate_at(shares: &[&Share], x: u64) -> Zeroizing<[u64; LIMBS]> {
    let mut limbs = Zeroizing::new([0; LIMBS]);
    for (j, sj) in shares.iter().enumerate() {
        // λ_j = Π_{m≠j} (x − x_m) / (x_j − x_m)
        let (mut num, mut den) = (1, 1);
        for (m, sm) in shares.iter().enumerate() {
            if m != j {
                num = mul(num, sub(x, sm.x));
                den = mul(den, sub(sj.x, sm.x));
            }
        }
        let lambda = mul(num, inverse(den));
        for (limb, &y) in limbs.iter_mut().zip(&sj.y) {
            *limb = add(*limb, mul(lambda, y));
        }
    }
    limbs
}

/// Rebuilds a secret from the `threshold` shares of `subset` (indices into `shares`, already
/// validated: distinct nonzero indices, values in the field).
pub(crate) fn combine_subset(shares: &[&Share], subset: &[usize]) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    let chosen: Vec<&Share> = subset.iter().filter_map(|&i| shares.get(i).copied()).collect();
    from_limbs(&interpolate_at_zero(&chosen))
}

/// Whether `share` lies on the polynomials through the shares `subset` of `shares`.
pub(crate) fn consistent(shares: &[&Share], subset: &[usize], share: &Share) -> bool {
    let chosen: Vec<&Share> = subset.iter().filter_map(|&i| shares.get(i).copied()).collect();
    *interpolate_at(&chosen, share.x) == share.y
}

/// Calls `accept` on `threshold`-subsets of `0..len` (as sorted index lists), the first
/// `threshold` indices first, then by increasing largest index (so a subset avoiding one bad
/// share among the first `threshold + 1` comes within `threshold + 1` tries), until it returns
/// `true` or `budget` subsets were tried. Returns the accepted subset.
pub(crate) fn search_subsets(
    len: usize,
    threshold: usize,
    budget: usize,
    mut accept: impl FnMut(&[usize]) -> bool,
) -> Option<Vec<usize>> {
    if threshold == 0 || threshold > len {
        return None;
    }
    let mut tried = 0;
    // Subsets whose largest index is `last`: every (t − 1)-subset of 0..last, plus `last`.
    for last in threshold - 1..len {
        let k = threshold - 1;
        let mut combo: Vec<usize> = (0..k).collect();
        loop {
            if tried == budget {
                return None;
            }
            tried += 1;
            let mut subset = combo.clone();
            subset.push(last);
            if accept(&subset) {
                return Some(subset);
            }
            // Next k-combination of 0..last in lexicographic order.
            let Some(i) = (0..k).rev().find(|&i| combo[i] < last - k + i) else { break };
            combo[i] += 1;
            for j in i + 1..k {
                combo[j] = combo[j - 1] + 1;
            }
        }
    }
    None
}

fn valid_index(x: u64) -> bool {
    x != 0 && x < P
}

fn check_indices(xs: impl Iterator<Item = u64>) -> Result<(), ShamirError> {
    let mut seen = std::collections::BTreeSet::new();
    for x in xs {
        if !valid_index(x) {
            return Err(ShamirError::InvalidIndex { x });
        }
        if !seen.insert(x) {
            return Err(ShamirError::DuplicateIndex { x });
        }
    }
    Ok(())
}

fn to_limbs(secret: &[u8; SECRET_LEN]) -> Zeroizing<[u64; LIMBS]> {
    let mut limbs = Zeroizing::new([0; LIMBS]);
    for (limb, chunk) in limbs.iter_mut().zip(secret.chunks(LIMB_BYTES)) {
        let mut bytes = Zeroizing::new([0u8; 8]);
        bytes[..chunk.len()].copy_from_slice(chunk);
        *limb = u64::from_le_bytes(*bytes);
    }
    limbs
}

fn from_limbs(limbs: &[u64; LIMBS]) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    for (limb, chunk) in limbs.iter().zip(secret.chunks_mut(LIMB_BYTES)) {
        if limb >> (8 * chunk.len()) != 0 {
            return Err(ShamirError::NotASecret);
        }
        chunk.copy_from_slice(&limb.to_le_bytes()[..chunk.len()]);
    }
    Ok(secret)
}

/// A uniform field element (rejection sampling of 61-bit words).
fn random_element<R: Rng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let v = rng.next_u64() >> 3;
        if v < P {
            return v;
        }
    }
}

fn reduce(x: u128) -> u64 {
    // x < 2^122: two folds of 2^61 ≡ 1 bring it to ≤ p + 1.
    let p = u128::from(P);
    let r = (x & p) + (x >> 61);
    let r = (r & p) + (r >> 61);
    let r = r as u64;
    if r >= P { r - P } else { r }
}

pub(crate) fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

pub(crate) fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

pub(crate) fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

/// `a^(p−2)`, the inverse of a nonzero `a` (Fermat).
fn inverse(a: u64) -> u64 {
    let (mut base, mut exp, mut acc) = (a, P - 2, 1);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        exp >>= 1;
    }
    acc
}
