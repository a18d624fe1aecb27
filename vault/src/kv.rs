//! KV version 2 at the `secret/` mount: versioned secrets with check-and-set, soft delete,
//! undelete and destroy, in Vault's request and response shapes.
//!
//! Storage (replicated, sealed by the replicated keyring):
//!
//! ```text
//! logical/kv-secret/metadata/<path>         KvMetadata: versions, current version, settings
//! logical/kv-secret/versions/<path>/<n>     the data of version n (JSON object)
//! ```
//!
//! A write stores the new version and the metadata in one atomic batch, and drops the data of
//! versions beyond `max_versions` (default 10) in the same batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use ferry_proto::time::rfc3339;

pub const MOUNT: &str = "secret/";
const ROOT: &str = "logical/kv-secret/";
/// Versions kept when the metadata sets none (Vault's default).
const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Longest secret path accepted.
pub const MAX_PATH_BYTES: usize = 512;

/// One version's bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub created_time: u64,
    /// Unix seconds of the soft delete, 0 when not deleted.
    pub deletion_time: u64,
    pub destroyed: bool,
}

/// A secret's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvMetadata {
    pub created_time: u64,
    pub updated_time: u64,
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub cas_required: bool,
    pub custom_metadata: Option<BTreeMap<String, String>>,
    pub versions: BTreeMap<u64, VersionMeta>,
}

/// Why a KV request was refused: a 400 with this message (404 for `NotFound`).
#[derive(Debug, PartialEq, Eq)]
pub enum KvError {
    Invalid(String),
    NotFound,
}

pub fn metadata_path(path: &str) -> String {
    format!("{ROOT}metadata/{path}")
}

pub fn version_path(path: &str, version: u64) -> String {
    format!("{ROOT}versions/{path}/{version}")
}

/// Checks a secret path: non-empty, bounded, no empty or dot segments, no trailing slash.
pub fn validate_path(path: &str) -> Result<(), KvError> {
    let bad = |m: &str| {
        Err(KvError::Invalid(format!(
            "invalid secret path {path:?}: {m}"
        )))
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return bad(&format!("over {MAX_PATH_BYTES} bytes"));
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("empty, '.' or '..' segment");
    }
    Ok(())
}

impl KvMetadata {
    fn max_versions(&self) -> u64 {
        if self.max_versions == 0 {
            DEFAULT_MAX_VERSIONS
        } else {
            self.max_versions
        }
    }

    /// Records a new version written at `now` after checking `cas`; returns its number and the
    /// versions whose data must now be dropped.
    pub fn add_version(&mut self, cas: Option<u64>, now: u64) -> Result<(u64, Vec<u64>), KvError> {
        match cas {
            Some(expected) if expected != self.current_version => {
                return Err(KvError::Invalid(format!(
                    "check-and-set parameter did not match the current version (cas {expected}, current version {})",
                    self.current_version
                )));
            }
            None if self.cas_required => {
                return Err(KvError::Invalid(
                    "check-and-set parameter required for this call".into(),
                ));
            }
            _ => {}
        }
        let version = self.current_version + 1;
        if self.versions.is_empty() {
            self.created_time = now;
        }
        self.current_version = version;
        self.updated_time = now;
        self.versions.insert(
            version,
            VersionMeta {
                created_time: now,
                ..VersionMeta::default()
            },
        );
        let mut dropped = Vec::new();
        while self.versions.len() as u64 > self.max_versions() {
            let (&oldest, _) = self.versions.iter().next().expect("not empty");
            self.versions.remove(&oldest);
            dropped.push(oldest);
        }
        self.oldest_version = *self.versions.keys().next().expect("not empty");
        Ok((version, dropped))
    }

    /// The version a read of `requested` (0: current) finds, with its bookkeeping.
    pub fn resolve(&self, requested: u64) -> Option<(u64, &VersionMeta)> {
        let version = if requested == 0 {
            self.current_version
        } else {
            requested
        };
        self.versions.get(&version).map(|m| (version, m))
    }

    /// Vault's `metadata/<path>` data.
    pub fn to_json(&self) -> Value {
        let versions: Map<String, Value> = self
            .versions
            .iter()
            .map(|(n, m)| (n.to_string(), version_json(m, None)))
            .collect();
        json!({
            "cas_required": self.cas_required,
            "created_time": rfc3339(self.created_time),
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": "0s",
            "max_versions": self.max_versions,
            "oldest_version": self.oldest_version,
            "updated_time": rfc3339(self.updated_time),
            "versions": versions,
        })
    }
}

/// One version's metadata in Vault's shape (with its number when given).
pub fn version_json(meta: &VersionMeta, version: Option<u64>) -> Value {
    let mut v = json!({
        "created_time": rfc3339(meta.created_time),
        "deletion_time": if meta.deletion_time == 0 { String::new() } else { rfc3339(meta.deletion_time) },
        "destroyed": meta.destroyed,
    });
    if let Some(n) = version {
        v["version"] = json!(n);
        v["custom_metadata"] = Value::Null;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_and_cas_is_checked() {
        let mut meta = KvMetadata::default();
        assert_eq!(meta.add_version(Some(0), 10), Ok((1, vec![])));
        assert_eq!(meta.add_version(None, 11), Ok((2, vec![])));
        assert!(
            matches!(meta.add_version(Some(1), 12), Err(KvError::Invalid(m)) if m.contains("did not match"))
        );
        assert_eq!(meta.current_version, 2);
        assert_eq!(meta.resolve(0).map(|(n, _)| n), Some(2));
        assert_eq!(meta.resolve(1).map(|(n, _)| n), Some(1));
        assert_eq!(meta.resolve(9), None);
    }

    #[test]
    fn old_versions_beyond_max_versions_are_dropped() {
        let mut meta = KvMetadata {
            max_versions: 2,
            ..KvMetadata::default()
        };
        meta.add_version(None, 1).unwrap();
        meta.add_version(None, 2).unwrap();
        assert_eq!(meta.add_version(None, 3), Ok((3, vec![1])));
        assert_eq!(meta.oldest_version, 2);
    }

    #[test]
    fn paths_are_checked() {
        assert!(validate_path("a/b").is_ok());
        for bad in ["", "a//b", "a/../b", "a/"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }
}
