//! ferry-sidecar: the replicated storage gateway of a Ferry cluster node.
//!
//! The Vault-like server reaches storage only through this sidecar, over a gRPC API on a Unix
//! socket. The sidecar is the only writer of its cluster's etcd keyspace (see [`keyspace`]). It
//! writes every update in one etcd transaction with its WAL entry under the cluster's write fence
//! ([`commit`], [`committer`], [`fence`]), keeps a merkle index of the replicated keys in memory ([`merkle`]),
//! flushes it in the background ([`flusher`]), recovers it after a crash ([`recovery`]), and
//! trims the WAL within its retention limits ([`wal::gc`]). It replicates between clusters
//! ([`replication`]) over the cluster port, and serves Vault's `sys/replication` API ([`api`]).
//!
//! Layering: [`path`], [`list`], [`codec`], [`merkle`] and [`wal::record`] are pure logic; the
//! other modules are thin shells around them that talk to etcd or gRPC.

pub mod admin_cli;
pub mod api;
pub mod codec;
pub mod commit;
pub mod committer;
pub mod config;
pub mod core;
pub mod error;
pub mod etcd;
pub mod etcd_connect;
pub mod fence;
pub mod flusher;
pub mod gateway;
pub mod grpc;
pub mod keyspace;
pub mod list;
pub mod merkle;
pub mod path;
pub mod recovery;
pub mod reindex;
pub mod reopen;
pub mod replication;
pub mod seal;
pub mod stall;
pub mod tasks;
pub mod wal;

use std::sync::Arc;

use anyhow::Context;
use ferry_proto::forward::consistency_server::ConsistencyServer;
use ferry_proto::forward::forwarding_server::ForwardingServer;
use ferry_proto::storage::admin_server::AdminServer;
use ferry_proto::storage::storage_server::StorageServer;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::committer::{CommitQueue, Committer};
use crate::config::Config;
use crate::core::Core;
use crate::fence::Fence;
use crate::gateway::Gateway;
use crate::keyspace::Keyspace;
use crate::path::PathClassifier;
use crate::tasks::Supervisor;
use crate::wal::gc::Retention;

/// Most gRPC requests served at once per connection.
const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Largest gRPC request accepted: a full batch plus framing.
const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// Runs the sidecar until SIGTERM or SIGINT, or until a task fails.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let geometry = config.geometry()?;
    let keyspace = Keyspace::for_cluster(&config.cluster);
    let classes = PathClassifier::new(&config.local_prefixes);

    let etcd_tls = config.etcd_tls()?;
    let kek = config.key_encryption_key()?;
    let client = etcd_connect::connect(&config.etcd_endpoints, etcd_tls.as_ref()).await?;
    let fence = Arc::new(
        Fence::acquire(
            &client,
            keyspace.fence(),
            config.node_id.clone(),
            config.fence_ttl_seconds,
        )
        .await
        .context("failed to acquire the write fence")?,
    );
    // Keep the lease alive from now on: recovery can take longer than its TTL.
    let mut supervisor = Supervisor::new();
    {
        let (fence, client, shutdown) =
            (fence.clone(), client.clone(), supervisor.shutdown_signal());
        supervisor.spawn("fence-keepalive", async move {
            fence.keep_alive(client, shutdown).await
        });
    }
    let recovered = recovery::recover(
        &client,
        &keyspace,
        &classes,
        geometry,
        &fence,
        config.reindex_on_start,
    )
    .await
    .context("failed to recover the WAL and merkle index")?;
    let (commits, queued) = CommitQueue::new(config.write_queue as usize);
    let core = Arc::new(Core::new(
        client.clone(),
        keyspace,
        classes,
        config.limits(),
        fence,
        recovered.stream,
        recovered.report,
        recovered.index,
        recovered.wal,
        recovered.checkpoint,
        commits,
    ));
    let gateway = Gateway::new(core.clone());
    {
        let (core, shutdown) = (core.clone(), supervisor.shutdown_signal());
        supervisor.spawn("stall-watch", async move { core.stall.run(shutdown).await });
    }
    supervisor.spawn(
        "committer",
        Committer::new(
            core.clone(),
            queued,
            config.merkle_records_per_commit as usize,
        )
        .run(supervisor.shutdown_signal()),
    );
    supervisor.spawn(
        "merkle-flusher",
        flusher::run(
            core.clone(),
            config.flush_policy(),
            supervisor.shutdown_signal(),
        ),
    );
    let retention = Retention {
        max_entries: config.wal_retain_entries,
        max_bytes: config.wal_retain_bytes,
    };
    supervisor.spawn(
        "wal-gc",
        wal::gc::run(
            core.clone(),
            retention,
            config.gc_interval(),
            supervisor.shutdown_signal(),
        ),
    );
    let replication =
        replication::Replication::start(core.clone(), gateway.clone(), config.replication(kek))
            .await
            .context("failed to load the replication role")?;
    supervisor.spawn(
        "fence-retake",
        reopen::run(
            core.clone(),
            replication.clone(),
            supervisor.shutdown_signal(),
        ),
    );
    supervisor.spawn(
        "cluster-port",
        replication::transport::serve(
            config.cluster_listen,
            replication::service::ReplicationService::new(replication.clone()),
            replication.material(),
            replication.trust(),
            supervisor.shutdown_signal(),
        ),
    );
    supervisor.spawn(
        "replication-api",
        api::serve(
            config.api_socket(),
            replication.clone(),
            supervisor.shutdown_signal(),
        ),
    );
    supervisor.spawn(
        "storage-api",
        serve(
            gateway,
            replication::forward::Forwarder::new(replication.clone()),
            config.storage_socket.clone(),
            supervisor.shutdown_signal(),
        ),
    );

    let result = supervisor.run_until(shutdown_signal()).await;
    replication.shutdown();
    if core.fence.is_held() {
        core.fence.release(&core.client).await;
    }
    result
}

async fn serve(
    gateway: Gateway,
    forwarder: replication::forward::Forwarder,
    socket: std::path::PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    // Only this user (the server's container runs as the same one): the socket reaches every
    // stored value, and forwards requests to the primary for the identity a caller names.
    let listener = ferry_proto::bind_private_unix(&socket)
        .with_context(|| format!("failed to listen on {}", socket.display()))?;
    info!(socket = %socket.display(), "storage API ready");
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS)
        .add_service(
            StorageServer::new(gateway.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(AdminServer::new(gateway))
        .add_service(
            ForwardingServer::new(forwarder.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(ConsistencyServer::new(forwarder))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = shutdown.changed().await;
        })
        .await
        .context("storage API server failed")?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("failed to install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
