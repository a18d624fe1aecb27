//! After a SIGKILL, start-up recovers the merkle index from flushed subpages and WAL redo, and the
//! recovered index equals a full reindex.

use std::time::Duration;

use anyhow::Context;
use ferry_proto::storage::operation::Op;
use ferry_proto::storage::{
    BatchRequest, CheckMerkleRequest, Operation, PutRequest, ReindexRequest,
};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};

async fn write_batches(sidecar: &Sidecar, tag: &str, batches: usize) -> anyhow::Result<()> {
    let mut s = sidecar.storage();
    for b in 0..batches {
        let operations = (0..100)
            .map(|i| Operation {
                op: Some(Op::Put(PutRequest {
                    key: format!("logical/{tag}/b{b}/k{i}"),
                    value: format!("{tag}-{b}-{i}").into_bytes(),
                })),
            })
            .collect();
        s.batch(BatchRequest { operations }).await?;
    }
    Ok(())
}

/// The index after recovery equals what a full scan builds, and the admin check agrees.
async fn assert_equals_reindex(sidecar: &Sidecar) -> anyhow::Result<()> {
    let status = sidecar.status().await?;
    let mut admin = sidecar.admin();
    let check = admin
        .check_merkle(CheckMerkleRequest {})
        .await?
        .into_inner();
    assert!(
        check.consistent,
        "recovered index differs from a full scan: {check:?}"
    );
    let reindexed = admin.reindex(ReindexRequest {}).await?.into_inner();
    assert_eq!(
        reindexed.merkle_root, status.merkle_root,
        "recovered root differs from a full reindex"
    );
    assert_eq!(reindexed.keys, status.merkle_keys);
    Ok(())
}

#[tokio::test]
async fn recovery_redoes_the_wal_after_the_checkpoint() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1").arg("--merkle-flush-interval-ms=50"),
    )
    .await?;
    write_batches(&sidecar, "early", 20).await?;
    sidecar.wait_flushed().await?;
    let checkpoint = sidecar.status().await?.merkle_checkpoint;

    // No flushing from here on: everything written now exists only in the WAL and memory.
    sidecar
        .restart_with(vec![
            "--merkle-flush-interval-ms=600000".into(),
            "--merkle-flush-wal-entries=1000000".into(),
            "--merkle-records-per-commit=0".into(),
        ])
        .await?;
    write_batches(&sidecar, "late", 15).await?;
    let mut s = sidecar.storage();
    s.put(PutRequest {
        key: "logical/early/b0/k0".into(),
        value: b"overwritten".to_vec(),
    })
    .await?;
    let before = sidecar.status().await?;
    sidecar.kill();

    let after = sidecar.restart_with(Vec::new()).await?;
    assert_eq!(after.startup_mode, "recovery");
    assert_eq!(after.startup_redo_entries, before.last_wal - checkpoint);
    assert_eq!(after.merkle_root, before.merkle_root);
    assert_eq!(after.merkle_keys, 3500);
    assert_equals_reindex(&sidecar).await
}

