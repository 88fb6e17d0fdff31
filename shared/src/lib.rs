//! Flotilla's sans-IO core, shared by the coordinator and the client daemons.
//!
//! Module map:
//! - [`hbp`]: the Hedge Backpropagation learner on burn tensors (any backend, chosen by
//!   `Device`); its configuration is the model spec a coordinator announces.
//! - [`compute`]: picking the device: burn-wgpu on Vulkan, or burn's flex CPU backend.
//! - [`model`]: what a federation trains: an HBP network or a bare parameter vector.
//! - [`params`]: flat, versioned parameter vectors with a layout fingerprint (what crosses
//!   the wire and what checkpoints hold).
//! - [`data`]: labelled CSV streams, row by row or whole, with line-numbered errors.
//! - [`standardize`]: online feature standardisation (no peeking at future rows).
//! - [`evaluate`]: a model's error on held-out rows (the coordinator's global error, baselines).
//! - [`prequential`]: test-then-train scoring and the one-pass runner.
//! - [`protocol`]: wire messages, protocol version, ALPN and length-prefixed framing.
//! - [`aggregate`]: streaming aggregation of client updates (sample-weighted FedAvg).
//! - [`compress`]: update compression (int8 quantisation, top-k with error feedback) and its
//!   wire type.
//! - [`privacy`]: client-level differential privacy: clipping (fixed or adaptive), Gaussian
//!   noise (central or distributed) and an RDP accountant.
//! - [`round`]: the coordinator's round state machine and the client's session state machine.
//! - [`checkpoint`]: encoding and verification of the coordinator's durable state.
//! - [`local`]: the client side of a round: local learner, contribution, rebase, durable state.
//! - [`personal`]: personalised prediction (Hedge over the local, global and prior-adapted
//!   global models) and FedLC logit calibration settings.
//! - [`workload`]: the `fleet-round` benchmark's model and client updates, and its f64 reference.
//! - [`secagg`]: secure aggregation (pairwise masking, SecAgg+): client and server state machines.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: callers pass time
//! in as arguments and perform the I/O that the state machines ask for.

pub mod aggregate;
pub mod checkpoint;
pub mod compress;
pub mod compute;
pub mod data;
pub mod evaluate;
pub mod hbp;
pub mod local;
pub mod model;
pub mod params;
pub mod personal;
pub mod prequential;
pub mod privacy;
pub mod protocol;
pub mod round;
pub mod secagg;
pub mod standardize;
pub mod workload;
