//! A region of several nodes on loopback: one etcd shared by every node, each node a real
//! ferry-sidecar with its own cluster port (and, when asked, its ferry-vault). The first node
//! started is the active node; the others are performance standbys. Replication is driven
//! through the active node's replication API, whichever node that is at the time.

use std::time::Duration;

use anyhow::Context;
use ferry_proto::storage::PutRequest;
use ferry_proto::storage::storage_client::StorageClient;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use crate::etcd::EtcdServer;
use crate::http::{JsonClient, JsonResponse};
use crate::ports::free_port;
use crate::region::PERF;
use crate::sidecar::{Sidecar, SidecarOptions};
use crate::vault::{SHARED_ROOT_KEY, VaultServer};
use crate::wait_for;

/// One node: its server first, so that drop stops the server before its sidecar.
pub struct RegionNode {
    pub vault: Option<VaultServer>,
    pub sidecar: Sidecar,
    pub id: String,
    pub cluster_port: u16,
    killed: bool,
}

impl RegionNode {
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    /// The sidecar's replication API.
    pub fn api(&self) -> JsonClient {
        JsonClient::unix(self.sidecar.api_socket())
    }

    /// The sidecar's role: "active", "activating" or "standby".
    pub async fn role(&self) -> anyhow::Result<String> {
        Ok(self.sidecar.status().await?.role)
    }

    /// `kill -9` of the sidecar, then of the server.
    pub fn kill(&mut self) {
        self.sidecar.kill();
        if let Some(v) = &mut self.vault {
            v.kill();
        }
        self.killed = true;
    }

    pub fn is_killed(&self) -> bool {
        self.killed
    }

    /// The server's API with `token` (a node started with a server).
    pub fn vault_api(&self, token: &str) -> JsonClient {
        self.vault
            .as_ref()
            .expect("a node started with its ferry-vault")
            .api
            .with_token(token)
    }
}

/// A region of several nodes; etcd is dropped last.
pub struct NodeRegion {
    pub name: String,
    pub nodes: Vec<RegionNode>,
    pub etcd: EtcdServer,
}

impl NodeRegion {
    /// Starts etcd and `count` nodes named `<name>-1`..; `root_token` starts a ferry-vault on
    /// every node (root key [`SHARED_ROOT_KEY`]); `extra` are flags for every sidecar.
    pub async fn start(
        name: &str,
        count: usize,
        root_token: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let etcd = EtcdServer::start()?;
        let mut nodes = Vec::new();
        for i in 1..=count {
            let id = format!("{name}-{i}");
            let port = free_port();
            let mut options = SidecarOptions::new(name, &id)
                .arg("--heartbeat-interval-ms=500")
                .arg(format!("--api-addr=http://127.0.0.1:{port}"));
            for a in extra {
                options = options.arg(*a);
            }
            let cluster_port = options.cluster_port;
            let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
            let vault = match root_token {
                Some(token) => {
                    Some(VaultServer::start_on(&sidecar, SHARED_ROOT_KEY, token, None, port).await?)
                }
                None => None,
            };
            nodes.push(RegionNode {
                vault,
                sidecar,
                id,
                cluster_port,
                killed: false,
            });
        }
        let region = Self {
            name: name.into(),
            nodes,
            etcd,
        };
        region.active(Duration::from_secs(30)).await?;
        Ok(region)
    }

    /// Waits until exactly one node still running is active; returns its position.
    pub async fn active(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_for(
            &format!("exactly one active node in {}", self.name),
            timeout,
            || async {
                let mut active = Vec::new();
                for (i, node) in self.nodes.iter().enumerate() {
                    if node.killed {
                        continue;
                    }
                    // A frozen node (SIGSTOP) answers nothing: it is not the active node.
                    let role = tokio::time::timeout(Duration::from_secs(1), node.role()).await;
                    match role {
                        Ok(Ok(role)) if role == "active" => active.push(i),
                        Ok(Ok(_)) | Err(_) => {}
                        Ok(Err(_)) => return None,
                    }
                }
                (active.len() == 1).then(|| active[0])
            },
        )
        .await
    }

