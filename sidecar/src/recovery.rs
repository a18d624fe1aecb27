//! Start-up: bring the WAL position and the merkle index back from etcd.
//!
//! The normal path is ARIES-style redo. Load every flushed subpage record; each carries its LSN.
//! Then read the WAL after the checkpoint and apply each entry's changes to a subpage only when
//! the entry's index is above that subpage's LSN (changes at or below it are already in the
//! record). The work is proportional to the number of subpages and the WAL written since the
//! last checkpoint, not to the number of keys.
//!
//! A full reindex (scan every replicated key and hash its value) is the fallback: when there is
//! no checkpoint, the geometry changed, the WAL needed for redo was collected, a record is
//! corrupt, or the operator asks for it (`--reindex-on-start`, or the admin `Reindex` call).

use std::ops::ControlFlow;
use std::time::Instant;

use etcd_client::{Client, Txn, TxnOp};
use tracing::{info, warn};

use crate::core::{Core, StartupReport};
use crate::error::StoreError;
use crate::etcd::{Scan, edge, get, kv, scan};
use crate::fence::Fence;
use crate::keyspace::{Keyspace, prefix_end};
use crate::merkle::record::{Checkpoint, SubpageRecord};
use crate::merkle::{Change, Geometry, MerkleIndex};
use crate::path::PathClassifier;
use crate::reindex::{drop_flushed, scan_index};
use crate::wal::reader::{decode_at, for_each_entry};
use crate::wal::record::{StreamId, WalEntry};
use crate::wal::{StreamState, WalPosition};

/// What start-up recovered.
pub struct Recovered {
    pub stream: StreamState,
    pub wal: WalPosition,
    pub index: MerkleIndex,
    pub checkpoint: Option<u64>,
    pub report: StartupReport,
}

/// Loads (or creates) the stream record, finds the WAL's ends and rebuilds the merkle index.
/// The caller holds the fence, so nothing else writes meanwhile.
pub async fn recover(
    client: &Client,
    keyspace: &Keyspace,
    classes: &PathClassifier,
    geometry: Geometry,
    fence: &Fence,
    force_reindex: bool,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let mut kv = kv(client);
    let stream = load_stream(client, keyspace, fence).await?;
    let wal = wal_position(&mut kv, keyspace).await?;
    let checkpoint = match get(&mut kv, &keyspace.merkle_checkpoint()).await? {
        None => Err("no merkle checkpoint is stored".to_string()),
        Some(kv) => Checkpoint::decode(kv.value()).map_err(|e| e.to_string()),
    };
    let plan = match checkpoint {
        _ if force_reindex => Err("a reindex was requested".to_string()),
        Err(why) => Err(why),
        Ok(c) if c.geometry != geometry => Err(format!(
            "the merkle geometry changed from {}x{} to {}x{}",
            c.geometry.pages,
            c.geometry.subpages_per_page,
            geometry.pages,
            geometry.subpages_per_page
        )),
        Ok(c) if c.lsn > wal.last => Err(format!(
            "the checkpoint ({}) is ahead of the WAL ({})",
            c.lsn, wal.last
        )),
        Ok(c) if wal.last > 0 && c.lsn + 1 < wal.first => Err(format!(
            "WAL entries after the checkpoint ({}) were collected (oldest is {})",
            c.lsn, wal.first
        )),
        Ok(c) => Ok(c),
    };

    let recovered = match plan {
        Ok(c) => match redo(&mut kv, keyspace, geometry, c.lsn, wal.last).await {
            Ok((index, redone)) => Some((index, Some(c.lsn), redone)),
            Err(e) => {
                warn!(error = %e, "merkle recovery failed; falling back to a full reindex");
                None
            }
        },
        Err(why) => {
            info!(reason = %why, "rebuilding the merkle index with a full reindex");
            None
        }
    };
    let (index, checkpoint, report) = match recovered {
        Some((index, checkpoint, redone)) => {
            let report = StartupReport {
                mode: "recovery".into(),
                index_seconds: started.elapsed().as_secs_f64(),
                redo_entries: redone,
            };
            (index, checkpoint, report)
        }
        None => {
            if !kv
                .txn(
                    Txn::new()
                        .when([fence.compare()?])
                        .and_then(drop_flushed(keyspace)),
                )
                .await?
                .succeeded()
            {
                return Err(fence.lost_error());
            }
            let (mut index, _) = scan_index(&mut kv, keyspace, classes, geometry, 0).await?;
            index.set_lsn(wal.last);
            index.mark_nonempty_dirty();
            let report = StartupReport {
                mode: "reindex".into(),
                index_seconds: started.elapsed().as_secs_f64(),
                redo_entries: 0,
            };
            (index, None, report)
        }
    };
    info!(
        mode = %report.mode,
        seconds = report.index_seconds,
        redo_entries = report.redo_entries,
        keys = index.keys(),
        last_wal = wal.last,
        root = %crate::wal::record::hex(&index.root()),
        "merkle index ready"
    );
    Ok(Recovered {
        stream,
        wal,
        index,
        checkpoint,
        report,
    })
}

