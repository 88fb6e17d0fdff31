//! Flotilla's protocol core: everything a coordinator and a client agree on, without a learner.
//!
//! Module map:
//! - [`model`]: what a federation trains (an HBP network's shape and hyper-parameters, or a bare
//!   parameter vector) and the flat parameter layout derived from it.
//! - [`params`]: flat, versioned parameter vectors with a layout fingerprint (what crosses
//!   the wire and what checkpoints hold).
//! - [`wire`]: wire messages, protocol version, ALPN and length-prefixed framing (which can
//!   decode a model's, an update's or a masked input's values where they land).
//! - [`aggregate`]: streaming aggregation of client updates (sample-weighted FedAvg), robust
//!   strategies and server optimisers.
//! - [`compress`]: update compression (int8 quantisation, top-k with error feedback) and its
//!   wire type.
//! - [`privacy`]: client-level differential privacy: clipping (fixed or adaptive), Gaussian
//!   noise (central or distributed) and an RDP accountant.
//! - [`round`]: the coordinator's round state machine and the client's session state machine.
//! - [`checkpoint`]: encoding and verification of the coordinator's durable state.
//! - [`secagg`]: secure aggregation (pairwise masking, SecAgg+): client and server state machines.
//! - [`workload`]: the `fleet-round` benchmark's model and client updates, and its f64 reference.
//! - [`kernels`]: the passes over whole vectors (finiteness, norm, weighted sum, workload
//!   noise, fixed-point encoding), compiled for the machine's widest instruction set and picked at run time.
//!
//! **Architecture Invariant:** this crate does not depend on burn (or any tensor library): the
//! I/O shell (`flotilla-net`) and the coordinator's protocol side build without the learner's
//! stack. The learner, which turns rows into updates, is `flotilla-learner`.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: callers pass time
//! in as arguments and perform the I/O that the state machines ask for.

pub mod aggregate;
pub mod checkpoint;
pub mod compress;
pub mod kernels;
pub mod model;
pub mod params;
pub mod privacy;
pub mod round;
pub mod secagg;
pub mod wire;
pub mod workload;
