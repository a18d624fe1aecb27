//! The `recovery` benchmark: fills a fresh cluster, then measures start-up after a SIGKILL
//! (flushed merkle pages plus WAL redo) against a full reindex, which must reach the same root.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferry_proto::storage::operation::Op;
use ferry_proto::storage::{BatchRequest, Operation, PutRequest};
use ferry_tests::etcd::{EtcdOptions, EtcdServer};
use ferry_tests::sidecar::{Sidecar, SidecarOptions};

use crate::args::{Args, Bench};
use crate::common::{GIB, count_label, median, value_for};
use crate::harness::{LONG_TIMEOUT, base_args, check_mode, reindex_args, save_log, wait_flushed};
use crate::memory::memory_bench;
use crate::report::{Report, Row, Target, round};

/// Puts per `Batch` request while filling (etcd's 128 operations per transaction, less the WAL
/// entry and a secondary's applied record, bound a batch at 126).
const FILL_BATCH: u64 = 120;
const FILLERS: usize = 8;
/// Puts written after the index is flushed, so that recovery has WAL to redo.
const BURST_PUTS: usize = 2000;
const BURST_WRITERS: usize = 16;
const REPEATS: usize = 3;

fn put_op(key: String, value: Vec<u8>) -> Operation {
    Operation {
        op: Some(Op::Put(PutRequest { key, value })),
    }
}

/// The key the fill writes as its `i`th.
pub fn fill_key(i: u64) -> String {
    format!("logical/bench/fill/{}/k{i}", i / 10_000)
}

/// Writes `keys` keys ([`fill_key`], [`value_for`]) through `Batch` requests.
async fn fill(sidecar: &Sidecar, keys: u64) -> anyhow::Result<f64> {
    let written = write_batches(sidecar, keys, "fill", |i| (fill_key(i), value_for(i))).await?;
    Ok(written.seconds)
}

/// What [`write_batches`] did.
pub struct Written {
    pub seconds: f64,
    /// Batch requests that failed and were sent again, and the first error.
    pub retries: u64,
    pub first_error: Option<String>,
}

/// Batch attempts that fail before the writing fails.
const ATTEMPTS: u64 = 8;
/// Failed attempts printed one by one; the rest are only counted.
const PRINTED_FAILURES: u64 = 5;

/// Writes the puts `put(0..count)` through `Batch` requests of [`FILL_BATCH`] puts from
/// [`FILLERS`] tasks, with progress on stderr every 10 s. A failed batch is sent again (up to
/// [`ATTEMPTS`] times); how many were is returned and printed.
pub async fn write_batches<F>(
    sidecar: &Sidecar,
    count: u64,
    what: &'static str,
    put: F,
) -> anyhow::Result<Written>
where
    F: Fn(u64) -> (String, Vec<u8>) + Send + Sync + 'static,
{
    let keys = count;
    let put = Arc::new(put);
    let batches = keys.div_ceil(FILL_BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FILLERS {
        let mut storage = sidecar.storage();
        let next = next.clone();
        let written = written.clone();
        let retries = retries.clone();
        let first_error = first_error.clone();
        let put = put.clone();
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
                        let (key, value) = put(i);
                        put_op(key, value)
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
                        Err(e) if attempt < ATTEMPTS => {
                            first_error
                                .lock()
                                .expect("error lock")
                                .get_or_insert_with(|| e.message().to_owned());
                            if retries.fetch_add(1, Ordering::Relaxed) < PRINTED_FAILURES {
                                eprintln!(
                                    "{what}: batch {b} failed (attempt {attempt}), retrying: {e}"
                                );
                            }
                            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        }
                        Err(e) => bail!("{what}: batch {b} failed {attempt} times: {e}"),
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
                        "{what}: {done}/{keys} keys in {secs:.0}s ({:.0} keys/s)",
                        done as f64 / secs
                    );
                }
            }
        }
    }
    let retries = retries.load(Ordering::Relaxed);
    if retries > 0 {
        eprintln!("{what}: {retries} failed batch requests were sent again");
    }
    let first_error = first_error.lock().expect("error lock").take();
    Ok(Written {
        seconds: started.elapsed().as_secs_f64(),
        retries,
        first_error,
    })
}

/// Waits for every task; the first error wins.
pub async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
) -> anyhow::Result<()> {
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

pub async fn recovery_bench(args: &Args, report: &mut Report) -> anyhow::Result<()> {
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
            ..EtcdOptions::default()
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
