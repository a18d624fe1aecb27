//! The `nodes` benchmark: several nodes in one cluster (one etcd; three nodes, each a
//! ferry-sidecar and its ferry-vault, `ferry_tests::region_nodes`).
//!
//! * Failover: two clients write KV secrets through the two performance standbys (forwarded to
//!   the active node), one write at a time each; the active node is killed with `kill -9`. The
//!   time from the kill to the first write sent after it and acknowledged, over [`RUNS`] fresh
//!   clusters, p50 and max, at the default fence lease (5 s, the sidecar's and the chart's) and
//!   at 10 s (a longer lease, for an etcd that stalls; reported without a target, which it cannot
//!   meet); target ≤10 s at the default. Then every acknowledged write is read back on the new
//!   active node: writes lost (target 0).
//! * Reads served by standbys: [`CLIENTS`] clients read KV secrets for `--seconds` from one node,
//!   then spread over the three nodes, then from one node again (the two one-node slices'
//!   difference is the machine's noise). Reads a second of three nodes against one, and the CPU
//!   time per read of every process (each ferry-vault, each sidecar, etcd) in each slice, from
//!   `/proc`. On two cores the ratio is bounded by CPU: it is reported, with no target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_tests::http::JsonClient;
use ferry_tests::region_nodes::NodeRegion;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::args::Args;
use crate::common::median;
use crate::procfs::process_cpu_seconds;
use crate::report::{Report, Row, Target, round};

const ROOT_TOKEN: &str = "hvs.bench-nodes-root";
/// Fresh clusters per failover case (3 with `--quick`).
const RUNS: usize = 5;
/// Fence leases measured: the default, and a longer one.
const LEASES: [u64; 2] = [5, 10];
/// Concurrent readers in the read cases.
const CLIENTS: usize = 16;
/// Secrets the readers cycle through.
const PATHS: usize = 200;
const WARMUP: Duration = Duration::from_millis(500);

pub async fn nodes_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let runs = if args.quick { 3 } else { RUNS };
    for lease in LEASES {
        failover_case(lease, runs, report).await?;
    }
    reads_case(args.seconds, report).await
}

/// Acknowledged writes: key, when sent, when acknowledged.
type Acks = Arc<Mutex<Vec<(u64, Instant, Instant)>>>;

/// One failover: seconds from the kill to the first acknowledged write sent after it, and how
/// many acknowledged writes the new active node lacks.
async fn failover_once(lease: u64) -> anyhow::Result<(f64, usize, usize)> {
    let ttl = format!("--fence-ttl-seconds={lease}");
    let mut region = NodeRegion::start("bench", 3, Some(ROOT_TOKEN), &[&ttl]).await?;
    let acks: Acks = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, node) in region.nodes[1..].iter().enumerate() {
        let (api, acks, stop) = (node.vault_api(ROOT_TOKEN), acks.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = w as u64;
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    api.post(
                        &format!("/v1/secret/data/failover/{n}"),
                        json!({ "data": { "n": n } }),
                    ),
                )
                .await;
                if matches!(answer, Ok(Ok(ref a)) if a.status == 200) {
                    acks.lock().await.push((n, sent, Instant::now()));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n += 2;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let acked_after = |after: Instant, at_least: usize| {
        let acks = acks.clone();
        async move {
            ferry_tests::wait_for(
                &format!("{at_least} writes acknowledged"),
                Duration::from_secs(60),
                || async {
                    let a = acks.lock().await;
                    (a.iter().filter(|(_, s, _)| *s > after).count() >= at_least).then_some(())
                },
            )
            .await
        }
    };
    acked_after(Instant::now(), 20).await?;
    region.nodes[0].kill();
    let killed = Instant::now();
    acked_after(killed, 1).await?;
    let first = acks
        .lock()
        .await
        .iter()
        .filter(|(_, sent, _)| *sent > killed)
        .map(|(_, _, acked)| *acked - killed)
        .min()
        .context("no write after the kill")?;
    acked_after(killed, 20).await?;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await?;
    }
    let active = region.active(Duration::from_secs(30)).await?;
    let api = region.nodes[active].vault_api(ROOT_TOKEN);
    let acked = acks.lock().await.clone();
    let mut lost = 0;
    for (n, _, _) in &acked {
        let r = api.get(&format!("/v1/secret/data/failover/{n}")).await?;
        if r.status != 200 || r.body["data"]["data"]["n"] != *n {
            lost += 1;
        }
    }
    Ok((first.as_secs_f64(), lost, acked.len()))
}

