//! Token expiry: a token is refused once its TTL has passed, and renewing moves the deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::VaultServer;
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.token-test-root";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_on_their_ttl() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    let vault = VaultServer::start(&sidecar, &"77".repeat(32), ROOT_TOKEN).await?;
    let root = vault.api.with_token(ROOT_TOKEN);

    let created = root
        .post(
            "/v1/auth/token/create",
            json!({ "ttl": "2s", "policies": ["app"] }),
        )
        .await?
        .ok()?;
    let token = created.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let short = vault.api.with_token(&token);
    let me = short.get("/v1/auth/token/lookup-self").await?.ok()?;
    assert!(me.body["data"]["ttl"].as_u64().unwrap() <= 2);
    let deadline = now() + 2;

    // Expiry is the behaviour under test: wait for the token's own deadline.
    while now() <= deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = short.get("/v1/auth/token/lookup-self").await?;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(
        root.post("/v1/auth/token/lookup", json!({ "token": token }))
            .await?
            .status,
        400,
        "an expired token is gone"
    );
    // The root token never expires.
    root.get("/v1/auth/token/lookup-self").await?.ok()?;
    Ok(())
}
