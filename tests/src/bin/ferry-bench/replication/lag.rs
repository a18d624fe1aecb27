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

use ferry_tests::region::Region;

use super::case::{System, Systems, add_rows, run_case, warmup_seconds};
use super::open_loop::Samples;
use super::{start_pair, with_logs};
use crate::args::Args;
use crate::report::{Report, Target, noise_row};

/// Slices per system at 500/s (an even number: half are compared with the other half).
const SLICES: usize = 6;
/// Each slice's warm-up, not measured: the connections are up already, only the pipeline
/// needs to fill.
const SLICE_WARMUP_SECONDS: f64 = 0.25;

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
    let mut systems = Systems::start(primary, secondary, "lag").await?;
    let (ferry, mirror) = (&systems.ferry, &systems.mirror);
    // 500/s: interleaved slices, pooled, compared.
    let [f, m] = interleaved(args, [ferry, mirror], 500).await?;
    let (ferry_500, mirror_500) = (f.all.lag(), m.all.lag());
    add_rows(report, "make-mirror", 500, &mirror_500, None, None, &[])?;
    add_rows(
        report,
        "ferry",
        500,
        &ferry_500,
        Some(mirror_500.p99_ms),
        Some(Target::RatioAtMost(1.0)),
        &[],
    )?;
    // 2,000/s: one run each.
    let warmup = warmup_seconds(args.seconds);
    let ferry_2000 = run_case(ferry, 2000, args.seconds, warmup).await?.lag();
    let mirror_2000 = run_case(mirror, 2000, args.seconds, warmup).await?.lag();
    add_rows(report, "make-mirror", 2000, &mirror_2000, None, None, &[])?;
    add_rows(
        report,
        "ferry",
        2000,
        &ferry_2000,
        Some(mirror_2000.p99_ms),
        Some(Target::AtMost(50.0)),
        &[],
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
    systems.stop_mirror();
    Ok(())
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