async fn failover_case(lease: u64, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let mut seconds = Vec::new();
    let (mut lost, mut acked) = (0, 0);
    for run in 1..=runs {
        let (s, l, a) = failover_once(lease)
            .await
            .with_context(|| format!("failover run {run} with a {lease} s lease"))?;
        eprintln!(
            "nodes: failover with a {lease} s lease, run {run}: first write {s:.3} s after kill -9, {l} of {a} acknowledged writes lost"
        );
        seconds.push(s);
        lost += l;
        acked += a;
    }
    let max = seconds.iter().copied().fold(0.0, f64::max);
    let case = |what: &str| format!("failover_lease_{lease}s_{what}");
    let samples: Vec<Value> = seconds.iter().map(|s| json!(round(*s))).collect();
    // The target is the default lease's; the longer lease's rows are reported for comparison.
    let within = |row: Row| {
        if lease == LEASES[0] {
            row.target(Target::AtMost(10.0))
        } else {
            row
        }
    };
    report.add(within(
        Row::new(
            "nodes",
            case("p50"),
            "p50_seconds",
            round(median(&seconds)),
            "s",
        )
        .extra("runs", runs as u64)
        .extra("samples", samples),
    ))?;
    report.add(within(
        Row::new("nodes", case("max"), "max_seconds", round(max), "s").extra("runs", runs as u64),
    ))?;
    report.add(
        Row::new(
            "nodes",
            case("writes_lost"),
            "writes_lost",
            lost as f64,
            "writes",
        )
        .target(Target::AtMost(0.0))
        .extra("acknowledged", acked as u64),
    )?;
    Ok(())
}

/// The processes of a region, by name, for CPU accounting.
fn processes(region: &NodeRegion) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for node in &region.nodes {
        if let Some(pid) = node.vault.as_ref().and_then(|v| v.pid()) {
            out.push((format!("{} ferry-vault", node.id), pid));
        }
        if let Some(pid) = node.sidecar.pid() {
            out.push((format!("{} ferry-sidecar", node.id), pid));
        }
    }
    if let Some(pid) = region.etcd.pid() {
        out.push(("etcd".into(), pid));
    }
    out
}

fn cpu_of(processes: &[(String, u32)]) -> BTreeMap<String, f64> {
    processes
        .iter()
        .map(|(name, pid)| (name.clone(), process_cpu_seconds(*pid).unwrap_or(f64::NAN)))
        .collect()
}

/// What one read slice measured: reads, seconds, CPU seconds per process.
struct Slice {
    reads: u64,
    seconds: f64,
    cpu: BTreeMap<String, f64>,
}

impl Slice {
    fn per_second(&self) -> f64 {
        self.reads as f64 / self.seconds
    }

    /// CPU milliseconds per read, per process (processes that did nothing omitted).
    fn cpu_ms_per_read(&self) -> Value {
        let per: serde_json::Map<String, Value> = self
            .cpu
            .iter()
            .filter(|(_, s)| **s > 0.0)
            .map(|(name, s)| (name.clone(), json!(round(s * 1000.0 / self.reads as f64))))
            .collect();
        Value::Object(per)
    }

    fn total_cpu_ms_per_read(&self) -> f64 {
        self.cpu.values().sum::<f64>() * 1000.0 / self.reads as f64
    }
}

