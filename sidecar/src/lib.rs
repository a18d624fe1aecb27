//! ferry-sidecar: the replicated storage gateway of a Ferry cluster node.
//!
//! The Vault-like server reaches storage only through this sidecar, over a gRPC API on a Unix
//! socket. The sidecar is the only writer of its cluster's etcd keyspace (see [`keyspace`]). It
//! writes every update in one etcd transaction with its WAL entry under the cluster's write fence
//! ([`commit`], [`committer`], [`fence`]), keeps a merkle index of the replicated keys in memory ([`merkle`]),
//! flushes it in the background ([`flusher`]), recovers it after a crash ([`recovery`]), and
//! trims the WAL within its retention limits ([`wal::gc`]). One node of a cluster is active (it
//! holds the fence); the others serve reads as performance standbys until they take it ([`node`]). It replicates between clusters
//! ([`replication`]) over the cluster port, and serves Vault's `sys/replication` API ([`api`]).
//!
//! Layering: [`path`], [`list`], [`codec`], [`merkle`] and [`wal::record`] are pure logic; the
//! other modules are thin shells around them that talk to etcd or gRPC.

pub mod admin_cli;
pub mod api;
pub mod changes;
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
pub mod node;
pub mod path;
pub mod presence;
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
use ferry_proto::storage::changes_server::ChangesServer;
use ferry_proto::storage::storage_server::StorageServer;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{info, warn};

use crate::committer::{CommitQueue, Committer};
use crate::config::Config;
use crate::core::Core;
use crate::fence::Fence;
use crate::gateway::Gateway;
use crate::keyspace::Keyspace;
use crate::node::NodeApi;
use crate::path::PathClassifier;
use crate::tasks::Supervisor;
use crate::wal::gc::Retention;

