//! The `operator` benchmark: two regions, each with its own kube-apiserver, ferry-operator,
//! etcd, sidecar and ferry-vault (the end-to-end tests' set-up, `ferry_tests::operator`).
//!
//! * From applying both ReplicationCluster resources (the token Secret copied across as GitOps
//!   would) to the secondary reporting `stream-wals`.
//! * From flipping both roles in the resources to the first write acknowledged by the new
//!   primary, under a write load (target: at most 5 s on loopback).
//!
//! Each is measured [`RUNS`] times on fresh regions; the table gives the median, and the spread
//! between the fastest and slowest run is the noise.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_tests::operator::{OperatorRegion, Writer, connect, flip};

use crate::args::Args;
use crate::common::median;
use crate::report::{Report, Row, Target, round};

const RUNS: usize = 3;
/// The target for a switchover, in seconds.
const SWITCHOVER_TARGET: f64 = 5.0;

struct Run {
    connect_seconds: f64,
    switchover_seconds: f64,
    writes: usize,
}

async fn one_run() -> anyhow::Result<Run> {
    let (west, east) =
        tokio::try_join!(OperatorRegion::start("west"), OperatorRegion::start("east"))?;
    let (mut west, mut east) = (west, east);
    west.start_operator("west-operator")?;
    east.start_operator("east-operator")?;
    let connect_seconds = connect(&west, &east).await?;
    let writer = Writer::start(west.vault_api(), east.vault_api());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let flipped = Instant::now();
    flip(&west, &east).await?;
    let deadline = flipped + Duration::from_secs(60);
    // Poll the writer's record of the new primary's first acknowledgement.
    let first_on_east = loop {
        if let Some(at) = writer.first_on_east().await {
            break at;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no write accepted on the new primary within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (acked, _) = writer.stop().await;
    Ok(Run {
        connect_seconds,
        switchover_seconds: first_on_east.duration_since(flipped).as_secs_f64(),
        writes: acked.len(),
    })
}

pub async fn operator_bench(_args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for i in 1..=RUNS {
        eprintln!("operator: run {i} of {RUNS} (two regions with kube-apiservers)");
        let run = one_run().await.with_context(|| format!("run {i}"))?;
        eprintln!(
            "  applied → stream-wals {:.2}s; flip → writes on the new primary {:.2}s ({} writes acknowledged)",
            run.connect_seconds, run.switchover_seconds, run.writes
        );
        runs.push(run);
    }
    let spread = |xs: &[f64]| {
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let connect: Vec<f64> = runs.iter().map(|r| r.connect_seconds).collect();
    let switch: Vec<f64> = runs.iter().map(|r| r.switchover_seconds).collect();
    let (clo, chi) = spread(&connect);
    let (slo, shi) = spread(&switch);
    report.add(
        Row::new(
            "operator",
            "apply_to_stream_wals",
            "seconds",
            round(median(&connect)),
            "s",
        )
        .extra("runs", RUNS as u64)
        .extra("min", round(clo))
        .extra("max", round(chi)),
    )?;
    report.add(
        Row::new(
            "operator",
            "flip_to_writes_on_new_primary",
            "seconds",
            round(median(&switch)),
            "s",
        )
        .target(Target::AtMost(SWITCHOVER_TARGET))
        .extra("runs", RUNS as u64)
        .extra("min", round(slo))
        .extra("max", round(shi)),
    )?;
    Ok(())
}
