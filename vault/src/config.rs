//! Command-line configuration, parsed once in `main`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// ferry-vault: a Vault-API-compatible secrets server on Ferry's storage sidecar.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Config {
    /// Where the HTTP API listens.
    #[arg(long, env = "FERRY_VAULT_LISTEN", default_value = "127.0.0.1:8200")]
    pub listen: SocketAddr,

    /// The listener's TLS certificate chain (PEM), e.g. from a mounted Kubernetes Secret; a
    /// changed file is loaded within seconds, without a restart. Without it the API is plain
    /// HTTP.
    #[arg(long, env = "FERRY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The TLS certificate's private key (PEM); only its owner may read it (or, as Kubernetes
    /// mounts a Secret, root owns it and only this process's group may read it).
    #[arg(long, env = "FERRY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// The sidecar's storage API socket.
    #[arg(
        long,
        env = "FERRY_STORAGE_SOCKET",
        default_value = "/var/run/ferry/storage.sock"
    )]
    pub storage_socket: PathBuf,

    /// A file holding the root key (32 bytes as 64 hex digits or base64): the same in every
    /// region of a replication set. It seals the keyrings. Only its owner may access it (mode
    /// 0600 or 0400): ferry-vault refuses to start otherwise.
    #[arg(long, env = "FERRY_ROOT_KEY_FILE")]
    pub root_key_file: PathBuf,

    /// A file holding the initial root token, used on the cluster's first start; without it a
    /// root token is generated and printed once.
    #[arg(long, env = "FERRY_INITIAL_ROOT_TOKEN_FILE")]
    pub initial_root_token_file: Option<PathBuf>,

    /// The Unix socket of the sidecar's replication API (`sys/replication/...` is proxied
    /// there). Default: `admin/replication-api.sock` beside the storage socket, where the
    /// sidecar puts it by default.
    #[arg(long, env = "FERRY_SIDECAR_API_SOCKET")]
    pub sidecar_api_socket: Option<PathBuf>,

    /// Bytes of recently read storage values kept in memory (0: none). The cache follows the
    /// sidecar's change stream and is not used while that stream is down; see `read_cache`.
    #[arg(long, env = "FERRY_READ_CACHE_BYTES", default_value_t = crate::read_cache::DEFAULT_BUDGET)]
    pub read_cache_bytes: usize,

    /// Log filter, in `tracing` syntax.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    pub log: String,
}
