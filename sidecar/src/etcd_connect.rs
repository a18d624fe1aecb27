//! How the sidecar reaches its cluster's etcd: the endpoints, TLS with a client certificate
//! (etcd's `--client-cert-auth`), and the connection itself, which waits a bounded time for an
//! etcd not up yet and stops at once on one that refuses this node.
//!
//! TLS is on when a CA file is given; every endpoint must then be `https://`, and a plain
//! `http://` endpoint beside a CA file, or an `https://` one without it, is refused at start-up
//! rather than silently sending the keyspace in clear or failing later. A client key that its
//! group or others can read is refused, as ssh refuses such keys.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tracing::info;

/// TLS settings for etcd, read from their files.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    ca_pem: Vec<u8>,
    /// Client certificate and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTls {
    /// Reads the CA certificate and, when given, the client certificate and key.
    pub fn load(ca: &Path, client: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let ca_pem = read_pem(ca, "etcd CA certificate")?;
        let identity = match client {
            Some((cert, key)) => {
                check_private(key)?;
                Some((
                    read_pem(cert, "etcd client certificate")?,
                    read_pem(key, "etcd client key")?,
                ))
            }
            None => None,
        };
        Ok(Self { ca_pem, identity })
    }

    fn options(&self) -> TlsOptions {
        let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("failed to read the {what} {}", path.display()))?;
    anyhow::ensure!(
        String::from_utf8_lossy(&bytes).contains("-----BEGIN "),
        "the {what} {} is not PEM",
        path.display()
    );
    Ok(bytes)
}

/// Refuses a key file its group or others may read.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("failed to read {}", path.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "the key file {} is readable by its group or others (mode {:03o}); allow its owner only (chmod 600)",
        path.display(),
        mode & 0o777
    );
    Ok(())
}

/// Checks that every endpoint's scheme matches whether TLS is on.
pub fn check_endpoints(endpoints: &[String], tls: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!endpoints.is_empty(), "no etcd endpoint given");
    for endpoint in endpoints {
        let https = endpoint.starts_with("https://");
        if tls && !https {
            anyhow::bail!(
                "etcd endpoint {endpoint} is not https:// but --etcd-ca-file is set: every endpoint must use TLS"
            );
        }
        if !tls && https {
            anyhow::bail!("etcd endpoint {endpoint} is https:// and needs --etcd-ca-file");
        }
        if !tls && !endpoint.starts_with("http://") {
            anyhow::bail!("etcd endpoint {endpoint} must start with http:// or https://");
        }
    }
    Ok(())
}

/// Connects to etcd and waits until it answers a read of `key` ([`wait_until_answering`]).
/// Building the client reaches nothing (its channel connects on first use), so it fails only
/// on options no retry mends, at once.
pub async fn connect(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    key: &str,
) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = tls {
        options = options.with_tls(tls.options());
    }
    let client = Client::connect(endpoints, Some(options))
        .await
        .with_context(|| format!("failed to connect to etcd at {endpoints:?}"))?;
    wait_until_answering(&client, key, endpoints).await?;
    Ok(client)
}

/// How long start-up waits for etcd to answer. In a pod the bundled etcd starts beside the
/// nodes and its name resolves only once its pod runs; a sidecar that exited instead would be
/// restarted by kubelet after ever longer pauses (CrashLoopBackOff), which can keep a new
/// installation down for minutes after etcd is up. ferry-vault waits as long for the sidecar.
pub const STARTUP_WAIT: Duration = Duration::from_secs(300);
/// How often the wait says that it is still waiting.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Longest one read of the wait may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until etcd answers a read of `key`, saying why not now and then. An etcd that refuses
/// this node (a certificate either side rejects, credentials it does not accept) ends the wait
/// at once with the reason, as does [`STARTUP_WAIT`] running out: waiting would not mend it.
async fn wait_until_answering(
    client: &Client,
    key: &str,
    endpoints: &[String],
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut reported: Option<std::time::Instant> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut kv = client.kv_client();
        let read = kv.get(key, Some(etcd_client::GetOptions::new().with_count_only()));
        let e = match tokio::time::timeout(ATTEMPT_TIMEOUT, read).await {
            Ok(Ok(_)) => {
                if reported.is_some() {
                    info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "etcd answers"
                    );
                }
                return Ok(());
            }
            Ok(Err(e)) if !not_reachable_yet(&e) => {
                return Err(e).context(format!("etcd at {endpoints:?} refused this node"));
            }
            Ok(Err(e)) => anyhow::Error::from(e),
            // Accepted but not answered: a member without quorum, say.
            Err(_) => anyhow::anyhow!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs()),
        };
        if started.elapsed() >= STARTUP_WAIT {
            return Err(e).context(format!(
                "etcd at {endpoints:?} did not answer within {}s",
                STARTUP_WAIT.as_secs()
            ));
        }
        if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            info!(
                error = %e,
                waited_s = started.elapsed().as_secs(),
                limit_s = STARTUP_WAIT.as_secs(),
                "waiting for etcd to answer"
            );
            reported = Some(std::time::Instant::now());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Whether `e` says that etcd cannot be reached yet (its name does not resolve, nothing
/// listens, no answer in time) rather than that it refused this node.
fn not_reachable_yet(e: &etcd_client::Error) -> bool {
    let inner: &(dyn std::error::Error + 'static) = match e {
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::IoError(io) => io,
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) =>
        {
            s
        }
        _ => return false,
    };
    !failed_in_tls(inner)
}

/// Whether a TLS error is in `e`'s chain: a certificate one side does not accept. An
/// `io::Error` hides the error it wraps from `source()`, so each one is opened.
fn failed_in_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if err.is::<rustls::Error>() || wrapped.is_some_and(|w| w.is::<rustls::Error>()) {
            return true;
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_etcd_out_of_reach_is_waited_for() {
        let status = |code| etcd_client::Error::GRpcStatus(tonic::Status::new(code, "x"));
        assert!(not_reachable_yet(&status(tonic::Code::Unavailable)));
        assert!(not_reachable_yet(&status(tonic::Code::DeadlineExceeded)));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(not_reachable_yet(&etcd_client::Error::IoError(refused)));
        for code in [
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::Unknown,
        ] {
            assert!(!not_reachable_yet(&status(code)), "{code:?}");
        }
        // A certificate refused in the handshake, as tokio-rustls reports it, under the code
        // tonic gives a connection that failed.
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let mut failed = tonic::Status::unavailable("transport error");
        failed.set_source(std::sync::Arc::new(tls));
        assert!(!not_reachable_yet(&etcd_client::Error::GRpcStatus(failed)));
    }

    #[test]
    fn endpoint_schemes_must_match_tls() {
        let http = vec!["http://127.0.0.1:2379".to_string()];
        let https = vec!["https://127.0.0.1:2379".to_string()];
        assert!(check_endpoints(&http, false).is_ok());
        assert!(check_endpoints(&https, true).is_ok());
        let e = check_endpoints(&http, true).unwrap_err().to_string();
        assert!(e.contains("not https://"), "{e}");
        let e = check_endpoints(&https, false).unwrap_err().to_string();
        assert!(e.contains("--etcd-ca-file"), "{e}");
        assert!(check_endpoints(&["127.0.0.1:2379".to_string()], false).is_err());
        assert!(check_endpoints(&[], false).is_err());
    }

    #[test]
    fn readable_keys_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_private(&key).is_ok());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private(&key).unwrap_err().to_string();
        assert!(e.contains("mode 640"), "{e}");
    }
}
