use std::process::ExitCode;

use clap::Parser;
use ferry_vault::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry-vault: invalid --log filter {:?}: {e}", config.log);
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match ferry_vault::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-vault: {e:#}");
            ExitCode::FAILURE
        }
    }
}
