//! `sys/replication/...` through ferry-vault: proxied to the sidecar; status is open, the rest
//! needs a root token.

use ferry_tests::vault::LoneVault;
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.replication-api-root";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_calls_reach_the_sidecar_with_vaults_auth() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"66".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;

    let status = vault.api.get("/v1/sys/replication/status").await?.ok()?;
    assert_eq!(status.body["data"]["performance"]["mode"], "disabled");

    let enable = "/v1/sys/replication/performance/primary/enable";
    let refused = vault.api.post(enable, json!({})).await?;
    assert_eq!(refused.status, 403);
    let refused = vault
        .api
        .with_token("hvs.nobody")
        .post(enable, json!({}))
        .await?;
    assert_eq!(refused.status, 403);
    assert_eq!(
        vault
            .api
            .get("/v1/sys/replication/performance/status")
            .await?
            .body["data"]["mode"],
        "disabled",
        "a refused call changed nothing"
    );

    let root = vault.api.with_token(ROOT_TOKEN);
    root.post(enable, json!({})).await?.ok()?;
    let status = vault
        .api
        .get("/v1/sys/replication/performance/status")
        .await?
        .ok()?;
    assert_eq!(status.body["data"]["mode"], "primary");
    let token = root
        .post(
            "/v1/sys/replication/performance/primary/secondary-token",
            json!({ "id": "east" }),
        )
        .await?
        .ok()?;
    assert!(
        token.body["wrap_info"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("ferry1.")),
        "{:?}",
        token.body
    );
    // The sidecar's own errors come through unchanged.
    let again = root.post(enable, json!({})).await?;
    assert_eq!(again.status, 400);
    assert!(
        again.error().contains("already enabled"),
        "{}",
        again.error()
    );
    Ok(())
}
