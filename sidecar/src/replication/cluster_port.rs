//! What the cluster port serves for the node's whole life: the replication service while this
//! node is the active node, a standby's answers otherwise.
//!
//! Every node binds and serves the cluster port from start-up, with the cluster's identity
//! ([`PortTls`](super::transport::PortTls)). Each call is routed by the node's role at the time
//! of the call:
//!
//! | node role                        | `RemoteResolve`            | every other call                 |
//! |----------------------------------|----------------------------|----------------------------------|
//! | active (holds the fence, ready)  | [`ReplicationService`]     | [`ReplicationService`]           |
//! | activating, standby, or a former | [`StandbyView`]            | UNAVAILABLE, `x-ferry-refusal:   |
//! | active node that lost the fence  |                            | standby` ([`StandbyView::refusal`]) |
//!
//! So a client that holds every address of a cluster (a secondary's
//! `known_primary_cluster_addrs`) drops the standbys and reaches the active node, whichever it
//! is now, with no one telling it.

use std::sync::{Arc, OnceLock};

use ferry_proto::forward::{ForwardedRequest, ForwardedResponse};
use ferry_proto::replication as pb;
use ferry_proto::replication::replication_server::Replication as ReplicationRpc;
use tonic::{Request, Response, Status};

use super::service::ReplicationService;
use super::standby::StandbyView;
use crate::node::{NodeApi, Role};

/// The cluster port's service; cheap to clone.
#[derive(Clone)]
pub struct ClusterPortService {
    node: NodeApi,
    standby: Arc<StandbyView>,
    active: Arc<OnceLock<ReplicationService>>,
}

impl ClusterPortService {
    pub fn new(node: NodeApi, standby: Arc<StandbyView>) -> Self {
        Self {
            node,
            standby,
            active: Arc::new(OnceLock::new()),
        }
    }

    /// Serves replication with `service` whenever this node is active, from now on.
    pub fn activate(&self, service: ReplicationService) {
        let _ = self.active.set(service);
    }

    /// The replication service, when this node is the active node now.
    fn serving(&self) -> Result<&ReplicationService, Status> {
        match self.active.get() {
            Some(service) if self.node.role() == Role::Active => Ok(service),
            _ => Err(self.standby.refusal()),
        }
    }
}

#[tonic::async_trait]
impl ReplicationRpc for ClusterPortService {
    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        self.serving()?.activate(request).await
    }

    async fn renew_client_certificate(
        &self,
        request: Request<pb::RenewClientCertificateRequest>,
    ) -> Result<Response<pb::RenewClientCertificateResponse>, Status> {
        self.serving()?.renew_client_certificate(request).await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.serving()?.heartbeat(request).await
    }

    async fn remote_resolve(
        &self,
        request: Request<pb::RemoteResolveRequest>,
    ) -> Result<Response<pb::RemoteResolveResponse>, Status> {
        match self.serving() {
            Ok(service) => service.remote_resolve(request).await,
            Err(_) => Ok(Response::new(self.standby.remote_resolve(&request).await?)),
        }
    }

    type StreamWalsStream = <ReplicationService as ReplicationRpc>::StreamWalsStream;

    async fn stream_wals(
        &self,
        request: Request<pb::StreamWalsRequest>,
    ) -> Result<Response<Self::StreamWalsStream>, Status> {
        self.serving()?.stream_wals(request).await
    }

    async fn merkle_pages(
        &self,
        request: Request<pb::MerklePagesRequest>,
    ) -> Result<Response<pb::MerklePagesResponse>, Status> {
        self.serving()?.merkle_pages(request).await
    }

    async fn merkle_subpages(
        &self,
        request: Request<pb::MerkleSubpagesRequest>,
    ) -> Result<Response<pb::MerkleSubpagesResponse>, Status> {
        self.serving()?.merkle_subpages(request).await
    }

    type MerkleSyncStream = <ReplicationService as ReplicationRpc>::MerkleSyncStream;

    async fn merkle_sync(
        &self,
        request: Request<pb::MerkleSyncRequest>,
    ) -> Result<Response<Self::MerkleSyncStream>, Status> {
        self.serving()?.merkle_sync(request).await
    }

    async fn announce_epoch(
        &self,
        request: Request<pb::AnnounceEpochRequest>,
    ) -> Result<Response<pb::AnnounceEpochResponse>, Status> {
        self.serving()?.announce_epoch(request).await
    }

    async fn node_heartbeat(
        &self,
        request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        self.serving()?.node_heartbeat(request).await
    }

    async fn forward(
        &self,
        request: Request<ForwardedRequest>,
    ) -> Result<Response<ForwardedResponse>, Status> {
        self.serving()?.forward(request).await
    }
}
