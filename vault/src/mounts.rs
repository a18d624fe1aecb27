//! The mount table: which secrets engine serves which path prefix.
//!
//! One replicated value, `core/mounts`, sealed by the replicated keyring, holds every mount
//! (so a secondary has the primary's mounts, and enabling one on a secondary is forwarded). Each
//! mount keeps its data under `logical/<uuid>/`, so disabling a mount and enabling another at
//! the same path never mixes their data. The first cluster allowed to write the table creates it
//! with Vault's usual two: KV version 2 at `secret/` and transit at `transit/`.
//!
//! Requests are routed by the longest mount path that prefixes theirs. The parsed table is
//! cached against the sealed bytes it came from: each request reads the value (one storage
//! call) and parses it again only when it changed, so a mount enabled through the primary is
//! served on a secondary as soon as the write arrives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the table is stored.
pub const MOUNTS_PATH: &str = "core/mounts";
/// Most mounts one cluster holds.
pub const MAX_MOUNTS: usize = 256;
const MAX_PATH_BYTES: usize = 128;
/// Prefixes that belong to the server itself.
const RESERVED: &[&str] = &["sys/", "auth/", "cubbyhole/", "identity/"];

/// The engines ferry-vault serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// KV version 2.
    Kv,
    Transit,
}

impl Engine {
    /// Vault's `type` name and its `options` for this engine.
    pub fn type_name(self) -> &'static str {
        match self {
            Engine::Kv => "kv",
            Engine::Transit => "transit",
        }
    }
}

/// Lease settings of a mount (`config` in Vault's shapes), in seconds; 0: the system default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountConfig {
    pub default_lease_ttl: u64,
    pub max_lease_ttl: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// With a trailing slash: `secret/`.
    pub path: String,
    pub engine: Engine,
    pub uuid: String,
    pub accessor: String,
    pub description: String,
    pub config: MountConfig,
    pub created: u64,
}

impl Mount {
    pub fn new(path: &str, engine: Engine, description: &str, now: u64) -> Self {
        let uuid = crate::token::random_hex(16);
        Self {
            path: path.to_owned(),
            engine,
            accessor: format!("{}_{}", engine.type_name(), &uuid[..8]),
            uuid,
            description: description.to_owned(),
            config: MountConfig::default(),
            created: now,
        }
    }

    /// Where this mount's data lives in storage.
    pub fn storage_root(&self) -> String {
        format!("logical/{}/", self.uuid)
    }

    /// Vault's `options` for this mount.
    pub fn options(&self) -> BTreeMap<&'static str, &'static str> {
        match self.engine {
            Engine::Kv => BTreeMap::from([("version", "2")]),
            Engine::Transit => BTreeMap::new(),
        }
    }
}

/// Why a mount change was refused (a 400 with this message).
#[derive(Debug, PartialEq, Eq)]
pub struct MountError(pub String);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
}

/// Normalises a mount path (`secret` → `secret/`) and checks it.
pub fn normalize_path(path: &str) -> Result<String, MountError> {
    let trimmed = path.trim_matches('/');
    let bad = |m: &str| Err(MountError(format!("invalid mount path {path:?}: {m}")));
    if trimmed.is_empty() {
        return bad("it is empty");
    }
    if trimmed.len() > MAX_PATH_BYTES {
        return bad(&format!("longer than {MAX_PATH_BYTES} bytes"));
    }
    if trimmed
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("empty, '.' or '..' segment");
    }
    if !trimmed
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return bad("only letters, digits, '-', '_', '.' and '/' are allowed");
    }
    let path = format!("{trimmed}/");
    if let Some(r) = RESERVED.iter().find(|r| path.starts_with(**r)) {
        return bad(&format!("{r} is reserved"));
    }
    Ok(path)
}

impl MountTable {
    /// Vault's usual first mounts.
    pub fn defaults(now: u64) -> Self {
        Self {
            mounts: vec![
                Mount::new("secret/", Engine::Kv, "key/value secret storage", now),
                Mount::new("transit/", Engine::Transit, "encryption as a service", now),
            ],
        }
    }

