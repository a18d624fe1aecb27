//! The sidecar's storage API, as ferry-vault uses it: raw (already sealed) values by path, read
//! through the [`read_cache`](crate::read_cache) while the sidecar's change stream keeps it
//! trustworthy ([`Storage::keep_read_cache`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::forward::consistency_client::ConsistencyClient;
use ferry_proto::forward::forwarding_client::ForwardingClient;
use ferry_proto::forward::{
    ForwardedRequest, ForwardedResponse, ReplicatedState, WaitForStateRequest,
};
use ferry_proto::storage::admin_client::AdminClient;
use ferry_proto::storage::changes_client::ChangesClient;
use ferry_proto::storage::operation::Op;
use ferry_proto::storage::storage_client::StorageClient;
use ferry_proto::storage::{
    BatchRequest, DeleteRequest, GetRequest, LeaderRequest, LeaderResponse, ListRequest,
    NodePresence, NodesRequest, Operation, PutRequest, WatchRequest, WriteResponse,
};
use thiserror::Error;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::read_cache::ReadCache;

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
    changes: ChangesClient<Channel>,
    cache: Arc<ReadCache>,
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
    /// A client of the sidecar at `socket`, with a read cache of `cache_bytes` (0: none) that
    /// serves nothing until [`keep_read_cache`](Self::keep_read_cache) runs.
    pub fn connect(socket: &Path, cache_bytes: usize) -> Self {
        let channel = ferry_proto::connect_unix(socket);
        Self {
            changes: ChangesClient::new(channel.clone()),
            cache: Arc::new(ReadCache::new(cache_bytes)),
            client: StorageClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            forwarding: ForwardingClient::new(channel.clone())
                .max_decoding_message_size(crate::forwarding::MAX_MESSAGE_BYTES),
            consistency: ConsistencyClient::new(channel),
        }
    }

    pub fn cache(&self) -> &ReadCache {
        &self.cache
    }

    /// Follows the sidecar's change stream for ever: forgets what changed, trusts the cache
    /// while progress messages come, and forgets everything when the stream ends (then
    /// subscribes again). Runs beside the server from start-up, and again after a panic: what
    /// the cache held before a (re)start is forgotten, since changes may have been missed.
    pub async fn keep_read_cache(self) {
        const RETRY: Duration = Duration::from_millis(500);
        /// Distrusts the cache when the task ends, a panic's unwinding included, so that no
        /// change goes unseen while the task is down.
        struct DistrustOnEnd<'a>(&'a ReadCache);
        impl Drop for DistrustOnEnd<'_> {
            fn drop(&mut self) {
                self.0.distrust();
            }
        }
        let _end = DistrustOnEnd(&self.cache);
        self.cache.distrust();
        let mut healthy = true;
        loop {
            let ended = match self.changes.clone().watch(WatchRequest {}).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(change)) if change.paths.is_empty() => {
                                if !healthy {
                                    info!(
                                        "storage change stream back: the read cache is used again"
                                    );
                                    healthy = true;
                                }
                                self.cache.confirm(progress_age(change.received_unix_ms));
                            }
                            Ok(Some(change)) => {
                                self.cache.forget(change.paths.iter().map(String::as_str))
                            }
                            Ok(None) => break "the sidecar ended it".to_owned(),
                            Err(e) => break e.message().to_owned(),
                        }
                    }
                }
                Err(e) => e.message().to_owned(),
            };
            self.cache.distrust();
            if healthy {
                warn!(reason = %ended, "storage change stream lost: reads bypass the cache until it is back");
                healthy = false;
            }
            tokio::time::sleep(RETRY).await;
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

    /// The value at `key`: from the read cache when it holds it (unless the request asked for
    /// fresh reads: it carried `X-Vault-Index`), else from the sidecar.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if !crate::forwarding::wants_fresh_reads()
            && let Some(cached) = self.cache.get(key)
        {
            return Ok(cached);
        }
        let ticket = self.cache.ticket(key);
        let reply = self
            .client
            .clone()
            .get(GetRequest { key: key.into() })
            .await?
            .into_inner();
        let value = reply.found.then_some(reply.value);
        if let Some(ticket) = ticket {
            self.cache.fill(key, value.as_deref(), ticket);
        }
        Ok(value)
    }

    /// Writes `value` at `key`; returns the WAL index that carries it (0 for a local path).
    /// Every write forgets its paths in the read cache once the sidecar answered, whatever the
    /// answer: a write that timed out may have committed.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StorageError> {
        let reply = self
            .client
            .clone()
            .put(PutRequest {
                key: key.into(),
                value,
            })
            .await;
        self.cache.forget([key]);
        Ok(noted(reply?))
    }

    pub async fn delete(&self, key: &str) -> Result<u64, StorageError> {
        let reply = self
            .client
            .clone()
            .delete(DeleteRequest { key: key.into() })
            .await;
        self.cache.forget([key]);
        Ok(noted(reply?))
    }

    /// Puts (`Some`) and deletes (`None`) applied atomically; returns the WAL index.
    pub async fn batch(&self, ops: Vec<(String, Option<Vec<u8>>)>) -> Result<u64, StorageError> {
        let paths: Vec<String> = ops.iter().map(|(key, _)| key.clone()).collect();
        let operations = ops
            .into_iter()
            .map(|(key, value)| Operation {
                op: Some(match value {
                    Some(value) => Op::Put(PutRequest { key, value }),
                    None => Op::Delete(DeleteRequest { key }),
                }),
            })
            .collect();
        let reply = self.client.clone().batch(BatchRequest { operations }).await;
        self.cache.forget(paths.iter().map(String::as_str));
        Ok(noted(reply?))
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

/// How long ago the sidecar received a progress message it stamped `received_unix_ms` (its
/// clock is this server's: they share a host). An unstamped one (a sidecar older than the stamp)
/// counts as just received, as it did before.
fn progress_age(received_unix_ms: i64) -> Duration {
    let Some(received) = u64::try_from(received_unix_ms).ok().filter(|&ms| ms > 0) else {
        return Duration::ZERO;
    };
    let received = std::time::UNIX_EPOCH + Duration::from_millis(received);
    std::time::SystemTime::now()
        .duration_since(received)
        .unwrap_or_default()
}
