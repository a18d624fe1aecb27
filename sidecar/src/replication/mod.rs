//! Replication between clusters: roles, activation, WAL streaming, merkle reconciliation,
//! heartbeats, address resolution, promotion and fencing.
//!
//! One primary ships its WAL to any number of secondaries over the cluster port (gRPC over
//! mutual TLS, see [`transport`]). The pieces:
//!
//! * [`definition`]: what a cluster stores about its role, and where; [`pki`] and [`token`]: the
//!   replication CA and the activation tokens it signs.
//! * [`control`]: the role changes behind Vault's `sys/replication/performance/...` API (enable,
//!   secondary-token, revoke, demote, disable; secondary enable, update-primary), each
//!   serialised under one lock and persisted before it takes effect; [`promotion`]: promote.
//! * [`service`]: what a primary serves on the cluster port: Activate, Heartbeat, RemoteResolve,
//!   StreamWals, MerklePages/MerkleSubpages/MerkleSync (its streaming in `sync_serve`),
//!   AnnounceEpoch, Forward.
//! * [`follower`]: the secondary's loop. It streams the WAL after its last applied index with
//!   its merkle root as guard (`stream-wals`); when the primary refuses (guard mismatch, WAL
//!   collected, another stream), it locates the differences in two round trips
//!   (`merkle-diff`, [`snapshot`], [`reconcile`]), copies them (`merkle-sync`) and streams again. It reconnects by
//!   itself with bounded backoff and keeps serving reads meanwhile; [`resolver`] keeps its list of
//!   primary addresses fresh from heartbeats and RemoteResolve.
//! * Nodes: only the active node of a cluster runs all this. Every node serves the cluster port
//!   ([`cluster_port`]): a performance standby answers RemoteResolve and refuses every other
//!   call with a typed refusal, and heartbeats its active node ([`standby`]), which keeps the
//!   standbys' addresses for 15 s ([`node_cache`]) and gives them to secondaries with its own,
//!   so that a secondary fails over to whichever node is active next.
//!
//! Writes and roles: the committer refuses replicated writes from clients unless this cluster
//! is writable ([`WriteMode`](crate::core::WriteMode)); the follower's writes carry the applied record (`meta/applied`,
//! [`applied`]) in the same transaction. A secondary keeps its own WAL stream for what it
//! applies, so its merkle index recovers after a crash exactly like a primary's.
//!
//! Epochs: each promotion raises the epoch, stored with the WAL stream. A primary that hears of
//! a higher epoch (a secondary's request, the new primary's announcement, or its own check of
//! its secondaries whenever it opens for writes) stores it durably and demotes itself
//! ([`epoch`], [`superseded`]), so there are never two writable primaries that can talk to each
//! other.

pub mod applied;
pub mod apply;
pub mod cluster_port;
pub mod control;
pub mod definition;
pub mod epoch;
pub mod follower;
pub mod forward;
pub mod membership;
pub mod node_cache;
pub mod pki;
pub mod promotion;
pub mod reconcile;
pub mod resolver;
pub mod role;
pub mod service;
mod ship;
pub mod snapshot;
pub mod standby;
pub mod status;
pub mod superseded;
mod sync_serve;
pub mod token;
pub mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::core::Core;
use crate::error::StoreError;
use crate::gateway::Gateway;
use crate::seal::KeyEncryptionKey;
use definition::{CA_PATH, ClusterDefinition, DEFINITION_PATH, PRIMARY_ADDRS_PATH};
use snapshot::SnapshotCache;
use transport::PortTls;

/// Settings of the replication side of the sidecar.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Seals the CA and the cluster identity in storage; replication needs it.
    pub kek: Option<Arc<KeyEncryptionKey>>,
    /// Where the cluster port listens.
    pub cluster_listen: SocketAddr,
    /// The address peers reach this node's cluster port at.
    pub cluster_addr: String,
    /// This node's id, and where its ferry-vault is reached (empty when not told), for status.
    pub node_id: String,
    pub api_addr: String,
    /// How often a secondary heartbeats its primary.
    pub heartbeat_interval: Duration,
    /// Where this cluster's server takes requests forwarded to it (when it is the primary).
    pub forward_socket: std::path::PathBuf,
    /// Fault injection for tests: a pause before applying each streamed batch.
    pub apply_delay: Duration,
    /// How long the cluster port's client certificates are valid (see `membership`).
    pub client_cert_ttl: Duration,
}