/// With flush rounds out of reach, single writes still flush the index: each transaction
/// carries the subpages that the writes before it dirtied, and recovery from those records
/// (each at its own LSN, past the checkpoint) is exact. With `--merkle-records-per-commit=0`
/// nothing is carried.
#[tokio::test]
async fn commits_carry_dirty_subpages_and_recovery_uses_them() -> anyhow::Result<()> {
    const WRITES: usize = 300;
    for per_commit in [8, 0] {
        let etcd = EtcdServer::start()?;
        let mut sidecar = Sidecar::start(
            &etcd.endpoint(),
            SidecarOptions::new("east", "n1").arg("--merkle-flush-interval-ms=50"),
        )
        .await?;
        write_batches(&sidecar, "early", 1).await?;
        let flushed = sidecar.wait_flushed().await?;
        sidecar
            .restart_with(vec![
                "--merkle-flush-interval-ms=600000".into(),
                "--merkle-flush-wal-entries=1000000".into(),
                format!("--merkle-records-per-commit={per_commit}"),
            ])
            .await?;
        let mut s = sidecar.storage();
        for i in 0..WRITES {
            s.put(PutRequest {
                key: format!("logical/carry/k{i}"),
                value: format!("v{i}").into_bytes(),
            })
            .await?;
        }
        let before = sidecar.status().await?;
        let records = etcd
            .client()
            .await?
            .get(
                "/ferry/east/merkle/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            )
            .await?
            .count() as usize;
        // The first batch's 100 keys were flushed by a round; each later write adds about one
        // subpage of the 65,536.
        if per_commit > 0 {
            // Only what the last write dirtied waits for the next transaction.
            assert!(before.merkle_dirty_subpages <= 1, "{before:?}");
            assert!(records >= 100 + WRITES * 9 / 10, "{records} records");
        } else {
            assert!(
                before.merkle_dirty_subpages as usize >= WRITES * 9 / 10,
                "{before:?}"
            );
            assert!(records <= 100, "{records} records");
        }
        assert_eq!(before.merkle_checkpoint, flushed.last_wal);

        sidecar.kill();
        let after = sidecar.restart_with(Vec::new()).await?;
        assert_eq!(after.startup_mode, "recovery");
        assert_eq!(after.startup_redo_entries, WRITES as u64);
        assert_eq!(after.merkle_root, before.merkle_root);
        assert_eq!(after.merkle_keys, 100 + WRITES as u64);
        assert_equals_reindex(&sidecar).await?;
    }
    Ok(())
}

#[tokio::test]
async fn sigkill_mid_flush_under_load_recovers_exactly() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    // Flushing constantly, so that the kill lands between subpage writes of a round.
    let mut sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1").arg("--merkle-flush-interval-ms=10"),
    )
    .await?;
    for round in 0..3 {
        let tag = format!("r{round}");
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mut s = sidecar.storage();
                let tag = tag.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0.. {
                        let key = format!("logical/{tag}/w{w}/k{}", i % 400);
                        let value = format!("{i}").into_bytes();
                        let ok = if i % 5 == 4 {
                            s.delete(ferry_proto::storage::DeleteRequest { key: key.clone() })
                                .await
                                .is_ok()
                        } else {
                            s.put(PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                            })
                            .await
                            .is_ok()
                        };
                        if !ok {
                            return acked;
                        }
                        acked.push((key, (i % 5 != 4).then_some(value)));
                    }
                    acked
                })
            })
            .collect();
        sidecar
            .wait_status("the WAL to grow", |s| {
                s.last_wal >= 200 * (round + 1) && s.merkle_checkpoint > 0
            })
            .await?;
        sidecar.kill();
        let mut last_acked = std::collections::BTreeMap::new();
        for w in writers {
            for (key, value) in w.await? {
                last_acked.insert(key, value);
            }
        }
        let status = sidecar.restart().await?;
        assert_eq!(status.startup_mode, "recovery");
        // Every acknowledged write is there (each key's last acknowledged state, or a later one
        // whose answer the kill cut off; writers write each key in order, one at a time).
        let mut s = sidecar.storage();
        for (key, value) in &last_acked {
            let got = s
                .get(ferry_proto::storage::GetRequest { key: key.clone() })
                .await?
                .into_inner();
            if let Some(v) = value {
                let n: u64 = String::from_utf8_lossy(v).parse()?;
                assert!(got.found, "{key} lost");
                let stored: u64 = String::from_utf8_lossy(&got.value).parse()?;
                assert!(stored >= n, "{key}: acknowledged {n}, stored {stored}");
            }
        }
        assert_equals_reindex(&sidecar).await?;
    }
    Ok(())
}

