//! `LIST auth/token/accessors`: the accessors of this cluster's live tokens, for a caller with
//! `list` and `sudo` on the path (Vault's token store makes `accessors` a root path); `list`
//! alone is refused, and a revoked or expired token's accessor is no longer listed.

use std::time::Duration;

use ferry_tests::http::JsonClient;
use ferry_tests::vault::LoneVault;
use serde_json::{Value, json};

const ROOT_TOKEN: &str = "hvs.accessors-test-root";

/// A token of `policies`, with `ttl`: its token and accessor.
async fn mint(root: &JsonClient, policies: &[&str], ttl: &str) -> anyhow::Result<(String, String)> {
    let created = root
        .post(
            "/v1/auth/token/create",
            json!({ "policies": policies, "ttl": ttl }),
        )
        .await?
        .ok()?;
    let auth = &created.body["auth"];
    Ok((
        auth["client_token"].as_str().unwrap_or_default().to_owned(),
        auth["accessor"].as_str().unwrap_or_default().to_owned(),
    ))
}

fn keys(body: &Value) -> Vec<String> {
    body["data"]["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accessors_of_live_tokens_are_listed_for_list_and_sudo() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"5e".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    for (name, capabilities) in [
        ("accessor-lister", r#"["list"]"#),
        ("accessor-admin", r#"["list", "sudo"]"#),
    ] {
        root.post(
            &format!("/v1/sys/policies/acl/{name}"),
            json!({ "policy": format!("path \"auth/token/accessors\" {{ capabilities = {capabilities} }}") }),
        )
        .await?
        .ok()?;
    }
    let (lister, lister_accessor) = mint(&root, &["accessor-lister"], "1h").await?;
    let (admin, admin_accessor) = mint(&root, &["accessor-admin"], "1h").await?;
    let (revoked, revoked_accessor) = mint(&root, &["default"], "1h").await?;
    let (_, expiring_accessor) = mint(&root, &["default"], "2s").await?;
    root.post("/v1/auth/token/revoke", json!({ "token": revoked }))
        .await?
        .ok()?;

    // `list` alone: refused, by LIST and by GET ?list=true alike.
    let lister = vault.api.with_token(&lister);
    let r = lister.send("LIST", "/v1/auth/token/accessors").await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = lister.get("/v1/auth/token/accessors?list=true").await?;
    assert_eq!(r.status, 403, "{}", r.body);

    let admin = vault.api.with_token(&admin);
    let listed = keys(
        &admin
            .send("LIST", "/v1/auth/token/accessors")
            .await?
            .ok()?
            .body,
    );
    for accessor in [&lister_accessor, &admin_accessor, &expiring_accessor] {
        assert!(listed.contains(accessor), "{accessor} not in {listed:?}");
    }
    assert!(
        !listed.contains(&revoked_accessor),
        "the revoked token's accessor is listed: {listed:?}"
    );
    let by_get = keys(
        &admin
            .get("/v1/auth/token/accessors/?list=true")
            .await?
            .ok()?
            .body,
    );
    assert_eq!(by_get, listed);

    // Each listed accessor looks up its token.
    let r = root
        .post(
            "/v1/auth/token/lookup-accessor",
            json!({ "accessor": admin_accessor }),
        )
        .await?
        .ok()?;
    assert_eq!(r.body["data"]["policies"], json!(["accessor-admin"]));

    // Expired: gone from the list, though nothing looked it up since.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let listed = keys(
        &admin
            .send("LIST", "/v1/auth/token/accessors")
            .await?
            .ok()?
            .body,
    );
    assert!(
        !listed.contains(&expiring_accessor),
        "the expired token's accessor is listed: {listed:?}"
    );
    // Only a list: a read of the directory is not served, with or without the slash (405, as
    // OpenBao answers both).
    for path in ["/v1/auth/token/accessors/", "/v1/auth/token/accessors"] {
        let r = root.get(path).await?;
        assert_eq!(r.status, 405, "{path}: {}", r.body);
    }
    Ok(())
}
