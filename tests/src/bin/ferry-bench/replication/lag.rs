//! Replication lag: commit acknowledged at the source → put event at the destination, for
//! Ferry (storage API `Put` on the primary, a watch on the secondary's etcd) and for `etcdctl
//! make-mirror` (raw etcd puts on one server, a watch on the other), driven by the same
//! open-loop writer at the same rates.
//!
//! This machine is shared, and its noise comes in bursts that can last seconds: a burst that
//! falls on one system's run and not on the other's decides a p99 comparison by itself. So at
//! 500/s, where the target compares the two, each system runs in [`SLICES`] short slices,
//! alternating A B B A A B ..., and each system's slices are pooled: a burst then lands on both
//! about equally. The machine's noise is reported as how far each system's p99 over its first
//! half of slices is from its p99 over the second half. At 2,000/s make-mirror falls behind
//! over the whole run, so each system runs once, without slicing.

use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use ferry_tests::etcd::EtcdServer;
use ferry_tests::process::Process;
use ferry_tests::region::Region;
use ferry_tests::wait_for;

use super::open_loop::{Lag, Samples, Schedule, Source, Tracker, drive, summarize, watch_arrivals};
use super::{start_pair, with_logs};
use crate::args::Args;
use crate::report::{Report, Row, Target, noise_row, round};

/// Slices per system at 500/s (an even number: half are compared with the other half).
const SLICES: usize = 6;
/// Each slice's warm-up, not measured: the connections are up already, only the pipeline
/// needs to fill.
const SLICE_WARMUP_SECONDS: f64 = 0.25;
/// How long the last keys may take to arrive after the driver stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Where make-mirror copies from and to (the same prefix on both servers).
const MIRROR_PREFIX: &str = "/mirror/";

/// One system under test: where to write, and where the writes show up.
struct System {
    name: &'static str,
    source: Source,
    /// The prefix keys are written under at the source (the case and index are appended).
    write_prefix: String,
    /// The same keys' prefix at the destination etcd.
    watch_prefix: String,
    destination: etcd_client::Client,
}

pub async fn lag_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("replication: lag: starting a streaming pair and two etcd servers for make-mirror");
    let (primary, secondary) = start_pair(&[]).await?;
    let outcome = lag_cases(args, report, &primary, &secondary).await;
    outcome.map_err(|e| with_logs(e, &[&primary, &secondary], report.run, "lag"))
}

async fn lag_cases(
    args: &Args,
    report: &mut Report,
    primary: &Region,
    secondary: &Region,
) -> anyhow::Result<()> {
    let ferry = System {
        name: "ferry",
        source: Source::Ferry(primary.sidecar.storage()),
        write_prefix: "logical/lag/".into(),
        watch_prefix: format!("/ferry/{}/data/logical/lag/", secondary.name),
        destination: secondary.etcd.client().await?,
    };
    let (mirror_src, mirror_dst) = (EtcdServer::start()?, EtcdServer::start()?);
    let mut mirror_child = start_mirror(&mirror_src, &mirror_dst).await?;
    let mirror = System {
        name: "make-mirror",
        source: Source::Etcd(Box::new(mirror_src.client().await?.kv_client())),
        write_prefix: format!("{MIRROR_PREFIX}lag/"),
        watch_prefix: format!("{MIRROR_PREFIX}lag/"),
        destination: mirror_dst.client().await?,
    };

    // 500/s: interleaved slices, pooled, compared.
    let [f, m] = interleaved(args, [&ferry, &mirror], 500).await?;
    let (ferry_500, mirror_500) = (f.all.lag(), m.all.lag());
    add_rows(report, "make-mirror", 500, &mirror_500, None, None)?;
    add_rows(
        report,
        "ferry",
        500,
        &ferry_500,
        Some(mirror_500.p99_ms),
        Some(Target::RatioAtMost(1.0)),
    )?;
    // 2,000/s: one run each.
    let warmup = (args.seconds / 5.0).clamp(0.5, 1.0);
    let ferry_2000 = run_case(&ferry, 2000, args.seconds, warmup).await?.lag();
    let mirror_2000 = run_case(&mirror, 2000, args.seconds, warmup).await?.lag();
    add_rows(report, "make-mirror", 2000, &mirror_2000, None, None)?;
    add_rows(
        report,
        "ferry",
        2000,
        &ferry_2000,
        Some(mirror_2000.p99_ms),
        Some(Target::AtMost(50.0)),
    )?;
    for (name, pooled) in [("ferry", &f), ("make-mirror", &m)] {
        let [first, second] = pooled.half_p99_ms;
        let (row, noise) = noise_row(
            "replication",
            format!("noise {name}_p99@500/s"),
            ("first_half_ms", first),
            ("second_half_ms", second),
        );
        report.add(row)?;
        report.note(format!(
            "lag noise: {name} p99 at 500/s was {first:.2} ms over its first {} slices and \
             {second:.2} ms over the other {} ({noise:.0}% apart)",
            SLICES / 2,
            SLICES / 2
        ));
    }
    // Ours to end: the make-mirror child, by its pid.
    eprintln!(
        "replication: lag: stopping make-mirror (pid {})",
        mirror_child
            .process
            .pid()
            .map_or("?".into(), |p| p.to_string())
    );
    mirror_child.process.kill();
    Ok(())
}

