//! Client-level differential privacy: clipping, Gaussian noise and a Rényi-DP accountant.
//!
//! The unit of privacy is a client (DP-FedAvg: McMahan et al., "Learning Differentially
//! Private Recurrent Language Models", ICLR 2018): a round's output barely changes whether
//! any one client took part or not. A round goes:
//!
//! 1. each sampled client clips its delta to L2 norm `C` ([`clip_l2`]), so one client moves
//!    the sum of deltas by at most `C`;
//! 2. Gaussian noise of standard deviation `z·C` per coordinate, `z` the noise multiplier,
//!    is added to the sum of the clipped deltas ([`add_gaussian`]), either
//!    - **central DP**: by the coordinator, who sees every clipped delta and must be trusted
//!      ([`NoiseMultiplier::central_std`]), or
//!    - **distributed DP**, with secure aggregation: each of the `n` clients adds
//!      `z·C/√n` to its own delta ([`NoiseMultiplier::distributed_std`]), so that the sum
//!      the coordinator unmasks carries `z·C`. This assumes all `n` clients are honest: a
//!      client that leaves its noise out (or tells the coordinator what it drew) takes its
//!      share away, and with `h` honest clients the sum only carries `z·C·√(h/n)`. Dropouts
//!      do the same: if `m < n` of the noised deltas make it into the sum, it carries
//!      `z·C·√(m/n)`, and the round must be accounted with the multiplier `z·√(m/n)` (or the
//!      clients noised for the fewest survivors one plans for). Secure aggregation over a
//!      finite field also rounds the noised values; the continuous Gaussian accounted here
//!      ignores that discretisation;
//! 3. the noised sum is divided by a fixed, public denominator (the expected number of
//!    clients per round), not by the number that reported nor by sample counts: a weighted
//!    mean would give one client more influence than `C`;
//! 4. the [`RdpAccountant`] composes one subsampled Gaussian mechanism per round, with `z`
//!    and the rate `q` at which each client is sampled (Poisson sampling), and converts the
//!    total to (ε, δ).
//!
//! [`AdaptiveClip`] replaces a fixed `C` by one tracking a quantile of the clients' update
//! norms (Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS
//! 2021), at a small privacy cost explained there.
//!
//! Randomness comes from the caller's RNG; use a cryptographically secure one (e.g.
//! `chacha20::ChaCha20Rng`) seeded from the OS for real noise.

use rand_core::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Why a privacy parameter or request was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrivacyError {
    /// A clipping bound that is not a positive finite number.
    #[error("clipping bound {0} is not a positive finite number")]
    BadClip(f32),
    /// A noise multiplier or standard deviation that is negative or not finite.
    #[error("noise {0} is not a finite non-negative number")]
    BadNoise(f64),
    /// A target quantile outside [0, 1].
    #[error("target quantile {0} is not in [0, 1]")]
    BadQuantile(f64),
    /// A clip learning rate that is negative or not finite.
    #[error("clip learning rate {0} is not a finite non-negative number")]
    BadLearningRate(f64),
    /// An expected number of clients that is not a positive finite number.
    #[error("expected clients per round {0} is not a positive finite number")]
    BadExpectedClients(f64),
    /// More clients below the clip than reported at all.
    #[error("{below} clients below the clip out of {reported} reporting")]
    BadCount {
        /// Clients whose update norm was at most the clip.
        below: u64,
        /// Clients that reported.
        reported: u64,
    },
    /// A noised fraction that is not finite.
    #[error("fraction {0} is not finite")]
    BadFraction(f64),
    /// The noise on the clip count is too small for the requested noise multiplier:
    /// `2·σ_b` must exceed `z`.
    #[error("count noise {count_noise} is too small for noise multiplier {noise_multiplier} (needs 2·σ_b > z)")]
    CountNoiseTooSmall {
        /// The overall noise multiplier z.
        noise_multiplier: f64,
        /// σ_b.
        count_noise: f64,
    },
    /// A sampling rate outside [0, 1].
    #[error("sample rate {0} is not in [0, 1]")]
    BadSampleRate(f64),
    /// δ outside (0, 1).
    #[error("delta {0} is not in (0, 1)")]
    BadDelta(f64),
    /// An RDP order that is not in (1, [`MAX_ORDER`]].
    #[error("RDP order {0} is not in (1, {max}]", max = MAX_ORDER)]
    BadOrder(f64),
    /// An accountant without orders.
    #[error("an RDP accountant needs at least one order")]
    NoOrders,
    /// RDP values and orders of different lengths.
    #[error("{rdp} RDP values for {orders} orders")]
    OrderCount {
        /// Orders given.
        orders: usize,
        /// RDP values given.
        rdp: usize,
    },
}

