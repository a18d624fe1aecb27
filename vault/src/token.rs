//! The token store: local to each cluster (never replicated), sealed by the local keyring.
//!
//! ```text
//! sys/token/id/<h>                    TokenEntry (JSON, sealed); <h> = blake3(token), hex
//! sys/token/accessor/<accessor>       <h> (sealed)
//! sys/token/parent/<parent h>/<h>     empty (sealed): <h> is a child of <parent h>
//! ```
//!
//! Tokens form Vault's tree: a token created by another is its child (`parent` holds the
//! parent's `<h>`) unless it was created as an orphan. Revoking a token revokes its whole
//! subtree, top down, so the first write already cuts every descendant off; `revoke_orphan`
//! revokes one token and makes its children orphans. A token is live only while every ancestor
//! is: a lookup walks up the tree (at most [`MAX_TREE_DEPTH`] steps), and a token under an
//! expired or vanished ancestor is refused and its subtree removed. That is how a parent's
//! expiry reaches its children without a background sweeper, and why a half-finished
//! revocation (a crash between writes) never leaves a live descendant behind.
//!
//! Tokens expire on their TTL (0: never, root tokens only; see [`ttl`] for the rules); an
//! expired token is refused and its subtree removed when next seen. A token with `num_uses` is
//! revoked on its last use.

pub mod ttl;

use serde::{Deserialize, Serialize};

use crate::barrier::Keyring;
use crate::storage::{Storage, StorageError};
use crate::unseal::unix_now;

pub const TOKEN_PREFIX: &str = "sys/token/id/";
pub const ACCESSOR_PREFIX: &str = "sys/token/accessor/";
pub const PARENT_PREFIX: &str = "sys/token/parent/";
/// How many ancestors a token may have: bounds the walk every lookup makes up the tree
/// (Vault sets no bound; real trees are a few levels deep).
pub const MAX_TREE_DEPTH: u32 = 64;

/// A token's stored entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub accessor: String,
    pub policies: Vec<String>,
    pub display_name: String,
    pub creation_time: u64,
    /// The TTL it was created with, seconds; 0: never expires.
    pub ttl: u64,
    /// Unix seconds when it expires; 0: never.
    #[serde(default)]
    pub expire_time: u64,
    #[serde(default)]
    pub renewable: bool,
    /// Uses left; 0: unlimited.
    #[serde(default)]
    pub num_uses: u64,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub meta: Option<std::collections::BTreeMap<String, String>>,
    /// The parent's `<h>` (see the module's keyspace); `None` for an orphan (and for entries
    /// written before tokens had parents, which are roots of their own trees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its ancestors when created: 0 for an orphan.
    #[serde(default)]
    pub depth: u32,
    /// Its own cap on its lifetime from creation, seconds; 0: the system's alone.
    #[serde(default)]
    pub explicit_max_ttl: u64,
    /// The endpoint that created it, e.g. `auth/token/create-orphan`; empty for older entries.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    pub fn expired(&self, now: u64) -> bool {
        self.expire_time != 0 && now >= self.expire_time
    }

    /// Seconds left, 0 for a token that never expires.
    pub fn ttl_left(&self, now: u64) -> u64 {
        if self.expire_time == 0 {
            0
        } else {
            self.expire_time.saturating_sub(now)
        }
    }
}

/// Where a token's entry is stored.
pub fn token_path(token: &str) -> String {
    format!("{TOKEN_PREFIX}{}", token_hash(token))
}

/// A token's `<h>`: the name of its entry, and what its children's `parent` holds.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// A new random token and accessor.
pub fn new_token() -> (String, String) {
    (format!("hvs.{}", random_hex(20)), random_hex(12))
}

/// `bytes` random bytes, hex.
pub fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("the operating system's random source failed");
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest accessor accepted in a request.
pub const MAX_ACCESSOR_BYTES: usize = 128;

/// Checks that `accessor` could name a token: 1 to [`MAX_ACCESSOR_BYTES`] ASCII letters or
/// digits (this store issues 24 hex digits). Anything else never reaches storage, where it
/// would not be a valid key.
pub fn validate_accessor(accessor: &str) -> Result<(), String> {
    if accessor.is_empty() {
        return Err("missing accessor".into());
    }
    if accessor.len() > MAX_ACCESSOR_BYTES || !accessor.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "malformed accessor: an accessor is 1 to {MAX_ACCESSOR_BYTES} ASCII letters or digits"
        ));
    }
    Ok(())
}

/// Token operations over storage.
pub struct TokenStore<'a> {
    pub storage: &'a Storage,
    pub keyring: &'a Keyring,
}

fn id_key(hash: &str) -> String {
    format!("{TOKEN_PREFIX}{hash}")
}

