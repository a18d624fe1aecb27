//! The `replication` benchmark: a primary region and a secondary region, each with its own etcd
//! and sidecar on loopback.
//!
//! * [`lag`]: commit acknowledged on the primary → put event on the secondary's etcd, p50 and
//!   p99 at 500 and 2,000 writes a second, against `etcdctl make-mirror` between two etcd
//!   servers driven by the same open-loop writer.
//! * [`sweep`]: the highest sustainable rate: the primary's maximum write rate, then an
//!   open-loop sweep from 2,000 writes a second upward, Ferry and make-mirror, until lag p99
//!   passes 50 ms or the achieved rate falls short; and Ferry at 80% of the primary's maximum.
//! * [`reconcile`]: the merkle reconciliation of a secondary that fell behind WAL retention, at
//!   the largest `--keys` count with 10, 1,000 and 100,000 differing keys, against the
//!   secondary's initial full copy of the keyspace.
//! * catch-up (here): a secondary that was down while the primary wrote at full speed streams
//!   the backlog; its apply rate against the primary's write rate.

mod case;
mod lag;
mod open_loop;
mod reconcile;
mod sweep;

pub use lag::lag_bench;
pub use sweep::sweep_bench;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferry_proto::storage::PutRequest;
use ferry_tests::etcd::{EtcdOptions, EtcdServer};
use ferry_tests::region::Region;
use serde_json::Value;

use crate::args::Args;
use crate::common::{GIB, value_for};
use crate::harness::save_log;
use crate::procfs::alive;
use crate::recovery::join_all;
use crate::report::{Report, Row, Target, round};

/// How often a status is polled while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How often a long wait reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Concurrent writers that put the primary at full speed (the catch-up case's outage, the
/// sweep's maximum).
const FULL_SPEED_WRITERS: usize = 64;

pub async fn replication_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    lag::lag_bench(args, report)
        .await
        .context("replication lag")?;
    sweep::sweep_bench(args, report)
        .await
        .context("replication sweep")?;
    catchup_bench(args, report)
        .await
        .context("replication catch-up")?;
    reconcile::reconcile_bench(args, report)
        .await
        .context("merkle reconciliation")?;
    Ok(())
}

/// Starts a region on its own etcd with `extra` sidecar flags: an 8 GiB quota, where a million
/// keys and all their WAL and merkle history fit, and compaction of history older than a minute,
/// as an operator would run it.
async fn start_region(name: &str, extra: &[&str]) -> anyhow::Result<Region> {
    let etcd = EtcdServer::start_with(EtcdOptions {
        quota_bytes: 8 * GIB,
        auto_compaction: "1m".into(),
        ..EtcdOptions::default()
    })?;
    Region::start_on(name, etcd, extra)
        .await
        .with_context(|| format!("failed to start region {name}"))
}

/// A primary `west` and a secondary `east`, connected and caught up.
async fn start_pair(extra: &[&str]) -> anyhow::Result<(Region, Region)> {
    let primary = start_region("west", extra).await?;
    let secondary = start_region("east", extra).await?;
    primary.enable_primary().await?;
    secondary.follow(&primary, "east").await?;
    wait_caught_up(&secondary, &primary, Duration::from_secs(60)).await?;
    Ok((primary, secondary))
}

/// Polls `region`'s replication status every [`POLL`] until `done` returns `Some`, for at most
/// `timeout`, reporting progress on stderr every [`PROGRESS_EVERY`]. Fails at once if the
/// region's sidecar dies.
async fn poll_status<T>(
    region: &Region,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Value) -> Option<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut last_progress = started;
    loop {
        let last = match region.status().await {
            Ok(status) => {
                if let Some(v) = done(&status) {
                    return Ok(v);
                }
                status
            }
            Err(e) => Value::String(format!("status failed: {e:#}")),
        };
        if region.sidecar.pid().is_none_or(|pid| !alive(pid)) {
            anyhow::bail!(
                "{}'s sidecar died while waiting for {what}; last status {last}\n{}",
                region.name,
                region.sidecar.log_tail(30)
            );
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what} on {}; last status {last}\n{}",
                region.name,
                region.sidecar.log_tail(30)
            );
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "  {:.0}s waiting for {what}: state {}, last_remote_wal {}, sync {}/{} keys",
                started.elapsed().as_secs_f64(),
                last["state"],
                last["last_remote_wal"],
                last["sync_progress"],
                last["sync_total_keys"]
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `secondary` streams at `primary`'s last WAL index with `primary`'s merkle root
/// (the primary must be idle); returns the secondary's status.
async fn wait_caught_up(
    secondary: &Region,
    primary: &Region,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let status = primary.status().await?;
    let target = status["last_wal"].as_u64().context("no last_wal")?;
    let root = status["merkle_root"].clone();
    poll_status(
        secondary,
        &format!("streaming at last_remote_wal {target} with the primary's root"),
        timeout,
        |s| {
            (s["state"] == "stream-wals"
                && s["last_remote_wal"].as_u64().unwrap_or(0) >= target
                && s["merkle_root"] == root)
                .then(|| s.clone())
        },
    )
    .await
}

/// Saves both regions' sidecar logs and adds where to `e`.
fn with_logs(e: anyhow::Error, regions: &[&Region], run: u64, bench: &str) -> anyhow::Error {
    let saved: Vec<String> = regions
        .iter()
        .map(|r| {
            save_log(
                &r.sidecar,
                &format!("ferry-sidecar-{run}-{bench}-{}.log", r.name),
            )
        })
        .collect();
    e.context(saved.join("\n"))
}