/// An L2 clipping bound: positive and finite.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f32", into = "f32")]
pub struct ClipBound(f32);

impl ClipBound {
    /// `bound` if it is positive and finite.
    pub fn new(bound: f32) -> Result<Self, PrivacyError> {
        if bound > 0.0 && bound.is_finite() { Ok(Self(bound)) } else { Err(PrivacyError::BadClip(bound)) }
    }

    /// The bound.
    pub fn get(self) -> f32 {
        self.0
    }
}

impl TryFrom<f32> for ClipBound {
    type Error = PrivacyError;

    fn try_from(bound: f32) -> Result<Self, Self::Error> {
        Self::new(bound)
    }
}

impl From<ClipBound> for f32 {
    fn from(bound: ClipBound) -> Self {
        bound.0
    }
}

pub use crate::kernels::l2_norm;

/// Scales `values` down to L2 norm `bound` if their norm exceeds it, and returns their
/// original norm (the factor applied is `min(1, bound / norm)`).
///
/// Values must be finite: with a non-finite norm they are left as they are.
pub fn clip_l2(values: &mut [f32], bound: ClipBound) -> f32 {
    let norm = l2_norm(values);
    let bound = f64::from(bound.get());
    if norm.is_finite() && norm > bound {
        let factor = bound / norm;
        for value in values.iter_mut() {
            *value = (f64::from(*value) * factor) as f32;
        }
    }
    norm as f32
}

/// Adds independent Gaussian noise of standard deviation `std` to every value.
pub fn add_gaussian<R: Rng + ?Sized>(values: &mut [f32], std: f64, rng: &mut R) -> Result<(), PrivacyError> {
    if !(std >= 0.0 && std.is_finite()) {
        return Err(PrivacyError::BadNoise(std));
    }
    if std > 0.0 {
        for value in values.iter_mut() {
            let noise: f64 = StandardNormal.sample(rng);
            *value = (f64::from(*value) + std * noise) as f32;
        }
    }
    Ok(())
}

/// The noise multiplier z: the noise's standard deviation on the sum over the clipping bound.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct NoiseMultiplier(f64);

impl NoiseMultiplier {
    /// `z` if it is finite and non-negative.
    pub fn new(z: f64) -> Result<Self, PrivacyError> {
        if z >= 0.0 && z.is_finite() { Ok(Self(z)) } else { Err(PrivacyError::BadNoise(z)) }
    }

    /// z.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Central DP: the standard deviation `z·C` the coordinator adds to the sum of the
    /// clipped deltas.
    pub fn central_std(self, clip: ClipBound) -> f64 {
        self.0 * f64::from(clip.get())
    }

    /// Distributed DP: the standard deviation `z·C/√n` each of `clients` adds to its own
    /// clipped delta before secure aggregation, so that the sum of all `n` carries `z·C`.
    ///
    /// Only if all `n` are honest and all `n` make it into the sum: see the module docs.
    pub fn distributed_std(self, clip: ClipBound, clients: std::num::NonZeroUsize) -> f64 {
        self.central_std(clip) / (clients.get() as f64).sqrt()
    }
}

impl TryFrom<f64> for NoiseMultiplier {
    type Error = PrivacyError;

    fn try_from(z: f64) -> Result<Self, Self::Error> {
        Self::new(z)
    }
}

impl From<NoiseMultiplier> for f64 {
    fn from(z: NoiseMultiplier) -> Self {
        z.0
    }
}

/// The noise multiplier for the deltas when adaptive clipping also noises the clip count
/// with standard deviation `count_noise` (σ_b), so that both together are accounted as one
/// Gaussian mechanism with multiplier `z`: `z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)` (Andrew et al.
/// 2021). Needs `2σ_b > z`; `z = 0` gives 0.
pub fn update_noise_multiplier(z: f64, count_noise: f64) -> Result<f64, PrivacyError> {
    if !(z >= 0.0 && z.is_finite()) {
        return Err(PrivacyError::BadNoise(z));
    }
    if !(count_noise >= 0.0 && count_noise.is_finite()) {
        return Err(PrivacyError::BadNoise(count_noise));
    }
    if z == 0.0 {
        return Ok(0.0);
    }
    if 2.0 * count_noise <= z {
        return Err(PrivacyError::CountNoiseTooSmall { noise_multiplier: z, count_noise });
    }
    Ok((z.powi(-2) - (2.0 * count_noise).powi(-2)).powf(-0.5))
}

