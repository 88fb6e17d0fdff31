//! `flotilla-sim-client`: the edge daemon's code (`flotilla_client`) with the harnesses that
//! devices do not ship: many virtual clients in one process (`fleet`), the `fleet-round`
//! benchmark's clients, the batched-learner benchmark, and `run --attack` (a Byzantine client
//! of the fleet simulator).

mod bench_batched;
mod fleet;
mod fleet_round;

use clap::{Parser, Subcommand};
use flotilla_client::logging;
use flotilla_client::run::{self, Attack, RunOptions};

/// Every virtual client allocates and frees model-sized frames each round, all on the same
/// cores: mimalloc keeps their pages instead of handing them back to the kernel each time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flotilla's harness client: virtual fleets, benchmarks and Byzantine clients.
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
    /// The daemon (`flotilla-client run`), optionally as a Byzantine client.
    Run {
        #[command(flatten)]
        options: RunOptions,
        /// Corrupt every update this client sends, as a Byzantine client would
        /// (`sign-flip`, `scale` ×100, or `nan`).
        #[arg(long, value_name = "KIND")]
        attack: Option<Attack>,
    },
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
        Command::Run { options, attack } => run::run_with(options, attack),
        Command::Fleet(args) => fleet::run(args),
        Command::FleetRound(args) => fleet_round::run(args),
        Command::BenchBatched(args) => bench_batched::run(args).map(|_| ()),
    };
    flotilla_client::exit_code(result)
}
