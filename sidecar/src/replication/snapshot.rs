//! Merkle snapshots and the two-round-trip diff, the pure part of reconciliation.
//!
//! When a secondary asks for the primary's page hashes, the primary copies the hashes of its
//! merkle index at that moment into a [`MerkleSnapshot`]: the page and subpage hashes (cut to
//! [`WIRE_HASH_BYTES`] each, as sent) and each subpage's key count, with the WAL index and the
//! etcd revision they reflect. The next round trips and the key transfer all use that snapshot,
//! so the secondary reconciles against one consistent state and then streams the WAL from its
//! index. A snapshot of the default geometry costs about 1.3 MiB; the primary keeps a few.
//!
//! Bytes on the wire to locate conflicts: round trip 1 sends `pages × 16` bytes (16 KiB by
//! default); round trip 2 sends `16 × subpages per page` bytes for each conflicting page.

use std::collections::VecDeque;

use crate::merkle::{Digest, Geometry, MerkleIndex};

/// Bytes of each page or subpage hash sent for comparison. The full 32-byte root is checked
/// after the sync, so a (2^-128) prefix collision could not go unnoticed.
pub const WIRE_HASH_BYTES: usize = 16;
/// Snapshots a primary keeps at once; the oldest goes first.
pub const MAX_SNAPSHOTS: usize = 4;

/// The primary's merkle state at one WAL index.
#[derive(Clone, Debug)]
pub struct MerkleSnapshot {
    pub generation: u64,
    pub geometry: Geometry,
    pub wal_index: u64,
    pub root: Digest,
    /// The etcd revision at which the data matches `wal_index`.
    pub revision: i64,
    pub page_hashes: Vec<u8>,
    pub subpage_hashes: Vec<u8>,
    pub subpage_keys: Vec<u32>,
}

impl MerkleSnapshot {
    /// Copies the hashes of `index` (whose state is WAL index `index.lsn()`).
    pub fn take(index: &MerkleIndex, generation: u64, revision: i64) -> Self {
        let geometry = index.geometry();
        let mut page_hashes = Vec::with_capacity(geometry.pages as usize * WIRE_HASH_BYTES);
        let mut subpage_hashes = Vec::with_capacity(geometry.subpages() as usize * WIRE_HASH_BYTES);
        for page in 0..geometry.pages {
            page_hashes.extend_from_slice(&index.page_hashes()[page as usize][..WIRE_HASH_BYTES]);
            for hash in index.subpage_hashes(page) {
                subpage_hashes.extend_from_slice(&hash[..WIRE_HASH_BYTES]);
            }
        }
        let subpage_keys = (0..geometry.subpages())
            .map(|s| index.leaves(s).len() as u32)
            .collect();
        Self {
            generation,
            geometry,
            wal_index: index.lsn(),
            root: index.root(),
            revision,
            page_hashes,
            subpage_hashes,
            subpage_keys,
        }
    }

    /// The wire hashes of the subpages of `pages`, concatenated in order: at most as many bytes
    /// as the snapshot holds, since `pages` (a secondary's request) may not name more pages than
    /// there are.
    pub fn subpage_hashes_of(&self, pages: &[u32]) -> Result<Vec<u8>, String> {
        if pages.len() > self.geometry.pages as usize {
            return Err(format!(
                "{} pages asked for; the index has {}",
                pages.len(),
                self.geometry.pages
            ));
        }
        let per = self.geometry.subpages_per_page as usize * WIRE_HASH_BYTES;
        let mut out = Vec::with_capacity(pages.len() * per);
        for &page in pages {
            if page >= self.geometry.pages {
                return Err(format!(
                    "page {page} is out of range (the index has {} pages)",
                    self.geometry.pages
                ));
            }
            let start = page as usize * per;
            out.extend_from_slice(&self.subpage_hashes[start..start + per]);
        }
        Ok(out)
    }

    /// How many keys the primary holds in `subpages`.
    pub fn keys_in(&self, subpages: &[u32]) -> u64 {
        subpages
            .iter()
            .filter_map(|&s| self.subpage_keys.get(s as usize))
            .map(|&n| u64::from(n))
            .sum()
    }
}

/// The wire hashes of `index`'s pages, as a secondary compares them.
pub fn wire_page_hashes(index: &MerkleIndex) -> Vec<u8> {
    index
        .page_hashes()
        .iter()
        .flat_map(|h| h[..WIRE_HASH_BYTES].iter().copied())
        .collect()
}

/// Round trip 1 on the secondary: the pages whose hashes differ from the primary's.
pub fn conflicting_pages(local: &MerkleIndex, remote_pages: &[u8]) -> Result<Vec<u32>, String> {
    let geometry = local.geometry();
    if remote_pages.len() != geometry.pages as usize * WIRE_HASH_BYTES {
        return Err(format!(
            "the primary sent {} bytes of page hashes; {} pages need {}",
            remote_pages.len(),
            geometry.pages,
            geometry.pages as usize * WIRE_HASH_BYTES
        ));
    }
    Ok(remote_pages
        .chunks_exact(WIRE_HASH_BYTES)
        .zip(local.page_hashes())
        .enumerate()
        .filter(|(_, (remote, local))| *remote != &local[..WIRE_HASH_BYTES])
        .map(|(page, _)| page as u32)
        .collect())
}

