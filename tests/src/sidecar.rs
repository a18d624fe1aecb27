//! A real `ferry-sidecar` process against a test etcd.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Context;
use ferry_proto::storage::admin_client::AdminClient;
use ferry_proto::storage::storage_client::StorageClient;
use ferry_proto::storage::{StatusRequest, StatusResponse};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::ports::free_port;
use crate::process::Process;
use crate::wait_for;

/// Where the workspace's binaries are: `FERRY_BIN_DIR`, else the target directory this test or
/// benchmark binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// How to start a sidecar.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    pub cluster: String,
    pub node_id: String,
    /// Extra flags, e.g. `--fence-ttl-seconds=2`.
    pub args: Vec<String>,
    /// How long start-up (fence, recovery) may take.
    pub ready_timeout: Duration,
    /// A loopback port for the cluster port, free when chosen.
    pub cluster_port: u16,
    /// The key-encryption key (64 hex digits) written to a file for `--key-encryption-key-file`;
    /// every test sidecar shares [`TEST_KEK`] unless a test says otherwise.
    pub key_encryption_key: Option<String>,
}

/// The key-encryption key test sidecars share, as the regions of one replication set must.
pub const TEST_KEK: &str = "66657272792d746573742d6b656b2d6e6f742d612d7265616c2d736563726574";