    /// The active node's replication API.
    pub async fn api(&self) -> anyhow::Result<JsonClient> {
        Ok(self.nodes[self.active(Duration::from_secs(30)).await?].api())
    }

    /// The active node's `performance/status`.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let r = self
            .api()
            .await?
            .get(&format!("{PERF}/status"))
            .await?
            .ok()?;
        Ok(r.body["data"].clone())
    }

    pub async fn call(&self, path: &str, body: Value) -> anyhow::Result<JsonResponse> {
        self.api()
            .await?
            .post(&format!("{PERF}/{path}"), body)
            .await
    }

    pub async fn enable_primary(&self) -> anyhow::Result<()> {
        self.call("primary/enable", json!({})).await?.ok()?;
        Ok(())
    }

    /// Makes this region a secondary of `primary` under `id`.
    pub async fn follow(&self, primary: &NodeRegion, id: &str) -> anyhow::Result<()> {
        let r = primary
            .call("primary/secondary-token", json!({ "id": id }))
            .await?
            .ok()?;
        let token = r.body["wrap_info"]["token"]
            .as_str()
            .context("no wrap_info.token in the reply")?
            .to_owned();
        self.call("secondary/enable", json!({ "token": token }))
            .await?
            .ok()?;
        Ok(())
    }

    /// Polls the active node's status until `done` holds; returns it.
    pub async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        crate::region::poll_status(&self.name, what, || self.status(), done, || self.logs(40)).await
    }

    /// Waits until this secondary streams and has applied everything `primary` wrote, with
    /// the same merkle root.
    pub async fn wait_caught_up(&self, primary: &NodeRegion) -> anyhow::Result<Value> {
        let (what, done) = crate::region::caught_up_with(&primary.status().await?);
        self.wait_status(&what, done).await
    }

    /// The tail of every running node's sidecar log.
    pub fn logs(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .filter(|n| !n.killed)
            .map(|n| format!("--- {} ---\n{}", n.id, n.sidecar.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A writer to this region's storage API that finds the active node by itself.
    pub fn writer(&self) -> NodeWriter {
        NodeWriter {
            nodes: self
                .nodes
                .iter()
                .map(|n| (n.id.clone(), n.sidecar.storage()))
                .collect(),
            current: 0,
        }
    }
}

/// Writes through whichever node is active: a standby's refusal names the active node, a node
/// that does not answer is passed over.
pub struct NodeWriter {
    nodes: Vec<(String, StorageClient<Channel>)>,
    current: usize,
}

/// Most nodes tried for one write.
const MAX_TRIES_PER_WRITE: usize = 8;

impl NodeWriter {
    /// Puts `key`; returns the WAL index it got, or the last refusal when no node took it
    /// within [`MAX_TRIES_PER_WRITE`] tries (the write may then be anywhere or nowhere: only
    /// an `Ok` is an acknowledged write).
    pub async fn put(&mut self, key: &str, value: &[u8]) -> anyhow::Result<u64> {
        let mut last = None;
        for _ in 0..MAX_TRIES_PER_WRITE {
            let (_, client) = &mut self.nodes[self.current];
            let put = client.put(PutRequest {
                key: key.into(),
                value: value.to_vec(),
            });
            match tokio::time::timeout(Duration::from_secs(5), put).await {
                Ok(Ok(r)) => return Ok(r.into_inner().wal_index),
                Ok(Err(status)) => {
                    let named = status
                        .metadata()
                        .get(ferry_proto::ACTIVE_NODE_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|id| self.nodes.iter().position(|(n, _)| n == id));
                    self.current = match (status.code(), named) {
                        (Code::FailedPrecondition, Some(i)) if i != self.current => i,
                        _ => (self.current + 1) % self.nodes.len(),
                    };
                    last = Some(anyhow::anyhow!("{status}"));
                }
                Err(_) => {
                    self.current = (self.current + 1) % self.nodes.len();
                    last = Some(anyhow::anyhow!("no answer within 5 s"));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node tried")))
    }
}
