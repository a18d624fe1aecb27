//! The `vault` benchmark: ferry-vault over HTTP on a replication pair (`VaultPair`: two regions,
//! each with its own etcd, sidecar and server).
//!
//! * KV version 2 writes and reads a second, [`CLIENTS`] concurrent clients, on the primary and
//!   on the secondary. Reads on the secondary are compared with reads on the primary; writes
//!   through the secondary (forwarded, each held until it is readable there) with direct writes
//!   on the primary.
//! * transit `encrypt` operations a second on the secondary, against the same on the primary.
//! * Forwarded write latency (one client, p50 and p99) against a direct write on the primary.
//!
//! Cases of a pair run back to back; the primary's writes run once more at the end, and their
//! difference from the first run is the machine's noise.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_tests::http::JsonClient;
use ferry_tests::vault::VaultPair;
use serde_json::json;

use crate::args::Args;
use crate::common::nearest_rank;
use crate::report::{Report, Row, round};

/// Concurrent HTTP clients in the throughput cases.
const CLIENTS: usize = 16;
/// Distinct secrets the write cases cycle through.
const PATHS: usize = 1000;
const WARMUP: Duration = Duration::from_millis(500);

/// What one timed case measured.
struct Measured {
    ops: u64,
    seconds: f64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        nearest_rank(&sorted, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
    }
}

/// The request one client sends on its `n`th turn.
#[derive(Clone, Copy)]
enum Op {
    KvWrite,
    KvRead,
    Encrypt,
}

async fn once(api: &JsonClient, op: Op, client: usize, n: u64) -> anyhow::Result<()> {
    let path = (client * 7919 + n as usize) % PATHS;
    let r = match op {
        Op::KvWrite => {
            api.post(
                &format!("/v1/secret/data/bench/{path}"),
                json!({ "data": { "value": format!("{client}-{n}"), "pad": "x".repeat(200) } }),
            )
            .await?
        }
        Op::KvRead => api.get(&format!("/v1/secret/data/bench/{path}")).await?,
        Op::Encrypt => {
            api.post(
                "/v1/transit/encrypt/bench",
                json!({ "plaintext": "aGVsbG8gZmVycnksIGEgMjU2LWJ5dGUtaXNoIHBheWxvYWQ=" }),
            )
            .await?
        }
    };
    anyhow::ensure!(r.status == 200, "HTTP {}: {}", r.status, r.body);
    anyhow::ensure!(
        r.body["warnings"].is_null(),
        "a forwarded write was not readable within 2 s: {}",
        r.body["warnings"]
    );
    Ok(())
}

/// `clients` concurrent loops of `op` against `api` for a warm-up, then `seconds`.
async fn drive(api: &JsonClient, op: Op, clients: usize, seconds: f64) -> Measured {
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let api = api.clone();
            tokio::spawn(async move {
                let mut m = Measured {
                    ops: 0,
                    seconds,
                    errors: 0,
                    first_error: None,
                    latencies_us: Vec::new(),
                };
                let mut n = 0u64;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let result = once(&api, op, client, n).await;
                    n += 1;
                    if began < start {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            m.ops += 1;
                            m.latencies_us.push(began.elapsed().as_micros() as u64);
                        }
                        Err(e) => {
                            m.errors += 1;
                            m.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                m
            })
        })
        .collect();
    let mut total = Measured {
        ops: 0,
        seconds,
        errors: 0,
        first_error: None,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let m = task.await.expect("a client task panicked");
        total.ops += m.ops;
        total.errors += m.errors;
        total.first_error = total.first_error.or(m.first_error);
        total.latencies_us.extend(m.latencies_us);
    }
    total
}

