//! The token store: local to each cluster (never replicated), sealed by the local keyring.
//!
//! ```text
//! sys/token/id/<blake3(token)>          TokenEntry (JSON, sealed)
//! sys/token/accessor/<accessor>         blake3(token), hex (sealed)
//! ```
//!
//! Tokens expire on their TTL (0: never, the root token); an expired token is refused and its
//! entries removed when next seen. A token with `num_uses` is revoked on its last use. The TTL
//! rules are Vault's, in [`ttl`].

pub mod ttl;

use serde::{Deserialize, Serialize};

use crate::barrier::Keyring;
use crate::storage::{Storage, StorageError};
use crate::unseal::unix_now;

pub const TOKEN_PREFIX: &str = "sys/token/id/";
pub const ACCESSOR_PREFIX: &str = "sys/token/accessor/";
/// Longest TTL a token may have (Vault's default maximum, 768h).
pub const MAX_TTL: u64 = 768 * 3600;

/// A token's stored entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub accessor: String,
    pub policies: Vec<String>,
    pub display_name: String,
    pub creation_time: u64,
    /// Seconds from creation (or the last renewal); 0: never expires.
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

fn token_hash(token: &str) -> String {
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

impl TokenStore<'_> {
    /// Stores `entry` for `token` (and its accessor) in one batch.
    pub async fn put(&self, token: &str, entry: &TokenEntry) -> Result<(), StorageError> {
        let path = token_path(token);
        let accessor = format!("{ACCESSOR_PREFIX}{}", entry.accessor);
        let sealed = self
            .keyring
            .seal(&path, &serde_json::to_vec(entry).expect("serialises"));
        let index = self.keyring.seal(&accessor, token_hash(token).as_bytes());
        self.storage
            .batch(vec![(path, Some(sealed)), (accessor, Some(index))])
            .await
            .map(|_| ())
    }

    /// The live entry of `token`; an expired one is removed and reported missing.
    pub async fn lookup(&self, token: &str) -> Result<Option<TokenEntry>, StorageError> {
        self.lookup_hash(&token_hash(token)).await
    }

    async fn lookup_hash(&self, hash: &str) -> Result<Option<TokenEntry>, StorageError> {
        let path = format!("{TOKEN_PREFIX}{hash}");
        let Some(sealed) = self.storage.get(&path).await? else {
            return Ok(None);
        };
        let entry: TokenEntry = self
            .keyring
            .open(&path, &sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or_else(|| StorageError::Failed(format!("token entry {path} is unreadable")))?;
        if entry.expired(unix_now()) {
            self.remove(hash, &entry.accessor).await?;
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// The token hash an accessor names, if live.
    pub async fn by_accessor(
        &self,
        accessor: &str,
    ) -> Result<Option<(String, TokenEntry)>, StorageError> {
        if validate_accessor(accessor).is_err() {
            return Ok(None);
        }
        let path = format!("{ACCESSOR_PREFIX}{accessor}");
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

    /// Revokes `token`.
    pub async fn revoke(&self, token: &str) -> Result<(), StorageError> {
        let hash = token_hash(token);
        if let Some(entry) = self.lookup_hash(&hash).await? {
            self.remove(&hash, &entry.accessor).await?;
        }
        Ok(())
    }

    /// Revokes the token an accessor names.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<bool, StorageError> {
        match self.by_accessor(accessor).await? {
            Some((hash, entry)) => {
                self.remove(&hash, &entry.accessor).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn remove(&self, hash: &str, accessor: &str) -> Result<(), StorageError> {
        self.storage
            .batch(vec![
                (format!("{TOKEN_PREFIX}{hash}"), None),
                (format!("{ACCESSOR_PREFIX}{accessor}"), None),
            ])
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
