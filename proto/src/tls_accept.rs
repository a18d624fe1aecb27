//! Accepting TLS connections without letting one client hold up the others, for both servers
//! (ferry-vault's listener and the sidecar's cluster port).
//!
//! Each handshake runs in its own task, at most `max_handshakes` at once (more connections are
//! closed at once) and each within `timeout`; finished connections go to a bounded channel. The
//! loop ends when the channel's receiver goes away, so a server that stops stops accepting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// A connection whose TLS handshake is done, with its peer's address.
pub type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Accepts on `tcp` and hands each connection to `acceptor`, until `accepted` is closed.
pub fn spawn_handshakes(
    tcp: Arc<TcpListener>,
    acceptor: TlsAcceptor,
    accepted: mpsc::Sender<Accepted>,
    max_handshakes: usize,
    timeout: Duration,
) {
    let handshakes = Arc::new(Semaphore::new(max_handshakes));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = accepted.closed() => return,
                next = tcp.accept() => match next {
                    Ok(next) => next,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        // Out of descriptors, say: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Replication and API calls are small and latency-bound.
            let _ = stream.set_nodelay(true);
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                debug!(%peer, "too many TLS handshakes under way; closing the connection");
                continue;
            };
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
}
