//! Hedge Backpropagation (Sahoo et al., IJCAI 2018, Algorithm 1) on burn tensors.
//!
//! - shape, hyper-parameters and flat layout: `flotilla_protocol::model::hbp` (re-exported here).
//! - `init`: Glorot-uniform weights drawn as NumPy's `RandomState` draws them.
//! - [`model`]: the tensors, their export to and import from the flat layout.
//! - `math`: forward pass, per-head losses, the analytic backward pass, the hedge update.
//! - `learner`: predict-then-update on a micro-batch.
//! - [`batched`]: many clients' networks stacked on a leading dimension, stepped together.
//! - [`fused`]: the whole step at micro-batch 1 in plain Rust over the flat vector (the
//!   fastest CPU path; a test holds it to the burn path).
//!
//! Form implemented: the paper's, with a head on the input too (optional); the prediction
//! mixes the heads' softmax *probabilities* with weights α; one backward pass of
//! `Σ_l α_l · CE_l` gives every update; α floored at `s / L` and renormalised after each step.

pub mod batched;
pub mod fused;
mod init;
mod learner;
pub(crate) mod math;
pub mod model;
#[cfg(test)]
mod tests;

pub use flotilla_protocol::model::hbp::{ConfigError, HbpConfig};
pub use fused::FusedHbp;
pub use learner::Batch;
pub use model::{HbpModel, ModelError};
