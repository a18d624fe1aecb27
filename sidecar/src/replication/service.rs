//! The replication service on the cluster port: what a primary serves its secondaries.
//!
//! Every call names the calling member. Apart from Activate (which checks the token and signs
//! the secondary's certificate request), the primary serves only a member whose activation was
//! completed and whose client certificate holds the key recorded for it, so revoking a member
//! cuts it off at its next call. What the primary sends (WAL streams, merkle snapshots) is in
//! `ship`. Domain
//! errors map to precise codes: a token or guard problem is `INVALID_ARGUMENT` or
//! `FAILED_PRECONDITION` with a message naming it; a role problem is `FAILED_PRECONDITION`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use ferry_proto::replication as pb;
use ferry_proto::replication::replication_server::Replication as ReplicationRpc;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::definition::{SECONDARIES_PREFIX, SecondaryRecord};
use super::node_cache::{HeartbeatRefused, StandbyNode};
use super::pki::{check_ca_cert, key_fingerprint_of_cert};
use super::ship::{ship, take_snapshot};
use super::snapshot::MerkleSnapshot;
use super::token::{TokenClaims, TokenError};
use super::{PeerStatus, Replication, unix_now, unix_now_ms};
use crate::merkle::{Geometry, MerkleIndex};
use crate::wal::reader::read_range;

/// Messages a WAL or sync stream buffers for a slow secondary before its task waits.
const STREAM_BUFFER: usize = 4;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct ReplicationService {
    replication: Arc<Replication>,
    /// Becomes true when the sidecar begins to shut down: the WAL and sync streams end then,
    /// so that the cluster port's graceful stop, which waits for open calls, stops at once.
    closing: watch::Receiver<bool>,
}

impl ReplicationService {
    pub fn new(replication: Arc<Replication>, closing: watch::Receiver<bool>) -> Self {
        Self {
            replication,
            closing,
        }
    }

    /// The response stream of a long call fed by `rx`, ending when shutdown begins.
    fn until_closing<T: Send + 'static>(
        &self,
        rx: mpsc::Receiver<Result<T, Status>>,
    ) -> ResponseStream<T> {
        let mut closing = self.closing.clone();
        let closed = async move {
            let _ = closing.wait_for(|c| *c).await;
        };
        Box::pin(futures::StreamExt::take_until(
            ReceiverStream::new(rx),
            closed,
        ))
    }

    fn core(&self) -> &crate::core::Core {
        &self.replication.core
    }

    /// This cluster must be a writable primary.
    fn active_primary(&self) -> Result<(), Status> {
        match self.replication.definition() {
            Some(d) if d.role.is_active_primary() => Ok(()),
            _ => Err(Status::failed_precondition(
                "this cluster is not an active performance primary",
            )),
        }
    }

    /// This cluster must be a primary, active or demoted: a demoted primary goes on shipping what
    /// it has, so that its secondaries can drain it before one of them is promoted.
    fn serves_wal(&self) -> Result<(), Status> {
        match self.replication.definition() {
            Some(d) if d.role.ships_wal() => Ok(()),
            _ => Err(Status::failed_precondition(
                "this cluster is not a performance primary",
            )),
        }
    }

    /// The calling member must be activated and present a client certificate for its own key.
    async fn authenticate<T>(
        &self,
        request: &Request<T>,
        secondary_id: &str,
    ) -> Result<SecondaryRecord, Status> {
        let record = load_secondary(&self.replication, secondary_id)
            .await?
            .filter(|r| r.activated_at.is_some())
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "secondary {secondary_id:?} is not activated with this replication set (revoked?)"
                ))
            })?;
        check_certificate(request, &record)?;
        Ok(record)
    }

    /// A caller that knows a higher epoch than ours, and relays its proof, fences this primary.
    /// An unproven claim is refused and fences nothing.
    async fn check_epoch(
        &self,
        epoch: u64,
        proof: Option<&pb::EpochProof>,
        from: &str,
    ) -> Result<(), Status> {
        let own = self.core().stream().epoch;
        if epoch <= own {
            return Ok(());
        }
        // A secondary relays its primary's proof; a member claiming to be the primary itself
        // announces, it does not heartbeat.
        let proven = match proof {
            Some(p) if p.member_id == from => {
                Err("a heartbeat relays the caller's primary's proof, not its own".to_owned())
            }
            proof => self.replication.proven_epoch(proof, epoch).await,
        };
        match proven {
            Ok(proven) => {
                if let Err(e) = self.replication.fence_by_epoch(proven, from, None).await {
                    warn!(error = %e, epoch = proven, from, "failed to store a newer epoch; replicated writes stay refused");
                }
                Err(Status::failed_precondition(format!(
                    "this cluster's epoch {own} is older than {proven}: it no longer acts as primary"
                )))
            }
            Err(why) => {
                warn!(epoch, from, %why, "refused a claim of a newer epoch");
                Err(Status::permission_denied(format!(
                    "epoch {epoch} is not proven: {why}"
                )))
            }
        }
    }

    fn own_address(&self) -> String {
        self.replication.config.cluster_addr.clone()
    }

    /// The cluster addresses secondaries are told: this node's first, then its live standbys'.
    fn cluster_addrs(&self) -> Vec<String> {
        self.replication
            .nodes
            .lock()
            .expect("nodes lock poisoned")
            .cluster_addrs(&self.own_address(), std::time::Instant::now())
    }
}

