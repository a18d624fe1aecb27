//! Vault's older policy API, `sys/policy`, over the same policies as `sys/policies/acl`, in
//! its own shapes: a read answers `rules`, a write takes `policy` or the deprecated `rules`
//! (with Vault's warning), and a GET of the directory lists as a LIST does, with `policies`
//! beside `keys`.

use ferry_tests::vault::LoneVault;
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.legacy-policy-test-root";
const RULES: &str = r#"path "legacy/*" { capabilities = ["read"] }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_policy_serves_the_same_policies_in_vaults_older_shapes() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"5f".repeat(32), ROOT_TOKEN).await?;
    let root = lone.vault.api.with_token(ROOT_TOKEN);

    // `rules`: accepted on the older path, with Vault's deprecation warning.
    let r = root
        .post("/v1/sys/policy/by-rules", json!({ "rules": RULES }))
        .await?
        .ok()?;
    assert_eq!(
        r.body["warnings"],
        json!(["'rules' is deprecated, please use 'policy' instead"]),
        "{}",
        r.body
    );
    // `policy`: no warning, no body.
    let r = root
        .post("/v1/sys/policy/by-policy", json!({ "policy": RULES }))
        .await?;
    assert_eq!(r.status, 204, "{}", r.body);
    // `rules` on the newer path, or nothing at all: refused.
    let r = root
        .post("/v1/sys/policies/acl/by-rules", json!({ "rules": RULES }))
        .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = root
        .post("/v1/sys/policy/empty", json!({ "policy": "" }))
        .await?;
    assert_eq!(r.status, 400, "{}", r.body);

    // One policy, two shapes.
    let legacy = root.get("/v1/sys/policy/by-rules").await?.ok()?;
    assert_eq!(
        legacy.body["data"],
        json!({ "name": "by-rules", "rules": RULES })
    );
    let acl = root.get("/v1/sys/policies/acl/by-rules").await?.ok()?;
    assert_eq!(acl.body["data"]["policy"], RULES);
    let r = root.get("/v1/sys/policy/no-such").await?;
    assert_eq!(r.status, 404, "{}", r.body);

    // The directory: GET and LIST alike, `keys` and `policies`.
    let listed = root.get("/v1/sys/policy").await?.ok()?;
    let keys = &listed.body["data"]["keys"];
    assert_eq!(listed.body["data"]["policies"], *keys);
    for name in ["by-policy", "by-rules", "default", "root"] {
        assert!(
            keys.as_array().is_some_and(|k| k.contains(&json!(name))),
            "{name} not in {keys}"
        );
    }
    let r = root.send("LIST", "/v1/sys/policy").await?.ok()?;
    assert_eq!(r.body["data"], listed.body["data"]);

    // Deleted through one path, gone from both.
    root.send("DELETE", "/v1/sys/policy/by-rules").await?.ok()?;
    let r = root.get("/v1/sys/policies/acl/by-rules").await?;
    assert_eq!(r.status, 404, "{}", r.body);
    Ok(())
}
