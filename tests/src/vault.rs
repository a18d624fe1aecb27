//! A real `ferry-vault` process on a sidecar's storage socket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;

use crate::http::JsonClient;
use crate::pki::CertFiles;
use crate::ports::free_port;
use crate::process::Process;
use crate::sidecar::{Sidecar, bin_dir};
use crate::wait_for;

/// A ferry-vault on a sidecar and etcd of its own, for tests of the server alone; stopped
/// server first on drop.
pub struct LoneVault {
    pub vault: VaultServer,
    pub sidecar: Sidecar,
    pub etcd: crate::etcd::EtcdServer,
}

impl LoneVault {
    /// Starts etcd, a sidecar (cluster `west`) and ferry-vault with `root_key` and `root_token`.
    pub async fn start(root_key: &str, root_token: &str) -> anyhow::Result<Self> {
        let etcd = crate::etcd::EtcdServer::start()?;
        let sidecar = Sidecar::start(
            &etcd.endpoint(),
            crate::sidecar::SidecarOptions::new("west", "west-1"),
        )
        .await?;
        let vault = VaultServer::start(&sidecar, root_key, root_token).await?;
        Ok(Self {
            vault,
            sidecar,
            etcd,
        })
    }
}

/// One ferry-vault with its own key files, killed on drop.
pub struct VaultServer {
    dir: TempDir,
    socket: PathBuf,
    port: u16,
    /// The listener's certificate and key, when it serves TLS.
    tls: Option<CertFiles>,
    process: Option<Process>,
    pub api: JsonClient,
}

impl VaultServer {
    /// Starts ferry-vault on `sidecar` with `root_key` (file contents) and `root_token` as the
    /// initial root token; waits until `sys/health` says it is unsealed and active.
    pub async fn start(
        sidecar: &Sidecar,
        root_key: &str,
        root_token: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(sidecar, root_key, root_token, None).await
    }

    /// [`Self::start`], serving TLS with `tls` (its certificate signed by the CA at `ca`, which
    /// the client in `api` trusts) when given.
    pub async fn start_with(
        sidecar: &Sidecar,
        root_key: &str,
        root_token: &str,
        tls: Option<(CertFiles, &Path)>,
    ) -> anyhow::Result<Self> {
        Self::start_on(sidecar, root_key, root_token, tls, free_port()).await
    }

    /// [`Self::start_with`] on the loopback port `port` (a node's sidecar is told this address
    /// with `--api-addr` before the server starts). Ready once it is unsealed and active, or a
    /// performance standby.
    pub async fn start_on(
        sidecar: &Sidecar,
        root_key: &str,
        root_token: &str,
        tls: Option<(CertFiles, &Path)>,
        port: u16,
    ) -> anyhow::Result<Self> {
        let mut server = Self::spawn_on(sidecar, root_key, root_token, tls, port)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Launches ferry-vault for `sidecar` without waiting for it: for tests of start-up order.
    /// [`Self::wait_ready`] then waits for it to serve.
    pub fn spawn(sidecar: &Sidecar, root_key: &str, root_token: &str) -> anyhow::Result<Self> {
        Self::spawn_on(sidecar, root_key, root_token, None, free_port())
    }

    fn spawn_on(
        sidecar: &Sidecar,
        root_key: &str,
        root_token: &str,
        tls: Option<(CertFiles, &Path)>,
        port: u16,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-vault-").tempdir()?;
        write_owner_only(&dir.path().join("root.key"), root_key)?;
        std::fs::write(dir.path().join("root.token"), root_token)?;
        let api = match &tls {
            Some((_, ca)) => JsonClient::https(format!("https://127.0.0.1:{port}"), ca)?,
            None => JsonClient::new(format!("http://127.0.0.1:{port}")),
        };
        let mut server = Self {
            dir,
            socket: sidecar.socket(),
            port,
            tls: tls.map(|(files, _)| files),
            process: None,
            api,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let root_key_file = self.root_key_path();
        let mut cmd = Command::new(bin_dir().join("ferry-vault"));
        cmd.arg(format!("--listen=127.0.0.1:{}", self.port))
            .arg(format!("--storage-socket={}", self.socket.display()))
            .arg(format!("--root-key-file={}", root_key_file.display()))
            .arg(format!(
                "--initial-root-token-file={}",
                self.dir.path().join("root.token").display()
            ));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--tls-cert-file={}", tls.cert.display()))
                .arg(format!("--tls-key-file={}", tls.key.display()));
        }
        self.process = Some(Process::spawn(
            "ferry-vault",
            cmd,
            &self.dir.path().join("vault.log"),
        )?);
        Ok(())
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let api = self.api.clone();
        let process = &mut self.process;
        wait_for(
            "ferry-vault to be unsealed",
            Duration::from_secs(30),
            || {
                let exited = process.as_mut().and_then(Process::exited);
                let api = api.clone();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(anyhow::anyhow!("ferry-vault exited: {status}")));
                    }
                    // 200: initialised, unsealed and active; 473: a performance standby.
                    let health = api.get("/v1/sys/health").await.ok()?;
                    matches!(health.status, 200 | 473).then_some(Ok(()))
                }
            },
        )
        .await?
        .with_context(|| self.log())
    }

    /// Replaces the root key file's contents (for the next restart).
    pub fn set_root_key(&self, root_key: &str) -> anyhow::Result<()> {
        write_owner_only(&self.root_key_path(), root_key)
    }

    /// The root key file the server reads at start-up (mode 0600).
    pub fn root_key_path(&self) -> PathBuf {
        self.dir.path().join("root.key")
    }

    /// Kills and starts the server again; waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()?;
        self.wait_ready().await
    }

    /// Kills and starts the server again, and waits for it to exit by itself (a start-up
    /// failure); returns its log.
    pub async fn restart_expecting_failure(&mut self) -> anyhow::Result<String> {
        self.kill();
        self.launch()?;
        let process = &mut self.process;
        wait_for("ferry-vault to exit", Duration::from_secs(30), || {
            let exited = process.as_mut().and_then(Process::exited);
            async move { exited }
        })
        .await?;
        Ok(self.log())
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vault.log")).unwrap_or_default()
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("ferry-vault is not running")?
            .signal(signal)
    }

    /// The loopback port of its API listener.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Writes `contents` to `path`, readable and writable by its owner only, as ferry-vault requires
