//! Fencing by epoch: a primary that learns of a newer one stops for good.
//!
//! There is never more than one writable primary: each promotion raises the epoch, and a primary
//! that learns of a higher epoch refuses replicated writes from then on. It learns it from the
//! new primary's announcement (`AnnounceEpoch`), from a secondary that follows the new primary
//! and contacts it, or by asking: whenever this node (re)opens for writes as a primary, at
//! start-up and after retaking a write fence that had expired, it first asks the secondaries it
//! knows which epoch they know ([`Replication::check_superseded`]). That last path closes the
//! window in which a primary that stalled past its lease while a secondary was force-promoted
//! would otherwise wake, retake its free fence and accept writes at its old epoch until the new
//! primary's next announcement reached it.
//!
//! What it learns is stored first in `meta/superseded` ([`superseded`]), outside the write
//! fence, so it holds whatever the state of the fence; the fenced role follows in the cluster
//! definition once the fence is held.
//!
//! The secondaries' cluster addresses, which the check needs after a restart, are kept under
//! [`SECONDARY_ADDRS_PATH`] (local), written when a heartbeat brings a new one.
//!
//! Only a primary can raise the epoch: every claim of a newer epoch must come with an
//! [`EpochProof`](pb::EpochProof), a statement signed by the CA of the member that became primary
//! at that epoch ([`sign_epoch`]), checked against that member's CA certificate in its record
//! ([`Replication::proven_epoch`]). A primary makes its proof when it takes the role (enable,
//! promotion, start-up); secondaries relay their primary's proof in their heartbeats, so that a
//! former primary learns of the new one through any of them. A claim without a valid proof is
//! refused and fences nothing: no other member, however authenticated, can stop the primary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::replication as pb;
use tracing::{info, warn};

use super::Replication;
use super::definition::{ClusterDefinition, SECONDARIES_PREFIX, SecondaryRecord};
use super::follower::probe;
use super::pki::{PkiError, ReplicationCa, verify_by_ca_cert};
use super::superseded::{self, Superseded, fenced_definition};
use super::transport::TlsMaterial;
use crate::core::WriteMode;
use crate::error::StoreError;
use crate::wal::StreamState;

/// The secondaries' cluster addresses by member id, from their heartbeats (local).
pub const SECONDARY_ADDRS_PATH: &str = "core/replication/secondary-addrs";
/// Longest a (re)opening primary waits for its secondaries' answers; an unreachable secondary
/// cannot hold writes up for longer.
const PEER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most secondary addresses kept and asked.
const MAX_PEER_ADDRS: usize = 64;

/// A newer primary, as one of this cluster's peers answered.
struct NewerPrimary {
    epoch: u64,
    from: String,
    applied_stream_id: Vec<u8>,
    applied_index: u64,
}

/// What an epoch proof signs.
fn epoch_statement(cluster_id: &str, member: &str, epoch: u64) -> Vec<u8> {
    format!("ferry-epoch/v1\n{cluster_id}\n{member}\n{epoch}").into_bytes()
}

/// The proof that member `member` of replication set `cluster_id` is the primary of `epoch`,
/// signed with its own CA `ca`.
pub fn sign_epoch(
    ca: &ReplicationCa,
    cluster_id: &str,
    member: &str,
    epoch: u64,
) -> Result<pb::EpochProof, PkiError> {
    Ok(pb::EpochProof {
        member_id: member.to_owned(),
        epoch,
        signature: ca.sign(&epoch_statement(cluster_id, member, epoch))?,
    })
}

/// How far a newer primary applied this cluster's `own` stream before it was promoted, from
/// what it says it followed: known only when that was this stream.
pub fn shipped_to(own: &StreamState, applied_stream_id: &[u8], applied_index: u64) -> Option<u64> {
    (applied_stream_id == own.stream_id.0.as_slice()).then_some(applied_index)
}

/// The write mode a cluster defined by `definition` runs in.
pub fn write_mode_of(definition: Option<&ClusterDefinition>) -> WriteMode {
    match definition {
        None => WriteMode::Open,
        // A secondary without a primary's address follows nobody: closed.
        Some(d) if d.role.is_secondary() && !d.follows_primary() => WriteMode::Closed,
        Some(d) => d.role.write_mode(),
    }
}

impl Replication {
    /// Learns that a primary at `epoch` exists (`from` says who told). An active primary of an
    /// older epoch stops accepting replicated writes at once; the epoch is stored durably (and
    /// the fenced role with it when the write fence allows). Returns whether this cluster is
    /// now durably fenced at `epoch` or higher; an error when the record could not be stored,
    /// so that the teller tries again.
    pub async fn fence_by_epoch(
        self: &Arc<Self>,
        epoch: u64,
        from: &str,
        shipped_to: Option<u64>,
    ) -> Result<bool, StoreError> {
        let _guard = self.control.lock().await;
        self.fence_locked(epoch, from, shipped_to).await
    }

