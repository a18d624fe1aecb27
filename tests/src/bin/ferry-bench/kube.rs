//! The `kube` benchmark: Ferry's charts on two real single-node Kubernetes regions joined by a
//! WAN (`ferry_tests::charts`, the steps of the end-to-end test `charts_on_nodes`), from the
//! images `make images` built. Needs root, like that test.
//!
//! * Time to a ready two-region install: from the first `helm install` (images present) to the
//!   secondary streaming, once per pair of regions, with how many node containers restarted
//!   on the way (none should).
//! * The RTO of a switchover by `helm upgrade` with the roles flipped in both regions' values:
//!   from the commit being applied to the first write the new primary commits (target ≤5 s),
//!   under a write load, both directions in every pair.
//!
//! [`PAIRS`] fresh pairs of regions; the table gives medians, and min and max show the noise.

use anyhow::Context;
use ferry_tests::charts::{ChartRegion, TAG, install_pair, switch_over};

use crate::args::Args;
use crate::common::median;
use crate::report::{Report, Row, Target, round};

const PAIRS: usize = 2;
/// The target for a switchover, in seconds.
const SWITCHOVER_TARGET: f64 = 5.0;

pub async fn kube_bench(_args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let mut installs = Vec::new();
    let mut rtos = Vec::new();
    let mut gaps = Vec::new();
    let mut restarts = 0;
    for i in 1..=PAIRS {
        eprintln!("kube: pair {i} of {PAIRS} (two real Kubernetes regions)");
        let (mut west, mut east, _wan) = ChartRegion::start_pair("west", "east")
            .await
            .with_context(|| format!("pair {i}"))?;
        let install = install_pair(&mut west, &mut east).await?;
        let mut restarted = west.restarted().await?;
        restarted.extend(east.restarted().await?);
        eprintln!(
            "  helm install → east streaming {install:.2}s; node containers restarted: {restarted:?}"
        );
        installs.push(install);
        restarts += restarted.len();
        for (from, to) in [(&west, &east), (&east, &west)] {
            let switched = switch_over(from, to, TAG).await?;
            eprintln!(
                "  {} → {}: commit → write committed by the new primary {:.2}s; longest gap \
                 between acknowledged writes {:.2}s; {} writes, none lost",
                from.name(),
                to.name(),
                switched.rto,
                switched.gap,
                switched.acked.len()
            );
            rtos.push(switched.rto);
            gaps.push(switched.gap);
        }
    }
    let min = |xs: &[f64]| xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |xs: &[f64]| xs.iter().copied().fold(0.0, f64::max);
    report.add(
        Row::new(
            "kube",
            "helm_install_to_replicating",
            "seconds",
            round(median(&installs)),
            "s",
        )
        .extra("runs", installs.len() as u64)
        .extra("min", round(min(&installs)))
        .extra("max", round(max(&installs)))
        .extra("node_containers_restarted", restarts as u64),
    )?;
    report.add(
        Row::new(
            "kube",
            "helm_upgrade_switchover_rto",
            "seconds",
            round(median(&rtos)),
            "s",
        )
        .target(Target::AtMost(SWITCHOVER_TARGET))
        .extra("runs", rtos.len() as u64)
        .extra("min", round(min(&rtos)))
        .extra("max", round(max(&rtos)))
        .extra("longest_write_gap_max_s", round(max(&gaps))),
    )?;
    Ok(())
}
