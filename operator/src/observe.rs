//! What the operator reads back from a cluster: `sys/replication/performance/status`, parsed
//! into the few facts the decisions need, and the rest kept for the resource's status.

use serde_json::Value;

use crate::crd::{NodeStatus, SecondaryStatus};

/// The role a cluster has now, as its status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedRole {
    /// Replication is not enabled.
    Disabled,
    /// An active primary: takes writes, ships its WAL.
    Primary,
    /// A secondary following a primary.
    Secondary,
    /// A primary that was demoted (or fenced by a newer one) and follows nobody yet.
    DemotedPrimary,
}

impl ObservedRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedRole::Disabled => "disabled",
            ObservedRole::Primary => "primary",
            ObservedRole::Secondary => "secondary",
            ObservedRole::DemotedPrimary => "demoted-primary",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub role: ObservedRole,
    pub state: String,
    pub cluster_id: Option<String>,
    pub last_wal: Option<u64>,
    pub last_remote_wal: Option<u64>,
    /// On a secondary: the primary's last index as last heard.
    pub primary_last_wal: Option<u64>,
    pub merkle_root: Option<String>,
    pub epoch: Option<u64>,
    pub primary_cluster_addr: Option<String>,
    pub known_primary_cluster_addrs: Vec<String>,
    /// On a primary: the ids of the secondaries it knows (issued or activated).
    pub known_secondaries: Vec<String>,
    pub secondaries: Vec<SecondaryStatus>,
    /// The cluster's nodes, as its active node knows them.
    pub nodes: Vec<NodeStatus>,
    /// On a secondary: its gRPC connection to the primary.
    pub connection_state: Option<String>,
    pub last_error: Option<String>,
}

impl Observed {
    /// Reads the `data` of `sys/replication/performance/status`.
    pub fn from_status(data: &Value) -> Result<Self, String> {
        let mode = data["mode"]
            .as_str()
            .ok_or_else(|| format!("no mode in {data}"))?;
        let demoted = data["demoted"].as_bool().unwrap_or(false);
        let role = match (mode, demoted) {
            ("disabled", _) => ObservedRole::Disabled,
            ("primary", _) => ObservedRole::Primary,
            ("secondary", true) => ObservedRole::DemotedPrimary,
            ("secondary", false) => ObservedRole::Secondary,
            (other, _) => return Err(format!("unknown mode {other:?}")),
        };
        let text = |k: &str| {
            data[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let strings = |k: &str| -> Vec<String> {
            data[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let secondaries = data["secondaries"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|s| SecondaryStatus {
                        id: s["node_id"].as_str().unwrap_or_default().to_owned(),
                        connection_state: s["connection_status"]
                            .as_str()
                            .unwrap_or("unknown")
                            .to_owned(),
                        last_heartbeat: s["last_heartbeat"].as_str().map(str::to_owned),
                        last_remote_wal: s["last_remote_wal"].as_u64(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let nodes = data["nodes"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|n| NodeStatus {
                        node_id: n["node_id"].as_str().unwrap_or_default().to_owned(),
                        role: n["role"].as_str().unwrap_or("unknown").to_owned(),
                        api_address: text_of(n, "api_address"),
                        cluster_address: text_of(n, "cluster_address"),
                        last_heartbeat: text_of(n, "last_heartbeat"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            role,
            state: text("state").unwrap_or_else(|| "idle".into()),
            cluster_id: text("cluster_id"),
            last_wal: data["last_wal"].as_u64(),
            last_remote_wal: data["last_remote_wal"].as_u64(),
            primary_last_wal: data["primary_last_wal"].as_u64(),
            merkle_root: text("merkle_root"),
            epoch: data["epoch"].as_u64(),
            primary_cluster_addr: text("primary_cluster_addr"),
            known_primary_cluster_addrs: strings("known_primary_cluster_addrs"),
            known_secondaries: strings("known_secondaries"),
            secondaries,
            nodes,
            connection_state: text("connection_state"),
            last_error: text("last_error"),
        })
    }

    /// Whether secondary `id` has consumed its activation token (it shows in `secondaries`).
    pub fn activated(&self, id: &str) -> bool {
        self.secondaries.iter().any(|s| s.id == id)
    }

    /// On a secondary: how many of the primary's entries it has not applied, as last heard.
    pub fn lag(&self) -> Option<u64> {
        match self.role {
            ObservedRole::Secondary => Some(
                self.primary_last_wal?
                    .saturating_sub(self.last_remote_wal.unwrap_or(0)),
            ),
            _ => None,
        }
    }
}

/// The non-empty text at `key` of `value`.
fn text_of(value: &Value, key: &str) -> Option<String> {
    value[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_are_read_from_mode_and_demoted() {
        let role = |v: Value| Observed::from_status(&v).map(|o| o.role);
        assert_eq!(
            role(json!({"mode": "disabled"})),
            Ok(ObservedRole::Disabled)
        );
        assert_eq!(role(json!({"mode": "primary"})), Ok(ObservedRole::Primary));
        assert_eq!(
            role(json!({"mode": "secondary"})),
            Ok(ObservedRole::Secondary)
        );
        assert_eq!(
            role(json!({"mode": "secondary", "demoted": true})),
            Ok(ObservedRole::DemotedPrimary)
        );
        assert!(role(json!({"mode": "dr"})).is_err());
        assert!(role(json!({})).is_err());
    }

    #[test]
    fn lag_is_the_primarys_last_index_less_what_was_applied() {
        let o = Observed::from_status(&json!({
            "mode": "secondary", "state": "stream-wals",
            "primary_last_wal": 120, "last_remote_wal": 100,
        }))
        .unwrap();
        assert_eq!(o.lag(), Some(20));
        let p = Observed::from_status(&json!({"mode": "primary", "last_wal": 5})).unwrap();
        assert_eq!(p.lag(), None);
    }

    #[test]
    fn every_node_is_read_with_its_role_addresses_and_heartbeat() {
        let o = Observed::from_status(&json!({
            "mode": "primary",
            "nodes": [
                {"node_id": "ferry-0", "role": "active", "api_address": "http://10.0.0.1:8200",
                 "cluster_address": "10.0.0.1:8201", "last_heartbeat": null},
                {"node_id": "ferry-1", "role": "standby", "api_address": "",
                 "cluster_address": "10.0.0.2:8201", "last_heartbeat": "2026-12-05T20:00:00Z"},
            ],
        }))
        .unwrap();
        assert_eq!(
            o.nodes,
            vec![
                NodeStatus {
                    node_id: "ferry-0".into(),
                    role: "active".into(),
                    api_address: Some("http://10.0.0.1:8200".into()),
                    cluster_address: Some("10.0.0.1:8201".into()),
                    last_heartbeat: None,
                },
                NodeStatus {
                    node_id: "ferry-1".into(),
                    role: "standby".into(),
                    api_address: None,
                    cluster_address: Some("10.0.0.2:8201".into()),
                    last_heartbeat: Some("2026-12-05T20:00:00Z".into()),
                },
            ]
        );
    }
}
