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

/// The process exit status of a command's result; an error is printed with its whole chain
/// of context first.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
