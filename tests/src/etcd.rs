//! A real etcd server (Debian's `etcd-server`) on free loopback ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

use crate::ports::free_port;
use crate::process::Process;

/// Every test etcd's `--max-txn-ops`, as the chart's bundled etcd runs; the harness's sidecars
/// are told the same (etcd's default is 128).
pub const MAX_TXN_OPS: u32 = 1024;

/// Options for a test etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Backend quota in bytes (etcd's default is 2 GiB).
    pub quota_bytes: u64,
    /// Periodic auto-compaction retention, e.g. "5m"; none when empty.
    pub auto_compaction: String,
    /// Serve clients over TLS with this server certificate, requiring client certificates
    /// signed by `ca` (etcd's `--client-cert-auth`).
    pub tls: Option<EtcdTls>,
}

/// An etcd's TLS files for its client port.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server: crate::pki::CertFiles,
    /// What [`EtcdServer::client`] presents.
    pub client: crate::pki::CertFiles,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            quota_bytes: 2 * 1024 * 1024 * 1024,
            auto_compaction: String::new(),
            tls: None,
        }
    }
}

/// One single-member etcd cluster with its own data directory, stopped on drop.
pub struct EtcdServer {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (and metrics), apart from the client port, which may be TLS.
    metrics_port: u16,
    options: EtcdOptions,
    process: Option<Process>,
}

impl EtcdServer {
    /// Starts an etcd and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(EtcdOptions::default())
    }

    pub fn start_with(options: EtcdOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-etcd-").tempdir()?;
        let mut last_error = None;
        let mut server = Self {
            dir,
            client_port: 0,
            peer_port: 0,
            metrics_port: 0,
            options,
            process: None,
        };
        // A free port can be taken by another test between probing and binding: retry.
        for _ in 0..5 {
            server.client_port = free_port();
            server.peer_port = free_port();
            server.metrics_port = free_port();
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name=ferry-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=ferry-test={peer}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .arg(format!(
                "--quota-backend-bytes={}",
                self.options.quota_bytes
            ))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .arg(format!("--max-txn-ops={MAX_TXN_OPS}"))
            // etcd 3.4 refuses to start on architectures it does not list unless told to.
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        if let Some(tls) = &self.options.tls {
            cmd.arg(format!("--cert-file={}", tls.server.cert.display()))
                .arg(format!("--key-file={}", tls.server.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        if !self.options.auto_compaction.is_empty() {
            cmd.arg("--auto-compaction-mode=periodic").arg(format!(
                "--auto-compaction-retention={}",
                self.options.auto_compaction
            ));
        }
        let mut process = Process::spawn("etcd", cmd, &self.dir.path().join("etcd.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if healthy(self.metrics_port) {
                self.process = Some(process);
                return Ok(());
            }
            if let Some(status) = process.exited() {
                anyhow::bail!(
                    "etcd exited during start-up ({status})\n{}",
                    process.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "etcd did not become healthy in 30s\n{}",
                    process.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A connected etcd client (with the client certificate when the server requires one).
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let options = match &self.options.tls {
            Some(tls) => {
                let pem =
                    |p: &PathBuf| std::fs::read(p).with_context(|| format!("{}", p.display()));
                Some(
                    etcd_client::ConnectOptions::new().with_tls(
                        etcd_client::TlsOptions::new()
                            .ca_certificate(etcd_client::Certificate::from_pem(pem(&tls.ca)?))
                            .identity(etcd_client::Identity::from_pem(
                                pem(&tls.client.cert)?,
                                pem(&tls.client.key)?,
                            )),
                    ),
                )
            }
            None => None,
        };
        etcd_client::Client::connect([self.endpoint()], options)
            .await
            .context("failed to connect to the test etcd")
    }

    /// SIGKILL: the server stops without a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same data directory and ports (after [`Self::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server. `STOP` freezes it with its
    /// connections open: requests sent meanwhile are answered only after `CONT`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.process
            .as_ref()
            .context("etcd is not running")?
            .signal(signal)
    }
}

/// etcd's `/health` answers `{"health":"true"}` once the member serves requests.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("FERRY_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}
