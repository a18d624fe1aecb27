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
//!
//! When a round starts: once the WAL written since the last round reaches a number of entries
//! or bytes (by default a quarter of the WAL retention), or once the interval has passed,
//! whichever comes first. The first bounds what recovery redoes and keeps the
//! checkpoint well inside what the WAL retains; the second bounds how old the checkpoint gets
//! under a trickle of writes. Every round rewrites each subpage it covers whole, so fewer,
//! larger rounds cost etcd less in all: a subpage written twenty times between rounds is
//! flushed once.
//!
//! Under light load a round finds little to write: the committer carries dirty subpages in its
//! own small transactions (see `committer`), and those records count as flushed. Records of
//! one subpage are only ever written by whoever holds [`Core::flush_gate`], so they reach etcd
//! in the order they were taken. A round whose transaction has an unknown outcome keeps the
//! gate until it has rotated the fence: that transaction can then no longer land after a newer
//! record of the same subpage.
//!
//! Flush transactions share etcd (and this machine's CPUs) with the committer's: etcd applies
//! transactions one at a time, so a commit that arrives behind a flush waits for all of it, and
//! a round written in one burst delays every commit made during the burst. A round is therefore
//! written in transactions sized to it, one at a time and spread over half the interval (at
//! most 5 s): a small round (light load, where a commit's latency is what users notice) in
//! transactions of a few records that delay a commit by a fraction of a millisecond; a large
//! one (heavy load, where keeping up matters) in transactions as large as etcd allows, without
//! pauses. A round under way when shutdown begins stops pausing, and the last round is never
//! spread.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::TxnOp;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::core::Core;
use crate::error::StoreError;
use crate::merkle::Leaf;
use crate::merkle::record::{Checkpoint, SubpageRecord};

/// Subpages copied out of the index at a time.
const CHUNK: usize = 1024;
/// Most bytes of records in one transaction.
const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Fewest records per transaction, for the smallest rounds.
const MIN_TXN_RECORDS: usize = 8;
/// A round's records per transaction grow by one for every this many subpages it writes, up to
/// etcd's transaction size: a round of 8,192 subpages or more uses full transactions.
const SUBPAGES_PER_RECORD: usize = 64;
/// Rounds of at least this many subpages are written without pauses.
const UNPACED_SUBPAGES: usize = 8192;

/// How often the WAL's growth is checked against [`FlushPolicy::wal_entries`] and
/// [`FlushPolicy::wal_bytes`].
const VOLUME_CHECK: Duration = Duration::from_millis(250);
/// Longest a round's transactions are spread over.
const MAX_SPREAD: Duration = Duration::from_secs(5);

/// When the flusher starts a round.
#[derive(Clone, Copy, Debug)]
pub struct FlushPolicy {
    /// Longest between rounds.
    pub interval: Duration,
    /// A round starts once this many WAL entries were written since the last one...
    pub wal_entries: u64,
    /// ...or this many WAL bytes.
    pub wal_bytes: u64,
}

/// Runs flush rounds as `policy` says until `shutdown`, then one last round.
pub async fn run(
    core: Arc<Core>,
    policy: FlushPolicy,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let check = policy.interval.min(VOLUME_CHECK);
    let spread = (policy.interval / 2).min(MAX_SPREAD);
    let mut last_round = (tokio::time::Instant::now(), core.wal());
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(check) => false,
            _ = shutdown.changed() => true,
        };
        let wal = core.wal();
        let (at, before) = last_round;
        let due = stopping
            || at.elapsed() >= policy.interval
            || wal.last.saturating_sub(before.last) >= policy.wal_entries
            || wal.cumulative_last.saturating_sub(before.cumulative_last) >= policy.wal_bytes;
        if !due {
            continue;
        }
        last_round = (tokio::time::Instant::now(), wal);
        let pace = Pace::new(
            if stopping { Duration::ZERO } else { spread },
            shutdown.clone(),
        );
        if let Err(e) = flush_round(&core, pace).await {
            warn!(error = %e, "merkle flush failed; dirty subpages stay dirty");
        }
        if stopping {
            return Ok(());
        }
    }
}

/// One round, its transactions started when `pace` says. Returns how many subpages it wrote.
async fn flush_round(core: &Core, pace: Pace) -> Result<usize, StoreError> {
    if !core.fence.is_held() {
        return Ok(0);
    }
    let _round = core.flush_gate.lock().await;
    let result = write_round(core, pace).await;
    if let Err(StoreError::OutcomeUnknown(_)) = &result {
        // The gate stays held until no transaction of this round can land any more.
        fence_off(core).await;
    }
    result
}