async fn load_stream(
    client: &Client,
    keyspace: &Keyspace,
    fence: &Fence,
) -> Result<StreamState, StoreError> {
    let mut kv = client.kv_client();
    if let Some(found) = get(&mut kv, &keyspace.stream()).await? {
        return StreamState::decode(found.value())
            .map_err(|e| StoreError::Corrupt(format!("failed to read the stream record: {e}")));
    }
    let stream = StreamState {
        stream_id: StreamId::random(),
        epoch: 1,
    };
    let txn = Txn::new().when([fence.compare()?]).and_then([TxnOp::put(
        keyspace.stream(),
        stream.encode(),
        None,
    )]);
    if !kv.txn(txn).await?.succeeded() {
        return Err(fence.lost_error());
    }
    info!(stream_id = %stream.stream_id.to_hex(), "started a new WAL stream");
    Ok(stream)
}

pub(crate) async fn wal_position(
    kv: &mut etcd_client::KvClient,
    keyspace: &Keyspace,
) -> Result<WalPosition, StoreError> {
    let prefix = keyspace.wal_prefix();
    let end = prefix_end(&prefix);
    let first = edge(kv, &prefix, end.clone(), false).await?;
    let last = edge(kv, &prefix, end, true).await?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(WalPosition::default());
    };
    let first = decode_at(keyspace, first.key(), first.value())?;
    let last = decode_at(keyspace, last.key(), last.value())?;
    Ok(WalPosition {
        last: last.index,
        first: first.index,
        cumulative_last: last.cumulative_bytes,
        cumulative_before_first: first.cumulative_before(),
    })
}

/// Loads the flushed subpages and redoes the WAL after `checkpoint` up to `last`. Returns the
/// index and how many entries were redone.
async fn redo(
    kv: &mut etcd_client::KvClient,
    keyspace: &Keyspace,
    geometry: Geometry,
    checkpoint: u64,
    last: u64,
) -> Result<(MerkleIndex, u64), StoreError> {
    let mut index = MerkleIndex::new(geometry);
    let mut lsns = vec![checkpoint; geometry.subpages() as usize];
    let prefix = keyspace.merkle_prefix();
    scan(
        kv,
        prefix.clone().into_bytes(),
        prefix_end(&prefix),
        Scan::default(),
        |kv| {
            let record = SubpageRecord::decode(kv.value(), geometry).map_err(|e| {
                StoreError::Corrupt(format!(
                    "merkle record {}: {e}",
                    String::from_utf8_lossy(kv.key())
                ))
            })?;
            if record.lsn > last {
                return Err(StoreError::Corrupt(format!(
                    "merkle subpage {} reflects WAL index {} beyond the last ({last})",
                    record.subpage, record.lsn
                )));
            }
            let lsn = &mut lsns[record.subpage as usize];
            *lsn = (*lsn).max(record.lsn);
            index.load_subpage(record.subpage, record.leaves);
            Ok(ControlFlow::Continue(()))
        },
    )
    .await?;

    let redone = for_each_entry(keyspace, kv, checkpoint + 1, last, |entry| {
        redo_entry(&mut index, &lsns, &entry)
    })
    .await?;
    index.rehash();
    index.set_lsn(last);
    Ok((index, redone))
}

/// Applies the changes of `entry` whose subpage does not reflect it yet, and marks those subpages
/// dirty.
fn redo_entry(index: &mut MerkleIndex, lsns: &[u64], entry: &WalEntry) {
    for op in &entry.ops {
        let change = Change::new(&op.key, op.value.as_deref());
        let subpage = index.geometry().subpage_of(&change.path);
        if entry.index > lsns[subpage as usize] {
            index.load_change(&change);
            index.mark_dirty(subpage);
        }
    }
}

/// Applies WAL entries that etcd holds beyond the index (after an unknown transaction outcome).
/// The caller holds the commit gate. Returns how many entries were applied.
pub async fn catch_up(core: &Core) -> Result<u64, StoreError> {
    let from = core.index().lsn() + 1;
    for_each_entry(&core.keyspace, &mut core.kv(), from, u64::MAX, |entry| {
        let changes: Vec<Change> = entry
            .ops
            .iter()
            .map(|op| Change::new(&op.key, op.value.as_deref()))
            .collect();
        let mut index = core.index();
        index.apply(&changes);
        index.set_lsn(entry.index);
        drop(index);
        let len = WalEntry::encoded_len(&entry.ops) as u64;
        core.update_wal(|pos| pos.append(entry.index, entry.cumulative_bytes, len));
    })
    .await
}
