//! Ferry's wire protocol, generated from `proto/ferry/storage/v1/storage.proto`,
//! `proto/ferry/forward/v1/forward.proto` and
//! `proto/ferry/replication/v1/replication.proto`.
//!
//! The storage API is how `ferry-vault` reaches its cluster's storage: every operation goes
//! through the sidecar on a Unix socket. [`connect_unix`] opens a client channel to that socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The storage and admin services, version 1.
pub mod storage {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.storage.v1");
}

pub mod time;

/// Request forwarding from a performance secondary to its primary, and read-after-write waits.
pub mod forward {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.forward.v1");
}

/// The replication protocol between clusters, version 1: served on the cluster port over mutual
/// TLS.
pub mod replication {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.replication.v1");
}

/// Where a server whose sidecar listens on `storage_socket` takes forwarded requests: beside it,
/// `storage.sock` giving `storage.forward.sock`.
pub fn forward_socket(storage_socket: &Path) -> PathBuf {
    storage_socket.with_extension("forward.sock")
}

/// Opens a gRPC channel to a sidecar listening on the Unix socket at `path`.
///
/// The channel connects lazily on first use and reconnects after the sidecar restarts.
pub fn connect_unix(path: impl AsRef<Path>) -> Channel {
    let path: PathBuf = path.as_ref().to_path_buf();
    // The URI is required by tonic but never dialled: the connector below opens the socket.
    Endpoint::from_static("http://ferry-sidecar.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }),
    )
}