    /// [`Self::fence_by_epoch`], under the control lock.
    async fn fence_locked(
        self: &Arc<Self>,
        epoch: u64,
        from: &str,
        shipped_to: Option<u64>,
    ) -> Result<bool, StoreError> {
        let own = self.core.stream().epoch;
        let Some(definition) = self.definition() else {
            return Ok(false);
        };
        if epoch <= own {
            return Ok(false);
        }
        let fenced = fenced_definition(&definition, own, epoch);
        if fenced.is_some() {
            warn!(
                own_epoch = own,
                epoch, from, "a newer primary exists: refusing replicated writes from now on"
            );
            self.core.set_write_mode(WriteMode::Closed);
        }
        let stored = superseded::raise(&self.core, Superseded { epoch, shipped_to }).await?;
        if let Some(fenced) = fenced {
            match self.persist(Some(fenced)).await {
                Ok(()) => info!(epoch = stored.epoch, "stored the fenced role"),
                // The epoch is stored: start-up and a fence retake store the role from it.
                Err(e) => warn!(
                    error = %e,
                    epoch = stored.epoch,
                    "stored the newer epoch; the fenced role is stored once this node holds its write fence"
                ),
            }
        }
        Ok(true)
    }

    /// The epoch `proof` proves, when it proves at least `epoch`: signed by the CA recorded for
    /// its member. Otherwise why not.
    pub(crate) async fn proven_epoch(
        &self,
        proof: Option<&pb::EpochProof>,
        epoch: u64,
    ) -> Result<u64, String> {
        self.proven_primary(proof, epoch)
            .await
            .map(|(epoch, _)| epoch)
    }

    /// The epoch `proof` proves, when it proves at least `epoch`, with the record of the member
    /// it names as that epoch's primary. Otherwise why not.
    pub(crate) async fn proven_primary(
        &self,
        proof: Option<&pb::EpochProof>,
        epoch: u64,
    ) -> Result<(u64, SecondaryRecord), String> {
        let proof = proof.ok_or("the claim carries no proof of its epoch")?;
        if proof.epoch < epoch {
            return Err(format!(
                "the proof is for epoch {}, not {epoch}",
                proof.epoch
            ));
        }
        let definition = self.definition().ok_or("replication is not enabled here")?;
        let member = &proof.member_id;
        if super::definition::validate_secondary_id(member).is_err() {
            return Err("the proof names no valid member".into());
        }
        let record: SecondaryRecord = self
            .gateway
            .get(&format!("{SECONDARIES_PREFIX}{member}"))
            .await
            .map_err(|e| e.to_string())?
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or_else(|| format!("the proof names {member:?}, who is no member"))?;
        let statement = epoch_statement(&definition.cluster_id, member, proof.epoch);
        if !verify_by_ca_cert(&record.ca_cert_pem, &statement, &proof.signature) {
            return Err(format!(
                "the proof of epoch {} is not signed by member {member:?}",
                proof.epoch
            ));
        }
        Ok((proof.epoch, record))
    }

    /// The newest epoch proof this cluster holds: its own as a primary, its primary's as a
    /// secondary.
    pub(crate) fn epoch_proof(&self) -> Option<pb::EpochProof> {
        self.epoch_proof
            .lock()
            .expect("proof lock poisoned")
            .clone()
    }

    /// Keeps `proof` when it is for a newer epoch than the one held.
    pub(crate) fn keep_epoch_proof(&self, proof: pb::EpochProof) {
        let mut held = self.epoch_proof.lock().expect("proof lock poisoned");
        if held.as_ref().is_none_or(|h| h.epoch < proof.epoch) {
            *held = Some(proof);
        }
    }

    /// As a primary (active or demoted), signs the proof of this cluster's current epoch.
    pub(crate) async fn sign_own_epoch(&self) -> Result<(), StoreError> {
        let Some(definition) = self.definition() else {
            return Ok(());
        };
        if !definition.role.ships_wal() {
            return Ok(());
        }
        let ca = self.own_ca().await?;
        let epoch = self.core.stream().epoch;
        let proof = sign_epoch(&ca, &definition.cluster_id, &definition.secondary_id, epoch)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.keep_epoch_proof(proof);
        Ok(())
    }

    /// Refuses replicated writes until [`Self::check_superseded`] has run, when this cluster is
    /// an active primary.
    pub fn close_until_checked(&self) {
        let definition = self.definition();
        if definition.is_some() && write_mode_of(definition.as_ref()) == WriteMode::Open {
            self.core.set_write_mode(WriteMode::Closed);
        }
    }

    /// Before this node (re)opens for writes: adopts a newer epoch stored in `meta/superseded`,
    /// and, as an active primary, asks the secondaries it knows whether a newer primary exists.
    /// Replicated writes are refused until the check is done.
    pub async fn check_superseded(self: &Arc<Self>) -> Result<(), StoreError> {
        let _guard = self.control.lock().await;
        let Some(definition) = self.definition() else {
            return Ok(());
        };
        let mode = write_mode_of(Some(&definition));
        if mode != WriteMode::Open {
            return Ok(());
        }
        self.core.set_write_mode(WriteMode::Closed);
        let result = async {
            if let Some(stored) = superseded::load(&self.core).await? {
                self.fence_locked(stored.epoch, "meta/superseded", stored.shipped_to)
                    .await?;
            }
            if write_mode_of(self.definition().as_ref()) != WriteMode::Open {
                return Ok(());
            }
            if let Some(newer) = self.newest_peer_epoch(&definition).await {
                let shipped_to = shipped_to(
                    &self.core.stream(),
                    &newer.applied_stream_id,
                    newer.applied_index,
                );
                self.fence_locked(newer.epoch, &newer.from, shipped_to)
                    .await?;
            }
            Ok(())
        }
        .await;
        self.core
            .set_write_mode(write_mode_of(self.definition().as_ref()));
        result
    }

