//! The merkle flusher: writes dirty subpages to etcd in the background, then the checkpoint.
//!
//! A round starts by noting the index's LSN `L` and the subpages dirty at that moment. It takes
//! them a chunk at a time (a copy of their leaves and the LSN at that moment, which is at least
//! `L`) and writes them as subpage records in fenced transactions. When every subpage of the
//! round is written, each subpage reflects at least `L`: those written carry their own LSN, and
//! the others were clean, so unchanged since they were last written. The round then stores the
//! checkpoint `L`, and the WAL after `L` is all that recovery needs.
//!
//! Subpages dirtied while a round runs wait for the next round, so a round's work is bounded by
//! what was dirty when it began and the checkpoint advances under any write load.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::TxnOp;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::core::Core;
use crate::error::StoreError;
use crate::merkle::record::{Checkpoint, SubpageRecord};

/// Subpages copied out of the index at a time.
const CHUNK: usize = 1024;
/// Most bytes of records in one transaction.
const MAX_TXN_BYTES: usize = 1024 * 1024;

/// Runs flush rounds every `interval` until `shutdown`, then one last round.
pub async fn run(
    core: Arc<Core>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => true,
        };
        if let Err(e) = flush_round(&core).await {
            warn!(error = %e, "merkle flush failed; dirty subpages stay dirty");
        }
        if stopping {
            return Ok(());
        }
    }
}

/// One round. Returns how many subpages it wrote.
pub async fn flush_round(core: &Core) -> Result<usize, StoreError> {
    if !core.fence.is_held() {
        return Ok(0);
    }
    let _round = core.flush_gate.lock().await;
    let (ids, round_lsn, geometry) = {
        let index = core.index();
        (index.dirty_ids(), index.lsn(), index.geometry())
    };
    if ids.is_empty() && core.checkpoint().is_some_and(|c| c >= round_lsn) {
        return Ok(0);
    }
    let mut written = 0;
    for chunk in ids.chunks(CHUNK) {
        let (taken, lsn) = {
            let mut index = core.index();
            let taken = index.take_dirty(chunk);
            (taken, index.lsn())
        };
        let subpages: Vec<u32> = taken.iter().map(|(subpage, _)| *subpage).collect();
        let puts: Vec<(usize, TxnOp)> = taken
            .into_iter()
            .map(|(subpage, leaves)| {
                let record = SubpageRecord {
                    subpage,
                    lsn,
                    leaves,
                }
                .encode();
                let len = record.len();
                let key = core.keyspace.merkle_subpage(subpage);
                (len, TxnOp::put(key, record, None))
            })
            .collect();
        if let Err(e) = write_records(core, puts).await {
            let mut index = core.index();
            for subpage in &subpages {
                index.mark_dirty(*subpage);
            }
            return Err(e);
        }
        written += subpages.len();
    }
    let checkpoint = Checkpoint {
        geometry,
        lsn: round_lsn,
    };
    core.fenced([TxnOp::put(
        core.keyspace.merkle_checkpoint(),
        checkpoint.encode(),
        None,
    )])
    .await?;
    core.set_checkpoint(Some(round_lsn));
    debug!(written, checkpoint = round_lsn, "merkle flush round done");
    Ok(written)
}

/// Writes record puts (each with its size) in fenced transactions within etcd's limits.
async fn write_records(core: &Core, puts: Vec<(usize, TxnOp)>) -> Result<(), StoreError> {
    let max_ops = core.limits.max_txn_ops;
    let mut txn: Vec<TxnOp> = Vec::new();
    let mut bytes = 0;
    for (len, put) in puts {
        if !txn.is_empty() && (txn.len() == max_ops || bytes + len > MAX_TXN_BYTES) {
            core.fenced(std::mem::take(&mut txn)).await?;
            bytes = 0;
        }
        bytes += len;
        txn.push(put);
    }
    if !txn.is_empty() {
        core.fenced(txn).await?;
    }
    Ok(())
}
