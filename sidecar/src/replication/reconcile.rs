//! Merkle reconciliation on the secondary: `merkle-diff` (two round trips against one primary
//! snapshot locate the conflicting subpages) and `merkle-sync` (the primary's keys there are
//! fetched and written where they differ; local keys it lacks there are deleted), then the
//! snapshot's index is stored as applied and the follower streams again.
//!
//! A former primary (`Role::Secondary` with `keep_aside`) copies what its first reconciliation
//! replaces to `core/local/unshipped/` first, so that writes it never shipped are kept.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::Instant;

use ferry_proto::replication as pb;
use prost::Message as _;
use tracing::{info, warn};

use super::applied::Applied;
use super::definition::{UNSHIPPED_PREFIX, UnshippedRange};
use super::follower::{Client, End, secondary_id, timeout};
use super::snapshot::{conflicting_pages, conflicting_subpages};
use super::{ReconcileReport, Replication};
use crate::commit::WriteOp;
use crate::etcd::{Scan, scan};
use crate::keyspace::prefix_end;
use crate::merkle::{PathHash, hash_path, hash_value};
use crate::path::PathClass;
use crate::wal::record::StreamId;

/// merkle-diff then merkle-sync against one primary snapshot; stores the snapshot's index as
/// applied once the local root matches it.
pub(super) async fn reconcile(replication: &Replication, client: &mut Client) -> Result<(), End> {
    let core = &replication.core;
    let id = secondary_id(replication);
    {
        let mut s = replication.follower_status();
        s.state = "merkle-diff";
        s.merkle_syncs += 1;
        s.sync_progress = 0;
        s.sync_total_keys = 0;
    }
    let started = Instant::now();
    let geometry = core.index().geometry();
    let request = pb::MerklePagesRequest {
        secondary_id: id.clone(),
        pages: geometry.pages,
        subpages_per_page: geometry.subpages_per_page,
    };
    let mut report = ReconcileReport {
        round_trips: 1,
        locate_bytes: request.encoded_len() as u64,
        ..ReconcileReport::default()
    };
    let pages = timeout(client.merkle_pages(request)).await?.into_inner();
    report.locate_bytes += pages.encoded_len() as u64;
    let stream_id = StreamId(
        pages
            .stream_id
            .as_slice()
            .try_into()
            .map_err(|_| End::Failed("the primary sent a malformed stream id".into()))?,
    );
    let conflicting = conflicting_pages(&core.index(), &pages.page_hashes).map_err(End::Failed)?;
    let subpages = if conflicting.is_empty() {
        Vec::new()
    } else {
        let request = pb::MerkleSubpagesRequest {
            secondary_id: id.clone(),
            generation: pages.generation,
            pages: conflicting.clone(),
        };
        report.round_trips += 1;
        report.locate_bytes += request.encoded_len() as u64;
        let hashes = timeout(client.merkle_subpages(request)).await?.into_inner();
        report.locate_bytes += hashes.encoded_len() as u64;
        conflicting_subpages(&core.index(), &conflicting, &hashes.subpage_hashes)
            .map_err(End::Failed)?
    };
    info!(
        generation = pages.generation,
        wal_index = pages.wal_index,
        conflicting_pages = conflicting.len(),
        conflicting_subpages = subpages.len(),
        "merkle-diff done"
    );
    report.conflicting_pages = conflicting.len() as u64;
    report.conflicting_subpages = subpages.len() as u64;
    let definition = replication.definition();
    let keep_aside = match definition.as_ref().and_then(|d| d.role.keep_aside()) {
        Some(k) => Some(KeepAside {
            epoch: k.epoch,
            only: unshipped_keys(replication, k.unshipped).await?,
        }),
        None => None,
    };
    let keeping_aside = keep_aside.is_some();
    if !subpages.is_empty() {
        let target = SyncTarget {
            id: &id,
            generation: pages.generation,
            subpages: &subpages,
            keep_aside,
        };
        sync(replication, client, target, &mut report).await?;
    }
    let root = core.index().root();
    if root.as_slice() != pages.root.as_slice() {
        return Err(End::Failed(
            "after merkle-sync the merkle root still differs from the primary's snapshot".into(),
        ));
    }
    let applied = Applied {
        stream_id,
        index: pages.wal_index,
        epoch: pages.epoch,
    };
    replication
        .gateway
        .apply(Vec::new(), Some(applied.encode()))
        .await?;
    if keeping_aside {
        replication
            .store_definition(|d| {
                d.role = d.role.reconciled();
            })
            .await?;
    }
    report.wal_index = pages.wal_index;
    report.seconds = started.elapsed().as_secs_f64();
    info!(?report, "merkle reconciliation done");
    replication.note_applied(applied);
    replication.follower_status().last_reconcile = Some(report);
    Ok(())
}