impl SidecarOptions {
    pub fn new(cluster: &str, node_id: &str) -> Self {
        Self {
            cluster: cluster.into(),
            node_id: node_id.into(),
            args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            cluster_port: free_port(),
            key_encryption_key: Some(TEST_KEK.into()),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// One sidecar process with its own socket directory, killed on drop.
pub struct Sidecar {
    dir: TempDir,
    etcd: String,
    options: SidecarOptions,
    process: Option<Process>,
}

impl Sidecar {
    /// Starts a sidecar on `etcd` and waits until its storage API answers.
    pub async fn start(etcd: &str, options: SidecarOptions) -> anyhow::Result<Self> {
        let mut sidecar = Self::spawn(etcd, options)?;
        sidecar.wait_ready().await?;
        Ok(sidecar)
    }

    /// Starts a sidecar without waiting for it (it may be blocked on the fence).
    pub fn spawn(etcd: &str, options: SidecarOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-sidecar-")
            .tempdir()?;
        let mut sidecar = Self {
            dir,
            etcd: etcd.into(),
            options,
            process: None,
        };
        sidecar.launch()?;
        Ok(sidecar)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin_dir().join("ferry-sidecar"));
        cmd.arg(format!("--etcd-endpoints={}", self.etcd))
            .arg(format!("--cluster={}", self.options.cluster))
            .arg(format!("--node-id={}", self.options.node_id))
            .arg(format!("--storage-socket={}", self.socket().display()))
            .arg(format!(
                "--cluster-listen=127.0.0.1:{}",
                self.options.cluster_port
            ))
            .args(&self.options.args)
            .args(self.kek_arg()?)
            .env(
                "FERRY_ETCD_MAX_TXN_OPS",
                crate::etcd::MAX_TXN_OPS.to_string(),
            )
            .env(
                "FERRY_LOG",
                std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into()),
            );
        self.process = Some(Process::spawn(
            "ferry-sidecar",
            cmd,
            &self.dir.path().join("sidecar.log"),
        )?);
        Ok(())
    }

    /// Writes the key-encryption key file (owner only) and returns the flag naming it.
    fn kek_arg(&self) -> anyhow::Result<Option<String>> {
        let Some(kek) = &self.options.key_encryption_key else {
            return Ok(None);
        };
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.dir.path().join("kek");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, kek.as_bytes())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Some(format!(
            "--key-encryption-key-file={}",
            path.display()
        )))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("storage.sock")
    }

    /// The replication admin API's socket (the sidecar's default, beside the storage socket).
    pub fn api_socket(&self) -> PathBuf {
        ferry_proto::admin_socket(&self.socket())
    }

    /// Waits until the storage API answers a status call.
    pub async fn wait_ready(&mut self) -> anyhow::Result<StatusResponse> {
        let socket = self.socket();
        let timeout = self.options.ready_timeout;
        let admin = AdminClient::new(ferry_proto::connect_unix(&socket));
        let waited = wait_for("the sidecar's storage API", timeout, || {
            let exited = self.process.as_mut().and_then(Process::exited);
            let mut admin = admin.clone();
            let present = socket.exists();
            async move {
                if let Some(status) = exited {
                    return Some(Err(anyhow::anyhow!(
                        "ferry-sidecar exited during start-up ({status})"
                    )));
                }
                if !present {
                    return None;
                }
                // Ready once it serves as the active node or as a standby (not while it is
                // recovering after taking the fence).
                admin
                    .status(StatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
                    .filter(|s| s.role == "active" || s.role == "standby")
                    .map(Ok)
            }
        })
        .await;
        match waited {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) | Err(e) => Err(e.context(self.log_tail(30))),
        }
    }

    pub fn storage(&self) -> StorageClient<Channel> {
        StorageClient::new(ferry_proto::connect_unix(self.socket()))
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(ferry_proto::connect_unix(self.socket()))
    }

    pub async fn status(&self) -> anyhow::Result<StatusResponse> {
        Ok(self.admin().status(StatusRequest {}).await?.into_inner())
    }

    /// Polls the status until `done` holds (30 s at most) and returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&StatusResponse) -> bool,
    ) -> anyhow::Result<StatusResponse> {
        wait_for(what, Duration::from_secs(30), || async {
            let status = self.status().await.ok()?;
            done(&status).then_some(status)
        })
        .await
    }

    /// Waits until every dirty merkle subpage is flushed and the checkpoint is the last WAL index.
    /// Waits until this sidecar is its cluster's active node.
    pub async fn wait_active(&self, timeout: Duration) -> anyhow::Result<StatusResponse> {
        wait_for("the sidecar to become the active node", timeout, || async {
            let status = self.status().await.ok()?;
            (status.role == "active").then_some(status)
        })
        .await
    }

    pub async fn wait_flushed(&self) -> anyhow::Result<StatusResponse> {
        self.wait_status("the merkle index to be flushed", |s| {
            s.merkle_dirty_subpages == 0 && s.merkle_checkpoint == s.last_wal
        })
        .await
    }

    fn process(&self) -> anyhow::Result<&Process> {
        self.process.as_ref().context("sidecar is not running")
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, `KILL`) to the sidecar process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.process()?.signal(signal)
    }

    /// Serves the cluster port on `port` from the next (re)start on.
    pub fn set_cluster_port(&mut self, port: u16) {
        self.options.cluster_port = port;
    }

    /// SIGKILL: no clean shutdown, no final flush, the fence lease left to expire.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait; fails unless it exits cleanly.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut p = self.process.take().context("sidecar is not running")?;
        let ok = p.terminate()?;
        anyhow::ensure!(ok, "ferry-sidecar did not exit cleanly\n{}", p.log_tail(30));
        Ok(())
    }

    /// Waits until the process exits by itself (after `signal("TERM")`, say) and returns its exit
    /// status; fails after `timeout`, leaving it running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let process = self.process.as_mut().context("sidecar is not running")?;
        wait_for("ferry-sidecar to exit", timeout, || {
            let exited = process.exited();
            async move { exited }
        })
        .await
    }

    /// Starts the sidecar again with the same options (after kill or stop) and waits for it.
    pub async fn restart(&mut self) -> anyhow::Result<StatusResponse> {
        self.kill();
        self.launch()?;
        self.wait_ready().await
    }

    /// Uses `kek` (64 hex digits, or none) from the next start on.
    pub fn set_key_encryption_key(&mut self, kek: Option<&str>) {
        self.options.key_encryption_key = kek.map(str::to_owned);
    }

    /// Restarts with different extra flags.
    pub async fn restart_with(&mut self, args: Vec<String>) -> anyhow::Result<StatusResponse> {
        self.options.args = args;
        self.restart().await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(lines))
            .unwrap_or_else(|| {
                std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
            })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    pub fn options(&self) -> &SidecarOptions {
        &self.options
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }
}
