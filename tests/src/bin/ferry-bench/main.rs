//! ferry-bench: Ferry's benchmarks, run by `make bench` on a release build.
//!
//! Every benchmark starts real etcd servers and the real `ferry-sidecar` on loopback through the
//! `ferry_tests` harness, and compares with a peer measured in the same run on the same etcd, so
//! that the machine's speed cancels out of the ratios:
//!
//! * `write`: storage API `Put` throughput (one key per request, 256-byte values) against raw
//!   single-key etcd puts, at 1, 16 and 64 concurrent writers: each writer count runs raw,
//!   sidecar, sidecar, raw, and each system's two slices are pooled. How far raw puts' two
//!   slices at 16 writers are apart is the machine's noise.
//! * `recovery`: start-up after a SIGKILL (flushed merkle pages plus WAL redo) against a full
//!   reindex (`--reindex-on-start`), at each `--keys` count, median of three alternating runs.
//!   Both must arrive at the root the sidecar had before the crash.
//! * `memory`: the merkle index's own accounting at the largest key count, cross-checked with
//!   the process's resident set against a sidecar of an empty cluster.
//! * `replication`: a primary and a secondary region, each on its own etcd.
//!   - Lag from a put acknowledged on the primary to its put event on the secondary's etcd, p50
//!     and p99 at 500 and 2,000 puts a second from an open-loop writer, against `etcdctl
//!     make-mirror` between two etcd servers driven the same way. At 500/s each system runs in
//!     six alternating slices, pooled; each system's p99 over its first three slices against
//!     its other three is the machine's noise.
//!   - The highest sustainable rate: the primary's maximum write rate (64 closed-loop writers),
//!     then an open-loop sweep at 2,000, 5,000, 10,000 puts a second and upward, Ferry and
//!     make-mirror, each until the achieved rate falls below 95% of the offered one or lag p99
//!     passes 50 ms; and Ferry's lag p99 at 80% of the primary's maximum (target ≤50 ms).
//!   - Catch-up: the secondary is killed while 64 writers put on the primary for `--seconds`;
//!     its apply rate when it streams the backlog against the primary's write rate (no merkle
//!     pass allowed).
//!   - Merkle reconciliation at the largest `--keys` count: the initial full copy, then 10,
//!     1,000 and 100,000 keys overwritten while the secondary was down and its WAL collected
//!     (at most a tenth of the keys with `--quick`): round trips, bytes to locate the
//!     conflicts, time against the full copy, keys written.
//!
//! * `vault`: ferry-vault over HTTP on a replication pair: KV v2 writes and reads a second on
//!   the primary and the secondary (forwarded writes against direct ones, secondary reads
//!   against primary reads), transit encryptions a second on the secondary against the primary,
//!   forwarded write latency p50/p99 against a direct write.
//!
//! * `openbao`: ferry-vault against OpenBao 2.7.2 (one node, raft), the server it replaces, one
//!   after the other with one client (`wrk`, 16 connections, Lua scripts the benchmark writes):
//!   KV v2 writes and reads over 1,000 keys of 200 bytes, transit encryptions, token creation
//!   and lookup, all with an application token holding one policy, and the KV cases again with
//!   the root token (which OpenBao serves faster: it skips the ACL). ferry-vault is a release
//!   primary replicating to a secondary on this machine (which must hold the last writes).
//!   Requests a second against OpenBao's (issue 19's targets: reads ≥2×, writes ≥1×), p50 and
//!   p99 latency, CPU per request of each process (bao; ferry-vault, sidecar and etcd of the
//!   primary, the secondary's three together), the primary ferry-vault's resident set after the
//!   reads with its read cache's budget; OpenBao's reads run first and last, and their
//!   difference is the machine's noise.
//!
//! * `operator`: two regions with their own kube-apiservers and operators: from applying the
//!   resources to `stream-wals`, and from flipping the roles to writes accepted on the new
//!   primary (target ≤5 s), median of three runs.
//!
//! * `nodes`: three nodes in one cluster: from `kill -9` of the active node to the first write
//!   accepted again (p50 and max of five runs, at the chart's 5 s fence lease and the sidecar's
//!   10 s default; target ≤10 s) and acknowledged writes lost (target 0); reads a second from
//!   three nodes against one, with CPU time per read of each process.
//!
//! * `kube`: the charts on two real single-node Kubernetes regions (root needed): from `helm
//!   install` to a replicating two-region install, and the RTO of a switchover by `helm
//!   upgrade` (target ≤5 s), medians over fresh pairs of regions.
//!
//! Results: a table on stdout, one JSON object per measured case appended to
//! `target/bench/results.jsonl`, progress on stderr.
//!
//! Flags: `--seconds N` (measured time per write, lag, sweep and openbao case and the catch-up
//! outage, default 5), `--keys 100000,1000000` (`k`/`M` suffixes allowed), `--quick` (20k keys),
//! `--only write|recovery|memory|replication|lag|sweep|catchup|vault|openbao|operator|nodes|kube`
//! (comma separated for several; all by default).

mod args;
mod common;
mod harness;
mod kube;
mod memory;
mod nodes;
mod openbao;
mod operator;
mod procfs;
mod recovery;
mod replication;
mod report;
mod vault;
mod write;
mod wrk;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::args::{Args, Bench, parse_args};
use crate::recovery::recovery_bench;
use crate::replication::replication_bench;
use crate::report::Report;
use crate::write::write_bench;

async fn run(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    if args.only.contains(&Bench::Write) {
        write_bench(args, report)
            .await
            .context("write benchmark failed")?;
    }
    if args.only.contains(&Bench::Recovery) || args.only.contains(&Bench::Memory) {
        recovery_bench(args, report)
            .await
            .context("recovery/memory benchmark failed")?;
    }
    if args.only.contains(&Bench::Replication) {
        replication_bench(args, report)
            .await
            .context("replication benchmark failed")?;
    } else {
        if args.only.contains(&Bench::Lag) {
            replication::lag_bench(args, report)
                .await
                .context("replication lag benchmark failed")?;
        }
        if args.only.contains(&Bench::Sweep) {
            replication::sweep_bench(args, report)
                .await
                .context("replication sweep failed")?;
        }
        if args.only.contains(&Bench::CatchUp) {
            replication::catchup_bench(args, report)
                .await
                .context("replication catch-up benchmark failed")?;
        }
    }
    if args.only.contains(&Bench::Vault) {
        vault::vault_bench(args, report)
            .await
            .context("vault benchmark failed")?;
    }
    if args.only.contains(&Bench::OpenBao) {
        openbao::openbao_bench(args, report)
            .await
            .context("openbao benchmark failed")?;
    }
    if args.only.contains(&Bench::Nodes) {
        nodes::nodes_bench(args, report)
            .await
            .context("nodes benchmark failed")?;
    }
    if args.only.contains(&Bench::Operator) {
        operator::operator_bench(args, report)
            .await
            .context("operator benchmark failed")?;
    }
    if args.only.contains(&Bench::Kube) {
        kube::kube_bench(args, report)
            .await
            .context("kube benchmark failed")?;
    }
    Ok(())
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut report = match Report::open(args.quick) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "ferry-bench: {:?}, {}s per write and lag case, keys {:?}, {} CPUs",
        args.only,
        args.seconds,
        args.keys,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let started = Instant::now();
    // Dropping the benchmark on Ctrl-C or SIGTERM stops the etcd and sidecar processes it owns.
    let outcome = tokio::select! {
        outcome = run(&args, &mut report) => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    report.print_table();
    println!("total time {:.0}s", started.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