/// What one merkle-sync fetches.
struct SyncTarget<'a> {
    id: &'a str,
    generation: u64,
    subpages: &'a [u32],
    /// Set on a former primary: copy what is replaced aside first (see `definition`).
    keep_aside: Option<KeepAside>,
}

/// What a former primary's first reconciliation keeps aside under
/// `core/local/unshipped/e<epoch>/` before replacing it.
struct KeepAside {
    epoch: u64,
    /// Only these paths (those its unshipped WAL entries wrote), or, when `None`, every path
    /// the reconciliation replaces or deletes.
    only: Option<HashSet<String>>,
}

impl KeepAside {
    fn covers(&self, path: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(path))
    }
}

/// The paths this cluster's unshipped WAL entries wrote, or `None` when they are not known
/// (no range, or the WAL no longer holds all of it): then everything replaced is kept aside.
async fn unshipped_keys(
    replication: &Replication,
    range: Option<UnshippedRange>,
) -> Result<Option<HashSet<String>>, End> {
    let Some(UnshippedRange { after, through }) = range else {
        return Ok(None);
    };
    let mut keys = HashSet::new();
    if through <= after {
        return Ok(Some(keys));
    }
    let core = &replication.core;
    let wal = core.wal();
    if wal.first == 0 || wal.first > after + 1 || wal.last < through {
        warn!(
            after,
            through,
            wal_first = wal.first,
            "the unshipped WAL entries are no longer all retained; keeping aside every replaced key"
        );
        return Ok(None);
    }
    crate::wal::reader::for_each_entry(&core.keyspace, &mut core.kv(), after + 1, through, |e| {
        keys.extend(e.ops.into_iter().map(|op| op.key));
    })
    .await?;
    Ok(Some(keys))
}

/// Copies the primary's keys in the target's subpages and deletes the local ones it lacks there.
async fn sync(
    replication: &Replication,
    client: &mut Client,
    target: SyncTarget<'_>,
    report: &mut ReconcileReport,
) -> Result<(), End> {
    let core = &replication.core;
    replication.follower_status().state = "merkle-sync";
    // The local keys there, by path hash; those the primary does not send are deleted.
    let mut stale: HashSet<PathHash> = {
        let index = core.index();
        target
            .subpages
            .iter()
            .flat_map(|&s| index.leaves(s).iter().map(|leaf| leaf.path))
            .collect()
    };
    let mut chunks = timeout(client.merkle_sync(pb::MerkleSyncRequest {
        secondary_id: target.id.to_owned(),
        generation: target.generation,
        subpages: target.subpages.to_vec(),
    }))
    .await?
    .into_inner();
    let mut batch = Batcher::new(replication, target.keep_aside);
    while let Some(chunk) = chunks.message().await? {
        if chunk.total_keys > 0 {
            replication.follower_status().sync_total_keys = chunk.total_keys;
        }
        if let Some(path) =
            super::apply::local_path(replication, chunk.keys.iter().map(|kv| kv.key.as_str()))
        {
            return Err(super::apply::shipped_local_path(path, None));
        }
        let received = chunk.keys.len() as u64;
        report.keys_received += received;
        for kv in chunk.keys {
            stale.remove(&hash_path(&kv.key));
            let local = core.index().value_of(&hash_path(&kv.key));
            if local == Some(hash_value(&kv.value)) {
                continue;
            }
            batch.push(kv.key, Some(kv.value), local.is_some()).await?;
        }
        replication.follower_status().sync_progress += received;
    }
    // Only when there is something to delete: find the paths of those hashes.
    let mut stale = if stale.is_empty() {
        Vec::new()
    } else {
        paths_of(replication, &stale).await?
    };
    stale.sort_unstable();
    report.keys_deleted = stale.len() as u64;
    for key in stale {
        batch.push(key, None, true).await?;
    }
    batch.flush().await?;
    report.keys_written = batch.written;
    report.keys_kept_aside = batch.kept_aside;
    Ok(())
}

