//! The write fence: a sidecar whose fence another node took cannot commit.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use ferry_proto::storage::{GetRequest, PutRequest};
use ferry_sidecar::fence::{Fence, FenceHolder};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::wait_for;
use tonic::Code;

/// Where a sidecar of cluster `east` keeps its fence.
const FENCE_KEY: &str = "/ferry/east/meta/fence";

#[tokio::test]
async fn a_stale_fence_cannot_commit() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let client = etcd.client().await?;
    let key = FENCE_KEY.to_string();
    let a = Fence::acquire(&client, key.clone(), "node-a".into(), 5).await?;
    let stale = a.compare()?;

    // Node a's lease ends (it stalled past its TTL); node b takes the fence.
    let lease = client.kv_client().get(key.as_str(), None).await?.kvs()[0].lease();
    client.lease_client().revoke(lease).await?;
    let b = Fence::acquire(&client, key.clone(), "node-b".into(), 5).await?;

    let write = |compare: Compare| {
        Txn::new()
            .when([
                compare,
                Compare::create_revision("/probe", CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put("/probe", "x", None)])
    };
    let resp = client.kv_client().txn(write(stale)).await?;
    assert!(
        !resp.succeeded(),
        "a transaction under the stale fence committed"
    );
    assert!(
        !a.verify(&client).await?,
        "node a still believes it holds the fence"
    );
    assert!(a.compare().is_err());
    let resp = client.kv_client().txn(write(b.compare()?)).await?;
    assert!(resp.succeeded(), "the new holder cannot commit");
    Ok(())
}

/// A rotation rewrites the fence key in one transaction (it is never absent, so an error
/// midway cannot lose it), and a retry after a rotation that landed unanswered adopts it.
#[tokio::test]
async fn a_rotation_is_atomic_and_a_retry_adopts_an_unanswered_one() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let client = etcd.client().await?;
    let key = FENCE_KEY.to_string();
    let a = Fence::acquire(&client, key.clone(), "node-a".into(), 30).await?;
    let read = || async {
        let resp = client.kv_client().get(key.as_str(), None).await?;
        anyhow::Ok(resp.kvs().first().cloned().expect("the fence key is there"))
    };
    let commits = |compare: Compare| async {
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put("/probe", "x", None)]);
        anyhow::Ok(client.kv_client().txn(txn).await?.succeeded())
    };
    let created = read().await?;

    let before = a.compare()?;
    a.rotate(&client).await?;
    let rotated = read().await?;
    assert_eq!(
        rotated.create_revision(),
        created.create_revision(),
        "the fence key was deleted and recreated"
    );
    assert_eq!(rotated.lease(), created.lease());
    assert!(
        !commits(before).await?,
        "a transaction sent before the rotation committed"
    );
    assert!(
        commits(a.compare()?).await?,
        "the holder cannot commit after rotating"
    );

    // What a rotation that landed without its answer reaching node a leaves behind.
    let unanswered = a.compare()?;
    let holder = FenceHolder {
        node_id: "node-a".into(),
        ..FenceHolder::default()
    };
    client
        .kv_client()
        .put(
            key.as_str(),
            holder.encode(),
            Some(PutOptions::new().with_lease(created.lease())),
        )
        .await?;
    a.rotate(&client).await?;
    assert!(a.is_held());
    assert!(!commits(unanswered).await?);
    assert!(
        commits(a.compare()?).await?,
        "the adopted rotation does not fence"
    );

    // Another node's fence is never adopted.
    client.lease_client().revoke(created.lease()).await?;
    let _b = Fence::acquire(&client, key.clone(), "node-b".into(), 30).await?;
    let err = a
        .rotate(&client)
        .await
        .expect_err("node a rotated node b's fence");
    assert!(err.to_string().contains("held by node-b"), "{err}");
    assert!(!a.is_held());
    Ok(())
}