    /// The mount serving `path` (no leading slash) and the rest of the path after it.
    pub fn route<'p>(&self, path: &'p str) -> Option<(&Mount, &'p str)> {
        self.mounts
            .iter()
            .filter(|m| path.starts_with(&m.path) || path == m.path.trim_end_matches('/'))
            .max_by_key(|m| m.path.len())
            .map(|m| (m, path.get(m.path.len()..).unwrap_or("")))
    }

    pub fn get(&self, path: &str) -> Option<&Mount> {
        self.mounts.iter().find(|m| m.path == path)
    }

    /// Adds `mount`; refused when its path overlaps another mount's or the table is full.
    pub fn add(&mut self, mount: Mount) -> Result<(), MountError> {
        if let Some(other) = self
            .mounts
            .iter()
            .find(|m| m.path.starts_with(&mount.path) || mount.path.starts_with(&m.path))
        {
            return Err(MountError(format!(
                "path is already in use at {}",
                other.path
            )));
        }
        if self.mounts.len() >= MAX_MOUNTS {
            return Err(MountError(format!(
                "this cluster already has {MAX_MOUNTS} mounts, the most it holds"
            )));
        }
        self.mounts.push(mount);
        Ok(())
    }

    /// Removes the mount at `path` and returns it.
    pub fn remove(&mut self, path: &str) -> Option<Mount> {
        let at = self.mounts.iter().position(|m| m.path == path)?;
        Some(self.mounts.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A mount path from a request normalises to a folder of allowed characters outside the
        /// reserved prefixes, which normalises to itself, or it is refused.
        #[test]
        fn mount_paths_normalise_to_a_fixed_point_or_are_refused(
            path in prop_oneof![".{0,40}", "/?(sys|auth|[a-z.]{0,3}|\\.\\.)(/[a-z.]{0,3}){0,3}/{0,2}"],
        ) {
            if let Ok(normal) = normalize_path(&path) {
                prop_assert!(normal.ends_with('/') && !normal.starts_with('/'));
                prop_assert!(normal.len() <= MAX_PATH_BYTES + 1);
                prop_assert!(RESERVED.iter().all(|r| !normal.starts_with(r)));
                prop_assert_eq!(normalize_path(&normal), Ok(normal.clone()));
                let table = MountTable::defaults(0);
                let _ = table.route(&normal);
            }
        }
    }

    #[test]
    fn routes_by_the_longest_mount_path() {
        let mut table = MountTable::defaults(0);
        table
            .add(Mount::new("team/kv/", Engine::Kv, "", 0))
            .unwrap();
        let (m, rest) = table.route("secret/data/app").unwrap();
        assert_eq!((m.path.as_str(), rest), ("secret/", "data/app"));
        let (m, rest) = table.route("team/kv/data/x").unwrap();
        assert_eq!((m.path.as_str(), rest), ("team/kv/", "data/x"));
        let (m, rest) = table.route("transit").unwrap();
        assert_eq!((m.path.as_str(), rest), ("transit/", ""));
        assert!(table.route("team/other").is_none());
        assert!(
            table.route("secrets/data/x").is_none(),
            "a prefix of a segment"
        );
    }

    #[test]
    fn overlapping_and_reserved_paths_are_refused() {
        let mut table = MountTable::defaults(0);
        for path in ["secret/", "secret/inner/"] {
            let e = table.add(Mount::new(path, Engine::Kv, "", 0)).unwrap_err();
            assert!(e.0.contains("already in use at secret/"), "{e:?}");
        }
        let outer = Mount::new("tr/", Engine::Kv, "", 0);
        table.add(outer).unwrap();
        assert!(table.add(Mount::new("tr/x/", Engine::Kv, "", 0)).is_err());
        for path in [
            "sys/x",
            "auth",
            "",
            "a//b",
            "a/../b",
            "a b",
            &"x".repeat(200),
        ] {
            assert!(normalize_path(path).is_err(), "{path:?}");
        }
        assert_eq!(normalize_path("/kv/team/").unwrap(), "kv/team/");
    }

    #[test]
    fn each_mount_has_its_own_storage_root() {
        let a = Mount::new("a/", Engine::Kv, "", 0);
        let b = Mount::new("a/", Engine::Kv, "", 0);
        assert_ne!(a.storage_root(), b.storage_root());
        assert!(a.storage_root().starts_with("logical/"));
    }
}