/// The noise multiplier to account a round with when the deltas carry `update_z` (z_Δ) and
/// the clip count `count_noise` (σ_b): `(z_Δ⁻² + (2σ_b)⁻²)^(−1/2)`, smaller than both.
pub fn combined_noise_multiplier(update_z: f64, count_noise: f64) -> f64 {
    (update_z.powi(-2) + (2.0 * count_noise).powi(-2)).powf(-0.5)
}

/// Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive
/// Clipping", 2021): a clipping bound `C` that tracks the `γ`-quantile of the update norms.
///
/// Each round, every reporting client also tells whether its update norm was at most the
/// round's `C` (`b_i ∈ {0, 1}`, counted before clipping). The coordinator estimates the
/// fraction of such clients privately, centring the bits so that one client moves their sum
/// by ½ (as TensorFlow Privacy's quantile estimator does):
///
/// `b̄ = (Σ(b_i − ½) + N(0, σ_b²)) / m + ½`,  `m` the expected number of clients per round,
///
/// and takes the geometric step `C ← C·exp(−η_C·(b̄ − γ))`: `C` shrinks while more than `γ` of
/// the updates fit under it and grows otherwise.
///
/// **Accounting.** The count is a second Gaussian mechanism on the same clients, with
/// sensitivity ½ and noise σ_b, i.e. multiplier `2σ_b`. Composed with the deltas' mechanism
/// (multiplier `z_Δ`) it is equivalent to one Gaussian mechanism with multiplier
/// `z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2)` ([`combined_noise_multiplier`]). To keep a target `z` for the
/// [`RdpAccountant`], noise the deltas with `z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`
/// ([`AdaptiveClip::update_noise_multiplier`]) and give the accountant `z`. Andrew et al.
/// suggest `σ_b = m/20`, which costs little: with `m = 100` and `z = 1`, `z_Δ ≈ 1.005`.
/// With distributed DP the clients noise their bits too and the coordinator computes `b̄` from
/// the unmasked sum ([`AdaptiveClip::update_with_fraction`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveClip {
    clip: f64,
    target_quantile: f64,
    learning_rate: f64,
    count_noise: f64,
    expected_clients: f64,
}

impl AdaptiveClip {
    /// Starts at `initial`, tracking quantile `target_quantile` (γ) with learning rate
    /// `learning_rate` (η_C, Andrew et al. use 0.2), the count noised with standard deviation
    /// `count_noise` (σ_b) and divided by `expected_clients` (m).
    pub fn new(
        initial: ClipBound,
        target_quantile: f64,
        learning_rate: f64,
        count_noise: f64,
        expected_clients: f64,
    ) -> Result<Self, PrivacyError> {
        if !(0.0..=1.0).contains(&target_quantile) {
            return Err(PrivacyError::BadQuantile(target_quantile));
        }
        if !(learning_rate >= 0.0 && learning_rate.is_finite()) {
            return Err(PrivacyError::BadLearningRate(learning_rate));
        }
        if !(count_noise >= 0.0 && count_noise.is_finite()) {
            return Err(PrivacyError::BadNoise(count_noise));
        }
        if !(expected_clients > 0.0 && expected_clients.is_finite()) {
            return Err(PrivacyError::BadExpectedClients(expected_clients));
        }
        Ok(Self { clip: f64::from(initial.get()), target_quantile, learning_rate, count_noise, expected_clients })
    }

    /// Sets the cohort of the next round: the count is noised with `count_noise` (σ_b) and
    /// divided by `expected_clients` (m).
    pub fn set_cohort(&mut self, expected_clients: f64, count_noise: f64) -> Result<(), PrivacyError> {
        if !(count_noise >= 0.0 && count_noise.is_finite()) {
            return Err(PrivacyError::BadNoise(count_noise));
        }
        if !(expected_clients > 0.0 && expected_clients.is_finite()) {
            return Err(PrivacyError::BadExpectedClients(expected_clients));
        }
        self.expected_clients = expected_clients;
        self.count_noise = count_noise;
        Ok(())
    }

