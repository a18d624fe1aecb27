//! The benchmark sidecar's flags, waiting for its merkle index to be flushed, checking its
//! start-up mode, and saving its log when a benchmark fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use ferry_proto::storage::StatusResponse;
use ferry_tests::sidecar::Sidecar;
use ferry_tests::wait_for;

use crate::procfs::alive;
use crate::report::RESULTS_DIR;

/// Flush interval of the recovery sidecar: limits flush churn while filling, and leaves the
/// burst before a crash unflushed.
const FLUSH_FLAG: &str = "--merkle-flush-interval-ms=5000";
/// Start-up, a fill and a flush of a million keys all fit in this.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(900);

/// Waits until every dirty merkle subpage is flushed and the checkpoint reached the last WAL
/// entry. With `written`, the WAL must not be empty.
pub async fn wait_flushed(
    sidecar: &Sidecar,
    written: bool,
) -> anyhow::Result<(StatusResponse, f64)> {
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

/// Saves the sidecar's whole log next to the results and returns where, with its panics and
/// errors: the last lines of a log are often only a backtrace.
pub fn save_log(sidecar: &Sidecar, name: &str) -> String {
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

pub fn base_args() -> Vec<String> {
    // The default fence TTL (10 s) is kept on purpose: a million-key reindex outlasts it, so
    // this also shows that the lease is renewed while start-up runs.
    vec![FLUSH_FLAG.to_owned()]
}

pub fn reindex_args() -> Vec<String> {
    let mut args = base_args();
    args.push("--reindex-on-start".to_owned());
    args
}

pub fn check_mode(status: &StatusResponse, want: &str, sidecar: &Sidecar) -> anyhow::Result<()> {
    ensure!(
        status.startup_mode == want,
        "the sidecar started in mode {:?}, expected {want:?}\n{}",
        status.startup_mode,
        sidecar.log_tail(30)
    );
    Ok(())
}
