//! Client compatibility: the real `hvac` client from PyPI, unmodified, against ferry-vault
//! (`tests/py/*.py`, run with the venv `make setup` creates).

use ferry_tests::hvac::run_script;
use ferry_tests::vault::{EAST_ROOT_TOKEN, LoneVault, VaultPair, WEST_ROOT_TOKEN};

const ROOT_TOKEN: &str = "hvs.hvac-test-root";

/// Runs `tests/py/<script>` with hvac against a fresh ferry-vault.
async fn run_hvac(script: &str) -> anyhow::Result<()> {
    let lone = LoneVault::start(&"33".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let env = [
        ("VAULT_ADDR", vault.api.base().to_owned()),
        ("VAULT_TOKEN", ROOT_TOKEN.to_owned()),
    ];
    run_script(script, &env, || vault.log()).await
}

/// Runs `tests/py/<script>` with hvac against the secondary of a fresh replication pair; the
/// script also gets the primary's address and root token (`VAULT_PRIMARY_ADDR`,
/// `VAULT_PRIMARY_TOKEN`).
async fn run_hvac_on_secondary(script: &str) -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    let env = [
        ("VAULT_ADDR", pair.east_vault.api.base().to_owned()),
        ("VAULT_TOKEN", EAST_ROOT_TOKEN.to_owned()),
        ("VAULT_PRIMARY_ADDR", pair.west_vault.api.base().to_owned()),
        ("VAULT_PRIMARY_TOKEN", WEST_ROOT_TOKEN.to_owned()),
    ];
    run_script(script, &env, || {
        format!(
            "--- east (secondary) ---\n{}\n--- west (primary) ---\n{}",
            pair.east_vault.log(),
            pair.west_vault.log()
        )
    })
    .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_mounts() -> anyhow::Result<()> {
    run_hvac("mounts_hvac.py").await
}

// The same suites against a performance secondary: every write is forwarded to the primary and
// read back at once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_kv_v2_on_a_secondary() -> anyhow::Result<()> {
    run_hvac_on_secondary("kv_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_tokens_on_a_secondary() -> anyhow::Result<()> {
    run_hvac_on_secondary("token_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_policies_on_a_secondary() -> anyhow::Result<()> {
    run_hvac_on_secondary("policy_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_transit_on_a_secondary() -> anyhow::Result<()> {
    run_hvac_on_secondary("transit_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_mounts_on_a_secondary() -> anyhow::Result<()> {
    run_hvac_on_secondary("mounts_hvac.py").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_across_a_replication_pair() -> anyhow::Result<()> {
    run_hvac_on_secondary("replication_hvac.py").await
}
