use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn small() -> Geometry {
    Geometry::new(4, 8).unwrap()
}

/// A rebuild from scratch: the final key set loaded in one pass.
fn rebuild(geometry: Geometry, keys: &BTreeMap<String, Vec<u8>>) -> MerkleIndex {
    let mut index = MerkleIndex::new(geometry);
    for (path, value) in keys {
        index.load_change(&Change::put(path, value));
    }
    index.rehash();
    index
}

fn ops() -> impl Strategy<Value = Vec<(String, Option<Vec<u8>>)>> {
    proptest::collection::vec(
        (
            "[a-f]{1,3}",
            proptest::option::weighted(0.8, proptest::collection::vec(any::<u8>(), 0..8)),
        ),
        0..80,
    )
}

fn final_state(ops: &[(String, Option<Vec<u8>>)]) -> BTreeMap<String, Vec<u8>> {
    let mut keys = BTreeMap::new();
    for (k, v) in ops {
        match v {
            Some(v) => keys.insert(k.clone(), v.clone()),
            None => keys.remove(k),
        };
    }
    keys
}

fn change(k: &str, v: &Option<Vec<u8>>) -> Change {
    match v {
        Some(v) => Change::put(k, v),
        None => Change::delete(k),
    }
}

proptest! {
    /// The same keys and values give the same root whatever order they were written in.
    #[test]
    fn root_is_independent_of_write_order(
        keys in proptest::collection::btree_map("[a-z]{1,6}", proptest::collection::vec(any::<u8>(), 0..16), 0..60),
        seed in any::<u64>(),
    ) {
        let mut forward = MerkleIndex::new(small());
        for (k, v) in &keys {
            forward.apply(&[Change::put(k, v)]);
        }
        let mut shuffled: Vec<_> = keys.iter().collect();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let mut backward = MerkleIndex::new(small());
        let batch: Vec<Change> = shuffled.iter().map(|(k, v)| Change::put(k, v)).collect();
        backward.apply(&batch);
        prop_assert_eq!(forward.root(), backward.root());
        prop_assert_eq!(forward.keys(), keys.len() as u64);
    }

    /// Incremental updates, one batch at a time, equal a rebuild of the final key set.
    #[test]
    fn incremental_equals_rebuild(ops in ops(), batch in 1usize..10) {
        let mut index = MerkleIndex::new(small());
        for chunk in ops.chunks(batch) {
            let changes: Vec<Change> = chunk.iter().map(|(k, v)| change(k, v)).collect();
            index.apply(&changes);
        }
        let expected = rebuild(small(), &final_state(&ops));
        prop_assert_eq!(index.root(), expected.root());
        prop_assert_eq!(index.keys(), expected.keys());
        prop_assert!(index.conflicting_subpages(&expected).is_empty());
    }

    /// Staging computes the root a commit will have, and changes nothing until committed.
    #[test]
    fn stage_predicts_commit_without_mutating(ops in ops()) {
        let mut index = MerkleIndex::new(small());
        let before = index.root();
        let changes: Vec<Change> = ops.iter().map(|(k, v)| change(k, v)).collect();
        let staged = index.stage(&changes);
        prop_assert_eq!(index.root(), before);
        let predicted = staged.root();
        index.commit(staged);
        prop_assert_eq!(index.root(), predicted);
        prop_assert_eq!(predicted, rebuild(small(), &final_state(&ops)).root());
    }

    /// Stages chained on uncommitted stages predict the roots their in-order commits give.
    #[test]
    fn chained_stages_equal_sequential_commits(ops in ops(), cuts in proptest::collection::vec(0usize..80, 0..4)) {
        let changes: Vec<Change> = ops.iter().map(|(k, v)| change(k, v)).collect();
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(changes.len())).collect();
        bounds.push(0);
        bounds.push(changes.len());
        bounds.sort_unstable();
        let mut index = MerkleIndex::new(small());
        let mut stages: Vec<Staged> = Vec::new();
        for w in bounds.windows(2) {
            let pending: Vec<&Staged> = stages.iter().collect();
            let next = index.stage_on(&pending, &changes[w[0]..w[1]]);
            stages.push(next);
        }
        let predicted: Vec<Digest> = stages.iter().map(Staged::root).collect();
        for (staged, root) in stages.into_iter().zip(predicted) {
            index.commit(staged);
            prop_assert_eq!(index.root(), root);
        }
        prop_assert_eq!(index.root(), rebuild(small(), &final_state(&ops)).root());
    }

    /// Loading changes then rehashing equals applying them one by one (the recovery path).
    #[test]
    fn load_then_rehash_equals_apply(ops in ops()) {
        let mut applied = MerkleIndex::new(small());
        let mut loaded = MerkleIndex::new(small());
        for (k, v) in &ops {
            applied.apply(&[change(k, v)]);
            loaded.load_change(&change(k, v));
        }
        loaded.rehash();
        prop_assert_eq!(applied.root(), loaded.root());
    }
}

