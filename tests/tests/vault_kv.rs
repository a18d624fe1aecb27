//! KV version 2 over HTTP: concurrent check-and-set writes, and bad input refused with Vault's
//! error shape and nothing written.

use ferry_tests::vault::LoneVault;
use serde_json::json;

const ROOT_TOKEN: &str = "hvs.kv-test-root";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_writes_create_a_secret_once() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"44".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let api = vault.api.with_token(ROOT_TOKEN);

    let writes = (0..8).map(|i| {
        let api = api.clone();
        async move {
            api.post(
                "/v1/secret/data/race",
                json!({ "data": { "writer": i }, "options": { "cas": 0 } }),
            )
            .await
        }
    });
    let results = futures_join(writes).await?;
    let created = results.iter().filter(|r| r.status == 200).count();
    assert_eq!(created, 1, "{results:?}");
    for refused in results.iter().filter(|r| r.status != 200) {
        assert_eq!(refused.status, 400);
        assert!(
            refused.error().contains("check-and-set"),
            "{}",
            refused.error()
        );
    }
    let meta = api.get("/v1/secret/metadata/race").await?.ok()?;
    assert_eq!(meta.body["data"]["current_version"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_vault_errors_and_write_nothing() -> anyhow::Result<()> {
    let lone = LoneVault::start(&"55".repeat(32), ROOT_TOKEN).await?;
    let vault = &lone.vault;
    let api = vault.api.with_token(ROOT_TOKEN);

    let r = api.post_raw("/v1/secret/data/x", b"{not json").await?;
    assert_eq!(r.status, 400);
    assert!(
        r.error().contains("failed to parse JSON input"),
        "{}",
        r.error()
    );
    let r = api
        .post("/v1/secret/data/x", json!({ "options": {} }))
        .await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "no data provided");
    let r = api
        .post("/v1/secret/data/a//b", json!({ "data": {} }))
        .await?;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("invalid request path"), "{}", r.error());
    let r = api
        .post("/v1/secret/data/a/", json!({ "data": {} }))
        .await?;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("invalid secret path"), "{}", r.error());
    let r = api.post("/v1/secret/nowhere/x", json!({})).await?;
    assert_eq!(r.status, 404);
    let warning = r.body["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("invalid path for a versioned K/V"),
        "{}",
        r.body
    );
    let r = api.get("/v1/secret/destroy/x").await?;
    assert_eq!(r.status, 405);
    let r = api
        .post_raw("/v1/secret/data/x", &vec![b' '; 2 * 1024 * 1024])
        .await?;
    assert_eq!(r.status, 413);
    // Nothing was written.
    let r = api.get("/v1/secret/data/x").await?;
    assert_eq!(r.status, 404);
    Ok(())
}

async fn futures_join<F, T>(futures: impl Iterator<Item = F>) -> anyhow::Result<Vec<T>>
where
    F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await??);
    }
    Ok(out)
}
