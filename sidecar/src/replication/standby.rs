//! A performance standby's part in replication: it serves the cluster port, answers
//! `RemoteResolve`, refuses everything else, and heartbeats its active node.
//!
//! Only the active node of a cluster runs replication (`Replication`, the follower, WAL
//! shipping). A standby still matters to the other clusters, as in Vault:
//!
//! ```text
//!   standby ──(every --heartbeat-interval-ms: NodeHeartbeat{node id, cluster addr, api addr})──▶ active
//!                                          active keeps it 15 s (node_cache), gives it to
//!                                          secondaries in HeartbeatResponse.cluster_addrs
//!   secondary ──RemoteResolve──▶ standby: definition's primary_cluster_addr, else the active
//!                                node's cluster address (from the write fence's holder record)
//!   secondary ──any other call──▶ standby: UNAVAILABLE, `x-ferry-refusal: standby`
//!                                (ferry_proto::STANDBY_REFUSAL): try the next address
//! ```
//!
//! What a standby knows it reads from etcd, as its storage reads do: every
//! [`run`] pass loads the cluster definition (`core/cluster/replicated/info`, sealed: opened with
//! the key-encryption key) and, until this node first activates, publishes its identity and
//! member CAs to the cluster port ([`PortTls`]), so the port serves with the cluster's identity
//! from the moment the cluster has a role. The heartbeat presents the cluster's own client
//! certificate (the definition's), which the active node accepts only for the cluster's own key:
//! nothing outside the cluster's nodes (which hold the key-encryption key) can add an address.
//! `RemoteResolve` authenticates its caller as the active node does, against the member record
//! in etcd. Without a definition (no replication role) there is nothing to serve and no
//! heartbeat.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_proto::replication as pb;
use ferry_proto::replication::replication_client::ReplicationClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tracing::{debug, info, warn};

use super::definition::{ClusterDefinition, DEFINITION_PATH, SECONDARIES_PREFIX, SecondaryRecord};
use super::transport::{CONNECT_TIMEOUT, PortTls, TlsMaterial, client};
use crate::error::StoreError;
use crate::node::{NodeApi, Role};
use crate::seal::KeyEncryptionKey;

/// What a standby heard back from its active node, for status.
#[derive(Clone, Debug, Default)]
pub struct StandbyHeartbeat {
    pub active_node_id: String,
    /// The cluster addresses the active node gives secondaries.
    pub cluster_addrs: Vec<String>,
    pub at: Option<SystemTime>,
}

/// A node's replication view while it is not the active node.
pub struct StandbyView {
    node: NodeApi,
    kek: Option<Arc<KeyEncryptionKey>>,
    port: PortTls,
    definition: Mutex<Option<ClusterDefinition>>,
    last_heartbeat: Mutex<StandbyHeartbeat>,
}

impl StandbyView {
    pub fn new(node: NodeApi, kek: Option<Arc<KeyEncryptionKey>>, port: PortTls) -> Self {
        Self {
            node,
            kek,
            port,
            definition: Mutex::new(None),
            last_heartbeat: Mutex::new(StandbyHeartbeat::default()),
        }
    }

    /// The cluster definition as last read from etcd.
    pub fn definition(&self) -> Option<ClusterDefinition> {
        self.definition
            .lock()
            .expect("definition lock poisoned")
            .clone()
    }

    /// The last answer of the active node to this standby's heartbeat.
    pub fn last_heartbeat(&self) -> StandbyHeartbeat {
        self.last_heartbeat
            .lock()
            .expect("heartbeat lock poisoned")
            .clone()
    }

    /// Reads the cluster definition from etcd; publishes it to the cluster port until this node
    /// has activated (from then on the replication side publishes what it adopts).
    async fn load(&self) -> Result<Option<ClusterDefinition>, StoreError> {
        let definition = match self.node.read(DEFINITION_PATH).await? {
            Some(raw) => Some(super::open_json::<ClusterDefinition>(
                self.kek.as_deref(),
                DEFINITION_PATH,
                &raw,
            )?),
            None => None,
        };
        if !self.node.is_activated() {
            self.port.publish(definition.as_ref());
        }
        *self.definition.lock().expect("definition lock poisoned") = definition.clone();
        Ok(definition)
    }

    /// How a standby refuses a replication call: UNAVAILABLE with the standby refusal code.
    pub fn refusal(&self) -> Status {
        let me = &self.node.me().node_id;
        let role = self.node.role();
        let why = match (role, self.node.active_holder()) {
            (Role::Activating, _) => {
                format!("this node ({me}) took the write fence and is recovering")
            }
            (_, Some(active)) => format!(
                "this node ({me}) is a performance standby; the active node is {} at {}",
                active.node_id, active.cluster_addr
            ),
            (_, None) => format!("this node ({me}) is a performance standby; no node is active"),
        };
        let mut status =
            Status::unavailable(format!("{why}: only the active node serves replication"));
        status.metadata_mut().insert(
            ferry_proto::REFUSAL_METADATA,
            ferry_proto::STANDBY_REFUSAL.parse().expect("ascii"),
        );
        status
    }

