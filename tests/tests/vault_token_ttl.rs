//! Token TTLs follow Vault's rules: a token created without a TTL gets the default (768h), never
//! an infinite life, unless it is a root token created by a root token that does not expire;
//! `explicit_max_ttl` caps a token's TTL; a TTL over the max is capped (with Vault's warning),
//! not refused; and no renewal carries a token past its max TTL counted from its creation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_tests::vault::LoneVault;
use serde_json::{Value, json};

const ROOT_TOKEN: &str = "hvs.token-ttl-test-root";
/// Vault's default and max TTL for tokens, 768h.
const SYSTEM_TTL: u64 = 768 * 3600;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn warned_capped(body: &Value) -> bool {
    body["warnings"].as_array().is_some_and(|w| {
        w.iter()
            .any(|w| w.as_str().unwrap_or("").contains("capped"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_a_ttl_gets_the_default_unless_root_from_root() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"b1".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    root.post(
        "/v1/sys/policies/acl/creator",
        json!({ "policy": r#"path "auth/token/create" { capabilities = ["update"] }"# }),
    )
    .await?
    .ok()?;

    // `ttl: 0`, from root and then from a non-root token: the default, not forever.
    let created = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["creator"], "ttl": 0 }),
        )
        .await?
        .ok()?;
    assert_eq!(created.body["auth"]["lease_duration"], SYSTEM_TTL);
    let parent = vault
        .api
        .with_token(created.body["auth"]["client_token"].as_str().unwrap());
    for body in [
        json!({ "policies": ["creator"], "ttl": 0 }),
        json!({ "policies": ["creator"], "ttl": "0s" }),
        json!({ "policies": ["creator"] }),
    ] {
        let child = parent.post("/v1/auth/token/create", body).await?.ok()?;
        let auth = &child.body["auth"];
        assert_eq!(auth["lease_duration"], SYSTEM_TTL, "{auth}");
        let me = vault
            .api
            .with_token(auth["client_token"].as_str().unwrap())
            .get("/v1/auth/token/lookup-self")
            .await?
            .ok()?;
        let data = &me.body["data"];
        assert_eq!(data["creation_ttl"], SYSTEM_TTL, "{data}");
        assert!(data["expire_time"].is_string(), "{data}");
        assert!(data["issue_time"].is_string(), "{data}");
        assert!(data["ttl"].as_u64().unwrap() > SYSTEM_TTL - 60, "{data}");
    }

    // A root token from the root token may never expire; then it is not renewable.
    let forever = root
        .post("/v1/auth/token/create", json!({ "policies": ["root"] }))
        .await?
        .ok()?;
    assert_eq!(forever.body["auth"]["lease_duration"], 0);
    assert_eq!(forever.body["auth"]["renewable"], false);
    // A root token that expires may not create one that does not.
    let expiring = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["root"], "ttl": "1h" }),
        )
        .await?
        .ok()?;
    let expiring = vault
        .api
        .with_token(expiring.body["auth"]["client_token"].as_str().unwrap());
    let refused = expiring
        .post("/v1/auth/token/create", json!({ "policies": ["root"] }))
        .await?;
    assert_eq!(refused.status, 400, "{:?}", refused.body);
    assert_eq!(
        refused.error(),
        "expiring root tokens cannot create non-expiring root tokens"
    );
    // Unless its explicit max TTL bounds it.
    let bounded = expiring
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["root"], "explicit_max_ttl": "10m" }),
        )
        .await?
        .ok()?;
    assert_eq!(bounded.body["auth"]["lease_duration"], 600);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_max_ttl_caps_the_ttl_and_every_renewal() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"b2".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);

    let created = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["app"], "ttl": "1h", "explicit_max_ttl": "60s" }),
        )
        .await?
        .ok()?;
    let auth = &created.body["auth"];
    assert_eq!(auth["lease_duration"], 60, "{}", created.body);
    assert!(warned_capped(&created.body), "{}", created.body);
    let token = auth["client_token"].as_str().unwrap().to_owned();
    let me = vault.api.with_token(&token);
    let data = me.get("/v1/auth/token/lookup-self").await?.ok()?.body["data"].clone();
    assert_eq!(data["explicit_max_ttl"], 60, "{data}");
    assert_eq!(data["creation_ttl"], 60, "{data}");
    let creation_time = data["creation_time"].as_u64().unwrap();

    // Renewals, by another token and by itself, stop at creation + 60s.
    let asked_at = now();
    let renewed = root
        .post(
            "/v1/auth/token/renew",
            json!({ "token": token, "increment": "1h" }),
        )
        .await?
        .ok()?;
    let lease = renewed.body["auth"]["lease_duration"].as_u64().unwrap();
    assert!(lease <= creation_time + 60 - asked_at, "{}", renewed.body);
    assert!(
        lease > 0 && warned_capped(&renewed.body),
        "{}",
        renewed.body
    );
    let renewed = me
        .post("/v1/auth/token/renew-self", json!({ "increment": 3600 }))
        .await?
        .ok()?;
    assert!(
        renewed.body["auth"]["lease_duration"].as_u64().unwrap() <= 60,
        "{}",
        renewed.body
    );
    let data = me.get("/v1/auth/token/lookup-self").await?.ok()?.body["data"].clone();
    assert!(data["ttl"].as_u64().unwrap() <= 60, "{data}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_over_the_max_is_capped_with_a_warning_not_refused() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"b4".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    let long = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["app"], "ttl": "1000h" }),
        )
        .await?
        .ok()?;
    assert_eq!(long.body["auth"]["lease_duration"], SYSTEM_TTL);
    assert_eq!(
        long.body["warnings"][0],
        "TTL of \"1000h\" exceeded the effective max_ttl of \"768h\"; TTL value is capped \
         accordingly"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_never_passes_the_system_max_counted_from_creation() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"b3".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);

    let created = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": ["app"], "ttl": "1h" }),
        )
        .await?
        .ok()?;
    let token = created.body["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me = vault.api.with_token(&token);
    let data = me.get("/v1/auth/token/lookup-self").await?.ok()?.body["data"].clone();
    let creation_time = data["creation_time"].as_u64().unwrap();
    // The cap counts from creation: let the clock move past it.
    while now() <= creation_time + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for renewed in [
        root.post(
            "/v1/auth/token/renew",
            json!({ "token": token, "increment": "768h" }),
        )
        .await?
        .ok()?,
        me.post("/v1/auth/token/renew-self", json!({ "increment": "800h" }))
            .await?
            .ok()?,
    ] {
        let lease = renewed.body["auth"]["lease_duration"].as_u64().unwrap();
        assert!(
            lease <= SYSTEM_TTL - 2 && lease > SYSTEM_TTL - 120,
            "{}",
            renewed.body
        );
        assert!(warned_capped(&renewed.body), "{}", renewed.body);
    }
    let data = me.get("/v1/auth/token/lookup-self").await?.ok()?.body["data"].clone();
    assert!(
        data["ttl"].as_u64().unwrap() <= SYSTEM_TTL - 2,
        "the deadline moved past creation + 768h: {data}"
    );
    // Within the max, an increment is granted as asked, without a warning.
    let short = root
        .post(
            "/v1/auth/token/renew",
            json!({ "token": token, "increment": "2h" }),
        )
        .await?
        .ok()?;
    assert_eq!(short.body["auth"]["lease_duration"], 7200);
    assert!(short.body["warnings"].is_null(), "{}", short.body);
    Ok(())
}
