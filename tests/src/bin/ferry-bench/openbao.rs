//! The `openbao` benchmark: ferry-vault against OpenBao, the server a user would run instead of
//! it, side by side in one run on this machine with one client.
//!
//! * OpenBao 2.7.2 (`bao`, as `make setup` caches it): one node, integrated storage (raft), KV
//!   version 2 at `secret/` and transit at `transit/` enabled by the benchmark.
//! * ferry-vault: a release primary replicating to a secondary (`VaultPair`: two regions, each
//!   with its own etcd, sidecar and server). The secondary must hold the primary's last writes
//!   after the write case, so the primary's writes are measured with replication running.
//!
//! The client is `wrk` (16 connections, one thread, `--latency`) with a Lua script written by the
//! benchmark: after a 1 s warm-up, each case runs `--seconds` against OpenBao, then against
//! ferry-vault. The requests are those of an application token holding one ACL policy: KV v2
//! writes and reads over 1,000 keys with 200-byte values (all written before measuring, so every
//! read finds its secret), transit encryptions of 200 bytes, token creation (a child of the
//! application token, with its policy) and lookup (`auth/token/lookup` with a token in the
//! body). The KV cases run once more with the root token (`kv_read_root`, `kv_write_root`):
//! OpenBao skips the ACL for it and serves it about three times faster, so issue 19's targets
//! are checked against both. The script counts non-2xx answers; a case with more than 0.1% of
//! them or of socket errors fails, with the first error's body.
//!
//! For each case: requests a second (ferry-vault against OpenBao; targets from issue 19: reads
//! ≥2×, writes ≥1×, with either token), p50 and p99 latency from wrk's distribution, and CPU
//! time per request of each process from `/proc/<pid>/stat` before and after: `bao`; the
//! primary's ferry-vault, sidecar and etcd; the secondary's three summed. On a shared two-core
//! machine the servers' CPU per request is steadier than their rates, and says where time goes.
//!
//! OpenBao's read case runs first and again last in the run; the second against the first is the
//! machine's noise (OpenBao has taken the writes and tokens of every case in between). The
//! resident set of the primary's ferry-vault after the read cases is reported as `read_cache`,
//! with the read cache's budget (its default `--read-cache-bytes`). Then a million distinct
//! paths are read (KV reads of secrets never written, each a 404 that leaves an absent path in
//! the cache): `read_cache_1m_bytes` is the cache's own count (target: within its budget) and
//! `read_cache_1m_vmrss` the process's resident set against before them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use ferry_tests::http::JsonClient;
use ferry_tests::openbao::OpenBao;
use ferry_tests::vault::{VaultPair, WEST_ROOT_TOKEN, token_with_policy};
use ferry_tests::wait_for;
use serde_json::{Value, json};

mod read_cache;

use read_cache::{read_cache_at_a_million, read_cache_budget, vmrss_mib};

use crate::args::Args;
use crate::procfs::process_cpu_seconds;
use crate::report::{Report, Row, Target, round};
use crate::wrk::{self, CONNECTIONS, THREADS, WrkOutcome};

const BENCH: &str = "openbao";
/// Secrets written before measuring; the KV cases cycle through them.
const KEYS: usize = 1000;
const VALUE_BYTES: usize = 200;
const WARMUP_SECONDS: u64 = 1;
/// Concurrent writers filling the keys before measuring.
const FILLERS: usize = 16;
/// The ACL policy of the application token every case uses.
const POLICY: &str = r#"
path "secret/data/bench/*" { capabilities = ["create", "read", "update"] }
path "transit/encrypt/bench" { capabilities = ["update"] }
path "auth/token/create" { capabilities = ["update"] }
path "auth/token/lookup" { capabilities = ["update"] }
"#;

/// The measured requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    KvWrite,
    KvRead,
    /// KV v2 writes with the root token, which skips the ACL check.
    KvWriteRoot,
    /// KV v2 reads with the root token.
    KvReadRoot,
    TransitEncrypt,
    TokenCreate,
    TokenLookup,
}