    /// `RemoteResolve` on a standby: the definition's `primary_cluster_addr`, else the active
    /// node's cluster address, for an activated member presenting its own key.
    pub async fn remote_resolve(
        &self,
        request: &Request<pb::RemoteResolveRequest>,
    ) -> Result<pb::RemoteResolveResponse, Status> {
        let id = &request.get_ref().secondary_id;
        let record = self
            .node
            .read(&format!("{SECONDARIES_PREFIX}{id}"))
            .await?
            .map(|raw| {
                serde_json::from_slice::<SecondaryRecord>(&raw).map_err(|e| {
                    Status::data_loss(format!("secondary record {id:?} is corrupt: {e}"))
                })
            })
            .transpose()?
            .filter(|r| r.activated_at.is_some())
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "secondary {id:?} is not activated with this replication set (revoked?)"
                ))
            })?;
        super::service::check_certificate(request, &record)?;
        let definition = match self.definition() {
            Some(d) => Some(d),
            None => self.load().await?,
        };
        let address = definition
            .map(|d| d.primary_cluster_addr)
            .filter(|a| !a.is_empty())
            .or_else(|| {
                self.node
                    .active_holder()
                    .map(|h| h.cluster_addr)
                    .filter(|a| !a.is_empty())
            })
            .ok_or_else(|| self.refusal())?;
        debug!(secondary_id = %id, %address, "answered RemoteResolve as a standby");
        // No CA to hand over: a standby's view of the definition may be one the active node has
        // since replaced (a primary that just took over still looks like a secondary here), and a
        // hand-over to it would pin the old primary again.
        Ok(pb::RemoteResolveResponse {
            address,
            primary_ca_cert_pem: String::new(),
        })
    }
}

/// The heartbeat client, kept while the active node and the TLS material stay the same.
struct ActiveClient {
    address: String,
    tls: TlsMaterial,
    client: ReplicationClient<Channel>,
}

/// While this node is a standby: loads the definition and heartbeats the active node every
/// `interval`, until `shutdown`.
pub async fn run(
    view: Arc<StandbyView>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut active: Option<ActiveClient> = None;
    let mut failing = false;
    loop {
        if view.node.role() == Role::Standby {
            match view.load().await {
                Ok(Some(definition)) => {
                    let ok = heartbeat(&view, &definition, &mut active).await;
                    if ok && failing {
                        info!("standby: heartbeating the active node again");
                    }
                    failing = !ok;
                }
                Ok(None) => active = None,
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "standby: failed to read the cluster definition");
                    }
                    failing = true;
                }
            }
        } else {
            active = None;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// One heartbeat to the active node; whether it answered.
async fn heartbeat(
    view: &StandbyView,
    definition: &ClusterDefinition,
    active: &mut Option<ActiveClient>,
) -> bool {
    let me = view.node.me().clone();
    let Some(holder) = view
        .node
        .active_holder()
        .filter(|h| !h.cluster_addr.is_empty() && h.node_id != me.node_id)
    else {
        return false;
    };
    let tls = TlsMaterial::to_members(definition);
    if active
        .as_ref()
        .is_none_or(|a| a.address != holder.cluster_addr || a.tls != tls)
    {
        match client(&holder.cluster_addr, &tls) {
            Ok(client) => {
                *active = Some(ActiveClient {
                    address: holder.cluster_addr.clone(),
                    tls,
                    client,
                })
            }
            Err(e) => {
                warn!(active = %holder.cluster_addr, error = %format!("{e:#}"), "standby: cannot reach the active node");
                return false;
            }
        }
    }
    let Some(current) = active.as_mut() else {
        return false;
    };
    let call = current.client.node_heartbeat(pb::NodeHeartbeatRequest {
        node_id: me.node_id,
        cluster_addr: me.cluster_addr,
        api_addr: me.api_addr,
        sent_at_ms: super::unix_now_ms(),
    });
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, call).await {
        Ok(Ok(reply)) => {
            let reply = reply.into_inner();
            debug!(active = %reply.active_node_id, cluster_addrs = ?reply.cluster_addrs, "standby: heartbeat answered");
            *view.last_heartbeat.lock().expect("heartbeat lock poisoned") = StandbyHeartbeat {
                active_node_id: reply.active_node_id,
                cluster_addrs: reply.cluster_addrs,
                at: Some(SystemTime::now()),
            };
            true
        }
        Ok(Err(status)) => {
            debug!(active = %holder.cluster_addr, error = %status.message(), "standby: heartbeat refused");
            if ferry_proto::is_standby_refusal(&status) {
                // Behind a Service the address may lead to any node: connect again next time.
                *active = None;
            }
            false
        }
        Err(_) => {
            debug!(active = %holder.cluster_addr, "standby: heartbeat timed out");
            false
        }
    }
}
