//! Vault's list semantics over a sorted key space.
//!
//! Listing a prefix returns its direct children: a key `p/a` lists as `a`, a key `p/b/c` as the
//! folder `b/`, each name once, in sorted order. The sidecar scans etcd in key order and, on
//! meeting a folder, jumps past everything under it ([`skip_folder`]), so listing a folder with a
//! large subtree costs one range read per child, not one per descendant.

/// The direct child of `prefix` that `key` lies under: `Some("a")` for a key directly under the
/// prefix, `Some("b/")` for a key deeper in folder `b`, `None` when `key` is not under `prefix`
/// or equals it.
pub fn child_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    if rest.is_empty() {
        return None;
    }
    Some(match rest.find('/') {
        Some(slash) => &rest[..=slash],
        None => rest,
    })
}

/// The first path after every key under folder `child` (which ends with `/`) of `prefix`.
///
/// `/` is followed by `0` in byte order, so `prefix + "b0"` sorts after every `prefix + "b/..."`
/// and before any other child that could follow.
pub fn skip_folder(prefix: &str, child: &str) -> String {
    let name = child.strip_suffix('/').unwrap_or(child);
    format!("{prefix}{name}0")
}

/// The children of `prefix` among `keys` (sorted), as a list request returns them.
pub fn children<'k>(prefix: &str, keys: impl IntoIterator<Item = &'k str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        if let Some(child) = child_of(prefix, key)
            && out.last().map(String::as_str) != Some(child)
        {
            out.push(child.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lists_direct_children_and_folders() {
        let keys = ["a/b", "a/c/d", "a/c/e", "a/d", "b/x", "ab"];
        let mut sorted = keys.to_vec();
        sorted.sort();
        assert_eq!(children("a/", sorted.iter().copied()), ["b", "c/", "d"]);
        assert_eq!(children("", sorted.iter().copied()), ["a/", "ab", "b/"]);
        assert!(children("z/", sorted.iter().copied()).is_empty());
    }

    #[test]
    fn a_name_can_be_both_key_and_folder() {
        // Vault allows `a/b` and `a/b/c` side by side; both are listed.
        assert_eq!(children("a/", ["a/b", "a/b/c"]), ["b", "b/"]);
    }

    #[test]
    fn skip_folder_sorts_after_the_subtree_and_before_siblings() {
        let next = skip_folder("p/", "b/");
        assert!(next.as_str() > "p/b/zzzz");
        assert!(next.as_str() > "p/b/\u{10ffff}");
        assert!(next.as_str() < "p/b0a" || next == "p/b0");
        assert!(next.as_str() < "p/c");
        assert!(next.as_str() <= "p/b0");
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-c0/.]{0,2}[a-c]".prop_map(|s| s.replace('/', "x"))
    }

    proptest! {
        /// Jumping past folders lists exactly what a full scan lists.
        #[test]
        fn skipping_scan_equals_full_scan(
            paths in proptest::collection::btree_set(
                proptest::collection::vec(segment(), 1..4).prop_map(|s| s.join("/")), 0..40),
            depth in 0usize..2,
        ) {
            let sorted: Vec<&str> = paths.iter().map(String::as_str).collect();
            let prefix = sorted.first().map(|p| {
                p.split('/').take(depth).map(|s| format!("{s}/")).collect::<String>()
            }).unwrap_or_default();
            let full = children(&prefix, sorted.iter().copied());

            // Emulate the sidecar's scan: resume after each folder from skip_folder.
            let mut skipping = Vec::new();
            let mut from = prefix.clone();
            loop {
                let next = sorted.iter().copied().find(|k| *k >= from.as_str() && k.starts_with(&prefix));
                let Some(key) = next else { break };
                let child = child_of(&prefix, key).unwrap().to_owned();
                from = if child.ends_with('/') { skip_folder(&prefix, &child) } else { format!("{key}\0") };
                if skipping.last() != Some(&child) { skipping.push(child); }
            }
            prop_assert_eq!(&full, &skipping);
            let unique: BTreeSet<_> = full.iter().collect();
            prop_assert_eq!(unique.len(), full.len());
        }
    }
}
