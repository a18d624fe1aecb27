//! A member's own keys and certificates, what members know of each other, and the renewal of
//! client certificates.
//!
//! When a cluster joins a replication set (as its first primary at enable, as a secondary at
//! activation) it makes its own CA and its own key; the CA issues its server certificate. Both
//! are stored sealed on local paths and never leave it (see `pki` for the trust model).
//!
//! Client certificates are short-lived ([`ReplicationConfig::client_cert_ttl`], a day by default)
//! and renewed at half-life by [`run_renewal`]: a secondary asks the primary it follows over
//! the live connection (`RenewClientCertificate`, authenticated by the current certificate); a
//! primary, active or demoted, signs its own with its CA. A secondary cut off from every primary
//! for longer than the lifetime has to be activated again (revoke, new token, update-primary);
//! status says so.
//!
//! [`ReplicationConfig::client_cert_ttl`]: super::ReplicationConfig::client_cert_ttl

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::replication as pb;
use tokio::sync::watch;
use tracing::{info, warn};

use super::definition::{CA_PATH, ClusterDefinition, SecondaryRecord};
use super::pki::{self, CertifiedKey, PkiError, ReplicationCa};
use super::{Replication, unix_now};
use crate::error::StoreError;

/// Shortest client certificate lifetime accepted.
pub const MIN_CLIENT_CERT_TTL: Duration = Duration::from_secs(4);
/// Longest pause between two checks of the client certificate's age.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A joining cluster's own CA, and its own key with the server certificate that CA issued.
pub struct NewMember {
    pub ca: ReplicationCa,
    pub identity: CertifiedKey,
}

impl NewMember {
    pub fn generate(cluster_id: &str, member: &str) -> Result<Self, PkiError> {
        let ca = ReplicationCa::generate(cluster_id, member)?;
        let identity = ca.issue_server(&pki::generate_key_pem()?)?;
        Ok(Self { ca, identity })
    }
}

/// The CA certificates of every activated member, in id order, then those in the `extra` PEM
/// texts not among them, each once: what members trust on the cluster port.
pub fn member_cas_pem(records: &[SecondaryRecord], extra: &[&str]) -> String {
    let mut records: Vec<_> = records
        .iter()
        .filter(|r| r.activated_at.is_some())
        .collect();
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let texts = records
        .iter()
        .map(|r| r.ca_cert_pem.as_str())
        .chain(extra.iter().copied());
    let mut out: Vec<String> = Vec::new();
    for text in texts {
        for cert in text.split_inclusive(PEM_END) {
            let cert = cert.trim();
            if cert.ends_with(PEM_END) && !out.iter().any(|c| c == cert) {
                out.push(cert.to_owned());
            }
        }
    }
    out.iter().map(|pem| format!("{pem}\n")).collect()
}

const PEM_END: &str = "-----END CERTIFICATE-----";

