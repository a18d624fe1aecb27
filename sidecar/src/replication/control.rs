//! Role changes: the operations behind `sys/replication/performance/...`.
//!
//! Each runs under the replication control lock, checks the current role first (a wrong role
//! is the caller's mistake: [`ControlError::Invalid`], nothing changes), does whatever can fail
//! before it stores anything, then stores the new role and adopts it. A secondary whose
//! activation fails stays exactly as it was.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::replication as pb;
use serde::Serialize;
use thiserror::Error;
use tonic::Code;
use tracing::info;

use super::definition::{
    CA_PATH, ClusterDefinition, DEFINITION_PATH, PRIMARY_ADDRS_PATH, SECONDARIES_PREFIX,
    SecondaryRecord, UnshippedRange, validate_secondary_id,
};
use super::follower::probe;
use super::membership::{NewMember, member_cas_pem};
use super::pki::{CertifiedKey, ReplicationCa};
use super::role::Role;
use super::token::{TokenClaims, TokenError};
use super::transport::{CONNECT_TIMEOUT, TlsMaterial, client};
use super::{Replication, unix_now};
use crate::error::StoreError;

/// Default lifetime of an activation token (Vault's).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// Longest lifetime an activation token may be given.
pub const MAX_TOKEN_TTL: Duration =
    Duration::from_secs(ferry_proto::MAX_ACTIVATION_TOKEN_TTL_SECONDS);
/// Most primary addresses accepted by update-primary.
const MAX_PRIMARY_ADDRS: usize = 16;

/// Why a role change was refused.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The request is wrong for this cluster's role, or its input is bad: a 400.
    #[error("{0}")]
    Invalid(String),
    /// A peer could not be reached: a 503; nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// A planned promotion could not reach the old primary: a 503 with the error code
    /// [`ferry_proto::PRIMARY_UNREACHABLE`], on which the caller may decide to force; nothing
    /// changed.
    #[error("{0}")]
    PrimaryUnreachable(String),
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub(super) fn invalid(message: impl Into<String>) -> ControlError {
    ControlError::Invalid(message.into())
}

/// A freshly issued activation token, in Vault's `wrap_info` shape.
#[derive(Clone, Debug, Serialize)]
pub struct WrapInfo {
    pub token: String,
    pub accessor: String,
    pub ttl: u64,
    pub creation_time: u64,
    pub creation_path: String,
}