/// of its root key file.
fn write_owner_only(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    // `mode` applies only when the file is created: an existing one is set as well.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// The root key every region of a test replication set shares.
pub const SHARED_ROOT_KEY: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
pub const WEST_ROOT_TOKEN: &str = "hvs.west-root";
pub const EAST_ROOT_TOKEN: &str = "hvs.east-root";

/// Two regions, each with its own etcd, sidecar and ferry-vault: `west` the primary, `east` its
/// secondary, streaming, with east's server already reading what west writes.
pub struct VaultPair {
    pub west: crate::region::Region,
    pub east: crate::region::Region,
    pub west_vault: VaultServer,
    pub east_vault: VaultServer,
    /// The activation token east used up when it joined.
    pub east_activation: String,
}

impl VaultPair {
    /// Starts both regions; `east_extra` are further flags for east's sidecar.
    pub async fn start(east_extra: &[&str]) -> anyhow::Result<Self> {
        let west = crate::region::Region::start("west", &[]).await?;
        let east = crate::region::Region::start("east", east_extra).await?;
        let west_vault =
            VaultServer::start(&west.sidecar, SHARED_ROOT_KEY, WEST_ROOT_TOKEN).await?;
        let east_vault =
            VaultServer::start(&east.sidecar, SHARED_ROOT_KEY, EAST_ROOT_TOKEN).await?;
        west.enable_primary().await?;
        let east_activation = east.follow(&west, "east").await?;
        // A secret written on the primary and readable on the secondary: the data arrived and
        // east's server took the primary's keyring.
        let path = "/v1/secret/data/pair-canary";
        west_vault
            .api
            .with_token(WEST_ROOT_TOKEN)
            .post(path, serde_json::json!({ "data": { "up": true } }))
            .await?
            .ok()?;
        let east_api = east_vault.api.with_token(EAST_ROOT_TOKEN);
        wait_for(
            "the secondary's server to read the primary's writes",
            crate::region::REPLICATION_TIMEOUT,
            || {
                let api = east_api.clone();
                async move { (api.get(path).await.ok()?.status == 200).then_some(()) }
            },
        )
        .await
        .with_context(|| east_vault.log())?;
        Ok(Self {
            west,
            east,
            west_vault,
            east_vault,
            east_activation,
        })
    }

    /// West's API with its root token.
    pub fn west_root(&self) -> JsonClient {
        self.west_vault.api.with_token(WEST_ROOT_TOKEN)
    }

    /// East's API with its root token.
    pub fn east_root(&self) -> JsonClient {
        self.east_vault.api.with_token(EAST_ROOT_TOKEN)
    }
}

/// Writes `policy` as the ACL policy `name` with `root`, then creates a token holding only it;
/// returns the token.
pub async fn token_with_policy(
    root: &JsonClient,
    name: &str,
    policy: &str,
) -> anyhow::Result<String> {
    root.post(
        &format!("/v1/sys/policies/acl/{name}"),
        serde_json::json!({ "policy": policy }),
    )
    .await?
    .ok()?;
    let created = root
        .post(
            "/v1/auth/token/create",
            serde_json::json!({ "policies": [name] }),
        )
        .await?
        .ok()?;
    Ok(created.body["auth"]["client_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no client_token in {}", created.body))?
        .to_owned())
}
