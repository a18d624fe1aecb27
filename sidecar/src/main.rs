use std::process::ExitCode;

use clap::Parser;
use ferry_sidecar::config::{AdminCli, Cli};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.admin {
        Some(AdminCli::Admin {
            storage_socket,
            call,
        }) => ferry_sidecar::admin_cli::run(&storage_socket, call).await,
        None => serve(cli.config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain, whatever RUST_BACKTRACE says.
            eprintln!("ferry-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ferry_sidecar::config::Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log)?)
        .with_writer(std::io::stderr)
        .init();
    ferry_sidecar::run(config).await
}
