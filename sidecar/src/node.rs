//! The node's role inside its cluster, and the storage API across the switch from performance
//! standby to active node.
//!
//! Every ferry-vault + ferry-sidecar pair is a node; all nodes of a cluster share its etcd. The
//! write fence ([`fence`](crate::fence)) elects the **active** node: the one that holds it is
//! the only writer of the keyspace; every other node is a **performance standby**.
//!
//! ```text
//!   start ──▶ standby ──(fence free: take it)──▶ activating ──(recovered)──▶ active
//!               │  reads from etcd                 reads from etcd             reads, writes,
//!               │  writes: NOT ACTIVE, naming      writes: UNAVAILABLE         replication
//!               │  the active node                 (a moment)
//!               └── tries to take the fence every 500 ms
//!   active ──(lease lost, another node took the fence)──▶ standby (reads; writes refused,
//!                                                          naming the new active node)
//! ```
//!
//! [`Role`] is derived, never stored: from whether the fence is held and whether the node has
//! finished activating ([`Role::of`], pure). Start-up (`run`) goes through these phases:
//!
//! 1. connect to etcd, build the fence (not held), and serve the storage API at once with a
//!    [`NodeApi`]: before activation it answers `Get`/`List` straight from etcd through the
//!    keyspace (exactly as the gateway does: [`gateway::read`], [`gateway::list`]), refuses
//!    writes with `FAILED_PRECONDITION` "not active: ..." and the active node's id and
//!    ferry-vault address in the metadata ([`ferry_proto::ACTIVE_API_ADDR_METADATA`]), and
//!    reports its role in `Status` and `Leader`;
//! 2. try to take the fence every [`STANDBY_POLL`] until it gets it (a lone node gets it at the
//!    first try; a standby when the active node's lease has expired or it released the fence);
//! 3. recover the WAL and merkle index as start-up always did (the node is *activating*:
//!    writes get `UNAVAILABLE`, reads go on), start the committer, flusher, WAL GC and
//!    replication (only the active node runs replication);
//! 4. [`NodeApi::activate`] hands the storage API over to the full gateway and forwarder: the
//!    same server and socket go on serving, so ferry-vault never sees the socket go away.
//!
//! A node that was active and lost its fence to another node does not go back through these
//! phases: its gateway refuses writes ([`Fence::refusal`]) naming the new active node, its
//! role reads as standby, and `reopen` keeps trying to retake the fence.
//!
//! The new active node's fence is a new generation (a new mod revision of the fence key), so
//! nothing the previous holder sent can commit after it, as before.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::Client;
use ferry_proto::forward::consistency_server::Consistency;
use ferry_proto::forward::forwarding_server::Forwarding;
use ferry_proto::forward::{
    ForwardedRequest, ForwardedResponse, ReplicatedState, WaitForStateRequest, WaitForStateResponse,
};
use ferry_proto::storage::admin_server::Admin;
use ferry_proto::storage::storage_server::Storage;
use ferry_proto::storage::{
    BatchRequest, CheckMerkleRequest, CheckMerkleResponse, DeleteRequest, GetRequest, GetResponse,
    LeaderRequest, LeaderResponse, ListRequest, ListResponse, NodeInfo, NodesRequest,
    NodesResponse, PutRequest, ReadWalRequest, ReadWalResponse, ReindexRequest, ReindexResponse,
    StatusRequest, StatusResponse, WriteResponse,
};
use tonic::{Request, Response, Status};

use crate::error::StoreError;
use crate::fence::{Fence, FenceHolder};
use crate::gateway::{self, Gateway};
use crate::keyspace::Keyspace;
use crate::replication::applied::Applied;
use crate::replication::forward::{Forwarder, MAX_WAIT};
use crate::wal::StreamState;
use crate::wal::record::StreamId;

/// How often a standby tries to take the fence.
pub const STANDBY_POLL: Duration = Duration::from_millis(500);
/// How often a standby re-reads etcd while it waits for a replicated state.
const STATE_POLL: Duration = Duration::from_millis(50);

/// A node's role in its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Another node holds the fence (or nobody does yet): reads only.
    Standby,
    /// This node holds the fence and is recovering: reads; writes wait.
    Activating,
    /// This node holds the fence and serves writes.
    Active,
}

impl Role {
    /// The role of a node that holds the fence or not, and has finished activating or not.
    pub fn of(fence_held: bool, activated: bool) -> Self {
        match (fence_held, activated) {
            (false, _) => Role::Standby,
            (true, false) => Role::Activating,
            (true, true) => Role::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standby => "standby",
            Role::Activating => "activating",
            Role::Active => "active",
        }
    }
}

