//! Merkle reconciliation at the largest `--keys` count: the secondary's initial full copy of the
//! keyspace, then for 10, 1,000 and 100,000 differing keys, a secondary that was down while the
//! primary overwrote them and collected the WAL it would have streamed.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferry_tests::region::Region;
use ferry_tests::wait_for;
use serde_json::Value;

use super::{start_region, wait_caught_up, with_logs};
use crate::args::Args;
use crate::common::{count_label, value_for};
use crate::harness::wait_flushed;
use crate::recovery::{fill_key, write_batches};
use crate::report::{Report, Row, Target, round};

/// WAL entries a sidecar keeps: a few overwrites push the secondary's position out.
const RETAIN_ENTRIES: u64 = 50;
const FLAGS: [&str; 2] = ["--wal-retain-entries=50", "--wal-gc-interval-ms=100"];
const DIFFS: [u64; 3] = [10, 1_000, 100_000];
/// The differing count the locate-bytes and time targets are set at.
const TARGET_DIFF: u64 = 1_000;
/// A full copy or reconciliation of a million keys fits in this, with room for a slow machine
/// (one took seven minutes on two cores while merkle-sync still restarted its etcd scan for
/// every 256 keys it sent).
const SYNC_TIMEOUT: Duration = Duration::from_secs(1800);

/// `last_reconcile` of a secondary's status.
#[derive(Debug)]
struct Reconciled {
    round_trips: u64,
    locate_bytes: u64,
    conflicting_pages: u64,
    conflicting_subpages: u64,
    keys_received: u64,
    keys_written: u64,
    keys_deleted: u64,
    wal_index: u64,
    seconds: f64,
}

impl Reconciled {
    fn of(status: &Value) -> anyhow::Result<Self> {
        let r = &status["last_reconcile"];
        ensure!(
            r.is_object(),
            "the secondary's status has no last_reconcile: {status}"
        );
        let n = |f: &str| {
            r[f].as_u64()
                .with_context(|| format!("last_reconcile.{f} is missing: {r}"))
        };
        Ok(Self {
            round_trips: n("round_trips")?,
            locate_bytes: n("locate_bytes")?,
            conflicting_pages: n("conflicting_pages")?,
            conflicting_subpages: n("conflicting_subpages")?,
            keys_received: n("keys_received")?,
            keys_written: n("keys_written")?,
            keys_deleted: n("keys_deleted")?,
            wal_index: n("wal_index")?,
            seconds: r["seconds"]
                .as_f64()
                .with_context(|| format!("last_reconcile.seconds is missing: {r}"))?,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} round trips, {} bytes to locate {} pages / {} subpages, {} keys received, {} \
             written, {} deleted, at WAL {}, {:.3}s",
            self.round_trips,
            self.locate_bytes,
            self.conflicting_pages,
            self.conflicting_subpages,
            self.keys_received,
            self.keys_written,
            self.keys_deleted,
            self.wal_index,
            self.seconds
        )
    }
}

/// The differing counts to run at `keys`: under `--quick`, at most a tenth of the keys.
fn diffs_for(keys: u64, quick: bool) -> Vec<u64> {
    let mut diffs: Vec<u64> = DIFFS
        .iter()
        .map(|&d| if quick { d.min(keys / 10) } else { d.min(keys) })
        .filter(|&d| d > 0)
        .collect();
    diffs.dedup();
    diffs
}

pub async fn reconcile_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let keys = *args.keys.iter().max().expect("at least one key count");
    let diffs = diffs_for(keys, args.quick);
    eprintln!(
        "replication: reconcile: {} keys, differing {diffs:?}; starting the primary",
        count_label(keys)
    );
    let primary = start_region("west", &FLAGS).await?;
    let mut secondary = None;
    let outcome = reconcile_at(report, &primary, &mut secondary, keys, &diffs).await;
    outcome.map_err(|e| {
        let mut regions = vec![&primary];
        regions.extend(secondary.as_ref());
        with_logs(e, &regions, report.run, "reconcile")
    })
}

