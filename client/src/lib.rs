//! `flotilla-client` as a library: the edge daemon's commands, used by its binary and by the
//! simulator's harness binary (`flotilla-sim-client` in `sim/`: virtual fleets, benchmarks,
//! Byzantine clients), which reuses the daemon's code without shipping in it.
//!
//! - [`run`]: the daemon (`flotilla-client run`): session, stream, learner, updates.
//! - [`learn`]: one prequential pass over a CSV (`flotilla-client learn`).
//! - [`model_args`]: the HBP model flags; [`logging`]: the log subscriber.

pub mod learn;
pub mod logging;
pub mod model_args;
pub mod run;

pub use flotilla_net::exit::exit_code;
