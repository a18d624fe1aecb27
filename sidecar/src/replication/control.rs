//! Role changes: the operations behind `sys/replication/performance/...`.
//!
//! Each runs under the replication control lock, checks the current role first (a wrong role
//! is the caller's mistake: [`ControlError::Invalid`], nothing changes), does whatever can fail
//! before it stores anything, then stores the new role and adopts it. A secondary whose
//! activation fails stays exactly as it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::replication as pb;
use serde::Serialize;
use thiserror::Error;
use tonic::Code;
use tracing::{info, warn};

use super::applied::Applied;
use super::definition::{
    CA_PATH, ClusterDefinition, DEFINITION_PATH, Mode, PRIMARY_ADDRS_PATH, SECONDARIES_PREFIX,
    SecondaryRecord, validate_secondary_id,
};
use super::follower::probe;
use super::pki::ReplicationCa;
use super::service::load_ca;
use super::token::{TokenClaims, TokenError};
use super::transport::{CONNECT_TIMEOUT, TlsMaterial, client};
use super::{Replication, unix_now};
use crate::error::StoreError;
use crate::wal::StreamState;
use crate::wal::record::StreamId;

/// Default lifetime of an activation token (Vault's).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// Longest lifetime an activation token may be given.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a planned promotion waits to apply the demoted primary's last WAL index.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new primary keeps telling its old primary about the new epoch.
const ANNOUNCE_FOR: Duration = Duration::from_secs(600);
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
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

