//! Audit devices (`sys/audit`): every request and response written to a file as one JSON line
//! in Vault's format with secrets and tokens hashed, a request that no device can log refused
//! before it runs, the table kept sealed in this cluster's local storage across restarts, and
//! each cluster of a replication pair auditing with its own devices.

use ferry_proto::storage::GetRequest;
use ferry_tests::hvac::run_script;
use ferry_tests::vault::{EAST_ROOT_TOKEN, LoneVault, VaultPair, WEST_ROOT_TOKEN};
use serde_json::{Value, json};

const ROOT_TOKEN: &str = "hvs.audit-test-root";

/// The entries of the audit file at `path`, one JSON object a line.
fn entries(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// The entries of `kind` (request, response) about `path`.
fn about<'e>(entries: &'e [Value], kind: &str, path: &str) -> Vec<&'e Value> {
    entries
        .iter()
        .filter(|e| e["type"] == kind && e["request"]["path"] == path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_audits_requests_with_secrets_hashed_and_refuses_what_no_device_logs()
-> anyhow::Result<()> {
    let lone = LoneVault::start(&"5a".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let dir = tempfile::tempdir()?;
    let env = [
        ("VAULT_ADDR", vault.api.base().to_owned()),
        ("VAULT_TOKEN", ROOT_TOKEN.to_owned()),
        ("AUDIT_DIR", dir.path().display().to_string()),
    ];
    run_script("audit_hvac.py", &env, || vault.log()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_table_is_sealed_local_storage_and_survives_a_restart() -> anyhow::Result<()> {
    let mut lone = LoneVault::start(&"5b".repeat(32), ROOT_TOKEN).await?;
    let api = lone.vault.api.with_token(ROOT_TOKEN);
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("audit.log");
    let file_path = log.display().to_string();

    // Only with sudo: a token with the default policy is refused.
    let child = api
        .post("/v1/auth/token/create", json!({ "policies": ["default"] }))
        .await?
        .ok()?;
    let child_token = child.body["auth"]["client_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let refused = lone
        .vault
        .api
        .with_token(&child_token)
        .post(
            "/v1/sys/audit/file",
            json!({ "type": "file", "options": { "file_path": file_path } }),
        )
        .await?;
    assert_eq!(refused.status, 403, "{}", refused.error());
    assert!(!log.exists());

    api.post(
        "/v1/sys/audit/file",
        json!({ "type": "file", "options": { "file_path": file_path } }),
    )
    .await?
    .ok()?;
    let stored = lone
        .sidecar
        .storage()
        .get(GetRequest {
            key: "core/local/audit".into(),
        })
        .await?
        .into_inner();
    assert!(stored.found, "the audit table is not at core/local/audit");
    let clear = String::from_utf8_lossy(&stored.value);
    assert!(
        !clear.contains(&file_path) && !clear.contains("salt"),
        "the audit table is stored in clear: {clear}"
    );
    let hash = |api: ferry_tests::http::JsonClient| async move {
        let answer = api
            .post("/v1/sys/audit-hash/file", json!({ "input": "x" }))
            .await?
            .ok()?;
        anyhow::Ok(answer.body["data"]["hash"].clone())
    };
    let before = hash(api.clone()).await?;

    lone.vault.restart().await?;
    let listed = api.get("/v1/sys/audit").await?.ok()?;
    assert_eq!(
        listed.body["data"]["file/"]["options"]["file_path"],
        file_path
    );
    assert_eq!(
        hash(api.clone()).await?,
        before,
        "the salt changed on restart"
    );
    api.post(
        "/v1/secret/data/after-restart",
        json!({ "data": { "k": "after-restart-value" } }),
    )
    .await?
    .ok()?;
    let logged = entries(&log)?;
    assert_eq!(
        about(&logged, "request", "secret/data/after-restart").len(),
        1
    );
    assert_eq!(
        about(&logged, "response", "secret/data/after-restart").len(),
        1
    );
    assert!(!std::fs::read_to_string(&log)?.contains("after-restart-value"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_of_a_pair_audits_with_its_own_devices() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    let west = pair.west_vault.api.with_token(WEST_ROOT_TOKEN);
    let east = pair.east_vault.api.with_token(EAST_ROOT_TOKEN);
    let dir = tempfile::tempdir()?;
    let west_log = dir.path().join("west.log");
    let east_log = dir.path().join("east.log");
    west.post(
        "/v1/sys/audit/west",
        json!({ "type": "file", "options": { "file_path": west_log.display().to_string() } }),
    )
    .await?
    .ok()?;
    // Enabled on the secondary itself: not forwarded, not the primary's.
    east.post(
        "/v1/sys/audit/east",
        json!({ "type": "file", "options": { "file_path": east_log.display().to_string() } }),
    )
    .await?
    .ok()?;

    // A replicated write on the secondary, forwarded to the primary and read back.
    let path = "/v1/secret/data/audited-pair";
    east.post(path, json!({ "data": { "k": "pair-secret-value" } }))
        .await?
        .ok()?;
    let read = east.get(path).await?.ok()?;
    assert_eq!(read.body["data"]["data"]["k"], "pair-secret-value");

    let west_devices = west.get("/v1/sys/audit").await?.ok()?;
    let east_devices = east.get("/v1/sys/audit").await?.ok()?;
    assert!(
        west_devices.body["data"]["west/"].is_object(),
        "{west_devices:?}"
    );
    assert!(
        west_devices.body["data"]["east/"].is_null(),
        "{west_devices:?}"
    );
    assert!(
        east_devices.body["data"]["east/"].is_object(),
        "{east_devices:?}"
    );
    assert!(
        east_devices.body["data"]["west/"].is_null(),
        "{east_devices:?}"
    );

    // The secondary logged the client's request and the primary's answer to it.
    let east_entries = entries(&east_log)?;
    let requests = about(&east_entries, "request", "secret/data/audited-pair");
    let responses = about(&east_entries, "response", "secret/data/audited-pair");
    assert_eq!(requests.len(), 2, "the write and the read: {requests:?}");
    assert_eq!(responses.len(), 2, "{responses:?}");
    let write = responses
        .iter()
        .find(|e| e["request"]["operation"] == "update")
        .expect("the write's response");
    assert_eq!(write["error"], "", "{write}");
    assert_eq!(write["response"]["data"]["version"], 1, "{write}");
    assert!(
        write["request"]["client_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("hmac-sha256:")),
        "{write}"
    );

    // The primary logged the write it executed for the secondary, as the forwarded identity.
    let west_entries = entries(&west_log)?;
    let executed = about(&west_entries, "request", "secret/data/audited-pair");
    assert_eq!(executed.len(), 1, "only the forwarded write: {executed:?}");
    assert_eq!(executed[0]["request"]["operation"], "update");
    assert_eq!(executed[0]["auth"]["policies"], json!(["root"]));
    for log in [&west_log, &east_log] {
        let text = std::fs::read_to_string(log)?;
        assert!(!text.contains("pair-secret-value"), "{}", log.display());
        assert!(!text.contains(EAST_ROOT_TOKEN) && !text.contains(WEST_ROOT_TOKEN));
    }
    Ok(())
}
