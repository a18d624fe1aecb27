//! A write is authorized as Vault authorizes it: where the path's backend has an existence
//! check (KV v2 `data/` and `metadata/`, transit `encrypt/`), as `create` when its target does
//! not exist yet and as `update` when it does; on every other path (transit `keys/`, policies,
//! tokens) as `update`. Tokens holding only `create`, only `update`, both, and neither (`read`)
//! write new and existing targets; a refused write changes nothing. The same through the real
//! hvac client, with the older `sys/policy` API and the accessors list it also calls.

use ferry_tests::http::JsonClient;
use ferry_tests::hvac::run_script;
use ferry_tests::vault::LoneVault;
use serde_json::{Value, json};

const ROOT_TOKEN: &str = "hvs.create-update-test-root";

/// Every path the tests write, for the callers' policies.
const PATHS: [&str; 6] = [
    "secret/data/*",
    "secret/metadata/*",
    "transit/encrypt/*",
    "transit/keys/*",
    "sys/policies/acl/*",
    "sys/policy/*",
];

/// The callers: name and the capabilities their policy grants on every path of [`PATHS`].
const CALLERS: [(&str, &[&str]); 4] = [
    ("create", &["create", "read"]),
    ("update", &["update", "read"]),
    ("both", &["create", "update", "read"]),
    ("neither", &["read", "list", "delete"]),
];

/// A token of the policy `name`, granting `capabilities` on [`PATHS`], written by `root`.
async fn token_granting(
    root: &JsonClient,
    name: &str,
    capabilities: &[&str],
) -> anyhow::Result<String> {
    let capabilities = serde_json::to_string(capabilities)?;
    let policy: String = PATHS
        .iter()
        .map(|p| format!("path \"{p}\" {{ capabilities = {capabilities} }}\n"))
        .collect();
    ferry_tests::vault::token_with_policy(root, name, &policy).await
}

/// One write and the status each of [`CALLERS`] gets; `{caller}` in the path is the caller's
/// name, so that a caller's write does not make the target exist for the next one.
struct Case {
    path: &'static str,
    body: Value,
    expected: [u16; 4],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_create_for_what_is_new_and_update_for_what_exists() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"5c".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    root.post("/v1/secret/data/existing", json!({ "data": { "v": 1 } }))
        .await?
        .ok()?;
    // Every version deleted: the metadata remains, so the secret still exists (Vault's check
    // reads the metadata).
    root.post(
        "/v1/secret/data/soft-deleted",
        json!({ "data": { "v": 1 } }),
    )
    .await?
    .ok()?;
    root.send("DELETE", "/v1/secret/data/soft-deleted")
        .await?
        .ok()?;
    root.post("/v1/transit/keys/existing", json!({}))
        .await?
        .ok()?;
    root.post(
        "/v1/sys/policies/acl/existing",
        json!({ "policy": "path \"x/*\" { capabilities = [\"read\"] }" }),
    )
    .await?
    .ok()?;

    let mut callers = Vec::new();
    for (name, capabilities) in CALLERS {
        let token = token_granting(&root, &format!("writer-{name}"), capabilities).await?;
        callers.push((name, vault.api.with_token(&token)));
    }