impl Case {
    /// In the order they run; the read case first, so that OpenBao's first case is a read.
    const ALL: [Case; 7] = [
        Case::KvRead,
        Case::KvReadRoot,
        Case::KvWrite,
        Case::KvWriteRoot,
        Case::TransitEncrypt,
        Case::TokenCreate,
        Case::TokenLookup,
    ];

    /// The row name.
    fn name(self) -> &'static str {
        match self {
            Case::KvWriteRoot => "kv_write_root",
            Case::KvReadRoot => "kv_read_root",
            other => other.request(),
        }
    }

    /// The request, as the script knows it.
    fn request(self) -> &'static str {
        match self {
            Case::KvWrite | Case::KvWriteRoot => "kv_write",
            Case::KvRead | Case::KvReadRoot => "kv_read",
            Case::TransitEncrypt => "transit_encrypt",
            Case::TokenCreate => "token_create",
            Case::TokenLookup => "token_lookup",
        }
    }

    /// Issue 19's target for ferry-vault's rate against OpenBao's.
    fn target(self) -> Option<Target> {
        match self {
            Case::KvRead | Case::KvReadRoot => Some(Target::RatioAtLeast(2.0)),
            Case::KvWrite | Case::KvWriteRoot => Some(Target::RatioAtLeast(1.0)),
            _ => None,
        }
    }
}

/// One system as the client sees it: where to send, with which tokens, and which processes
/// serve it (grouped as reported).
struct System {
    name: &'static str,
    url: String,
    /// The application token holding [`POLICY`].
    token: String,
    root_token: String,
    /// The token the lookup case looks up.
    lookup_token: String,
    processes: Vec<(&'static str, Vec<u32>)>,
}

/// One case measured on one system.
struct Measured {
    wrk: WrkOutcome,
    /// CPU seconds of each process group while the case ran, in [`System::processes`]' order.
    cpu: Vec<(&'static str, f64)>,
    /// wrk's own CPU seconds.
    client_cpu: f64,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.wrk.requests as f64 / (self.wrk.duration_us as f64 / 1e6)
    }

    fn p50_ms(&self) -> f64 {
        self.wrk.p50_us / 1000.0
    }

    fn p99_ms(&self) -> f64 {
        self.wrk.p99_us / 1000.0
    }

    fn cpu_us_per_request(&self, seconds: f64) -> f64 {
        seconds * 1e6 / self.wrk.requests as f64
    }

    fn total_cpu_us_per_request(&self) -> f64 {
        self.cpu_us_per_request(self.cpu.iter().map(|(_, s)| s).sum())
    }

