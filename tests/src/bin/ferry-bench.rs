//! ferry-bench: Ferry's benchmarks, run by `make bench` on a release build.
//!
//! Every benchmark starts real etcd servers and the real `ferry-sidecar` on loopback through the
//! `ferry_tests` harness, and compares with a peer measured in the same run on the same etcd, so
//! that the machine's speed cancels out of the ratios:
//!
//! * `write`: storage API `Put` throughput (one key per request, 256-byte values) against raw
//!   single-key etcd puts, at 1, 16 and 64 concurrent writers, interleaved per writer count. Raw
//!   puts at 16 writers run once more at the start and at the end: their difference is the
//!   machine's noise.
//! * `recovery`: start-up after a SIGKILL (flushed merkle pages plus WAL redo) against a full
//!   reindex (`--reindex-on-start`), at each `--keys` count, median of three alternating runs.
//!   Both must arrive at the root the sidecar had before the crash.
//! * `memory`: the merkle index's own accounting at the largest key count, cross-checked with
//!   the process's resident set against a sidecar of an empty cluster.
//!
//! Results: a table on stdout, one JSON object per measured case appended to
//! `target/bench/results.jsonl`, progress on stderr.
//!
//! Flags: `--seconds N` (measured time per write case, default 5), `--keys 100000,1000000`
//! (`k`/`M` suffixes allowed), `--quick` (20k keys), `--only write|recovery|memory` (comma
//! separated for several).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use ferry_proto::storage::operation::Op;
use ferry_proto::storage::storage_client::StorageClient;
use ferry_proto::storage::{BatchRequest, Operation, PutRequest, StatusResponse};
use ferry_tests::etcd::{EtcdOptions, EtcdServer};
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::wait_for;
use serde_json::{Map, Value, json};
use tonic::transport::Channel;

/// Where results are appended, relative to the workspace root.
const RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
const VALUE_BYTES: usize = 256;
const WRITER_COUNTS: [usize; 3] = [1, 16, 64];
const NOISE_WRITERS: usize = 16;
/// Puts per `Batch` request while filling (etcd's 128 operations per transaction, less the WAL
/// entry, bound a batch at 127).
const FILL_BATCH: u64 = 120;
const FILLERS: usize = 8;
/// Puts written after the index is flushed, so that recovery has WAL to redo.
const BURST_PUTS: usize = 2000;
const BURST_WRITERS: usize = 16;
const REPEATS: usize = 3;
const DEFAULT_KEYS: [u64; 2] = [100_000, 1_000_000];
const QUICK_KEYS: u64 = 20_000;
const GIB: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;
/// Flush interval of the recovery sidecar: limits flush churn while filling, and leaves the
/// burst before a crash unflushed.
const FLUSH_FLAG: &str = "--merkle-flush-interval-ms=5000";
/// The sidecar renews its fence lease only once start-up is over, and a reindex of a million keys
/// outlasts the default 10 s lease: the sidecar then comes up without its fence and can neither
/// write nor flush. A long lease keeps the recovery benchmark measurable; a SIGKILLed node
/// restarting with the same id reclaims its own fence at once whatever the TTL.
const FENCE_FLAG: &str = "--fence-ttl-seconds=600";
/// Start-up, a fill and a flush of a million keys all fit in this.
const LONG_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bench {
    Write,
    Recovery,
    Memory,
}

#[derive(Debug)]
struct Args {
    seconds: f64,
    keys: Vec<u64>,
    quick: bool,
    only: BTreeSet<Bench>,
}

const USAGE: &str = "usage: ferry-bench [--seconds N] [--keys N[,N...]] [--quick] \
                     [--only write|recovery|memory[,...]]";

fn parse_args(raw: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 5.0,
        keys: Vec::new(),
        quick: false,
        only: BTreeSet::new(),
    };
    let mut raw = raw.into_iter();
    while let Some(arg) = raw.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => raw.next().with_context(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--seconds" => {
                let v = value("--seconds")?;
                args.seconds = v
                    .parse()
                    .with_context(|| format!("--seconds {v:?} is not a number"))?;
                ensure!(
                    args.seconds > 0.0 && args.seconds.is_finite(),
                    "--seconds must be positive"
                );
            }
            "--keys" => {
                for part in value("--keys")?.split(',').filter(|p| !p.is_empty()) {
                    args.keys.push(parse_count(part)?);
                }
            }
            "--quick" => args.quick = true,
            "--only" => {
                for part in value("--only")?.split(',').filter(|p| !p.is_empty()) {
                    args.only.insert(match part {
                        "write" => Bench::Write,
                        "recovery" => Bench::Recovery,
                        "memory" => Bench::Memory,
                        other => bail!("unknown benchmark {other:?}\n{USAGE}"),
                    });
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.keys.is_empty() {
        args.keys = if args.quick {
            vec![QUICK_KEYS]
        } else {
            DEFAULT_KEYS.to_vec()
        };
    }
    if args.only.is_empty() {
        args.only = [Bench::Write, Bench::Recovery, Bench::Memory].into();
    }
    Ok(args)
}

/// `100000`, `100k`, `1M`.
fn parse_count(s: &str) -> anyhow::Result<u64> {
    let (digits, factor) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1_000),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("key count {s:?} is not a number"))?;
    ensure!(n > 0, "key count must be positive");
    Ok(n * factor)
}

