//! KV version 2 at a mount (`secret/` by default): versioned secrets with check-and-set, soft
//! delete, undelete and destroy, in Vault's request and response shapes.
//!
//! Storage (replicated, sealed by the replicated keyring), under the mount's root
//! `logical/<mount uuid>/`:
//!
//! ```text
//! config                     KvConfig: the mount's max_versions and cas_required
//! metadata/<path>            KvMetadata: versions, current version, settings
//! versions/<path>/<n>        the data of version n (JSON object)
//! ```
//!
//! A write stores the new version and the metadata in one atomic batch, and drops the data of
//! versions beyond `max_versions` (default 10) in the same batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use ferry_proto::time::rfc3339;

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

/// A mount's settings (`<mount>/config`): the defaults of every secret in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvConfig {
    /// 0: Vault's default of 10.
    pub max_versions: u64,
    pub cas_required: bool,
}

impl KvConfig {
    pub fn to_json(&self) -> Value {
        json!({
            "cas_required": self.cas_required,
            "delete_version_after": "0s",
            "max_versions": self.max_versions,
            // OpenBao's check-and-set on metadata writes, which ferry-vault does not offer.
            "metadata_cas_required": false,
        })
    }
}

pub fn config_path(root: &str) -> String {
    format!("{root}config")
}

pub fn metadata_path(root: &str, path: &str) -> String {
    format!("{root}metadata/{path}")
}

pub fn version_path(root: &str, path: &str, version: u64) -> String {
    format!("{root}versions/{path}/{version}")
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
    /// The secret's own limit, else the mount's, else Vault's default.
    fn max_versions(&self, mount: &KvConfig) -> u64 {
        [self.max_versions, mount.max_versions, DEFAULT_MAX_VERSIONS]
            .into_iter()
            .find(|n| *n > 0)
            .expect("the default is not 0")
    }

    /// Records a new version written at `now` after checking `cas` (required when the secret or
    /// its `mount` says so); returns its number and the versions whose data must now be dropped.
    pub fn add_version(
        &mut self,
        cas: Option<u64>,
        now: u64,
        mount: &KvConfig,
    ) -> Result<(u64, Vec<u64>), KvError> {
        match cas {
            Some(expected) if expected != self.current_version => {
                return Err(KvError::Invalid(format!(
                    "check-and-set parameter did not match the current version (cas {expected}, current version {})",
                    self.current_version
                )));
            }
            None if self.cas_required || mount.cas_required => {
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
        while self.versions.len() as u64 > self.max_versions(mount) {
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
            .map(|(n, m)| (n.to_string(), version_json(m)))
            .collect();
        json!({
            "cas_required": self.cas_required,
            "created_time": rfc3339(self.created_time),
            // OpenBao's metadata check-and-set, not offered: never required, never counted.
            "current_metadata_version": 0,
            "metadata_cas_required": false,
            "current_version": self.current_version,
            "custom_metadata": self.custom_metadata,
            "delete_version_after": "0s",
            "max_versions": self.max_versions,
            "oldest_version": self.oldest_version,
            "updated_time": rfc3339(self.updated_time),
            "versions": versions,
        })
    }

    /// Version `version`'s metadata as a data read or write answers it: with its number and
    /// the secret's custom metadata.
    pub fn version_answer(&self, version: u64, meta: &VersionMeta) -> Value {
        let mut v = version_json(meta);
        v["version"] = json!(version);
        v["custom_metadata"] = json!(self.custom_metadata);
        v
    }
}

/// One version's metadata in Vault's shape, as `metadata/<path>` lists it.
pub fn version_json(meta: &VersionMeta) -> Value {
    json!({
        "created_time": rfc3339(meta.created_time),
        "deletion_time": if meta.deletion_time == 0 { String::new() } else { rfc3339(meta.deletion_time) },
        "destroyed": meta.destroyed,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A secret path from a request is accepted only when it names one entry under the
        /// mount: no empty, `.` or `..` segment, so nothing it becomes in storage escapes the
        /// secret's own keys.
        #[test]
        fn secret_paths_name_one_entry_or_are_refused(
            path in prop_oneof![".{0,40}", "/?([a-z]{0,2}|\\.|\\.\\.)(/([a-z]{0,2}|\\.|\\.\\.)){0,3}/?"],
        ) {
            if validate_path(&path).is_ok() {
                prop_assert!(!path.is_empty() && path.len() <= MAX_PATH_BYTES);
                let stored = version_path("logical/u/", &path, 1);
                let inside = stored.strip_prefix("logical/u/versions/").unwrap();
                prop_assert!(inside.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
            }
        }
    }

    #[test]
    fn versions_count_up_and_cas_is_checked() {
        let mut meta = KvMetadata::default();
        assert_eq!(
            meta.add_version(Some(0), 10, &KvConfig::default()),
            Ok((1, vec![]))
        );
        assert_eq!(
            meta.add_version(None, 11, &KvConfig::default()),
            Ok((2, vec![]))
        );
        assert!(
            matches!(meta.add_version(Some(1), 12, &KvConfig::default()), Err(KvError::Invalid(m)) if m.contains("did not match"))
        );
        assert_eq!(meta.current_version, 2);
        assert_eq!(meta.resolve(0).map(|(n, _)| n), Some(2));
        assert_eq!(meta.resolve(1).map(|(n, _)| n), Some(1));
        assert_eq!(meta.resolve(9), None);
    }

    #[test]
    fn a_version_is_answered_with_its_number_and_the_secrets_custom_metadata() {
        let mut meta = KvMetadata::default();
        meta.add_version(None, 10, &KvConfig::default()).unwrap();
        meta.custom_metadata = Some(BTreeMap::from([("team".to_owned(), "a".to_owned())]));
        let (n, version) = meta.resolve(0).unwrap();
        let answer = meta.version_answer(n, version);
        assert_eq!(answer["version"], 1);
        assert_eq!(answer["custom_metadata"], json!({ "team": "a" }));
        assert_eq!(answer["deletion_time"], "");
        // The versions listed in the metadata carry neither.
        assert!(
            meta.to_json()["versions"]["1"]
                .get("custom_metadata")
                .is_none()
        );
    }

    #[test]
    fn the_mount_config_sets_defaults_a_secret_can_override() {
        let mount = KvConfig {
            max_versions: 2,
            cas_required: true,
        };
        let mut meta = KvMetadata::default();
        assert!(
            matches!(meta.add_version(None, 1, &mount), Err(KvError::Invalid(m)) if m.contains("required"))
        );
        meta.add_version(Some(0), 1, &mount).unwrap();
        meta.add_version(Some(1), 2, &mount).unwrap();
        assert_eq!(meta.add_version(Some(2), 3, &mount), Ok((3, vec![1])));
        meta.max_versions = 5;
        assert_eq!(meta.add_version(Some(3), 4, &mount), Ok((4, vec![])));
    }

    #[test]
    fn old_versions_beyond_max_versions_are_dropped() {
        let mut meta = KvMetadata {
            max_versions: 2,
            ..KvMetadata::default()
        };
        meta.add_version(None, 1, &KvConfig::default()).unwrap();
        meta.add_version(None, 2, &KvConfig::default()).unwrap();
        assert_eq!(
            meta.add_version(None, 3, &KvConfig::default()),
            Ok((3, vec![1]))
        );
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