/// What a secondary's follower reports, for `status`.
#[derive(Clone, Debug, Default)]
pub struct FollowerStatus {
    /// `idle`, `connecting`, `merkle-diff`, `merkle-sync` or `stream-wals`.
    pub state: &'static str,
    /// gRPC connectivity: `idle`, `connecting`, `ready`, `transient_failure` or `shutdown`.
    pub connection_state: &'static str,
    pub last_remote_wal: u64,
    /// The primary's last WAL index, as last heard.
    pub primary_last_wal: u64,
    pub sync_progress: u64,
    pub sync_total_keys: u64,
    pub known_primary_cluster_addrs: Vec<String>,
    /// The address the follower is connected to, or last tried.
    pub connected_to: String,
    pub last_heartbeat: Option<SystemTime>,
    pub last_heartbeat_duration_ms: u64,
    pub primary_epoch: u64,
    pub last_error: Option<String>,
    /// Merkle reconciliations run since start.
    pub merkle_syncs: u64,
    /// What the last completed reconciliation did.
    pub last_reconcile: Option<ReconcileReport>,
}

/// One merkle reconciliation, as the follower measured it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReconcileReport {
    /// Calls made to locate the conflicts: 1 when the page hashes agree, else 2.
    pub round_trips: u32,
    /// Protobuf bytes of those calls, both directions.
    pub locate_bytes: u64,
    pub conflicting_pages: u64,
    pub conflicting_subpages: u64,
    /// Keys the primary sent, and how many of them were written or deleted here.
    pub keys_received: u64,
    pub keys_written: u64,
    pub keys_deleted: u64,
    /// Former values copied aside under `core/local/unshipped/` (a former primary only).
    pub keys_kept_aside: u64,
    /// The primary's WAL index the reconciliation reached.
    pub wal_index: u64,
    /// From the first diff call to the applied record being stored.
    pub seconds: f64,
}

/// What a primary knows of one secondary from its heartbeats.
#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    pub cluster_address: String,
    pub last_heartbeat: Option<SystemTime>,
    pub clock_skew_ms: i64,
    pub last_remote_wal: u64,
}

/// How long a secondary counts as connected after its last heartbeat (Vault's cache expiry).
pub const PEER_EXPIRY: Duration = Duration::from_secs(15);

/// The replication side of a sidecar.
pub struct Replication {
    pub core: Arc<Core>,
    pub gateway: Gateway,
    pub config: ReplicationConfig,
    definition: Mutex<Option<ClusterDefinition>>,
    /// Serialises role changes and token bookkeeping.
    pub(crate) control: tokio::sync::Mutex<()>,
    /// What the cluster port serves with (shared with the standby view of this node).
    port: PortTls,
    follower: Mutex<Option<FollowerHandle>>,
    follower_status: Mutex<FollowerStatus>,
    pub(crate) peers: Mutex<BTreeMap<String, PeerStatus>>,
    /// This cluster's performance standbys, from their heartbeats (see `node_cache`).
    pub(crate) nodes: Mutex<node_cache::NodeCache>,
    pub(crate) snapshots: Mutex<SnapshotCache>,
    /// The primary's position this secondary has applied, for read-after-write waits.
    applied: watch::Sender<Option<applied::Applied>>,
    /// The follower's connection to the primary while a session is up: forwarded requests use it.
    pub(crate) primary: Mutex<Option<(String, follower::Client)>>,
    /// This cluster's server on its forward socket (connected lazily).
    server: tonic::transport::Channel,
    /// Stops the renewal of the client certificate.
    stop_renewal: watch::Sender<bool>,
    /// The newest epoch proof held (see `epoch`).
    epoch_proof: Mutex<Option<ferry_proto::replication::EpochProof>>,
}

