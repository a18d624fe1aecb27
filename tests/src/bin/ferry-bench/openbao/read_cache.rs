//! The read cache's memory: its budget (the default of ferry-vault's `--read-cache-bytes`) and
//! what the cache and the process hold after a million distinct paths were read.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use ferry_tests::vault::VaultPair;

use super::{BENCH, System};
use crate::procfs::proc_status_kib;
use crate::report::{Report, Row, Target, round};
use crate::wrk;

/// The default of ferry-vault's `--read-cache-bytes`, from its `--help`; `None` without the
/// flag.
fn read_cache_default(help: &str) -> Option<u64> {
    let mut lines = help
        .lines()
        .skip_while(|l| !l.contains("--read-cache-bytes"));
    let flag = lines.next()?;
    // The flag's own text: up to the next option.
    let text: String = std::iter::once(flag)
        .chain(lines.take_while(|l| !l.trim_start().starts_with('-')))
        .collect();
    let default = &text[text.find("[default: ")? + "[default: ".len()..];
    default[..default.find(']')?].trim().parse().ok()
}

/// The read cache's budget: the default of the ferry-vault under test, from its `--help`.
pub(super) fn read_cache_budget() -> anyhow::Result<u64> {
    let binary = ferry_tests::sidecar::bin_dir().join("ferry-vault");
    let output = Command::new(&binary)
        .arg("--help")
        .output()
        .with_context(|| format!("failed to run {} --help", binary.display()))?;
    read_cache_default(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
        format!(
            "{} --help shows no --read-cache-bytes default",
            binary.display()
        )
    })
}

pub(super) fn vmrss_mib(pid: Option<u32>) -> anyhow::Result<f64> {
    let pid = pid.context("the process is not running")?;
    Ok(proc_status_kib(pid, "VmRSS")? as f64 / 1024.0)
}

/// Distinct paths the read cache's memory is measured after.
const MILLION: u64 = 1_000_000;

/// The read cache's memory after a million distinct paths were read: KV reads of secrets never
/// written (each a 404, each leaving its absent metadata path in the cache), from wrk runs of
/// `seconds` each until a million were sent. The cache's own byte count must stay within its
/// budget, and the process's resident set is compared with what it was before.
pub(super) async fn read_cache_at_a_million(
    dir: &Path,
    pair: &VaultPair,
    ferry: &System,
    seconds: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let root = pair.west_root();
    let rss_before = vmrss_mib(pair.west_vault.pid())?;
    let mut sent = 0;
    let mut runs = 0;
    while sent < MILLION {
        runs += 1;
        ensure!(runs <= 40, "only {sent} reads in 40 runs");
        let requests = wrk::Requests {
            request: "kv_read_absent",
            token: &ferry.root_token,
            lookup_token: "",
            keys: 0,
            plaintext: "",
            offset: sent,
        };
        let (wrk, _) = wrk::run(
            dir,
            "wrk-ferry-absent.log",
            &ferry.url,
            seconds.max(10),
            &requests,
        )
        .await
        .with_context(|| pair.west_vault.log())?;
        wrk.check("ferry kv_read_absent")?;
        sent += wrk.requests;
        eprintln!("openbao: read cache: {sent} distinct paths read");
    }
    let metrics = root.get("/v1/sys/metrics").await?.ok()?;
    let metric = |list: &str, name: &str, field: &str| {
        metrics.body[list]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["Name"] == name))
            .and_then(|m| m[field].as_u64())
            .with_context(|| format!("no {name} in sys/metrics: {}", metrics.body))
    };
    let bytes = metric("Gauges", "ferry.read_cache.bytes", "Value")?;
    let entries = metric("Gauges", "ferry.read_cache.entries", "Value")?;
    let budget = read_cache_budget()?;
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    report.add(
        Row::new(
            BENCH,
            "read_cache_1m_bytes",
            "bytes_mib",
            round(mib(bytes)),
            "MiB",
        )
        .target(Target::AtMost(mib(budget)))
        .extra("entries", entries)
        .extra("paths_read", sent)
        .extra(
            "note",
            "the cache's own count after a million distinct paths were read",
        ),
    )?;
    let rss_after = vmrss_mib(pair.west_vault.pid())?;
    report.add(
        Row::new(
            BENCH,
            "read_cache_1m_vmrss",
            "vmrss_mib",
            round(rss_after),
            "MiB",
        )
        .baseline(round(rss_before))
        .extra(
            "note",
            "the primary's ferry-vault after a million distinct paths, against before them",
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_read_cache_default() {
        let help = "      --read-cache-bytes <READ_CACHE_BYTES>\n          The budget\n          \
                    [env: FERRY_READ_CACHE_BYTES=]\n          [default: 67108864]\n";
        assert_eq!(read_cache_default(help), Some(67_108_864));
        let without = "      --read-cache-bytes <N>\n          The budget\n      --log <LOG>\n          \
                       [default: 5]\n";
        assert_eq!(read_cache_default(without), None);
        assert_eq!(read_cache_default("--listen <LISTEN> [default: 5]"), None);
    }
}