/// A rotation that etcd never answers gives up (after the transaction timeout, 10 s) with an
/// unknown outcome instead of stalling whoever waits for it; once etcd answers again, a retry
/// completes and the fence still fences.
#[tokio::test]
async fn a_hung_rotation_gives_up_and_a_retry_completes() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let client = etcd.client().await?;
    // A lease long enough to outlive the freeze: this test is about the rotation, not expiry.
    let a = Fence::acquire(&client, FENCE_KEY.into(), "node-a".into(), 120).await?;
    let before = a.compare()?;
    etcd.signal("STOP")?;
    let started = std::time::Instant::now();
    let hung = a.rotate(&client).await;
    let waited = started.elapsed();
    etcd.signal("CONT")?;
    let err = hung.expect_err("a rotation finished against a frozen etcd");
    assert!(err.to_string().contains("took longer than"), "{err}");
    assert!(
        waited < Duration::from_secs(30),
        "the rotation gave up only after {waited:?}"
    );
    assert!(a.is_held(), "an unknown outcome is not a lost fence");

    a.rotate(&client).await?;
    let txn = Txn::new()
        .when([before])
        .and_then([TxnOp::put("/probe", "x", None)]);
    assert!(
        !client.kv_client().txn(txn).await?.succeeded(),
        "a transaction sent before the rotations committed"
    );
    Ok(())
}

#[tokio::test]
async fn a_stalled_sidecar_loses_its_fence_to_another_node() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let a = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "node-a").arg("--fence-ttl-seconds=2"),
    )
    .await?;
    let mut sa = a.storage();
    sa.put(PutRequest {
        key: "core/before".into(),
        value: b"a".to_vec(),
    })
    .await?;

    // Node b waits for the fence while a holds it. Only a's lease needs to be short (it is
    // the one that must run out); b keeps the default, so a loaded machine cannot make b lose
    // the fence it has just taken before its first renewal.
    let mut b = Sidecar::spawn(&etcd.endpoint(), SidecarOptions::new("east", "node-b"))?;
    wait_for(
        "node b to wait for the fence",
        Duration::from_secs(30),
        || {
            let log = b.log();
            async move { log.contains("waiting for the write fence").then_some(()) }
        },
    )
    .await?;

    // a stalls past its lease; b takes over, recovers and serves.
    let standby = b.wait_ready().await?;
    assert_eq!(standby.role, "standby");
    assert!(!standby.fence_held);
    a.signal("STOP")?;
    let status = b.wait_active(Duration::from_secs(30)).await?;
    assert!(status.fence_held);
    assert_eq!(status.last_wal, 1, "b recovered a's WAL");
    let mut sb = b.storage();
    sb.put(PutRequest {
        key: "core/after".into(),
        value: b"b".to_vec(),
    })
    .await?;

    // a wakes up: its writes are refused and change nothing.
    a.signal("CONT")?;
    let err = sa
        .put(PutRequest {
            key: "core/from-stale-a".into(),
            value: b"a".to_vec(),
        })
        .await
        .expect_err("the stale sidecar committed a write");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("write fence"), "{}", err.message());
    assert!(
        !sb.get(GetRequest {
            key: "core/from-stale-a".into()
        })
        .await?
        .into_inner()
        .found
    );
    // Reads still work on a.
    assert!(
        sa.get(GetRequest {
            key: "core/after".into()
        })
        .await?
        .into_inner()
        .found
    );
    assert!(!a.status().await?.fence_held);
    assert_eq!(b.status().await?.last_wal, 2);
    Ok(())
}

#[tokio::test]
async fn a_restarted_node_reclaims_its_own_fence_at_once() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    // A long TTL: waiting for it to expire would take 60 s.
    let mut sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1").arg("--fence-ttl-seconds=60"),
    )
    .await?;
    sidecar.kill();
    let started = std::time::Instant::now();
    let status = sidecar.restart().await?;
    assert!(status.fence_held);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "restart waited for the old lease"
    );
    assert!(sidecar.log().contains("reclaimed the write fence"));
    Ok(())
}
