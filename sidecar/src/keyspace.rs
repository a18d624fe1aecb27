//! The sidecar's etcd keyspace.
//!
//! Everything a cluster stores lives under one prefix, `/ferry/<cluster>/` by default, so that
//! several clusters (or tests) can share an etcd and a backup of the prefix is a backup of the
//! cluster. The sidecar is the only writer under it.
//!
//! ```text
//! <root>data/<path>                 value of storage path <path> (opaque ciphertext)
//! <root>wal/<index:016x>            WAL entry <index>, see wal::record for its layout
//! <root>merkle/<subpage:08x>        flushed merkle subpage with its LSN, see merkle::record
//! <root>meta/fence                  the write fence: holder's node id, under the holder's lease
//! <root>meta/stream                 this cluster's WAL stream id and replication epoch
//! <root>meta/merkle-checkpoint      geometry and the WAL index every subpage is flushed up to
//! <root>meta/applied                secondary: the primary's stream and the last index applied
//! <root>meta/superseded             a newer primary's epoch, once this cluster learned of one
//! <root>meta/nodes/<node id>        a node's presence record, under that node's own lease
//! ```
//!
//! `meta/superseded` is the one data-bearing key written outside the write fence: learning of a
//! newer epoch must be durable even when this node has lost its fence, and the record only ever
//! restricts (its epoch only grows), so any node may store it. Presence records
//! (`meta/nodes/`) are each written by their own node, fence or not: they say who is up, and
//! nothing reads them to decide anything but what `sys/ha-status` lists.
//!
//! WAL indexes are fixed-width hexadecimal so that etcd's byte order is index order. Data keys
//! keep the storage path verbatim so that a list is a range read in path order.

/// Key builders for one cluster's keyspace.
#[derive(Clone, Debug)]
pub struct Keyspace {
    root: String,
}

impl Keyspace {
    /// The keyspace rooted at `root`, which must end with `/`.
    pub fn new(root: impl Into<String>) -> Self {
        let mut root = root.into();
        if !root.ends_with('/') {
            root.push('/');
        }
        Self { root }
    }

    /// The keyspace of cluster `cluster` under the default root.
    pub fn for_cluster(cluster: &str) -> Self {
        Self::new(format!("/ferry/{cluster}/"))
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn data_prefix(&self) -> String {
        format!("{}data/", self.root)
    }

    pub fn data(&self, path: &str) -> String {
        format!("{}data/{path}", self.root)
    }

    /// The storage path of a data key, if `key` is one.
    pub fn path_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.root.as_str())?.strip_prefix("data/")
    }

    pub fn wal_prefix(&self) -> String {
        format!("{}wal/", self.root)
    }

    pub fn wal(&self, index: u64) -> String {
        format!("{}wal/{index:016x}", self.root)
    }

    /// The WAL index a WAL key names, if `key` is one: exactly the form [`Self::wal`] writes,
    /// 16 lowercase hex digits (`from_str_radix` alone would also take a sign or uppercase).
    pub fn wal_index_of(&self, key: &[u8]) -> Option<u64> {
        let key = std::str::from_utf8(key).ok()?;
        let hex = key.strip_prefix(self.root.as_str())?.strip_prefix("wal/")?;
        let canonical =
            hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        canonical
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
    }

    pub fn merkle_prefix(&self) -> String {
        format!("{}merkle/", self.root)
    }

    pub fn merkle_subpage(&self, subpage: u32) -> String {
        format!("{}merkle/{subpage:08x}", self.root)
    }

    pub fn fence(&self) -> String {
        format!("{}meta/fence", self.root)
    }

    pub fn stream(&self) -> String {
        format!("{}meta/stream", self.root)
    }

    pub fn applied(&self) -> String {
        format!("{}meta/applied", self.root)
    }

    pub fn superseded(&self) -> String {
        format!("{}meta/superseded", self.root)
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}meta/nodes/", self.root)
    }

    pub fn node(&self, node_id: &str) -> String {
        format!("{}meta/nodes/{node_id}", self.root)
    }

    pub fn merkle_checkpoint(&self) -> String {
        format!("{}meta/merkle-checkpoint", self.root)
    }
}

/// The etcd range end covering every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // An all-0xff prefix: range to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A key read back from etcd names a WAL index only when it is that index's own key,
        /// and a data path only when it is that path's key, whatever its bytes.
        #[test]
        fn keys_name_an_index_or_a_path_only_in_their_own_form(
            raw in proptest::collection::vec(any::<u8>(), 0..40),
            suffix in prop_oneof!["[+-]?[0-9a-fA-F]{15,16}", ".{0,20}"],
            wal: bool,
        ) {
            let ks = Keyspace::for_cluster("a");
            let prefix = if wal { ks.wal_prefix() } else { ks.data_prefix() };
            for key in [raw, format!("{prefix}{suffix}").into_bytes()] {
                if let Some(index) = ks.wal_index_of(&key) {
                    prop_assert_eq!(ks.wal(index).into_bytes(), key.clone());
                }
                if let Some(path) = ks.path_of(&key) {
                    prop_assert_eq!(ks.data(path).into_bytes(), key.clone());
                }
            }
        }
    }

    #[test]
    fn wal_keys_sort_by_index() {
        let ks = Keyspace::for_cluster("a");
        assert!(ks.wal(9) < ks.wal(10));
        assert!(ks.wal(0xff) < ks.wal(0x100));
        assert_eq!(ks.wal_index_of(ks.wal(42).as_bytes()), Some(42));
        assert_eq!(ks.wal_index_of(ks.data("x").as_bytes()), None);
    }

    #[test]
    fn data_keys_round_trip() {
        let ks = Keyspace::new("/ferry/east");
        assert_eq!(ks.root(), "/ferry/east/");
        assert_eq!(
            ks.path_of(ks.data("core/keyring").as_bytes()),
            Some("core/keyring")
        );
        assert_eq!(ks.path_of(ks.wal(1).as_bytes()), None);
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end("/ferry/a/data/"), b"/ferry/a/data0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
    }
}
