//! The sidecar's storage API, as ferry-vault uses it: raw (already sealed) values by path.

use std::path::Path;

use ferry_proto::storage::operation::Op;
use ferry_proto::storage::storage_client::StorageClient;
use ferry_proto::storage::{
    BatchRequest, DeleteRequest, GetRequest, ListRequest, Operation, PutRequest,
};
use thiserror::Error;
use tonic::transport::Channel;

/// Why a storage call failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A replicated write on a cluster that does not accept them (a performance secondary).
    #[error("{0}")]
    ReadOnly(String),
    #[error("storage: {0}")]
    Failed(String),
}

impl From<tonic::Status> for StorageError {
    fn from(s: tonic::Status) -> Self {
        if s.code() == tonic::Code::FailedPrecondition && s.message().starts_with("read-only") {
            StorageError::ReadOnly(s.message().to_owned())
        } else {
            StorageError::Failed(s.message().to_owned())
        }
    }
}

/// A client of the sidecar on its Unix socket; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    client: StorageClient<Channel>,
}

impl Storage {
    pub fn connect(socket: &Path) -> Self {
        Self {
            client: StorageClient::new(ferry_proto::connect_unix(socket)),
        }
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
            .await?
            .into_inner();
        Ok(reply.wal_index)
    }

    pub async fn delete(&self, key: &str) -> Result<u64, StorageError> {
        let reply = self
            .client
            .clone()
            .delete(DeleteRequest { key: key.into() })
            .await?
            .into_inner();
        Ok(reply.wal_index)
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
            .await?
            .into_inner();
        Ok(reply.wal_index)
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
