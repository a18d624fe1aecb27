//! A sidecar that finds its cluster's write fence held serves as a performance standby: reads
//! straight from etcd, writes refused naming the active node, its role in `Status` and in the
//! replication API; it takes over (recovers, then writes) when the active node dies.

use std::time::{Duration, Instant};

use ferry_proto::storage::{GetRequest, ListRequest, PutRequest};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::http::JsonClient;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use tonic::Code;

#[tokio::test]
async fn a_standby_serves_reads_refuses_writes_and_takes_over() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut a = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "node-a")
            .arg("--api-addr=http://127.0.0.1:18200")
            .arg("--fence-ttl-seconds=3"),
    )
    .await?;
    let active = a.status().await?;
    assert_eq!(active.role, "active");
    let mut sa = a.storage();
    sa.put(PutRequest {
        key: "core/before".into(),
        value: b"a".to_vec(),
    })
    .await?;

    let b = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "node-b").arg("--api-addr=http://127.0.0.1:28200"),
    )
    .await?;
    let status = b.status().await?;
    assert_eq!(status.role, "standby");
    assert!(!status.fence_held);
    let named = status.active.expect("the standby names the active node");
    assert_eq!(named.node_id, "node-a");
    assert_eq!(named.api_addr, "http://127.0.0.1:18200");

    // Reads from etcd, as the active node's.
    let mut sb = b.storage();
    let got = sb
        .get(GetRequest {
            key: "core/before".into(),
        })
        .await?
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, b"a");
    let listed = sb
        .list(ListRequest {
            prefix: "core/".into(),
        })
        .await?
        .into_inner();
    assert_eq!(listed.keys, ["before"]);

    // Writes refused, naming the active node.
    let err = sb
        .put(PutRequest {
            key: "core/from-b".into(),
            value: b"b".to_vec(),
        })
        .await
        .expect_err("a standby accepted a write");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().starts_with(ferry_proto::NOT_ACTIVE_PREFIX),
        "{}",
        err.message()
    );
    assert_eq!(
        err.metadata()
            .get(ferry_proto::ACTIVE_API_ADDR_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("http://127.0.0.1:18200")
    );

    // The replication API: status with the node role; everything else refused.
    let api = JsonClient::unix(b.api_socket());
    let replication = api.get("/v1/sys/replication/status").await?.ok()?;
    assert_eq!(replication.body["data"]["node_role"], "standby");
    assert_eq!(replication.body["data"]["active_node"]["node_id"], "node-a");
    let refused = api
        .post(
            "/v1/sys/replication/performance/primary/enable",
            serde_json::json!({}),
        )
        .await?;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body["error_code"], "not_active");

    // The active node dies: the standby takes the fence when its lease ends, recovers and
    // writes.
    a.kill();
    let killed = Instant::now();
    let taken = b.wait_active(Duration::from_secs(30)).await?;
    println!("standby became active {:?} after kill -9", killed.elapsed());
    assert!(taken.fence_held);
    assert_eq!(taken.last_wal, 1, "b recovered a's WAL");
    sb.put(PutRequest {
        key: "core/from-b".into(),
        value: b"b".to_vec(),
    })
    .await?;
    assert_eq!(b.status().await?.last_wal, 2);
    let replication = api.get("/v1/sys/replication/status").await?.ok()?;
    assert!(replication.body["data"].get("node_role").is_none());
    Ok(())
}