/// `CLIENTS` readers over `apis` (reader `i` on `apis[i % len]`) for a warm-up, then `seconds`.
async fn read_slice(
    apis: &[JsonClient],
    seconds: f64,
    processes: &[(String, u32)],
) -> anyhow::Result<Slice> {
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let api = apis[client % apis.len()].clone();
            tokio::spawn(async move {
                let (mut reads, mut n) = (0u64, client);
                loop {
                    let now = Instant::now();
                    if now >= end {
                        return Ok::<u64, anyhow::Error>(reads);
                    }
                    let r = api
                        .get(&format!("/v1/secret/data/read/{}", n % PATHS))
                        .await?;
                    anyhow::ensure!(r.status == 200, "read failed: HTTP {}", r.status);
                    if now >= start {
                        reads += 1;
                    }
                    n += 7;
                }
            })
        })
        .collect();
    tokio::time::sleep_until(start.into()).await;
    let before = cpu_of(processes);
    let mut reads = 0;
    for t in tasks {
        reads += t.await??;
    }
    let after = cpu_of(processes);
    let cpu = after
        .iter()
        .map(|(name, a)| (name.clone(), a - before.get(name).copied().unwrap_or(0.0)))
        .collect();
    anyhow::ensure!(reads > 0, "no read completed");
    Ok(Slice {
        reads,
        seconds,
        cpu,
    })
}

async fn reads_case(seconds: f64, report: &mut Report) -> anyhow::Result<()> {
    let region = NodeRegion::start("bench", 3, Some(ROOT_TOKEN), &[]).await?;
    let apis: Vec<JsonClient> = region
        .nodes
        .iter()
        .map(|n| n.vault_api(ROOT_TOKEN))
        .collect();
    for p in 0..PATHS {
        apis[0]
            .post(
                &format!("/v1/secret/data/read/{p}"),
                json!({ "data": { "value": "x".repeat(200) } }),
            )
            .await?
            .ok()?;
    }
    let last = format!("/v1/secret/data/read/{}", PATHS - 1);
    for api in &apis[1..] {
        api.get(&last).await?.ok()?;
    }
    let processes = processes(&region);
    eprintln!("nodes: reads from one node ({CLIENTS} clients, {seconds}s)");
    let one = read_slice(&apis[..1], seconds, &processes).await?;
    eprintln!("nodes: reads spread over three nodes ({CLIENTS} clients, {seconds}s)");
    let three = read_slice(&apis, seconds, &processes).await?;
    eprintln!("nodes: reads from one node again ({CLIENTS} clients, {seconds}s)");
    let again = read_slice(&apis[..1], seconds, &processes).await?;
    let baseline = (one.per_second() + again.per_second()) / 2.0;
    report.add(
        Row::new(
            "nodes",
            "kv_read_3_nodes_vs_1",
            "reads_per_second",
            round(three.per_second()),
            "ops/s",
        )
        .baseline(round(baseline))
        .extra("clients", CLIENTS as u64)
        .extra(
            "cpus",
            std::thread::available_parallelism().map_or(0, |n| n.get()) as u64,
        )
        .extra("cpu_ms_per_read_by_process", three.cpu_ms_per_read())
        .extra("baseline_cpu_ms_per_read_by_process", one.cpu_ms_per_read()),
    )?;
    report.add(
        Row::new(
            "nodes",
            "kv_read_cpu_per_read_3_nodes_vs_1",
            "cpu_ms_per_read",
            round(three.total_cpu_ms_per_read()),
            "ms",
        )
        .baseline(round(one.total_cpu_ms_per_read())),
    )?;
    report.add(
        Row::new(
            "nodes",
            "kv_read_1_node_again",
            "reads_per_second",
            round(again.per_second()),
            "ops/s",
        )
        .baseline(round(one.per_second()))
        .extra(
            "note",
            "the machine's noise: the one-node slice measured again",
        ),
    )?;
    Ok(())
}