    /// Whether every value is in the range [`AdaptiveClip::new`] accepts, with a finite
    /// positive clip (for state read back from a file).
    pub fn is_valid(&self) -> bool {
        self.clip.is_finite()
            && self.clip > 0.0
            && (0.0..=1.0).contains(&self.target_quantile)
            && self.learning_rate >= 0.0
            && self.learning_rate.is_finite()
            && self.count_noise >= 0.0
            && self.count_noise.is_finite()
            && self.expected_clients > 0.0
            && self.expected_clients.is_finite()
    }

    /// The current clipping bound.
    pub fn clip(&self) -> ClipBound {
        ClipBound(self.clip as f32)
    }

    /// γ.
    pub fn target_quantile(&self) -> f64 {
        self.target_quantile
    }

    /// σ_b.
    pub fn count_noise(&self) -> f64 {
        self.count_noise
    }

    /// The noise multiplier for the deltas so that the round is accounted with `z`
    /// ([`update_noise_multiplier`] with this σ_b).
    pub fn update_noise_multiplier(&self, z: f64) -> Result<f64, PrivacyError> {
        update_noise_multiplier(z, self.count_noise)
    }

    /// The noised fraction `b̄` of clients whose update norm was at most the clip, from
    /// `below` of the `reported` clients.
    pub fn noised_fraction<R: Rng + ?Sized>(
        &self,
        below: u64,
        reported: u64,
        rng: &mut R,
    ) -> Result<f64, PrivacyError> {
        if below > reported {
            return Err(PrivacyError::BadCount { below, reported });
        }
        let noise: f64 = if self.count_noise > 0.0 { StandardNormal.sample(rng) } else { 0.0 };
        let centred = below as f64 - 0.5 * reported as f64 + self.count_noise * noise;
        Ok(centred / self.expected_clients + 0.5)
    }

    /// One round: noises the count of `below` of `reported` clients and steps the clip.
    pub fn update<R: Rng + ?Sized>(
        &mut self,
        below: u64,
        reported: u64,
        rng: &mut R,
    ) -> Result<ClipBound, PrivacyError> {
        let fraction = self.noised_fraction(below, reported, rng)?;
        self.update_with_fraction(fraction)
    }

    /// The geometric step `C ← C·exp(−η_C·(b̄ − γ))` for an already noised fraction `b̄`.
    pub fn update_with_fraction(&mut self, fraction: f64) -> Result<ClipBound, PrivacyError> {
        if !fraction.is_finite() {
            return Err(PrivacyError::BadFraction(fraction));
        }
        let next = self.clip * (-self.learning_rate * (fraction - self.target_quantile)).exp();
        self.clip = next.clamp(f64::from(f32::MIN_POSITIVE), f64::from(f32::MAX));
        Ok(self.clip())
    }
}

/// Largest RDP order accepted (the cost of an order grows with it).
pub const MAX_ORDER: f64 = 1e6;

/// The orders Opacus's RDP accountant uses by default: 1.1, 1.2, …, 10.9 and 12, 13, …, 63.
pub fn default_orders() -> Vec<f64> {
    (1..100).map(|x| 1.0 + f64::from(x) / 10.0).chain((12..64).map(f64::from)).collect()
}

/// A Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism (Mironov, Talwar &
/// Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism", 2019), as in
/// Opacus's `analysis/rdp.py` and TensorFlow Privacy's `rdp_accountant.py`.
///
/// Each step adds the mechanism's RDP at every order (RDP composes additively); [`epsilon`]
/// converts the total to (ε, δ)-DP with the conversion of Balle et al., "Hypothesis Testing
/// Interpretations and Rényi Differential Privacy", AISTATS 2020, Theorem 21 — the one
/// Opacus's `get_privacy_spent` uses — minimised over the orders.
///
/// [`epsilon`]: RdpAccountant::epsilon
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    steps: u64,
}

impl Default for RdpAccountant {
    /// An accountant over [`default_orders`].
    fn default() -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp, steps: 0 }
    }
}

impl RdpAccountant {
    /// An accountant over `orders`, each in (1, [`MAX_ORDER`]]; nothing spent yet.
    pub fn new(orders: Vec<f64>) -> Result<Self, PrivacyError> {
        if orders.is_empty() {
            return Err(PrivacyError::NoOrders);
        }
        if let Some(&order) = orders.iter().find(|order| !(**order > 1.0 && **order <= MAX_ORDER)) {
            return Err(PrivacyError::BadOrder(order));
        }
        let rdp = vec![0.0; orders.len()];
        Ok(Self { orders, rdp, steps: 0 })
    }