fn accessor_key(accessor: &str) -> String {
    format!("{ACCESSOR_PREFIX}{accessor}")
}

fn child_key(parent: &str, child: &str) -> String {
    format!("{PARENT_PREFIX}{parent}/{child}")
}

impl TokenStore<'_> {
    /// Stores a new token: its entry, its accessor and, for a child, its place under its
    /// parent, in one batch.
    pub async fn create(&self, token: &str, entry: &TokenEntry) -> Result<(), StorageError> {
        let hash = token_hash(token);
        let mut writes = self.entry_writes(&hash, entry);
        if let Some(parent) = &entry.parent {
            let key = child_key(parent, &hash);
            let marker = self.keyring.seal(&key, b"");
            writes.push((key, Some(marker)));
        }
        self.storage.batch(writes).await.map(|_| ())
    }

    /// Rewrites `entry` for `token` (a renewal, a use spent), with its accessor.
    pub async fn put(&self, token: &str, entry: &TokenEntry) -> Result<(), StorageError> {
        self.put_hash(&token_hash(token), entry).await
    }

    /// [`Self::put`] by the token's `<h>` (for a token named by its accessor).
    pub async fn put_hash(&self, hash: &str, entry: &TokenEntry) -> Result<(), StorageError> {
        let writes = self.entry_writes(hash, entry);
        self.storage.batch(writes).await.map(|_| ())
    }

    fn entry_writes(&self, hash: &str, entry: &TokenEntry) -> Vec<(String, Option<Vec<u8>>)> {
        let path = id_key(hash);
        let accessor = accessor_key(&entry.accessor);
        let sealed = self
            .keyring
            .seal(&path, &serde_json::to_vec(entry).expect("serialises"));
        let index = self.keyring.seal(&accessor, hash.as_bytes());
        vec![(path, Some(sealed)), (accessor, Some(index))]
    }

    /// The live entry of `token`: `None` when it is unknown, expired, or under an ancestor
    /// that is (whose subtree is then removed).
    pub async fn lookup(&self, token: &str) -> Result<Option<TokenEntry>, StorageError> {
        self.lookup_hash(&token_hash(token)).await
    }

    async fn lookup_hash(&self, hash: &str) -> Result<Option<TokenEntry>, StorageError> {
        let Some(entry) = self.read(hash).await? else {
            return Ok(None);
        };
        let now = unix_now();
        if entry.expired(now) {
            self.revoke_tree(hash, entry).await?;
            return Ok(None);
        }
        let mut next = entry.parent.clone();
        let mut steps = 0;
        while let Some(ancestor) = next {
            steps += 1;
            if steps > MAX_TREE_DEPTH {
                return Err(StorageError::Failed(format!(
                    "token {hash} has more than {MAX_TREE_DEPTH} ancestors"
                )));
            }
            match self.read(&ancestor).await? {
                Some(a) if a.expired(now) => {
                    self.revoke_tree(&ancestor, a).await?;
                    return Ok(None);
                }
                Some(a) => next = a.parent,
                None => {
                    // Revoked (or its revocation is under way): so is everything below it.
                    self.revoke_tree(hash, entry).await?;
                    return Ok(None);
                }
            }
        }
        Ok(Some(entry))
    }

    /// The stored entry under `<h>`, live or not.
    async fn read(&self, hash: &str) -> Result<Option<TokenEntry>, StorageError> {
        let path = id_key(hash);
        let Some(sealed) = self.storage.get(&path).await? else {
            return Ok(None);
        };
        self.keyring
            .open(&path, &sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .map(Some)
            .ok_or_else(|| StorageError::Failed(format!("token entry {path} is unreadable")))
    }

    /// Every accessor of the index, sorted: those of live tokens and those of tokens that
    /// expired and have not been seen since (see [`Self::by_accessor`] for which is which).
    pub async fn accessors(&self) -> Result<Vec<String>, StorageError> {
        let mut accessors = self.storage.list(ACCESSOR_PREFIX).await?;
        accessors.retain(|a| !a.ends_with('/'));
        accessors.sort();
        Ok(accessors)
    }

    /// The `<h>` and live entry of the token an accessor names.
    pub async fn by_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<(String, TokenEntry)>, StorageError> {
        if validate_accessor(accessor).is_err() {
            return Ok(None);
        }
        let path = accessor_key(accessor);
        let Some(sealed) = self.storage.get(&path).await? else {
            return Ok(None);
        };
        let hash = self
            .keyring
            .open(&path, &sealed)
            .ok()
            .and_then(|h| String::from_utf8(h).ok())
            .ok_or_else(|| StorageError::Failed(format!("accessor entry {path} is unreadable")))?;
        Ok(self.lookup_hash(&hash).await?.map(|e| (hash, e)))
    }

    /// Revokes `token` and every token below it.
    pub async fn revoke(&self, token: &str) -> Result<(), StorageError> {
        let hash = token_hash(token);
        if let Some(entry) = self.lookup_hash(&hash).await? {
            self.revoke_tree(&hash, entry).await?;
        }
        Ok(())
    }

    /// Revokes the token an accessor names and every token below it; false if it names none.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<bool, StorageError> {
        match self.by_accessor(accessor).await? {
            Some((hash, entry)) => {
                self.revoke_tree(&hash, entry).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Revokes `token` alone: its children become orphans (each rewritten before the token
    /// goes, so none is ever seen under a missing parent). False if the token is not live.
    pub async fn revoke_orphan(&self, token: &str) -> Result<bool, StorageError> {
        let hash = token_hash(token);
        let Some(entry) = self.lookup_hash(&hash).await? else {
            return Ok(false);
        };
        for child in self.children(&hash).await? {
            let marker = (child_key(&hash, &child), None);
            let mut writes = vec![marker];
            if let Some(mut orphan) = self.read(&child).await?
                && orphan.parent.as_deref() == Some(hash.as_str())
            {
                orphan.parent = None;
                orphan.orphan = true;
                writes.extend(self.entry_writes(&child, &orphan));
            }
            self.storage.batch(writes).await?;
        }
        self.remove(&hash, &entry).await?;
        Ok(true)
    }

    /// Removes the token under `<h>` and its subtree, top down: once a token is gone, a lookup
    /// of any descendant already fails (see [`Self::lookup`]), so a revocation interrupted
    /// half way leaves only unreachable entries, removed when next seen.
    async fn revoke_tree(&self, hash: &str, entry: TokenEntry) -> Result<(), StorageError> {
        let mut pending = vec![(hash.to_owned(), entry)];
        while let Some((hash, entry)) = pending.pop() {
            let children = self.children(&hash).await?;
            self.remove(&hash, &entry).await?;
            for child in children {
                match self.read(&child).await? {
                    Some(e) if e.parent.as_deref() == Some(hash.as_str()) => {
                        pending.push((child, e));
                    }
                    // Gone already, or orphaned since: only the marker is left.
                    _ => {
                        self.storage.delete(&child_key(&hash, &child)).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The `<h>` of each child of the token under `<h>`.
    async fn children(&self, hash: &str) -> Result<Vec<String>, StorageError> {
        let mut names = self
            .storage
            .list(&format!("{PARENT_PREFIX}{hash}/"))
            .await?;
        names.retain(|n| !n.is_empty() && !n.ends_with('/'));
        Ok(names)
    }

    /// Deletes one token's entry, accessor and place under its parent, in one batch.
    async fn remove(&self, hash: &str, entry: &TokenEntry) -> Result<(), StorageError> {
        let mut deletes = vec![(id_key(hash), None), (accessor_key(&entry.accessor), None)];
        if let Some(parent) = &entry.parent {
            deletes.push((child_key(parent, hash), None));
        }
        self.storage.batch(deletes).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// An accessor from a request is 1 to 128 ASCII letters or digits, or refused before
        /// it names a storage key, whatever the text.
        #[test]
        fn accessors_are_letters_and_digits_or_refused(
            accessor in prop_oneof![".{0,40}", "[a-zA-Z0-9./é ]{0,8}", "[a-f0-9]{120,136}"],
        ) {
            let valid = (1..=MAX_ACCESSOR_BYTES).contains(&accessor.len())
                && accessor.chars().all(|c| c.is_ascii_alphanumeric());
            prop_assert_eq!(validate_accessor(&accessor).is_ok(), valid);
        }
    }

    #[test]
    fn issued_accessors_are_well_formed_and_path_like_ones_are_not() {
        let (_, accessor) = new_token();
        assert_eq!(validate_accessor(&accessor), Ok(()));
        assert_eq!(validate_accessor("").unwrap_err(), "missing accessor");
        for bad in [
            "a/b",
            "../id/x",
            "a b",
            "x.",
            &"a".repeat(MAX_ACCESSOR_BYTES + 1),
        ] {
            assert!(
                validate_accessor(bad)
                    .unwrap_err()
                    .contains("malformed accessor"),
                "{bad}"
            );
        }
    }

    #[test]
    fn expiry_and_ttl_left() {
        let e = TokenEntry {
            expire_time: 100,
            ..TokenEntry::default()
        };
        assert!(!e.expired(99));
        assert!(e.expired(100));
        assert_eq!(e.ttl_left(40), 60);
        let forever = TokenEntry::default();
        assert!(!forever.expired(u64::MAX));
        assert_eq!(forever.ttl_left(5), 0);
    }
}
