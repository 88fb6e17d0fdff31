//! Flotilla's model tools: what a trained global model becomes on its way to deployment.
//!
//! Module map:
//! - [`onnx`]: the ONNX graph of a served network (`onnx.proto`'s messages with prost), f32,
//!   sparse or int8 weights, the heads' mix per head or fused.
//! - [`fuse`]: the standardiser folded into the first layer and the input head, its clip kept
//!   as a clamp on raw features.
//! - [`prune`]: magnitude pruning (per layer, and the mask of a flat HBP vector for federated
//!   fine-tuning) and depth pruning guided by α.
//! - [`quantize`]: symmetric per-output-unit int8 weights.
//! - [`distill`]: a small HBP student trained on the teacher's softened probabilities.
//! - [`rows`]: reading rows to distil on or evaluate with.
//!
//! The network these transform is `flotilla_learner::network::Network`, whose forward pass
//! is the one the HTTP API serves; each transformation returns a network that can be
//! evaluated, measured and exported like the original.

pub mod distill;
pub mod fuse;
pub mod onnx;
pub mod prune;
pub mod quantize;
pub mod rows;
