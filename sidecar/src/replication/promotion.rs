//! `performance/secondary/promote`: a secondary becomes the primary, raising the epoch.
//!
//! A planned promotion first makes sure the old primary is demoted and drains it: this cluster
//! applies the old primary's last WAL index before it takes writes, so nothing acknowledged is
//! lost. `force` skips both when the old primary cannot be reached. Afterwards the new primary
//! tells the old one about the new epoch ([`announce`]), which fences it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::replication as pb;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::Replication;
use super::control::{ControlError, invalid, validate_address};
use super::definition::ClusterDefinition;
use super::follower::probe;
use super::role::Role;
use super::transport::{CONNECT_TIMEOUT, TlsMaterial, client};
use crate::wal::StreamState;
use crate::wal::record::StreamId;

/// How long a planned promotion waits to apply the demoted primary's last WAL index.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new primary keeps telling its old primary about the new epoch.
const ANNOUNCE_FOR: Duration = Duration::from_secs(600);

/// What a promotion did.
#[derive(Clone, Debug, Serialize)]
pub struct Promotion {
    pub epoch: u64,
    pub stream_id: String,
    /// The demoted primary's last WAL index this cluster applied before promoting, if drained.
    pub drained_to: Option<u64>,
}

impl Replication {
    /// `performance/secondary/promote`. Without `force`, the old primary must be reachable and
    /// demoted, and this cluster first applies its last WAL index; with `force`, promotion goes
    /// ahead whatever the old primary's state (writes it never shipped stay there).
    pub async fn promote(
        self: &Arc<Self>,
        force: bool,
        primary_cluster_addr: Option<String>,
    ) -> Result<Promotion, ControlError> {
        let _guard = self.control.lock().await;
        let definition = self
            .definition()
            .ok_or_else(|| invalid("only a performance secondary can be promoted"))?;
        let promoting = definition
            .role
            .begin_promotion()
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(a) = primary_cluster_addr.as_deref().filter(|a| !a.is_empty()) {
            validate_address(a)?;
        }
        let ca = self
            .own_ca()
            .await
            .map_err(|e| invalid(format!("this cluster cannot act as primary: {e}")))?;
        let drained = if definition.follows_primary() {
            self.drain_old_primary(&definition, force).await?
        } else {
            Drained::No
        };
        let applied = self.stored_applied().await?;
        let applied_epoch = applied.map_or(0, |a| a.epoch);
        let known = self.follower_status().primary_epoch;
        // An epoch this cluster once learned of counts too: the new one must be above all.
        let superseded_epoch = super::superseded::load(&self.core)
            .await?
            .map_or(0, |s| s.epoch);
        let stream = StreamState {
            stream_id: StreamId::random(),
            epoch: self
                .core
                .stream()
                .epoch
                .max(known)
                .max(applied_epoch)
                .max(superseded_epoch)
                + 1,
        };
        // Stop following, and settle what the follower already launched, before this cluster
        // starts a new stream; if that fails, go back to following.
        self.adopt(Some(ClusterDefinition {
            role: promoting,
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
        let proof = super::epoch::sign_epoch(
            &ca,
            &definition.cluster_id,
            &definition.secondary_id,
            stream.epoch,
        )
        .map_err(|e| invalid(e.to_string()))?;
        self.keep_epoch_proof(proof.clone());
        let old_primaries = super::resolver::candidates(self);
        let announcement = pb::AnnounceEpochRequest {
            secondary_id: definition.secondary_id.clone(),
            epoch: stream.epoch,
            primary_cluster_addr: self.config.cluster_addr.clone(),
            applied_index: applied.map_or(0, |a| a.index),
            applied_stream_id: applied.map_or_else(Vec::new, |a| a.stream_id.0.to_vec()),
            epoch_proof: Some(proof),
        };
        let tls = TlsMaterial::to_primary(&definition);
        if drained == Drained::StillActive {
            // It answered a moment ago: fence it before this cluster takes its first write, so
            // that nothing is acknowledged there at the old epoch after that.
            announce_once(&tls, &announcement, &old_primaries).await;
        }
        // From now on this cluster's CA signs client certificates, its own first; every member
        // it knows of from the replicated records stays trusted.
        let client_cert_pem = self
            .self_issued_client_cert(&ca, &definition.identity, &definition.secondary_id)
            .map_err(|e| invalid(e.to_string()))?;
        let member_cas_pem = self.stored_member_cas(&ca.key.cert_pem).await?;
        let promoted = ClusterDefinition {
            role: Role::Primary,
            cluster_id: definition.cluster_id.clone(),
            primary_cluster_addr: primary_cluster_addr.unwrap_or_default(),
            secondary_id: definition.secondary_id.clone(),
            member_cas_pem,
            primary_ca_cert_pem: ca.key.cert_pem.clone(),
            identity: definition.identity.clone(),
            client_cert_pem,
        };
        self.persist(Some(promoted)).await?;
        info!(epoch = stream.epoch, stream_id = %stream.stream_id.to_hex(), "promoted to performance primary");
        crate::tasks::spawn_reported("announce-epoch", announce(tls, announcement, old_primaries));
        Ok(Promotion {
            epoch: stream.epoch,
            stream_id: stream.stream_id.to_hex(),
            drained_to: match drained {
                Drained::To(index) => Some(index),
                _ => None,
            },
        })
    }

    /// Before a planned promotion: the old primary must be demoted, and this cluster must have
    /// applied its last index. `force` skips both checks.
    async fn drain_old_primary(
        &self,
        definition: &ClusterDefinition,
        force: bool,
    ) -> Result<Drained, ControlError> {
        let tls = TlsMaterial::to_primary(definition);
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
                return Ok(Drained::No);
            }
            Err(e) => {
                // A 503: the peer is the problem, and the operator may then force (only then).
                return Err(ControlError::PrimaryUnreachable(format!(
                    "cannot reach the primary at {address} ({}); demote it first, or promote with force=true to accept losing writes it has not shipped",
                    e.message()
                )));
            }
        };
        if reply.active {
            if force {
                warn!(primary = %address, "forced promotion while the primary is still active; it is fenced by the new epoch");
                return Ok(Drained::StillActive);
            }
            return Err(invalid(format!(
                "the primary at {address} is still active; demote it first, or promote with force=true"
            )));
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let applied = self.follower_status().last_remote_wal;
            if applied >= reply.last_wal {
                return Ok(Drained::To(reply.last_wal));
            }
            if Instant::now() >= deadline {
                if force {
                    return Ok(Drained::No);
                }
                return Err(ControlError::Unavailable(format!(
                    "this cluster applied index {applied} of the demoted primary's {}; try again, or promote with force=true",
                    reply.last_wal
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What became of the old primary before a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// Demoted, and this cluster applied its WAL up to this index.
    To(u64),
    /// Forced while it was reachable and still active.
    StillActive,
    /// Forced without draining (unreachable, or drain timed out), or nothing to drain.
    No,
}

/// Tells the old primary that a newer epoch exists, until it answers that it stored it (it
/// may be stalled, or unable to store it yet) or [`ANNOUNCE_FOR`] passes. A primary that never
/// hears it also learns the epoch from any secondary that follows the new primary, and asks its
/// secondaries itself before it opens for writes again.
async fn announce(tls: TlsMaterial, request: pb::AnnounceEpochRequest, old_primaries: Vec<String>) {
    let deadline = Instant::now() + ANNOUNCE_FOR;
    let mut delay = Duration::from_millis(500);
    while Instant::now() < deadline {
        if announce_once(&tls, &request, &old_primaries).await {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    warn!(
        epoch = request.epoch,
        "gave up announcing the new epoch to the old primary after {ANNOUNCE_FOR:?}"
    );
}

/// One round of announcements to each old primary address; returns whether one of them
/// answered that it stored the new epoch.
async fn announce_once(
    tls: &TlsMaterial,
    request: &pb::AnnounceEpochRequest,
    old_primaries: &[String],
) -> bool {
    let epoch = request.epoch;
    for address in old_primaries
        .iter()
        .filter(|a| **a != request.primary_cluster_addr)
    {
        let Ok(mut c) = client(address, tls) else {
            continue;
        };
        let call = c.announce_epoch(request.clone());
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, call).await {
            Ok(Ok(reply)) if reply.get_ref().fenced => {
                info!(old_primary = %address, epoch, "the old primary stored the new epoch: it is fenced");
                return true;
            }
            Ok(Ok(_)) => {
                debug!(old_primary = %address, epoch, "the old primary is not fenced by the new epoch (yet)")
            }
            Ok(Err(status)) => {
                debug!(old_primary = %address, epoch, error = %status.message(), "announcing the new epoch failed")
            }
            Err(_) => debug!(old_primary = %address, epoch, "announcing the new epoch timed out"),
        }
    }
    false
}
