//! Flotilla's learner: Hedge Backpropagation on burn tensors and what a device does with a stream.
//!
//! Module map:
//! - [`hbp`]: the Hedge Backpropagation learner on burn tensors (any backend, chosen by
//!   `Device`); its configuration ([`flotilla_protocol::model::HbpConfig`]) is the model spec a
//!   coordinator announces.
//! - [`compute`]: picking the device: burn-wgpu on Vulkan, or burn's flex CPU backend.
//! - [`data`]: labelled CSV streams, row by row or whole, with line-numbered errors.
//! - [`standardize`]: online feature standardisation (no peeking at future rows).
//! - [`evaluate`]: a model's error on held-out rows (the coordinator's global error, baselines).
//! - [`infer`]: the served model: standardisation with the fleet's statistics and the forward
//!   pass in plain Rust, one row or a batch.
//! - [`packed`]: the served network packed for SIMD (AVX-512 / AVX2 picked at run time), the
//!   pass every served prediction takes.
//! - [`network`]: the served network as plain dense layers (input stage, ReLU trunk, heads,
//!   α-mix) with its forward pass; what export, fusion, pruning and quantisation reshape.
//! - [`prequential`]: test-then-train scoring and the one-pass runner.
//! - [`local`]: the client side of a round: local learner, contribution, rebase, durable state.
//! - [`personal`]: personalised prediction (Hedge over the local, global and prior-adapted
//!   global models) and FedLC logit calibration settings.
//!
//! It depends on `flotilla-protocol` for parameter vectors, model specs and checkpoint
//! envelopes; nothing there depends on this crate.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: callers pass time
//! in as arguments and perform the I/O that the state machines ask for.

pub mod compute;
pub mod data;
pub mod evaluate;
pub mod hbp;
pub mod infer;
pub mod local;
pub mod network;
pub mod packed;
pub mod personal;
pub mod prequential;
pub mod standardize;
