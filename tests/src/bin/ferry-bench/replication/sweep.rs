//! The highest sustainable rate: how fast the primary can take writes while the secondary stays
//! within 50 ms of it, against `etcdctl make-mirror` between two etcd servers.
//!
//! In one run, on one streaming pair and make-mirror's own two etcd servers:
//!
//! 1. The primary's maximum write rate: [`FULL_SPEED_WRITERS`] closed-loop writers put distinct
//!    keys on the primary's storage API for `--seconds`, with the secondary replicating as it
//!    would in production. The secondary then catches up before anything else is measured. The
//!    open-loop driver keeps more puts in flight than that, so the primary may accept more in
//!    the sweep: its maximum is the higher of the closed-loop rate and the highest rate it
//!    achieved in a sweep case (at least [`MIN_ACHIEVED`] of the offered rate, whatever the lag).
//! 2. The sweep: each system is driven open loop at each of [`RATES`] in turn (2,000, 5,000,
//!    10,000 writes a second and upward), `--seconds` measured after a short warm-up, the two
//!    systems alternating which goes first. A rate is sustained when the achieved rate is at
//!    least [`MIN_ACHIEVED`] of the offered one, lag p99 (commit acknowledged at the source →
//!    put event at the destination) is at most [`MAX_P99_MS`], every acknowledged key arrived
//!    within [`DRAIN`] of the last send, and at most one put in a thousand failed. A system goes
//!    no higher than its first rate that is not sustained. make-mirror falls behind below
//!    2,000/s, so its first case is normally its last; it is stopped then, so that its backlog
//!    takes no CPU from Ferry's cases.
//! 3. Ferry at 80% of the primary's maximum from step 1, once the secondary caught up with the
//!    sweep: the headroom an operator would plan for.
//!
//! The open-loop driver keeps at most 512 puts in flight: when the primary cannot keep up, sends
//! start late (reported in each rate row) and the achieved rate falls below the offered one. The
//! driver, both etcd servers and both sidecars share this machine's cores, so the primary's
//! maximum is this machine's, not Ferry's alone.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_tests::region::Region;
use serde_json::{Value, json};

use super::case::{System, Systems, add_rows, measure, warmup_seconds};
use super::open_loop::Lag;
use super::{FULL_SPEED_WRITERS, full_speed_puts, start_pair, wait_caught_up, with_logs};
use crate::args::Args;
use crate::report::{Report, Row, Target, round};

/// Offered rates, in writes a second, lowest first.
const RATES: [u64; 10] = [
    2_000, 5_000, 10_000, 12_500, 15_000, 17_500, 20_000, 25_000, 30_000, 40_000,
];
/// The lag p99 a sustained rate may have.
const MAX_P99_MS: f64 = 50.0;
/// The share of the offered rate a sustained rate must achieve.
const MIN_ACHIEVED: f64 = 0.95;
/// Failed puts a sustained rate may have, per put sent.
const MAX_ERROR_SHARE: f64 = 0.001;
/// How long the last keys of a case may take to arrive: later than that, the case has failed
/// long before, and waiting longer only makes it longer.
const DRAIN: Duration = Duration::from_secs(10);
/// The share of the primary's maximum Ferry runs at after the sweep.
const SHARE_OF_MAX: f64 = 0.8;
/// How long the secondary may take to catch up between the steps.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn sweep_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("replication: sweep: starting a streaming pair and two etcd servers for make-mirror");
    let (primary, secondary) = start_pair(&[]).await?;
    let outcome = sweep_cases(args, report, &primary, &secondary).await;
    outcome.map_err(|e| with_logs(e, &[&primary, &secondary], report.run, "sweep"))
}