impl Replication {
    /// This cluster's own CA, from storage.
    pub async fn own_ca(&self) -> Result<ReplicationCa, StoreError> {
        let raw = self.gateway.get(CA_PATH).await?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "this cluster's replication CA is missing at {CA_PATH}"
            ))
        })?;
        self.open_json(CA_PATH, &raw)
    }

    /// A client certificate for this cluster's own key, signed by its own CA: how a primary
    /// gets one.
    pub(super) fn self_issued_client_cert(
        &self,
        ca: &ReplicationCa,
        identity: &CertifiedKey,
        member: &str,
    ) -> Result<String, PkiError> {
        let (cert, _) = ca.sign_client(
            &identity.csr_pem()?,
            member,
            self.config.client_cert_ttl,
            unix_now(),
        )?;
        Ok(cert)
    }

    /// Every member's CA certificate, from the member records in storage, with this cluster's
    /// own.
    pub(super) async fn stored_member_cas(&self, own_ca: &str) -> Result<String, StoreError> {
        Ok(member_cas_pem(&self.secondary_records().await?, &[own_ca]))
    }

    /// Renews this cluster's client certificate once it is past half its life. Returns whether
    /// it did.
    async fn renew_if_due(&self) -> Result<bool, String> {
        let Some(definition) = self.definition() else {
            return Ok(false);
        };
        let (from, to) =
            pki::validity_of(&definition.client_cert_pem).map_err(|e| e.to_string())?;
        let now = unix_now();
        if now < from + (to.saturating_sub(from)) / 2 {
            return Ok(false);
        }
        let cert = if definition.follows_primary() {
            self.renew_at_primary(&definition, to, now).await?
        } else {
            let ca = self.own_ca().await.map_err(|e| e.to_string())?;
            self.self_issued_client_cert(&ca, &definition.identity, &definition.secondary_id)
                .map_err(|e| e.to_string())?
        };
        let key = definition.client_identity();
        let renewed = CertifiedKey {
            cert_pem: cert.clone(),
            ..key
        };
        // What the primary signed must be for this cluster's own key.
        if renewed.key_fingerprint().map_err(|e| e.to_string())?
            != definition
                .identity
                .key_fingerprint()
                .map_err(|e| e.to_string())?
        {
            return Err("the renewed client certificate is not for this cluster's key".into());
        }
        self.store_definition(|d| d.client_cert_pem = cert)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            valid_until = %ferry_proto::time::rfc3339(pki::validity_of(&renewed.cert_pem).map_or(0, |v| v.1)),
            "renewed the cluster port's client certificate"
        );
        Ok(true)
    }

    async fn renew_at_primary(
        &self,
        definition: &ClusterDefinition,
        expires_at: u64,
        now: u64,
    ) -> Result<String, String> {
        let connected = self.primary.lock().expect("primary lock poisoned").clone();
        let Some((address, mut client)) = connected else {
            return Err(if now >= expires_at {
                format!(
                    "this cluster's client certificate expired at {}: it cannot reconnect; revoke this secondary on the primary, issue a new activation token and run update-primary with it",
                    ferry_proto::time::rfc3339(expires_at)
                )
            } else {
                "not connected to the primary: the client certificate is renewed once it is".into()
            });
        };
        let csr = definition.identity.csr_pem().map_err(|e| e.to_string())?;
        let reply = super::follower::timeout(client.renew_client_certificate(
            pb::RenewClientCertificateRequest {
                secondary_id: definition.secondary_id.clone(),
                csr_pem: csr,
            },
        ))
        .await
        .map_err(|s| format!("the primary at {address} refused to renew: {}", s.message()))?;
        Ok(reply.into_inner().client_cert_pem)
    }
}

/// Checks the client certificate's age now and then, and renews it at half-life, until `stop`.
pub async fn run_renewal(replication: Arc<Replication>, mut stop: watch::Receiver<bool>) {
    let interval =
        (replication.config.client_cert_ttl / 10).clamp(Duration::from_secs(1), MAX_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = replication.renew_if_due().await {
            warn!(error = %e, "failed to renew the cluster port's client certificate");
            replication.follower_status().last_error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, activated: bool, ca: &str) -> SecondaryRecord {
        SecondaryRecord {
            id: id.into(),
            token_id: String::new(),
            token_hash: String::new(),
            issued_at: 0,
            expires_at: 0,
            activated_at: activated.then_some(1),
            key_fingerprint: String::new(),
            ca_cert_pem: ca.into(),
            is_primary: false,
        }
    }

    fn pem(name: &str) -> String {
        format!("-----BEGIN CERTIFICATE-----\n{name}\n{PEM_END}")
    }

    #[test]
    fn only_activated_members_cas_are_trusted_each_once() {
        let records = [
            record("b", true, &pem("B")),
            record("a", true, &format!("{}\n", pem("A"))),
            record("c", false, &pem("C")),
        ];
        let bundle = format!("{}\n{}", pem("A"), pem("D"));
        assert_eq!(
            member_cas_pem(&records, &[&bundle, "garbage"]),
            format!("{}\n{}\n{}\n", pem("A"), pem("B"), pem("D"))
        );
    }
}
