//! TLS for ferry-vault's HTTP listener, with a certificate that can change under it.
//!
//! The certificate chain and key come from files (`--tls-cert-file`, `--tls-key-file`, Vault's
//! `tls_cert_file` and `tls_key_file`), typically a mounted Kubernetes Secret that cert-manager
//! renews. A watcher compares the files' modification times and sizes every
//! [`RELOAD_INTERVAL`] and loads a changed pair; new handshakes get it at once, open connections
//! keep theirs. A pair that does not load (half-written, key not matching) is reported and the
//! previous one stays in service: a renewal never takes the listener down. The key file, like the
//! root key, must be readable by its owner only.
//!
//! Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds up the others.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Most TLS handshakes under way at once; further connections are closed.
const MAX_HANDSHAKES: usize = 256;
/// Longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the HTTP server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What identifies one version of the files: modification time and size of each.
type Stamp = [(SystemTime, u64); 2];

/// The certificate in service, reloaded when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    /// Loads the files; fails, naming the file, when they do not make a usable pair.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let stamp = stamp(&files)?;
        let key = load_pair(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((stamp, key)),
        }))
    }

    /// Loads the files again if they changed since the pair in service was loaded. Returns
    /// whether a new pair is in service.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let stamp = stamp(&self.files)?;
        if self.current.read().expect("certificate lock poisoned").0 == stamp {
            return Ok(false);
        }
        let key = load_pair(&self.files)?;
        *self.current.write().expect("certificate lock poisoned") = (stamp, key);
        Ok(true)
    }

    /// Checks the files every [`RELOAD_INTERVAL`], for ever.
    pub async fn watch(self: Arc<Self>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    info!(cert = %self.files.cert.display(), "loaded the renewed TLS certificate");
                }
                Ok(false) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %format!("{e:#}"), "the TLS certificate files changed but do not load; still serving the previous certificate");
                }
                Err(_) => {}
            }
        }
    }

    /// A rustls server configuration that serves the current pair.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("certificate lock poisoned")
                .1
                .clone(),
        )
    }
}

fn stamp(files: &TlsFiles) -> anyhow::Result<Stamp> {
    let one = |path: &Path| -> anyhow::Result<(SystemTime, u64)> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        Ok((meta.modified()?, meta.len()))
    };
    Ok([one(&files.cert)?, one(&files.key)?])
}

fn load_pair(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| {
            format!(
                "failed to read the TLS certificate {}",
                files.cert.display()
            )
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the TLS certificate {} is not PEM", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate file {} holds no certificate",
        files.cert.display()
    );
    crate::check_owner_only(&files.key, "TLS key file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("failed to read the TLS key {}", files.key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .with_context(|| format!("the TLS key {} is not a supported key", files.key.display()))?;
    let pair = CertifiedKey::new(chain, signer);
    pair.keys_match().with_context(|| {
        format!(
            "the TLS key {} does not belong to the certificate {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(pair))
}

/// A listener that hands axum connections once their TLS handshake is done.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` and runs handshakes with `config` in the background.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        ferry_proto::tls_accept::spawn_handshakes(
            Arc::new(tcp),
            TlsAcceptor::from(config),
            tx,
            MAX_HANDSHAKES,
            HANDSHAKE_TIMEOUT,
        );
        Ok(Self { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped (the server is going away): nothing more to accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
