//! Full rebuilds and checks of the merkle index from a scan of every replicated key.
//!
//! Both admin operations work on a consistent snapshot without stopping writes for long: with
//! the committer paused (nothing in flight) they note etcd's current revision `R` and the index's LSN `L` (no transaction
//! is in flight, so etcd at `R` holds exactly the WAL through `L`), then scan at `R` while the
//! committer carries on. A reindex then applies the entries committed since `L` to the new index
//! and swaps it in; a check compares the scan with a copy of the index taken at `L`.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;
use std::time::Instant;

use etcd_client::{KvClient, TxnOp};
use tracing::{info, warn};

use crate::core::Core;
use crate::error::StoreError;
use crate::etcd::{FIRST_VALUES_PAGE, Scan, scan};
use crate::keyspace::{Keyspace, prefix_end};
use crate::merkle::{Change, Geometry, Leaf, MerkleIndex};
use crate::path::{PathClass, PathClassifier};
use crate::wal::reader::for_each_entry;
use crate::wal::record::hex;

/// Most mismatches a check lists by name.
const MAX_REPORTED: usize = 1000;

/// Builds an index from every replicated key in etcd at `revision` (0: now). Returns it with
/// the revision read.
pub async fn scan_index(
    kv: &mut KvClient,
    keyspace: &Keyspace,
    classes: &PathClassifier,
    geometry: Geometry,
    revision: i64,
) -> Result<(MerkleIndex, i64), StoreError> {
    let mut index = MerkleIndex::new(geometry);
    let prefix = keyspace.data_prefix();
    let revision = scan(
        kv,
        prefix.clone().into_bytes(),
        prefix_end(&prefix),
        Scan {
            revision,
            page: FIRST_VALUES_PAGE,
            ..Scan::default()
        },
        |kv| {
            if let Some(path) = keyspace.path_of(kv.key())
                && classes.classify(path) == PathClass::Replicated
            {
                index.load_change(&Change::put(path, kv.value()));
            }
            Ok(ControlFlow::Continue(()))
        },
    )
    .await?;
    index.rehash();
    Ok((index, revision))
}

/// A transaction dropping the checkpoint and every subpage record: until a rebuilt index is
/// flushed, a restart must reindex rather than trust the old records.
pub fn drop_flushed(keyspace: &Keyspace) -> [TxnOp; 2] {
    let records = keyspace.merkle_prefix();
    [
        TxnOp::delete(keyspace.merkle_checkpoint(), None),
        TxnOp::delete(
            records.as_str(),
            Some(etcd_client::DeleteOptions::new().with_range(prefix_end(&records))),
        ),
    ]
}

/// etcd's revision and the index's LSN, lined up (no transaction in flight).
async fn snapshot_point(core: &Core) -> Result<(i64, u64, MerkleIndex), StoreError> {
    let _paused = core.commits.pause().await?;
    let mut kv = core.kv();
    let revision = kv
        .get(core.keyspace.stream(), None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let index = core.index().clone();
    Ok((revision, index.lsn(), index))
}

/// What an admin reindex did.
#[derive(Debug)]
pub struct ReindexReport {
    pub keys: u64,
    pub root: String,
    pub seconds: f64,
}

/// Rebuilds the index from a full scan and swaps it in; every subpage is then flushed anew.
pub async fn reindex(core: &Core) -> Result<ReindexReport, StoreError> {
    let started = Instant::now();
    let geometry = core.index().geometry();
    let (revision, lsn, _) = snapshot_point(core).await?;
    let (mut fresh, _) = scan_index(
        &mut core.kv(),
        &core.keyspace,
        &core.classes,
        geometry,
        revision,
    )
    .await?;
    fresh.set_lsn(lsn);

    let _flush = core.flush_gate.lock().await;
    let _paused = core.commits.pause().await?;
    // Catch the new index up with what was committed during the scan.
    let current = core.index().lsn();
    for_each_entry(&core.keyspace, &mut core.kv(), lsn + 1, current, |entry| {
        for op in &entry.ops {
            fresh.load_change(&Change::new(&op.key, op.value.as_deref()));
        }
    })
    .await?;
    fresh.rehash();
    fresh.set_lsn(current);
    fresh.mark_nonempty_dirty();
    core.fenced(drop_flushed(&core.keyspace)).await?;
    core.set_checkpoint(None);
    let report = ReindexReport {
        keys: fresh.keys(),
        root: hex(&fresh.root()),
        seconds: started.elapsed().as_secs_f64(),
    };
    let old_root = hex(&core.index().root());
    if old_root != report.root {
        warn!(old_root, new_root = %report.root, "reindex changed the merkle root: the index had drifted");
    }
    *core.index() = fresh;
    info!(
        keys = report.keys,
        seconds = report.seconds,
        "merkle reindex done"
    );
    Ok(report)
}

/// What a merkle check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub keys_scanned: u64,
    /// Keys whose stored value hash differs from the index's, or that the index lacks.
    pub mismatched_keys: Vec<String>,
    /// Path hashes the index holds that no stored key has.
    pub phantom_key_hashes: Vec<String>,
    pub index_root: String,
    pub scan_root: String,
}

