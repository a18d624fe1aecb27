//! A primary and a secondary on their own etcd servers: initial sync of existing data, live
//! streaming, and a secondary restart resuming the stream without a merkle pass.

use ferry_tests::region::{Region, primary_and_secondary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_copies_existing_data() -> anyhow::Result<()> {
    let primary = Region::start("west", &[]).await?;
    for i in 0..300 {
        primary
            .put(&format!("logical/a/k{i:03}"), format!("v{i}").as_bytes())
            .await?;
    }
    primary.put("sys/token/id/t1", b"local to west").await?;
    primary.delete("logical/a/k007").await?;
    let secondary = Region::start("east", &[]).await?;
    secondary
        .put("logical/stale", b"only on the secondary")
        .await?;
    primary.enable_primary().await?;
    secondary.follow(&primary, "east").await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert_eq!(status["mode"], "secondary");
    assert!(
        status["sync_total_keys"].as_u64().unwrap() >= 299,
        "{status}"
    );

    assert_eq!(
        secondary.get("logical/a/k123").await?.as_deref(),
        Some(&b"v123"[..])
    );
    assert_eq!(secondary.get("logical/a/k007").await?, None);
    assert_eq!(
        secondary.get("logical/stale").await?,
        None,
        "the secondary's extra key is removed"
    );
    assert_eq!(
        secondary.get("sys/token/id/t1").await?,
        None,
        "local paths are not shipped"
    );
    assert_eq!(
        secondary.status().await?["merkle_root"],
        primary.status().await?["merkle_root"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_writes_stream_and_a_restarted_secondary_resumes() -> anyhow::Result<()> {
    let (primary, mut secondary) = primary_and_secondary(&[]).await?;
    let syncs_before = secondary.status().await?["merkle_syncs"].as_u64().unwrap();
    for i in 0..50 {
        primary.put(&format!("logical/live/{i}"), b"x").await?;
    }
    primary.delete("logical/live/3").await?;
    secondary.wait_caught_up(&primary).await?;
    assert_eq!(
        secondary.get("logical/live/49").await?.as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(secondary.get("logical/live/3").await?, None);

    // A replicated write on the secondary is refused as read-only; a local one is accepted.
    let refused = secondary
        .put("logical/live/from-east", b"y")
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("read-only"), "{refused:#}");
    secondary.put("sys/token/id/east-token", b"local").await?;

    secondary.sidecar.kill();
    for i in 50..80 {
        primary.put(&format!("logical/live/{i}"), b"z").await?;
    }
    secondary.restart().await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert_eq!(
        secondary.get("logical/live/79").await?.as_deref(),
        Some(&b"z"[..])
    );
    assert_eq!(
        status["merkle_syncs"].as_u64().unwrap(),
        0,
        "a restarted secondary streams from its applied index without a merkle pass (before restart: {syncs_before})"
    );
    let log = secondary.sidecar.log();
    assert!(log.contains("replication: successful heartbeat"), "{log}");
    Ok(())
}
