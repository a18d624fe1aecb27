//! Which nodes of a cluster are up: every node's presence record in the cluster's etcd.
//!
//! Vault's `sys/ha-status` lists every node of the cluster with the time it was last heard
//! from. The nodes of a Ferry cluster share one etcd, so each node says it is up there, in the
//! same way whatever its role and whether or not the cluster replicates:
//!
//! ```text
//!   every node, every ECHO_INTERVAL:  renew the node's own lease (TTL PRESENCE_TTL), and
//!                                     put <root>meta/nodes/<node id> = NodePresence{node, now}
//!                                     under it
//!   kill -9 / partition:              the lease expires: the record is gone within PRESENCE_TTL
//!   clean stop:                       the lease is revoked: the record is gone at once
//!   Nodes (storage API):              one range read of <root>meta/nodes/
//! ```
//!
//! The record is written by its own node only, outside the write fence (a standby has no
//! fence); it is not replicated (it is not under `data/`) and holds no secret, only the
//! addresses the node advertises anyway. Nothing decides anything from it: the fence elects the
//! active node, and the list only reports. A node whose write under its lease fails (the lease
//! expired while etcd was out of reach, say) moves its record to a new lease.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, GetOptions, PutOptions};
use ferry_proto::storage::{NodeInfo, NodePresence};
use prost::Message;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::StoreError;
use crate::keyspace::{Keyspace, prefix_end};

/// How long a record outlives its node's last echo.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);
/// How often a node rewrites its record (a third of the TTL: two echoes may be lost).
pub const ECHO_INTERVAL: Duration = Duration::from_secs(5);
/// The most records a listing returns: a cluster has a handful of nodes.
const MAX_NODES: i64 = 256;

/// One node's presence in its cluster's etcd.
pub struct Presence {
    client: Client,
    key: String,
    node: NodeInfo,
    lease: i64,
}

impl Presence {
    pub fn new(client: Client, keyspace: &Keyspace, node: NodeInfo) -> Self {
        Self {
            client,
            key: keyspace.node(&node.node_id),
            node,
            lease: 0,
        }
    }

    /// Writes the record now, under the node's lease (granted first if there is none, or the
    /// last one expired).
    pub async fn echo(&mut self) -> Result<(), StoreError> {
        let record = NodePresence {
            node: Some(self.node.clone()),
            last_echo_ms: unix_ms(SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").into(),
        }
        .encode_to_vec();
        if self.lease != 0 {
            // A put does not renew a lease: renew it, then rewrite the record under it.
            if self.renew().await {
                let mut kv = self.client.kv_client();
                let options = PutOptions::new().with_lease(self.lease);
                if kv
                    .put(self.key.clone(), record.clone(), Some(options))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
            // The lease expired (etcd was out of reach longer than the TTL, say): the record
            // moves to a new one, and the old one, if it is still alive, expires on its own.
            self.lease = 0;
        }
        let ttl = PRESENCE_TTL.as_secs() as i64;
        let lease = self.client.lease_client().grant(ttl, None).await?.id();
        self.client
            .kv_client()
            .put(
                self.key.clone(),
                record,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        self.lease = lease;
        Ok(())
    }

    /// Renews the lease once: whether etcd says it is still alive.
    async fn renew(&mut self) -> bool {
        let mut leases = self.client.lease_client();
        let Ok((mut keeper, mut answers)) = leases.keep_alive(self.lease).await else {
            return false;
        };
        if keeper.keep_alive().await.is_err() {
            return false;
        }
        let answer = tokio::time::timeout(ECHO_INTERVAL, answers.message()).await;
        matches!(answer, Ok(Ok(Some(renewed))) if renewed.ttl() > 0)
    }

    /// Echoes every [`ECHO_INTERVAL`] until `shutdown`, then revokes the lease so that the
    /// record goes with the node.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            if let Err(e) = self.echo().await {
                warn!(error = %e, "failed to store this node's presence record; trying again");
            }
            tokio::select! {
                _ = tokio::time::sleep(ECHO_INTERVAL) => {}
                _ = shutdown.changed() => break,
            }
        }
        if self.lease != 0 {
            let mut leases = self.client.lease_client();
            let revoke = leases.revoke(self.lease);
            match tokio::time::timeout(Duration::from_secs(1), revoke).await {
                Ok(Ok(_)) => debug!("presence record removed"),
                Ok(Err(e)) => debug!(error = %e, "failed to remove the presence record"),
                Err(_) => debug!("etcd did not answer the presence record's removal"),
            }
        }
        Ok(())
    }
}

/// Every node whose record is in etcd, sorted by node id. A record that does not decode (a
/// newer release's, say) is skipped.
pub async fn list(client: &Client, keyspace: &Keyspace) -> Result<Vec<NodePresence>, StoreError> {
    let prefix = keyspace.nodes_prefix();
    let options = GetOptions::new()
        .with_range(prefix_end(&prefix))
        .with_limit(MAX_NODES);
    let response = client.kv_client().get(prefix, Some(options)).await?;
    let mut nodes: Vec<NodePresence> = response
        .kvs()
        .iter()
        .filter_map(|kv| NodePresence::decode(kv.value()).ok())
        .filter(|p| p.node.is_some())
        .collect();
    nodes.sort_by(|a, b| node_id(a).cmp(node_id(b)));
    Ok(nodes)
}

fn node_id(p: &NodePresence) -> &str {
    p.node.as_ref().map_or("", |n| n.node_id.as_str())
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
