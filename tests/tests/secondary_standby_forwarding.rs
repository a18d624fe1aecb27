//! A performance standby of a secondary cluster serves reads from its cluster's storage and
//! forwards writes to its own active node, which forwards them to the primary: two hops, one
//! client request, read-your-write on the standby. `sys/replication/status` through any node's
//! ferry-vault is the cluster's, listing every node.

use std::time::Duration;

use ferry_tests::region_nodes::NodeRegion;
use ferry_tests::vault::{EAST_ROOT_TOKEN, WEST_ROOT_TOKEN};
use ferry_tests::wait_for;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_standby_reads_locally_and_forwards_writes_through_its_active_node_to_the_primary()
-> anyhow::Result<()> {
    let west = NodeRegion::start("west", 1, Some(WEST_ROOT_TOKEN), &[]).await?;
    let east = NodeRegion::start("east", 2, Some(EAST_ROOT_TOKEN), &[]).await?;
    west.enable_primary().await?;
    east.follow(&west, "east").await?;
    east.wait_caught_up(&west).await?;
    let primary = west.nodes[0].vault_api(WEST_ROOT_TOKEN);
    let standby = east.nodes[1].vault_api(EAST_ROOT_TOKEN);
    assert_eq!(east.nodes[1].role().await?, "standby");

    // A write on the primary is read on the secondary's standby once replicated.
    primary
        .post("/v1/secret/data/from-west", json!({ "data": { "v": "w" } }))
        .await?
        .ok()?;
    wait_for(
        "the standby to read the primary's write",
        Duration::from_secs(30),
        || async {
            let r = standby.get("/v1/secret/data/from-west").await.ok()?;
            (r.status == 200 && r.body["data"]["data"]["v"] == "w").then_some(())
        },
    )
    .await?;

    // A write through the standby: the standby forwards it to east's active node, which
    // forwards it to the primary; the client gets the primary's answer, at once readable on the
    // standby (no read-after-write warning), and on the primary.
    let written = standby
        .post("/v1/secret/data/two-hops", json!({ "data": { "v": "e" } }))
        .await?
        .ok()?;
    assert_eq!(written.body["data"]["version"], 1, "{:?}", written.body);
    assert!(
        written.body["warnings"].is_null(),
        "read-after-write waited in vain: {:?}",
        written.body
    );
    let index = written
        .header("x-vault-index")
        .expect("a forwarded write carries X-Vault-Index")
        .to_owned();
    let read = standby.get("/v1/secret/data/two-hops").await?.ok()?;
    assert_eq!(read.body["data"]["data"]["v"], "e", "read-your-write");
    let read = standby
        .with_header("x-vault-index", &index)
        .get("/v1/secret/data/two-hops")
        .await?;
    assert_eq!(read.status, 200, "{:?}", read.body);
    let on_primary = primary.get("/v1/secret/data/two-hops").await?.ok()?;
    assert_eq!(on_primary.body["data"]["data"]["v"], "e");
    // Neither east node wrote it to its own stream: the primary did.
    let last = east.nodes[1].sidecar.status().await?.last_wal;
    assert_eq!(last, 0, "the standby wrote");

    // sys/replication/status, unauthenticated, through the standby's ferry-vault: the active
    // node's, with both nodes.
    let status = east.nodes[1]
        .vault
        .as_ref()
        .unwrap()
        .api
        .get("/v1/sys/replication/status")
        .await?
        .ok()?;
    let perf = &status.body["data"]["performance"];
    assert_eq!(perf["mode"], "secondary", "{perf}");
    let nodes = wait_for(
        "the status to list both nodes",
        Duration::from_secs(10),
        || async {
            let r = east.nodes[1]
                .vault
                .as_ref()?
                .api
                .get("/v1/sys/replication/performance/status")
                .await
                .ok()?;
            let nodes = r.body["data"]["nodes"].as_array()?.clone();
            (nodes.len() == 2).then_some(nodes)
        },
    )
    .await?;
    assert_eq!(nodes[0]["node_id"], "east-1");
    assert_eq!(nodes[0]["role"], "active");
    assert_eq!(nodes[1]["node_id"], "east-2");
    assert_eq!(nodes[1]["role"], "standby");
    Ok(())
}
