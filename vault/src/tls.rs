//! TLS for ferry-vault's HTTP listener, with a certificate that can change under it.
//!
//! The certificate chain and key come from files (`--tls-cert-file`, `--tls-key-file`, Vault's
//! `tls_cert_file` and `tls_key_file`), typically a mounted Kubernetes Secret that cert-manager
//! renews. A watcher compares the files' modification times and sizes every
//! [`RELOAD_INTERVAL`] and loads a changed pair; new handshakes get it at once, open connections
//! keep theirs. A pair that does not load (half-written, key not matching) is reported and the
//! previous one stays in service: a renewal never takes the listener down. The key file, like the
//! root key, must be readable by its owner only, or be a Kubernetes Secret volume's file for the
//! process's own group (see `check_key_file`).
//!
//! Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds up the others.
//!
//! The same pair serves one more purpose: a performance standby forwards writes to its cluster's
//! active node over HTTPS (see `ha`), and every node of a cluster serves the same certificate
//! (the chart mounts one Secret in every pod). So a standby trusts exactly that certificate,
//! the one it serves itself, or the one it served before the last renewal (nodes load a renewed
//! Secret minutes apart): [`ReloadingCert::peer_client_config`]. Pod addresses are rarely in a
//! certificate's names, and they need not be: the peer must present this very certificate and
//! prove, in the handshake, that it holds its key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
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
    current: RwLock<Loaded>,
}

/// The pair in service, the stamp of the files it came from, and the pair served before it.
#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
    previous: Option<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Loads the files; fails, naming the file, when they do not make a usable pair.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let stamp = stamp(&files)?;
        let key = load_pair(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Loaded {
                stamp,
                key,
                previous: None,
            }),
        }))
    }

    /// Loads the files again if they changed since the pair in service was loaded. Returns
    /// whether a new pair is in service.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let stamp = stamp(&self.files)?;
        if self
            .current
            .read()
            .expect("certificate lock poisoned")
            .stamp
            == stamp
        {
            return Ok(false);
        }
        let key = load_pair(&self.files)?;
        let mut current = self.current.write().expect("certificate lock poisoned");
        let previous = std::mem::replace(&mut current.key, key);
        current.stamp = stamp;
        current.previous = Some(previous);
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
                .key
                .clone(),
        )
    }
}

impl ReloadingCert {
    /// A rustls client configuration for reaching another node of this cluster: it accepts a
    /// server that presents the certificate this node serves, or served before its last renewal.
    pub fn peer_client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        let provider = rustls::crypto::ring::default_provider();
        let verifier = Arc::new(SameCertificate {
            cert: self.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    }

    /// Whether `presented` is the end-entity certificate in service or the one before it.
    fn is_ours(&self, presented: &CertificateDer<'_>) -> bool {
        let current = self.current.read().expect("certificate lock poisoned");
        std::iter::once(&current.key)
            .chain(current.previous.as_ref())
            .any(|pair| pair.end_entity_cert().is_ok_and(|ours| ours == presented))
    }
}

/// Trusts a server that presents this node's own certificate (see the module header); the
/// handshake's signatures are checked as usual, so the server must hold the certificate's key.
#[derive(Debug)]
struct SameCertificate {
    cert: Arc<ReloadingCert>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SameCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // A renewal this node has not loaded yet may be what the peer serves: look once more.
        if self.cert.is_ours(end_entity)
            || (self.cert.reload_if_changed().unwrap_or(false) && self.cert.is_ours(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the node presents a certificate other than this node's ({}): every node of a \
             cluster must serve the same certificate (one Secret mounted in every pod)",
            self.cert.files.cert.display()
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
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

/// Refuses a TLS key file others may access. Its group may read it only as Kubernetes mounts a
/// Secret for a pod's `fsGroup`: a file that root owns, that only its group may read (not
/// change), that group one of this process's own, reached through the kubelet's
/// `..data` link, which an update (a cert-manager renewal) swaps at once. Any other key file
/// must be owner-only, as the root key is.
fn check_key_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("failed to read the TLS key file {}", path.display()))?;
    if !secret_volume_mode(meta.uid(), meta.mode()) || !process_groups().contains(&meta.gid()) {
        crate::check_owner_only(path, "TLS key file")?;
    }
    Ok(())
}

/// Whether a file owned by `uid` with `mode` is a Kubernetes Secret volume's: root's, readable
/// by its group and no one else, writable by root only.
fn secret_volume_mode(uid: u32, mode: u32) -> bool {
    uid == 0 && mode & 0o077 == 0o040
}

/// This process's groups, effective and supplementary, from /proc/self/status; none when it
/// cannot be read (then only owner-only keys pass).
fn process_groups() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ids = |field: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut groups = ids("Groups:");
    // "Gid:" lists the real, effective, saved and filesystem group ids.
    groups.extend(ids("Gid:").get(1).copied());
    groups
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
    check_key_file(&files.key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_roots_group_readable_secret_files_pass_beside_owner_only_ones() {
        // As the kubelet mounts a Secret for a pod's fsGroup.
        assert!(secret_volume_mode(0, 0o100440));
        assert!(secret_volume_mode(0, 0o100640));
        // Another owner, a group that may write, or others who may read: not a Secret volume
        // (and then the owner-only rule applies).
        assert!(!secret_volume_mode(1000, 0o100440));
        assert!(!secret_volume_mode(0, 0o100460));
        assert!(!secret_volume_mode(0, 0o100444));
        assert!(!secret_volume_mode(0, 0o100600));
        assert!(!secret_volume_mode(0, 0o100450));
        // This process's groups are read; its effective group is among them.
        assert!(!process_groups().is_empty());
    }
}
