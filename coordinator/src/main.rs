//! `flotilla-coordinator`: the federated coordinator's command-line entry point.

use anyhow::Context;
use clap::Parser;
use flotilla_coordinator::{Options, tools};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Runs federated online learning rounds with Flotilla client daemons over QUIC; with a
/// subcommand, exports or distils a checkpoint's model instead.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    options: Options,
    /// Log line format on stderr (filter with RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

/// What to do instead of running the coordinator.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a checkpoint's served model as ONNX (optionally fused, pruned, int8), with a
    /// report of size, single-row latency and held-back error before and after.
    Export(tools::ExportArgs),
    /// Train a small student on a checkpoint's soft labels and write it as ONNX (and as a
    /// checkpoint a fleet can start from), with teacher vs student figures.
    Distill(tools::DistillArgs),
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,flotilla=info,flotilla_net=info,flotilla_coordinator=info"));
    // Without internal error logging: a closed stderr must not turn log lines into panics.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    flotilla_net::exit::exit_code(run(cli).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The process-wide TLS provider for the object stores' HTTPS client (`cloud` feature):
    // ring, as for QUIC. Fails only if one is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &cli.command {
        Some(Command::Export(args)) => return tools::export(args),
        Some(Command::Distill(args)) => return tools::distill(args),
        None => {}
    }
    let config = cli.options.resolve().context("configuration")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let Some(summary) = flotilla_coordinator::run(config, shutdown).await? else {
        tracing::info!("stopped while standing by");
        return Ok(());
    };
    tracing::info!(
        rounds_committed = summary.rounds_committed,
        round = summary.checkpoint.round,
        model_version = summary.checkpoint.model_version,
        "coordinator stopped"
    );
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let signal = flotilla_net::signal::shutdown_signal().await;
    shutdown.cancel();
    tracing::info!(signal, "shutting down");
}