/// What an active node serves on the storage socket beyond reads.
struct Activated {
    gateway: Gateway,
    forwarder: Forwarder,
}

/// The storage socket's services for the node's whole life: reads from the start; writes,
/// admin calls and forwarding once [`NodeApi::activate`] hands them to the gateway.
#[derive(Clone)]
pub struct NodeApi(Arc<Inner>);

struct Inner {
    client: Client,
    keyspace: Keyspace,
    max_key_bytes: usize,
    fence: Arc<Fence>,
    me: FenceHolder,
    activated: OnceLock<Activated>,
    active_since: AtomicI64,
}

impl NodeApi {
    pub fn new(
        client: Client,
        keyspace: Keyspace,
        max_key_bytes: usize,
        fence: Arc<Fence>,
        me: FenceHolder,
    ) -> Self {
        Self(Arc::new(Inner {
            client,
            keyspace,
            max_key_bytes,
            fence,
            me,
            activated: OnceLock::new(),
            active_since: AtomicI64::new(0),
        }))
    }

    /// Hands writes, admin calls and forwarding to the recovered gateway: the node is active.
    pub fn activate(&self, gateway: Gateway, forwarder: Forwarder) {
        let _ = self.0.activated.set(Activated { gateway, forwarder });
        self.0
            .active_since
            .store(crate::replication::unix_now() as i64, Ordering::SeqCst);
    }

    pub fn role(&self) -> Role {
        Role::of(self.0.fence.is_held(), self.0.activated.get().is_some())
    }

    /// Whether this node has ever finished activating (it may have lost the fence since).
    pub fn is_activated(&self) -> bool {
        self.0.activated.get().is_some()
    }

    /// This node, as the write fence names it.
    pub fn me(&self) -> &FenceHolder {
        &self.0.me
    }

    /// The node that holds the fence when this one does not, as last seen.
    pub fn active_holder(&self) -> Option<FenceHolder> {
        self.0.fence.active_holder()
    }

    /// The value stored at `key`, read from etcd (what a standby sees).
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut kv = self.0.client.kv_client();
        gateway::read(&mut kv, &self.0.keyspace, self.0.max_key_bytes, key).await
    }

    /// Why a write (or an admin call of the active node) is refused by a node that has not
    /// activated: it is recovering after taking the fence, or it is a standby.
    fn refusal(&self) -> Status {
        if self.0.fence.is_held() {
            StoreError::Unavailable(format!(
                "this node ({}) took the write fence and is recovering; it serves writes in a moment",
                self.0.me.node_id
            ))
            .into()
        } else {
            self.0.fence.refusal().into()
        }
    }

    /// The active node, as this node knows it.
    fn active_node(&self) -> Option<NodeInfo> {
        let holder = match self.role() {
            Role::Standby => self.0.fence.active_holder()?,
            Role::Activating | Role::Active => self.0.me.clone(),
        };
        Some(node_info(holder))
    }

    pub fn leader(&self) -> LeaderResponse {
        let role = self.role();
        LeaderResponse {
            role: role.as_str().into(),
            node: Some(node_info(self.0.me.clone())),
            active: self.active_node(),
            active_since: if role == Role::Active {
                self.0.active_since.load(Ordering::SeqCst)
            } else {
                0
            },
        }
    }

    /// Whether this cluster's storage in etcd has reached `state` (what a standby knows without
    /// a merkle index or WAL position of its own): the cluster's own WAL stream when the state is
    /// of it, else the primary's stream as far as this secondary applied it.
    async fn state_in_etcd(&self, state: &ReplicatedState) -> Result<bool, StoreError> {
        let stream_id =
            StreamId(state.stream_id.clone().try_into().map_err(|_| {
                StoreError::InvalidArgument("state.stream_id must be 16 bytes".into())
            })?);
        let mut kv = self.0.client.kv_client();
        let Some(found) = crate::etcd::get(&mut kv, &self.0.keyspace.stream()).await? else {
            return Ok(false);
        };
        let stream = StreamState::decode(found.value())
            .map_err(|e| StoreError::Corrupt(format!("failed to read the stream record: {e}")))?;
        if stream.stream_id == stream_id {
            let wal = crate::recovery::wal_position(&mut kv, &self.0.keyspace).await?;
            return Ok(wal.last >= state.index);
        }
        // On a secondary, the state of a write forwarded to the primary is the primary's: it is
        // here once the applied record (written with what it covers) reaches it.
        if let Some(found) = crate::etcd::get(&mut kv, &self.0.keyspace.applied()).await?
            && let Ok(applied) = Applied::decode(found.value())
        {
            if applied.stream_id == stream_id {
                return Ok(applied.index >= state.index);
            }
            return Ok(applied.epoch > state.epoch);
        }
        Ok(stream.epoch > state.epoch)
    }
}

