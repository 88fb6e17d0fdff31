//! Server optimisers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).
//!
//! Each turns the round's pseudo-gradient Δ into the step `d`; the aggregator then applies
//! `x ← x + η_s·d`. Their state (m, v: one `f64` per parameter each) starts at zero, persists
//! across rounds, and restarts from zero if the model's length changes. It is not yet saved
//! in the checkpoint.

/// Turns a round's pseudo-gradient into the server's step, updating its own state.
pub trait ServerOptimizer {
    /// Replaces `delta` (Δ) by the step `d`, in place.
    fn step(&mut self, delta: &mut [f64]);
}

/// FedAvg: `d = Δ`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sgd;

impl ServerOptimizer for Sgd {
    fn step(&mut self, _delta: &mut [f64]) {}
}

/// FedAvgM: `m ← β1·m + Δ`, `d = m`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Momentum {
    beta1: f64,
    m: Vec<f64>,
}

impl Momentum {
    /// Momentum with decay `beta1`.
    pub fn new(beta1: f64) -> Self {
        Self { beta1, m: Vec::new() }
    }

    /// The momentum m (empty before the first step).
    pub fn momentum(&self) -> &[f64] {
        &self.m
    }
}

impl ServerOptimizer for Momentum {
    fn step(&mut self, delta: &mut [f64]) {
        fit(&mut self.m, delta.len());
        for (m, d) in self.m.iter_mut().zip(delta.iter_mut()) {
            *m = self.beta1 * *m + *d;
            *d = *m;
        }
    }
}

/// FedAdagrad: `v ← v + Δ²`, `d = Δ / (√v + τ)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adagrad {
    tau: f64,
    v: Vec<f64>,
}

impl Adagrad {
    /// Adagrad with adaptivity `tau`.
    pub fn new(tau: f64) -> Self {
        Self { tau, v: Vec::new() }
    }
}

impl ServerOptimizer for Adagrad {
    fn step(&mut self, delta: &mut [f64]) {
        fit(&mut self.v, delta.len());
        for (v, d) in self.v.iter_mut().zip(delta.iter_mut()) {
            *v += *d * *d;
            *d /= v.sqrt() + self.tau;
        }
    }
}

/// The first and second moments shared by [`Adam`] and [`Yogi`].
#[derive(Debug, Clone, Default, PartialEq)]
struct Moments {
    beta1: f64,
    beta2: f64,
    tau: f64,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Moments {
    /// `m ← β1·m + (1−β1)·Δ`, `v ← second(v, Δ², β2)`, `d = m / (√v + τ)`.
    fn step(&mut self, delta: &mut [f64], second: impl Fn(f64, f64, f64) -> f64) {
        fit(&mut self.m, delta.len());
        fit(&mut self.v, delta.len());
        for ((m, v), d) in self.m.iter_mut().zip(self.v.iter_mut()).zip(delta.iter_mut()) {
            *m = self.beta1 * *m + (1.0 - self.beta1) * *d;
            *v = second(*v, *d * *d, self.beta2);
            *d = *m / (v.sqrt() + self.tau);
        }
    }
}

/// FedAdam: `m ← β1·m + (1−β1)·Δ`, `v ← β2·v + (1−β2)·Δ²`, `d = m / (√v + τ)` (no bias correction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adam(Moments);

impl Adam {
    /// Adam with decays `beta1`, `beta2` and adaptivity `tau`.
    pub fn new(beta1: f64, beta2: f64, tau: f64) -> Self {
        Self(Moments { beta1, beta2, tau, ..Moments::default() })
    }
}

impl ServerOptimizer for Adam {
    fn step(&mut self, delta: &mut [f64]) {
        self.0.step(delta, |v, d2, beta2| beta2 * v + (1.0 - beta2) * d2);
    }
}

/// FedYogi: as [`Adam`], but `v ← v − (1−β2)·Δ²·sign(v − Δ²)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Yogi(Moments);

impl Yogi {
    /// Yogi with decays `beta1`, `beta2` and adaptivity `tau`.
    pub fn new(beta1: f64, beta2: f64, tau: f64) -> Self {
        Self(Moments { beta1, beta2, tau, ..Moments::default() })
    }
}

impl ServerOptimizer for Yogi {
    fn step(&mut self, delta: &mut [f64]) {
        self.0.step(delta, |v, d2, beta2| v - (1.0 - beta2) * d2 * sign(v - d2));
    }
}

/// −1, 0 or 1 (`f64::signum` gives 1 for 0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Zeroes `state` unless it already has `len` values (first step, or another model).
fn fit(state: &mut Vec<f64>, len: usize) {
    if state.len() != len {
        state.clear();
        state.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests;