    /// CPU µs per request of each process group, as a JSON object.
    fn cpu_breakdown(&self) -> Value {
        Value::Object(
            self.cpu
                .iter()
                .map(|(name, s)| {
                    (
                        (*name).to_owned(),
                        json!(round(self.cpu_us_per_request(*s))),
                    )
                })
                .collect(),
        )
    }
}

fn cpu_of(system: &System) -> Vec<(&'static str, f64)> {
    system
        .processes
        .iter()
        .map(|(name, pids)| {
            let seconds = pids
                .iter()
                .map(|pid| process_cpu_seconds(*pid).unwrap_or(f64::NAN))
                .sum();
            (*name, seconds)
        })
        .collect()
}

/// A warm-up, then the measured run with each process's CPU time read around it.
async fn measure(
    dir: &Path,
    system: &System,
    case: Case,
    seconds: u64,
) -> anyhow::Result<Measured> {
    let what = format!("{} {}", system.name, case.name());
    eprintln!("openbao: {what} ({CONNECTIONS} connections, {seconds}s)");
    let plaintext = base64::engine::general_purpose::STANDARD.encode([0x5a; VALUE_BYTES]);
    let requests = wrk::Requests {
        request: case.request(),
        token: match case {
            Case::KvReadRoot | Case::KvWriteRoot => &system.root_token,
            _ => &system.token,
        },
        lookup_token: &system.lookup_token,
        keys: KEYS,
        plaintext: &plaintext,
        offset: 0,
    };
    let log = format!("wrk-{}-{}.log", system.name, case.name());
    let (warmup, _) = wrk::run(dir, &log, &system.url, WARMUP_SECONDS, &requests).await?;
    warmup.check(&format!("{what} (warm-up)"))?;
    let before = cpu_of(system);
    let (wrk, client_cpu) = wrk::run(dir, &log, &system.url, seconds, &requests).await?;
    let after = cpu_of(system);
    wrk.check(&what)?;
    let cpu = after
        .iter()
        .zip(&before)
        .map(|((name, a), (_, b))| (*name, a - b))
        .collect();
    let measured = Measured {
        wrk,
        cpu,
        client_cpu,
    };
    eprintln!(
        "  {what}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {:.0} µs CPU a request {}",
        measured.per_second(),
        measured.p50_ms(),
        measured.p99_ms(),
        measured.total_cpu_us_per_request(),
        measured.cpu_breakdown()
    );
    Ok(measured)
}

/// The policy, the application token and a token to look up, the transit key, and every key
/// written once; returns (application token, token to look up).
async fn prepare(root: &JsonClient) -> anyhow::Result<(String, String)> {
    let token = token_with_policy(root, "bench", POLICY).await?;
    let app = root.with_token(&token);
    let lookup = app
        .post("/v1/auth/token/create", json!({ "policies": ["bench"] }))
        .await?
        .ok()?
        .body["auth"]["client_token"]
        .as_str()
        .context("no client_token in auth/token/create's answer")?
        .to_owned();
    root.post("/v1/transit/keys/bench", json!({}))
        .await?
        .ok()
        .context("failed to create the transit key")?;
    let fillers: Vec<_> = (0..FILLERS)
        .map(|filler| {
            let app = app.clone();
            tokio::spawn(async move {
                for key in (filler..KEYS).step_by(FILLERS) {
                    app.post(
                        &format!("/v1/secret/data/bench/{key}"),
                        json!({ "data": { "value": "s".repeat(VALUE_BYTES) } }),
                    )
                    .await?
                    .ok()
                    .with_context(|| format!("failed to write secret/data/bench/{key}"))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for filler in fillers {
        filler.await??;
    }
    // The application token reads what it wrote: every read case's answer is a secret.
    let read = app.get("/v1/secret/data/bench/0").await?.ok()?;
    ensure!(
        read.body["data"]["data"]["value"].as_str().map(str::len) == Some(VALUE_BYTES),
        "secret/data/bench/0 does not hold what was written: {}",
        read.body
    );
    Ok((token, lookup))
}

/// Enables KV v2 at `secret/` and transit at `transit/` on a fresh OpenBao, waits until KV v2
/// takes writes (its mount finishes setting up in the background), then [`prepare`]s it.
async fn openbao_system(bao: &OpenBao) -> anyhow::Result<System> {
    let root = bao.root();
    root.post(
        "/v1/sys/mounts/secret",
        json!({ "type": "kv", "options": { "version": "2" } }),
    )
    .await?
    .ok()
    .context("failed to enable KV v2 on OpenBao")?;
    root.post("/v1/sys/mounts/transit", json!({ "type": "transit" }))
        .await?
        .ok()
        .context("failed to enable transit on OpenBao")?;
    wait_for(
        "OpenBao's KV v2 mount to take writes",
        Duration::from_secs(30),
        || {
            let root = root.clone();
            async move {
                let r = root
                    .post(
                        "/v1/secret/data/ready",
                        json!({ "data": { "ready": true } }),
                    )
                    .await
                    .ok()?;
                (r.status == 200).then_some(())
            }
        },
    )
    .await?;
    let (token, lookup_token) = prepare(&root).await?;
    Ok(System {
        name: "openbao",
        url: bao.addr().to_owned(),
        token,
        root_token: bao.root_token().to_owned(),
        lookup_token,
        processes: vec![("bao", vec![bao.pid().context("bao is not running")?])],
    })
}

async fn ferry_system(pair: &VaultPair) -> anyhow::Result<System> {
    let (token, lookup_token) = prepare(&pair.west_root()).await?;
    let pid = |what: &str, pid: Option<u32>| pid.with_context(|| format!("{what} is not running"));
    let secondary = vec![
        pid("the secondary's ferry-vault", pair.east_vault.pid())?,
        pid("the secondary's sidecar", pair.east.sidecar.pid())?,
        pid("the secondary's etcd", pair.east.etcd.pid())?,
    ];
    Ok(System {
        name: "ferry",
        url: pair.west_vault.api.base().to_owned(),
        token,
        root_token: WEST_ROOT_TOKEN.to_owned(),
        lookup_token,
        processes: vec![
            (
                "ferry-vault",
                vec![pid("ferry-vault", pair.west_vault.pid())?],
            ),
            (
                "sidecar",
                vec![pid("the sidecar", pair.west.sidecar.pid())?],
            ),
            ("etcd", vec![pid("etcd", pair.west.etcd.pid())?]),
            ("secondary", secondary),
        ],
    })
}

/// Waits until the secondary reads the primary's current version of a few of the secrets the
/// write case overwrote; returns how long that took.
async fn wait_replicated(pair: &VaultPair) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (west, east) = (pair.west_root(), pair.east_root());
    for key in [0, KEYS / 2, KEYS - 1] {
        let path = format!("/v1/secret/data/bench/{key}");
        let written = west.get(&path).await?.ok()?.body["data"].clone();
        ensure!(
            written["metadata"]["version"].as_u64() > Some(1),
            "the write case did not overwrite {path}: {written}"
        );
        wait_for(
            "the secondary to read the primary's last writes",
            ferry_tests::region::REPLICATION_TIMEOUT,
            || {
                let (east, path, written) = (east.clone(), path.clone(), written.clone());
                async move {
                    let r = east.get(&path).await.ok()?;
                    (r.status == 200
                        && r.body["data"]["data"] == written["data"]
                        && r.body["data"]["metadata"]["version"] == written["metadata"]["version"])
                        .then_some(())
                }
            },
        )
        .await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The rows of one case: ferry-vault's rate, latency and CPU against OpenBao's, and ferry's CPU
/// by process.
fn add_case(
    report: &mut Report,
    case: Case,
    ferry: &Measured,
    bao: &Measured,
    replicated_s: Option<f64>,
) -> anyhow::Result<()> {
    let name = case.name();
    let mut rate = Row::new(
        BENCH,
        name,
        "ops_per_second",
        round(ferry.per_second()),
        "ops/s",
    )
    .baseline(round(bao.per_second()))
    .extra("baseline_system", "openbao 2.7.2, one node, raft")
    .extra(
        "system",
        "ferry-vault primary, release, replicating to a secondary",
    )
    .extra("connections", CONNECTIONS)
    .extra("threads", THREADS)
    .extra("requests", ferry.wrk.requests)
    .extra("baseline_requests", bao.wrk.requests)
    .extra(
        "client_cpu_us_per_request",
        round(ferry.cpu_us_per_request(ferry.client_cpu)),
    )
    .extra(
        "baseline_client_cpu_us_per_request",
        round(bao.cpu_us_per_request(bao.client_cpu)),
    );
    if let Some(target) = case.target() {
        rate = rate.target(target);
    }
    if let Some(s) = replicated_s {
        rate = rate.extra("secondary_caught_up_seconds", round(s));
    }
    report.add(rate)?;
    for (suffix, metric, value, baseline) in [
        ("p50", "p50_ms", ferry.p50_ms(), bao.p50_ms()),
        ("p99", "p99_ms", ferry.p99_ms(), bao.p99_ms()),
    ] {
        report.add(
            Row::new(
                BENCH,
                format!("{name}_{suffix}"),
                metric,
                round(value),
                "ms",
            )
            .baseline(round(baseline)),
        )?;
    }
    report.add(
        Row::new(
            BENCH,
            format!("{name}_cpu"),
            "cpu_us_per_request",
            round(ferry.total_cpu_us_per_request()),
            "µs",
        )
        .baseline(round(bao.total_cpu_us_per_request()))
        .extra("note", "all six ferry processes against bao")
        .extra("cpu_us_per_request_by_process", ferry.cpu_breakdown())
        .extra(
            "baseline_cpu_us_per_request_by_process",
            bao.cpu_breakdown(),
        ),
    )?;
    for (process, seconds) in &ferry.cpu {
        report.add(Row::new(
            BENCH,
            format!("{name}_cpu_{process}"),
            "cpu_us_per_request",
            round(ferry.cpu_us_per_request(*seconds)),
            "µs",
        ))?;
    }
    Ok(())
}

pub async fn openbao_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: run `make setup` (Debian package wrk)");
    }
    let seconds = args.seconds.ceil() as u64;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-openbao-")
        .tempdir()?;
    wrk::write_script(dir.path(), VALUE_BYTES)?;
    let bao_dir: PathBuf = dir.path().join("bao");
    std::fs::create_dir_all(&bao_dir)?;

    let bao = OpenBao::start(&bao_dir).await.context("starting OpenBao")?;
    let bao_system = openbao_system(&bao).await?;
    let mut bao_results = BTreeMap::new();
    for case in Case::ALL {
        let m = measure(dir.path(), &bao_system, case, seconds)
            .await
            .with_context(|| bao.log_tail(20))?;
        bao_results.insert(case, m);
    }
    let bao_rss = vmrss_mib(bao.pid())?;

    {
        let pair = VaultPair::start(&[])
            .await
            .context("starting the ferry-vault pair")?;
        let ferry = ferry_system(&pair).await?;
        for case in Case::ALL {
            let m = measure(dir.path(), &ferry, case, seconds)
                .await
                .with_context(|| pair.west_vault.log())?;
            let mut replicated = None;
            if matches!(case, Case::KvWrite | Case::KvWriteRoot) {
                replicated = Some(wait_replicated(&pair).await?);
            }
            add_case(report, case, &m, &bao_results[&case], replicated)?;
            if case == Case::KvReadRoot {
                let mut row = Row::new(
                    BENCH,
                    "read_cache",
                    "vmrss_mib",
                    round(vmrss_mib(pair.west_vault.pid())?),
                    "MiB",
                )
                .extra("note", "the primary's ferry-vault after the read cases")
                .extra("keys", KEYS as u64)
                .extra("openbao_vmrss_mib", round(bao_rss));
                row = row.extra("read_cache_bytes", read_cache_budget()?);
                report.add(row)?;
            }
        }
        read_cache_at_a_million(dir.path(), &pair, &ferry, seconds, report).await?;
        // The pair stops here, before OpenBao's last case.
    }

    let again = measure(dir.path(), &bao_system, Case::KvRead, seconds)
        .await
        .with_context(|| bao.log_tail(20))?;
    let first = &bao_results[&Case::KvRead];
    report.add(
        Row::new(
            BENCH,
            "openbao_kv_read_again",
            "ops_per_second",
            round(again.per_second()),
            "ops/s",
        )
        .baseline(round(first.per_second()))
        .extra(
            "note",
            "the machine's noise: OpenBao's first case measured again, last in the run",
        )
        .extra("p50_ms", round(again.p50_ms()))
        .extra("p99_ms", round(again.p99_ms()))
        .extra(
            "cpu_us_per_request",
            round(again.total_cpu_us_per_request()),
        ),
    )?;
    Ok(())
}
