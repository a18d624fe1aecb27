//! The cluster port: mutual TLS for the replication service, server and client side.
//!
//! There is no plaintext mode. The server trusts every member's CA for client certificates; a
//! client trusts what [`TlsMaterial`] names: its primary's CA alone when it calls its primary,
//! every member's where any member may answer (see `pki`). The client checks
//! the server's chain and the fixed name [`SERVER_NAME`]; the server checks the chain of a client
//! certificate when one is presented, and each call but `Activate` requires one, whose key the
//! service then matches with the member's record. A certificate from another CA fails the
//! handshake. An activating secondary, which has no certificate yet, connects without one and
//! trusts only the CA its token names.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use ferry_proto::replication::replication_client::ReplicationClient;
use ferry_proto::replication::replication_server::{
    Replication as ReplicationRpc, ReplicationServer,
};
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tracing::{info, warn};

use super::definition::ClusterDefinition;
use super::pki::{CertifiedKey, SERVER_NAME};

/// Largest replication message accepted: a WAL shipment of up to 2 MiB plus one entry.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most replication calls served at once per connection.
const MAX_CONCURRENT_CALLS: usize = 64;
/// Most TLS handshakes under way at once on the cluster port.
const MAX_HANDSHAKES: usize = 64;
/// Most connections handshaken and not yet taken by the server.
const MAX_PENDING_CONNECTIONS: usize = 64;

/// What the client side needs: the CAs it trusts and its client certificate, if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_cert_pem: String,
    pub identity: Option<CertifiedKey>,
}

impl TlsMaterial {
    /// For calls to the primary `definition` follows: only that primary's CA is trusted.
    pub fn to_primary(definition: &ClusterDefinition) -> Self {
        Self {
            ca_cert_pem: definition.primary_cas_pem().to_owned(),
            identity: Some(definition.client_identity()),
        }
    }

    /// For calls to any member (a primary asking its secondaries which epoch they know, a
    /// standby reaching its own cluster's active node, a secondary looking for a new
    /// primary): every member's CA is trusted.
    pub fn to_members(definition: &ClusterDefinition) -> Self {
        Self {
            ca_cert_pem: definition.member_cas_pem.clone(),
            identity: Some(definition.client_identity()),
        }
    }
}

/// The CAs the cluster port trusts for client certificates (every member's), replaceable while
/// it serves: a member joining or leaving changes them without dropping anyone's connection.
#[derive(Debug, Default)]
pub struct ClientTrust {
    current: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
}

impl ClientTrust {
    /// Trusts the CA certificates in `member_cas_pem` from now on.
    pub fn set(&self, member_cas_pem: &str) -> anyhow::Result<()> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(member_cas_pem.as_bytes()) {
            roots
                .add(cert.context("member CA certificates are not valid PEM")?)
                .context("a member CA certificate is unusable")?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .context("no usable member CA certificate")?;
        *self.current.write().expect("trust lock poisoned") = Some(verifier);
        Ok(())
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.current.read().expect("trust lock poisoned").clone()
    }
}

/// What the cluster port serves with: the cluster's identity (server certificate and key) and
/// the member CAs it trusts for client certificates. Every node of a cluster serves the port
/// with the same identity, read from the cluster definition: a standby publishes the definition
/// it reads from etcd (`standby`), the active node the one it adopts (`Replication::adopt`).
#[derive(Clone, Debug)]
pub struct PortTls {
    material: Arc<watch::Sender<Option<CertifiedKey>>>,
    trust: Arc<ClientTrust>,
}

impl Default for PortTls {
    fn default() -> Self {
        Self {
            material: Arc::new(watch::Sender::new(None)),
            trust: Arc::default(),
        }
    }
}

impl PortTls {
    /// The identity to serve with, when this cluster has a role.
    pub fn material(&self) -> watch::Receiver<Option<CertifiedKey>> {
        self.material.subscribe()
    }

    /// The member CAs trusted for client certificates.
    pub fn trust(&self) -> Arc<ClientTrust> {
        self.trust.clone()
    }

    /// Serves with `definition`'s identity and trusts its member CAs from now on; without a
    /// definition, stops serving.
    pub fn publish(&self, definition: Option<&ClusterDefinition>) {
        if let Some(d) = definition {
            self.trust_members(&d.member_cas_pem);
        }
        let material = definition.map(|d| d.identity.clone());
        self.material.send_if_modified(|m| {
            let changed = *m != material;
            *m = material;
            changed
        });
    }