fn add_rows(
    report: &mut Report,
    name: &str,
    rate: u64,
    lag: &Lag,
    baseline_p99: Option<f64>,
    target: Option<Target>,
) -> anyhow::Result<()> {
    let extra = |row: Row| {
        row.extra("rate", rate)
            .extra("samples", lag.samples)
            .extra("max_ms", round(lag.max_ms))
    };
    report.add(extra(Row::new(
        "replication",
        format!("{name}_p50@{rate}/s"),
        "lag_p50",
        lag.p50_ms,
        "ms",
    )))?;
    let mut p99 = extra(Row::new(
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
        Row::new(
            "replication",
            format!("{name}_rate@{rate}/s"),
            "achieved_write_rate",
            lag.achieved_rate,
            "ops/s",
        )
        .extra("offered", rate)
        .extra("send_late_p99_ms", round(lag.late_p99_ms))
        .extra("send_late_max_ms", round(lag.late_max_ms))
        .extra("errors", lag.errors),
    )?;
    if lag.errors > 0 {
        report.note(format!("{name}@{rate}/s: {} puts failed", lag.errors));
    }
    Ok(())
}

/// The `etcdctl make-mirror` child and the directory of its log.
struct Mirror {
    process: Process,
    _dir: tempfile::TempDir,
}

/// Starts `etcdctl make-mirror` from `src` to `dst` and waits until a key written to `src`
/// shows up on `dst`.
async fn start_mirror(src: &EtcdServer, dst: &EtcdServer) -> anyhow::Result<Mirror> {
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
        "replication: lag: make-mirror pid {} ({} → {}), log {}",
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

/// A system's samples from every slice, and its p99 over each half of the slices.
struct Pooled {
    all: Samples,
    half_p99_ms: [f64; 2],
}

/// Runs `systems` at `rate` in [`SLICES`] slices each, alternating A B B A A B ..., for
/// `--seconds` measured per system in all, and pools each system's slices.
async fn interleaved(args: &Args, systems: [&System; 2], rate: u64) -> anyhow::Result<[Pooled; 2]> {
    let seconds = args.seconds / SLICES as f64;
    let mut halves: [[Samples; 2]; 2] = Default::default();
    for slice in 0..SLICES {
        let order = if slice % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let samples = run_case(systems[i], rate, seconds, SLICE_WARMUP_SECONDS).await?;
            halves[i][slice * 2 / SLICES].pool(samples);
        }
    }
    Ok(halves.map(|[first, second]| {
        let half_p99_ms = [first.lag().p99_ms, second.lag().p99_ms];
        let mut all = first;
        all.pool(second);
        Pooled { all, half_p99_ms }
    }))
}

/// One system at one rate: `warmup_seconds` of sends, then `seconds` measured; every key is
/// watched for at the destination.
async fn run_case(
    system: &System,
    rate: u64,
    seconds: f64,
    warmup_seconds: f64,
) -> anyhow::Result<Samples> {
    let schedule = Schedule { rate };
    let warm = schedule.count(warmup_seconds);
    let measured = schedule.count(seconds);
    let total = warm + measured;
    let case = format!("{}-{rate}-{}/", system.name, unique());
    eprintln!(
        "replication: lag: {} at {rate}/s for {seconds:.2}s (+{warmup_seconds:.2}s warm-up), \
         {total} puts",
        system.name
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
    let arrived = wait_for(
        "every acknowledged key at the destination",
        DRAIN_TIMEOUT,
        || {
            let arrived = tracker.lock().expect("tracker lock").arrived;
            let finished = watcher.is_finished();
            async move { (arrived >= acked || finished).then_some(arrived) }
        },
    )
    .await;
    watcher.abort();
    let t = tracker.lock().expect("tracker lock");
    let arrived = arrived.map_err(|e| {
        e.context(format!(
            "{}@{rate}/s: {} of {acked} acknowledged keys arrived",
            system.name, t.arrived
        ))
    })?;
    ensure!(
        arrived >= acked,
        "{}@{rate}/s: the watch on the destination ended after {arrived} of {acked} keys",
        system.name
    );
    let samples = summarize(&t, schedule, started, warm, total);
    let lag = samples.lag();
    eprintln!(
        "  {} samples: lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} puts/s achieved; \
         sends late p99 {:.2} ms, max {:.2} ms; {} errors{}",
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
            .unwrap_or_default()
    );
    ensure!(
        lag.samples as u64 >= measured * 9 / 10,
        "{}@{rate}/s: only {} of {measured} measured puts were acknowledged and arrived (first \
         error: {:?})",
        system.name,
        lag.samples,
        t.first_error
    );
    Ok(samples)
}

/// A per-process counter, so that repeated cases write new keys.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
