//! The public neighbour graph of SecAgg+: who masks with whom and who holds whose shares.
//!
//! The clients are placed on a ring in an order drawn from the session id (a Fisher–Yates
//! shuffle of the sorted ids driven by ChaCha20 seeded with SHA-256 of the session id), and each
//! is joined to the `⌊d/2⌋` clients on either side of it, plus the one opposite when the degree
//! `d` is odd: a Harary graph `H(d, n)` on a random permutation, `d`-regular, symmetric and the
//! same for everyone who knows the session id and the cohort. `d = k`, or `k + 1` when `k` and
//! `n` are both odd (no `k`-regular graph exists then, see [`super::SecAggParams::degree`]);
//! with `k = n − 1` it is the complete graph. The ring keeps the graph connected whatever the
//! permutation, and the random order keeps the server from choosing whose neighbours collude.
//!
//! Neighbourhoods on a ring overlap: with `t > d/2`, a client left out for want of live
//! neighbours usually leaves its ring neighbours short as well, so losses concentrated around
//! one client tend to end the session, while dropouts spread at random rarely do. Both sides
//! keep the whole graph, `n × d` ids: use `k = O(log n)` rather than the complete graph for
//! large cohorts (its `n²` ids, DH agreements and PRG streams are what SecAgg+ avoids).

use std::collections::BTreeSet;

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::{SEED_LEN, SecAggError};

/// Neighbour lists of a cohort, each sorted by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourGraph {
    ids: Vec<u64>,
    neighbours: Vec<Vec<u64>>,
}

impl NeighbourGraph {
    /// Builds the graph of `cohort` (strictly ascending ids) with `k` neighbours per client from
    /// the public `seed`.
    pub fn new(seed: &[u8; SEED_LEN], cohort: &[u64], k: usize) -> Result<Self, SecAggError> {
        if cohort.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SecAggError::CohortNotSorted);
        }
        let n = cohort.len();
        if k == 0 {
            return Err(super::ParamsError::NoNeighbours.into());
        }
        if k >= n {
            return Err(super::ParamsError::TooManyNeighbours { neighbours: k, cohort: n }.into());
        }
        let degree = if k + 1 < n && k % 2 == 1 && n % 2 == 1 { k + 1 } else { k };
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha20Rng::from_seed(
            Sha256::new().chain_update(b"flotilla/secagg/v1 graph").chain_update(seed).finalize().into(),
        );
        for i in (1..n).rev() {
            let j = uniform_below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut offsets: BTreeSet<usize> = BTreeSet::new();
        for o in 1..=degree / 2 {
            offsets.insert(o);
            offsets.insert(n - o);
        }
        if degree % 2 == 1 {
            offsets.insert(n / 2);
        }
        let mut neighbours = vec![Vec::with_capacity(degree); n];
        for (position, &member) in order.iter().enumerate() {
            let list = &mut neighbours[member];
            list.extend(offsets.iter().map(|o| cohort[order[(position + o) % n]]));
            list.sort_unstable();
        }
        Ok(Self { ids: cohort.to_vec(), neighbours })
    }

    /// The cohort, ascending.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The neighbours of `id`, ascending; `None` for an id outside the cohort.
    pub fn neighbours(&self, id: u64) -> Option<&[u64]> {
        self.ids.binary_search(&id).ok().map(|i| self.neighbours[i].as_slice())
    }

    /// Whether `a` and `b` are neighbours.
    pub fn are_neighbours(&self, a: u64, b: u64) -> bool {
        self.neighbours(a).is_some_and(|list| list.binary_search(&b).is_ok())
    }

    /// The Shamir evaluation point of `holder`'s share of `owner`'s secrets: one more than
    /// `holder`'s rank among `owner`'s neighbours. `None` when they are not neighbours.
    pub fn share_index(&self, owner: u64, holder: u64) -> Option<u64> {
        let rank = self.neighbours(owner)?.binary_search(&holder).ok()?;
        Some(rank as u64 + 1)
    }
}

/// A uniform integer in `[0, bound)` (rejection sampling, no modulo bias); `bound ≥ 1`.
fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let v = rng.next_u64();
        if v < zone {
            return v % bound;
        }
    }
}