impl Replication {
    /// `performance/primary/enable`.
    pub async fn enable_primary(
        self: &Arc<Self>,
        primary_cluster_addr: String,
    ) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        self.require_kek()?;
        if let Some(d) = self.definition() {
            return Err(invalid(format!(
                "replication is already enabled: this cluster is a performance {}",
                d.role.name()
            )));
        }
        if !primary_cluster_addr.is_empty() {
            validate_address(&primary_cluster_addr)?;
        }
        // A new replication set: epochs heard of in an earlier one do not apply to it.
        super::superseded::clear(&self.core).await?;
        let cluster_id = random_id();
        let member = format!("primary-{}", &cluster_id[..8]);
        let NewMember { ca, identity } =
            NewMember::generate(&cluster_id, &member).map_err(|e| invalid(e.to_string()))?;
        let client_cert_pem = self
            .self_issued_client_cert(&ca, &identity, &member)
            .map_err(|e| invalid(e.to_string()))?;
        // The primary is a member too, so that it can follow a promoted secondary later.
        let record = SecondaryRecord {
            id: member.clone(),
            token_id: String::new(),
            token_hash: String::new(),
            issued_at: unix_now(),
            expires_at: 0,
            activated_at: Some(unix_now()),
            key_fingerprint: identity
                .key_fingerprint()
                .map_err(|e| invalid(e.to_string()))?,
            ca_cert_pem: ca.key.cert_pem.clone(),
            is_primary: true,
        };
        let definition = ClusterDefinition {
            role: Role::Primary,
            cluster_id: cluster_id.clone(),
            primary_cluster_addr,
            secondary_id: member.clone(),
            member_cas_pem: member_cas_pem(std::slice::from_ref(&record), &[]),
            primary_ca_cert_pem: ca.key.cert_pem.clone(),
            identity,
            client_cert_pem,
        };
        let g = &self.gateway;
        g.write(vec![
            g.op(CA_PATH.into(), Some(self.seal_json(CA_PATH, &ca)?)),
            g.op(format!("{SECONDARIES_PREFIX}{member}"), Some(json(&record))),
            g.op(
                DEFINITION_PATH.into(),
                Some(self.seal_json(DEFINITION_PATH, &definition)?),
            ),
        ])
        .await?;
        self.adopt(Some(definition));
        self.sign_own_epoch().await?;
        info!(%cluster_id, "enabled performance replication as primary");
        Ok(())
    }

    /// `performance/primary/secondary-token`.
    pub async fn secondary_token(
        self: &Arc<Self>,
        id: String,
        ttl: Duration,
    ) -> Result<WrapInfo, ControlError> {
        let _guard = self.control.lock().await;
        let definition = self.active_primary()?;
        validate_secondary_id(&id).map_err(ControlError::Invalid)?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(invalid(format!(
                "ttl must be between 1s and {}s",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        if let Some(existing) = self.secondary_record(&id).await?
            && existing.activated_at.is_some()
        {
            return Err(invalid(format!(
                "secondary {id:?} is already activated; revoke it before issuing a new token"
            )));
        }
        let ca = self.own_ca().await?;
        let now = unix_now();
        let address = if definition.primary_cluster_addr.is_empty() {
            self.config.cluster_addr.clone()
        } else {
            definition.primary_cluster_addr.clone()
        };
        let claims = TokenClaims {
            token_id: random_id(),
            secondary_id: id.clone(),
            cluster_id: definition.cluster_id.clone(),
            primary_cluster_addr: address,
            issued_at: now,
            expires_at: now + ttl.as_secs(),
            ca_cert_pem: ca.key.cert_pem.clone(),
            signing_key: {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(ca.public_key().map_err(|e| invalid(e.to_string()))?)
            },
        };
        let token = claims.sign(&ca).map_err(|e| invalid(e.to_string()))?;
        // Only the token's hash is kept: it admits whoever presents the token, once.
        let record = SecondaryRecord {
            id: id.clone(),
            token_id: claims.token_id.clone(),
            token_hash: TokenClaims::hash(&token),
            issued_at: now,
            expires_at: claims.expires_at,
            activated_at: None,
            key_fingerprint: String::new(),
            ca_cert_pem: String::new(),
            is_primary: false,
        };
        let g = &self.gateway;
        g.write(vec![
            g.op(format!("{SECONDARIES_PREFIX}{id}"), Some(json(&record))),
        ])
        .await?;
        info!(secondary_id = %id, ttl_seconds = ttl.as_secs(), "issued an activation token");
        Ok(WrapInfo {
            token,
            accessor: claims.token_id,
            ttl: ttl.as_secs(),
            creation_time: now,
            creation_path: "sys/replication/performance/primary/secondary-token".into(),
        })
    }

    /// `performance/primary/revoke-secondary`.
    pub async fn revoke_secondary(self: &Arc<Self>, id: String) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        self.active_primary()?;
        validate_secondary_id(&id).map_err(ControlError::Invalid)?;
        match self.secondary_record(&id).await? {
            Some(r) if !r.is_primary => {}
            _ => return Err(invalid(format!("unknown secondary id {id:?}"))),
        }
        let g = &self.gateway;
        g.write(vec![g.op(format!("{SECONDARIES_PREFIX}{id}"), None)])
            .await?;
        // Its CA is trusted no more, here and, from their next heartbeat, by the others.
        let ca = self.own_ca().await?;
        let members = self.stored_member_cas(&ca.key.cert_pem).await?;
        self.store_definition_locked(|d| d.member_cas_pem = members)
            .await?;
        self.peers.lock().expect("peers lock poisoned").remove(&id);
        info!(secondary_id = %id, "revoked a secondary");
        Ok(())
    }

    /// `performance/primary/demote`: stop accepting replicated writes, keep the cluster id, keep
    /// shipping what was written so that a secondary can drain it. Returns the last WAL index.
    pub async fn demote(self: &Arc<Self>) -> Result<u64, ControlError> {
        let _guard = self.control.lock().await;
        let mut definition = self.active_primary()?;
        let demoted = definition
            .role
            .demote()
            .map_err(|e| invalid(e.to_string()))?;
        self.core.set_write_mode(crate::core::WriteMode::Closed);
        // Settle whatever was already launched; nothing replicated launches after this.
        drop(self.core.commits.pause().await?);
        definition.role = demoted;
        self.persist(Some(definition)).await?;
        let last = self.core.wal().last;
        info!(
            last_wal = last,
            "demoted: this cluster accepts no replicated writes"
        );
        Ok(last)
    }

    /// `performance/primary/disable`: replication off; secondaries can no longer connect.
    pub async fn disable_primary(self: &Arc<Self>) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        if self.active_primary().is_err() {
            return Err(invalid(
                "this cluster is not an active performance primary (a demoted primary is disabled with secondary/disable)",
            ));
        }
        let g = &self.gateway;
        let members = g.list(SECONDARIES_PREFIX).await?;
        let mut ops: Vec<_> = members
            .iter()
            .filter(|m| !m.ends_with('/'))
            .map(|m| g.op(format!("{SECONDARIES_PREFIX}{m}"), None))
            .collect();
        ops.push(g.op(CA_PATH.into(), None));
        for part in ops.chunks(self.core.limits.max_batch_ops) {
            g.write(part.to_vec()).await?;
        }
        self.persist(None).await?;
        self.peers.lock().expect("peers lock poisoned").clear();
        info!("disabled performance replication");
        Ok(())
    }

    /// `performance/secondary/enable`: consume an activation token and follow its primary.
    pub async fn enable_secondary(self: &Arc<Self>, token: String) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        self.require_kek()?;
        if let Some(d) = self.definition() {
            return Err(invalid(format!(
                "replication is already enabled: this cluster is a performance {}; use update-primary",
                d.role.name()
            )));
        }
        let (definition, addrs, ca) = self.activate(&token).await?;
        // Whatever this cluster applied before belonged to another replication set.
        self.core
            .fenced([etcd_client::TxnOp::delete(
                self.core.keyspace.applied(),
                None,
            )])
            .await?;
        self.follower_status().primary_epoch = 0;
        self.store_primary_addrs(addrs).await?;
        self.store_own_ca(&ca).await?;
        self.persist(Some(definition)).await?;
        info!("enabled performance replication as secondary");
        Ok(())
    }

    /// `performance/secondary/update-primary`: follow another primary, by token or by address.
    pub async fn update_primary(
        self: &Arc<Self>,
        token: Option<String>,
        addrs: Option<Vec<String>>,
    ) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        self.require_kek()?;
        let current = self.definition().ok_or_else(|| {
            invalid("this cluster is not a performance secondary (or a demoted primary)")
        })?;
        // A former primary may hold writes the new primary never received: the first
        // reconciliation keeps what it replaces aside instead of dropping it. When the new
        // primary said how far it had applied this cluster's stream, only the keys written
        // after that are kept aside.
        let unshipped = if current.role.is_demoted() {
            super::superseded::load(&self.core)
                .await?
                .and_then(|s| s.shipped_to)
                .map(|after| UnshippedRange {
                    after,
                    through: self.core.wal().last,
                })
        } else {
            None
        };
        let role = current
            .role
            .follow(self.core.stream().epoch, unshipped)
            .map_err(|e| invalid(e.to_string()))?;
        let (definition, addrs) = match (token, addrs) {
            (Some(token), None) if !token.trim().is_empty() => {
                // Moving to another replication set would need a wipe: disable, then enable.
                let claims =
                    TokenClaims::verify(&token, unix_now()).map_err(|e| invalid(e.to_string()))?;
                if claims.cluster_id != current.cluster_id {
                    return Err(invalid(
                        TokenError::Foreign(format!(
                            "{}; this secondary belongs to {}",
                            claims.cluster_id, current.cluster_id
                        ))
                        .to_string(),
                    ));
                }
                let (definition, addrs, ca) = self.activate(&token).await?;
                self.store_own_ca(&ca).await?;
                (definition, addrs)
            }
            (None, Some(addrs)) if !addrs.is_empty() => {
                if addrs.len() > MAX_PRIMARY_ADDRS {
                    return Err(invalid(format!(
                        "update_primary_addrs holds {} addresses, over the limit of {MAX_PRIMARY_ADDRS}",
                        addrs.len()
                    )));
                }
                for a in &addrs {
                    validate_address(a)?;
                }
                // Following an address that is not (yet) an active primary would leave this
                // cluster following nobody, and a demoted primary that stops answering as one
                // blocks the planned promotion of its successor: refuse, change nothing, and
                // let the caller retry once the new primary is promoted.
                // Only a member that proves it is the primary is followed, and from then on only
                // its CA is trusted for the primary's servers.
                let primary_ca_cert_pem = self.find_active_primary(&current, &addrs).await?;
                let definition = ClusterDefinition {
                    primary_cluster_addr: addrs[0].clone(),
                    primary_ca_cert_pem,
                    ..current.clone()
                };
                (definition, addrs)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "token and update_primary_addrs are mutually exclusive",
                ));
            }
            _ => return Err(invalid("either token or update_primary_addrs is required")),
        };
        let definition = ClusterDefinition { role, ..definition };
        self.store_primary_addrs(addrs).await?;
        self.persist(Some(definition)).await?;
        info!(keep_aside = ?role.keep_aside(), "following a new primary");
        Ok(())
    }

    /// `performance/secondary/disable`: stop following; keep the data.
    pub async fn disable_secondary(self: &Arc<Self>) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        self.definition()
            .ok_or_else(|| invalid("this cluster is not a performance secondary"))?
            .role
            .check_secondary_disable()
            .map_err(|e| invalid(e.to_string()))?;
        let g = &self.gateway;
        g.write(vec![g.op(CA_PATH.into(), None)]).await?;
        self.persist(None).await?;
        info!("disabled performance replication as secondary");
        Ok(())
    }

    /// Role changes store private keys, sealed: without a key-encryption key they are refused
    /// before anything happens (a consumed activation token included).
    fn require_kek(&self) -> Result<(), ControlError> {
        if self.config.kek.is_none() {
            return Err(invalid(
                "this sidecar has no key-encryption key to seal the replication keys with: start it with --key-encryption-key-file",
            ));
        }
        Ok(())
    }

    fn active_primary(&self) -> Result<ClusterDefinition, ControlError> {
        match self.definition() {
            Some(d) if d.role.is_active_primary() => Ok(d),
            _ => Err(invalid("this cluster is not an active performance primary")),
        }
    }

    async fn secondary_record(&self, id: &str) -> Result<Option<SecondaryRecord>, ControlError> {
        let raw = self
            .gateway
            .get(&format!("{SECONDARIES_PREFIX}{id}"))
            .await?;
        Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }

    /// Every member record, for status.
    pub async fn secondary_records(&self) -> Result<Vec<SecondaryRecord>, StoreError> {
        let g = &self.gateway;
        let mut out = Vec::new();
        for name in g.list(SECONDARIES_PREFIX).await? {
            if let Some(raw) = g.get(&format!("{SECONDARIES_PREFIX}{name}")).await?
                && let Ok(r) = serde_json::from_slice::<SecondaryRecord>(&raw)
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn store_primary_addrs(&self, addrs: Vec<String>) -> Result<(), ControlError> {
        let g = &self.gateway;
        g.write(vec![g.op(PRIMARY_ADDRS_PATH.into(), Some(json(&addrs)))])
            .await?;
        let mut s = self.follower_status();
        s.known_primary_cluster_addrs = addrs;
        s.last_remote_wal = 0;
        s.connected_to.clear();
        Ok(())
    }
}

impl Replication {
    /// Checks `token` and consumes it at its primary with a certificate signing request for a
    /// key made here. Returns the definition to adopt, the primary's addresses and this
    /// cluster's new CA. Stores nothing.
    async fn activate(
        &self,
        token: &str,
    ) -> Result<(ClusterDefinition, Vec<String>, ReplicationCa), ControlError> {
        let claims = TokenClaims::verify(token, unix_now()).map_err(|e| invalid(e.to_string()))?;
        let NewMember { ca, identity } =
            NewMember::generate(&claims.cluster_id, &claims.secondary_id)
                .map_err(|e| invalid(e.to_string()))?;
        // No client certificate yet, and only the token's CA is trusted: that pins the primary.
        let tls = TlsMaterial {
            ca_cert_pem: claims.ca_cert_pem.clone(),
            identity: None,
        };
        let address = claims.primary_cluster_addr.clone();
        let mut c = client(&address, &tls).map_err(|e| invalid(format!("{e:#}")))?;
        let call = c.activate(pb::ActivateRequest {
            token: token.trim().to_owned(),
            csr_pem: identity.csr_pem().map_err(|e| invalid(e.to_string()))?,
            ca_cert_pem: ca.key.cert_pem.clone(),
        });
        let reply = match tokio::time::timeout(CONNECT_TIMEOUT * 3, call).await {
            Err(_) => {
                return Err(ControlError::Unavailable(format!(
                    "the primary at {address} did not answer the activation"
                )));
            }
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied) => {
                return Err(invalid(s.message().to_owned()));
            }
            Ok(Err(s)) => {
                let detail =
                    ferry_proto::with_causes(s.message().to_owned(), std::error::Error::source(&s));
                if detail.contains("UnknownIssuer") || detail.contains("certificate") {
                    return Err(invalid(
                        TokenError::Foreign(format!(
                            "the primary at {address} does not hold the token's replication CA"
                        ))
                        .to_string(),
                    ));
                }
                return Err(ControlError::Unavailable(format!(
                    "could not reach the primary at {address}: {detail}"
                )));
            }
        };
        if reply.cluster_id != claims.cluster_id {
            return Err(invalid(TokenError::Foreign(reply.cluster_id).to_string()));
        }
        // The certificate must be for the key made here, chained to the token's CA.
        let issued = CertifiedKey {
            cert_pem: reply.client_cert_pem.clone(),
            key_pem: identity.key_pem.clone(),
        };
        if issued.key_fingerprint().ok() != identity.key_fingerprint().ok() {
            return Err(ControlError::Unavailable(format!(
                "the primary at {address} signed a certificate for another key"
            )));
        }
        let mut addrs = reply.cluster_addrs;
        if !addrs.contains(&address) {
            addrs.push(address.clone());
        }
        let definition = ClusterDefinition {
            role: Role::Secondary { keep_aside: None },
            cluster_id: claims.cluster_id,
            primary_cluster_addr: address,
            secondary_id: claims.secondary_id,
            member_cas_pem: member_cas_pem(
                &[],
                &[&claims.ca_cert_pem, &reply.member_cas_pem, &ca.key.cert_pem],
            ),
            primary_ca_cert_pem: claims.ca_cert_pem,
            identity,
            client_cert_pem: reply.client_cert_pem,
        };
        Ok((definition, addrs, ca))
    }

    /// At least one of `addrs` must answer a heartbeat as an active primary of this replication
    /// set, prove its epoch (at least the newest this cluster knows) and serve with the CA of
    /// the member its proof names. Returns that CA's certificate; otherwise a 503 naming each
    /// address's answer.
    async fn find_active_primary(
        &self,
        current: &ClusterDefinition,
        addrs: &[String],
    ) -> Result<String, ControlError> {
        let tls = TlsMaterial::to_members(current);
        // All at once, each bounded by the probe's own deadline.
        let probes = addrs.iter().map(|address| {
            let tls = tls.clone();
            async move { (address, probe(address, &tls, &current.secondary_id).await) }
        });
        let mut answers = Vec::new();
        for (address, answer) in futures::future::join_all(probes).await {
            match answer {
                Ok(reply) if reply.active => match self.pin_primary(current, address, &reply).await
                {
                    Ok(ca_cert_pem) => return Ok(ca_cert_pem),
                    Err(why) => answers.push(format!("{address}: {why}")),
                },
                Ok(_) => answers.push(format!("{address}: a demoted primary")),
                Err(e) => answers.push(format!("{address}: {}", e.message())),
            }
        }
        Err(ControlError::Unavailable(format!(
            "no active primary to follow ({}); nothing changed: try again once the new primary is promoted",
            answers.join("; ")
        )))
    }

    /// The CA certificate of the member that `reply`, from `address`, proves to be the primary,
    /// once `address` has answered a call that trusts that CA alone.
    async fn pin_primary(
        &self,
        current: &ClusterDefinition,
        address: &str,
        reply: &pb::HeartbeatResponse,
    ) -> Result<String, String> {
        let known = self
            .core
            .stream()
            .epoch
            .max(self.follower_status().primary_epoch);
        let (epoch, member) = self
            .proven_primary(reply.epoch_proof.as_ref(), reply.epoch.max(known))
            .await
            .map_err(|why| format!("an active primary whose epoch is not proven ({why})"))?;
        let pinned = TlsMaterial {
            ca_cert_pem: member.ca_cert_pem.clone(),
            identity: Some(current.client_identity()),
        };
        // A node of that member's cluster answers a call that trusted its CA alone: the active
        // node still active, or a standby's refusal (behind a Service, the call may reach one),
        // which came over the same handshake.
        match probe(address, &pinned, &current.secondary_id).await {
            Ok(again) if again.active => Ok(member.ca_cert_pem),
            Ok(_) => Err(format!("member {:?} was demoted meanwhile", member.id)),
            Err(e) if ferry_proto::is_standby_refusal(&e) => Ok(member.ca_cert_pem),
            Err(e) => Err(format!(
                "proves epoch {epoch} for member {:?} but does not serve as it ({})",
                member.id,
                e.message()
            )),
        }
    }

    /// Stores this cluster's own CA, sealed, on its local path.
    async fn store_own_ca(&self, ca: &ReplicationCa) -> Result<(), ControlError> {
        let g = &self.gateway;
        g.write(vec![
            g.op(CA_PATH.into(), Some(self.seal_json(CA_PATH, ca)?)),
        ])
        .await?;
        Ok(())
    }
}

/// Checks a `host:port` address.
pub(super) fn validate_address(address: &str) -> Result<(), ControlError> {
    let ok = address.len() <= 256
        && address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "cluster address {address:?} is not host:port"
        )))
    }
}

fn random_id() -> String {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    crate::wal::record::hex(&id)
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialises")
}
