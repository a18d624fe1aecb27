//! Storage paths: what a valid key looks like, and whether a path is replicated or local.
//!
//! Keys are Vault storage paths (`core/keyring`, `logical/<uuid>/data/app`, `sys/token/id/<h>`):
//! `/`-separated segments, no empty, `.` or `..` segment, no control characters, no leading or
//! trailing `/`. A path is *local* when it starts with one of the configured local prefixes
//! (tokens, leases, per-cluster bookkeeping) and *replicated* otherwise; only replicated paths
//! enter the WAL and the merkle index.

use thiserror::Error;

/// Local prefixes by default: tokens, leases, per-cluster configuration and replication
/// bookkeeping, as DESIGN.md lists them.
pub const DEFAULT_LOCAL_PREFIXES: &[&str] = &[
    "sys/token/",
    "sys/expire/",
    "core/local/",
    "core/cluster/",
    "core/primary-addrs/",
    "core/replication/",
];

/// The storage class of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathClass {
    /// Written only on the primary; every write enters the WAL and the merkle index.
    Replicated,
    /// Written on any cluster, never shipped.
    Local,
}

/// Why a key or prefix was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PathError {
    #[error("key is empty")]
    Empty,
    #[error("key is {len} bytes, over the limit of {limit} bytes")]
    TooLong { len: usize, limit: usize },
    #[error("invalid path {path:?}: {reason}")]
    Invalid { path: String, reason: &'static str },
}

/// Checks that `key` names one storage entry.
pub fn validate_key(key: &str, max_bytes: usize) -> Result<(), PathError> {
    if key.is_empty() {
        return Err(PathError::Empty);
    }
    if key.ends_with('/') {
        return Err(invalid(key, "a key must not end with '/'"));
    }
    validate_segments(key, max_bytes)
}

/// Checks a list prefix: empty (the root) or a folder ending with `/`.
pub fn validate_prefix(prefix: &str, max_bytes: usize) -> Result<(), PathError> {
    if prefix.is_empty() {
        return Ok(());
    }
    let Some(folder) = prefix.strip_suffix('/') else {
        return Err(invalid(
            prefix,
            "a list prefix must be empty or end with '/'",
        ));
    };
    validate_segments(folder, max_bytes)
}

fn validate_segments(path: &str, max_bytes: usize) -> Result<(), PathError> {
    if path.len() > max_bytes {
        return Err(PathError::TooLong {
            len: path.len(),
            limit: max_bytes,
        });
    }
    if path.chars().any(char::is_control) {
        return Err(invalid(path, "control characters are not allowed"));
    }
    for segment in path.split('/') {
        match segment {
            "" => {
                return Err(invalid(
                    path,
                    "empty path segment (leading, trailing or '//')",
                ));
            }
            "." | ".." => return Err(invalid(path, "'.' and '..' segments are not allowed")),
            _ => {}
        }
    }
    Ok(())
}

fn invalid(path: &str, reason: &'static str) -> PathError {
    PathError::Invalid {
        path: path.chars().take(200).collect(),
        reason,
    }
}

/// Classes paths as replicated or local by prefix.
#[derive(Clone, Debug)]
pub struct PathClassifier {
    local_prefixes: Vec<String>,
}

impl PathClassifier {
    /// A classifier whose local paths are those under any of `local_prefixes`.
    pub fn new<S: AsRef<str>>(local_prefixes: &[S]) -> Self {
        Self {
            local_prefixes: local_prefixes
                .iter()
                .map(|p| p.as_ref().to_owned())
                .collect(),
        }
    }

    /// The class of `path`.
    pub fn classify(&self, path: &str) -> PathClass {
        if self.local_prefixes.iter().any(|p| path.starts_with(p)) {
            PathClass::Local
        } else {
            PathClass::Replicated
        }
    }
}

impl Default for PathClassifier {
    fn default() -> Self {
        Self::new(DEFAULT_LOCAL_PREFIXES)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Any text, and text made of what paths are made of, so that valid ones come up too.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,40}", "[a./\\x00\n\u{85}é]{0,12}", "[a/]{0,12}"]
    }

    /// Whether `path` is one entry's path by the rules in the module documentation.
    fn is_entry_path(path: &str, max_bytes: usize) -> bool {
        path.len() <= max_bytes
            && !path.chars().any(char::is_control)
            && path
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
    }

    proptest! {
        /// A key from ferry-vault is accepted exactly when it follows the rules, and a refusal's
        /// message stays short whatever the key's length.
        #[test]
        fn keys_are_valid_by_the_rules_or_refused_briefly(key in text(), long: bool) {
            let key = if long { key.repeat(100) } else { key };
            match validate_key(&key, 64) {
                Ok(()) => prop_assert!(is_entry_path(&key, 64)),
                Err(e) => {
                    prop_assert!(!is_entry_path(&key, 64));
                    // At most 200 characters of the key, each at most 10 escaped, and the reason.
                    prop_assert!(e.to_string().len() <= 200 * 10 + 100, "{e}");
                }
            }
        }

        /// A list prefix is the root, or a valid key followed by `/`.
        #[test]
        fn prefixes_are_the_root_or_a_folder(prefix in text()) {
            let folder_ok = prefix
                .strip_suffix('/')
                .is_some_and(|folder| validate_key(folder, 64).is_ok());
            prop_assert_eq!(
                validate_prefix(&prefix, 64).is_ok(),
                prefix.is_empty() || folder_ok
            );
        }
    }

    #[test]
    fn accepts_vault_paths() {
        for key in [
            "core/keyring",
            "logical/0b1c/data/app",
            "sys/token/id/h",
            "a",
        ] {
            assert_eq!(validate_key(key, 1024), Ok(()), "{key}");
        }
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(validate_key("", 1024), Err(PathError::Empty));
        assert!(matches!(
            validate_key(&"a".repeat(1025), 1024),
            Err(PathError::TooLong {
                len: 1025,
                limit: 1024
            })
        ));
        for key in ["/abs", "dir/", "a//b", "a/../b", "./a", "a\0b", "a\nb"] {
            assert!(
                matches!(validate_key(key, 1024), Err(PathError::Invalid { .. })),
                "{key:?}"
            );
        }
    }

    #[test]
    fn error_names_the_limit() {
        let err = validate_key(&"k".repeat(2000), 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key is 2000 bytes, over the limit of 1024 bytes"
        );
    }

    #[test]
    fn prefixes_are_empty_or_folders() {
        assert_eq!(validate_prefix("", 1024), Ok(()));
        assert_eq!(validate_prefix("sys/token/", 1024), Ok(()));
        assert!(validate_prefix("sys/token", 1024).is_err());
        assert!(validate_prefix("/", 1024).is_err());
        assert!(validate_prefix("a//", 1024).is_err());
    }

    #[test]
    fn classifies_by_prefix() {
        let classes = PathClassifier::default();
        assert_eq!(classes.classify("sys/token/id/abc"), PathClass::Local);
        assert_eq!(classes.classify("sys/expire/id/x"), PathClass::Local);
        assert_eq!(classes.classify("core/local/x"), PathClass::Local);
        assert_eq!(classes.classify("core/keyring"), PathClass::Replicated);
        assert_eq!(
            classes.classify("sys/policy/default"),
            PathClass::Replicated
        );
        let custom = PathClassifier::new(&["scratch/"]);
        assert_eq!(custom.classify("scratch/a"), PathClass::Local);
        assert_eq!(custom.classify("sys/token/a"), PathClass::Replicated);
    }
}