/// After a flush transaction whose outcome is unknown: rotates the fence, so that it cannot
/// land after a newer record of the same subpages (which would leave etcd holding the older
/// one under a newer checkpoint, and recovery redoing too little).
async fn fence_off(core: &Core) {
    core.retry_while_fenced(
        "rotating the fence after a merkle flush of unknown outcome",
        || core.fence.rotate(&core.client),
    )
    .await;
}

/// The body of [`flush_round`], run under the flush gate.
async fn write_round(core: &Core, mut pace: Pace) -> Result<usize, StoreError> {
    let (ids, round_lsn, geometry) = {
        let index = core.index();
        (index.dirty_ids(), index.lsn(), index.geometry())
    };
    if ids.is_empty() && core.checkpoint().is_some_and(|c| c >= round_lsn) {
        return Ok(0);
    }
    let mut written = 0;
    let per_txn = records_per_txn(ids.len(), core.limits.max_txn_ops);
    pace.plan(ids.len(), per_txn);
    for chunk in ids.chunks(CHUNK) {
        let (taken, lsn) = {
            let mut index = core.index();
            let taken = index.take_dirty(chunk);
            (taken, index.lsn())
        };
        let subpages: Vec<u32> = taken.iter().map(|(subpage, _)| *subpage).collect();
        let puts: Vec<(usize, TxnOp)> = taken
            .into_iter()
            .map(|(subpage, leaves)| record_put(core, subpage, lsn, leaves))
            .collect();
        if let Err(e) = write_records(core, puts, per_txn, &mut pace).await {
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

/// The put that stores `subpage`'s `leaves` as they were at WAL index `lsn`, and its size.
pub(crate) fn record_put(core: &Core, subpage: u32, lsn: u64, leaves: Vec<Leaf>) -> (usize, TxnOp) {
    let record = SubpageRecord {
        subpage,
        lsn,
        leaves,
    }
    .encode();
    let len = record.len();
    let key = core.keyspace.merkle_subpage(subpage);
    (len, TxnOp::put(key, record, None))
}

/// How many records each transaction of a round of `subpages` carries.
fn records_per_txn(subpages: usize, max_txn_ops: usize) -> usize {
    (subpages / SUBPAGES_PER_RECORD)
        .max(MIN_TXN_RECORDS)
        .min(max_txn_ops)
}

/// When a round's transactions start: the `k`-th of `n` at `k / n` of the spread, or at once
/// when the spread is zero or shutdown has begun.
struct Pace {
    start: tokio::time::Instant,
    spread: Duration,
    txns: u32,
    sent: u32,
    shutdown: watch::Receiver<bool>,
}

impl Pace {
    fn new(spread: Duration, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            spread,
            txns: 1,
            sent: 0,
            shutdown,
        }
    }

    /// Plans a round of `subpages` written `per_txn` at a time; large rounds are not spread.
    fn plan(&mut self, subpages: usize, per_txn: usize) {
        if subpages >= UNPACED_SUBPAGES {
            self.spread = Duration::ZERO;
        }
        self.txns = subpages.div_ceil(per_txn.max(1)).max(1) as u32;
    }

    /// Waits until the next transaction's turn.
    async fn next(&mut self) {
        if !self.spread.is_zero() && self.sent > 0 && !*self.shutdown.borrow() {
            let at = self.start + self.spread * self.sent.min(self.txns) / self.txns;
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.shutdown.changed() => self.spread = Duration::ZERO,
            }
        }
        self.sent += 1;
    }
}

/// Writes record puts (each with its size) in fenced transactions of at most `max_ops` records,
/// one after the other, each when `pace` says.
async fn write_records(
    core: &Core,
    puts: Vec<(usize, TxnOp)>,
    max_ops: usize,
    pace: &mut Pace,
) -> Result<(), StoreError> {
    let mut txn: Vec<TxnOp> = Vec::new();
    let mut bytes = 0;
    for (len, put) in puts {
        if !txn.is_empty() && (txn.len() == max_ops || bytes + len > MAX_TXN_BYTES) {
            pace.next().await;
            core.fenced(std::mem::take(&mut txn)).await?;
            bytes = 0;
        }
        bytes += len;
        txn.push(put);
    }
    if !txn.is_empty() {
        pace.next().await;
        core.fenced(txn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_rounds_use_small_transactions_and_large_ones_full_transactions() {
        assert_eq!(records_per_txn(1, 128), MIN_TXN_RECORDS);
        assert_eq!(records_per_txn(500, 128), MIN_TXN_RECORDS);
        assert_eq!(records_per_txn(2048, 128), 32);
        assert_eq!(records_per_txn(8192, 128), 128);
        assert_eq!(records_per_txn(1_000_000, 128), 128);
        // Never more than etcd takes in one transaction.
        assert_eq!(records_per_txn(10, 4), 4);
    }
}
