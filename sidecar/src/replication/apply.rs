//! Applying what the primary streamed: consecutive WAL entries merged into transactions (the
//! last write to a key wins) that fit one transaction's limits, each committed with the applied
//! record of its last entry and checked against the merkle root that entry carries; and the
//! guard that refuses a write to a path local to this cluster.

use std::collections::BTreeMap;

use super::Replication;
use super::applied::Applied;
use super::follower::{End, refused};
use crate::commit::WriteOp;
use crate::path::PathClass;
use crate::wal::record::WalEntry;

/// Applies `entries` in merged transactions, moving `position` along; each must follow on from
/// it, and the local merkle root must match the primary's after each transaction.
pub(super) async fn apply_entries(
    replication: &Replication,
    position: &mut Applied,
    entries: &[WalEntry],
) -> Result<(), End> {
    let core = &replication.core;
    for batch in merge(
        entries,
        core.limits.max_apply_ops,
        core.limits.max_txn_bytes,
    ) {
        let last = batch.last;
        if last.stream_id != position.stream_id || batch.first_index != position.index + 1 {
            return Err(refused(format!(
                "the primary sent index {} after {}",
                batch.first_index, position.index
            )));
        }
        if !replication.config.apply_delay.is_zero() {
            tokio::time::sleep(replication.config.apply_delay).await;
        }
        *position = Applied {
            stream_id: last.stream_id,
            index: last.index,
            epoch: last.epoch,
        };
        replication
            .gateway
            .apply(batch.ops, Some(position.encode()))
            .await?;
        let root = core.index().root();
        if root != last.merkle_root {
            return Err(refused(format!(
                "the merkle root after index {} differs from the primary's",
                last.index
            )));
        }
        replication.note_applied(*position);
    }
    Ok(())
}

/// Consecutive entries merged into one transaction.
struct Batch<'e> {
    first_index: u64,
    last: &'e WalEntry,
    ops: Vec<WriteOp>,
}

/// Splits `entries` into runs whose merged writes (the last write to each key wins) fit one
/// transaction: at most `max_ops` keys and about `max_bytes`. A single entry always fits: the
/// primary built it within etcd's default limits, and this cluster's etcd allows at least those.
fn merge(entries: &[WalEntry], max_ops: usize, max_bytes: usize) -> Vec<Batch<'_>> {
    let mut batches = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut keys: BTreeMap<&str, Option<&Vec<u8>>> = BTreeMap::new();
        let mut bytes = 0;
        let start = i;
        while i < entries.len() {
            let entry = &entries[i];
            let new_keys = entry
                .ops
                .iter()
                .filter(|op| !keys.contains_key(op.key.as_str()))
                .count();
            let entry_bytes: usize = entry
                .ops
                .iter()
                .map(|op| 2 * (op.key.len() + op.value.as_ref().map_or(0, Vec::len) + 16))
                .sum();
            if i > start && (keys.len() + new_keys > max_ops || bytes + entry_bytes > max_bytes) {
                break;
            }
            for op in &entry.ops {
                keys.insert(&op.key, op.value.as_ref());
            }
            bytes += entry_bytes;
            i += 1;
        }
        batches.push(Batch {
            first_index: entries[start].index,
            last: &entries[i - 1],
            ops: keys
                .into_iter()
                .map(|(key, value)| WriteOp {
                    key: key.to_owned(),
                    value: value.cloned(),
                    class: PathClass::Replicated,
                })
                .collect(),
        });
    }
    batches
}

/// The first of `paths` that is local to this cluster, if any: a primary never ships those (its
/// merkle index and WAL cover replicated paths only), so one arriving means the two clusters
/// disagree on what is local, or the peer is not a well-behaved primary.
pub(super) fn local_path<'p>(
    replication: &Replication,
    paths: impl IntoIterator<Item = &'p str>,
) -> Option<&'p str> {
    paths
        .into_iter()
        .find(|path| replication.core.classes.classify(path) == PathClass::Local)
}

/// The session's end when the primary shipped `path`, local here (at WAL `index`, if streamed).
pub(super) fn shipped_local_path(path: &str, index: Option<u64>) -> End {
    let at = index.map_or_else(String::new, |i| format!(" at WAL index {i}"));
    End::Failed(format!(
        "the primary sent a write to {path:?}{at}, a path local to this cluster: nothing of it was applied and the stream is stopped (do both clusters run with the same --local-prefixes?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::{StreamId, WalOp};

    fn entry(index: u64, keys: &[&str]) -> WalEntry {
        WalEntry {
            index,
            stream_id: StreamId([1; 16]),
            epoch: 1,
            merkle_root: [0; 32],
            cumulative_bytes: 0,
            ops: keys
                .iter()
                .map(|k| WalOp {
                    key: (*k).into(),
                    value: Some(index.to_be_bytes().to_vec()),
                })
                .collect(),
        }
    }

    #[test]
    fn merged_entries_keep_the_last_write_and_respect_the_limits() {
        let entries = vec![
            entry(1, &["a", "b"]),
            entry(2, &["b", "c"]),
            entry(3, &["d", "e", "f"]),
        ];
        let batches = merge(&entries, 4, usize::MAX);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].first_index, 1);
        assert_eq!(batches[0].last.index, 2);
        let b = batches[0].ops.iter().find(|o| o.key == "b").unwrap();
        assert_eq!(b.value.as_deref(), Some(&2u64.to_be_bytes()[..]));
        assert_eq!(batches[0].ops.len(), 3);
        assert_eq!(batches[1].first_index, 3);
        // One entry over the limit still travels alone.
        assert_eq!(merge(&entries[2..], 1, 1).len(), 1);
    }
}