async fn load_secondary(
    replication: &Replication,
    id: &str,
) -> Result<Option<SecondaryRecord>, Status> {
    let raw = replication
        .gateway
        .get(&format!("{SECONDARIES_PREFIX}{id}"))
        .await
        .map_err(Status::from)?;
    raw.map(|raw| {
        serde_json::from_slice(&raw)
            .map_err(|e| Status::data_loss(format!("secondary record {id:?} is corrupt: {e}")))
    })
    .transpose()
}

/// The TLS layer checked the chain to a member CA and the validity; this checks that the
/// certificate holds the key recorded for the member the caller names.
pub(super) fn check_certificate<T>(
    request: &Request<T>,
    record: &SecondaryRecord,
) -> Result<(), Status> {
    let presented = request.peer_certs().and_then(|certs| {
        certs
            .first()
            .and_then(|c| key_fingerprint_of_cert(c.as_ref()).ok())
    });
    if record.key_fingerprint.is_empty()
        || presented.as_deref() != Some(record.key_fingerprint.as_str())
    {
        return Err(Status::permission_denied(format!(
            "the client certificate does not hold the key of member {:?}",
            record.id
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ReplicationRpc for ReplicationService {
    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let _guard = self.replication.control.lock().await;
        self.active_primary()?;
        let req = request.get_ref();
        let ca = self.replication.own_ca().await?;
        let claims = TokenClaims::verify_issued_by(&req.token, &ca, unix_now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = claims.secondary_id.clone();
        let mut record = match load_secondary(&self.replication, &id).await? {
            Some(r) if r.token_id == claims.token_id => r,
            _ => {
                return Err(Status::invalid_argument(
                    TokenError::Revoked(id).to_string(),
                ));
            }
        };
        if record.activated_at.is_some() {
            return Err(Status::invalid_argument(
                TokenError::Replayed(id).to_string(),
            ));
        }
        if record.token_hash != TokenClaims::hash(&req.token) {
            return Err(Status::invalid_argument(
                TokenError::Revoked(id).to_string(),
            ));
        }
        check_ca_cert(&req.ca_cert_pem)
            .map_err(|e| Status::invalid_argument(format!("the secondary's CA: {e}")))?;
        let (client_cert_pem, key_fingerprint) = ca
            .sign_client(
                &req.csr_pem,
                &id,
                self.replication.config.client_cert_ttl,
                unix_now(),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        record.activated_at = Some(unix_now());
        record.key_fingerprint = key_fingerprint;
        record.ca_cert_pem = req.ca_cert_pem.clone();
        let gateway = &self.replication.gateway;
        gateway
            .write(vec![gateway.op(
                format!("{SECONDARIES_PREFIX}{id}"),
                Some(serde_json::to_vec(&record).expect("record serialises")),
            )])
            .await?;
        let member_cas_pem = self.replication.stored_member_cas(&ca.key.cert_pem).await?;
        let bundle = member_cas_pem.clone();
        self.replication
            .store_definition_locked(|d| d.member_cas_pem = bundle)
            .await?;
        info!(secondary_id = %id, "activated a performance secondary");
        Ok(Response::new(pb::ActivateResponse {
            cluster_id: claims.cluster_id,
            epoch: self.core().stream().epoch,
            cluster_addrs: self.cluster_addrs(),
            client_cert_pem,
            member_cas_pem,
        }))
    }

    async fn renew_client_certificate(
        &self,
        request: Request<pb::RenewClientCertificateRequest>,
    ) -> Result<Response<pb::RenewClientCertificateResponse>, Status> {
        let req = request.get_ref();
        let record = self.authenticate(&request, &req.secondary_id).await?;
        self.active_primary()?;
        let ca = self.replication.own_ca().await?;
        let (client_cert_pem, key_fingerprint) = ca
            .sign_client(
                &req.csr_pem,
                &record.id,
                self.replication.config.client_cert_ttl,
                unix_now(),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if key_fingerprint != record.key_fingerprint {
            return Err(Status::permission_denied(format!(
                "the certificate signing request is not for the key of member {:?}",
                record.id
            )));
        }
        debug!(secondary_id = %record.id, "renewed a member's client certificate");
        Ok(Response::new(pb::RenewClientCertificateResponse {
            client_cert_pem,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = request.get_ref();
        self.authenticate(&request, &req.secondary_id).await?;
        self.check_epoch(req.epoch, req.epoch_proof.as_ref(), &req.secondary_id)
            .await?;
        self.serves_wal()?;
        let now = unix_now_ms();
        let previous = self
            .replication
            .peers
            .lock()
            .expect("peers lock poisoned")
            .insert(
                req.secondary_id.clone(),
                PeerStatus {
                    cluster_address: req.cluster_addr.clone(),
                    last_heartbeat: Some(std::time::SystemTime::now()),
                    clock_skew_ms: clock_skew_ms(req.sent_at_ms, now),
                    last_remote_wal: req.last_remote_wal,
                },
            );
        if previous.is_none_or(|p| p.cluster_address != req.cluster_addr) {
            // A restarted primary asks its secondaries whether a newer primary exists.
            self.replication
                .remember_secondary_addr(&req.secondary_id, &req.cluster_addr)
                .await;
        }
        let definition = self
            .replication
            .definition()
            .unwrap_or_else(|| unreachable!("a primary has a definition"));
        // As last applied, kept in memory: no etcd read per heartbeat.
        let applied = *self.replication.watch_applied().borrow();
        Ok(Response::new(pb::HeartbeatResponse {
            cluster_addrs: self.cluster_addrs(),
            epoch: self.core().stream().epoch,
            last_wal: self.core().wal().last,
            active: definition.role.is_active_primary(),
            cluster_id: definition.cluster_id,
            applied_stream_id: applied.map_or_else(Vec::new, |a| a.stream_id.0.to_vec()),
            applied_index: applied.map_or(0, |a| a.index),
            member_cas_pem: definition.member_cas_pem,
            epoch_proof: self.replication.epoch_proof(),
        }))
    }

    async fn remote_resolve(
        &self,
        request: Request<pb::RemoteResolveRequest>,
    ) -> Result<Response<pb::RemoteResolveResponse>, Status> {
        self.authenticate(&request, &request.get_ref().secondary_id)
            .await?;
        // As in Vault: the address the primary was enabled with, else the active node's.
        let reply = match self.replication.definition() {
            Some(d) if d.role.is_active_primary() && !d.primary_cluster_addr.is_empty() => {
                pb::RemoteResolveResponse {
                    address: d.primary_cluster_addr,
                    primary_ca_cert_pem: String::new(),
                }
            }
            Some(d) if d.role.is_active_primary() => pb::RemoteResolveResponse {
                address: self.own_address(),
                primary_ca_cert_pem: String::new(),
            },
            Some(d) if d.follows_primary() => {
                let connected = self.replication.follower_status().connected_to.clone();
                pb::RemoteResolveResponse {
                    address: if connected.is_empty() {
                        d.primary_cluster_addr.clone()
                    } else {
                        connected
                    },
                    primary_ca_cert_pem: d.primary_ca_cert_pem,
                }
            }
            _ => {
                return Err(Status::not_found(
                    "this cluster neither is nor follows a primary",
                ));
            }
        };
        Ok(Response::new(reply))
    }

    type StreamWalsStream = ResponseStream<pb::StreamWalsResponse>;

    async fn stream_wals(
        &self,
        request: Request<pb::StreamWalsRequest>,
    ) -> Result<Response<Self::StreamWalsStream>, Status> {
        let req = request.get_ref();
        self.authenticate(&request, &req.secondary_id).await?;
        // A newer epoch is proven in heartbeats, which come first; here it only stops the call.
        let own = self.core().stream().epoch;
        if req.epoch > own {
            return Err(Status::failed_precondition(format!(
                "the secondary knows epoch {}, newer than this cluster's {own}",
                req.epoch
            )));
        }
        self.serves_wal()?;
        let core = self.core();
        let stream = core.stream();
        if req.stream_id != stream.stream_id.0 {
            return Err(Status::failed_precondition(
                "no matching WALs available: the secondary followed another WAL stream",
            ));
        }
        let after = req.after_index;
        let position = core.wal();
        let not_retained = || {
            Status::failed_precondition(format!(
                "no matching WALs available: index {after} is not retained (this primary holds {} to {})",
                position.first, position.last
            ))
        };
        let root = if after == 0 {
            MerkleIndex::new(core.index().geometry()).root()
        } else if after < position.first || after > position.last {
            return Err(not_retained());
        } else {
            // The GC may trim between the check and the read: a gap means "not retained".
            let entries = read_range(&core.keyspace, &mut core.kv(), after, 1, usize::MAX)
                .await
                .map_err(|_| not_retained())?;
            match entries.into_iter().next() {
                Some(entry) if entry.index == after => entry.merkle_root,
                _ => return Err(not_retained()),
            }
        };
        if req.guard != root {
            return Err(Status::failed_precondition(format!(
                "non-matching guard at index {after}"
            )));
        }
        debug!(secondary_id = %req.secondary_id, after, "streaming WALs");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        crate::tasks::spawn_reported(
            "ship-wals",
            ship(self.replication.clone(), stream.stream_id, after, tx),
        );
        Ok(Response::new(self.until_closing(rx)))
    }

    async fn merkle_pages(
        &self,
        request: Request<pb::MerklePagesRequest>,
    ) -> Result<Response<pb::MerklePagesResponse>, Status> {
        let req = request.get_ref();
        self.authenticate(&request, &req.secondary_id).await?;
        self.serves_wal()?;
        let core = self.core();
        let theirs = Geometry::new(req.pages, req.subpages_per_page)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let generation = self
            .replication
            .snapshots
            .lock()
            .expect("snapshots lock poisoned")
            .next_generation();
        let ours = core.index().geometry();
        if ours != theirs {
            return Err(Status::failed_precondition(format!(
                "merkle geometry differs: the primary has {} pages × {} subpages, the secondary {} × {}",
                ours.pages, ours.subpages_per_page, theirs.pages, theirs.subpages_per_page
            )));
        }
        let snapshot = take_snapshot(core, generation).await?;
        let stream = core.stream();
        let response = pb::MerklePagesResponse {
            generation,
            stream_id: stream.stream_id.0.to_vec(),
            wal_index: snapshot.wal_index,
            root: snapshot.root.to_vec(),
            page_hashes: snapshot.page_hashes.clone(),
            epoch: stream.epoch,
        };
        self.replication
            .snapshots
            .lock()
            .expect("snapshots lock poisoned")
            .insert(snapshot);
        info!(secondary_id = %req.secondary_id, generation, wal_index = response.wal_index, "serving conflicting pages");
        Ok(Response::new(response))
    }

    async fn merkle_subpages(
        &self,
        request: Request<pb::MerkleSubpagesRequest>,
    ) -> Result<Response<pb::MerkleSubpagesResponse>, Status> {
        let req = request.get_ref();
        self.authenticate(&request, &req.secondary_id).await?;
        let snapshot = self.snapshot(req.generation)?;
        let subpage_hashes = snapshot
            .subpage_hashes_of(&req.pages)
            .map_err(Status::invalid_argument)?;
        info!(secondary_id = %req.secondary_id, pages = req.pages.len(), "serving subpage hashes");
        Ok(Response::new(pb::MerkleSubpagesResponse { subpage_hashes }))
    }

    type MerkleSyncStream = ResponseStream<pb::MerkleSyncResponse>;

    async fn merkle_sync(
        &self,
        request: Request<pb::MerkleSyncRequest>,
    ) -> Result<Response<Self::MerkleSyncStream>, Status> {
        let req = request.get_ref();
        self.authenticate(&request, &req.secondary_id).await?;
        self.serves_wal()?;
        let snapshot = self.snapshot(req.generation)?;
        let subpages = snapshot.geometry.subpages();
        if let Some(bad) = req.subpages.iter().find(|&&s| s >= subpages) {
            return Err(Status::invalid_argument(format!(
                "subpage {bad} is out of range (the index has {subpages})"
            )));
        }
        let wanted: HashSet<u32> = req.subpages.iter().copied().collect();
        let total = snapshot.keys_in(&req.subpages);
        info!(secondary_id = %req.secondary_id, subpages = wanted.len(), keys = total, "serving merkle-sync");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        crate::tasks::spawn_reported(
            "serve-merkle-sync",
            super::sync_serve::serve_sync(self.replication.clone(), snapshot, wanted, total, tx),
        );
        Ok(Response::new(self.until_closing(rx)))
    }

    async fn announce_epoch(
        &self,
        request: Request<pb::AnnounceEpochRequest>,
    ) -> Result<Response<pb::AnnounceEpochResponse>, Status> {
        let req = request.get_ref();
        self.authenticate(&request, &req.secondary_id).await?;
        // Only the new primary itself announces its epoch, with its proof.
        let proven = match &req.epoch_proof {
            Some(p) if p.member_id != req.secondary_id => Err(format!(
                "the proof is {:?}'s, not the caller's",
                p.member_id
            )),
            proof => self.replication.proven_epoch(proof.as_ref(), req.epoch).await,
        }
        .map_err(|why| {
            warn!(from = %req.secondary_id, epoch = req.epoch, %why, "refused an epoch announcement");
            Status::permission_denied(format!("epoch {} is not proven: {why}", req.epoch))
        })?;
        let shipped_to = super::epoch::shipped_to(
            &self.core().stream(),
            &req.applied_stream_id,
            req.applied_index,
        );
        let fenced = self
            .replication
            .fence_by_epoch(proven, &req.primary_cluster_addr, shipped_to)
            .await
            .map_err(|e| {
                Status::unavailable(format!("failed to store epoch {}: {e}", req.epoch))
            })?;
        Ok(Response::new(pb::AnnounceEpochResponse { fenced }))
    }

    async fn node_heartbeat(
        &self,
        request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        let definition = self.replication.definition().ok_or_else(|| {
            Status::failed_precondition(
                "this cluster has no replication role: nothing to heartbeat",
            )
        })?;
        // Only this cluster's own nodes hold its identity key (sealed in its etcd).
        let own = definition
            .identity
            .key_fingerprint()
            .map_err(|e| Status::internal(format!("this cluster's identity is unusable: {e}")))?;
        let presented = request.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|c| key_fingerprint_of_cert(c.as_ref()).ok())
        });
        if presented.as_deref() != Some(own.as_str()) {
            return Err(Status::permission_denied(
                "the client certificate does not hold this cluster's own key: only the cluster's nodes heartbeat its active node",
            ));
        }
        let req = request.into_inner();
        let node = StandbyNode {
            node_id: req.node_id,
            cluster_addr: req.cluster_addr,
            api_addr: req.api_addr,
            last_heartbeat: std::time::SystemTime::now(),
            seen: std::time::Instant::now(),
        };
        let (id, address) = (node.node_id.clone(), node.cluster_addr.clone());
        let known = {
            let mut nodes = self.replication.nodes.lock().expect("nodes lock poisoned");
            let known = nodes
                .live(node.seen)
                .iter()
                .any(|n| n.node_id == node.node_id && n.cluster_addr == node.cluster_addr);
            nodes.heartbeat(node).map_err(|e| match e {
                HeartbeatRefused::Full => Status::resource_exhausted(e.to_string()),
                e => Status::invalid_argument(e.to_string()),
            })?;
            known
        };
        if !known {
            info!(node_id = %id, cluster_addr = %address, "a performance standby heartbeats this active node");
        }
        Ok(Response::new(pb::NodeHeartbeatResponse {
            active_node_id: self.replication.config.node_id.clone(),
            cluster_addrs: self.cluster_addrs(),
        }))
    }

    async fn forward(
        &self,
        request: Request<ferry_proto::forward::ForwardedRequest>,
    ) -> Result<Response<ferry_proto::forward::ForwardedResponse>, Status> {
        let id = request.get_ref().secondary_id.clone();
        self.authenticate(&request, &id).await?;
        self.active_primary()?;
        debug!(secondary_id = %id, method = %request.get_ref().method, path = %request.get_ref().path_and_query, "executing a forwarded request");
        super::forward::execute(&self.replication, request.into_inner()).await
    }
}

impl ReplicationService {
    fn snapshot(&self, generation: u64) -> Result<Arc<MerkleSnapshot>, Status> {
        self.replication
            .snapshots
            .lock()
            .expect("snapshots lock poisoned")
            .get(generation)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "merkle snapshot {generation} expired; start the diff again"
                ))
            })
    }
}

/// How far ahead of this node's clock a peer's is, in milliseconds, from the send time it
/// reports. Saturated: that number is whatever the peer sent, and a plain `as i64` subtraction
/// overflows (a panic in debug builds) for one past 2^63.
fn clock_skew_ms(sent_at_ms: u64, now_ms: u64) -> i64 {
    let skew = i128::from(sent_at_ms) - i128::from(now_ms);
    i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever send time a secondary's heartbeat reports, the skew is its distance from
        /// now, saturated at the ends of `i64`.
        #[test]
        fn clock_skew_is_the_saturated_difference(
            sent_at_ms in prop_oneof![any::<u64>(), (1u64 << 63) - 2..=u64::MAX],
            now_ms in prop_oneof![0u64..1 << 45, any::<u64>()],
        ) {
            let skew = clock_skew_ms(sent_at_ms, now_ms);
            let exact = i128::from(sent_at_ms) - i128::from(now_ms);
            prop_assert_eq!(i128::from(skew), exact.clamp(i64::MIN.into(), i64::MAX.into()));
        }
    }
}
