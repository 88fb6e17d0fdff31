//! `flotilla-client`: the edge daemon. It learns online from a local stream with Hedge
//! Backpropagation; local data never leaves the device. It ships only what a device runs
//! (`run`, `learn`); virtual fleets and benchmarks are `flotilla-sim-client`, in `sim/`.

use clap::{Parser, Subcommand};
use flotilla_client::{learn, logging, run};

/// Flotilla's edge daemon: online learning with Hedge Backpropagation.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One prequential (test-then-train) pass over a CSV stream; prints a JSON report.
    Learn(learn::LearnArgs),
    /// The daemon: join a coordinator, learn online from a local stream, send updates.
    Run(Box<run::RunOptions>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Learn(args) => learn::run(args).map(|_| ()),
        Command::Run(options) => run::run(*options),
    };
    flotilla_client::exit_code(result)
}