    /// The orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The RDP spent so far, order by order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// Steps composed so far.
    pub fn composed_steps(&self) -> u64 {
        self.steps
    }

    /// Composes one step of the Gaussian mechanism with `noise_multiplier` (z), each client
    /// sampled with probability `sample_rate` (q).
    pub fn step(&mut self, noise_multiplier: f64, sample_rate: f64) -> Result<(), PrivacyError> {
        self.steps(noise_multiplier, sample_rate, 1)
    }

    /// Composes `steps` identical steps.
    pub fn steps(&mut self, noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<(), PrivacyError> {
        if !(noise_multiplier >= 0.0 && noise_multiplier.is_finite()) {
            return Err(PrivacyError::BadNoise(noise_multiplier));
        }
        if !(0.0..=1.0).contains(&sample_rate) {
            return Err(PrivacyError::BadSampleRate(sample_rate));
        }
        if steps == 0 {
            return Ok(());
        }
        for (total, &order) in self.rdp.iter_mut().zip(&self.orders) {
            *total += steps as f64 * subsampled_gaussian_rdp(sample_rate, noise_multiplier, order);
        }
        self.steps = self.steps.saturating_add(steps);
        Ok(())
    }

    /// The smallest ε such that the steps so far are (ε, δ)-DP, and the order achieving it.
    ///
    /// `(0, NaN)` when nothing was spent, `(∞, NaN)` when no order gives a finite ε (e.g.
    /// after a step without noise).
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        rdp_to_epsilon(&self.orders, &self.rdp, delta)
    }
}

/// Converts RDP values `rdp` at `orders` to (ε, δ)-DP: the smallest over the orders α of
/// `rdp_α − (ln δ + ln α)/(α − 1) + ln((α − 1)/α)` (Balle et al. 2020, Theorem 21), clamped
/// at 0, with the order achieving it. Orders at or below 1 and NaN values are skipped.
///
/// `(0, NaN)` when every RDP value is 0, `(∞, NaN)` when no order gives a finite ε.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), PrivacyError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::BadDelta(delta));
    }
    if orders.len() != rdp.len() {
        return Err(PrivacyError::OrderCount { orders: orders.len(), rdp: rdp.len() });
    }
    if rdp.iter().all(|value| *value == 0.0) {
        return Ok((0.0, f64::NAN));
    }
    let mut best = (f64::INFINITY, f64::NAN);
    for (&order, &value) in orders.iter().zip(rdp) {
        if order.is_nan() || order <= 1.0 {
            continue;
        }
        let epsilon = value - (delta.ln() + order.ln()) / (order - 1.0) + ((order - 1.0) / order).ln();
        if epsilon < best.0 {
            best = (epsilon, order);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// The RDP at `order` (α) of one step of the Gaussian mechanism with noise multiplier `z`
/// applied to a Poisson sample of rate `q` (Mironov, Talwar & Zhang 2019, Section 3.3):
/// `ln(A_α)/(α − 1)`, with `A_α` summed exactly for integer orders and by the two-sided
/// series of that paper for fractional ones. Without subsampling (`q = 1`) it is the closed
/// form `α/(2z²)`.
///
/// 0 for `q = 0`; ∞ for `z = 0`, an infinite order or one above [`MAX_ORDER`] (a safe
/// upper bound). Inputs outside `q ∈ [0, 1]`, `z ≥ 0`, `α > 1` give meaningless values.
pub fn subsampled_gaussian_rdp(q: f64, z: f64, order: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if z == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return order / (2.0 * z * z);
    }
    if order.is_infinite() || order > MAX_ORDER {
        return f64::INFINITY;
    }
    let log_a = if order.fract() == 0.0 { log_a_integer(q, z, order as u64) } else { log_a_fractional(q, z, order) };
    log_a / (order - 1.0)
}

/// `ln(A_α)` for an integer α: `ln Σ_{i=0}^{α} C(α, i)·q^i·(1 − q)^(α−i)·exp((i² − i)/(2z²))`.
fn log_a_integer(q: f64, z: f64, order: u64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binomial = 0.0;
    for i in 0..=order {
        if i > 0 {
            log_binomial += ((order - i + 1) as f64).ln() - (i as f64).ln();
        }
        let i = i as f64;
        let term = log_binomial + i * log_q + (order as f64 - i) * log_1mq + (i * i - i) / (2.0 * z * z);
        log_a = log_add(log_a, term);
    }
    log_a
}

/// `ln(A_α)` for a fractional α: the two integrals over (−∞, z₀] and [z₀, ∞) as alternating
/// series in the generalised binomial coefficients, summed until both terms fall below e⁻³⁰.
fn log_a_fractional(q: f64, z: f64, order: f64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = z * z * (1.0 / q - 1.0).ln() + 0.5;
    let mut log_coef = 0.0; // ln |C(α, i)|
    let mut positive = true; // sign of C(α, i)
    // The terms decay like exp(−i²/(2z²)) once i passes α and z₀; stop at a generous bound.
    let limit = 10_000.0 + 10.0 * (order + z0.abs() + 40.0 * z);
    let mut i = 0.0f64;
    loop {
        if i > 0.0 {
            let factor = order - (i - 1.0);
            log_coef += factor.abs().ln() - i.ln();
            if factor < 0.0 {
                positive = !positive;
            }
        }
        let j = order - i;
        let log_t0 = log_coef + i * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + i * log_1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * z));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * z));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * z * z) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * z * z) + log_e1;
        if positive {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        i += 1.0;
        if log_s0.max(log_s1) < -30.0 {
            break;
        }
        if i > limit || log_a0.is_nan() || log_a1.is_nan() {
            // Not converging: no bound at this order.
            return f64::INFINITY;
        }
    }
    log_add(log_a0, log_a1)
}