    /// Trusts the CA certificates in `member_cas_pem` for client certificates from now on.
    pub fn trust_members(&self, member_cas_pem: &str) {
        if let Err(e) = self.trust.set(member_cas_pem) {
            warn!(error = %format!("{e:#}"), "the member CA certificates are unusable; the cluster port refuses clients");
        }
    }
}

/// Checks client certificates against whatever [`ClientTrust`] holds at the time.
#[derive(Debug)]
struct CurrentTrust(Arc<ClientTrust>);

impl ClientCertVerifier for CurrentTrust {
    fn client_auth_mandatory(&self) -> bool {
        // An activating secondary has no certificate yet; every other call requires one.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verifier() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General("no member CA is trusted yet".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The cluster port's TLS configuration: `identity` as server, clients checked by `trust`.
fn server_config(
    identity: &CertifiedKey,
    trust: &Arc<ClientTrust>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the cluster port's certificate is not valid PEM")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .context("the cluster port's key is not valid PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(Arc::new(CurrentTrust(trust.clone())))
        .with_single_cert(chain, key)
        .context("the cluster port's key does not match its certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client of the primary's replication service at `address` (`host:port`), over mutual TLS.
/// Connects lazily; the first call fails fast when the address does not answer.
pub fn client(address: &str, tls: &TlsMaterial) -> anyhow::Result<ReplicationClient<Channel>> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_cert_pem))
        .domain_name(SERVER_NAME);
    if let Some(identity) = &tls.identity {
        config = config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .with_context(|| format!("invalid cluster address {address:?}"))?
        .tls_config(config)
        .context("invalid TLS material")?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Serves the replication service on `listen` whenever `material` holds TLS material; restarts
/// the server when it changes and stops it when it goes away, until `shutdown`.
///
/// The port is bound once, at start-up, whether or not this cluster has a role yet: a port
/// that is taken fails start-up loudly, and no other process can take it between start-up and
/// the day replication is enabled. Without a role, connections are accepted and closed.
pub async fn serve<S: ReplicationRpc + Clone>(
    listen: SocketAddr,
    service: S,
    mut material: watch::Receiver<Option<CertifiedKey>>,
    trust: Arc<ClientTrust>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = std::sync::Arc::new(bind(listen).await?);
    info!(%listen, "cluster port bound; it serves once this cluster has a replication role");
    loop {
        let current = material.borrow_and_update().clone();
        let Some(identity) = current else {
            tokio::select! {
                changed = material.changed() => if changed.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
                // No role: nothing to serve.
                accepted = listener.accept() => if accepted.is_err() {
                    // Out of descriptors, say: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                },
            }
            continue;
        };
        info!(%listen, "cluster port ready (mutual TLS)");
        let config = server_config(&identity, &trust)?;
        let mut stop = material.clone();
        let mut stop_all = shutdown.clone();
        let served = Server::builder()
            .concurrency_limit_per_connection(MAX_CONCURRENT_CALLS)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(
                ReplicationServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming(listener.clone(), config), async move {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = stop_all.changed() => {}
                }
            })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "cluster port failed; restarting it");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// Connections whose TLS handshake is done (see `ferry_proto::tls_accept`), with Nagle's
/// algorithm off: WAL shipments are small and latency-bound. The listener outlives each server
/// instance (see [`serve`]); this one's accepting stops with it.
fn incoming(
    listener: Arc<tokio::net::TcpListener>,
    config: Arc<rustls::ServerConfig>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_PENDING_CONNECTIONS);
    ferry_proto::tls_accept::spawn_handshakes(
        listener,
        TlsAcceptor::from(config),
        tx,
        MAX_HANDSHAKES,
        CONNECT_TIMEOUT,
    );
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(stream, _)| Ok(stream))
}

/// Binds `listen`, retrying briefly: a server just stopped may still hold the port.
async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let mut attempt = 0;
    loop {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => return Ok(l),
            Err(e) if attempt < 20 => {
                attempt += 1;
                warn!(%listen, error = %e, "cluster port busy; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to listen on cluster port {listen}"));
            }
        }
    }
}
