//! Merkle reconciliation: a secondary that fell behind WAL retention, and a secondary whose
//! keys were tampered with in its own etcd, both reconcile through merkle-diff and merkle-sync
//! and go back to streaming.

use ferry_proto::storage::{ReindexRequest, StatusRequest};
use ferry_tests::region::primary_and_secondary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_behind_wal_retention_reconciles_through_the_merkle_index() -> anyhow::Result<()>
{
    let retention = ["--wal-retain-entries=20", "--wal-gc-interval-ms=50"];
    let (primary, mut secondary) = primary_and_secondary(&retention).await?;
    for i in 0..10 {
        primary.put(&format!("logical/r/{i}"), b"before").await?;
    }
    let applied = secondary.wait_caught_up(&primary).await?["last_remote_wal"]
        .as_u64()
        .unwrap();
    secondary.sidecar.kill();
    for i in 0..200 {
        primary
            .put(
                &format!("logical/r/{}", i % 120),
                format!("after {i}").as_bytes(),
            )
            .await?;
    }
    primary.delete("logical/r/5").await?;
    primary
        .sidecar
        .wait_status("the WAL the secondary needs to be collected", |s| {
            s.first_wal > applied + 1
        })
        .await?;

    secondary.restart().await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert_eq!(status["merkle_syncs"].as_u64(), Some(1), "{status}");
    assert_eq!(
        secondary.get("logical/r/79").await?.as_deref(),
        Some(&b"after 199"[..])
    );
    assert_eq!(secondary.get("logical/r/5").await?, None);
    assert_eq!(
        status["merkle_root"],
        primary.status().await?["merkle_root"]
    );

    // Back to streaming: a new write arrives without another merkle pass.
    primary.put("logical/r/new", b"streamed").await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert_eq!(
        secondary.get("logical/r/new").await?.as_deref(),
        Some(&b"streamed"[..])
    );
    assert_eq!(status["merkle_syncs"].as_u64(), Some(1), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tampered_in_a_secondarys_etcd_are_repaired() -> anyhow::Result<()> {
    let (primary, secondary) = primary_and_secondary(&[]).await?;
    for i in 0..40 {
        primary
            .put(&format!("logical/t/{i}"), format!("good {i}").as_bytes())
            .await?;
    }
    secondary.wait_caught_up(&primary).await?;

    // Someone writes the secondary's etcd behind the sidecar's back.
    let mut etcd = secondary.etcd.client().await?;
    etcd.put("/ferry/east/data/logical/t/1", "tampered", None)
        .await?;
    etcd.delete("/ferry/east/data/logical/t/2", None).await?;
    etcd.put("/ferry/east/data/logical/t/intruder", "x", None)
        .await?;
    // A reindex (as after a restart with --reindex-on-start) makes the index see it.
    let mut admin = secondary.sidecar.admin();
    admin.reindex(ReindexRequest {}).await?;
    let root = admin
        .status(StatusRequest {})
        .await?
        .into_inner()
        .merkle_root;
    assert_ne!(root, primary.status().await?["merkle_root"]);

    // The next entry from the primary no longer lands on the primary's root: reconcile.
    primary.put("logical/t/next", b"n").await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert!(status["merkle_syncs"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(
        secondary.get("logical/t/1").await?.as_deref(),
        Some(&b"good 1"[..])
    );
    assert_eq!(
        secondary.get("logical/t/2").await?.as_deref(),
        Some(&b"good 2"[..])
    );
    assert_eq!(secondary.get("logical/t/intruder").await?, None);
    assert_eq!(
        status["merkle_root"],
        primary.status().await?["merkle_root"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_reconciles_with_a_primary_whose_history_etcd_compacted() -> anyhow::Result<()>
{
    let retention = ["--wal-retain-entries=5", "--wal-gc-interval-ms=50"];
    let (primary, mut secondary) = primary_and_secondary(&retention).await?;
    secondary.sidecar.kill();
    for i in 0..30 {
        primary.put(&format!("logical/c/{i}"), b"v").await?;
    }
    primary
        .sidecar
        .wait_status("the WAL to be trimmed", |s| s.first_wal > 10)
        .await?;
    // The primary then stays idle while etcd compacts its history (local writes, such as
    // tokens, move the revision on past its last WAL entry).
    primary.put("sys/token/id/local", b"x").await?;
    let mut etcd = primary.etcd.client().await?;
    let revision = etcd.get("/", None).await?.header().unwrap().revision();
    etcd.compact(revision, None).await?;

    secondary.restart().await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert_eq!(status["merkle_syncs"].as_u64(), Some(1), "{status}");
    assert_eq!(
        secondary.get("logical/c/29").await?.as_deref(),
        Some(&b"v"[..])
    );
    Ok(())
}
