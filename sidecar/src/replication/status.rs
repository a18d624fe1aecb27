//! `sys/replication/status` and `sys/replication/performance/status`, with Vault's field names.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{PEER_EXPIRY, Replication};
use crate::error::StoreError;
use crate::wal::record::hex;

impl Replication {
    /// The performance replication status.
    pub async fn performance_status(&self) -> Result<Value, StoreError> {
        let core = &self.core;
        let Some(definition) = self.definition() else {
            return Ok(json!({ "mode": "disabled" }));
        };
        let stream = core.stream();
        let root = hex(&core.index().root());
        let last_wal = core.wal().last;
        let mut status = json!({
            "cluster_id": definition.cluster_id,
            "merkle_root": root,
            "last_wal": last_wal,
            "epoch": stream.epoch,
            "stream_id": stream.stream_id.to_hex(),
        });
        let fields = status.as_object_mut().expect("an object");
        fields.insert("nodes".into(), json!(self.nodes_status()));
        // Not Vault's: when this cluster's cluster-port client certificate expires (renewed at
        // half-life), so that an operator sees a secondary that cannot renew.
        if let Ok((_, until)) = super::pki::validity_of(&definition.client_cert_pem) {
            fields.insert(
                "client_certificate_expires".into(),
                json!(ferry_proto::time::rfc3339(until)),
            );
        }
        let is_active_primary = definition.role.is_active_primary();
        if definition.role.ships_wal() {
            let records = self.secondary_records().await?;
            let peers = self.peers.lock().expect("peers lock poisoned").clone();
            let known: Vec<&str> = records
                .iter()
                .filter(|r| !r.is_primary)
                .map(|r| r.id.as_str())
                .collect();
            let secondaries: Vec<Value> = records
                .iter()
                .filter(|r| !r.is_primary && r.activated_at.is_some())
                .map(|r| {
                    let peer = peers.get(&r.id).cloned().unwrap_or_default();
                    json!({
                        "node_id": r.id,
                        "api_address": "",
                        "cluster_address": peer.cluster_address,
                        "connection_status": connection(peer.last_heartbeat),
                        "last_heartbeat": peer.last_heartbeat.map(rfc3339),
                        "clock_skew_ms": peer.clock_skew_ms,
                        "last_remote_wal": peer.last_remote_wal,
                    })
                })
                .collect();
            fields.insert("known_secondaries".into(), json!(known));
            fields.insert("secondaries".into(), json!(secondaries));
            fields.insert("last_performance_wal".into(), json!(last_wal));
        }
        if is_active_primary {
            fields.insert("mode".into(), json!("primary"));
            fields.insert("state".into(), json!("running"));
            fields.insert(
                "primary_cluster_addr".into(),
                json!(definition.primary_cluster_addr),
            );
            return Ok(status);
        }
        let follower = self.follower_status().clone();
        fields.insert("mode".into(), json!("secondary"));
        fields.insert("state".into(), json!(follower.state));
        fields.insert("secondary_id".into(), json!(definition.secondary_id));
        fields.insert(
            "primary_cluster_addr".into(),
            json!(definition.primary_cluster_addr),
        );
        fields.insert(
            "known_primary_cluster_addrs".into(),
            json!(follower.known_primary_cluster_addrs),
        );
        fields.insert("last_remote_wal".into(), json!(follower.last_remote_wal));
        fields.insert("connection_state".into(), json!(follower.connection_state));
        fields.insert("sync_progress".into(), json!(follower.sync_progress));
        fields.insert("sync_total_keys".into(), json!(follower.sync_total_keys));
        fields.insert("merkle_syncs".into(), json!(follower.merkle_syncs));
        if let Some(report) = &follower.last_reconcile {
            fields.insert("last_reconcile".into(), json!(report));
        }
        fields.insert("primary_last_wal".into(), json!(follower.primary_last_wal));
        if definition.role.is_demoted() {
            fields.insert("demoted".into(), json!(true));
        }
        if let Some(epoch) = definition.role.fenced_by_epoch() {
            fields.insert("fenced_by_epoch".into(), json!(epoch));
        }
        if let Some(error) = &follower.last_error {
            fields.insert("last_error".into(), json!(error));
        }
        if definition.follows_primary() {
            fields.insert(
                "primaries".into(),
                json!([{
                    "api_address": "",
                    "cluster_address": follower.connected_to,
                    "connection_status": connection(follower.last_heartbeat),
                    "last_heartbeat": follower.last_heartbeat.map(rfc3339),
                    "last_heartbeat_duration_ms": follower.last_heartbeat_duration_ms,
                }]),
            );
        }
        Ok(status)
    }

    /// This cluster's nodes as its active node knows them: itself, then each performance
    /// standby that heartbeated it within the cache's expiry (Vault's field names where it has
    /// them: `api_address`, `cluster_address`, `last_heartbeat`, `connection_status`).
    pub fn nodes_status(&self) -> Vec<Value> {
        let config = &self.config;
        let mut nodes = vec![json!({
            "node_id": config.node_id,
            "role": "active",
            "active_node": true,
            "api_address": config.api_addr,
            "cluster_address": config.cluster_addr,
            "last_heartbeat": Value::Null,
            "connection_status": "connected",
        })];
        let standbys = self
            .nodes
            .lock()
            .expect("nodes lock poisoned")
            .live(std::time::Instant::now());
        nodes.extend(standbys.into_iter().map(|n| {
            json!({
                "node_id": n.node_id,
                "role": "standby",
                "active_node": false,
                "api_address": n.api_addr,
                "cluster_address": n.cluster_addr,
                "last_heartbeat": rfc3339(n.last_heartbeat),
                "connection_status": "connected",
            })
        }));
        nodes
    }

    /// `sys/replication/status`: both replication types.
    pub async fn status(&self) -> Result<Value, StoreError> {
        Ok(json!({
            "dr": { "mode": "disabled" },
            "performance": self.performance_status().await?,
        }))
    }
}

fn connection(last_heartbeat: Option<SystemTime>) -> &'static str {
    match last_heartbeat.and_then(|t| t.elapsed().ok()) {
        Some(age) if age <= PEER_EXPIRY => "connected",
        _ => "disconnected",
    }
}

/// `t` as an RFC 3339 UTC timestamp with whole seconds.
pub fn rfc3339(t: SystemTime) -> String {
    ferry_proto::time::rfc3339(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
