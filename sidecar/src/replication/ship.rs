//! What a primary sends its secondaries: the WAL stream ([`ship`]) and the merkle snapshots a
//! reconciliation reads ([`take_snapshot`]), both served by `service`.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use ferry_proto::replication as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::Replication;
use super::snapshot::MerkleSnapshot;
use crate::error::StoreError;
use crate::keyspace::prefix_end;
use crate::wal::reader::{MAX_SHIP_BYTES, WalRead, read_after};

/// Most WAL entries in one streamed message (besides the byte bound of the reader).
const SHIP_ENTRIES: usize = 512;
/// An idle WAL stream sends an empty message this often, so both ends see it is alive.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(2);
/// Snapshots tried while writes go on before the committer is held for one.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// The current etcd revision, provided the data there still matches WAL index `index` (no
/// later entry has committed); `None` otherwise. The current revision rather than that of the
/// entry's own transaction: an idle primary's last entry can be older than etcd's compaction
/// window, and a sync reading there would fail for ever.
pub(super) async fn revision_at(
    core: &crate::core::Core,
    index: u64,
) -> Result<Option<i64>, Status> {
    let later = core
        .kv()
        .get(
            core.keyspace.wal(index + 1),
            Some(
                GetOptions::new()
                    .with_range(prefix_end(&core.keyspace.wal_prefix()))
                    .with_count_only(),
            ),
        )
        .await
        .map_err(StoreError::from)?;
    let revision = later.header().map_or(0, |h| h.revision());
    Ok((later.count() == 0 && revision > 0).then_some(revision))
}

/// A snapshot of the merkle index with the etcd revision its data matches. Tries a few times
/// while writes go on; then holds the committer for a moment.
pub(super) async fn take_snapshot(
    core: &crate::core::Core,
    generation: u64,
) -> Result<MerkleSnapshot, Status> {
    for _ in 0..SNAPSHOT_ATTEMPTS {
        let mut snapshot = MerkleSnapshot::take(&core.index(), generation, 0);
        if let Some(revision) = revision_at(core, snapshot.wal_index).await? {
            snapshot.revision = revision;
            return Ok(snapshot);
        }
    }
    let _paused = core.commits.pause().await?;
    let mut snapshot = MerkleSnapshot::take(&core.index(), generation, 0);
    snapshot.revision = revision_at(core, snapshot.wal_index)
        .await?
        .ok_or_else(|| Status::internal("the WAL moved while the committer was paused"))?;
    Ok(snapshot)
}

/// Ships WAL entries after `after` to one secondary until it goes away or this cluster stops
/// being its primary.
pub(super) async fn ship(
    replication: Arc<Replication>,
    stream_id: crate::wal::record::StreamId,
    mut after: u64,
    tx: mpsc::Sender<Result<pb::StreamWalsResponse, Status>>,
) {
    let core = &replication.core;
    let mut committed = core.watch_committed();
    loop {
        let still_primary = matches!(replication.definition(), Some(d) if d.role.ships_wal());
        if !still_primary || core.stream().stream_id != stream_id {
            let _ = tx
                .send(Err(Status::failed_precondition(
                    "this cluster stopped being the primary of this WAL stream",
                )))
                .await;
            return;
        }
        committed.borrow_and_update();
        let cached = core
            .recent
            .lock()
            .expect("recent entries lock poisoned")
            .after(after, SHIP_ENTRIES, MAX_SHIP_BYTES);
        let caught_up = match cached {
            Some(entries) if !entries.is_empty() => {
                after += entries.len() as u64;
                let message = pb::StreamWalsResponse {
                    entries: entries.iter().map(|e| e.to_vec()).collect(),
                    primary_last_wal: core.wal().last,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
                continue;
            }
            // Nothing newer is cached or committed: wait without asking etcd. (Entries applied
            // outside the committer, after a failed transaction, are not cached; they move the
            // last committed index, so they are read from etcd below.)
            Some(_) => core.wal().last <= after,
            None => false,
        };
        let read = if caught_up {
            Ok(WalRead::Entries(Vec::new()))
        } else {
            read_after(core, after, SHIP_ENTRIES).await
        };
        let message = match read {
            Ok(WalRead::Entries(entries)) if !entries.is_empty() => {
                after = entries.last().expect("not empty").index;
                pb::StreamWalsResponse {
                    entries: entries.iter().map(|e| e.encode()).collect(),
                    primary_last_wal: core.wal().last,
                }
            }
            Ok(WalRead::Entries(_)) => {
                match tokio::time::timeout(STREAM_KEEPALIVE, committed.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => pb::StreamWalsResponse {
                        entries: Vec::new(),
                        primary_last_wal: core.wal().last,
                    },
                }
            }
            Ok(WalRead::NotRetained { first }) => {
                let _ = tx
                    .send(Err(Status::failed_precondition(format!(
                        "no matching WALs available: index {} is no longer retained (oldest is {first})",
                        after + 1
                    ))))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if tx.send(Ok(message)).await.is_err() {
            return;
        }
    }
}