#[test]
fn conflicting_subpages_finds_exactly_the_changed_ones() {
    let geometry = Geometry::default();
    let mut a = MerkleIndex::new(geometry);
    let changes: Vec<Change> = (0..5000)
        .map(|i| Change::put(&format!("k{i}"), b"v"))
        .collect();
    a.apply(&changes);
    let mut b = a.clone();
    b.apply(&[Change::put("k17", b"other"), Change::delete("k4000")]);
    let expected = {
        let mut v = vec![
            geometry.subpage_of(&hash_path("k17")),
            geometry.subpage_of(&hash_path("k4000")),
        ];
        v.sort_unstable();
        v.dedup();
        v
    };
    assert_eq!(a.conflicting_subpages(&b), expected);
    assert_ne!(a.root(), b.root());
}

#[test]
fn deleting_everything_returns_to_the_empty_root() {
    let mut index = MerkleIndex::new(small());
    let empty = index.root();
    index.apply(&[Change::put("a", b"1"), Change::put("b", b"2")]);
    assert_ne!(index.root(), empty);
    index.apply(&[
        Change::delete("a"),
        Change::delete("b"),
        Change::delete("c"),
    ]);
    assert_eq!(index.root(), empty);
    assert_eq!(index.keys(), 0);
}

#[test]
fn dirty_tracking_hands_out_each_subpage_once() {
    let mut index = MerkleIndex::new(small());
    index.apply(&[Change::put("a", b"1"), Change::put("b", b"2")]);
    let dirty = index.dirty_count();
    assert!(dirty >= 1);
    let ids = index.dirty_ids();
    assert_eq!(ids.len(), dirty);
    let taken = index.take_dirty(&ids);
    assert_eq!(taken.len(), dirty);
    assert_eq!(index.dirty_count(), 0);
    assert!(index.take_dirty(&ids).is_empty());
}

#[test]
fn geometry_is_validated() {
    assert!(Geometry::new(0, 4).is_err());
    assert!(Geometry::new(1 << 12, 1 << 12).is_err());
    assert!(Geometry::new(256, 256).is_ok());
}

#[test]
#[should_panic(expected = "changed index")]
fn stale_staged_changes_are_refused() {
    let mut index = MerkleIndex::new(small());
    let first = index.stage(&[Change::put("a", b"1")]);
    index.apply(&[Change::put("b", b"2")]);
    index.commit(first);
}

/// The hash scheme is part of the replication protocol: a primary and a secondary running
/// different Ferry versions must compute the same roots. A change that moves these roots
/// breaks mixed-version clusters.
#[test]
fn roots_are_stable_across_versions() {
    let hex = |d: Digest| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut index = MerkleIndex::new(Geometry::default());
    assert_eq!(
        hex(index.root()),
        "329a4f791c0c5d6a9f57812922823d52647f10f02da5d14c557492ce5879681b"
    );
    index.apply(&[
        Change::put("logical/a", b"1"),
        Change::put("logical/b/c", b"two"),
    ]);
    assert_eq!(
        hex(index.root()),
        "0dd8d18065b62cee431e3fbcaaec4617291aac1e1404117bc3f995cf21e1be98"
    );
}
