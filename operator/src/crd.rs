//! The `ReplicationCluster` custom resource (`replication.ferry.dev/v1alpha1`).
//!
//! One resource per region describes the role that region's Vault-like cluster plays in its
//! replication set. The doc comments below are the CRD's field descriptions: they are what
//! `kubectl explain replicationcluster.spec` shows, so they are written for users.
//!
//! Validation the schema can express (enums, patterns, required fields, defaults) lives here;
//! rules that tie fields together (a primary needs `primary`, ids are unique, ...) are checked
//! by the controller (`validate`), because the API servers we support predate CEL rules.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "replication.ferry.dev";

/// The desired state: which cluster, its role, and the settings of each role.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "replication.ferry.dev",
    version = "v1alpha1",
    kind = "ReplicationCluster",
    namespaced,
    doc = "The role of one region's Vault-like cluster in a replication set, and what the operator observes of it. The operator enables replication, issues and consumes activation tokens through Secrets, and performs a safe switchover when spec.role changes.",
    status = "ReplicationClusterStatus",
    shortname = "rcluster",
    shortname = "replcluster",
    category = "ferry",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name": "Role", "type": "string", "jsonPath": ".spec.role", "description": "The role asked for"}"#,
    printcolumn = r#"{"name": "State", "type": "string", "jsonPath": ".status.state", "description": "Replication state the cluster reports"}"#,
    printcolumn = r#"{"name": "Primary", "type": "string", "jsonPath": ".status.primaryClusterAddr", "description": "The primary's cluster address"}"#,
    printcolumn = r#"{"name": "Lag", "type": "integer", "jsonPath": ".status.lag", "description": "WAL entries this secondary is behind its primary"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationClusterSpec {
    /// The Vault-like cluster this resource governs: where its API is and how to authenticate.
    pub cluster: ClusterRef,
    /// The role this cluster should have: `primary` (takes writes and ships its write-ahead log)
    /// or `secondary` (follows a primary and forwards writes to it). Changing it on a running
    /// replication set performs a switchover: the old primary is demoted, then the secondary is
    /// promoted once it has applied everything the old primary wrote.
    pub role: Role,
    /// The replication mode: `performance` (secondaries serve reads and forward writes), the
    /// only one supported; `dr` (disaster recovery) is reserved.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Settings used while this cluster is the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<PrimarySpec>,
    /// Settings used while this cluster is a secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<SecondarySpec>,
    /// How a secondary is promoted when `role` changes to `primary`.
    #[serde(default)]
    pub promotion: PromotionSpec,
}

/// Where the Vault-like cluster's API is, and the credentials the operator uses on it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// The cluster's API address, for example `https://vault.secrets.svc:8200`. It must be
    /// `https://` unless `insecureHttp` is set.
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub address: String,
    /// A Secret in this namespace holding a token with `sudo` on `sys/replication/*`. The
    /// operator sends it, as `X-Vault-Token`, to `address` and nowhere else, and only if the
    /// Secret's annotation `replication.ferry.dev/send-to` (comma-separated addresses) names
    /// `address`.
    pub token_secret_ref: SecretKeyRef,
    /// PEM certificates to trust for an `https` address (the cluster's CA). Without it the
    /// system's roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Allow a plain `http://` address. DANGEROUS: the admin token from `tokenSecretRef`, which
    /// can enable, demote and promote replication, then crosses the network in clear text, for
    /// anyone on the path to read and replay. Set it only when the address is on the same host
    /// or the link is encrypted underneath (a service mesh with mutual TLS). Off by default: an
    /// `http://` address without it is an invalid spec, and the operator sends nothing.
    #[serde(default)]
    pub insecure_http: bool,
}

/// A key in a Secret of the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// The key within the Secret's data.
    #[serde(default = "default_token_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

pub fn default_token_key() -> String {
    "token".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    #[default]
    Performance,
    Dr,
}

/// Settings used while this cluster is the primary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrimarySpec {
    /// The address secondaries reach this cluster's replication port at (`host:port`), carried
    /// in activation tokens. Defaults to the address the cluster reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^\s:/]+:[0-9]{1,5}$"))]
    pub primary_cluster_addr: Option<String>,
    /// The secondaries this primary issues activation tokens for. A secondary removed from this
    /// list is revoked.
    #[serde(default)]
    pub secondaries: Vec<SecondaryGrant>,
}

