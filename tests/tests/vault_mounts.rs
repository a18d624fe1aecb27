//! `sys/mounts`: the default mounts, enabling, tuning and disabling KV version 2 and transit
//! engines at other paths, each with its own data, and bad mount requests refused by name with
//! the table unchanged.

use ferry_proto::storage::ListRequest;
use ferry_tests::vault::LoneVault;
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.mounts-test-root";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_mounted_tuned_and_unmounted_with_their_data() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"47".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let api = vault.api.with_token(ROOT_TOKEN);

    let mounts = api.get("/v1/sys/mounts").await?.ok()?;
    assert_eq!(mounts.body["data"]["secret/"]["type"], "kv");
    assert_eq!(mounts.body["data"]["secret/"]["options"]["version"], "2");
    assert_eq!(
        mounts.body["transit/"]["type"], "transit",
        "also at the top level"
    );

    // A second KV engine: its own data, its own settings.
    api.post(
        "/v1/sys/mounts/team/kv",
        json!({ "type": "kv-v2", "description": "team" }),
    )
    .await?
    .ok()?;
    api.post("/v1/team/kv/config", json!({ "max_versions": 2 }))
        .await?
        .ok()?;
    assert_eq!(
        api.get("/v1/team/kv/config").await?.ok()?.body["data"]["max_versions"],
        2
    );
    for n in 1..=3 {
        api.post("/v1/team/kv/data/db", json!({ "data": { "n": n } }))
            .await?
            .ok()?;
    }
    let meta = api.get("/v1/team/kv/metadata/db").await?.ok()?;
    assert_eq!(meta.body["data"]["current_version"], 3);
    assert_eq!(
        meta.body["data"]["versions"].as_object().map(|v| v.len()),
        Some(2),
        "the mount's max_versions applies"
    );
    assert_eq!(
        api.get("/v1/secret/data/db").await?.status,
        404,
        "mounts do not share data"
    );

    // Transit at another path.
    api.post("/v1/sys/mounts/crypto", json!({ "type": "transit" }))
        .await?
        .ok()?;
    api.post("/v1/crypto/keys/k", json!({})).await?.ok()?;
    let sealed = api
        .post("/v1/crypto/encrypt/k", json!({ "plaintext": "aGk=" }))
        .await?
        .ok()?;
    assert!(
        sealed.body["data"]["ciphertext"]
            .as_str()
            .is_some_and(|c| c.starts_with("vault:v1:"))
    );
    assert_eq!(
        api.post("/v1/transit/encrypt/k", json!({ "plaintext": "aGk=" }))
            .await?
            .ok()?
            .body["data"]["ciphertext"]
            .as_str()
            .map(|c| c.starts_with("vault:v1:")),
        Some(true),
        "transit/ creates its own key k"
    );

    // Tune.
    api.post(
        "/v1/sys/mounts/team/kv/tune",
        json!({ "default_lease_ttl": "30m", "max_lease_ttl": "1h", "description": "the team's" }),
    )
    .await?
    .ok()?;
    let tune = api.get("/v1/sys/mounts/team/kv/tune").await?.ok()?;
    assert_eq!(tune.body["data"]["default_lease_ttl"], 1800);
    assert_eq!(tune.body["data"]["max_lease_ttl"], 3600);
    assert_eq!(tune.body["data"]["description"], "the team's");

    // Bad requests: refused by name, the table unchanged.
    let before = api.get("/v1/sys/mounts").await?.body["data"].clone();
    for (path, body, says) in [
        (
            "/v1/sys/mounts/secret/inner",
            json!({ "type": "kv-v2" }),
            "already in use at secret/",
        ),
        (
            "/v1/sys/mounts/team",
            json!({ "type": "kv-v2" }),
            "already in use at team/kv/",
        ),
        (
            "/v1/sys/mounts/v1kv",
            json!({ "type": "kv" }),
            "KV version 1",
        ),
        (
            "/v1/sys/mounts/db",
            json!({ "type": "database" }),
            "unsupported secrets engine type",
        ),
        ("/v1/sys/mounts/nothing", json!({}), "type is required"),
        (
            "/v1/sys/mounts/sys/x",
            json!({ "type": "kv-v2" }),
            "reserved",
        ),
        (
            "/v1/sys/mounts/a%20b",
            json!({ "type": "kv-v2" }),
            "invalid mount path",
        ),
        (
            "/v1/sys/mounts/x",
            json!({ "type": "kv-v2", "colour": 1 }),
            "unknown field `colour`",
        ),
        (
            "/v1/sys/mounts/team/kv/tune",
            json!({ "default_lease_ttl": "2h" }),
            "longer than max_lease_ttl",
        ),
        (
            "/v1/sys/mounts/team/kv/tune",
            json!({ "max_lease_ttl": "soon" }),
            "not a duration",
        ),
    ] {
        let r = api.post(path, body).await?;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert!(r.error().contains(says), "{path}: {}", r.error());
    }
    let r = api.post_raw("/v1/sys/mounts/broken", b"{not json").await?;
    assert_eq!(r.status, 400);
    assert_eq!(api.get("/v1/sys/mounts").await?.body["data"], before);

    // Only tokens whose policy allows it change mounts.
    let limited = api
        .post("/v1/auth/token/create", json!({ "policies": ["default"] }))
        .await?
        .ok()?;
    let limited = vault.api.with_token(
        limited.body["auth"]["client_token"]
            .as_str()
            .unwrap_or_default(),
    );
    let r = limited
        .post("/v1/sys/mounts/mine", json!({ "type": "kv-v2" }))
        .await?;
    assert_eq!(r.status, 403);

    // Disable: the path is gone, and so is its data.
    let uuid = before["team/kv/"]["uuid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!uuid.is_empty());
    api.send("DELETE", "/v1/sys/mounts/team/kv").await?.ok()?;
    let gone = api.get("/v1/team/kv/data/db").await?;
    assert_eq!(gone.status, 404);
    assert!(
        gone.error().contains("no handler for route"),
        "{}",
        gone.error()
    );
    let left = lone
        .sidecar
        .storage()
        .list(ListRequest {
            prefix: format!("logical/{uuid}/"),
        })
        .await?
        .into_inner()
        .keys;
    assert!(left.is_empty(), "data left behind: {left:?}");
    api.post(
        "/v1/sys/mounts/team/kv",
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await?
    .ok()?;
    assert_eq!(
        api.get("/v1/team/kv/data/db").await?.status,
        404,
        "a new mount starts empty"
    );
    Ok(())
}