/// Groups a merkle-sync's writes into transactions of bounded size.
struct Batcher<'r> {
    replication: &'r Replication,
    keep_aside: Option<KeepAside>,
    ops: Vec<WriteOp>,
    bytes: usize,
    /// Puts made (deletes are counted by the caller).
    written: u64,
    kept_aside: u64,
}

impl<'r> Batcher<'r> {
    fn new(replication: &'r Replication, keep_aside: Option<KeepAside>) -> Self {
        Self {
            replication,
            keep_aside,
            ops: Vec::new(),
            bytes: 0,
            written: 0,
            kept_aside: 0,
        }
    }

    /// Adds a put (or, with `value` `None`, a delete) of `key`; `exists` says whether the key
    /// is present here, so that a former primary keeps its current value aside first.
    async fn push(&mut self, key: String, value: Option<Vec<u8>>, exists: bool) -> Result<(), End> {
        let limits = self.replication.core.limits;
        let put = value.is_some();
        let mut ops = Vec::with_capacity(2);
        if let (Some(keep), true) = (&self.keep_aside, exists)
            && keep.covers(&key)
            && let Some(old) = self.replication.gateway.get(&key).await?
        {
            ops.push(WriteOp {
                key: format!("{UNSHIPPED_PREFIX}e{}/{key}", keep.epoch),
                value: Some(old),
                class: PathClass::Local,
            });
            self.kept_aside += 1;
        }
        ops.push(WriteOp {
            key,
            value,
            class: PathClass::Replicated,
        });
        let size: usize = ops.iter().map(WriteOp::txn_bytes).sum();
        if !self.ops.is_empty()
            && (self.ops.len() + ops.len() > limits.max_apply_ops
                || self.bytes + size > limits.max_batch_bytes)
        {
            self.flush().await?;
        }
        self.bytes += size;
        self.written += u64::from(put);
        self.ops.extend(ops);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.ops);
        self.bytes = 0;
        self.replication.gateway.apply(ops, None).await?;
        Ok(())
    }
}

/// The paths of this cluster's replicated keys whose hashes are in `hashes`: a keys-only scan.
async fn paths_of(
    replication: &Replication,
    hashes: &HashSet<PathHash>,
) -> Result<Vec<String>, End> {
    let core = &replication.core;
    let ks = &core.keyspace;
    let prefix = ks.data_prefix();
    let mut paths = Vec::new();
    scan(
        &mut core.kv(),
        prefix.clone().into_bytes(),
        prefix_end(&prefix),
        Scan {
            keys_only: true,
            page: 2000,
            ..Scan::default()
        },
        |kv| {
            if let Some(path) = ks.path_of(kv.key())
                && core.classes.classify(path) == PathClass::Replicated
                && hashes.contains(&hash_path(path))
            {
                paths.push(path.to_owned());
            }
            Ok(ControlFlow::Continue(()))
        },
    )
    .await?;
    Ok(paths)
}