/// `20k`, `1M`, `1500`.
fn count_label(n: u64) -> String {
    if n >= 1_000_000 && n.checked_rem(1_000_000) == Some(0) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.checked_rem(1_000) == Some(0) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// What a case should reach.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// value / baseline at least this.
    RatioAtLeast(f64),
    /// value at most this.
    AtMost(f64),
}

impl Target {
    fn describe(&self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥{r}×"),
            Target::AtMost(v) => format!("≤{v} {unit}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Row {
    bench: &'static str,
    case: String,
    metric: &'static str,
    value: f64,
    unit: &'static str,
    baseline: Option<f64>,
    target: Option<Target>,
    extra: Map<String, Value>,
}

impl Row {
    fn new(
        bench: &'static str,
        case: impl Into<String>,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            bench,
            case: case.into(),
            metric,
            value,
            unit,
            baseline: None,
            target: None,
            extra: Map::new(),
        }
    }

    fn baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }

    fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    fn extra(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.value / b)
    }

    fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast(r) => self.ratio().map(|ratio| ratio >= r),
            Target::AtMost(v) => Some(self.value <= v),
        }
    }
}

/// Collects rows, appends each to the results file as it is measured.
struct Report {
    run: u64,
    quick: bool,
    path: PathBuf,
    file: File,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn open(quick: bool) -> anyhow::Result<Self> {
        let dir = PathBuf::from(RESULTS_DIR);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let dir = dir.canonicalize().unwrap_or(dir);
        let path = dir.join("results.jsonl");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            run,
            quick,
            path,
            file,
            rows: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn add(&mut self, row: Row) -> anyhow::Result<()> {
        let mut object = Map::new();
        object.insert("bench".into(), json!(row.bench));
        object.insert("case".into(), json!(row.case));
        object.insert("metric".into(), json!(row.metric));
        object.insert("value".into(), json!(round(row.value)));
        object.insert("unit".into(), json!(row.unit));
        if let Some(baseline) = row.baseline {
            object.insert("baseline".into(), json!(round(baseline)));
        }
        if let Some(ratio) = row.ratio() {
            object.insert("ratio".into(), json!(round(ratio)));
        }
        if let Some(target) = row.target {
            object.insert("target".into(), json!(target.describe(row.unit)));
        }
        if let Some(met) = row.met() {
            object.insert("met".into(), json!(met));
        }
        object.insert("run".into(), json!(self.run));
        object.insert("quick".into(), json!(self.quick));
        object.insert(
            "cpus".into(),
            json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
        );
        for (k, v) in &row.extra {
            object.insert(k.clone(), v.clone());
        }
        let line = serde_json::to_string(&Value::Object(object))?;
        writeln!(self.file, "{line}")
            .with_context(|| format!("failed to append to {}", self.path.display()))?;
        self.file.flush()?;
        eprintln!(
            "  -> {} {}: {} {}{}",
            row.bench,
            row.case,
            format_value(row.value, row.unit),
            row.unit,
            row.ratio()
                .map(|r| format!(" ({r:.2}× baseline)"))
                .unwrap_or_default()
        );
        self.rows.push(row);
        Ok(())
    }

    fn note(&mut self, note: String) {
        eprintln!("note: {note}");
        self.notes.push(note);
    }

    fn print_table(&self) {
        let header = [
            "bench", "case", "value", "unit", "baseline", "ratio", "target", "met?",
        ];
        let cells: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.bench.to_owned(),
                    r.case.clone(),
                    format_value(r.value, r.unit),
                    r.unit.to_owned(),
                    r.baseline
                        .map(|b| format_value(b, r.unit))
                        .unwrap_or_default(),
                    r.ratio().map(|x| format!("{x:.2}×")).unwrap_or_default(),
                    r.target.map(|t| t.describe(r.unit)).unwrap_or_default(),
                    match r.met() {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // Text columns left-aligned, numbers right-aligned.
        let numeric = [false, false, true, false, true, true, false, false];
        let line = |row: &[String]| {
            let mut out = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i > 0 {
                    out.push_str("  ");
                }
                if numeric[i] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.trim_end().to_owned()
        };
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        println!();
        println!("{}", line(&header));
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        println!("{}", "-".repeat(total));
        for row in &cells {
            println!("{}", line(row));
        }
        for note in &self.notes {
            println!("{note}");
        }
        let judged: Vec<bool> = self.rows.iter().filter_map(Row::met).collect();
        if !judged.is_empty() {
            println!(
                "targets met: {}/{}",
                judged.iter().filter(|m| **m).count(),
                judged.len()
            );
        }
        println!("results appended to {}", self.path.display());
    }
}

fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "ops/s" | "keys/s" | "entries" => format!("{v:.0}"),
        "s" => format!("{v:.3}"),
        "%" => format!("{v:.1}"),
        _ => format!("{v:.1}"),
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// A 256-byte value that differs per `seed` (ciphertext-like: no structure to exploit).
fn value_for(seed: u64) -> Vec<u8> {
    let mut state = seed ^ 0x5EED_F3A1_BE7C_0DE5;
    let mut out = Vec::with_capacity(VALUE_BYTES);
    while out.len() < VALUE_BYTES {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(VALUE_BYTES);
    out
}

// ---------------------------------------------------------------------------------------------
// Write throughput

/// One writer's connection: raw etcd or the sidecar's storage API.
#[derive(Clone)]
enum Writer {
    Raw(Box<etcd_client::KvClient>),
    Sidecar(StorageClient<Channel>),
}

impl Writer {
    fn name(&self) -> &'static str {
        match self {
            Writer::Raw(_) => "raw_put",
            Writer::Sidecar(_) => "sidecar_put",
        }
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        match self {
            Writer::Raw(kv) => kv
                .put(format!("/bench-raw/{key}"), value, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Writer::Sidecar(storage) => storage
                .put(PutRequest { key, value })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// What one timed write case measured.
#[derive(Debug)]
struct Throughput {
    ops_per_second: f64,
    ops: u64,
    all_ops: u64,
    errors: u64,
    first_error: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU cores busy on average during the case: etcd, the sidecar, this benchmark.
    cpu_cores: [f64; 3],
    /// The sidecar's transactions per second and puts per transaction.
    transactions: Option<(f64, f64)>,
}

struct WriterOutcome {
    ops: u64,
    /// Puts completed, warm-up included.
    all_ops: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// `writers` tasks, each with its own clone of `writer`, put distinct keys for `warmup` then
/// `measure`; counts the puts completed within the measured window.
async fn timed_puts(
    writer: &Writer,
    writers: usize,
    prefix: &str,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Throughput> {
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + warmup;
    let until = from + measure;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let mut writer = writer.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let value = value_for(w as u64);
            let mut out = WriterOutcome {
                ops: 0,
                all_ops: 0,
                errors: 0,
                first_error: None,
                latencies_us: Vec::new(),
            };
            tokio::time::sleep_until(start.into()).await;
            let mut i = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= until {
                    return out;
                }
                let key = format!("{prefix}/w{w}/k{i}");
                i += 1;
                let result = writer.put(key, value.clone()).await;
                let done = Instant::now();
                match result {
                    Ok(()) => {
                        out.all_ops += 1;
                        if done >= from && done < until {
                            out.ops += 1;
                            out.latencies_us
                                .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                        }
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    let mut ops = 0;
    let mut all_ops = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut latencies = Vec::new();
    for task in tasks {
        let out = task.await.context("writer task panicked")?;
        ops += out.ops;
        all_ops += out.all_ops;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
        latencies.extend(out.latencies_us);
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            f64::NAN
        } else {
            let at = ((latencies.len() as f64 - 1.0) * p).round() as usize;
            f64::from(latencies[at]) / 1000.0
        }
    };
    Ok(Throughput {
        ops_per_second: ops as f64 / measure.as_secs_f64(),
        ops,
        all_ops,
        errors,
        first_error,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_cores: [f64::NAN; 3],
        transactions: None,
    })
}

fn throughput_row(case: String, t: &Throughput, writers: usize, seconds: f64) -> Row {
    let mut row = Row::new("write", case, "throughput", t.ops_per_second, "ops/s")
        .extra("writers", writers)
        .extra("seconds", seconds)
        .extra("ops", t.ops)
        .extra("errors", t.errors)
        .extra("p50_ms", round(t.p50_ms))
        .extra("p99_ms", round(t.p99_ms))
        .extra("etcd_cpu_cores", round(t.cpu_cores[0]))
        .extra("sidecar_cpu_cores", round(t.cpu_cores[1]))
        .extra("bench_cpu_cores", round(t.cpu_cores[2]));
    if let Some((per_second, puts)) = t.transactions {
        row = row
            .extra("etcd_txn_per_second", round(per_second))
            .extra("puts_per_txn", round(puts));
    }
    row
}

/// The processes whose CPU time a write case reports.
struct Procs<'a> {
    etcd: &'a EtcdServer,
    sidecar: &'a Sidecar,
}

/// CPU seconds (user and system) of `etcd`, the sidecar and this process so far.
fn cpu_seconds(procs: &Procs) -> [f64; 3] {
    let pids = [
        procs.etcd.pid(),
        procs.sidecar.pid(),
        Some(std::process::id()),
    ];
    pids.map(|pid| pid.and_then(process_cpu_seconds).unwrap_or(f64::NAN))
}

/// utime + stime of a process, from `/proc/<pid>/stat` (fields 14 and 15, in USER_HZ = 100).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Waits until the sidecar's background work from the previous case (flushing dirty merkle
/// subpages) is done, so that it does not compete with the next case.
async fn quiesce(sidecar: &Sidecar) -> anyhow::Result<()> {
    wait_flushed(sidecar, false).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

async fn run_case(
    report: &mut Report,
    procs: &Procs<'_>,
    writer: &Writer,
    writers: usize,
    case_no: &mut usize,
    args: &Args,
) -> anyhow::Result<Throughput> {
    quiesce(procs.sidecar).await?;
    *case_no += 1;
    let prefix = format!("logical/bench/c{case_no}");
    let warmup = Duration::from_secs_f64((args.seconds / 5.0).clamp(0.2, 1.0));
    let measure = Duration::from_secs_f64(args.seconds);
    eprintln!(
        "write: {} @{writers} for {:.1}s (+{:.1}s warm-up)",
        writer.name(),
        measure.as_secs_f64(),
        warmup.as_secs_f64()
    );
    let wal_before = procs.sidecar.status().await?.last_wal;
    let cpu_before = cpu_seconds(procs);
    let wall = Instant::now();
    let mut t = timed_puts(writer, writers, &prefix, warmup, measure).await?;
    let wall = wall.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(procs);
    for i in 0..3 {
        t.cpu_cores[i] = (cpu_after[i] - cpu_before[i]) / wall;
    }
    if matches!(writer, Writer::Sidecar(_)) {
        let entries = procs.sidecar.status().await?.last_wal - wal_before;
        t.transactions = Some((
            entries as f64 / wall,
            t.all_ops as f64 / entries.max(1) as f64,
        ));
        eprintln!(
            "  {entries} transactions ({:.0}/s), {:.1} puts per transaction",
            entries as f64 / wall,
            t.all_ops as f64 / entries.max(1) as f64
        );
    }
    eprintln!(
        "  {} ops, {} errors, p50 {:.2} ms, p99 {:.2} ms, CPU cores busy: etcd {:.2}, sidecar \
         {:.2}, bench {:.2}",
        t.ops, t.errors, t.p50_ms, t.p99_ms, t.cpu_cores[0], t.cpu_cores[1], t.cpu_cores[2]
    );
    if let Some(e) = &t.first_error {
        report.note(format!(
            "{}@{writers}: {} failed puts, first: {e}",
            writer.name(),
            t.errors
        ));
    }
    ensure!(
        t.ops > 0,
        "{}@{writers} completed no puts (first error: {:?})",
        writer.name(),
        t.first_error
    );
    Ok(t)
}

async fn write_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let etcd = EtcdServer::start_with(EtcdOptions {
        quota_bytes: 8 * GIB,
        auto_compaction: String::new(),
    })?;
    let client = etcd.client().await?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("bench-write", "n1"))
        .await
        .context("failed to start the sidecar for the write benchmark")?;
    let raw = Writer::Raw(Box::new(client.kv_client()));
    let side = Writer::Sidecar(sidecar.storage());
    let procs = Procs {
        etcd: &etcd,
        sidecar: &sidecar,
    };
    let mut case_no = 0;

    let noise_start = run_case(report, &procs, &raw, NOISE_WRITERS, &mut case_no, args).await?;
    for writers in WRITER_COUNTS {
        let r = run_case(report, &procs, &raw, writers, &mut case_no, args).await?;
        let s = run_case(report, &procs, &side, writers, &mut case_no, args).await?;
        report.add(throughput_row(
            format!("raw_put@{writers}"),
            &r,
            writers,
            args.seconds,
        ))?;
        let mut row = throughput_row(format!("sidecar_put@{writers}"), &s, writers, args.seconds)
            .baseline(r.ops_per_second);
        match writers {
            64 => row = row.target(Target::RatioAtLeast(1.5)),
            16 => row = row.target(Target::RatioAtLeast(1.0)),
            _ => {}
        }
        report.add(row)?;
    }
    let noise_end = run_case(report, &procs, &raw, NOISE_WRITERS, &mut case_no, args).await?;

    let (a, b) = (noise_start.ops_per_second, noise_end.ops_per_second);
    let noise = (a - b).abs() / ((a + b) / 2.0) * 100.0;
    report.add(
        Row::new(
            "write",
            format!("noise raw_put@{NOISE_WRITERS}"),
            "relative_difference",
            noise,
            "%",
        )
        .extra("start_ops_per_second", round(a))
        .extra("end_ops_per_second", round(b)),
    )?;
    report.note(format!(
        "machine noise: raw_put@{NOISE_WRITERS} {a:.0} ops/s at the start, {b:.0} ops/s at the end \
         ({noise:.1}% apart)"
    ));
    if let Ok(status) = sidecar.status().await {
        eprintln!(
            "write: sidecar wrote {} WAL entries for {} keys",
            status.last_wal, status.merkle_keys
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Recovery and memory

fn put_op(key: String, value: Vec<u8>) -> Operation {
    Operation {
        op: Some(Op::Put(PutRequest { key, value })),
    }
}

/// Writes `keys` keys through `Batch` requests of [`FILL_BATCH`] puts from [`FILLERS`] tasks.
async fn fill(sidecar: &Sidecar, keys: u64) -> anyhow::Result<f64> {
    let batches = keys.div_ceil(FILL_BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FILLERS {
        let mut storage = sidecar.storage();
        let next = next.clone();
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return Ok::<u64, anyhow::Error>(0);
                }
                let range = b * FILL_BATCH..((b + 1) * FILL_BATCH).min(keys);
                let n = range.end - range.start;
                let operations: Vec<Operation> = range
                    .map(|i| {
                        put_op(
                            format!("logical/bench/fill/{}/k{i}", i / 10_000),
                            value_for(i),
                        )
                    })
                    .collect();
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match storage
                        .batch(BatchRequest {
                            operations: operations.clone(),
                        })
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if attempt < 5 => {
                            eprintln!("fill: batch {b} failed (attempt {attempt}), retrying: {e}");
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => bail!("fill: batch {b} failed {attempt} times: {e}"),
                    }
                }
                written.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let all = join_all(tasks);
    tokio::pin!(all);
    let mut last_report = Instant::now();
    loop {
        tokio::select! {
            result = &mut all => { result?; break; }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = Instant::now();
                    let done = written.load(Ordering::Relaxed);
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "fill: {done}/{keys} keys in {secs:.0}s ({:.0} keys/s)",
                        done as f64 / secs
                    );
                }
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Waits for every task; the first error wins.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>) -> anyhow::Result<()> {
    let mut first_error = None;
    for task in tasks {
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("a task panicked: {e}")),
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// [`BURST_PUTS`] single-key puts of new keys from [`BURST_WRITERS`] tasks.
async fn burst(sidecar: &Sidecar, tag: &str) -> anyhow::Result<()> {
    let per = BURST_PUTS / BURST_WRITERS;
    let mut tasks = Vec::new();
    for w in 0..BURST_WRITERS {
        let mut storage = sidecar.storage();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let key = format!("logical/bench/{tag}/w{w}/k{i}");
                storage
                    .put(PutRequest {
                        key,
                        value: value_for((w * per + i) as u64 + 0xB0057),
                    })
                    .await
                    .with_context(|| format!("burst put {w}/{i} failed"))?;
            }
            Ok(0)
        }));
    }
    join_all(tasks).await
}

/// Waits until every dirty merkle subpage is flushed and the checkpoint reached the last WAL
/// entry. With `written`, the WAL must not be empty.
async fn wait_flushed(sidecar: &Sidecar, written: bool) -> anyhow::Result<(StatusResponse, f64)> {
    let started = Instant::now();
    let admin = sidecar.admin();
    let pid = sidecar.pid().context("the sidecar is not running")?;
    let status = wait_for("the merkle index to be flushed", LONG_TIMEOUT, || {
        let mut admin = admin.clone();
        async move {
            if !alive(pid) {
                return Some(Err(anyhow::anyhow!(
                    "the sidecar (pid {pid}) died while flushing"
                )));
            }
            let s = admin
                .status(ferry_proto::storage::StatusRequest {})
                .await
                .ok()?
                .into_inner();
            if !s.fence_held {
                return Some(Err(anyhow::anyhow!(
                    "the sidecar does not hold its write fence, so it cannot flush (mode {}, \
                     start-up took {:.1}s)",
                    s.startup_mode,
                    s.startup_index_seconds
                )));
            }
            ((s.last_wal > 0 || !written)
                && s.merkle_dirty_subpages == 0
                && s.merkle_checkpoint == s.last_wal)
                .then_some(Ok(s))
        }
    })
    .await??;
    Ok((status, started.elapsed().as_secs_f64()))
}

/// Whether `pid` is running (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Saves the sidecar's whole log next to the results and returns where, with its panics and
/// errors: the last lines of a log are often only a backtrace.
fn save_log(sidecar: &Sidecar, name: &str) -> String {
    let log = sidecar.log();
    let path = PathBuf::from(RESULTS_DIR).join(name);
    let saved = match std::fs::write(&path, &log) {
        Ok(()) => format!("sidecar log saved to {}", path.display()),
        Err(e) => format!("could not save the sidecar log to {}: {e}", path.display()),
    };
    let lines: Vec<&str> = log.lines().collect();
    let mut notable = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            notable.extend(lines[i..(i + 3).min(lines.len())].iter().copied());
        } else if line.contains("ERROR") || line.starts_with("ferry-sidecar:") {
            notable.push(line);
        }
    }
    let skip = notable.len().saturating_sub(20);
    format!("{saved}\n{}", notable[skip..].join("\n"))
}

fn base_args() -> Vec<String> {
    vec![FLUSH_FLAG.to_owned(), FENCE_FLAG.to_owned()]
}

fn reindex_args() -> Vec<String> {
    let mut args = base_args();
    args.push("--reindex-on-start".to_owned());
    args
}

/// A line of `/proc/<pid>/status` in KiB, e.g. `VmRSS`.
fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("{path} has no {field}"))?;
    let kib = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unreadable {field} in {path}: {line:?}"))?;
    Ok(kib)
}

fn mib_of_kib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn check_mode(status: &StatusResponse, want: &str, sidecar: &Sidecar) -> anyhow::Result<()> {
    ensure!(
        status.startup_mode == want,
        "the sidecar started in mode {:?}, expected {want:?}\n{}",
        status.startup_mode,
        sidecar.log_tail(30)
    );
    Ok(())
}

async fn recovery_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let run_recovery = args.only.contains(&Bench::Recovery);
    let run_memory = args.only.contains(&Bench::Memory);
    let largest = *args.keys.iter().max().expect("at least one key count");
    let counts: Vec<u64> = if run_recovery {
        args.keys.clone()
    } else {
        vec![largest]
    };
    for keys in counts {
        let label = count_label(keys);
        eprintln!("recovery: {label} keys: starting etcd and the sidecar");
        let etcd = EtcdServer::start_with(EtcdOptions {
            quota_bytes: 8 * GIB,
            auto_compaction: "1m".into(),
        })?;
        let mut options = SidecarOptions::new("bench-recovery", "n1");
        options.args = base_args();
        options.ready_timeout = LONG_TIMEOUT;
        let mut sidecar = Sidecar::start(&etcd.endpoint(), options)
            .await
            .context("failed to start the sidecar for the recovery benchmark")?;
        let measure_memory = run_memory && keys == largest;
        let outcome = recovery_at(
            report,
            &etcd,
            &mut sidecar,
            keys,
            run_recovery,
            measure_memory,
        )
        .await;
        if let Err(e) = outcome {
            let saved = save_log(
                &sidecar,
                &format!("ferry-sidecar-{}-{label}.log", report.run),
            );
            return Err(e.context(saved));
        }
    }
    Ok(())
}

/// Fills a fresh cluster with `keys` keys, then measures recovery against reindex and, with
/// `measure_memory`, the index's memory.
async fn recovery_at(
    report: &mut Report,
    etcd: &EtcdServer,
    sidecar: &mut Sidecar,
    keys: u64,
    run_recovery: bool,
    measure_memory: bool,
) -> anyhow::Result<()> {
    let label = count_label(keys);
    let fill_seconds = fill(sidecar, keys).await?;
    let (status, flush_seconds) = wait_flushed(sidecar, true).await?;
    eprintln!(
        "recovery: filled {label} keys in {fill_seconds:.1}s ({:.0} keys/s, {} WAL entries), \
         flushed {flush_seconds:.1}s later",
        keys as f64 / fill_seconds,
        status.last_wal
    );
    ensure!(
        status.merkle_keys == keys,
        "the index holds {} keys after filling {keys}",
        status.merkle_keys
    );
    report.add(
        Row::new(
            "recovery",
            format!("fill@{label}"),
            "fill_throughput",
            keys as f64 / fill_seconds,
            "keys/s",
        )
        .extra("keys", keys)
        .extra("seconds", round(fill_seconds))
        .extra("flush_wait_seconds", round(flush_seconds))
        .extra("wal_entries", status.last_wal),
    )?;
    let mut expected_keys = keys;
    let mut reindex_memory = None;

    if run_recovery {
        let mut recovery = Vec::new();
        let mut reindex = Vec::new();
        let mut redo = Vec::new();
        for rep in 0..REPEATS {
            burst(sidecar, &format!("burst{rep}")).await?;
            expected_keys += (BURST_PUTS / BURST_WRITERS * BURST_WRITERS) as u64;
            let before = sidecar.status().await?;
            ensure!(
                before.merkle_keys == expected_keys,
                "the index holds {} keys, expected {expected_keys}",
                before.merkle_keys
            );

            sidecar.kill();
            let started = Instant::now();
            let recovered = sidecar.restart_with(base_args()).await?;
            let recovered_wall = started.elapsed().as_secs_f64();
            check_mode(&recovered, "recovery", sidecar)?;
            ensure!(
                recovered.merkle_root == before.merkle_root
                    && recovered.merkle_keys == before.merkle_keys,
                "recovery lost the index: before the crash root {} with {} keys (WAL {}), \
                 after recovery root {} with {} keys (WAL {})",
                before.merkle_root,
                before.merkle_keys,
                before.last_wal,
                recovered.merkle_root,
                recovered.merkle_keys,
                recovered.last_wal
            );
            if recovered.startup_redo_entries == 0 {
                report.note(format!(
                    "recovery@{label} run {}: no WAL entries were redone (a flush ran \
                     during the burst)",
                    rep + 1
                ));
            }

            let started = Instant::now();
            let reindexed = sidecar.restart_with(reindex_args()).await?;
            let reindex_wall = started.elapsed().as_secs_f64();
            check_mode(&reindexed, "reindex", sidecar)?;
            ensure!(
                reindexed.merkle_root == recovered.merkle_root
                    && reindexed.merkle_keys == recovered.merkle_keys,
                "MERKLE ROOT MISMATCH at {label} keys: recovery {} ({} keys), reindex {} \
                 ({} keys)",
                recovered.merkle_root,
                recovered.merkle_keys,
                reindexed.merkle_root,
                reindexed.merkle_keys
            );
            reindex_memory = Some(reindexed.merkle_memory_bytes);
            eprintln!(
                "recovery@{label} run {}: recovery {:.3}s ({} entries redone, {:.2}s to \
                 ready), reindex {:.3}s ({:.2}s to ready)",
                rep + 1,
                recovered.startup_index_seconds,
                recovered.startup_redo_entries,
                recovered_wall,
                reindexed.startup_index_seconds,
                reindex_wall,
            );
            let (_, flush_seconds) = wait_flushed(sidecar, true).await?;
            eprintln!("  flushed the reindexed index in {flush_seconds:.1}s");
            recovery.push(recovered.startup_index_seconds);
            reindex.push(reindexed.startup_index_seconds);
            redo.push(recovered.startup_redo_entries as f64);
        }
        let recovery_median = median(&recovery);
        report.add(
            Row::new(
                "recovery",
                format!("recovery@{label}"),
                "startup_index_seconds",
                recovery_median,
                "s",
            )
            .extra("keys", expected_keys)
            .extra(
                "samples",
                recovery.iter().map(|x| round(*x)).collect::<Vec<_>>(),
            )
            .extra("redo_entries", redo.clone()),
        )?;
        let mut row = Row::new(
            "recovery",
            format!("reindex@{label}"),
            "startup_index_seconds",
            median(&reindex),
            "s",
        )
        .baseline(recovery_median)
        .extra("keys", expected_keys)
        .extra(
            "samples",
            reindex.iter().map(|x| round(*x)).collect::<Vec<_>>(),
        );
        if keys >= 1_000_000 {
            row = row.target(Target::RatioAtLeast(5.0));
        }
        report.add(row)?;
        report.add(
            Row::new(
                "recovery",
                format!("redo@{label}"),
                "startup_redo_entries",
                median(&redo),
                "entries",
            )
            .extra("samples", redo),
        )?;
    }

    if measure_memory {
        memory_bench(report, etcd, sidecar, &label, expected_keys, reindex_memory).await?;
    }
    Ok(())
}

async fn memory_bench(
    report: &mut Report,
    etcd: &EtcdServer,
    sidecar: &mut Sidecar,
    label: &str,
    keys: u64,
    reindex_memory: Option<u64>,
) -> anyhow::Result<()> {
    eprintln!("memory: {label} keys: restarting with recovery");
    wait_flushed(sidecar, true).await?;
    sidecar.kill();
    let recovered = sidecar.restart_with(base_args()).await?;
    check_mode(&recovered, "recovery", sidecar)?;
    ensure!(
        recovered.merkle_keys == keys,
        "the index holds {} keys, expected {keys}",
        recovered.merkle_keys
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = sidecar.status().await?;
    let pid = sidecar.pid().context("the sidecar has no process")?;
    let rss = proc_status_kib(pid, "VmRSS")?;
    let hwm = proc_status_kib(pid, "VmHWM")?;

    let mut options = SidecarOptions::new("bench-empty", "n1");
    options.args = base_args();
    options.ready_timeout = LONG_TIMEOUT;
    let empty = Sidecar::start(&etcd.endpoint(), options)
        .await
        .context("failed to start the sidecar of the empty cluster")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let empty_status = empty.status().await?;
    let empty_pid = empty.pid().context("the empty sidecar has no process")?;
    let empty_rss = proc_status_kib(empty_pid, "VmRSS")?;
    let empty_hwm = proc_status_kib(empty_pid, "VmHWM")?;
    drop(empty);

    let index_mib = status.merkle_memory_bytes as f64 / MIB;
    report.add(
        Row::new(
            "memory",
            format!("merkle_index@{label}"),
            "merkle_memory_bytes",
            index_mib,
            "MiB",
        )
        .target(Target::AtMost(64.0))
        .extra("bytes", status.merkle_memory_bytes)
        .extra("keys", status.merkle_keys)
        .extra("startup_mode", status.startup_mode.clone())
        .extra(
            "bytes_per_key",
            round(status.merkle_memory_bytes as f64 / status.merkle_keys.max(1) as f64),
        )
        .extra("empty_index_bytes", empty_status.merkle_memory_bytes),
    )?;
    if let Some(bytes) = reindex_memory {
        report.add(
            Row::new(
                "memory",
                format!("merkle_index_after_reindex@{label}"),
                "merkle_memory_bytes",
                bytes as f64 / MIB,
                "MiB",
            )
            .extra("bytes", bytes),
        )?;
    }
    report.add(
        Row::new(
            "memory",
            format!("rss_recovered@{label}"),
            "vm_rss",
            mib_of_kib(rss),
            "MiB",
        )
        .baseline(mib_of_kib(empty_rss))
        .extra("vm_hwm_mib", round(mib_of_kib(hwm)))
        .extra("empty_vm_hwm_mib", round(mib_of_kib(empty_hwm))),
    )?;
    report.add(
        Row::new(
            "memory",
            "rss_empty",
            "vm_rss",
            mib_of_kib(empty_rss),
            "MiB",
        )
        .extra("vm_hwm_mib", round(mib_of_kib(empty_hwm))),
    )?;
    report.add(
        Row::new(
            "memory",
            format!("rss_delta@{label}"),
            "vm_rss_delta",
            mib_of_kib(rss) - mib_of_kib(empty_rss),
            "MiB",
        )
        .target(Target::AtMost(64.0))
        .extra("recovered_mib", round(mib_of_kib(rss)))
        .extra("empty_mib", round(mib_of_kib(empty_rss))),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

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
        "ferry-bench: {:?}, {}s per write case, keys {:?}, {} CPUs",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<Args> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags() {
        let a = parse("--quick --seconds 2").unwrap();
        assert_eq!(a.keys, vec![QUICK_KEYS]);
        assert_eq!(a.seconds, 2.0);
        assert_eq!(a.only.len(), 3);
        let a = parse("--keys=100k,1M --only write,memory").unwrap();
        assert_eq!(a.keys, vec![100_000, 1_000_000]);
        assert_eq!(a.only, [Bench::Write, Bench::Memory].into());
        assert!(parse("--only disk").is_err());
        assert!(parse("--seconds").is_err());
        assert!(parse("--bogus").is_err());
    }

    #[test]
    fn labels_and_medians() {
        assert_eq!(count_label(20_000), "20k");
        assert_eq!(count_label(1_000_000), "1M");
        assert_eq!(count_label(1_500), "1500");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert_eq!(value_for(1).len(), VALUE_BYTES);
        assert_ne!(value_for(1), value_for(2));
    }
}