/// Round trip 2 on the secondary: the subpages of `pages` whose hashes differ.
pub fn conflicting_subpages(
    local: &MerkleIndex,
    pages: &[u32],
    remote_subpages: &[u8],
) -> Result<Vec<u32>, String> {
    let per = local.geometry().subpages_per_page;
    if remote_subpages.len() != pages.len() * per as usize * WIRE_HASH_BYTES {
        return Err(format!(
            "the primary sent {} bytes of subpage hashes for {} pages",
            remote_subpages.len(),
            pages.len()
        ));
    }
    let mut remote = remote_subpages.chunks_exact(WIRE_HASH_BYTES);
    let mut out = Vec::new();
    for &page in pages {
        for (i, local) in local.subpage_hashes(page).iter().enumerate() {
            let theirs = remote.next().expect("length checked above");
            if theirs != &local[..WIRE_HASH_BYTES] {
                out.push(page * per + i as u32);
            }
        }
    }
    Ok(out)
}

/// The primary's recent snapshots, by generation.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    next_generation: u64,
    snapshots: VecDeque<std::sync::Arc<MerkleSnapshot>>,
}

impl SnapshotCache {
    pub fn next_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    pub fn insert(&mut self, snapshot: MerkleSnapshot) -> std::sync::Arc<MerkleSnapshot> {
        if self.snapshots.len() == MAX_SNAPSHOTS {
            self.snapshots.pop_front();
        }
        let snapshot = std::sync::Arc::new(snapshot);
        self.snapshots.push_back(snapshot.clone());
        snapshot
    }

    pub fn get(&self, generation: u64) -> Option<std::sync::Arc<MerkleSnapshot>> {
        self.snapshots
            .iter()
            .find(|s| s.generation == generation)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::merkle::Change;

    fn index(keys: impl IntoIterator<Item = (String, String)>) -> MerkleIndex {
        let mut index = MerkleIndex::new(Geometry::new(16, 8).unwrap());
        let changes: Vec<Change> = keys
            .into_iter()
            .map(|(k, v)| Change::put(&k, v.as_bytes()))
            .collect();
        index.apply(&changes);
        index
    }

    #[test]
    fn two_round_trips_find_exactly_the_changed_subpages() {
        let base: Vec<_> = (0..500)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let primary = index(base.clone());
        let mut changed = base.clone();
        changed[7].1 = "other".into();
        changed.remove(300);
        changed.push(("extra".into(), "x".into()));
        let secondary = index(changed);

        let snapshot = MerkleSnapshot::take(&primary, 1, 10);
        let pages = conflicting_pages(&secondary, &snapshot.page_hashes).unwrap();
        let hashes = snapshot.subpage_hashes_of(&pages).unwrap();
        let found = conflicting_subpages(&secondary, &pages, &hashes).unwrap();
        let mut expected = secondary.conflicting_subpages(&primary);
        expected.sort_unstable();
        assert_eq!(found, expected);
        assert!(!found.is_empty() && found.len() <= 3);
        assert!(snapshot.keys_in(&found) >= 1);
    }

    #[test]
    fn equal_indexes_have_no_conflicts_and_bad_lengths_are_refused() {
        let a = index((0..50).map(|i| (format!("k{i}"), "v".to_string())));
        let snapshot = MerkleSnapshot::take(&a, 1, 1);
        assert!(
            conflicting_pages(&a, &snapshot.page_hashes)
                .unwrap()
                .is_empty()
        );
        assert!(conflicting_pages(&a, &[0; 3]).is_err());
        assert!(conflicting_subpages(&a, &[0], &[0; 5]).is_err());
        assert!(snapshot.subpage_hashes_of(&[99]).is_err());
    }

    proptest! {
        /// Whatever page numbers a secondary asks for, the primary answers with at most its
        /// snapshot's subpage hashes, or refuses by name: a request of millions of page numbers
        /// (a 4 MiB message holds that many) must not make it allocate gigabytes.
        #[test]
        fn asked_pages_are_answered_within_the_snapshot_or_refused(
            pages in prop_oneof![
                proptest::collection::vec(0u32..16, 0..40),
                proptest::collection::vec(prop_oneof![0u32..16, any::<u32>()], 0..40),
            ],
        ) {
            let snapshot = MerkleSnapshot::take(&index([("k".into(), "v".into())]), 1, 1);
            let per = 8 * WIRE_HASH_BYTES;
            match snapshot.subpage_hashes_of(&pages) {
                Ok(hashes) => {
                    prop_assert!(hashes.len() <= snapshot.subpage_hashes.len());
                    prop_assert_eq!(hashes.len(), pages.len() * per);
                    for (chunk, &page) in hashes.chunks(per).zip(&pages) {
                        let start = page as usize * per;
                        prop_assert_eq!(chunk, &snapshot.subpage_hashes[start..start + per]);
                    }
                }
                Err(e) => prop_assert!(pages.len() > 16 || pages.iter().any(|&p| p >= 16), "{e}"),
            }
        }

        /// Whatever hash bytes a primary sends, the secondary finds conflicts only among its
        /// own pages and subpages, or refuses the answer.
        #[test]
        fn hashes_from_the_primary_name_only_existing_pages_and_subpages(
            remote in proptest::collection::vec(any::<u8>(), 0..300),
            asked in proptest::collection::btree_set(0u32..16, 0..3),
        ) {
            let local = index([("k".into(), "v".into())]);
            let mut page_hashes = remote.clone();
            page_hashes.resize(16 * WIRE_HASH_BYTES, 0);
            for pages in [remote.clone(), page_hashes] {
                if let Ok(pages) = conflicting_pages(&local, &pages) {
                    prop_assert!(pages.iter().all(|&p| p < 16));
                }
            }
            let asked: Vec<u32> = asked.into_iter().collect();
            let mut subpage_hashes = remote.clone();
            subpage_hashes.resize(asked.len() * 8 * WIRE_HASH_BYTES, 0);
            for hashes in [remote, subpage_hashes] {
                if let Ok(found) = conflicting_subpages(&local, &asked, &hashes) {
                    prop_assert!(found.iter().all(|s| asked.contains(&(s / 8))));
                }
            }
        }
    }
}