    let data = json!({ "data": { "v": 2 } });
    let metadata = json!({ "max_versions": 3 });
    let encrypt = json!({ "plaintext": "Y3JlYXRlIG9yIHVwZGF0ZQ==" });
    let policy = json!({ "policy": "path \"y/*\" { capabilities = [\"read\"] }" });
    #[rustfmt::skip]
    let cases = [
        //                                                                  create update both neither
        Case { path: "/v1/secret/data/new-{caller}",          body: data.clone(),     expected: [200, 403, 200, 403] },
        Case { path: "/v1/secret/data/existing",              body: data.clone(),     expected: [403, 200, 200, 403] },
        Case { path: "/v1/secret/data/soft-deleted",          body: data.clone(),     expected: [403, 200, 200, 403] },
        Case { path: "/v1/secret/data/purged-{caller}",       body: data.clone(),     expected: [200, 403, 200, 403] },
        Case { path: "/v1/secret/metadata/meta-{caller}",     body: metadata.clone(), expected: [204, 403, 204, 403] },
        Case { path: "/v1/secret/metadata/existing",          body: metadata.clone(), expected: [403, 204, 204, 403] },
        Case { path: "/v1/transit/encrypt/new-{caller}",      body: encrypt.clone(),  expected: [200, 403, 200, 403] },
        Case { path: "/v1/transit/encrypt/existing",          body: encrypt.clone(),  expected: [403, 200, 200, 403] },
        // No existence check on these in Vault: a write is an update, new target or not.
        Case { path: "/v1/transit/keys/made-{caller}",        body: json!({}),        expected: [403, 200, 200, 403] },
        Case { path: "/v1/transit/keys/existing",             body: json!({}),        expected: [403, 200, 200, 403] },
        Case { path: "/v1/sys/policies/acl/new-{caller}",     body: policy.clone(),   expected: [403, 204, 204, 403] },
        Case { path: "/v1/sys/policies/acl/existing",         body: policy.clone(),   expected: [403, 204, 204, 403] },
        Case { path: "/v1/sys/policy/legacy-{caller}",        body: policy.clone(),   expected: [403, 204, 204, 403] },
    ];
    // `purged-{caller}`: written, then its metadata deleted: gone, so a write creates it again.
    for (name, _) in CALLERS {
        let path = format!("purged-{name}");
        root.post(&format!("/v1/secret/data/{path}"), json!({ "data": {} }))
            .await?
            .ok()?;
        root.send("DELETE", &format!("/v1/secret/metadata/{path}"))
            .await?
            .ok()?;
    }

    let mut mismatches = Vec::new();
    for case in &cases {
        for (i, (name, api)) in callers.iter().enumerate() {
            let path = case.path.replace("{caller}", name);
            let r = api.post(&path, case.body.clone()).await?;
            if r.status != case.expected[i] {
                mismatches.push(format!(
                    "POST {path} as {name}: expected {}, got {} {}",
                    case.expected[i], r.status, r.body
                ));
            }
        }
    }

    // A refused write created nothing and changed nothing.
    for (path, expected) in [
        ("/v1/secret/data/new-update", 404),
        ("/v1/secret/data/new-neither", 404),
        ("/v1/secret/metadata/meta-update", 404),
        ("/v1/transit/keys/new-update", 404),
        ("/v1/transit/keys/new-neither", 404),
        ("/v1/transit/keys/made-create", 404),
        ("/v1/sys/policies/acl/new-create", 404),
        ("/v1/sys/policy/legacy-create", 404),
        ("/v1/secret/data/new-create", 200),
        ("/v1/transit/keys/new-create", 200),
        ("/v1/sys/policy/legacy-update", 200),
    ] {
        let r = root.get(path).await?;
        if r.status != expected {
            mismatches.push(format!(
                "GET {path} as root: expected {expected}, got {} {}",
                r.status, r.body
            ));
        }
    }
    // The existing secret holds the writes of update and both only: versions 1, 2 and 3.
    let r = root.get("/v1/secret/metadata/existing").await?;
    if r.body["data"]["current_version"] != 3 {
        mismatches.push(format!(
            "secret/metadata/existing: expected version 3 (two permitted overwrites), got {}",
            r.body
        ));
    }

    assert!(
        mismatches.is_empty(),
        "{} writes answered otherwise:\n{}\n--- ferry-vault log ---\n{}",
        mismatches.len(),
        mismatches.join("\n"),
        vault.log()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_writes_need_create_for_what_is_new_and_update_for_what_exists() -> anyhow::Result<()>
{
    let lone = LoneVault::start(&"5d".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let root = vault.api.with_token(ROOT_TOKEN);
    root.post("/v1/secret/data/existing", json!({ "data": { "v": 1 } }))
        .await?
        .ok()?;
    root.post("/v1/transit/keys/existing", json!({}))
        .await?
        .ok()?;
    let mut env = vec![
        ("VAULT_ADDR", vault.api.base().to_owned()),
        ("VAULT_TOKEN", ROOT_TOKEN.to_owned()),
    ];
    for (variable, (name, capabilities)) in ["CREATE_TOKEN", "UPDATE_TOKEN", "BOTH_TOKEN"]
        .into_iter()
        .zip(CALLERS)
    {
        let token = token_granting(&root, &format!("writer-{name}"), capabilities).await?;
        env.push((variable, token));
    }
    run_script("create_update_hvac.py", &env, || vault.log()).await
}