/// The secondary's apply rate after an outage against the primary's write rate during it.
pub async fn catchup_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("replication: catch-up: starting a streaming pair");
    // Retention large enough that the backlog streams: no merkle pass.
    let retention = [
        "--wal-retain-entries=10000000",
        "--wal-retain-bytes=10000000000",
    ];
    let (primary, mut secondary) = start_pair(&retention).await?;
    let outcome = catchup_at(args, report, &primary, &mut secondary).await;
    outcome.map_err(|e| with_logs(e, &[&primary, &secondary], report.run, "catchup"))
}

async fn catchup_at(
    args: &Args,
    report: &mut Report,
    primary: &Region,
    secondary: &mut Region,
) -> anyhow::Result<()> {
    let applied_before = secondary.status().await?["last_remote_wal"]
        .as_u64()
        .context("no last_remote_wal")?;
    secondary.sidecar.kill();
    eprintln!(
        "replication: catch-up: secondary killed at WAL {applied_before}; {FULL_SPEED_WRITERS} \
         writers on the primary for {:.1}s",
        args.seconds
    );
    let (puts, write_seconds) = full_speed_puts(
        primary,
        "logical/catchup/",
        Duration::from_secs_f64(args.seconds),
    )
    .await
    .context("writing to the primary")?;
    let primary_status = primary.status().await?;
    let target = primary_status["last_wal"].as_u64().context("no last_wal")?;
    let primary_rate = puts as f64 / write_seconds;
    let entries = target - applied_before;
    eprintln!(
        "  {puts} puts in {write_seconds:.2}s ({primary_rate:.0}/s) as {entries} WAL entries \
         ({:.1} puts per entry)",
        puts as f64 / entries.max(1) as f64
    );

    let launched = Instant::now();
    secondary.restart().await?;
    let ready = Instant::now();
    let at_ready = secondary.status().await?;
    let applied_at_ready = at_ready["last_remote_wal"]
        .as_u64()
        .unwrap_or(0)
        .max(applied_before);
    let caught_up = poll_status(
        secondary,
        &format!("last_remote_wal {target} while streaming"),
        Duration::from_secs(300),
        |s| {
            (s["state"] == "stream-wals" && s["last_remote_wal"].as_u64().unwrap_or(0) >= target)
                .then(Instant::now)
        },
    )
    .await?;
    let from_ready = (caught_up - ready).as_secs_f64();
    let from_launch = (caught_up - launched).as_secs_f64();
    // What the secondary applied before it was ready to answer is not counted: the puts in the
    // entries it still had to apply, over the time it took.
    let remaining = (target - applied_at_ready) as f64 / entries.max(1) as f64;
    let apply_rate = puts as f64 * remaining / from_ready;
    eprintln!(
        "  secondary ready {:.2}s after launch with {} of {entries} entries applied; caught up \
         {from_ready:.2}s later ({apply_rate:.0} keys/s; {:.0} keys/s counting from launch)",
        (ready - launched).as_secs_f64(),
        applied_at_ready - applied_before,
        puts as f64 / from_launch
    );

    let status = wait_caught_up(secondary, primary, Duration::from_secs(60))
        .await
        .context("the merkle roots do not match after the catch-up")?;
    ensure!(
        status["merkle_root"] == primary.status().await?["merkle_root"],
        "merkle roots differ after the catch-up: secondary {}, primary {}",
        status["merkle_root"],
        primary.status().await?["merkle_root"]
    );
    let syncs = status["merkle_syncs"].as_u64().unwrap_or(u64::MAX);
    ensure!(
        syncs == 0,
        "the secondary ran {syncs} merkle reconciliation(s) during the catch-up instead of \
         streaming the WAL (last_reconcile {})",
        status["last_reconcile"]
    );

    report.add(
        Row::new(
            "replication",
            format!("primary_writes@{FULL_SPEED_WRITERS}"),
            "put_throughput",
            primary_rate,
            "ops/s",
        )
        .extra("puts", puts)
        .extra("seconds", round(write_seconds))
        .extra("wal_entries", entries),
    )?;
    report.add(
        Row::new(
            "replication",
            "catchup_apply",
            "apply_throughput",
            apply_rate,
            "keys/s",
        )
        .baseline(primary_rate)
        .target(Target::RatioAtLeast(3.0))
        .extra("keys", puts)
        .extra("wal_entries", entries)
        .extra(
            "entries_applied_before_ready",
            applied_at_ready - applied_before,
        )
        .extra("seconds_from_ready", round(from_ready))
        .extra("seconds_from_launch", round(from_launch))
        .extra(
            "keys_per_second_from_launch",
            round(puts as f64 / from_launch),
        )
        .extra("merkle_syncs", syncs),
    )?;
    Ok(())
}

/// [`FULL_SPEED_WRITERS`] tasks put distinct keys under `prefix` on `primary` for `duration`;
/// returns the puts acknowledged and the seconds from start to the last acknowledgement.
async fn full_speed_puts(
    primary: &Region,
    prefix: &str,
    duration: Duration,
) -> anyhow::Result<(u64, f64)> {
    let puts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = Vec::with_capacity(FULL_SPEED_WRITERS);
    for w in 0..FULL_SPEED_WRITERS {
        let mut storage = primary.sidecar.storage();
        let puts = puts.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let value = value_for(w as u64 + 0xCA7C);
            let mut i = 0u64;
            while Instant::now() < until {
                storage
                    .put(PutRequest {
                        key: format!("{prefix}w{w}/k{i}"),
                        value: value.clone(),
                    })
                    .await
                    .with_context(|| format!("put {w}/{i} failed"))?;
                i += 1;
                puts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(i)
        }));
    }
    tokio::time::timeout(duration + Duration::from_secs(60), join_all(tasks))
        .await
        .context("the writers did not finish within a minute of their deadline")??;
    Ok((
        puts.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}
