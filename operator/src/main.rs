use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_operator::controller::{self, Context};
use ferry_operator::leader::Elector;
use ferry_operator::metrics::{self, Metrics};
use kube::runtime::events::{Recorder, Reporter};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// ferry-operator: reconciles ReplicationCluster resources against each region's Vault-like
/// cluster through its replication API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the ReplicationCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (the Kubernetes connection comes from KUBECONFIG or the pod's
    /// service account).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (the RBAC the project ships grants one namespace). Default:
    /// the pod's namespace from POD_NAMESPACE, else every namespace.
    #[arg(long, env = "FERRY_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(
        long,
        env = "FERRY_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// The Lease replicas elect their leader with (in the watched namespace).
    #[arg(long, default_value = "ferry-operator")]
    lease_name: String,
    /// Namespace of the Lease; default: the watched namespace, else `default`.
    #[arg(long)]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease; default: POD_NAME, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How often a settled resource's status is refreshed, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    resync_seconds: u64,
    /// Log format: `text` or `json` (structured, one object per line).
    #[arg(long, env = "FERRY_LOG_FORMAT", default_value = "json", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter, in `tracing` syntax.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", ferry_operator::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let filter = match EnvFilter::try_new(&args.log) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ferry-operator: invalid --log filter {:?}: {e}", args.log);
                    return ExitCode::FAILURE;
                }
            };
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            if args.log_format == "json" {
                builder.json().init();
            } else {
                builder.init();
            }
            match run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "ferry-operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("failed to configure the Kubernetes client (KUBECONFIG or in-cluster): {e}")
    })?;
    let namespace = args
        .namespace
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|n| !n.is_empty());
    let lease_namespace = args
        .lease_namespace
        .or_else(|| namespace.clone())
        .unwrap_or_else(|| "default".into());
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "ferry-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let metrics = Arc::new(Metrics::default());
    {
        let metrics = metrics.clone();
        let addr = args.metrics_addr;
        ferry_proto::tasks::spawn_reported("metrics", async move {
            if let Err(e) = metrics::serve(addr, metrics).await {
                error!(error = %format!("{e:#}"), "the metrics endpoint failed");
                std::process::exit(1);
            }
        });
    }
    let elector = Elector::new(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
    );
    elector.acquire().await;
    metrics
        .leader
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "ferry-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        client,
        metrics: metrics.clone(),
        resync: Duration::from_secs(args.resync_seconds),
        unreachable: Default::default(),
    });
    info!(namespace = namespace.as_deref().unwrap_or("<all>"), %identity, "reconciling ReplicationClusters");
    tokio::select! {
        () = controller::run(ctx, namespace) => {
            info!("shut down");
            Ok(())
        }
        () = elector.keep() => {
            metrics.leader.store(false, std::sync::atomic::Ordering::Relaxed);
            anyhow::bail!("lost the leader lease: exiting so that a restart joins as a follower")
        }
    }
}
