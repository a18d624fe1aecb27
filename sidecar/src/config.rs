//! The sidecar's configuration, parsed once from flags and environment in `main`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::commit::Limits;
use crate::merkle::Geometry;
use crate::path::DEFAULT_LOCAL_PREFIXES;

/// ferry-sidecar: the replicated storage gateway between a Vault-like server and etcd.
///
/// Without a subcommand it serves; `ferry-sidecar admin ...` talks to a running sidecar.
#[derive(Clone, Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub admin: Option<AdminCli>,
    #[command(flatten)]
    pub config: Config,
}

/// Admin calls to a running sidecar, over its storage socket.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum AdminCli {
    /// Calls the admin API of a running sidecar and prints the answer.
    Admin {
        /// The sidecar's storage socket.
        #[arg(
            long,
            env = "FERRY_STORAGE_SOCKET",
            default_value = "/var/run/ferry/storage.sock"
        )]
        storage_socket: PathBuf,
        #[command(subcommand)]
        call: AdminCall,
    },
}

/// One admin call.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum AdminCall {
    /// WAL, merkle index and fence state.
    Status,
    /// Rebuilds the merkle index from a full scan (slow at many keys; writes continue).
    Reindex,
    /// Compares the merkle index with a full scan and names every key that differs.
    CheckMerkle,
    /// Prints WAL entries after an index.
    ReadWal {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

/// How the sidecar serves.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "FERRY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// CA certificate (PEM) that signed etcd's server certificates: TLS to etcd, whose
    /// endpoints must then all be `https://`.
    #[arg(long, env = "FERRY_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<std::path::PathBuf>,

    /// Client certificate (PEM) this sidecar presents to etcd (etcd's `--client-cert-auth`).
    #[arg(long, env = "FERRY_ETCD_CERT_FILE", requires_all = ["etcd_key_file", "etcd_ca_file"])]
    pub etcd_cert_file: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM); refused when group- or world-readable.
    #[arg(long, env = "FERRY_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<std::path::PathBuf>,

    /// Name of this cluster (region); its state lives under `/ferry/<cluster>/` in etcd.
    #[arg(long, env = "FERRY_CLUSTER", default_value = "default", value_parser = parse_cluster_name)]
    pub cluster: String,

    /// This node's identity, unique in its cluster; the host name (the pod name in Kubernetes)
    /// by default. A restarted node with the same id reclaims its own write fence at once
    /// instead of waiting for the old lease to expire.
    #[arg(long, env = "FERRY_NODE_ID", default_value_t = host_name())]
    pub node_id: String,

    /// Unix socket the storage API is served on.
    #[arg(
        long,
        env = "FERRY_STORAGE_SOCKET",
        default_value = "/var/run/ferry/storage.sock"
    )]
    pub storage_socket: PathBuf,

    /// Path prefixes that are local to this cluster (never replicated), comma-separated.
    #[arg(long, env = "FERRY_LOCAL_PREFIXES", value_delimiter = ',', default_values_t = DEFAULT_LOCAL_PREFIXES.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub local_prefixes: Vec<String>,

    /// TTL of the write-fence lease, in seconds: how long a stalled node keeps the fence, and
    /// so about how long writes wait after the active node dies before a standby takes over
    /// (5 s: writes are back within ~5.2 s of a kill -9).
    #[arg(long, env = "FERRY_FENCE_TTL_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(i64).range(2..=600))]
    pub fence_ttl_seconds: i64,

    /// Largest storage key, in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub max_key_bytes: u32,

    /// Largest value, in bytes.
    #[arg(long, default_value_t = 512 * 1024, value_parser = clap::value_parser!(u32).range(1024..=600 * 1024))]
    pub max_value_bytes: u32,

    /// etcd's `--max-txn-ops` (128 by default, the least Ferry accepts): no transaction carries
    /// more operations. Raise both together (the chart's etcd runs with 1024): a secondary then
    /// applies a backlog in fewer, larger transactions. Write requests and WAL entries stay
    /// within 128 whatever this says, so that every secondary can apply them.
    #[arg(long, env = "FERRY_ETCD_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(128..=10_000))]
    pub etcd_max_txn_ops: u32,

    /// Most write requests waiting for the committer; senders wait when it is full.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub write_queue: u32,

    /// WAL retention: most entries kept.
    #[arg(long, env = "FERRY_WAL_RETAIN_ENTRIES", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub wal_retain_entries: u64,

    /// WAL retention: most bytes kept.
    #[arg(long, env = "FERRY_WAL_RETAIN_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub wal_retain_bytes: u64,

    /// How often WAL garbage collection runs, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub wal_gc_interval_ms: u64,

    /// Merkle tree pages.
    #[arg(long, default_value_t = Geometry::default().pages)]
    pub merkle_pages: u32,

    /// Merkle subpages per page.
    #[arg(long, default_value_t = Geometry::default().subpages_per_page)]
    pub merkle_subpages: u32,

    /// Longest between flushes of the dirty merkle subpages to etcd, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub merkle_flush_interval_ms: u64,

    /// A flush starts early once this many WAL entries were written since the last one; a
    /// quarter of --wal-retain-entries when unset (the WAL since the last flush is never
    /// collected, so keep it well below the retention).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub merkle_flush_wal_entries: Option<u64>,

    /// A flush starts early once this many WAL bytes were written since the last one; a quarter
    /// of --wal-retain-bytes when unset.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub merkle_flush_wal_bytes: Option<u64>,

    /// Dirty merkle subpages a transaction of one write also writes; one of n writes carries
    /// this less n. Under light load the index is then flushed without transactions of its own;
    /// under heavy load the flusher's rounds write it (0: only they do).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub merkle_records_per_commit: u64,

    /// Rebuild the merkle index from a full scan at start-up instead of recovering it.
    #[arg(long)]
    pub reindex_on_start: bool,

    /// Where the cluster port (replication between clusters, mutual TLS) listens once this
    /// cluster has a replication role.
    #[arg(long, env = "FERRY_CLUSTER_LISTEN", default_value = "127.0.0.1:8201")]
    pub cluster_listen: std::net::SocketAddr,

    /// The address other clusters reach this node's cluster port at (default: the listen
    /// address).
    #[arg(long, env = "FERRY_CLUSTER_ADDR")]
    pub cluster_addr: Option<String>,

    /// Where clients reach this node's ferry-vault (`http://10.0.0.5:8200`). The active node
    /// writes it into the write fence; performance standbys forward writes there.
    #[arg(long, env = "FERRY_API_ADDR", default_value = "")]
    pub api_addr: String,

    /// The key-encryption key that seals the private keys this sidecar stores (the replication
    /// CA, this cluster's identity): a file holding 32 bytes as 64 hex digits, readable by its
    /// owner only, the same in every region of a replication set. Replication cannot be
    /// enabled without it.
    #[arg(long, env = "FERRY_KEY_ENCRYPTION_KEY_FILE")]
    pub key_encryption_key_file: Option<PathBuf>,

    /// The Unix socket of the replication admin API (Vault's `sys/replication/...`, JSON over
    /// HTTP; no authentication of its own: ferry-vault fronts it and checks `sudo`). Its
    /// directory is created with mode 0700 (an existing one must be 0700). Default:
    /// `admin/replication-api.sock` beside the storage socket.
    #[arg(long, env = "FERRY_API_SOCKET")]
    pub api_socket: Option<PathBuf>,

    /// How often a secondary heartbeats its primary, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub heartbeat_interval_ms: u64,

    /// How long the cluster port's client certificates are valid, in seconds: a secondary's,
    /// signed by the primary, and renewed at half-life. A secondary cut off from its primary for
    /// longer must be activated again.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(4..=2_592_000))]
    pub replication_client_cert_ttl_seconds: u64,

    /// Fault injection for tests: a secondary waits this long before applying each batch of
    /// streamed WAL entries, in milliseconds.
    #[arg(long, hide = true, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub debug_apply_delay_ms: u64,

    /// Threads that run the sidecar's tasks. One is the default: the sidecar relays requests
    /// and waits on etcd, and a request's tasks on one thread hand work to each other without
    /// waking another (measured on two cores shared with etcd: a quarter to a third less sidecar
    /// CPU per write, and more writes a second, than two threads). Raise it for a node serving
    /// many secondaries.
    #[arg(long, env = "FERRY_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,

    /// Log filter, in `tracing` syntax.
    #[arg(long, env = "FERRY_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    pub fn geometry(&self) -> anyhow::Result<Geometry> {
        Ok(Geometry::new(self.merkle_pages, self.merkle_subpages)?)
    }

    pub fn limits(&self) -> Limits {
        Limits::new(
            self.max_key_bytes as usize,
            self.max_value_bytes as usize,
            self.etcd_max_txn_ops as usize,
        )
    }

    pub fn flush_policy(&self) -> crate::flusher::FlushPolicy {
        crate::flusher::FlushPolicy {
            interval: Duration::from_millis(self.merkle_flush_interval_ms),
            wal_entries: self
                .merkle_flush_wal_entries
                .unwrap_or((self.wal_retain_entries / 4).max(1)),
            wal_bytes: self
                .merkle_flush_wal_bytes
                .unwrap_or((self.wal_retain_bytes / 4).max(1)),
        }
    }

    /// How to reach etcd: TLS settings from the certificate files, checked against the
    /// endpoints.
    pub fn etcd_tls(&self) -> anyhow::Result<Option<crate::etcd_connect::EtcdTls>> {
        let tls = match &self.etcd_ca_file {
            Some(ca) => Some(crate::etcd_connect::EtcdTls::load(
                ca,
                self.etcd_cert_file
                    .as_deref()
                    .zip(self.etcd_key_file.as_deref()),
            )?),
            None => None,
        };
        crate::etcd_connect::check_endpoints(&self.etcd_endpoints, tls.is_some())?;
        Ok(tls)
    }

    pub fn api_socket(&self) -> PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| ferry_proto::admin_socket(&self.storage_socket))
    }

    pub fn gc_interval(&self) -> Duration {
        Duration::from_millis(self.wal_gc_interval_ms)
    }

    /// The key-encryption key, when a file is given (see `seal`).
    pub fn key_encryption_key(
        &self,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::seal::KeyEncryptionKey>>> {
        match &self.key_encryption_key_file {
            Some(path) => Ok(Some(std::sync::Arc::new(
                crate::seal::KeyEncryptionKey::load(path)?,
            ))),
            None => Ok(None),
        }
    }

    /// The address other clusters reach this node's cluster port at.
    pub fn advertised_cluster_addr(&self) -> String {
        self.cluster_addr
            .clone()
            .unwrap_or_else(|| self.cluster_listen.to_string())
    }

    /// This node as the write fence names its holder.
    pub fn fence_holder(&self) -> crate::fence::FenceHolder {
        crate::fence::FenceHolder {
            node_id: self.node_id.clone(),
            api_addr: self.api_addr.clone(),
            cluster_addr: self.advertised_cluster_addr(),
        }
    }

    pub fn replication(
        &self,
        kek: Option<std::sync::Arc<crate::seal::KeyEncryptionKey>>,
    ) -> crate::replication::ReplicationConfig {
        crate::replication::ReplicationConfig {
            kek,
            cluster_listen: self.cluster_listen,
            cluster_addr: self.advertised_cluster_addr(),
            node_id: self.node_id.clone(),
            api_addr: self.api_addr.clone(),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            forward_socket: ferry_proto::forward_socket(&self.storage_socket),
            apply_delay: Duration::from_millis(self.debug_apply_delay_ms),
            client_cert_ttl: Duration::from_secs(self.replication_client_cert_ttl_seconds),
        }
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry-node".into())
}

fn parse_cluster_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "cluster name {s:?} must be 1 to 63 lowercase letters, digits or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_cluster_names_are_refused() {
        assert!(parse_cluster_name("east-1").is_ok());
        assert!(parse_cluster_name("East").is_err());
        assert!(parse_cluster_name("a/b").is_err());
        assert!(parse_cluster_name("").is_err());
    }
}
