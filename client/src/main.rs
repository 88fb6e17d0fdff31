//! `flotilla-client`: the edge daemon. It learns online from a local stream with Hedge
//! Backpropagation; local data never leaves the device.

mod bench_batched;
mod fleet;
mod fleet_round;
mod learn;
mod logging;
mod model_args;
mod run;

use clap::{Parser, Subcommand};

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
    Run(run::RunOptions),
    /// Many virtual clients in one process, each with its own QUIC connection and learner.
    Fleet(fleet::FleetArgs),
    /// Virtual clients of the `fleet-round` benchmark: the production session, with the
    /// workload's formula instead of a learner (needs a `--vector-len` coordinator).
    FleetRound(fleet_round::FleetRoundArgs),
    /// Throughput of C clients' HBP learners stepped together as one batched learner versus
    /// one by one, on synthetic rows; prints a JSON line.
    BenchBatched(bench_batched::BenchBatchedArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Learn(args) => learn::run(args).map(|_| ()),
        Command::Run(options) => run::run(options),
        Command::Fleet(args) => fleet::run(args),
        Command::FleetRound(args) => fleet_round::run(args),
        Command::BenchBatched(args) => bench_batched::run(args).map(|_| ()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
