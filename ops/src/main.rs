//! `aicp`: parse the command line, run one command, exit 0 (done), 1 (a check failed) or
//! 2 (the command could not run).

use std::process::ExitCode;

use aicp_ops::Cli;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// The projection allocates per record (replay); glibc's malloc cost a third of its time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: the output is the command's, logs go to stderr when asked for.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match aicp_ops::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aicp: {e}");
            ExitCode::from(2)
        }
    }
}