async fn sweep_cases(
    args: &Args,
    report: &mut Report,
    primary: &Region,
    secondary: &Region,
) -> anyhow::Result<()> {
    // 1. The primary at full speed, closed loop.
    eprintln!(
        "replication: sweep: {FULL_SPEED_WRITERS} writers on the primary for {:.1}s",
        args.seconds
    );
    let (puts, seconds) = full_speed_puts(
        primary,
        "logical/sweep-max/",
        Duration::from_secs_f64(args.seconds),
    )
    .await
    .context("failed to write to the primary at full speed")?;
    let closed_loop = puts as f64 / seconds;
    eprintln!("  {puts} puts in {seconds:.2}s ({closed_loop:.0}/s)");
    wait_caught_up(secondary, primary, CATCH_UP_TIMEOUT).await?;

    // 2. The sweep.
    let mut systems = Systems::start(primary, secondary, "sweep").await?;
    let warmup = warmup_seconds(args.seconds);
    let mut ferry = Progress::default();
    let mut mirror = Progress::default();
    for (i, rate) in RATES.into_iter().enumerate() {
        let mut order = [(&systems.ferry, &mut ferry), (&systems.mirror, &mut mirror)];
        if i % 2 == 1 {
            order.reverse();
        }
        for (system, progress) in order {
            if progress.going() {
                sweep_case(report, system, progress, rate, args.seconds, warmup).await?;
            }
        }
        if !mirror.going() {
            systems.stop_mirror();
        }
        if !ferry.going() && !mirror.going() {
            break;
        }
    }
    systems.stop_mirror();
    let primary_max = closed_loop.max(ferry.top_achieved);
    report.add(
        Row::new(
            "replication",
            "primary_max_write_rate",
            "put_throughput",
            primary_max,
            "ops/s",
        )
        .extra("closed_loop_rate", round(closed_loop))
        .extra("closed_loop_writers", FULL_SPEED_WRITERS)
        .extra("closed_loop_seconds", round(seconds))
        .extra("open_loop_top_achieved_rate", round(ferry.top_achieved)),
    )?;
    report.add(
        max_row("ferry", &ferry)
            .baseline(primary_max)
            .extra("baseline_of", "primary_max_write_rate"),
    )?;
    report.add(max_row("make-mirror", &mirror))?;

    // 3. Ferry at 80% of the primary's maximum.
    let rate = (primary_max * SHARE_OF_MAX).round() as u64;
    ensure!(
        rate > 0,
        "the primary's maximum write rate ({primary_max:.1}/s) leaves no rate to run at"
    );
    wait_caught_up(secondary, primary, CATCH_UP_TIMEOUT).await?;
    let m = measure(&systems.ferry, rate, args.seconds, warmup, DRAIN).await?;
    let lag = m.samples.lag();
    let shortfalls = shortfalls(rate, &lag, m.sends).join("; ");
    let mut row = Row::new(
        "replication",
        "ferry_p99@80%_of_max",
        "lag_p99",
        lag.p99_ms,
        "ms",
    )
    .target(Target::AtMost(MAX_P99_MS))
    .extra("rate", rate)
    .extra("primary_max_write_rate", round(primary_max))
    .extra("p50_ms", round(lag.p50_ms))
    .extra("max_ms", round(lag.max_ms))
    .extra("samples", lag.samples)
    .extra("missing", lag.missing)
    .extra("achieved_rate", round(lag.achieved_rate))
    .extra("send_late_p99_ms", round(lag.late_p99_ms))
    .extra("errors", lag.errors)
    .extra("sustained", shortfalls.is_empty());
    if !shortfalls.is_empty() {
        row = row.extra("shortfalls", shortfalls.as_str());
    }
    report.add(row)?;
    report.note(format!(
        "sweep: {}; 80% of the primary's max {primary_max:.0}/s is {rate}/s, where ferry's lag \
         p99 was {:.2} ms{}; {}",
        describe("ferry", &ferry),
        lag.p99_ms,
        if shortfalls.is_empty() {
            String::new()
        } else {
            format!(" (not sustained: {shortfalls})")
        },
        describe("make-mirror", &mirror)
    ));
    Ok(())
}

/// Runs `system` at `rate`, adds its rows (`sweep {name}_p99@{rate}/s`, ...) and records the
/// outcome in `progress`.
async fn sweep_case(
    report: &mut Report,
    system: &System,
    progress: &mut Progress,
    rate: u64,
    seconds: f64,
    warmup: f64,
) -> anyhow::Result<()> {
    let m = measure(system, rate, seconds, warmup, DRAIN).await?;
    let lag = m.samples.lag();
    let shortfalls = shortfalls(rate, &lag, m.sends);
    let mut extra = vec![("sustained", json!(shortfalls.is_empty()))];
    if !shortfalls.is_empty() {
        eprintln!(
            "  {}@{rate}/s not sustained: {}",
            system.name,
            shortfalls.join("; ")
        );
        extra.push(("shortfalls", Value::from(shortfalls.join("; "))));
    }
    let name = format!("sweep {}", system.name);
    add_rows(report, &name, rate, &lag, None, None, &extra)?;
    if lag.achieved_rate >= MIN_ACHIEVED * rate as f64 {
        progress.top_achieved = progress.top_achieved.max(lag.achieved_rate);
    }
    progress.record(rate, shortfalls);
    Ok(())
}

/// Why a case at `rate` with `sends` measured puts did not sustain it; empty when it did.
fn shortfalls(rate: u64, lag: &Lag, sends: u64) -> Vec<String> {
    let mut why = Vec::new();
    // NaN (nothing measured) is neither sustained nor within the bound.
    let sustained = lag.achieved_rate >= MIN_ACHIEVED * rate as f64;
    let within = lag.p99_ms <= MAX_P99_MS;
    if !sustained {
        why.push(format!("achieved {:.0}/s", lag.achieved_rate));
    }
    if !within {
        why.push(format!("lag p99 {:.1} ms", lag.p99_ms));
    }
    if lag.missing > 0 {
        why.push(format!(
            "{} keys not at the destination {}s after the last send",
            lag.missing,
            DRAIN.as_secs()
        ));
    }
    if lag.errors as f64 > MAX_ERROR_SHARE * sends as f64 {
        why.push(format!("{} puts failed", lag.errors));
    }
    why
}

