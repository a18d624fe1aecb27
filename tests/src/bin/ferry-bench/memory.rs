//! The `memory` benchmark: the merkle index's own accounting at the largest key count,
//! cross-checked with the process's resident set against a sidecar of an empty cluster.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};

use crate::harness::{LONG_TIMEOUT, base_args, check_mode, wait_flushed};
use crate::procfs::proc_status_kib;
use crate::report::{Report, Row, Target, round};

const MIB: f64 = 1024.0 * 1024.0;

pub async fn memory_bench(
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

fn mib_of_kib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