/// Runs one case and fails the benchmark if any request failed.
async fn case(
    name: &str,
    api: &JsonClient,
    op: Op,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Measured> {
    eprintln!("vault: {name} ({clients} clients, {seconds}s)");
    let m = drive(api, op, clients, seconds).await;
    if let Some(e) = &m.first_error {
        anyhow::bail!(
            "{name}: {} of {} requests failed, first: {e}",
            m.errors,
            m.ops + m.errors
        );
    }
    anyhow::ensure!(m.ops > 0, "{name}: nothing completed");
    Ok(m)
}

pub async fn vault_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await.context("starting the pair")?;
    let (west, east) = (pair.west_root(), pair.east_root());
    let seconds = args.seconds;
    // Data to read, and the transit key, on both sides before measuring.
    for path in 0..PATHS {
        west.post(
            &format!("/v1/secret/data/bench/{path}"),
            json!({ "data": { "value": "seed" } }),
        )
        .await?
        .ok()?;
    }
    west.post("/v1/transit/keys/bench", json!({})).await?.ok()?;
    let last = format!("/v1/secret/data/bench/{}", PATHS - 1);
    ferry_tests::wait_for(
        "the secondary to have the seeded data",
        Duration::from_secs(60),
        || {
            let east = east.clone();
            let last = last.clone();
            async move {
                let seeded = east.get(&last).await.ok()?.status == 200;
                let key = east.get("/v1/transit/keys/bench").await.ok()?.status == 200;
                (seeded && key).then_some(())
            }
        },
    )
    .await?;

    let writes_west = case("kv write, primary", &west, Op::KvWrite, CLIENTS, seconds).await?;
    let writes_east = case(
        "kv write through the secondary",
        &east,
        Op::KvWrite,
        CLIENTS,
        seconds,
    )
    .await?;
    let reads_west = case("kv read, primary", &west, Op::KvRead, CLIENTS, seconds).await?;
    let reads_east = case("kv read, secondary", &east, Op::KvRead, CLIENTS, seconds).await?;
    let enc_west = case(
        "transit encrypt, primary",
        &west,
        Op::Encrypt,
        CLIENTS,
        seconds,
    )
    .await?;
    let enc_east = case(
        "transit encrypt, secondary",
        &east,
        Op::Encrypt,
        CLIENTS,
        seconds,
    )
    .await?;
    let direct = case("kv write latency, primary", &west, Op::KvWrite, 1, seconds).await?;
    let forwarded = case(
        "kv write latency, forwarded",
        &east,
        Op::KvWrite,
        1,
        seconds,
    )
    .await?;
    let noise = case(
        "kv write, primary (again)",
        &west,
        Op::KvWrite,
        CLIENTS,
        seconds,
    )
    .await?;

    let bench = "vault";
    let rate = |case: &str, m: &Measured, baseline: Option<&Measured>| {
        let mut row = Row::new(
            bench,
            case,
            "ops_per_second",
            round(m.per_second()),
            "ops/s",
        )
        .extra("clients", CLIENTS as u64)
        .extra("p50_ms", round(m.percentile_ms(0.5)))
        .extra("p99_ms", round(m.percentile_ms(0.99)));
        if let Some(b) = baseline {
            row = row.baseline(round(b.per_second()));
        }
        row
    };
    report.add(rate("kv_write_primary", &writes_west, None))?;
    report.add(rate(
        "kv_write_secondary_forwarded",
        &writes_east,
        Some(&writes_west),
    ))?;
    report.add(rate("kv_read_primary", &reads_west, None))?;
    report.add(rate("kv_read_secondary", &reads_east, Some(&reads_west)))?;
    report.add(rate("transit_encrypt_primary", &enc_west, None))?;
    report.add(rate(
        "transit_encrypt_secondary",
        &enc_east,
        Some(&enc_west),
    ))?;
    for (p, metric) in [(0.5, "p50_ms"), (0.99, "p99_ms")] {
        report.add(
            Row::new(
                bench,
                format!("kv_write_latency_forwarded_{}", &metric[..3]),
                metric,
                round(forwarded.percentile_ms(p)),
                "ms",
            )
            .baseline(round(direct.percentile_ms(p)))
            .extra("baseline_case", "kv_write_latency_primary"),
        )?;
    }
    report.add(
        rate("kv_write_primary_again", &noise, Some(&writes_west))
            .extra("note", "the machine's noise: the first case measured again"),
    )?;
    Ok(())
}