struct FollowerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Replication {
    /// Loads the stored role and starts what it needs (the cluster port's identity through
    /// `port`, the follower).
    pub async fn start(
        core: Arc<Core>,
        gateway: Gateway,
        config: ReplicationConfig,
        port: PortTls,
    ) -> Result<Arc<Self>, StoreError> {
        let definition = match gateway.get(DEFINITION_PATH).await? {
            Some(raw) => Some(open_json::<ClusterDefinition>(
                config.kek.as_deref(),
                DEFINITION_PATH,
                &raw,
            )?),
            None => None,
        };
        let known = match gateway.get(PRIMARY_ADDRS_PATH).await? {
            Some(raw) => serde_json::from_slice::<Vec<String>>(&raw).unwrap_or_default(),
            None => Vec::new(),
        };
        // Until the follower streams again, status reports the index stored as applied.
        let stored_applied = applied::load(&core).await?;
        let last_remote_wal = stored_applied.map_or(0, |a| a.index);
        let server = ferry_proto::connect_unix(&config.forward_socket);
        let replication = Arc::new(Self {
            core,
            gateway,
            config,
            definition: Mutex::new(None),
            control: tokio::sync::Mutex::new(()),
            port,
            follower: Mutex::new(None),
            follower_status: Mutex::new(FollowerStatus {
                state: "idle",
                connection_state: "idle",
                known_primary_cluster_addrs: known,
                last_remote_wal,
                ..FollowerStatus::default()
            }),
            peers: Mutex::new(BTreeMap::new()),
            nodes: Mutex::new(node_cache::NodeCache::default()),
            snapshots: Mutex::new(SnapshotCache::default()),
            applied: watch::Sender::new(stored_applied),
            primary: Mutex::new(None),
            server,
            stop_renewal: watch::Sender::new(false),
            epoch_proof: Mutex::new(None),
        });
        let renewing = replication.clone();
        crate::tasks::spawn_restarting("client-cert-renewal", move || {
            membership::run_renewal(renewing.clone(), renewing.stop_renewal.subscribe())
        });
        if let Some(d) = &definition {
            info!(role = ?d.role, cluster_id = %d.cluster_id, "replication role loaded");
        }
        replication.adopt(definition);
        replication.seal_what_is_stored_in_clear().await;
        if let Err(e) = replication.sign_own_epoch().await {
            warn!(error = %e, "cannot sign this primary's epoch proof: its secondaries cannot relay it");
        }
        // Before the storage API opens: a primary superseded while it was down stays fenced.
        replication.check_superseded().await?;
        Ok(replication)
    }

    /// Seals the CA and the definition where a version from before sealing stored them in
    /// clear: they are otherwise written again only when they change, which the CA never does,
    /// so its private key would stay readable in etcd for good. Under the control lock, which
    /// every writer of either holds. Etcd's history keeps the clear value until it is
    /// compacted. Best effort: a failure is logged, and the next start tries again.
    async fn seal_what_is_stored_in_clear(&self) {
        let Some(kek) = self.config.kek.as_deref() else {
            return;
        };
        let _guard = self.control.lock().await;
        for path in [CA_PATH, DEFINITION_PATH] {
            let sealed = async {
                let Some(raw) = self.gateway.get(path).await? else {
                    return Ok(false);
                };
                if crate::seal::is_sealed(&raw) {
                    return Ok(false);
                }
                let op = self.gateway.op(path.into(), Some(kek.seal(path, &raw)));
                self.gateway.write(vec![op]).await?;
                Ok::<_, StoreError>(true)
            };
            match sealed.await {
                Ok(true) => info!(
                    path,
                    "sealed a value a version before sealing stored in clear"
                ),
                Ok(false) => {}
                Err(e) => warn!(path, error = %e, "cannot seal a value stored in clear"),
            }
        }
    }

    /// Trusts the member CAs of `definition` for client certificates from now on.
    fn trust_members_of(&self, definition: &ClusterDefinition) {
        self.port.trust_members(&definition.member_cas_pem);
    }

    pub fn definition(&self) -> Option<ClusterDefinition> {
        self.definition
            .lock()
            .expect("definition lock poisoned")
            .clone()
    }

