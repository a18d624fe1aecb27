//! Tokens: a token is refused once its TTL has passed, and renewing moves the deadline; an
//! accessor that could not name a token is a bad request, not a server error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_tests::vault::LoneVault;
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.token-test-root";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_on_their_ttl() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"77".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
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
    // As Vault: a token that is not there is refused as a permission.
    let gone = root
        .post("/v1/auth/token/lookup", json!({ "token": token }))
        .await?;
    assert_eq!(
        gone.status, 403,
        "an expired token is gone: {:?}",
        gone.body
    );
    assert_eq!(gone.error(), "bad token");
    // The root token never expires.
    root.get("/v1/auth/token/lookup-self").await?.ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_accessors_are_bad_requests() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"78".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    let created = root
        .post("/v1/auth/token/create", json!({ "ttl": "1h" }))
        .await?
        .ok()?;
    let accessor = created.body["auth"]["accessor"]
        .as_str()
        .unwrap()
        .to_owned();

    for call in ["lookup-accessor", "revoke-accessor"] {
        let path = format!("/v1/auth/token/{call}");
        let missing = root.post(&path, json!({ "accessor": "" })).await?;
        assert_eq!(missing.status, 400, "{call}: {:?}", missing.body);
        assert_eq!(missing.error(), "missing accessor");
        let absent = root.post(&path, json!({})).await?;
        assert_eq!(absent.status, 400, "{call}: {:?}", absent.body);
        for malformed in ["../id/x", "a//b", "a/", ".", "with space", &"a".repeat(300)] {
            let r = root.post(&path, json!({ "accessor": malformed })).await?;
            assert_eq!(r.status, 400, "{call} {malformed:?}: {:?}", r.body);
            assert!(r.error().contains("malformed accessor"), "{}", r.error());
        }
        // Well formed, but no token's: nothing to look up is an error, nothing to revoke a
        // success with a warning (as in Vault).
        let unknown = root
            .post(&path, json!({ "accessor": "0123456789abcdef01234567" }))
            .await?;
        if call == "revoke-accessor" {
            assert_eq!(unknown.status, 200, "{call}: {:?}", unknown.body);
            assert_eq!(
                unknown.body["warnings"][0], "No token found with this accessor",
                "{:?}",
                unknown.body
            );
        } else {
            assert_eq!(unknown.status, 400, "{call}: {:?}", unknown.body);
            assert_eq!(unknown.error(), "invalid accessor");
        }
    }
    // A real accessor still names its token.
    let found = root
        .post(
            "/v1/auth/token/lookup-accessor",
            json!({ "accessor": accessor }),
        )
        .await?
        .ok()?;
    assert_eq!(found.body["data"]["accessor"], accessor.as_str());
    root.post(
        "/v1/auth/token/revoke-accessor",
        json!({ "accessor": accessor }),
    )
    .await?
    .ok()?;
    Ok(())
}
