//! The cluster port: mutual TLS for the replication service, server and client side.
//!
//! There is no plaintext mode. The server demands a client certificate chained to the
//! replication CA; the client checks the server's chain to the same CA and the fixed name
//! [`SERVER_NAME`]. A peer with a certificate from another CA fails the handshake.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use ferry_proto::replication::replication_client::ReplicationClient;
use ferry_proto::replication::replication_server::ReplicationServer;
use tokio::sync::watch;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tracing::{info, warn};

use super::definition::ClusterDefinition;
use super::pki::{CertifiedKey, SERVER_NAME};
use super::service::ReplicationService;

/// Largest replication message accepted: a WAL shipment of up to 2 MiB plus one entry.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Most replication calls served at once per connection.
const MAX_CONCURRENT_CALLS: usize = 64;

/// What a side of the cluster port needs: the CA it trusts and its own certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_cert_pem: String,
    pub identity: CertifiedKey,
}

impl TlsMaterial {
    pub fn of(definition: &ClusterDefinition) -> Self {
        Self {
            ca_cert_pem: definition.ca_cert_pem.clone(),
            identity: definition.identity.clone(),
        }
    }
}

/// A client of the primary's replication service at `address` (`host:port`), over mutual TLS.
/// Connects lazily; the first call fails fast when the address does not answer.
pub fn client(address: &str, tls: &TlsMaterial) -> anyhow::Result<ReplicationClient<Channel>> {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_cert_pem))
        .identity(Identity::from_pem(
            &tls.identity.cert_pem,
            &tls.identity.key_pem,
        ))
        .domain_name(SERVER_NAME);
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
pub async fn serve(
    listen: SocketAddr,
    service: ReplicationService,
    mut material: watch::Receiver<Option<TlsMaterial>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = std::sync::Arc::new(bind(listen).await?);
    info!(%listen, "cluster port bound; it serves once this cluster has a replication role");
    loop {
        let current = material.borrow_and_update().clone();
        let Some(tls) = current else {
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
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &tls.identity.cert_pem,
                &tls.identity.key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&tls.ca_cert_pem));
        let mut stop = material.clone();
        let mut stop_all = shutdown.clone();
        let served = Server::builder()
            .tls_config(config)
            .context("invalid TLS material for the cluster port")?
            .concurrency_limit_per_connection(MAX_CONCURRENT_CALLS)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(
                ReplicationServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming(listener.clone()), async move {
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

/// Accepted connections with Nagle's algorithm off: WAL shipments are small and latency-bound,
/// and tonic sets `TCP_NODELAY` only on listeners it binds itself. The listener outlives each
/// server instance (see [`serve`]).
fn incoming(
    listener: std::sync::Arc<tokio::net::TcpListener>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        Some((accepted, listener))
    })
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
