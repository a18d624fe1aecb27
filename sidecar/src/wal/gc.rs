//! WAL garbage collection: keeps the WAL within its retention limits, in the background.
//!
//! Retention is bounded by entry count and by bytes; whichever is exceeded trims the oldest
//! entries. Two entries are never collected whatever the limits say: any entry after the merkle
//! checkpoint (recovery redoes them), and the last entry (it records where the WAL stands). Bytes
//! come from each entry's cumulative size, so a round reads only the entries it probes.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{DeleteOptions, TxnOp};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::core::Core;
use crate::error::StoreError;
use crate::etcd::get;
use crate::wal::WalPosition;
use crate::wal::reader::decode_at;

/// How much WAL to keep.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_entries: u64,
    pub max_bytes: u64,
}

/// Runs a collection every `interval` until `shutdown`.
pub async fn run(
    core: Arc<Core>,
    retention: Retention,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        match collect(&core, retention).await {
            Ok(0) => {}
            Ok(n) => debug!(
                removed = n,
                first = core.wal().first,
                "collected WAL entries"
            ),
            Err(e) => warn!(error = %e, "WAL garbage collection failed"),
        }
    }
}

/// The oldest index to keep by count, and the newest index collection may start keeping from
/// (the checkpoint's successor, never past the last entry). Pure.
pub fn bounds(pos: &WalPosition, retention: Retention, checkpoint: u64) -> (u64, u64) {
    let by_count = (pos.last + 1).saturating_sub(retention.max_entries);
    let ceiling = (checkpoint + 1).min(pos.last);
    (by_count, ceiling)
}

/// One collection. Returns how many entries it removed.
pub async fn collect(core: &Core, retention: Retention) -> Result<u64, StoreError> {
    let pos = core.wal();
    if pos.last == 0 || !core.fence.is_held() {
        return Ok(0);
    }
    let Some(checkpoint) = core.checkpoint() else {
        return Ok(0);
    };
    let (by_count, ceiling) = bounds(&pos, retention, checkpoint);
    if ceiling <= pos.first {
        return Ok(0);
    }
    let mut target = by_count.max(pos.first);
    if pos.retained_bytes() > retention.max_bytes {
        // The smallest f keeping cumulative(last) - cumulative_before(f) within the byte limit.
        let (mut lo, mut hi) = (pos.first, ceiling);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pos.cumulative_last - cumulative_before(core, mid).await? <= retention.max_bytes {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        target = target.max(lo);
    }
    let target = target.min(ceiling);
    if target <= pos.first {
        return Ok(0);
    }
    let before_target = cumulative_before(core, target).await?;
    let ks = &core.keyspace;
    let delete = TxnOp::delete(
        ks.wal(pos.first),
        Some(DeleteOptions::new().with_range(ks.wal(target))),
    );
    core.fenced([delete]).await?;
    core.update_wal(|p| {
        p.first = target;
        p.cumulative_before_first = before_target;
    });
    Ok(target - pos.first)
}

async fn cumulative_before(core: &Core, index: u64) -> Result<u64, StoreError> {
    let key = core.keyspace.wal(index);
    let Some(kv) = get(&mut core.kv(), &key).await? else {
        return Err(StoreError::Corrupt(format!("WAL entry {index} is missing")));
    };
    Ok(decode_at(&core.keyspace, kv.key(), kv.value())?.cumulative_before())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(first: u64, last: u64) -> WalPosition {
        WalPosition {
            first,
            last,
            ..WalPosition::default()
        }
    }

    #[test]
    fn never_past_the_checkpoint_or_the_last_entry() {
        let r = Retention {
            max_entries: 10,
            max_bytes: u64::MAX,
        };
        // 100 entries, keep 10: by count from 91, but the checkpoint at 50 holds at 51.
        assert_eq!(bounds(&pos(1, 100), r, 50), (91, 51));
        // Checkpoint beyond the last entry: the last entry is still kept.
        assert_eq!(bounds(&pos(1, 100), r, 500), (91, 100));
        // Within retention: nothing by count.
        assert_eq!(bounds(&pos(1, 5), r, 5).0, 0);
    }
}
