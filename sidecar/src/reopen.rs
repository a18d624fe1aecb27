//! Retaking a write fence that expired, so that a node serves writes again without a restart.
//!
//! A node loses its fence when its lease runs out: it stalled (a long pause, SIGSTOP) or could
//! not reach etcd for longer than the lease. If no other node took the fence meanwhile, nothing
//! but the node's own state stands in the way of writing again, and that state may be behind
//! etcd: a transaction whose outcome it never learned may have landed before the lease ran out.
//! So, every [`RETAKE_INTERVAL`] while the fence is lost, this task does what a restart would:
//!
//! 1. closes the flush gate and pauses the committer, so that nothing this node sends can
//!    commit while its state is stale (same order as a reindex);
//! 2. retakes the fence under a new lease ([`Fence::retake`](crate::fence::Fence::retake)): a
//!    new generation, so nothing sent under the old one can land; while another node holds the
//!    fence it stops here and tries again later;
//! 3. replays the WAL entries etcd holds beyond its merkle index ([`recovery::catch_up`]);
//! 4. resumes, and, as a replication primary, asks whether a newer primary exists before it
//!    accepts replicated writes again ([`Replication::check_superseded`]): a primary that
//!    stalled past its lease may have been replaced by a forced promotion meanwhile.
//!
//! The same check runs when the node was frozen for a while but its lease outlived the freeze
//! (see [`stall`](crate::stall)): the fence is still valid, but a secondary may have been
//! promoted meanwhile, so replicated writes wait for the check.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::Core;
use crate::error::StoreError;
use crate::recovery;
use crate::replication::Replication;

/// How often a node whose fence is lost tries to retake it.
pub const RETAKE_INTERVAL: Duration = Duration::from_millis(500);

/// Retakes the fence whenever it is lost and free, until `shutdown`.
pub async fn run(
    core: Arc<Core>,
    replication: Arc<Replication>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut waiting_reported = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RETAKE_INTERVAL) => {}
            _ = core.stall.stalled() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if core.stall.is_marked() && core.fence.is_held() {
            // Frozen, fence still valid: a secondary may have been promoted meanwhile.
            match replication.check_superseded().await {
                Ok(()) => {
                    core.stall.clear();
                    info!("checked for a newer primary after a freeze");
                }
                Err(e) => {
                    warn!(error = %e, "failed to check for a newer primary after a freeze; trying again")
                }
            }
        }
        if core.fence.is_held() {
            waiting_reported = false;
            continue;
        }
        match reopen(&core, &replication).await {
            Ok(true) => waiting_reported = false,
            Ok(false) if !waiting_reported => {
                info!("the write fence is held by another node; this node keeps refusing writes");
                waiting_reported = true;
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "failed to retake the write fence; trying again"),
        }
    }
}

/// One attempt. Returns whether the node holds the fence and accepts writes again.
async fn reopen(core: &Core, replication: &Arc<Replication>) -> Result<bool, StoreError> {
    {
        let _flush = core.flush_gate.lock().await;
        let _paused = core.commits.pause().await?;
        if !core.fence.retake(&core.client).await? {
            return Ok(false);
        }
        match recovery::catch_up(core).await {
            Ok(replayed) => info!(
                replayed,
                wal_last = core.wal().last,
                "retook the write fence: state in step with etcd"
            ),
            Err(e) => {
                // Stale state must not write: give the new generation up; its lease expires.
                core.fence
                    .mark_lost(format!("catching up after retaking the fence failed: {e}"));
                return Err(e);
            }
        }
        replication.close_until_checked();
    }
    // The committer runs again; replicated writes stay refused until the check is done.
    replication.check_superseded().await?;
    core.stall.clear();
    Ok(true)
}
