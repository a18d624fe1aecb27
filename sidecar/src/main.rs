use std::process::ExitCode;

use clap::Parser;
use ferry_sidecar::config::{AdminCli, Cli};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: every storage request allocates and frees dozens of
/// small buffers (HTTP/2 frames, protobuf messages); measured at 64 writers, the sidecar's CPU
/// per write fell by a fifth (36 to 29 µs).
///
/// Its version 2 (the crate's `v2` feature), whose freed pages go back to the system 10 ms
/// later: version 3 waits a second, and then only on a later allocation, so a sidecar that went
/// quiet after a large transient (start-up recovery at a million keys, a reindex, a full copy)
/// kept it resident: 84 MiB above an empty cluster's, against 36 MiB with version 2 (the index
/// itself is 34 MiB; `ferry-bench --only memory`), at the same CPU per write.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.admin {
        Some(_) => 1,
        None => usize::from(cli.config.worker_threads),
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("failed to start the async runtime: {e}"))
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.admin {
                    Some(AdminCli::Admin {
                        storage_socket,
                        call,
                    }) => ferry_sidecar::admin_cli::run(&storage_socket, call).await,
                    None => serve(cli.config).await,
                }
            })
        });
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