/// Most gRPC requests served at once per connection.
const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// Largest gRPC request accepted: a full batch plus framing.
const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// Runs the sidecar until SIGTERM or SIGINT, or until a task fails: serves the storage API as
/// a performance standby until it takes the write fence, then recovers and serves as the active
/// node (the phases are described in [`node`]).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let geometry = config.geometry()?;
    let keyspace = Keyspace::for_cluster(&config.cluster);
    let classes = PathClassifier::new(&config.local_prefixes);
    let mut stop = Box::pin(shutdown_signal()?);

    let etcd_tls = config.etcd_tls()?;
    let kek = config.key_encryption_key()?;
    // An etcd not up yet is waited for (in a pod the bundled etcd starts beside the nodes); one
    // that refuses this node (bad credentials, say) stops start-up here with the reason, rather
    // than leaving a standby that retries for ever.
    let client =
        etcd_connect::connect(&config.etcd_endpoints, etcd_tls.as_ref(), &keyspace.fence()).await?;
    let fence = Arc::new(Fence::new(
        keyspace.fence(),
        config.fence_holder(),
        config.fence_ttl_seconds,
    ));
    let node = NodeApi::new(
        client.clone(),
        keyspace.clone(),
        config.limits().max_key_bytes,
        fence.clone(),
        config.fence_holder(),
    );
    // What a standby knows of replication (see `replication::standby`), and what the cluster
    // port serves with, shared with the replication side once this node is active.
    let port_tls = replication::transport::PortTls::default();
    let standby_view = Arc::new(replication::standby::StandbyView::new(
        node.clone(),
        kek.clone(),
        port_tls.clone(),
    ));
    let admin_api = api::NodeRouter::new(node.clone(), standby_view.clone());
    // One try before serving anything: a lone node is never seen as a standby.
    fence
        .retake(&client)
        .await
        .context("failed to acquire the write fence")?;
    let mut supervisor = Supervisor::new();
    // This node's presence record (`sys/ha-status`), written once before anything is served.
    let mut presence = presence::Presence::new(
        client.clone(),
        &keyspace,
        node::node_info(config.fence_holder()),
    );
    if let Err(e) = presence.echo().await {
        warn!(error = %e, "failed to store this node's presence record; trying again");
    }
    supervisor.spawn("presence", presence.run(supervisor.shutdown_signal()));
    // The lease is kept alive whenever the fence is held: recovery can take longer than its TTL.
    {
        let (fence, client, shutdown) =
            (fence.clone(), client.clone(), supervisor.shutdown_signal());
        supervisor.spawn("fence-keepalive", async move {
            fence.keep_alive(client, shutdown).await
        });
    }
    let changes = changes::ChangesService::new(
        client.clone(),
        keyspace.clone(),
        supervisor.shutdown_signal(),
    );
    supervisor.spawn(
        "storage-api",
        serve(
            node.clone(),
            changes,
            config.storage_socket.clone(),
            supervisor.shutdown_signal(),
        ),
    );
    supervisor.spawn(
        "replication-api",
        api::serve(
            config.api_socket(),
            admin_api.clone(),
            supervisor.shutdown_signal(),
        ),
    );
    // The cluster port, from start-up: a standby answers RemoteResolve and refuses the rest,
    // and heartbeats the active node (see `replication::standby` and `cluster_port`).
    let cluster_port =
        replication::cluster_port::ClusterPortService::new(node.clone(), standby_view.clone());
    supervisor.spawn(
        "cluster-port",
        replication::transport::serve(
            config.cluster_listen,
            cluster_port.clone(),
            port_tls.material(),
            port_tls.trust(),
            supervisor.shutdown_signal(),
        ),
    );
    supervisor.spawn(
        "standby-heartbeat",
        replication::standby::run(
            standby_view.clone(),
            std::time::Duration::from_millis(config.heartbeat_interval_ms),
            supervisor.shutdown_signal(),
        ),
    );

    // Standby until the fence is ours.
    let standby = async {
        tokio::select! {
            taken = wait_for_fence(&fence, &client) => Some(taken),
            _ = &mut stop => None,
        }
    };
    match supervisor.watch_while(standby).await {
        Ok(Some(())) => {}
        Ok(None) => return supervisor.run_until(async {}).await,
        Err(e) => {
            let _ = supervisor.run_until(async {}).await;
            return Err(e);
        }
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
    let replication = replication::Replication::start(
        core.clone(),
        gateway.clone(),
        config.replication(kek),
        port_tls,
    )
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
    cluster_port.activate(replication::service::ReplicationService::new(
        replication.clone(),
        supervisor.shutdown_signal(),
    ));
    admin_api.activate(replication.clone());
    node.activate(
        gateway,
        replication::forward::Forwarder::new(replication.clone()),
    );
    info!(node = %config.node_id, "active: serving writes");

    let result = supervisor.run_until(stop).await;
    replication.shutdown();
    if core.fence.is_held() {
        core.fence.release(&core.client).await;
    }
    result
}

/// The standby phase: tries to take the fence every [`node::STANDBY_POLL`] until it holds it.
async fn wait_for_fence(fence: &Fence, client: &etcd_client::Client) {
    let mut announced = None;
    loop {
        match fence.retake(client).await {
            Ok(true) => return,
            Ok(false) => {
                let holder = fence.active_holder().map(|h| h.node_id);
                if announced != Some(holder.clone()) {
                    info!(
                        active = holder.as_deref().unwrap_or("(none)"),
                        "standby: serving reads, waiting for the write fence"
                    );
                    announced = Some(holder);
                }
            }
            Err(e) => warn!(error = %e, "standby: failed to try the write fence; trying again"),
        }
        tokio::time::sleep(node::STANDBY_POLL).await;
    }
}

async fn serve(
    node: NodeApi,
    changes: changes::ChangesService,
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
        .add_service(StorageServer::new(node.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AdminServer::new(node.clone()))
        .add_service(
            ForwardingServer::new(node.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(ConsistencyServer::new(node))
        .add_service(ChangesServer::new(changes))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = shutdown.changed().await;
        })
        .await
        .context("storage API server failed")?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed before it returns, so that a
/// signal during start-up is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("failed to install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
