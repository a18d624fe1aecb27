//! One open-loop case, shared by [`lag`](super::lag) and [`sweep`](super::sweep): a system under
//! test (Ferry on a streaming pair, or `etcdctl make-mirror` between two etcd servers of its
//! own) driven at one rate by [`open_loop::drive`](super::open_loop::drive), every key watched
//! for at the destination, and the case's rows.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use ferry_tests::etcd::EtcdServer;
use ferry_tests::process::Process;
use ferry_tests::region::Region;
use ferry_tests::wait_for;
use serde_json::Value;

use super::open_loop::{Lag, Samples, Schedule, Source, Tracker, drive, summarize, watch_arrivals};
use crate::report::{Report, Row, Target, round};

/// How long the last keys may take to arrive after the driver stops, in [`run_case`].
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Where make-mirror copies from and to (the same prefix on both servers).
const MIRROR_PREFIX: &str = "/mirror/";

/// One system under test: where to write, and where the writes show up.
pub struct System {
    pub name: &'static str,
    /// The benchmark it serves, for progress lines (`lag`, `sweep`).
    bench: &'static str,
    source: Source,
    /// The prefix keys are written under at the source (the case and index are appended).
    write_prefix: String,
    /// The same keys' prefix at the destination etcd.
    watch_prefix: String,
    destination: etcd_client::Client,
}

/// Ferry on `primary` → `secondary`, and make-mirror between two etcd servers started here,
/// both writing under `bench`'s own prefix.
pub struct Systems {
    pub ferry: System,
    pub mirror: System,
    mirror_child: Option<Mirror>,
    _mirror_servers: [EtcdServer; 2],
}

impl Systems {
    pub async fn start(
        primary: &Region,
        secondary: &Region,
        bench: &'static str,
    ) -> anyhow::Result<Self> {
        let ferry = System {
            name: "ferry",
            bench,
            source: Source::Ferry(primary.sidecar.storage()),
            write_prefix: format!("logical/{bench}/"),
            watch_prefix: format!("/ferry/{}/data/logical/{bench}/", secondary.name),
            destination: secondary.etcd.client().await?,
        };
        let (src, dst) = (EtcdServer::start()?, EtcdServer::start()?);
        let child = start_mirror(&src, &dst, bench).await?;
        let mirror = System {
            name: "make-mirror",
            bench,
            source: Source::Etcd(Box::new(src.client().await?.kv_client())),
            write_prefix: format!("{MIRROR_PREFIX}{bench}/"),
            watch_prefix: format!("{MIRROR_PREFIX}{bench}/"),
            destination: dst.client().await?,
        };
        Ok(Self {
            ferry,
            mirror,
            mirror_child: Some(child),
            _mirror_servers: [src, dst],
        })
    }

    /// Ends the make-mirror child (ours, by its pid), if it still runs.
    pub fn stop_mirror(&mut self) {
        if let Some(mut child) = self.mirror_child.take() {
            eprintln!(
                "replication: {}: stopping make-mirror (pid {})",
                self.mirror.bench,
                child.process.pid().map_or("?".into(), |p| p.to_string())
            );
            child.process.kill();
        }
    }
}

/// The `etcdctl make-mirror` child and the directory of its log.
struct Mirror {
    process: Process,
    _dir: tempfile::TempDir,
}

/// Starts `etcdctl make-mirror` from `src` to `dst` and waits until a key written to `src`
/// shows up on `dst`.
async fn start_mirror(
    src: &EtcdServer,
    dst: &EtcdServer,
    bench: &'static str,
) -> anyhow::Result<Mirror> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-make-mirror-")
        .tempdir()?;
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", src.endpoint()))
        .arg("make-mirror")
        .arg(format!("--prefix={MIRROR_PREFIX}"))
        .arg(dst.endpoint());
    let log = dir.path().join("make-mirror.log");
    let mut process = Process::spawn("etcdctl make-mirror", cmd, &log)?;
    eprintln!(
        "replication: {bench}: make-mirror pid {} ({} → {}), log {}",
        process.pid().map_or("?".into(), |p| p.to_string()),
        src.endpoint(),
        dst.endpoint(),
        log.display()
    );
    let mut put = src.client().await?;
    let key = format!("{MIRROR_PREFIX}ready");
    put.put(key.as_str(), "1", None).await?;
    let mut get = dst.client().await?;
    let found = wait_for("make-mirror to copy a key", Duration::from_secs(30), || {
        let exited = process.exited();
        let mut get = get.clone();
        let key = key.clone();
        async move {
            if let Some(status) = exited {
                return Some(Err(anyhow::anyhow!("make-mirror exited ({status})")));
            }
            let r = get.get(key, None).await.ok()?;
            (!r.kvs().is_empty()).then_some(Ok(()))
        }
    })
    .await;
    match found {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => return Err(e.context(process.log_tail(20))),
    }
    get.delete(key.as_str(), None).await.ok();
    Ok(Mirror { process, _dir: dir })
}

/// The warm-up of a one-run case (not sliced): a fifth of `--seconds`, 0.5 to 1 s.
pub fn warmup_seconds(seconds: f64) -> f64 {
    (seconds / 5.0).clamp(0.5, 1.0)
}

/// What one case measured, not judged yet.
pub struct Measured {
    pub samples: Samples,
    /// Sends in the measured window.
    pub sends: u64,
    /// Keys acknowledged and keys arrived, warm-up included.
    acked: u64,
    arrived: u64,
    pub first_error: Option<String>,
}

