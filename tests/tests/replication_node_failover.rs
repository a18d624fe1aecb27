//! Pod loss is a non-event for replication: after `kill -9` of the primary's active node under a
//! write load, a standby takes over and the secondary finds it by itself (no operator action),
//! with no acknowledged write lost and equal merkle roots; after `kill -9` of the secondary's
//! active node, the next active node resumes streaming from the applied index, without a merkle
//! reconciliation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::storage::GetRequest;
use ferry_tests::region_nodes::{NodeRegion, RegionNode};
use ferry_tests::wait_for;
use serde_json::Value;
use tokio::sync::Mutex;

/// A short fence lease: a standby takes over about one lease after the active node dies.
const TTL: &str = "--fence-ttl-seconds=4";

/// The acknowledged writes of a load: key, when it was sent, when it was acknowledged.
type Acks = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

/// Writes `load/<n>` through `region`'s active node, whichever it is, until `stop`.
fn write_load(
    region: &NodeRegion,
    acks: Acks,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let mut writer = region.writer();
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let key = format!("load/{n}");
            let sent = Instant::now();
            match writer.put(&key, n.to_string().as_bytes()).await {
                Ok(_) => acks.lock().await.push((key, sent, Instant::now())),
                // Not acknowledged: it may or may not be there; nothing is claimed of it.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

async fn wait_acks(acks: &Acks, at_least: usize, after: Instant) -> anyhow::Result<()> {
    wait_for(
        &format!("{at_least} writes acknowledged"),
        Duration::from_secs(60),
        || async {
            let n = acks
                .lock()
                .await
                .iter()
                .filter(|(_, s, _)| *s > after)
                .count();
            (n >= at_least).then_some(())
        },
    )
    .await
}

/// Every acknowledged key is on `node` with its value.
async fn assert_all_there(
    node: &RegionNode,
    acks: &[(String, Instant, Instant)],
) -> anyhow::Result<()> {
    let mut storage = node.sidecar.storage();
    for (key, _, _) in acks {
        let r = storage
            .get(GetRequest { key: key.clone() })
            .await?
            .into_inner();
        assert!(r.found, "acknowledged write {key} lost on {}", node.id);
        assert_eq!(r.value, key.trim_start_matches("load/").as_bytes());
    }
    Ok(())
}

/// `log` without terminal colour sequences (the sidecar's fields are coloured).
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn connected_to(status: &Value) -> Option<&str> {
    status["primaries"][0]["cluster_address"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secondary_follows_a_new_primary_active_node_after_kill_9_under_load_and_loses_nothing()
-> anyhow::Result<()> {
    let mut west = NodeRegion::start("west", 3, None, &[TTL]).await?;
    let east = NodeRegion::start("east", 3, None, &[TTL]).await?;
    west.enable_primary().await?;
    east.follow(&west, "east").await?;
    east.wait_caught_up(&west).await?;
    let old = west.nodes[0].cluster_addr();
    east.wait_status("the secondary to know all three primary nodes", |s| {
        s["known_primary_cluster_addrs"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
            && connected_to(s) == Some(old.as_str())
    })
    .await?;

    // The secondary's initial sync was its one reconciliation; failover must add none.
    let syncs_before = east.status().await?["merkle_syncs"].clone();
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&west, acks.clone(), stop.clone());
    let started = Instant::now();
    wait_acks(&acks, 30, started).await?;

    west.nodes[0].kill();
    let killed = Instant::now();
    let new_active = west.active(Duration::from_secs(30)).await?;
    let new = west.nodes[new_active].cluster_addr();
    wait_acks(&acks, 1, killed).await?;
    let first_write = acks
        .lock()
        .await
        .iter()
        .find(|(_, sent, _)| *sent > killed)
        .map(|(_, _, acked)| *acked - killed)
        .expect("a write after the kill");
    // The secondary, told nothing, follows the new active node.
    let status = east
        .wait_status("the secondary to stream from the new active node", |s| {
            s["state"] == "stream-wals" && connected_to(s) == Some(new.as_str())
        })
        .await?;
    let followed = killed.elapsed();
    wait_acks(&acks, 30, killed).await?;
    stop.store(true, Ordering::SeqCst);
    load.await?;
    println!(
        "kill -9 of west-1: {} active, first write accepted after {first_write:?}, the secondary streaming from it after {followed:?}; {} writes acknowledged",
        west.nodes[new_active].id,
        acks.lock().await.len()
    );
    assert!(
        first_write < Duration::from_secs(10),
        "writes resumed {first_write:?} after the kill"
    );
    // While the standbys refuse and no node is active, the follower retries every 0.5 s.
    assert!(
        followed < Duration::from_secs(10),
        "the secondary followed the new active node only {followed:?} after the kill"
    );
    assert_eq!(
        status["merkle_syncs"],
        syncs_before,
        "the secondary reconciled: {status}\n{}",
        without_colours(&east.logs(80))
    );

    // Converged: equal merkle roots, every acknowledged write on the secondary's nodes.
    let caught_up = east.wait_caught_up(&west).await?;
    let primary = west.status().await?;
    assert_eq!(caught_up["last_remote_wal"], primary["last_wal"]);
    assert_eq!(caught_up["merkle_root"], primary["merkle_root"]);
    let acks = acks.lock().await.clone();
    for node in &east.nodes {
        assert_all_there(node, &acks).await?;
    }
    assert_all_there(&west.nodes[new_active], &acks).await?;
    // The new active node lists the surviving standby; the dead node is no longer its own.
    let nodes = primary["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes[0]["node_id"], west.nodes[new_active].id.as_str());
    assert!(nodes.iter().all(|n| n["node_id"] != "west-1"), "{nodes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_secondary_active_node_resumes_streaming_from_the_applied_index_after_kill_9()
-> anyhow::Result<()> {
    let west = NodeRegion::start("west", 1, None, &[TTL]).await?;
    let mut east = NodeRegion::start("east", 3, None, &[TTL]).await?;
    west.enable_primary().await?;
    east.follow(&west, "east").await?;
    let mut writer = west.writer();
    for n in 0..50u64 {
        writer
            .put(&format!("load/{n}"), n.to_string().as_bytes())
            .await?;
    }
    let before = east.wait_caught_up(&west).await?;
    let applied = before["last_remote_wal"].as_u64().unwrap_or(0);
    assert!(applied >= 50, "{before}");

    // Only the active node follows: the standbys' logs never asked for a stream.
    for node in &east.nodes[1..] {
        assert!(
            !node.sidecar.log().contains("requesting WAL stream"),
            "standby {} followed the primary",
            node.id
        );
    }

    east.nodes[0].kill();
    let killed = Instant::now();
    let next = east.active(Duration::from_secs(30)).await?;
    let status = east
        .wait_status("the new active node to stream", |s| {
            s["state"] == "stream-wals"
        })
        .await?;
    let resumed = killed.elapsed();
    println!(
        "kill -9 of east-1: {} streaming again after {resumed:?}, from index {}",
        east.nodes[next].id, status["last_remote_wal"]
    );
    // It asked for the stream right after the index the dead node had applied, and did not
    // reconcile.
    let log = without_colours(&east.nodes[next].sidecar.log());
    assert!(
        log.lines()
            .any(|l| l.contains("requesting WAL stream") && l.contains(&format!("after={applied}"))),
        "no stream requested after index {applied}:\n{}",
        east.nodes[next].sidecar.log_tail(30)
    );
    assert!(
        !log.contains("reconciling"),
        "the new active node reconciled:\n{log}"
    );
    // A fresh process: no reconciliation since it started.
    assert_eq!(status["merkle_syncs"], 0, "{status}");

    // And goes on: new writes arrive, roots agree.
    for n in 50..100u64 {
        writer
            .put(&format!("load/{n}"), n.to_string().as_bytes())
            .await?;
    }
    let after = east.wait_caught_up(&west).await?;
    assert_eq!(after["merkle_root"], west.status().await?["merkle_root"]);
    let mut storage = east.nodes[next].sidecar.storage();
    for n in 0..100u64 {
        let r = storage
            .get(GetRequest {
                key: format!("load/{n}"),
            })
            .await?
            .into_inner();
        assert!(r.found, "load/{n} missing on the secondary");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_former_secondary_active_node_stops_following_when_it_wakes() -> anyhow::Result<()>
{
    let west = NodeRegion::start("west", 1, None, &[TTL]).await?;
    let east = NodeRegion::start("east", 2, None, &[TTL]).await?;
    west.enable_primary().await?;
    east.follow(&west, "east").await?;
    east.wait_caught_up(&west).await?;

    // Frozen past its lease: east-2 takes over and follows.
    east.nodes[0].sidecar.signal("STOP")?;
    east.nodes[1]
        .sidecar
        .wait_active(Duration::from_secs(30))
        .await?;
    let mut writer = west.writer();
    for n in 0..20u64 {
        writer
            .put(&format!("load/{n}"), n.to_string().as_bytes())
            .await?;
    }
    east.wait_caught_up(&west).await?;

    // Awake, east-1 no longer holds the fence: its follower stops and stays idle.
    east.nodes[0].sidecar.signal("CONT")?;
    let old = east.nodes[0].api();
    wait_for(
        "the former active node's follower to go idle",
        Duration::from_secs(30),
        || async {
            let s = old
                .get("/v1/sys/replication/performance/status")
                .await
                .ok()?;
            (s.body["data"]["state"] == "idle").then_some(())
        },
    )
    .await?;
    assert_eq!(east.nodes[0].role().await?, "standby");
    // The new active node goes on following.
    for n in 20..40u64 {
        writer
            .put(&format!("load/{n}"), n.to_string().as_bytes())
            .await?;
    }
    let status = east.wait_caught_up(&west).await?;
    assert_eq!(status["merkle_root"], west.status().await?["merkle_root"]);
    Ok(())
}
