//! The sidecar's storage API, as ferry-vault uses it: raw (already sealed) values by path.

use std::path::Path;

use std::time::Duration;

use ferry_proto::forward::consistency_client::ConsistencyClient;
use ferry_proto::forward::forwarding_client::ForwardingClient;
use ferry_proto::forward::{
    ForwardedRequest, ForwardedResponse, ReplicatedState, WaitForStateRequest,
};
use ferry_proto::storage::admin_client::AdminClient;
use ferry_proto::storage::operation::Op;
use ferry_proto::storage::storage_client::StorageClient;
use ferry_proto::storage::{
    BatchRequest, DeleteRequest, GetRequest, LeaderRequest, LeaderResponse, ListRequest,
    NodePresence, NodesRequest, Operation, PutRequest, WriteResponse,
};
use thiserror::Error;
use tonic::transport::Channel;

/// Why a storage call failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A replicated write on a cluster that does not accept them (a performance secondary).
    #[error("{0}")]
    ReadOnly(String),
    /// Any write on a performance standby: the cluster's active node (whose ferry-vault
    /// address is given when it advertised one) must serve the request.
    #[error("{message}")]
    NotActive {
        message: String,
        active_api_addr: Option<String>,
    },
    #[error("storage: {0}")]
    Failed(String),
}

impl From<tonic::Status> for StorageError {
    fn from(s: tonic::Status) -> Self {
        if s.code() == tonic::Code::FailedPrecondition && s.message().starts_with("read-only") {
            StorageError::ReadOnly(s.message().to_owned())
        } else if s.code() == tonic::Code::FailedPrecondition
            && s.message().starts_with(ferry_proto::NOT_ACTIVE_PREFIX)
        {
            StorageError::NotActive {
                message: s.message().to_owned(),
                active_api_addr: s
                    .metadata()
                    .get(ferry_proto::ACTIVE_API_ADDR_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned),
            }
        } else {
            StorageError::Failed(s.message().to_owned())
        }
    }
}

/// A client of the sidecar on its Unix socket; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    client: StorageClient<Channel>,
    admin: AdminClient<Channel>,
    forwarding: ForwardingClient<Channel>,
    consistency: ConsistencyClient<Channel>,
}

/// A replicated write's state, noted for the request's `X-Vault-Index`; 0 for a local write.
fn noted(reply: tonic::Response<WriteResponse>) -> u64 {
    let reply = reply.into_inner();
    if reply.wal_index > 0 {
        crate::forwarding::note_write(ReplicatedState {
            stream_id: reply.stream_id,
            epoch: reply.epoch,
            index: reply.wal_index,
        });
    }
    reply.wal_index
}

impl Storage {
    pub fn connect(socket: &Path) -> Self {
        let channel = ferry_proto::connect_unix(socket);
        Self {
            client: StorageClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            forwarding: ForwardingClient::new(channel.clone())
                .max_decoding_message_size(crate::forwarding::MAX_MESSAGE_BYTES),
            consistency: ConsistencyClient::new(channel),
        }
    }

    /// This node's role in its cluster and the active node, as the sidecar knows them.
    pub async fn leader(&self) -> Result<LeaderResponse, StorageError> {
        Ok(self
            .admin
            .clone()
            .leader(LeaderRequest {})
            .await?
            .into_inner())
    }

    /// Every node of the cluster that announced itself lately (`sys/ha-status`).
    pub async fn nodes(&self) -> Result<Vec<NodePresence>, StorageError> {
        Ok(self
            .admin
            .clone()
            .nodes(NodesRequest {})
            .await?
            .into_inner()
            .nodes)
    }

    /// Sends a request this cluster cannot execute to the primary, through the sidecar.
    pub async fn forward(
        &self,
        request: ForwardedRequest,
    ) -> Result<ForwardedResponse, tonic::Status> {
        Ok(self.forwarding.clone().forward(request).await?.into_inner())
    }

    /// Whether this cluster holds `state`, waiting up to `wait` for it.
    pub async fn wait_for_state(
        &self,
        state: ReplicatedState,
        wait: Duration,
    ) -> Result<bool, StorageError> {
        let reply = self
            .consistency
            .clone()
            .wait_for_state(WaitForStateRequest {
                state: Some(state),
                timeout_ms: wait.as_millis().try_into().unwrap_or(u32::MAX),
            })
            .await?;
        Ok(reply.into_inner().present)
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let reply = self
            .client
            .clone()
            .get(GetRequest { key: key.into() })
            .await?
            .into_inner();
        Ok(reply.found.then_some(reply.value))
    }

    /// Writes `value` at `key`; returns the WAL index that carries it (0 for a local path).
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StorageError> {
        let reply = self
            .client
            .clone()
            .put(PutRequest {
                key: key.into(),
                value,
            })
            .await?;
        Ok(noted(reply))
    }

    pub async fn delete(&self, key: &str) -> Result<u64, StorageError> {
        let reply = self
            .client
            .clone()
            .delete(DeleteRequest { key: key.into() })
            .await?;
        Ok(noted(reply))
    }

    /// Puts (`Some`) and deletes (`None`) applied atomically; returns the WAL index.
    pub async fn batch(&self, ops: Vec<(String, Option<Vec<u8>>)>) -> Result<u64, StorageError> {
        let operations = ops
            .into_iter()
            .map(|(key, value)| Operation {
                op: Some(match value {
                    Some(value) => Op::Put(PutRequest { key, value }),
                    None => Op::Delete(DeleteRequest { key }),
                }),
            })
            .collect();
        let reply = self
            .client
            .clone()
            .batch(BatchRequest { operations })
            .await?;
        Ok(noted(reply))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let reply = self
            .client
            .clone()
            .list(ListRequest {
                prefix: prefix.into(),
            })
            .await?
            .into_inner();
        Ok(reply.keys)
    }
}