/// One system at one rate: `warmup_seconds` of sends, then `seconds` measured; every key is
/// watched for at the destination for at most `drain` after the driver stops (a key still
/// missing then counts with a lower bound, see [`summarize`]).
pub async fn measure(
    system: &System,
    rate: u64,
    seconds: f64,
    warmup_seconds: f64,
    drain: Duration,
) -> anyhow::Result<Measured> {
    let schedule = Schedule { rate };
    let warm = schedule.count(warmup_seconds);
    let sends = schedule.count(seconds);
    let total = warm + sends;
    let case = format!("{}-{rate}-{}/", system.name, unique());
    eprintln!(
        "replication: {}: {} at {rate}/s for {seconds:.2}s (+{warmup_seconds:.2}s warm-up), \
         {total} puts",
        system.bench, system.name
    );
    let tracker = Tracker::shared(total);
    let watcher = watch_arrivals(
        system.destination.clone(),
        format!("{}{case}", system.watch_prefix),
        tracker.clone(),
    )
    .await?;
    let write_prefix = format!("{}{case}", system.write_prefix);
    let started = drive(&system.source, &write_prefix, schedule, total, &tracker).await?;
    let acked = tracker.lock().expect("tracker lock").acked();
    // A timeout leaves keys missing, which the samples count; it is not an error here.
    let _ = wait_for("every acknowledged key at the destination", drain, || {
        let arrived = tracker.lock().expect("tracker lock").arrived;
        let finished = watcher.is_finished();
        async move { (arrived >= acked || finished).then_some(()) }
    })
    .await;
    let cutoff = Instant::now();
    let watch_ended = watcher.is_finished();
    watcher.abort();
    let t = tracker.lock().expect("tracker lock");
    ensure!(
        t.arrived >= acked || !watch_ended,
        "{}@{rate}/s: the watch on the destination ended after {} of {acked} keys",
        system.name,
        t.arrived
    );
    let samples = summarize(&t, schedule, started, warm, total, cutoff);
    let lag = samples.lag();
    eprintln!(
        "  {} samples: lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} puts/s achieved; \
         sends late p99 {:.2} ms, max {:.2} ms; {} errors{}{}",
        lag.samples,
        lag.p50_ms,
        lag.p99_ms,
        lag.max_ms,
        lag.achieved_rate,
        lag.late_p99_ms,
        lag.late_max_ms,
        lag.errors,
        t.first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        if lag.missing > 0 {
            format!("; {} keys not arrived after {drain:?}", lag.missing)
        } else {
            String::new()
        }
    );
    Ok(Measured {
        samples,
        sends,
        acked,
        arrived: t.arrived,
        first_error: t.first_error.clone(),
    })
}

/// [`measure`] with up to two minutes for the last keys, failing unless every acknowledged key
/// arrived and at least nine in ten measured sends were acknowledged.
pub async fn run_case(
    system: &System,
    rate: u64,
    seconds: f64,
    warmup_seconds: f64,
) -> anyhow::Result<Samples> {
    let m = measure(system, rate, seconds, warmup_seconds, DRAIN_TIMEOUT).await?;
    ensure!(
        m.arrived >= m.acked,
        "{}@{rate}/s: {} of {} acknowledged keys arrived within {DRAIN_TIMEOUT:?}",
        system.name,
        m.arrived,
        m.acked
    );
    let samples = m.samples.lag().samples;
    ensure!(
        samples as u64 >= m.sends * 9 / 10,
        "{}@{rate}/s: only {samples} of {} measured puts were acknowledged and arrived (first \
         error: {:?})",
        system.name,
        m.sends,
        m.first_error
    );
    Ok(m.samples)
}

/// A case's rows: lag p50 and p99 (`{name}_p50@{rate}/s`, with `baseline_p99` and `target` on
/// the p99) and the achieved rate (`{name}_rate@{rate}/s`), each with `extra`.
pub fn add_rows(
    report: &mut Report,
    name: &str,
    rate: u64,
    lag: &Lag,
    baseline_p99: Option<f64>,
    target: Option<Target>,
    extra: &[(&str, Value)],
) -> anyhow::Result<()> {
    let with_extra = |mut row: Row| {
        if lag.missing > 0 {
            row = row.extra("missing", lag.missing);
        }
        for (k, v) in extra {
            row = row.extra(k, v.clone());
        }
        row
    };
    let lag_extra = |row: Row| {
        with_extra(
            row.extra("rate", rate)
                .extra("samples", lag.samples)
                .extra("max_ms", round(lag.max_ms)),
        )
    };
    report.add(lag_extra(Row::new(
        "replication",
        format!("{name}_p50@{rate}/s"),
        "lag_p50",
        lag.p50_ms,
        "ms",
    )))?;
    let mut p99 = lag_extra(Row::new(
        "replication",
        format!("{name}_p99@{rate}/s"),
        "lag_p99",
        lag.p99_ms,
        "ms",
    ));
    if let Some(b) = baseline_p99 {
        p99 = p99.baseline(b).extra("baseline_of", "make-mirror p99");
    }
    if let Some(t) = target {
        p99 = p99.target(t);
    }
    report.add(p99)?;
    report.add(
        with_extra(Row::new(
            "replication",
            format!("{name}_rate@{rate}/s"),
            "achieved_write_rate",
            lag.achieved_rate,
            "ops/s",
        ))
        .extra("offered", rate)
        .extra("send_late_p99_ms", round(lag.late_p99_ms))
        .extra("send_late_max_ms", round(lag.late_max_ms))
        .extra("errors", lag.errors),
    )?;
    if lag.errors > 0 {
        report.note(format!("{name}@{rate}/s: {} puts failed", lag.errors));
    }
    if lag.missing > 0 {
        report.note(format!(
            "{name}@{rate}/s: {} acknowledged keys had not arrived when the case ended (its \
             percentiles are lower bounds)",
            lag.missing
        ));
    }
    Ok(())
}

/// A per-process counter, so that repeated cases write new keys.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