    pub fn follower_status(&self) -> MutexGuard<'_, FollowerStatus> {
        self.follower_status
            .lock()
            .expect("follower status lock poisoned")
    }

    /// Makes `definition` the current role: write mode, cluster port, follower.
    pub(crate) fn adopt(self: &Arc<Self>, definition: Option<ClusterDefinition>) {
        self.core
            .set_write_mode(epoch::write_mode_of(definition.as_ref()));
        self.port.publish(definition.as_ref());
        let follow = definition.as_ref().is_some_and(|d| d.follows_primary());
        *self.definition.lock().expect("definition lock poisoned") = definition;
        self.stop_follower();
        if follow {
            self.start_follower();
        } else {
            let mut status = self.follower_status();
            status.state = "idle";
            status.connection_state = "idle";
        }
    }

    fn start_follower(self: &Arc<Self>) {
        let (stop, stopped) = watch::channel(false);
        let replication = self.clone();
        let task = crate::tasks::spawn_restarting("follower", move || {
            follower::run(replication.clone(), stopped.clone())
        });
        *self.follower.lock().expect("follower lock poisoned") =
            Some(FollowerHandle { stop, task });
    }

    fn stop_follower(&self) {
        if let Some(handle) = self.follower.lock().expect("follower lock poisoned").take() {
            let _ = handle.stop.send(true);
            // The follower checks its stop signal between steps; abort covers a stuck call.
            handle.task.abort();
        }
    }

    /// Stores `definition` (or removes it) at [`DEFINITION_PATH`], then adopts it.
    pub(crate) async fn persist(
        self: &Arc<Self>,
        definition: Option<ClusterDefinition>,
    ) -> Result<(), StoreError> {
        let value = definition
            .as_ref()
            .map(|d| self.seal_json(DEFINITION_PATH, d))
            .transpose()?;
        self.gateway
            .write(vec![self.gateway.op(DEFINITION_PATH.into(), value)])
            .await?;
        self.adopt(definition);
        Ok(())
    }

    /// Stores a changed definition without re-adopting it (the follower keeps running): for
    /// bookkeeping the follower itself does.
    pub(crate) async fn store_definition(
        &self,
        change: impl FnOnce(&mut ClusterDefinition),
    ) -> Result<(), StoreError> {
        let _guard = self.control.lock().await;
        self.store_definition_locked(change).await
    }

    /// [`Self::store_definition`] for a caller that holds the control lock.
    pub(crate) async fn store_definition_locked(
        &self,
        change: impl FnOnce(&mut ClusterDefinition),
    ) -> Result<(), StoreError> {
        let Some(mut definition) = self.definition() else {
            return Ok(());
        };
        let members_before = definition.member_cas_pem.clone();
        change(&mut definition);
        let value = self.seal_json(DEFINITION_PATH, &definition)?;
        self.gateway
            .write(vec![self.gateway.op(DEFINITION_PATH.into(), Some(value))])
            .await?;
        if definition.member_cas_pem != members_before {
            self.trust_members_of(&definition);
        }
        *self.definition.lock().expect("definition lock poisoned") = Some(definition);
        Ok(())
    }

    /// The applied record stored at `meta/applied`: on a promoted primary, how far it had
    /// applied the stream it followed before.
    pub(crate) async fn stored_applied(&self) -> Result<Option<applied::Applied>, StoreError> {
        applied::load(&self.core).await
    }

    /// `value` as JSON, sealed for storage `path` (see [`crate::seal`]).
    pub(crate) fn seal_json<T: serde::Serialize>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        seal_json(self.config.kek.as_deref(), path, value)
    }

    /// A value read from storage `path`, opened (see [`crate::seal`]) and parsed.
    pub(crate) fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        raw: &[u8],
    ) -> Result<T, StoreError> {
        open_json(self.config.kek.as_deref(), path, raw)
    }

    /// Records that the primary's stream is applied up to `position` (already stored).
    pub(crate) fn note_applied(&self, position: applied::Applied) {
        {
            let mut s = self.follower_status();
            s.last_remote_wal = position.index;
            s.primary_epoch = s.primary_epoch.max(position.epoch);
        }
        self.applied.send_replace(Some(position));
    }

    /// Follows the applied position (see [`Self::note_applied`]).
    pub fn watch_applied(&self) -> watch::Receiver<Option<applied::Applied>> {
        self.applied.subscribe()
    }

    /// Stops the follower, for shutdown.
    pub fn shutdown(&self) {
        self.stop_renewal.send_replace(true);
        self.stop_follower();
    }
}

/// `value` as JSON sealed with `kek` for storage `path`; refused without a KEK, since what this
/// stores holds private keys.
fn seal_json<T: serde::Serialize>(
    kek: Option<&KeyEncryptionKey>,
    path: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let kek = kek.ok_or_else(|| {
        StoreError::InvalidArgument(
            "this sidecar has no key-encryption key to seal the replication keys with: start it with --key-encryption-key-file"
                .into(),
        )
    })?;
    Ok(kek.seal(path, &serde_json::to_vec(value).expect("serialises")))
}

/// The JSON value stored at `path`, opened with `kek` when sealed.
fn open_json<T: serde::de::DeserializeOwned>(
    kek: Option<&KeyEncryptionKey>,
    path: &str,
    raw: &[u8],
) -> Result<T, StoreError> {
    let plain = match kek {
        Some(kek) => kek
            .open(path, raw)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        None if crate::seal::is_sealed(raw) => {
            return Err(StoreError::InvalidArgument(format!(
                "{path} is sealed and this sidecar has no key-encryption key: start it with --key-encryption-key-file"
            )));
        }
        None => raw.to_vec(),
    };
    serde_json::from_slice(&plain)
        .map_err(|e| StoreError::Corrupt(format!("failed to read {path}: {e}")))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