#[tokio::test]
async fn corrupt_records_fall_back_to_a_full_reindex() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1").arg("--merkle-flush-interval-ms=50"),
    )
    .await?;
    write_batches(&sidecar, "x", 5).await?;
    sidecar.wait_flushed().await?;
    let before = sidecar.status().await?;
    sidecar.kill();

    // Damage one flushed subpage record.
    let client = etcd.client().await?;
    let mut kv = client.kv_client();
    let records = kv
        .get(
            "/ferry/east/merkle/",
            Some(etcd_client::GetOptions::new().with_prefix().with_limit(1)),
        )
        .await?;
    let record = records.kvs().first().expect("a flushed record");
    let mut damaged = record.value().to_vec();
    damaged[10] ^= 0xff;
    kv.put(record.key(), damaged, None).await?;

    let after = sidecar.restart().await?;
    assert_eq!(after.startup_mode, "reindex");
    assert_eq!(after.merkle_root, before.merkle_root);
    assert!(sidecar.log().contains("falling back to a full reindex"));
    Ok(())
}

/// A flush transaction whose outcome is unknown (etcd frozen past the transaction timeout)
/// could still land after a newer record of the same subpage, leaving etcd with the older one
/// under a newer checkpoint. The flusher must rotate the fence before any later round, so that
/// it cannot; recovery afterwards still equals a full reindex.
#[tokio::test]
async fn a_flush_of_unknown_outcome_rotates_the_fence_before_the_next_round() -> anyhow::Result<()>
{
    let etcd = EtcdServer::start()?;
    let mut sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1")
            // Rounds on a 6 s timer, written as small transactions spread over 3 s, none carried
            // by commits: a round is under way long enough to freeze etcd in its middle.
            .arg("--merkle-flush-interval-ms=6000")
            .arg("--merkle-flush-wal-entries=1000000")
            .arg("--merkle-records-per-commit=0")
            // The fence outlives the outage.
            .arg("--fence-ttl-seconds=60"),
    )
    .await?;
    write_batches(&sidecar, "a", 3).await?;
    let dirty = sidecar.status().await?.merkle_dirty_subpages;
    assert!(dirty >= 250, "{dirty} dirty subpages");
    let fence_revision = || async {
        let resp = etcd
            .client()
            .await?
            .get("/ferry/east/meta/fence", None)
            .await?;
        let kv = resp.kvs().first().context("no fence key")?;
        anyhow::Ok(kv.mod_revision())
    };
    let before = fence_revision().await?;
    sidecar
        // A round takes its subpages at its start and writes the checkpoint at its end.
        .wait_status("a flush round under way", |s| {
            s.merkle_dirty_subpages == 0 && s.merkle_checkpoint < s.last_wal
        })
        .await?;

    etcd.signal("STOP")?;
    // Longer than the sidecar's transaction timeout (10 s): the round's next transaction is
    // left with an unknown outcome, and lands when etcd resumes.
    tokio::time::sleep(Duration::from_secs(11)).await;
    etcd.signal("CONT")?;

    ferry_tests::wait_for(
        "the failed flush round",
        Duration::from_secs(30),
        || async { sidecar.log().contains("merkle flush failed").then_some(()) },
    )
    .await?;
    let log = sidecar.log();
    let rotated = log
        .find("rotated the write fence")
        .context("the fence was not rotated")?;
    assert!(
        rotated < log.find("merkle flush failed").expect("found above"),
        "the round gave up its gate before rotating the fence:\n{}",
        sidecar.log_tail(20)
    );
    assert!(fence_revision().await? > before);

    write_batches(&sidecar, "b", 1).await?;
    sidecar.wait_flushed().await?;
    let flushed = sidecar.status().await?;
    sidecar.kill();
    let after = sidecar.restart().await?;
    assert_eq!(after.startup_mode, "recovery");
    assert_eq!(after.merkle_root, flushed.merkle_root);
    assert_equals_reindex(&sidecar).await
}
