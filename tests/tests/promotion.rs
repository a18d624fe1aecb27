//! Promotion and fencing: a planned switchover under write load loses no acknowledged write and
//! the other secondaries follow the new primary without new tokens; a demoted primary and a
//! primary fenced by a newer epoch refuse replicated writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_proto::storage::PutRequest;
use ferry_tests::region::{Region, primary_and_secondary};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let (a, b) = primary_and_secondary(&[]).await?;
    let c = Region::start("north", &[]).await?;
    c.follow(&a, "north").await?;
    c.wait_caught_up(&a).await?;

    // Four writers keep writing to the primary until it refuses them.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut storage = a.sidecar.storage();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut refused = 0;
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("logical/load/{w}/{n}");
                let value = format!("{w}-{n}").into_bytes();
                let put = storage.put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                });
                match put.await {
                    Ok(_) => {
                        acked.insert(key, value);
                    }
                    Err(status) => {
                        assert!(status.message().contains("read-only"), "{status}");
                        refused += 1;
                    }
                }
            }
            (acked, refused)
        }));
    }
    a.wait_status("some writes", |s| s["last_wal"].as_u64() > Some(50))
        .await?;

    let demoted = a.call("primary/demote", json!({})).await?.ok()?;
    let last = demoted.body["data"]["last_wal"].as_u64().unwrap();
    // Let the writers meet the refusal, then stop them.
    a.wait_status("the demoted state", |s| s["mode"] == "secondary")
        .await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for w in writers {
        let (keys, _) = w.await?;
        acked.extend(keys);
    }
    assert!(a.put("logical/after-demote", b"x").await.is_err());

    let promoted = b.call("secondary/promote", json!({})).await?.ok()?;
    assert_eq!(
        promoted.body["data"]["drained_to"].as_u64(),
        Some(last),
        "{:?}",
        promoted.body
    );
    assert_eq!(promoted.body["data"]["epoch"].as_u64(), Some(2));
    let status = b.status().await?;
    assert_eq!(status["mode"], "primary");
    assert_eq!(status["epoch"].as_u64(), Some(2));

    for (key, value) in &acked {
        assert_eq!(
            b.get(key).await?.as_ref(),
            Some(value),
            "{key} was acknowledged but lost"
        );
    }
    b.put("logical/on-b", b"new primary").await?;

    // The old primary follows B by address, without a new token. The other secondary is told
    // nothing: A no longer serves it, so it asks A's RemoteResolve and finds B by itself.
    let addrs = json!({ "update_primary_addrs": [b.cluster_addr()] });
    a.call("secondary/update-primary", addrs).await?.ok()?;
    let status = c
        .wait_status("the other secondary to find the new primary", |s| {
            s["known_primary_cluster_addrs"][0] == b.cluster_addr().as_str()
        })
        .await?;
    assert_eq!(status["mode"], "secondary");
    for follower in [&a, &c] {
        let status = follower.wait_caught_up(&b).await?;
        assert_eq!(status["merkle_root"], b.status().await?["merkle_root"]);
        assert_eq!(
            follower.get("logical/on-b").await?.as_deref(),
            Some(&b"new primary"[..])
        );
    }
    assert!(a.put("logical/a-is-secondary", b"x").await.is_err());
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_learns_of_a_higher_epoch_refuses_writes() -> anyhow::Result<()> {
    let (a, b) = primary_and_secondary(&[]).await?;
    a.put("logical/e/1", b"1").await?;
    b.wait_caught_up(&a).await?;

    // Without force, promotion refuses while the primary is still active.
    let reply = b.call("secondary/promote", json!({})).await?;
    assert_eq!(reply.status, 400);
    assert!(reply.error().contains("still active"), "{}", reply.error());

    b.call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;
    let status = a
        .wait_status("the old primary to be fenced", |s| {
            s["fenced_by_epoch"].as_u64() == Some(2)
        })
        .await?;
    assert_eq!(status["mode"], "secondary");
    let err = a.put("logical/e/2", b"2").await.unwrap_err();
    assert!(format!("{err:#}").contains("read-only"), "{err:#}");
    b.put("logical/e/2", b"from b").await?;

    // B (epoch 2) leaves this set and joins a new one whose primary is at epoch 1: its old
    // epoch belongs to the old set and must not fence the new primary.
    b.call("primary/disable", json!({})).await?.ok()?;
    let d = Region::start("south", &[]).await?;
    d.enable_primary().await?;
    b.follow(&d, "b").await?;
    d.put("logical/d/1", b"d").await?;
    b.wait_caught_up(&d).await?;
    let status = d.status().await?;
    assert_eq!(status["mode"], "primary", "{status}");
    d.put("logical/d/2", b"still writable").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_promotion_fences_the_old_primary_and_keeps_its_unshipped_writes()
-> anyhow::Result<()> {
    let (mut a, mut b) = primary_and_secondary(&[]).await?;
    a.put("logical/f/1", b"1").await?;
    b.wait_caught_up(&a).await?;
    // A write the secondary never receives: it is down, then the primary is lost.
    b.sidecar.kill();
    a.put("logical/f/unshipped", b"only on a").await?;
    a.put("logical/f/1", b"changed on a").await?;
    a.sidecar.kill();
    b.restart().await?;

    let reply = b.call("secondary/promote", json!({})).await?;
    assert_eq!(reply.status, 503, "the old primary cannot be reached");
    assert!(reply.error().contains("force=true"), "{}", reply.error());
    // What an operator acts on is a code, not the message's words.
    assert_eq!(
        reply.body["error_code"],
        ferry_proto::PRIMARY_UNREACHABLE,
        "{}",
        reply.body
    );
    assert_eq!(b.status().await?["mode"], "secondary");

    b.call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;
    assert_eq!(b.get("logical/f/1").await?.as_deref(), Some(&b"1"[..]));
    b.put("logical/f/on-b", b"b").await?;

    // The old primary comes back believing it is primary; the new one tells it otherwise.
    a.restart().await?;
    a.wait_status("the returning primary to be fenced", |s| {
        s["fenced_by_epoch"].as_u64() == Some(2)
    })
    .await?;
    let err = a.put("logical/f/2", b"2").await.unwrap_err();
    assert!(format!("{err:#}").contains("read-only"), "{err:#}");

    // It follows the new primary; what only it had is kept aside, not dropped.
    a.call(
        "secondary/update-primary",
        json!({ "update_primary_addrs": [b.cluster_addr()] }),
    )
    .await?
    .ok()?;
    let status = a.wait_caught_up(&b).await?;
    assert_eq!(
        status["last_reconcile"]["keys_kept_aside"].as_u64(),
        Some(2),
        "{status}"
    );
    assert_eq!(a.get("logical/f/unshipped").await?, None);
    assert_eq!(a.get("logical/f/1").await?.as_deref(), Some(&b"1"[..]));
    assert_eq!(a.get("logical/f/on-b").await?.as_deref(), Some(&b"b"[..]));
    assert_eq!(
        a.get("core/local/unshipped/e1/logical/f/unshipped")
            .await?
            .as_deref(),
        Some(&b"only on a"[..])
    );
    assert_eq!(
        a.get("core/local/unshipped/e1/logical/f/1")
            .await?
            .as_deref(),
        Some(&b"changed on a"[..])
    );
    Ok(())
}
