//! Client compatibility: the real `hvac` client from PyPI, unmodified, against ferry-vault
//! (`tests/py/*.py`, run with the venv `make setup` creates).

use std::path::PathBuf;
use std::process::Command;

use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::VaultServer;

const ROOT_TOKEN: &str = "hvs.hvac-test-root";

/// The venv's Python: `FERRY_VENV`, else the cache directory `scripts/setup.sh` uses.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("FERRY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            cache.join("ferry/venv")
        });
    venv.join("bin/python")
}

/// Runs `tests/py/<script>` with hvac against a fresh ferry-vault.
async fn run_hvac(script: &str) -> anyhow::Result<()> {
    let python = venv_python();
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run `make setup` (it installs hvac into a venv)",
        python.display()
    );
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    let vault = VaultServer::start(&sidecar, &"33".repeat(32), ROOT_TOKEN).await?;
    let script = format!("{}/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let addr = vault.api.base().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hvac checks failed\n{stdout}\n{stderr}\n--- ferry-vault log ---\n{}",
        vault.log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_kv_v2() -> anyhow::Result<()> {
    run_hvac("kv_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_tokens() -> anyhow::Result<()> {
    run_hvac("token_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_policies() -> anyhow::Result<()> {
    run_hvac("policy_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_transit() -> anyhow::Result<()> {
    run_hvac("transit_hvac.py").await
}
