//! Several nodes of one cluster on one etcd: each a real ferry-sidecar and ferry-vault, the
//! sidecar told its server's address (`--api-addr`) so that standbys can forward to it.

use std::path::Path;
use std::time::Duration;

use crate::etcd::EtcdServer;
use crate::http::JsonClient;
use crate::pki::CertFiles;
use crate::ports::free_port;
use crate::sidecar::{Sidecar, SidecarOptions};
use crate::vault::VaultServer;
use crate::wait_for;

/// The root key and initial root token every node of a test cluster shares.
pub const ROOT_KEY_HEX: &str = "4242424242424242424242424242424242424242424242424242424242424242";
pub const ROOT_TOKEN: &str = "hvs.nodes-root";

/// One node: its server first, so that drop stops the server before its sidecar.
pub struct Node {
    pub vault: VaultServer,
    pub sidecar: Sidecar,
    pub id: String,
}

impl Node {
    /// The server's API with the root token.
    pub fn root(&self) -> JsonClient {
        self.vault.api.with_token(ROOT_TOKEN)
    }

    /// `kill -9` of the server and its sidecar, the sidecar first (it holds the fence).
    pub fn kill(&mut self) {
        self.sidecar.kill();
        self.vault.kill();
    }

    /// Sends `signal` to both processes.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.sidecar.signal(signal)?;
        self.vault.signal(signal)
    }

    /// The sidecar's role: "active", "activating" or "standby".
    pub async fn role(&self) -> anyhow::Result<String> {
        Ok(self.sidecar.status().await?.role)
    }
}

/// `count` nodes of cluster `west` on `etcd`, started one after another: the first is active,
/// the others performance standbys. `args` go to every sidecar.
pub async fn start_nodes(
    etcd: &EtcdServer,
    count: usize,
    args: &[&str],
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for i in 1..=count {
        nodes.push(start_node(etcd, &format!("node-{i}"), args).await?);
    }
    Ok(nodes)
}

/// One more node of cluster `west` on `etcd`.
pub async fn start_node(etcd: &EtcdServer, id: &str, args: &[&str]) -> anyhow::Result<Node> {
    start_node_with(etcd, id, args, None).await
}

/// [`start_node`], the server serving TLS with `tls` (its certificate signed by the CA at the
/// path given) and advertising an `https://` address.
pub async fn start_node_with(
    etcd: &EtcdServer,
    id: &str,
    args: &[&str],
    tls: Option<(CertFiles, &Path)>,
) -> anyhow::Result<Node> {
    let port = free_port();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut options =
        SidecarOptions::new("west", id).arg(format!("--api-addr={scheme}://127.0.0.1:{port}"));
    for arg in args {
        options = options.arg(*arg);
    }
    let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    let vault = VaultServer::start_on(&sidecar, ROOT_KEY_HEX, ROOT_TOKEN, tls, port).await?;
    Ok(Node {
        vault,
        sidecar,
        id: id.to_owned(),
    })
}

/// Waits until exactly one of `nodes` (those still running) is active; returns its position.
pub async fn wait_single_active(nodes: &[&Node], timeout: Duration) -> anyhow::Result<usize> {
    wait_for("exactly one active node", timeout, || async {
        let mut active = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.role().await.ok()? == "active" {
                active.push(i);
            }
        }
        (active.len() == 1).then(|| active[0])
    })
    .await
}