/// `ln(eˣ + eʸ)`; NaN if either is.
fn log_add(x: f64, y: f64) -> f64 {
    let (low, high) = if x < y { (x, y) } else { (y, x) };
    if low == f64::NEG_INFINITY {
        return high;
    }
    (low - high).exp().ln_1p() + high
}

/// `ln(eˣ − eʸ)`; NaN if `x < y` (the series should never get there).
fn log_sub(x: f64, y: f64) -> f64 {
    if x < y || x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    if y == f64::NEG_INFINITY {
        return x;
    }
    if x == y {
        return f64::NEG_INFINITY;
    }
    let gap = x - y;
    // e^gap − 1 overflows past ~709; ln(e^gap − 1) = gap to within e^−gap there.
    if gap > 700.0 { x } else { gap.exp_m1().ln() + y }
}

/// `ln(erfc(x))`, accurate far into the tail where `erfc(x)` underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        return libm::erfc(x).ln();
    }
    // Asymptotic series at infinity; at x ≥ 25 its error is below 1e-13.
    let x2 = x * x;
    -0.5 * std::f64::consts::PI.ln() - x.ln() - x2 - 0.5 / x2 + 0.625 / (x2 * x2) - 37.0 / 24.0 / (x2 * x2 * x2)
        + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
}

#[cfg(test)]
mod tests;

/// The coordinator's secret key for central DP noise (also keying Poisson sampling and the
/// secure-aggregation session ids): 32 bytes from the operating system's generator, drawn at
/// every start and never written anywhere. The noise of round `r` comes from ChaCha20 keyed
/// with `SHA-256(key ‖ "noise" ‖ r)`: nobody who knows the public seed, the flags or the round
/// number can regenerate it. Its `Debug` shows no byte of it.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct NoiseKey(pub [u8; 32]);

impl std::fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseKey(<secret>)")
    }
}

impl NoiseKey {
    /// The seed of round `round`'s noise generator.
    pub fn round_seed(&self, round: u64) -> [u8; 32] {
        self.derive(b"noise", round)
    }

    /// The id of round `round`'s secure-aggregation session: unpredictable to anyone without
    /// the key (the public `--seed` and the round number do not determine it).
    pub fn secagg_session_id(&self, round: u64) -> [u8; 32] {
        self.derive(b"secagg-session", round)
    }

    /// The seed of round `round`'s generator for `purpose` (`SHA-256(key ‖ purpose ‖ round)`):
    /// independent streams for the noise, the secret coins of Poisson sampling and the
    /// secure-aggregation session ids.
    pub fn derive(&self, purpose: &[u8], round: u64) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update(purpose);
        hasher.update(round.to_le_bytes());
        hasher.finalize().into()
    }
}
