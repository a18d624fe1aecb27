//! A region: its own etcd and one sidecar with a cluster port and a replication API, all on
//! loopback. Replication tests start two or three and connect them through the API.

use std::time::Duration;

use anyhow::Context;
use ferry_proto::storage::{DeleteRequest, GetRequest, PutRequest};
use serde_json::{Value, json};

use crate::etcd::EtcdServer;
use crate::http::{JsonClient, JsonResponse};
use crate::sidecar::{Sidecar, SidecarOptions};
use crate::wait_for;

pub const PERF: &str = "/v1/sys/replication/performance";

/// How long replication may take to reach a state in tests.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

/// One region of a replication set.
pub struct Region {
    pub name: String,
    pub etcd: EtcdServer,
    pub sidecar: Sidecar,
    pub cluster_port: u16,
    pub api: JsonClient,
    extra: Vec<String>,
}

impl Region {
    /// Starts etcd and a sidecar named `name`, with `extra` sidecar flags.
    pub async fn start(name: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let etcd = EtcdServer::start()?;
        Self::start_on(name, etcd, extra).await
    }

    /// Starts a sidecar named `name` on an existing etcd.
    pub async fn start_on(name: &str, etcd: EtcdServer, extra: &[&str]) -> anyhow::Result<Self> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut options = SidecarOptions::new(name, &format!("{name}-node"));
        for a in base_args().into_iter().chain(extra.clone()) {
            options = options.arg(a);
        }
        let cluster_port = options.cluster_port;
        let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
        let api = JsonClient::unix(sidecar.api_socket());
        let region = Self {
            name: name.into(),
            etcd,
            sidecar,
            api,
            cluster_port,
            extra,
        };
        region.wait_api().await?;
        Ok(region)
    }

    async fn wait_api(&self) -> anyhow::Result<()> {
        wait_for("the replication API", Duration::from_secs(30), || async {
            self.api.get(&format!("{PERF}/status")).await.ok()
        })
        .await
        .map(|_| ())
    }

    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    /// Restarts the sidecar (after a kill or not) with the same flags.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.sidecar.restart().await?;
        self.wait_api().await
    }

    /// Restarts the sidecar serving its cluster port on `port` (another region's, say).
    pub async fn move_cluster_port(&mut self, port: u16) -> anyhow::Result<()> {
        self.sidecar.kill();
        self.sidecar.set_cluster_port(port);
        self.cluster_port = port;
        self.restart().await
    }

    /// Restarts the sidecar with `extra` flags instead of the ones it had.
    pub async fn restart_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        let args = base_args().into_iter().chain(self.extra.clone()).collect();
        self.sidecar.restart_with(args).await?;
        self.wait_api().await
    }

    /// `performance/status`'s data.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let r = self.api.get(&format!("{PERF}/status")).await?.ok()?;
        Ok(r.body["data"].clone())
    }

    pub async fn call(&self, path: &str, body: Value) -> anyhow::Result<JsonResponse> {
        self.api.post(&format!("{PERF}/{path}"), body).await
    }

    pub async fn enable_primary(&self) -> anyhow::Result<()> {
        self.call("primary/enable", json!({})).await?.ok()?;
        Ok(())
    }

    /// Issues an activation token for `id`.
    pub async fn token(&self, id: &str) -> anyhow::Result<String> {
        let r = self
            .call("primary/secondary-token", json!({ "id": id }))
            .await?
            .ok()?;
        r.body["wrap_info"]["token"]
            .as_str()
            .map(str::to_owned)
            .context("no wrap_info.token in the reply")
    }

    pub async fn enable_secondary(&self, token: &str) -> anyhow::Result<()> {
        self.call("secondary/enable", json!({ "token": token }))
            .await?
            .ok()?;
        Ok(())
    }

    /// Makes this region a secondary of `primary` under `id`; returns the activation token it
    /// used up.
    pub async fn follow(&self, primary: &Region, id: &str) -> anyhow::Result<String> {
        let token = primary.token(id).await?;
        self.enable_secondary(&token).await?;
        Ok(token)
    }

    /// Polls the status until `done` holds; returns it.
    pub async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        poll_status(
            &self.name,
            what,
            || self.status(),
            done,
            || self.sidecar.log_tail(40),
        )
        .await
    }

    /// Waits until this secondary streams and has applied everything `primary` has written.
    pub async fn wait_caught_up(&self, primary: &Region) -> anyhow::Result<Value> {
        let (what, done) = caught_up_with(&primary.status().await?);
        self.wait_status(&what, done).await
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<u64> {
        let r = self
            .sidecar
            .storage()
            .put(PutRequest {
                key: key.into(),
                value: value.to_vec(),
            })
            .await?;
        Ok(r.into_inner().wal_index)
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.sidecar
            .storage()
            .delete(DeleteRequest { key: key.into() })
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let r = self
            .sidecar
            .storage()
            .get(GetRequest { key: key.into() })
            .await?
            .into_inner();
        Ok(r.found.then_some(r.value))
    }
}

/// Flags every region's sidecar gets: heartbeats often enough for tests to see them.
fn base_args() -> Vec<String> {
    vec!["--heartbeat-interval-ms=500".into()]
}

/// A primary and a secondary named `east`, connected and streaming.
pub async fn primary_and_secondary(extra: &[&str]) -> anyhow::Result<(Region, Region)> {
    let primary = Region::start("west", extra).await?;
    let secondary = Region::start("east", extra).await?;
    primary.enable_primary().await?;
    secondary.follow(&primary, "east").await?;
    secondary.wait_caught_up(&primary).await?;
    Ok((primary, secondary))
}

/// Polls `status` until `done` holds and returns it; on timeout, the error names the region,
/// its last status and `logs()`.
pub async fn poll_status<Fut>(
    name: &str,
    what: &str,
    status: impl Fn() -> Fut,
    done: impl Fn(&Value) -> bool,
    logs: impl Fn() -> String,
) -> anyhow::Result<Value>
where
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let found = wait_for(what, REPLICATION_TIMEOUT, || async {
        let s = status().await.ok()?;
        done(&s).then_some(s)
    })
    .await;
    match found {
        Ok(s) => Ok(s),
        Err(e) => Err(e.context(format!(
            "{name}: last status {}\n{}",
            status().await.unwrap_or_default(),
            logs()
        ))),
    }
}

/// What a secondary's status must show once it has applied everything a primary with status
/// `primary` has written (streaming, and the same merkle root when at the same index), and
/// how to say so.
pub fn caught_up_with(primary: &Value) -> (String, impl Fn(&Value) -> bool + use<>) {
    let target = primary["last_wal"].as_u64().unwrap_or(0);
    let root = primary["merkle_root"].clone();
    (
        format!("streaming with last_remote_wal >= {target}"),
        move |s: &Value| {
            s["state"] == "stream-wals"
                && s["last_remote_wal"].as_u64().unwrap_or(0) >= target
                && (s["last_remote_wal"].as_u64() != Some(target) || s["merkle_root"] == root)
        },
    )
}
