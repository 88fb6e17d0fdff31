//! Tests of secure aggregation: primitives, and whole sessions driven in memory.

mod harness;
mod malformed;
mod primitives;
mod protocol;
mod robustness;