async fn reconcile_at(
    report: &mut Report,
    primary: &Region,
    secondary_slot: &mut Option<Region>,
    keys: u64,
    diffs: &[u64],
) -> anyhow::Result<()> {
    let label = count_label(keys);
    primary.enable_primary().await?;
    let filled = write_batches(&primary.sidecar, keys, "fill", |i| {
        (fill_key(i), value_for(i))
    })
    .await?;
    let fill_seconds = filled.seconds;
    let mut retries = filled.retries;
    let mut first_error = filled.first_error;
    let (flushed, flush_seconds) = wait_flushed(&primary.sidecar, true).await?;
    eprintln!(
        "replication: reconcile: filled {label} keys in {fill_seconds:.1}s ({:.0} keys/s), \
         flushed {flush_seconds:.1}s later; the index holds {} keys",
        keys as f64 / fill_seconds,
        flushed.merkle_keys
    );
    ensure!(
        flushed.merkle_keys >= keys,
        "the primary's index holds {} keys after filling {keys}",
        flushed.merkle_keys
    );

    // The full copy: a new, empty secondary.
    eprintln!("replication: reconcile: starting the secondary for the full copy");
    let secondary = secondary_slot.insert(start_region("east", &FLAGS).await?);
    let token = primary.token("east").await?;
    let started = Instant::now();
    secondary.enable_secondary(&token).await?;
    let mut status = wait_caught_up(secondary, primary, SYNC_TIMEOUT).await?;
    let full_wall = started.elapsed().as_secs_f64();
    let full = Reconciled::of(&status)?;
    eprintln!(
        "  full copy: {:.1}s from enable to caught up; {}",
        full_wall,
        full.describe()
    );
    report.note(format!(
        "full copy@{label}: {:.0} keys/s; the primary itself took {fill_seconds:.1}s ({:.0} \
         keys/s) to write the same keys in Batch requests",
        full.keys_written as f64 / full.seconds,
        keys as f64 / fill_seconds
    ));
    if full.keys_written < keys {
        report.note(format!(
            "full copy@{label}: wrote {} keys of {keys}",
            full.keys_written
        ));
    }
    report.add(
        Row::new(
            "replication",
            format!("full_copy@{label}"),
            "reconcile_seconds",
            full.seconds,
            "s",
        )
        .extra("seconds_enable_to_caught_up", round(full_wall))
        .extra("primary_fill_seconds", round(fill_seconds))
        .extra("keys", keys)
        .extra("keys_written", full.keys_written)
        .extra("keys_received", full.keys_received)
        .extra(
            "keys_per_second",
            round(full.keys_written as f64 / full.seconds),
        )
        .extra("round_trips", full.round_trips)
        .extra("locate_bytes", full.locate_bytes),
    )?;

    let mut tag = 0u64;
    for &d in diffs {
        let dl = count_label(d);
        let applied = status["last_remote_wal"]
            .as_u64()
            .context("no last_remote_wal")?;
        secondary.sidecar.kill();
        eprintln!(
            "replication: reconcile: d={dl}: secondary killed at WAL {applied}; overwriting {d} \
             keys on the primary"
        );
        // Overwrite the same d keys until the WAL moved past what the primary retains.
        let stride = keys / d;
        let mut rounds = 0;
        let last_wal = loop {
            tag += 1;
            rounds += 1;
            let salt = tag << 40;
            let written = write_batches(&primary.sidecar, d, "overwrite", move |j| {
                let i = j * stride;
                (fill_key(i), value_for(i ^ salt))
            })
            .await?;
            retries += written.retries;
            first_error = first_error.or(written.first_error);
            let last = primary.sidecar.status().await?.last_wal;
            if last > applied + RETAIN_ENTRIES + 1 {
                break last;
            }
            ensure!(
                rounds < 1000,
                "1000 rounds of overwrites moved the WAL only to {last}"
            );
        };
        let admin = primary.sidecar.admin();
        let first = wait_for(
            "the WAL the secondary needs to be collected",
            Duration::from_secs(120),
            || {
                let mut admin = admin.clone();
                async move {
                    let s = admin
                        .status(ferry_proto::storage::StatusRequest {})
                        .await
                        .ok()?
                        .into_inner();
                    (s.first_wal > applied + 1).then_some(s.first_wal)
                }
            },
        )
        .await?;
        eprintln!(
            "  {rounds} round(s) of overwrites, primary WAL {first}..={last_wal}; restarting the \
             secondary"
        );

        let launched = Instant::now();
        secondary.restart().await?;
        let ready = launched.elapsed().as_secs_f64();
        status = wait_caught_up(secondary, primary, SYNC_TIMEOUT).await?;
        let wall = launched.elapsed().as_secs_f64();
        let syncs = status["merkle_syncs"].as_u64().unwrap_or(0);
        ensure!(
            syncs >= 1,
            "d={dl}: the secondary caught up without a merkle reconciliation (merkle_syncs \
             {syncs}), so the measurement is not of one: {status}"
        );
        if syncs > 1 {
            report.note(format!(
                "reconcile@{label} d={dl}: {syncs} merkle reconciliations after the restart"
            ));
        }
        let r = Reconciled::of(&status)?;
        eprintln!(
            "  d={dl}: ready {ready:.2}s after launch, caught up after {wall:.2}s; {}",
            r.describe()
        );
        if r.keys_written != d {
            report.note(format!(
                "reconcile@{label} d={dl}: wrote {} keys, expected {d}",
                r.keys_written
            ));
        }
        if r.round_trips != 2 {
            report.note(format!(
                "reconcile@{label} d={dl}: {} round trips, expected exactly 2",
                r.round_trips
            ));
        }
        let case = |what: &str| format!("{what}@{label} d={dl}");
        report.add(
            Row::new(
                "replication",
                case("round_trips"),
                "round_trips",
                r.round_trips as f64,
                "round trips",
            )
            .target(Target::AtMost(2.0))
            .extra("differing", d)
            .extra("conflicting_pages", r.conflicting_pages)
            .extra("conflicting_subpages", r.conflicting_subpages),
        )?;
        let mut locate = Row::new(
            "replication",
            case("locate"),
            "locate_bytes",
            r.locate_bytes as f64 / 1024.0,
            "KiB",
        )
        .extra("bytes", r.locate_bytes)
        .extra("differing", d);
        if d == TARGET_DIFF {
            locate = locate.target(Target::AtMost(1024.0));
        }
        report.add(locate)?;
        let mut time = Row::new(
            "replication",
            case("reconcile"),
            "reconcile_seconds",
            r.seconds,
            "s",
        )
        .baseline(full.seconds)
        .extra("baseline_of", "full copy")
        .extra("differing", d)
        .extra("seconds_launch_to_caught_up", round(wall))
        .extra("seconds_launch_to_ready", round(ready))
        .extra("keys_received", r.keys_received);
        // At a million keys: with fewer, fixed costs dominate both sides.
        if d == TARGET_DIFF && keys >= 1_000_000 {
            time = time.target(Target::RatioAtMost(0.1));
        }
        report.add(time)?;
        report.add(
            Row::new(
                "replication",
                case("keys_written"),
                "keys_written",
                r.keys_written as f64,
                "keys",
            )
            .extra("expected", d)
            .extra("keys_received", r.keys_received)
            .extra("keys_deleted", r.keys_deleted),
        )?;
    }
    if retries > 0 {
        report.note(format!(
            "reconcile@{label}: {retries} Batch requests to the primary failed and were sent \
             again (fill and overwrites); first error: {}",
            first_error.unwrap_or_default()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_runs_differ_in_at_most_a_tenth_of_the_keys() {
        assert_eq!(diffs_for(1_000_000, false), vec![10, 1_000, 100_000]);
        assert_eq!(diffs_for(20_000, true), vec![10, 1_000, 2_000]);
        assert_eq!(diffs_for(5_000, true), vec![10, 500]);
        assert_eq!(diffs_for(50, true), vec![5]);
    }
}