pub fn node_info(holder: FenceHolder) -> NodeInfo {
    NodeInfo {
        node_id: holder.node_id,
        api_addr: holder.api_addr,
        cluster_addr: holder.cluster_addr,
    }
}

#[tonic::async_trait]
impl Storage for NodeApi {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = req.into_inner().key;
        let mut kv = self.0.client.kv_client();
        let value = gateway::read(&mut kv, &self.0.keyspace, self.0.max_key_bytes, &key).await?;
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let prefix = req.into_inner().prefix;
        let mut kv = self.0.client.kv_client();
        let keys = gateway::list(&mut kv, &self.0.keyspace, self.0.max_key_bytes, &prefix).await?;
        Ok(Response::new(ListResponse { keys }))
    }

    // A node that was active keeps its gateway: its commit path refuses writes by itself
    // while the fence is lost, naming the node that holds it now.

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<WriteResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Storage::put(&a.gateway, req).await,
            None => Err(self.refusal()),
        }
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<WriteResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Storage::delete(&a.gateway, req).await,
            None => Err(self.refusal()),
        }
    }

    async fn batch(&self, req: Request<BatchRequest>) -> Result<Response<WriteResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Storage::batch(&a.gateway, req).await,
            None => Err(self.refusal()),
        }
    }
}

#[tonic::async_trait]
impl Admin for NodeApi {
    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let mut status = match self.0.activated.get() {
            Some(a) => Admin::status(&a.gateway, req).await?.into_inner(),
            None => StatusResponse {
                node_id: self.0.me.node_id.clone(),
                fence_held: self.0.fence.is_held(),
                ..StatusResponse::default()
            },
        };
        status.role = self.role().as_str().into();
        status.active = self.active_node();
        Ok(Response::new(status))
    }

    async fn reindex(
        &self,
        req: Request<ReindexRequest>,
    ) -> Result<Response<ReindexResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Admin::reindex(&a.gateway, req).await,
            None => Err(self.refusal()),
        }
    }

    async fn check_merkle(
        &self,
        req: Request<CheckMerkleRequest>,
    ) -> Result<Response<CheckMerkleResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Admin::check_merkle(&a.gateway, req).await,
            None => Err(self.refusal()),
        }
    }

    async fn read_wal(
        &self,
        req: Request<ReadWalRequest>,
    ) -> Result<Response<ReadWalResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Admin::read_wal(&a.gateway, req).await,
            None => Err(self.refusal()),
        }
    }

    async fn leader(&self, _: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        Ok(Response::new(NodeApi::leader(self)))
    }

    async fn nodes(&self, _: Request<NodesRequest>) -> Result<Response<NodesResponse>, Status> {
        let nodes = crate::presence::list(&self.0.client, &self.0.keyspace).await?;
        Ok(Response::new(NodesResponse { nodes }))
    }
}

#[tonic::async_trait]
impl Forwarding for NodeApi {
    async fn forward(
        &self,
        req: Request<ForwardedRequest>,
    ) -> Result<Response<ForwardedResponse>, Status> {
        match self.0.activated.get() {
            Some(a) => Forwarding::forward(&a.forwarder, req).await,
            // The server forwards to the active node itself, over HTTP.
            None => Err(self.refusal()),
        }
    }
}

#[tonic::async_trait]
impl Consistency for NodeApi {
    async fn wait_for_state(
        &self,
        req: Request<WaitForStateRequest>,
    ) -> Result<Response<WaitForStateResponse>, Status> {
        if let Some(a) = self.0.activated.get() {
            return Consistency::wait_for_state(&a.forwarder, req).await;
        }
        let req = req.into_inner();
        let state = req
            .state
            .ok_or_else(|| Status::invalid_argument("state is required"))?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.timeout_ms.into()).min(MAX_WAIT);
        loop {
            if self.state_in_etcd(&state).await? {
                return Ok(Response::new(WaitForStateResponse { present: true }));
            }
            if tokio::time::Instant::now() + STATE_POLL > deadline {
                return Ok(Response::new(WaitForStateResponse { present: false }));
            }
            tokio::time::sleep(STATE_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_follows_the_fence_and_activation() {
        assert_eq!(Role::of(false, false), Role::Standby);
        assert_eq!(Role::of(true, false), Role::Activating);
        assert_eq!(Role::of(true, true), Role::Active);
        // An active node that lost its fence to another node serves as a standby.
        assert_eq!(Role::of(false, true), Role::Standby);
        assert_eq!(Role::Standby.as_str(), "standby");
        assert_eq!(Role::Active.as_str(), "active");
    }
}
