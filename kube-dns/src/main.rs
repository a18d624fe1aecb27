//! `ferry-kube-dns`: the cluster DNS of Ferry's real-node tests. See the library docs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Answers cluster DNS (A records of Services and StatefulSet pods) from the Kubernetes API"
)]
struct Args {
    /// The kubeconfig to reach the API with.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Address and UDP port to answer on.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain (kubelet's `--cluster-domain`).
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// How often to list Services and Endpoints, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_interval_ms: u64,
    /// TTL of the records, in seconds.
    #[arg(long, default_value_t = 5)]
    ttl_seconds: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("failed to read kubeconfig {}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("failed to load the kubeconfig")?;
    let client = kube::Client::try_from(config).context("failed to build a Kubernetes client")?;
    let socket = tokio::net::UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("failed to bind UDP {}", args.listen))?;
    tracing::info!(listen = %args.listen, domain = %args.domain, "serving cluster DNS");

    let (tables, table) = tokio::sync::watch::channel::<Option<Arc<_>>>(None);
    let poller = tokio::spawn(ferry_kube_dns::source::poll(
        client,
        args.domain,
        Duration::from_millis(args.poll_interval_ms),
        tables,
    ));
    tokio::select! {
        served = ferry_kube_dns::server::serve(socket, table, args.ttl_seconds) => {
            served.context("the DNS socket failed")
        }
        polled = poller => anyhow::bail!("the API poller stopped: {polled:?}"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