/// Where one system's sweep stands.
#[derive(Default)]
struct Progress {
    /// The highest rate sustained so far.
    sustained: Option<u64>,
    /// The first rate not sustained, and why.
    failed: Option<(u64, String)>,
    /// The highest rate achieved in a case that achieved its offered rate, whatever the lag.
    top_achieved: f64,
}

impl Progress {
    /// Whether the next rate should be tried.
    fn going(&self) -> bool {
        self.failed.is_none()
    }

    fn record(&mut self, rate: u64, shortfalls: Vec<String>) {
        if shortfalls.is_empty() {
            self.sustained = Some(rate);
        } else {
            self.failed = Some((rate, shortfalls.join("; ")));
        }
    }
}

/// `{name}_max_sustained_rate`: the highest rate sustained (0 when none was), with the first
/// that was not.
fn max_row(name: &str, progress: &Progress) -> Row {
    let (failed_rate, failed_why) = match &progress.failed {
        Some((rate, why)) => (json!(rate), json!(why)),
        None => (Value::Null, Value::Null),
    };
    Row::new(
        "replication",
        format!("{name}_max_sustained_rate"),
        "max_sustained_write_rate",
        progress.sustained.unwrap_or(0) as f64,
        "ops/s",
    )
    .extra("first_failed_rate", failed_rate)
    .extra("failed_because", failed_why)
    .extra("sweep_top_rate", RATES[RATES.len() - 1])
    .extra("max_p99_ms", MAX_P99_MS)
    .extra("min_achieved_share", MIN_ACHIEVED)
}

/// One system's sweep in words, for the note.
fn describe(name: &str, progress: &Progress) -> String {
    match (progress.sustained, &progress.failed) {
        (Some(held), Some((failed, why))) => {
            format!(
                "{name} holds ≤{MAX_P99_MS} ms up to {held}/s and falls behind at {failed}/s \
                 ({why})"
            )
        }
        (None, Some((failed, why))) => {
            format!("{name} falls behind at {failed}/s, the sweep's lowest rate ({why})")
        }
        (Some(held), None) => {
            format!("{name} holds ≤{MAX_P99_MS} ms up to {held}/s, the sweep's highest rate")
        }
        (None, None) => format!("{name} was not measured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(achieved_rate: f64, p99_ms: f64, missing: u64, errors: u64) -> Lag {
        Lag {
            p50_ms: p99_ms / 2.0,
            p99_ms,
            max_ms: p99_ms,
            samples: 1000,
            achieved_rate,
            late_p99_ms: 0.0,
            late_max_ms: 0.0,
            errors,
            missing,
        }
    }

    #[test]
    fn a_rate_is_sustained_within_its_rate_lag_and_error_bounds() {
        assert!(shortfalls(2000, &lag(1990.0, 8.0, 0, 0), 2000).is_empty());
        assert!(shortfalls(2000, &lag(1900.0, 50.0, 0, 2), 2000).is_empty());
        assert_eq!(
            shortfalls(2000, &lag(1899.0, 50.1, 0, 0), 2000),
            ["achieved 1899/s", "lag p99 50.1 ms"]
        );
        assert_eq!(shortfalls(2000, &lag(2000.0, 9.0, 0, 3), 2000).len(), 1);
        assert_eq!(shortfalls(2000, &lag(2000.0, 9.0, 1, 0), 2000).len(), 1);
        // Nothing measured is not sustained.
        assert_eq!(shortfalls(2000, &lag(f64::NAN, f64::NAN, 0, 0), 0).len(), 2);
    }

    #[test]
    fn a_system_stops_at_its_first_failure() {
        let mut p = Progress::default();
        assert!(p.going());
        p.record(2000, vec![]);
        p.record(5000, vec![]);
        assert!(p.going());
        p.record(10_000, vec!["lag p99 80.0 ms".into()]);
        assert!(!p.going());
        assert_eq!(p.sustained, Some(5000));
        assert_eq!(
            describe("ferry", &p),
            "ferry holds ≤50 ms up to 5000/s and falls behind at 10000/s (lag p99 80.0 ms)"
        );
        let mut m = Progress::default();
        m.record(2000, vec!["lag p99 3931.3 ms".into()]);
        assert_eq!(
            describe("make-mirror", &m),
            "make-mirror falls behind at 2000/s, the sweep's lowest rate (lag p99 3931.3 ms)"
        );
    }
}