    /// Asks every known secondary (concurrently, for at most [`PEER_CHECK_TIMEOUT`]) for its
    /// heartbeat answer; returns the answer of the active primary among them with the highest
    /// epoch, if that is higher than this cluster's.
    async fn newest_peer_epoch(&self, definition: &ClusterDefinition) -> Option<NewerPrimary> {
        let own = self.core.stream().epoch;
        let mut addrs: Vec<String> = self
            .peers
            .lock()
            .expect("peers lock poisoned")
            .values()
            .map(|p| p.cluster_address.clone())
            .collect();
        addrs.extend(self.stored_secondary_addrs().await.into_values());
        addrs.retain(|a| !a.is_empty() && *a != self.config.cluster_addr);
        addrs.sort();
        addrs.dedup();
        addrs.truncate(MAX_PEER_ADDRS);
        if addrs.is_empty() {
            return None;
        }
        let tls = TlsMaterial::to_members(definition);
        let asks = addrs.iter().map(|address| {
            let tls = &tls;
            async move { (address, probe(address, tls, &definition.secondary_id).await) }
        });
        let answers = tokio::time::timeout(PEER_CHECK_TIMEOUT, futures::future::join_all(asks))
            .await
            .unwrap_or_else(|_| {
                warn!(
                    peers = addrs.len(),
                    "not every secondary answered within {PEER_CHECK_TIMEOUT:?}; opening without them"
                );
                Vec::new()
            });
        let mut newest: Option<NewerPrimary> = None;
        for (address, answer) in answers {
            let Ok(reply) = answer else { continue };
            if !reply.active || reply.epoch <= own {
                continue;
            }
            match self
                .proven_epoch(reply.epoch_proof.as_ref(), reply.epoch)
                .await
            {
                Ok(epoch) if newest.as_ref().is_none_or(|n| n.epoch < epoch) => {
                    newest = Some(NewerPrimary {
                        epoch,
                        from: address.clone(),
                        applied_stream_id: reply.applied_stream_id,
                        applied_index: reply.applied_index,
                    });
                }
                Ok(_) => {}
                Err(why) => {
                    warn!(peer = %address, epoch = reply.epoch, %why, "ignoring an unproven newer epoch");
                }
            }
        }
        newest
    }

    async fn stored_secondary_addrs(&self) -> BTreeMap<String, String> {
        match self.gateway.get(SECONDARY_ADDRS_PATH).await {
            Ok(Some(raw)) => serde_json::from_slice(&raw).unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    /// Keeps `address` as secondary `id`'s cluster address, when it is new.
    pub(crate) async fn remember_secondary_addr(&self, id: &str, address: &str) {
        if address.is_empty() {
            return;
        }
        let mut stored = self.stored_secondary_addrs().await;
        if stored.get(id).map(String::as_str) == Some(address)
            || (stored.len() >= MAX_PEER_ADDRS && !stored.contains_key(id))
        {
            return;
        }
        stored.insert(id.to_owned(), address.to_owned());
        let value = serde_json::to_vec(&stored).expect("addresses serialise");
        let g = &self.gateway;
        if let Err(e) = g
            .write(vec![g.op(SECONDARY_ADDRS_PATH.into(), Some(value))])
            .await
        {
            warn!(error = %e, secondary_id = id, "failed to store a secondary's cluster address");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_modes_follow_the_role() {
        let primary = ClusterDefinition::active_primary_for_tests();
        assert_eq!(write_mode_of(None), WriteMode::Open);
        assert_eq!(write_mode_of(Some(&primary)), WriteMode::Open);
        let fenced = fenced_definition(&primary, 1, 2).unwrap();
        assert_eq!(write_mode_of(Some(&fenced)), WriteMode::Closed);
        let following = ClusterDefinition {
            primary_cluster_addr: "127.0.0.1:1".into(),
            role: crate::replication::role::Role::Secondary { keep_aside: None },
            ..fenced
        };
        assert_eq!(write_mode_of(Some(&following)), WriteMode::Secondary);
    }

    #[test]
    fn only_this_streams_applied_index_says_what_was_shipped() {
        use crate::wal::record::StreamId;
        let own = StreamState {
            stream_id: StreamId([7; 16]),
            epoch: 1,
        };
        assert_eq!(shipped_to(&own, &[7; 16], 42), Some(42));
        assert_eq!(shipped_to(&own, &[8; 16], 42), None);
        assert_eq!(shipped_to(&own, &[], 0), None);
    }
}