impl CheckReport {
    pub fn consistent(&self) -> bool {
        self.index_root == self.scan_root
    }
}

/// Compares the index with a full scan, and names the keys that differ.
pub async fn check(core: &Core) -> Result<CheckReport, StoreError> {
    let geometry = core.index().geometry();
    let (revision, _, snapshot) = snapshot_point(core).await?;
    let mut kv = core.kv();
    let (scanned, _) =
        scan_index(&mut kv, &core.keyspace, &core.classes, geometry, revision).await?;
    let mut report = CheckReport {
        keys_scanned: scanned.keys(),
        index_root: hex(&snapshot.root()),
        scan_root: hex(&scanned.root()),
        ..CheckReport::default()
    };
    let conflicts: BTreeSet<u32> = snapshot
        .conflicting_subpages(&scanned)
        .into_iter()
        .collect();
    if conflicts.is_empty() {
        return Ok(report);
    }
    // Name the keys: a keys-only pass at the same revision over the conflicting subpages.
    let mut named: HashSet<[u8; 16]> = HashSet::new();
    let prefix = core.keyspace.data_prefix();
    scan(
        &mut kv,
        prefix.clone().into_bytes(),
        prefix_end(&prefix),
        Scan {
            revision,
            keys_only: true,
            page: 5000,
        },
        |kv| {
            let Some(path) = core.keyspace.path_of(kv.key()) else {
                return Ok(ControlFlow::Continue(()));
            };
            let hash = crate::merkle::hash_path(path);
            let subpage = geometry.subpage_of(&hash);
            if core.classes.classify(path) == PathClass::Replicated && conflicts.contains(&subpage)
            {
                named.insert(hash);
                if find(&snapshot, subpage, &hash) != find(&scanned, subpage, &hash)
                    && report.mismatched_keys.len() < MAX_REPORTED
                {
                    report.mismatched_keys.push(path.to_owned());
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )
    .await?;
    for subpage in conflicts {
        for leaf in snapshot.leaves(subpage) {
            if !named.contains(&leaf.path) && report.phantom_key_hashes.len() < MAX_REPORTED {
                report.phantom_key_hashes.push(hex(&leaf.path));
            }
        }
    }
    warn!(
        mismatched = report.mismatched_keys.len(),
        phantoms = report.phantom_key_hashes.len(),
        "merkle check found the index out of step with storage"
    );
    Ok(report)
}

fn find(index: &MerkleIndex, subpage: u32, path: &[u8; 16]) -> Option<Leaf> {
    index
        .leaves(subpage)
        .binary_search_by(|l| l.path.cmp(path))
        .ok()
        .map(|at| index.leaves(subpage)[at])
}
