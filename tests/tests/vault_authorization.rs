//! What the ACL allows is what runs: a request is parsed once into an operation and a canonical
//! path, and that operation on that path is both authorized and served. `?list=true` lists, and
//! only on GET; a trailing slash names the path it names, to the ACL and to the engine alike;
//! and a request without a valid token is refused before any route or mount is looked up.

use ferry_tests::http::JsonClient;
use ferry_tests::vault::{LoneVault, VaultServer};
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.authorization-test-root";

/// A token holding only `policy` (written as `name`), on `vault`'s API.
async fn token_with_policy(
    root: &JsonClient,
    vault: &VaultServer,
    name: &str,
    policy: &str,
) -> anyhow::Result<JsonClient> {
    let token = ferry_tests::vault::token_with_policy(root, name, policy).await?;
    Ok(vault.api.with_token(&token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_query_lists_only_on_get_and_never_reads_or_writes() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"61".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    root.post(
        "/v1/secret/data/topsecret",
        json!({ "data": { "v": "original" } }),
    )
    .await?
    .ok()?;
    root.post("/v1/transit/keys/payroll", json!({}))
        .await?
        .ok()?;
    let lister = token_with_policy(
        &root,
        vault,
        "lister",
        r#"
        path "secret/data/*" { capabilities = ["list"] }
        path "transit/keys/*" { capabilities = ["list"] }
        "#,
    )
    .await?;

    // A list of a path where the engine lists nothing: authorized as a list, answered 405.
    let r = lister.get("/v1/secret/data/topsecret?list=true").await?;
    assert_eq!(r.status, 405, "{:?}", r.body);
    assert!(!r.body.to_string().contains("original"), "{:?}", r.body);
    // Transit serves nothing under a key's name with a slash after it (Vault: 404).
    let r = lister.get("/v1/transit/keys/payroll?list=true").await?;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.body["data"].is_null(), "{:?}", r.body);
    // On any other method `list` means nothing: a write needs create or update.
    let r = lister
        .post(
            "/v1/secret/data/topsecret?list=true",
            json!({ "data": { "v": "overwritten" } }),
        )
        .await?;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = lister
        .send("DELETE", "/v1/secret/data/topsecret?list=true")
        .await?;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = lister
        .post("/v1/transit/keys/payroll/rotate?list=true", json!({}))
        .await?;
    assert_eq!(r.status, 403, "{:?}", r.body);
    // The secret is as it was, at its first version; the key was not rotated.
    let secret = root.get("/v1/secret/data/topsecret").await?.ok()?;
    assert_eq!(secret.body["data"]["data"], json!({ "v": "original" }));
    assert_eq!(secret.body["data"]["metadata"]["version"], 1);
    let key = root.get("/v1/transit/keys/payroll").await?.ok()?;
    assert_eq!(key.body["data"]["latest_version"], 1);
    // Where the engine lists, the list token lists, by `LIST` or by `?list=true`.
    for r in [
        lister.send("LIST", "/v1/transit/keys").await?,
        lister.get("/v1/transit/keys?list=true").await?,
    ] {
        assert_eq!(r.ok()?.body["data"]["keys"], json!(["payroll"]));
    }
    let r = lister.get("/v1/transit/keys?list=maybe").await?;
    assert_eq!(r.status, 400, "{:?}", r.body);

    // Every family dispatches the operation it authorized: with the root token, a list where
    // nothing lists is refused, never the read the path would otherwise serve. 405 where a
    // handler serves the directory's path with other operations, 404 where none does.
    for (path, status) in [
        ("/v1/secret/data/topsecret", 405),
        ("/v1/transit/keys/payroll", 404),
        ("/v1/auth/token/lookup-self", 404),
        ("/v1/sys/policies/acl/lister", 405),
        ("/v1/sys/mounts", 405),
        ("/v1/sys/mounts/secret", 405),
        ("/v1/sys/replication/status", 405),
    ] {
        let r = root.get(&format!("{path}?list=true")).await?;
        assert_eq!(r.status, status, "GET {path}?list=true: {:?}", r.body);
        assert!(
            r.body["data"].is_null(),
            "GET {path}?list=true: {:?}",
            r.body
        );
    }
    // ... and a write with `?list=true` is the write.
    root.post(
        "/v1/secret/metadata/topsecret?list=true",
        json!({ "max_versions": 3 }),
    )
    .await?
    .ok()?;
    let meta = root.get("/v1/secret/metadata/topsecret").await?.ok()?;
    assert_eq!(meta.body["data"]["max_versions"], 3);
    root.post(
        "/v1/sys/policies/acl/written?list=true",
        json!({ "policy": r#"path "x" { capabilities = ["read"] }"# }),
    )
    .await?
    .ok()?;
    root.get("/v1/sys/policies/acl/written").await?.ok()?;
    // Policies are listed by a list only, as in Vault.
    let listed = root.send("LIST", "/v1/sys/policies/acl").await?.ok()?;
    assert!(
        listed.body["data"]["keys"]
            .as_array()
            .is_some_and(|k| k.contains(&json!("written"))),
        "{:?}",
        listed.body
    );
    assert_eq!(root.get("/v1/sys/policies/acl").await?.status, 405);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_slash_is_authorized_and_served_as_the_path_it_names() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"62".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    root.post("/v1/transit/keys/payroll", json!({}))
        .await?
        .ok()?;
    let encrypted = root
        .post(
            "/v1/transit/encrypt/payroll",
            json!({ "plaintext": "c2FsYXJ5" }),
        )
        .await?
        .ok()?;
    let ciphertext = encrypted.body["data"]["ciphertext"].clone();
    // Everything in transit, but the payroll key: exact rules deny it.
    let user = token_with_policy(
        &root,
        vault,
        "transit-user",
        r#"
        path "transit/*" { capabilities = ["create", "read", "update", "delete", "list"] }
        path "transit/decrypt/payroll" { capabilities = ["deny"] }
        path "transit/keys/payroll" { capabilities = ["deny"] }
        path "transit/keys/payroll/rotate" { capabilities = ["deny"] }
        "#,
    )
    .await?;

    let decrypt = json!({ "ciphertext": ciphertext });
    let r = user
        .post("/v1/transit/decrypt/payroll", decrypt.clone())
        .await?;
    assert_eq!(r.status, 403, "{:?}", r.body);
    // With a trailing slash the glob allows the path, and no handler serves it: nothing is
    // decrypted, read, rotated or deleted.
    let r = user
        .post("/v1/transit/decrypt/payroll/", decrypt.clone())
        .await?;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(!r.body.to_string().contains("c2FsYXJ5"), "{:?}", r.body);
    let r = user.get("/v1/transit/keys/payroll/").await?;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.body["data"].is_null(), "{:?}", r.body);
    let r = user
        .post("/v1/transit/keys/payroll/rotate/", json!({}))
        .await?;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = user.send("DELETE", "/v1/transit/keys/payroll/").await?;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let key = root.get("/v1/transit/keys/payroll").await?.ok()?;
    assert_eq!(key.body["data"]["latest_version"], 1);
    // Empty, `.` and `..` segments are refused, never resolved to another path.
    for path in [
        "/v1/transit/decrypt//payroll",
        "/v1/transit/decrypt/./payroll",
        "/v1/transit/encrypt/../decrypt/payroll",
    ] {
        let r = user.post(path, decrypt.clone()).await?;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert!(r.error().contains("invalid request path"), "{}", r.error());
    }
    // Where a trailing slash means something, Vault's meaning holds: a list reads a directory,
    // and other keys are served as before.
    let listed = user.send("LIST", "/v1/transit/keys/").await?.ok()?;
    assert_eq!(listed.body["data"]["keys"], json!(["payroll"]));
    user.post("/v1/transit/keys/orders", json!({}))
        .await?
        .ok()?;
    user.post("/v1/transit/encrypt/orders", json!({ "plaintext": "aGk=" }))
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused_before_any_route_is_looked_up()
-> anyhow::Result<()> {
    let lone = LoneVault::start(&"63".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    let anonymous = vault.api.clone();
    let stranger = vault.api.with_token("hvs.nobody");
    let nobody = token_with_policy(
        &root,
        vault,
        "nothing",
        r#"path "elsewhere/*" { capabilities = ["read"] }"#,
    )
    .await?;

    // The same 403 whether a mount, a route or a policy exists or not: nothing to enumerate.
    for (method, path) in [
        ("GET", "/v1/nomount/x"),
        ("GET", "/v1/secret/data/x"),
        ("LIST", "/v1/nomount/"),
        ("GET", "/v1/sys/nothing"),
        ("GET", "/v1/sys/mounts"),
        ("GET", "/v1/sys/mounts/nomount"),
        ("GET", "/v1/sys/mounts/secret"),
        ("GET", "/v1/sys/policies/acl/nothing"),
        ("GET", "/v1/sys/policies/acl/nopolicy"),
        ("POST", "/v1/auth/token/nothing"),
        ("GET", "/v1/sys/replication/nothing"),
        ("GET", "/v1/sys/replication/status?list=true"),
    ] {
        for (who, api) in [("no token", &anonymous), ("an unknown token", &stranger)] {
            let r = api.send(method, path).await?;
            assert_eq!(r.status, 403, "{method} {path} with {who}: {:?}", r.body);
            assert_eq!(r.error(), "permission denied");
        }
    }
    // A valid token learns no more where its policies do not reach.
    for path in ["/v1/nomount/x", "/v1/secret/data/x", "/v1/sys/nothing"] {
        let r = nobody.get(path).await?;
        assert_eq!(r.status, 403, "{path}: {:?}", r.body);
    }
    // Where they do, or for root, a missing mount is a 404.
    assert_eq!(nobody.get("/v1/elsewhere/x").await?.status, 404);
    let r = root.get("/v1/nomount/x").await?;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.error().contains("no mount at this path"), "{}", r.error());

    // What Vault answers without a token still is.
    for path in [
        "/v1/sys/health",
        "/v1/sys/health?list=true",
        "/v1/sys/seal-status",
        "/v1/sys/init",
        "/v1/sys/replication/status",
        "/v1/sys/replication/performance/status",
    ] {
        anonymous.get(path).await?.ok()?;
    }
    Ok(())
}
