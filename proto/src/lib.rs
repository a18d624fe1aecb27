//! Ferry's wire protocol, generated from `proto/ferry/storage/v1/storage.proto`,
//! `proto/ferry/forward/v1/forward.proto` and
//! `proto/ferry/replication/v1/replication.proto`.
//!
//! The storage API is how `ferry-vault` reaches its cluster's storage: every operation goes
//! through the sidecar on a Unix socket. [`connect_unix`] opens a client channel to that socket.
//! The sidecar's replication admin API (HTTP, Vault's `sys/replication` shapes) is on a Unix
//! socket too, in a directory only its user can enter ([`admin_socket`]); [`UnixConnector`]
//! lets an HTTP client reach it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The storage and admin services, version 1.
pub mod storage {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("ferry.storage.v1");
}

pub mod tasks;
pub mod time;
pub mod tls_accept;

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

/// Longest lifetime an activation token may be given, in seconds (30 days, 720h): the sidecar
/// refuses longer, and the operator refuses a spec asking for longer before it asks.
pub const MAX_ACTIVATION_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// The `error_code` the replication admin API gives (beside Vault's `errors`) when a planned
/// promotion cannot reach the old primary: what an operator matches to fall back to a forced
/// promotion, rather than the message's words. Nothing changed when it is given.
pub const PRIMARY_UNREACHABLE: &str = "primary_unreachable";

/// How a performance standby's sidecar refuses a write: `FAILED_PRECONDITION` whose message
/// starts with this, carrying the active node in the metadata below.
pub const NOT_ACTIVE_PREFIX: &str = "not active";
/// The gRPC metadata key naming the active node's id on a not-active refusal.
pub const ACTIVE_NODE_METADATA: &str = "x-ferry-active-node";
/// The gRPC metadata key giving the active node's ferry-vault API address on a not-active
/// refusal (absent when the active node did not advertise one).
pub const ACTIVE_API_ADDR_METADATA: &str = "x-ferry-active-api-addr";

/// The gRPC metadata key that says why a replication call was refused when the reason is the
/// node, not the call: see [`STANDBY_REFUSAL`].
pub const REFUSAL_METADATA: &str = "x-ferry-refusal";
/// The [`REFUSAL_METADATA`] value of a call a performance standby refuses (every replication call
/// but `RemoteResolve`), with `UNAVAILABLE`: only the active node of a cluster serves
/// replication, and a client that holds several of a cluster's addresses tries the next one.
pub const STANDBY_REFUSAL: &str = "standby";

/// Whether `status` is a performance standby's refusal (see [`STANDBY_REFUSAL`]).
pub fn is_standby_refusal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status
            .metadata()
            .get(REFUSAL_METADATA)
            .is_some_and(|v| v.as_bytes() == STANDBY_REFUSAL.as_bytes())
}

/// `first`, then each cause from `source` on, joined by ": ". Clients' own texts ("client error
/// (Connect)", a status message) say nothing of the refused certificate or connection below.
pub fn with_causes(first: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut text = first;
    let mut cause = source;
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Where a server whose sidecar listens on `storage_socket` takes forwarded requests: beside it,
/// `storage.sock` giving `storage.forward.sock`.
pub fn forward_socket(storage_socket: &Path) -> PathBuf {
    storage_socket.with_extension("forward.sock")
}

/// Where a sidecar whose storage API listens on `storage_socket` serves its replication admin
/// API by default: `admin/replication-api.sock` beside it, in a directory of its own (mode 0700)
/// so that the socket is never reachable by another user, not even between its creation and
/// its `chmod`.
pub fn admin_socket(storage_socket: &Path) -> PathBuf {
    storage_socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("admin")
        .join("replication-api.sock")
}

/// An HTTP client connector that opens the Unix socket at its path, whatever host the request
/// names (requests still carry an `http://` URI, for the `Host` header).
#[derive(Clone, Debug)]
pub struct UnixConnector(Arc<PathBuf>);

impl UnixConnector {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(Arc::new(path.into()))
    }
}

impl tower::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            Ok(TokioIo::new(stream))
        })
    }
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

/// Binds a Unix socket at `path` that only this user can open, with no moment at which anyone
/// else could: it is bound inside a fresh directory of mode 0700 beside `path`, restricted to
/// mode 0600, then renamed into place (a stale socket there is replaced). The directory that
/// holds `path` must exist.
pub fn bind_private_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("socket path {} has no file name", path.display()),
        )
    })?;
    let private = dir.join(format!(
        ".{}.binding-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left over by a run of this process id that died here: nobody else's.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let staged = private.join(name);
        let listener = tokio::net::UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_private_socket_is_the_owners_only_and_replaces_a_stale_one() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("ferry-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        std::fs::write(&socket, b"stale").unwrap();
        let listener = bind_private_unix(&socket).unwrap();
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let client = tokio::net::UnixStream::connect(&socket);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
        // Nothing else is left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("api.sock")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
