//! Fencing by epoch: an old primary that a forced promotion superseded is fenced for good,
//! whether it stalled past its fence lease or within it, acknowledges nothing sent after the new
//! primary's first write, loses nothing it acknowledged and keeps aside exactly what it never
//! shipped. A primary whose lease ran out while nobody took its fence writes again by itself, and
//! a primary with a streaming secondary shuts down promptly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::KeyValue;
use ferry_proto::storage::{ListRequest, PutRequest};
use ferry_tests::region::{REPLICATION_TIMEOUT, Region, primary_and_secondary};
use ferry_tests::wait_for;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Stalls longer and shorter than the sidecar's default fence lease (5 s, renewed every third of
/// it, so a stall of up to 3.3 s always ends within the lease). The shorter one still exceeds the
/// 2 s after which a sidecar suspects a freeze and checks for a newer primary.
const PAST_THE_LEASE: Duration = Duration::from_secs(15);
const WITHIN_THE_LEASE: Duration = Duration::from_millis(2500);
/// How long writes may take to resume once a primary runs again with nobody else on its fence.
const RESUME_WITHIN: Duration = Duration::from_secs(10);
/// Where a former primary at epoch 1 keeps what its first reconciliation replaced.
const UNSHIPPED: &str = "core/local/unshipped/";
const KEPT_ASIDE: &str = "core/local/unshipped/e1/";
/// A key the old primary writes and ships before it stalls; the new primary's first write
/// changes it.
const SHIPPED_THEN_CHANGED: &str = "logical/shipped-then-changed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_stalled_past_its_lease_is_fenced_for_good() -> anyhow::Result<()> {
    an_old_primary_stalled_for(PAST_THE_LEASE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_stalled_within_its_lease_is_fenced_for_good() -> anyhow::Result<()> {
    an_old_primary_stalled_for(WITHIN_THE_LEASE).await
}

/// West's sidecar stalls for `stall` under a write load while east is force-promoted and writes.
/// West must end fenced by epoch 2 and stay so across a restart, must have acknowledged nothing
/// sent after east's first write, must still hold all it acknowledged, and, following east, must
/// keep aside exactly what it acknowledged and never shipped.
async fn an_old_primary_stalled_for(stall: Duration) -> anyhow::Result<()> {
    let (mut a, b) = primary_and_secondary(&[]).await?;
    a.put(SHIPPED_THEN_CHANGED, b"from west").await?;
    let load = WriteLoad::start(&a);
    wait_for("the load's first writes", REPLICATION_TIMEOUT, || async {
        (load.acknowledged() >= 50).then_some(())
    })
    .await?;
    b.wait_caught_up(&a).await?;

    let (stalled_at, first_on_b) = force_promote_during_stall(&a, &b, stall).await?;
    wait_fenced(&a).await?;
    let acked = load.stop().await?;
    // Acknowledged after the new primary's first write: only a write already in etcd's hands
    // when the old primary froze may be, its answer read once it runs again (it was committed
    // before the promotion; unshipped, it is kept aside below). Nothing sent later.
    let late: Vec<&Acked> = acked
        .iter()
        .filter(|w| w.acked > first_on_b && w.sent >= stalled_at)
        .collect();
    if let Some(w) = late.first() {
        panic!(
            "the old primary acknowledged {} writes after the new primary acknowledged its first, \
             though they were sent after it froze: e.g. {} sent {:?} after the freeze, \
             acknowledged {:?} after the new primary's first write, at epoch {}",
            late.len(),
            w.key,
            w.sent - stalled_at,
            w.acked - first_on_b,
            w.epoch
        );
    }
    assert!(
        acked.iter().all(|w| w.epoch == 1),
        "west wrote at epoch 1 only"
    );

    // A restart does not make it writable at epoch 1 again, not even before it has settled.
    a.restart().await?;
    assert!(
        a.put("logical/after-restart", b"x").await.is_err(),
        "the restarted old primary acknowledged a write"
    );
    wait_fenced(&a).await?;
    for w in &acked {
        assert_eq!(
            a.get(&w.key).await?.as_ref(),
            Some(&w.value),
            "{} was acknowledged, then lost",
            w.key
        );
    }

    // What the new primary lacks of the load was never shipped (it changed no load key).
    let mut never_shipped = Vec::new();
    for w in &acked {
        if b.get(&w.key).await?.as_ref() != Some(&w.value) {
            never_shipped.push(w);
        }
    }
    follow_new_primary(&a, &b).await?;
    assert_eq!(
        a.get(SHIPPED_THEN_CHANGED).await?.as_deref(),
        Some(&b"acknowledged"[..])
    );
    for w in never_shipped {
        assert_eq!(
            a.get(&format!("{KEPT_ASIDE}{}", w.key)).await?.as_ref(),
            Some(&w.value),
            "{} was acknowledged and never shipped, yet not kept aside",
            w.key
        );
    }
    for path in keys_under(&a, UNSHIPPED).await? {
        let key = path
            .strip_prefix(KEPT_ASIDE)
            .with_context(|| format!("kept aside under another epoch: {path}"))?;
        assert!(
            b.get(key).await?.is_none(),
            "{key} had reached the new primary, yet was kept aside"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_lease_ran_out_in_a_stall_takes_its_free_fence_again() -> anyhow::Result<()>
{
    let a = lone_primary().await?;
    a.put("logical/before", b"1").await?;

    a.sidecar.signal("STOP")?;
    tokio::time::sleep(PAST_THE_LEASE).await;
    let fence = fence_in_etcd(&a).await;
    a.sidecar.signal("CONT")?;
    assert!(
        fence?.is_none(),
        "the fence lease outlived a {PAST_THE_LEASE:?} stall"
    );

    // Nobody else took the fence: writes resume without a restart.
    first_acknowledged_put(&a, "logical/after", RESUME_WITHIN).await?;
    let fence = fence_in_etcd(&a).await?.context("no fence key")?;
    assert_eq!(
        ferry_sidecar::fence::FenceHolder::decode(fence.value()).node_id,
        a.sidecar.options().node_id
    );
    assert_still_the_primary(&a).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_lease_ran_out_while_etcd_was_down_takes_its_free_fence_again()
-> anyhow::Result<()> {
    let mut a = lone_primary().await?;
    a.put("logical/before", b"1").await?;

    a.etcd.kill();
    tokio::time::sleep(Duration::from_secs(12)).await;
    a.etcd.restart()?;

    first_acknowledged_put(&a, "logical/after", RESUME_WITHIN).await?;
    assert_still_the_primary(&a).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_with_a_streaming_secondary_shuts_down_within_two_seconds() -> anyhow::Result<()>
{
    let (mut a, b) = primary_and_secondary(&[]).await?;
    for n in 0..10 {
        a.put(&format!("logical/k/{n}"), b"x").await?;
    }
    b.wait_caught_up(&a).await?;

    let asked = Instant::now();
    a.sidecar.signal("TERM")?;
    // Waits well past the bound, to report how long shutting down did take.
    let exit = a.sidecar.wait_exit(Duration::from_secs(60)).await?;
    let took = asked.elapsed();
    let tail = a.sidecar.log_tail(20);
    assert!(
        took < Duration::from_secs(2),
        "shutting down took {took:?}\n{tail}"
    );
    eprintln!("shutting down with a streaming secondary took {took:?}");
    assert!(exit.success(), "{exit}\n{tail}");
    assert!(
        !a.sidecar
            .log()
            .contains("failed to release the write fence"),
        "{tail}"
    );
    // Every task stopped by itself: the WAL stream ended when shutdown began, rather than the
    // cluster port waiting for it until the supervisor aborted it.
    assert!(!a.sidecar.log().contains("aborting them"), "{tail}");
    assert!(
        fence_in_etcd(&a).await?.is_none(),
        "the fence was not released"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primary_keeps_aside_nothing_it_had_shipped() -> anyhow::Result<()> {
    let (a, b) = primary_and_secondary(&[]).await?;
    for n in 0..20 {
        a.put(&format!("logical/k/{n}"), format!("a{n}").as_bytes())
            .await?;
    }
    b.wait_caught_up(&a).await?;

    // A is reachable, active and has shipped everything: the new epoch fences it.
    b.call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;
    for n in 0..10 {
        b.put(&format!("logical/k/{n}"), format!("b{n}").as_bytes())
            .await?;
    }
    wait_fenced(&a).await?;

    let status = follow_new_primary(&a, &b).await?;
    assert_eq!(
        status["last_reconcile"]["keys_kept_aside"].as_u64(),
        Some(0),
        "{status}"
    );
    let kept = keys_under(&a, UNSHIPPED).await?;
    assert!(kept.is_empty(), "kept aside though shipped: {kept:?}");
    for n in 0..20 {
        let on_b = if n < 10 {
            format!("b{n}")
        } else {
            format!("a{n}")
        };
        assert_eq!(
            a.get(&format!("logical/k/{n}")).await?,
            Some(on_b.into_bytes()),
            "logical/k/{n}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primary_keeps_aside_exactly_what_it_never_shipped() -> anyhow::Result<()> {
    let (mut a, mut b) = primary_and_secondary(&[]).await?;
    for n in 0..20 {
        a.put(&format!("logical/k/{n}"), format!("a{n}").as_bytes())
            .await?;
    }
    b.wait_caught_up(&a).await?;

    // Acknowledged by A and never shipped: B is down, then A is lost.
    b.sidecar.kill();
    let mut unshipped = BTreeMap::new();
    for n in 0..3 {
        unshipped.insert(format!("logical/new/{n}"), format!("new{n}").into_bytes());
    }
    unshipped.insert("logical/k/0".to_owned(), b"changed on a".to_vec());
    for (key, value) in &unshipped {
        a.put(key, value).await?;
    }
    a.sidecar.kill();
    b.restart().await?;
    b.call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;
    for n in 10..15 {
        b.put(&format!("logical/k/{n}"), format!("b{n}").as_bytes())
            .await?;
    }

    a.restart().await?;
    wait_fenced(&a).await?;
    let status = follow_new_primary(&a, &b).await?;
    assert_eq!(
        status["last_reconcile"]["keys_kept_aside"].as_u64(),
        Some(4),
        "{status}"
    );
    let expected: Vec<String> = unshipped
        .keys()
        .map(|key| format!("{KEPT_ASIDE}{key}"))
        .collect();
    assert_eq!(keys_under(&a, UNSHIPPED).await?, expected);
    for (key, value) in &unshipped {
        assert_eq!(
            a.get(&format!("{KEPT_ASIDE}{key}")).await?.as_ref(),
            Some(value),
            "{key}"
        );
    }
    // A now holds what B holds.
    assert_eq!(a.get("logical/k/0").await?.as_deref(), Some(&b"a0"[..]));
    for n in 0..3 {
        assert_eq!(a.get(&format!("logical/new/{n}")).await?, None);
    }
    for n in 10..15 {
        assert_eq!(
            a.get(&format!("logical/k/{n}")).await?,
            Some(format!("b{n}").into_bytes())
        );
    }
    Ok(())
}

/// A write the old primary acknowledged under load.
struct Acked {
    key: String,
    value: Vec<u8>,
    sent: Instant,
    acked: Instant,
    /// The epoch the acknowledgement named.
    epoch: u64,
}

/// Writers putting distinct keys to a region until stopped.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    writers: Vec<JoinHandle<Vec<Acked>>>,
}

impl WriteLoad {
    /// Four writers, so that the primary acknowledges a write every few milliseconds.
    fn start(region: &Region) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let writers = (0..4)
            .map(|w| {
                let mut storage = region.sidecar.storage();
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let key = format!("logical/load/{w}/{n}");
                        let value = format!("west-{w}-{n}").into_bytes();
                        let sent = Instant::now();
                        let put = storage.put(PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                        });
                        // A stalled sidecar answers once it runs again, within any stall here.
                        match tokio::time::timeout(Duration::from_secs(30), put).await {
                            Ok(Ok(reply)) => {
                                let epoch = reply.into_inner().epoch;
                                acked.push(Acked {
                                    key,
                                    value,
                                    sent,
                                    acked: Instant::now(),
                                    epoch,
                                });
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                            // Refused: try again, without spinning on a busy machine.
                            _ => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    acked
                })
            })
            .collect();
        Self {
            stop,
            acknowledged,
            writers,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    async fn stop(self) -> anyhow::Result<Vec<Acked>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for writer in self.writers {
            acked.extend(writer.await?);
        }
        Ok(acked)
    }
}

/// Stops `old`'s sidecar for `stall`, and meanwhile force-promotes `new`. Returns once `old`
/// runs again and `new` has acknowledged its first write, to [`SHIPPED_THEN_CHANGED`]: when
/// `old` was seen stopped, and when `new` acknowledged.
async fn force_promote_during_stall(
    old: &Region,
    new: &Region,
    stall: Duration,
) -> anyhow::Result<(Instant, Instant)> {
    old.sidecar.signal("STOP")?;
    let pid = old
        .sidecar
        .pid()
        .context("the old primary's sidecar is not running")?;
    wait_for("the sidecar to stop", Duration::from_secs(5), || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state follows the command name's closing parenthesis.
        (stat.rsplit_once(") ")?.1.starts_with('T')).then_some(())
    })
    .await?;
    let stopped = Instant::now();
    let resume = async {
        tokio::time::sleep(stall).await;
        old.sidecar.signal("CONT")
    };
    let promote = async {
        let promoted = async {
            let reply = new
                .call("secondary/promote", json!({ "force": true }))
                .await?
                .ok()?;
            anyhow::ensure!(
                reply.body["data"]["epoch"].as_u64() == Some(2),
                "{}",
                reply.body
            );
            Ok(())
        };
        // Tried from the start, so that it is acknowledged as soon as the new primary can.
        let first = first_acknowledged_put(new, SHIPPED_THEN_CHANGED, REPLICATION_TIMEOUT);
        let ((), first) = tokio::try_join!(promoted, first)?;
        anyhow::Ok(first)
    };
    let (resumed, first) = tokio::join!(resume, promote);
    resumed?;
    Ok((stopped, first?))
}

/// Puts `key` to `region` until it is acknowledged, failing after `within`; returns when it was.
/// Tries every few milliseconds, so that the instant is close to when `region` began to accept.
async fn first_acknowledged_put(
    region: &Region,
    key: &str,
    within: Duration,
) -> anyhow::Result<Instant> {
    let mut storage = region.sidecar.storage();
    let deadline = Instant::now() + within;
    loop {
        let put = storage.put(PutRequest {
            key: key.into(),
            value: b"acknowledged".to_vec(),
        });
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), put).await {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} acknowledged no write within {within:?}\n{}",
            region.name,
            region.sidecar.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `region` is fenced by epoch 2, then checks that it is a secondary that refuses
/// writes as read-only.
async fn wait_fenced(region: &Region) -> anyhow::Result<()> {
    let status = region
        .wait_status("the old primary to be fenced by epoch 2", |s| {
            s["fenced_by_epoch"].as_u64() == Some(2)
        })
        .await?;
    assert_eq!(status["mode"], "secondary", "{status}");
    let err = region
        .put("logical/on-the-old-primary", b"x")
        .await
        .expect_err("the fenced primary acknowledged a write");
    assert!(format!("{err:#}").contains("read-only"), "{err:#}");
    Ok(())
}

/// Points the old primary at the new one and waits until it has caught up; returns its status.
async fn follow_new_primary(old: &Region, new: &Region) -> anyhow::Result<Value> {
    let addrs = json!({ "update_primary_addrs": [new.cluster_addr()] });
    old.call("secondary/update-primary", addrs).await?.ok()?;
    old.wait_caught_up(new).await
}

/// A primary without secondaries.
async fn lone_primary() -> anyhow::Result<Region> {
    let region = Region::start("west", &[]).await?;
    region.enable_primary().await?;
    Ok(region)
}

/// Checks that `region` is still the primary at epoch 1 and kept what it had.
async fn assert_still_the_primary(region: &Region) -> anyhow::Result<()> {
    let status = region.status().await?;
    assert_eq!(status["mode"], "primary", "{status}");
    assert_eq!(status["epoch"].as_u64(), Some(1), "{status}");
    assert_eq!(
        region.get("logical/before").await?.as_deref(),
        Some(&b"1"[..])
    );
    Ok(())
}

/// The fence key of `region`'s cluster as its etcd holds it.
async fn fence_in_etcd(region: &Region) -> anyhow::Result<Option<KeyValue>> {
    let key = format!("/ferry/{}/meta/fence", region.name);
    let reply = region
        .etcd
        .client()
        .await?
        .kv_client()
        .get(key, None)
        .await?;
    Ok(reply.kvs().first().cloned())
}

/// Every key under `prefix` (ending with `/`) on `region`, listed folder by folder, sorted.
async fn keys_under(region: &Region, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut storage = region.sidecar.storage();
    let mut folders = vec![prefix.to_owned()];
    let mut keys = Vec::new();
    while let Some(folder) = folders.pop() {
        let listed = storage.list(ListRequest {
            prefix: folder.clone(),
        });
        for name in listed.await?.into_inner().keys {
            let path = format!("{folder}{name}");
            if name.ends_with('/') {
                folders.push(path);
            } else {
                keys.push(path);
            }
        }
    }
    keys.sort();
    Ok(keys)
}