fn invalid(message: impl Into<String>) -> ControlError {
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

/// What a promotion did.
#[derive(Clone, Debug, Serialize)]
pub struct Promotion {
    pub epoch: u64,
    pub stream_id: String,
    /// The demoted primary's last WAL index this cluster applied before promoting, if drained.
    pub drained_to: Option<u64>,
}

impl Replication {
    /// `performance/primary/enable`.
    pub async fn enable_primary(
        self: &Arc<Self>,
        primary_cluster_addr: String,
    ) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        if let Some(d) = self.definition() {
            return Err(invalid(format!(
                "replication is already enabled: this cluster is a performance {}",
                role_name(&d)
            )));
        }
        if !primary_cluster_addr.is_empty() {
            validate_address(&primary_cluster_addr)?;
        }
        let cluster_id = random_id();
        let ca = ReplicationCa::generate(&cluster_id).map_err(|e| invalid(e.to_string()))?;
        let member = format!("primary-{}", &cluster_id[..8]);
        let identity = ca.issue(&member).map_err(|e| invalid(e.to_string()))?;
        // The primary is a member too, so that it can follow a promoted secondary later.
        let record = SecondaryRecord {
            id: member.clone(),
            token_id: String::new(),
            issued_at: unix_now(),
            expires_at: 0,
            activated_at: Some(unix_now()),
            cert_fingerprint: identity.fingerprint().map_err(|e| invalid(e.to_string()))?,
            is_primary: true,
        };
        let definition = ClusterDefinition {
            mode: Mode::Primary,
            cluster_id: cluster_id.clone(),
            primary_cluster_addr,
            secondary_id: member.clone(),
            demoted: false,
            fenced_by_epoch: None,
            keep_aside_epoch: None,
            ca_cert_pem: ca.key.cert_pem.clone(),
            identity,
        };
        let g = &self.gateway;
        g.write(vec![
            g.op(CA_PATH.into(), Some(json(&ca))),
            g.op(format!("{SECONDARIES_PREFIX}{member}"), Some(json(&record))),
            g.op(DEFINITION_PATH.into(), Some(json(&definition))),
        ])
        .await?;
        self.adopt(Some(definition));
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
        let ca = load_ca(self).await?;
        let client = ca
            .issue(&format!("secondary {id}"))
            .map_err(|e| invalid(e.to_string()))?;
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
            client: client.clone(),
        };
        let token = claims.sign(&ca).map_err(|e| invalid(e.to_string()))?;
        let record = SecondaryRecord {
            id: id.clone(),
            token_id: claims.token_id.clone(),
            issued_at: now,
            expires_at: claims.expires_at,
            activated_at: None,
            cert_fingerprint: client.fingerprint().map_err(|e| invalid(e.to_string()))?,
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
        self.peers.lock().expect("peers lock poisoned").remove(&id);
        info!(secondary_id = %id, "revoked a secondary");
        Ok(())
    }

    /// `performance/primary/demote`: stop accepting replicated writes, keep the cluster id, keep
    /// shipping what was written so that a secondary can drain it. Returns the last WAL index.
    pub async fn demote(self: &Arc<Self>) -> Result<u64, ControlError> {
        let _guard = self.control.lock().await;
        let mut definition = self.active_primary()?;
        self.core.set_write_mode(crate::core::WriteMode::Closed);
        // Settle whatever was already launched; nothing replicated launches after this.
        drop(self.core.commits.pause().await?);
        definition.mode = Mode::Secondary;
        definition.demoted = true;
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
        if let Some(d) = self.definition() {
            return Err(invalid(format!(
                "replication is already enabled: this cluster is a performance {}; use update-primary",
                role_name(&d)
            )));
        }
        let (definition, addrs) = activate(&token).await?;
        // Whatever this cluster applied before belonged to another replication set.
        self.core
            .fenced([etcd_client::TxnOp::delete(
                self.core.keyspace.applied(),
                None,
            )])
            .await?;
        self.follower_status().primary_epoch = 0;
        self.store_primary_addrs(addrs).await?;
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
        let current = match self.definition() {
            Some(d) if d.mode == Mode::Secondary => d,
            _ => {
                return Err(invalid(
                    "this cluster is not a performance secondary (or a demoted primary)",
                ));
            }
        };
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
                activate(&token).await?
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
                require_active_primary(&current, &addrs).await?;
                let definition = ClusterDefinition {
                    primary_cluster_addr: addrs[0].clone(),
                    demoted: false,
                    fenced_by_epoch: None,
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
        // A former primary may hold writes the new primary never received: the first
        // reconciliation keeps what it replaces aside instead of dropping it.
        let keep_aside = current
            .demoted
            .then(|| self.core.stream().epoch)
            .or(current.keep_aside_epoch);
        let definition = ClusterDefinition {
            keep_aside_epoch: keep_aside,
            ..definition
        };
        self.store_primary_addrs(addrs).await?;
        self.persist(Some(definition)).await?;
        info!(keep_aside = ?keep_aside, "following a new primary");
        Ok(())
    }

    /// `performance/secondary/disable`: stop following; keep the data.
    pub async fn disable_secondary(self: &Arc<Self>) -> Result<(), ControlError> {
        let _guard = self.control.lock().await;
        match self.definition() {
            Some(d) if d.mode == Mode::Secondary => {}
            _ => return Err(invalid("this cluster is not a performance secondary")),
        }
        self.persist(None).await?;
        info!("disabled performance replication as secondary");
        Ok(())
    }

    /// `performance/secondary/promote`. Without `force`, the old primary must be reachable and
    /// demoted, and this cluster first applies its last WAL index; with `force`, promotion goes
    /// ahead whatever the old primary's state (writes it never shipped stay there).
    pub async fn promote(
        self: &Arc<Self>,
        force: bool,
        primary_cluster_addr: Option<String>,
    ) -> Result<Promotion, ControlError> {
        let _guard = self.control.lock().await;
        let definition = match self.definition() {
            Some(d) if d.mode == Mode::Secondary => d,
            _ => return Err(invalid("only a performance secondary can be promoted")),
        };
        if let Some(a) = primary_cluster_addr.as_deref().filter(|a| !a.is_empty()) {
            validate_address(a)?;
        }
        let ca = load_ca(self).await.map_err(|e| {
            invalid(format!(
                "this cluster cannot act as primary: {e}; wait for the first sync to finish"
            ))
        })?;
        let drained_to = if definition.follows_primary() {
            self.drain_old_primary(&definition, force).await?
        } else {
            None
        };
        let applied_epoch =
            match crate::etcd::get(&mut self.core.kv(), &self.core.keyspace.applied()).await? {
                Some(kv) => Applied::decode(kv.value()).map_or(0, |a| a.epoch),
                None => 0,
            };
        let known = self.follower_status().primary_epoch;
        let stream = StreamState {
            stream_id: StreamId::random(),
            epoch: self.core.stream().epoch.max(known).max(applied_epoch) + 1,
        };
        // Stop following, and settle what the follower already launched, before this cluster
        // starts a new stream; if that fails, go back to following.
        self.adopt(Some(ClusterDefinition {
            demoted: true,
            ..definition.clone()
        }));
        let started = async {
            drop(self.core.commits.pause().await?);
            self.core
                .fenced([etcd_client::TxnOp::put(
                    self.core.keyspace.stream(),
                    stream.encode(),
                    None,
                )])
                .await
        };
        if let Err(e) = started.await {
            self.adopt(Some(definition));
            return Err(e.into());
        }
        self.core.set_stream(stream);
        let old_primaries = super::resolver::candidates(self);
        let promoted = ClusterDefinition {
            mode: Mode::Primary,
            cluster_id: definition.cluster_id.clone(),
            primary_cluster_addr: primary_cluster_addr.unwrap_or_default(),
            secondary_id: definition.secondary_id.clone(),
            demoted: false,
            fenced_by_epoch: None,
            keep_aside_epoch: None,
            ca_cert_pem: ca.key.cert_pem.clone(),
            identity: definition.identity.clone(),
        };
        self.persist(Some(promoted)).await?;
        info!(epoch = stream.epoch, stream_id = %stream.stream_id.to_hex(), "promoted to performance primary");
        tokio::spawn(announce(
            TlsMaterial::of(&definition),
            definition.secondary_id.clone(),
            self.config.cluster_addr.clone(),
            stream.epoch,
            old_primaries,
        ));
        Ok(Promotion {
            epoch: stream.epoch,
            stream_id: stream.stream_id.to_hex(),
            drained_to,
        })
    }

    /// Before a planned promotion: the old primary must be demoted, and this cluster must have
    /// applied its last index. `force` skips both checks.
    async fn drain_old_primary(
        &self,
        definition: &ClusterDefinition,
        force: bool,
    ) -> Result<Option<u64>, ControlError> {
        let tls = TlsMaterial::of(definition);
        let address = {
            let connected = self.follower_status().connected_to.clone();
            if connected.is_empty() {
                definition.primary_cluster_addr.clone()
            } else {
                connected
            }
        };
        let reply = match probe(&address, &tls, &definition.secondary_id).await {
            Ok(r) => r,
            Err(e) if force => {
                warn!(primary = %address, error = %e.message(), "forced promotion: the primary is unreachable; writes it did not ship stay there");
                return Ok(None);
            }
            Err(e) => {
                // A 503: the peer is the problem, and the operator may then force (only then).
                return Err(ControlError::Unavailable(format!(
                    "cannot reach the primary at {address} ({}); demote it first, or promote with force=true to accept losing writes it has not shipped",
                    e.message()
                )));
            }
        };
        if reply.active {
            if force {
                warn!(primary = %address, "forced promotion while the primary is still active; it is fenced by the new epoch");
                return Ok(None);
            }
            return Err(invalid(format!(
                "the primary at {address} is still active; demote it first, or promote with force=true"
            )));
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let applied = self.follower_status().last_remote_wal;
            if applied >= reply.last_wal {
                return Ok(Some(reply.last_wal));
            }
            if Instant::now() >= deadline {
                if force {
                    return Ok(None);
                }
                return Err(ControlError::Unavailable(format!(
                    "this cluster applied index {applied} of the demoted primary's {}; try again, or promote with force=true",
                    reply.last_wal
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn active_primary(&self) -> Result<ClusterDefinition, ControlError> {
        match self.definition() {
            Some(d) if d.mode == Mode::Primary && !d.demoted => Ok(d),
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

/// Checks `token` and consumes it at its primary. Returns the definition to adopt and the
/// primary's addresses. Changes nothing locally.
async fn activate(token: &str) -> Result<(ClusterDefinition, Vec<String>), ControlError> {
    let claims = TokenClaims::verify(token, unix_now()).map_err(|e| invalid(e.to_string()))?;
    let tls = TlsMaterial {
        ca_cert_pem: claims.ca_cert_pem.clone(),
        identity: claims.client.clone(),
    };
    let address = claims.primary_cluster_addr.clone();
    let mut c = client(&address, &tls).map_err(|e| invalid(format!("{e:#}")))?;
    let call = c.activate(pb::ActivateRequest {
        token: token.trim().to_owned(),
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
            let detail = error_chain(&s);
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
    let mut addrs = reply.cluster_addrs;
    if !addrs.contains(&address) {
        addrs.push(address.clone());
    }
    let definition = ClusterDefinition {
        mode: Mode::Secondary,
        cluster_id: claims.cluster_id,
        primary_cluster_addr: address,
        secondary_id: claims.secondary_id,
        demoted: false,
        fenced_by_epoch: None,
        keep_aside_epoch: None,
        ca_cert_pem: claims.ca_cert_pem,
        identity: claims.client,
    };
    Ok((definition, addrs))
}

/// Tells the old primary, until it answers or [`ANNOUNCE_FOR`] passes, that a newer epoch
/// exists. Best effort: a primary that never hears it is also fenced by any secondary that
/// follows the new primary and contacts it.
async fn announce(
    tls: TlsMaterial,
    member: String,
    own_address: String,
    epoch: u64,
    old_primaries: Vec<String>,
) {
    let deadline = Instant::now() + ANNOUNCE_FOR;
    let mut delay = Duration::from_millis(500);
    while Instant::now() < deadline {
        for address in old_primaries.iter().filter(|a| **a != own_address) {
            let Ok(mut c) = client(address, &tls) else {
                continue;
            };
            let call = c.announce_epoch(pb::AnnounceEpochRequest {
                secondary_id: member.clone(),
                epoch,
                primary_cluster_addr: own_address.clone(),
            });
            if let Ok(Ok(reply)) = tokio::time::timeout(CONNECT_TIMEOUT * 2, call).await {
                info!(old_primary = %address, fenced = reply.get_ref().fenced, epoch, "told the old primary about the new epoch");
                return;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn error_chain(status: &tonic::Status) -> String {
    let mut out = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

fn role_name(d: &ClusterDefinition) -> &'static str {
    match (d.mode, d.demoted) {
        (Mode::Primary, _) => "primary",
        (Mode::Secondary, true) => "secondary (demoted primary)",
        (Mode::Secondary, false) => "secondary",
    }
}

/// At least one of `addrs` must answer a heartbeat as an active primary of this replication
/// set; otherwise a 503 naming each address's answer.
async fn require_active_primary(
    current: &ClusterDefinition,
    addrs: &[String],
) -> Result<(), ControlError> {
    let tls = TlsMaterial::of(current);
    // All at once, each bounded by the probe's own deadline.
    let probes = addrs.iter().map(|address| {
        let tls = tls.clone();
        async move { (address, probe(address, &tls, &current.secondary_id).await) }
    });
    let mut answers = Vec::new();
    for (address, answer) in futures::future::join_all(probes).await {
        match answer {
            Ok(reply) if reply.active => return Ok(()),
            Ok(_) => answers.push(format!("{address}: a demoted primary")),
            Err(e) => answers.push(format!("{address}: {}", e.message())),
        }
    }
    Err(ControlError::Unavailable(format!(
        "no active primary to follow ({}); nothing changed: try again once the new primary is promoted",
        answers.join("; ")
    )))
}

/// Checks a `host:port` address.
fn validate_address(address: &str) -> Result<(), ControlError> {
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
