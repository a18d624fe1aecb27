//! ferry-vault's read cache (`vault/src/read_cache.rs`), one test per way a cached value is
//! forgotten: this node's own write, another node's write seen through the sidecar's change
//! stream, replication's apply on a secondary, a write forwarded to the primary, and the change
//! stream itself going quiet (etcd frozen: the cache serves nothing). Each test also shows,
//! from `sys/metrics`, that the cache did serve reads, so a cache that never fills cannot pass.

use std::time::Duration;

use ferry_tests::etcd::EtcdServer;
use ferry_tests::http::JsonClient;
use ferry_tests::nodes::{start_nodes, wait_single_active};
use ferry_tests::vault::{LoneVault, SHARED_ROOT_KEY, VaultPair};
use ferry_tests::wait_for;
use serde_json::{Value, json};

const ROOT_TOKEN: &str = "hvs.read-cache-root";

/// A counter or gauge of `sys/metrics`.
async fn metric(api: &JsonClient, name: &str) -> anyhow::Result<u64> {
    let metrics = api.get("/v1/sys/metrics").await?.ok()?;
    let find = |list: &str, field: &str| -> Option<u64> {
        metrics.body[list]
            .as_array()?
            .iter()
            .find(|m| m["Name"] == name)?[field]
            .as_u64()
    };
    find("Counters", "Count")
        .or_else(|| find("Gauges", "Value"))
        .ok_or_else(|| anyhow::anyhow!("no metric {name} in {}", metrics.body))
}

/// The value of field `v` of the secret at `path`, once a read answers 200.
async fn read_v(api: &JsonClient, path: &str) -> anyhow::Result<Value> {
    let read = api.get(&format!("/v1/secret/data/{path}")).await?.ok()?;
    Ok(read.body["data"]["data"]["v"].clone())
}

async fn write_v(api: &JsonClient, path: &str, v: impl Into<Value>) -> anyhow::Result<()> {
    api.post(
        &format!("/v1/secret/data/{path}"),
        json!({ "data": { "v": v.into() } }),
    )
    .await?
    .ok()?;
    Ok(())
}

/// Waits until the cache is trusted (the first progress message of the change stream came):
/// a read repeated is then a hit.
async fn wait_cache_serving(api: &JsonClient, path: &str) -> anyhow::Result<()> {
    wait_for(
        "the read cache to serve",
        Duration::from_secs(10),
        || async {
            let before = metric(api, "ferry.read_cache.hits").await.ok()?;
            read_v(api, path).await.ok()?;
            read_v(api, path).await.ok()?;
            (metric(api, "ferry.read_cache.hits").await.ok()? > before).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_an_acknowledged_write_on_the_same_node_is_never_stale() -> anyhow::Result<()>
{
    let lone = LoneVault::start(SHARED_ROOT_KEY, ROOT_TOKEN).await?;
    let api = lone.vault.api.with_token(ROOT_TOKEN);
    write_v(&api, "warm", 0).await?;
    wait_cache_serving(&api, "warm").await?;

    // Eight writers, each on its own secret and all reading each other's: after every
    // acknowledged write, the writer's own read sees it.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                write_v(&api, &format!("w{w}"), i).await?;
                let seen = read_v(&api, &format!("w{w}")).await?;
                anyhow::ensure!(seen == i, "writer {w} wrote {i} and read {seen}");
                read_v(&api, &format!("w{}", (w + 1) % 8)).await.ok();
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // A delete is forgotten as well.
    api.send("DELETE", "/v1/secret/metadata/w0").await?.ok()?;
    assert_eq!(api.get("/v1/secret/data/w0").await?.status, 404);
    assert!(metric(&api, "ferry.read_cache.hits").await? > 100);
    assert!(metric(&api, "ferry.read_cache.entries").await? > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_forgets_what_the_active_node_wrote() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let nodes = start_nodes(&etcd, 2, &[]).await?;
    let [active, standby] = &nodes[..] else {
        unreachable!()
    };
    assert_eq!(
        wait_single_active(&[active, standby], Duration::from_secs(10)).await?,
        0
    );
    write_v(&active.root(), "shared", "one").await?;
    wait_cache_serving(&standby.root(), "shared").await?;
    assert_eq!(read_v(&standby.root(), "shared").await?, "one");

    // The active node writes through its own sidecar: the standby's server hears of it only
    // through its change stream.
    write_v(&active.root(), "shared", "two").await?;
    wait_for(
        "the standby to read the active node's write",
        Duration::from_secs(3),
        || async { (read_v(&standby.root(), "shared").await.ok()? == "two").then_some(()) },
    )
    .await?;
    // And a write through the standby (forwarded to the active node) is read back at once.
    write_v(&standby.root(), "shared", "three").await?;
    assert_eq!(read_v(&standby.root(), "shared").await?, "three");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_forgets_what_replication_applied() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    let (west, east) = (pair.west_root(), pair.east_root());
    write_v(&west, "replicated", 1).await?;
    wait_for(
        "the secondary to read the first write",
        Duration::from_secs(10),
        || async { (read_v(&east, "replicated").await.ok()? == 1).then_some(()) },
    )
    .await?;
    wait_cache_serving(&east, "replicated").await?;

    write_v(&west, "replicated", 2).await?;
    wait_for(
        "the secondary to read the primary's second write",
        Duration::from_secs(10),
        || async { (read_v(&east, "replicated").await.ok()? == 2).then_some(()) },
    )
    .await?;
    // A write through the secondary is forwarded to the primary; the answer comes once it is
    // applied here, and the next read sees it.
    write_v(&east, "replicated", 3).await?;
    assert_eq!(read_v(&east, "replicated").await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_change_stream_the_cache_serves_nothing() -> anyhow::Result<()> {
    let lone = LoneVault::start(SHARED_ROOT_KEY, ROOT_TOKEN).await?;
    let api = lone.vault.api.with_token(ROOT_TOKEN);
    write_v(&api, "frozen", "x").await?;
    wait_cache_serving(&api, "frozen").await?;

    // etcd frozen: no progress message comes, and after the cache's validity (1 s) a read
    // must go to storage, which cannot answer, instead of being served from memory.
    lone.etcd.signal("STOP")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read =
        tokio::time::timeout(Duration::from_secs(2), api.get("/v1/secret/data/frozen")).await;
    let served = matches!(&read, Ok(Ok(r)) if r.status == 200);
    lone.etcd.signal("CONT")?;
    assert!(
        !served,
        "a read was served from the cache with etcd frozen: {read:?}"
    );

    // etcd back: reads are served again, and the cache serves them once more.
    wait_for("reads with etcd back", Duration::from_secs(15), || async {
        (read_v(&api, "frozen").await.ok()? == "x").then_some(())
    })
    .await?;
    wait_cache_serving(&api, "frozen").await?;
    Ok(())
}