/// One secondary a primary admits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryGrant {
    /// The secondary's id, unique within the replication set.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9][-_.a-zA-Z0-9]{0,62}$"))]
    pub id: String,
    /// The Secret (in this namespace) the operator writes the activation token into, under the
    /// key `token`. It is labelled and owned by this resource. Copy it to the secondary's
    /// region (for example through GitOps); a fresh token is issued when the Secret is missing
    /// or its token expired unused. A Secret of this name that the operator did not create for
    /// this resource is never overwritten: the resource reports it (`SecretInTheWay`) and waits
    /// until it is deleted or another name is given.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub token_secret_name: String,
    /// How long an activation token stays valid, as a duration such as `30m` or `24h`. At most
    /// 720h (30 days), the longest the sidecar issues.
    #[serde(default = "default_token_ttl")]
    #[schemars(regex(pattern = r"^[0-9]+[smhd]?$"))]
    pub ttl: String,
}

pub fn default_token_ttl() -> String {
    "30m".into()
}

/// Settings used while this cluster is a secondary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecondarySpec {
    /// The Secret (in this namespace) holding the activation token the primary issued for this
    /// cluster. Replication is enabled as soon as it appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
    /// The primary's replication addresses (`host:port`). Used when a demoted primary becomes
    /// a secondary of the new primary during a switchover, instead of a new activation token.
    #[serde(default)]
    pub primary_addrs: Vec<String>,
}

/// How a secondary is promoted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionSpec {
    /// Promote even when the old primary cannot be reached. A reachable old primary is always
    /// demoted and drained first, with or without it. Writes an unreachable primary
    /// acknowledged but never shipped are then not on the new primary (they are kept aside on
    /// the old one when it returns). Off by default: promotion waits, with a `Promoting`
    /// condition saying why.
    #[serde(default)]
    pub force: bool,
}

/// What the operator observes of the cluster, mirrored from `sys/replication/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationClusterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The role the cluster has now: `primary`, `secondary` or `disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The replication state the cluster reports: `running` on a primary; `stream-wals`,
    /// `merkle-diff`, `merkle-sync`, `connecting` or `idle` on a secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The last write-ahead-log index this cluster wrote (or, on a secondary, heard of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_wal: Option<u64>,
    /// On a secondary: the last index of the primary's log it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remote_wal: Option<u64>,
    /// On a secondary: how many log entries it is behind the primary, as last heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    /// Raised by every promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_cluster_addr: Option<String>,
    #[serde(default)]
    pub known_primary_cluster_addrs: Vec<String>,
    /// On a primary: each secondary's connection.
    #[serde(default)]
    pub secondaries: Vec<SecondaryStatus>,
    /// Every node (pod) of this cluster as its active node knows it: the active node first,
    /// then each performance standby that heartbeated it in the last 15 seconds.
    #[serde(default)]
    pub nodes: Vec<NodeStatus>,
    /// Activation tokens issued into Secrets, by secondary id: when each expires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub issued_tokens: BTreeMap<String, IssuedToken>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryStatus {
    pub id: String,
    /// `connected` or `disconnected`.
    pub connection_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_remote_wal: Option<u64>,
}

/// One node of the cluster: a ferry-vault and ferry-sidecar pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's id (its pod name in the chart).
    pub node_id: String,
    /// `active` (holds the cluster's write fence, serves writes and replication) or `standby`
    /// (a performance standby: serves reads, forwards writes to the active node).
    pub role: String,
    /// Where the node's ferry-vault is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<String>,
    /// Where the node's cluster port is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_address: Option<String>,
    /// RFC 3339 time of the standby's last heartbeat to the active node, as last observed
    /// (none for the active node itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub secret_name: String,
    /// RFC 3339 time the token expires unless used.
    pub expires_at: String,
}

/// A condition in the usual Kubernetes shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Replicating`, `Degraded`, `Promoting` or `InvalidSpec`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word saying why.
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CustomResourceDefinition as installed: the derived one, tidied for `kubectl explain`:
///
/// * each description unwrapped into paragraphs (doc comments are wrapped at 100 columns;
///   `kubectl explain` wraps by itself);
/// * no `nullable`: API servers publish a nullable field to OpenAPI v2 without its type, and
///   `kubectl explain` then can neither name the type nor descend into it. The types above
///   never serialise a null (every `Option` is skipped when `None`).
pub fn definition() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(ReplicationCluster::crd()).expect("the CRD serialises");
    tidy(&mut value);
    serde_json::from_value(value).expect("the CRD deserialises")
}

fn tidy(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("nullable");
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| {
                                paragraph.split_whitespace().collect::<Vec<_>>().join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => tidy(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}
