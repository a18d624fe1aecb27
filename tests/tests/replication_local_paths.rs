//! A secondary never applies a write to a path local to it, whatever its primary ships: tokens
//! and leases stay local to each cluster. A primary that classifies paths differently (here, run
//! without `sys/token/` among its local prefixes, so it replicates tokens) gets its stream
//! stopped with an error that names the path, and nothing of it is applied, whether the path
//! arrives in the WAL stream or in a merkle reconciliation.

use ferry_tests::region::Region;

/// The default local prefixes without `sys/token/`.
const TOKENS_REPLICATED: &str =
    "--local-prefixes=sys/expire/,core/local/,core/cluster/,core/primary-addrs/,core/replication/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_write_to_a_local_path_is_refused_and_nothing_of_it_applied()
-> anyhow::Result<()> {
    let primary = Region::start("west", &[TOKENS_REPLICATED]).await?;
    let secondary = Region::start("east", &[]).await?;
    primary.enable_primary().await?;
    secondary.follow(&primary, "east").await?;
    primary.put("logical/before", b"1").await?;
    secondary.wait_caught_up(&primary).await?;
    secondary
        .put("sys/token/id/mine", b"east's own token")
        .await?;

    // The token, then a replicated key behind it: neither may be applied.
    primary.put("sys/token/id/mine", b"west's token").await?;
    primary.put("logical/after", b"2").await?;
    let status = secondary
        .wait_status("the stream to stop on the local path", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("\"sys/token/id/mine\""))
        })
        .await?;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("local to this cluster"), "{error}");
    assert_eq!(
        secondary.get("sys/token/id/mine").await?.as_deref(),
        Some(&b"east's own token"[..])
    );
    assert_eq!(secondary.get("logical/after").await?, None);
    assert_eq!(
        secondary.get("logical/before").await?.as_deref(),
        Some(&b"1"[..])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciled_key_on_a_local_path_is_refused() -> anyhow::Result<()> {
    let primary = Region::start("west", &[TOKENS_REPLICATED]).await?;
    primary.enable_primary().await?;
    primary.put("sys/token/id/theirs", b"west's token").await?;
    primary.put("logical/a", b"1").await?;

    // A new secondary copies the primary's keys by merkle reconciliation.
    let secondary = Region::start("east", &[]).await?;
    secondary.follow(&primary, "east").await?;
    let status = secondary
        .wait_status("the reconciliation to stop on the local path", |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("\"sys/token/id/theirs\""))
        })
        .await?;
    assert_ne!(status["state"], "stream-wals", "{status}");
    assert_eq!(secondary.get("sys/token/id/theirs").await?, None);
    Ok(())
}
