//! The primary goes down: the secondary keeps serving reads on its last data, reports the lost
//! connection, and reconnects by itself when the primary returns.

use ferry_tests::region::primary_and_secondary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_serves_reads_while_the_primary_is_down_then_reconnects() -> anyhow::Result<()>
{
    let (mut primary, secondary) = primary_and_secondary(&[]).await?;
    primary.put("logical/o/before", b"1").await?;
    secondary.wait_caught_up(&primary).await?;

    primary.sidecar.kill();
    let status = secondary
        .wait_status("the secondary to notice the primary is gone", |s| {
            s["connection_state"] != "ready"
                && s["primaries"][0]["connection_status"] != "connected"
                || s["state"] == "connecting"
        })
        .await?;
    assert_eq!(status["mode"], "secondary");
    assert_eq!(
        secondary.get("logical/o/before").await?.as_deref(),
        Some(&b"1"[..])
    );
    let known = status["known_primary_cluster_addrs"].clone();
    assert_eq!(known[0], primary.cluster_addr(), "{status}");
    // The addresses are persisted (local storage) for the next start.
    let stored = secondary
        .get("core/primary-addrs/perf")
        .await?
        .unwrap_or_default();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&stored)?, known);

    primary.restart().await?;
    primary.put("logical/o/after", b"2").await?;
    let status = secondary.wait_caught_up(&primary).await?;
    assert_eq!(status["connection_state"], "ready");
    assert_eq!(
        secondary.get("logical/o/after").await?.as_deref(),
        Some(&b"2"[..])
    );
    Ok(())
}
