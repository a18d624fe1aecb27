//! What a cluster stores about replication, and where.
//!
//! ```text
//! path (storage class)                             content (JSON)
//! core/cluster/replicated/info (local)            ClusterDefinition: this cluster's role
//! core/cluster/replicated-dr/info (local)         reserved for DR replication
//! core/primary-addrs/perf (local)                  the primary's cluster addresses, from heartbeats
//! core/cluster/replicated/ca (local)              this member's own CA, certificate and key
//! core/perf-replication/secondaries/<id> (repl.)   SecondaryRecord: one member's token and keys
//! core/local/unshipped/e<epoch>/<path> (local)     a former primary's values its first
//!                                                  reconciliation replaced, kept for operators
//! ```
//!
//! The definition and the CA hold private keys: both are sealed with the key-encryption key,
//! and both are local, so no key ever leaves its cluster (see `pki`). The member records are
//! replicated on purpose: they hold only public material (a token's hash, a member's key
//! fingerprint and CA certificate), and after a promotion the new primary knows every member,
//! so the other secondaries follow it without new tokens. The epoch is not here: it lives with
//! the WAL stream (`meta/stream`).

use serde::{Deserialize, Serialize};

use super::pki::CertifiedKey;
use super::role::Role;

pub const DEFINITION_PATH: &str = "core/cluster/replicated/info";
pub const DR_DEFINITION_PATH: &str = "core/cluster/replicated-dr/info";
pub const PRIMARY_ADDRS_PATH: &str = "core/primary-addrs/perf";
pub const CA_PATH: &str = "core/cluster/replicated/ca";
pub const SECONDARIES_PREFIX: &str = "core/perf-replication/secondaries/";
/// Where a former primary keeps what its first reconciliation replaced (local, never shipped).
pub const UNSHIPPED_PREFIX: &str = "core/local/unshipped/";

/// Longest secondary id accepted.
pub const MAX_SECONDARY_ID_BYTES: usize = 128;

/// This cluster's replication role and identity, stored at [`DEFINITION_PATH`]. No definition
/// means replication is disabled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDefinition {
    /// What this cluster does in the replication set (see `role`).
    pub role: Role,
    /// The replication set's id, the same on the primary and all its secondaries.
    pub cluster_id: String,
    /// Primary: the address set at enable (may be empty). Secondary: the primary's address from
    /// its token or the last update-primary.
    pub primary_cluster_addr: String,
    /// This cluster's member id: a secondary's, from its activation token; the first primary's,
    /// `primary-<cluster id prefix>`. Kept through role changes.
    #[serde(default)]
    pub secondary_id: String,
    /// Every member's CA certificate, PEM, concatenated: whom this cluster's cluster port
    /// trusts for client certificates, and whose servers it may ask about epochs.
    pub member_cas_pem: String,
    /// The CA certificate of the primary this cluster follows (its own CA's, as the primary):
    /// the one CA it trusts for the primary's servers, so that no other member, which holds a
    /// CA of its own, can pose as the primary at its address. Empty in a definition stored
    /// before it existed: then every member's CA, until the next activation or update-primary.
    #[serde(default)]
    pub primary_ca_cert_pem: String,
    /// This cluster's own key, with the server certificate its own CA issued for it.
    pub identity: CertifiedKey,
    /// The short-lived client certificate for `identity`'s key, signed by the primary's CA
    /// (this cluster's own CA when it is the primary), renewed at half-life.
    pub client_cert_pem: String,
}

/// WAL entries `after + 1 ..= through` of a former primary's stream: acknowledged, never shipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnshippedRange {
    pub after: u64,
    pub through: u64,
}

impl ClusterDefinition {
    /// This cluster's client certificate with its key.
    pub fn client_identity(&self) -> CertifiedKey {
        CertifiedKey {
            cert_pem: self.client_cert_pem.clone(),
            key_pem: self.identity.key_pem.clone(),
        }
    }

    /// The CA certificates trusted for the primary's servers (see `primary_ca_cert_pem`).
    pub fn primary_cas_pem(&self) -> &str {
        if self.primary_ca_cert_pem.is_empty() {
            &self.member_cas_pem
        } else {
            &self.primary_ca_cert_pem
        }
    }

    /// Whether this cluster follows a primary.
    pub fn follows_primary(&self) -> bool {
        self.role.is_secondary() && !self.primary_cluster_addr.is_empty()
    }
}

#[cfg(test)]
impl ClusterDefinition {
    /// An active primary with placeholder identity, for unit tests of role logic.
    pub fn active_primary_for_tests() -> Self {
        Self {
            role: Role::Primary,
            cluster_id: "c".into(),
            primary_cluster_addr: "127.0.0.1:1".into(),
            secondary_id: "primary-c".into(),
            member_cas_pem: String::new(),
            primary_ca_cert_pem: String::new(),
            identity: CertifiedKey {
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            client_cert_pem: String::new(),
        }
    }
}

/// One member of the replication set, stored under [`SECONDARIES_PREFIX`]: its activation
/// token's state, then its public key and CA. Public material only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryRecord {
    pub id: String,
    /// The token's id: its accessor, not a credential.
    pub token_id: String,
    /// The hash of the outstanding token (see `TokenClaims::hash`); the token itself is never
    /// stored.
    #[serde(default)]
    pub token_hash: String,
    pub issued_at: u64,
    pub expires_at: u64,
    /// Unix seconds when the token was consumed; `None` while it is outstanding.
    pub activated_at: Option<u64>,
    /// The fingerprint of the member's public key (see `pki::key_fingerprint`), set at
    /// activation: a caller naming this id must present a certificate for that key.
    #[serde(default)]
    pub key_fingerprint: String,
    /// The member's own CA certificate, set at activation.
    #[serde(default)]
    pub ca_cert_pem: String,
    /// The record of the replication set's first primary, so that it can follow a promoted
    /// secondary after a switchover; not listed among the known secondaries.
    #[serde(default)]
    pub is_primary: bool,
}

/// Checks a secondary id: what it may look like, since it becomes a storage path segment.
pub fn validate_secondary_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("secondary id is required".into());
    }
    if id.len() > MAX_SECONDARY_ID_BYTES {
        return Err(format!(
            "secondary id is {} bytes, over the limit of {MAX_SECONDARY_ID_BYTES}",
            id.len()
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "secondary id {id:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secondary_ids_are_checked() {
        assert!(validate_secondary_id("eu-west.1").is_ok());
        assert!(validate_secondary_id("").is_err());
        assert!(validate_secondary_id("a/b").is_err());
        assert!(validate_secondary_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn the_paths_have_the_intended_storage_class() {
        let classes = crate::path::PathClassifier::new(
            &crate::path::DEFAULT_LOCAL_PREFIXES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
        use crate::path::PathClass::{Local, Replicated};
        assert_eq!(classes.classify(DEFINITION_PATH), Local);
        assert_eq!(classes.classify(PRIMARY_ADDRS_PATH), Local);
        assert_eq!(classes.classify(CA_PATH), Local);
        assert_eq!(
            classes.classify(&format!("{SECONDARIES_PREFIX}east")),
            Replicated
        );
    }
}
