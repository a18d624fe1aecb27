//! WAL retention: garbage collection keeps the WAL within its limits, answers "no longer
//! retained" for collected entries, and never removes what merkle recovery needs.

use ferry_proto::storage::{PutRequest, ReadWalRequest};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};

async fn put_many(sidecar: &Sidecar, tag: &str, n: usize, value_len: usize) -> anyhow::Result<()> {
    let mut s = sidecar.storage();
    for i in 0..n {
        s.put(PutRequest {
            key: format!("logical/{tag}/{i}"),
            value: vec![b'v'; value_len],
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn gc_bounds_the_wal_by_entries() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let options = SidecarOptions::new("east", "n1")
        .arg("--wal-retain-entries=50")
        .arg("--wal-gc-interval-ms=20")
        .arg("--merkle-flush-interval-ms=20");
    let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    put_many(&sidecar, "a", 300, 16).await?;
    let status = sidecar
        .wait_status("the WAL to be trimmed to 50 entries", |s| {
            s.last_wal == 300 && s.first_wal == 251
        })
        .await?;
    assert_eq!(status.last_wal - status.first_wal + 1, 50);

    let mut admin = sidecar.admin();
    let gone = admin
        .read_wal(ReadWalRequest {
            after: 10,
            limit: 10,
        })
        .await?
        .into_inner();
    assert_eq!(gone.not_retained_first, Some(251));
    assert!(gone.entries.is_empty());
    let kept = admin
        .read_wal(ReadWalRequest {
            after: 250,
            limit: 5,
        })
        .await?
        .into_inner();
    assert_eq!(kept.not_retained_first, None);
    assert_eq!(
        kept.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        [251, 252, 253, 254, 255]
    );
    let tail = admin
        .read_wal(ReadWalRequest {
            after: 300,
            limit: 5,
        })
        .await?
        .into_inner();
    assert!(tail.entries.is_empty() && tail.not_retained_first.is_none());

    let client = etcd.client().await?;
    let stored = ferry_tests::inspect::read_stored(&client, "east").await?;
    assert_eq!(stored.wal.len(), 50);
    assert_eq!(stored.data.len(), 300, "GC removes WAL entries, never data");
    Ok(())
}

#[tokio::test]
async fn gc_bounds_the_wal_by_bytes() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let options = SidecarOptions::new("east", "n1")
        .arg("--wal-retain-bytes=100000")
        .arg("--wal-gc-interval-ms=20")
        .arg("--merkle-flush-interval-ms=20");
    let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    // About 4.1 KB per entry: 100 kB holds 24 of them.
    put_many(&sidecar, "b", 100, 4000).await?;
    let status = sidecar
        .wait_status("the WAL to be trimmed to 100 kB", |s| {
            s.last_wal == 100 && s.wal_retained_bytes <= 100_000 && s.first_wal > 1
        })
        .await?;
    let retained = status.last_wal - status.first_wal + 1;
    assert!(
        (20..=25).contains(&retained),
        "{retained} entries retained for 100 kB"
    );
    assert!(
        status.wal_retained_bytes > 100_000 - 4200,
        "collected more than needed: {status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn gc_keeps_what_recovery_needs() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut sidecar = Sidecar::start(
        &etcd.endpoint(),
        SidecarOptions::new("east", "n1")
            .arg("--merkle-flush-interval-ms=20")
            .arg("--wal-gc-interval-ms=20"),
    )
    .await?;
    put_many(&sidecar, "c", 10, 16).await?;
    sidecar
        .wait_status("a checkpoint at 10", |s| s.merkle_checkpoint == 10)
        .await?;

    // Flushing stops; retention asks for 5 entries, but recovery needs everything after 10.
    sidecar
        .restart_with(vec![
            "--merkle-flush-interval-ms=600000".into(),
            "--merkle-flush-wal-entries=1000000".into(),
            "--wal-retain-entries=5".into(),
            "--wal-gc-interval-ms=20".into(),
        ])
        .await?;
    put_many(&sidecar, "d", 200, 16).await?;
    let status = sidecar
        .wait_status("GC to collect everything up to the checkpoint", |s| {
            s.first_wal == 11
        })
        .await?;
    assert_eq!(status.last_wal, 210);
    sidecar.kill();
    let recovered = sidecar.restart_with(Vec::new()).await?;
    assert_eq!(
        recovered.startup_mode, "recovery",
        "recovery lost the WAL it needed"
    );
    assert_eq!(recovered.startup_redo_entries, 200);
    assert_eq!(recovered.merkle_root, status.merkle_root);
    Ok(())
}

/// With the flush interval out of reach, a flush still starts once enough WAL was written
/// since the last one: by entries, or by bytes.
#[tokio::test]
async fn wal_volume_starts_a_flush() -> anyhow::Result<()> {
    for (trigger, value_len) in [
        ("--merkle-flush-wal-entries=20", 16),
        ("--merkle-flush-wal-bytes=8192", 1024),
    ] {
        let etcd = EtcdServer::start()?;
        let sidecar = Sidecar::start(
            &etcd.endpoint(),
            SidecarOptions::new("east", "n1")
                .arg("--merkle-flush-interval-ms=600000")
                .arg(trigger),
        )
        .await?;
        put_many(&sidecar, "v", 25, value_len).await?;
        let status = sidecar
            .wait_status(&format!("a flush started by {trigger}"), |s| {
                s.merkle_checkpoint >= 8
            })
            .await?;
        assert!(status.merkle_checkpoint <= 25, "{status:?}");
    }
    Ok(())
}
