//! The gRPC services on the storage socket: thin shells that turn requests into gateway calls
//! and domain errors into status codes.

use ferry_proto::storage::admin_server::Admin;
use ferry_proto::storage::operation::Op;
use ferry_proto::storage::storage_server::Storage;
use ferry_proto::storage::{
    BatchRequest, CheckMerkleRequest, CheckMerkleResponse, DeleteRequest, GetRequest, GetResponse,
    LeaderRequest, LeaderResponse, ListRequest, ListResponse, NodesRequest, NodesResponse,
    PutRequest, ReadWalRequest, ReadWalResponse, ReindexRequest, ReindexResponse, StatusRequest,
    StatusResponse, WalEntry as PbWalEntry, WalOperation, WriteResponse,
};
use tonic::{Request, Response, Status};

use crate::error::StoreError;
use crate::gateway::Gateway;
use crate::reindex;
use crate::wal::reader::{WalRead, read_after};
use crate::wal::record::hex;

/// Most entries one `ReadWal` returns.
const MAX_WAL_READ: u32 = 1000;

#[tonic::async_trait]
impl Storage for Gateway {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let value = Gateway::get(self, &req.into_inner().key).await?;
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<WriteResponse>, Status> {
        let PutRequest { key, value } = req.into_inner();
        let wal_index = self.write(vec![self.op(key, Some(value))]).await?;
        Ok(self.write_response(wal_index))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<WriteResponse>, Status> {
        let key = req.into_inner().key;
        let wal_index = self.write(vec![self.op(key, None)]).await?;
        Ok(self.write_response(wal_index))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let keys = Gateway::list(self, &req.into_inner().prefix).await?;
        Ok(Response::new(ListResponse { keys }))
    }

    async fn batch(&self, req: Request<BatchRequest>) -> Result<Response<WriteResponse>, Status> {
        let mut ops = Vec::new();
        for (i, operation) in req.into_inner().operations.into_iter().enumerate() {
            ops.push(match operation.op {
                Some(Op::Put(p)) => self.op(p.key, Some(p.value)),
                Some(Op::Delete(d)) => self.op(d.key, None),
                None => {
                    return Err(StoreError::InvalidArgument(format!(
                        "batch operation {i} is neither a put nor a delete"
                    ))
                    .into());
                }
            });
        }
        let wal_index = self.write(ops).await?;
        Ok(self.write_response(wal_index))
    }
}

impl Gateway {
    /// A write's WAL index with the stream it belongs to: the state `X-Vault-Index` names.
    fn write_response(&self, wal_index: u64) -> Response<WriteResponse> {
        let stream = self.core().stream();
        Response::new(WriteResponse {
            wal_index,
            stream_id: stream.stream_id.0.to_vec(),
            epoch: stream.epoch,
        })
    }
}

#[tonic::async_trait]
impl Admin for Gateway {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let core = self.core();
        let wal = core.wal();
        let (root, keys, dirty, memory) = {
            let index = core.index();
            (
                hex(&index.root()),
                index.keys(),
                index.dirty_count(),
                index.memory_bytes(),
            )
        };
        Ok(Response::new(StatusResponse {
            node_id: core.fence.node_id().to_owned(),
            fence_held: core.fence.is_held(),
            stream_id: core.stream().stream_id.to_hex(),
            epoch: core.stream().epoch,
            last_wal: wal.last,
            first_wal: wal.first,
            wal_retained_bytes: wal.retained_bytes(),
            merkle_root: root,
            merkle_keys: keys,
            merkle_checkpoint: core.checkpoint().unwrap_or(0),
            merkle_dirty_subpages: dirty as u64,
            startup_mode: core.startup.mode.clone(),
            startup_index_seconds: core.startup.index_seconds,
            startup_redo_entries: core.startup.redo_entries,
            merkle_memory_bytes: memory as u64,
            role: crate::node::Role::of(core.fence.is_held(), true)
                .as_str()
                .into(),
            active: None,
        }))
    }

    async fn reindex(
        &self,
        _: Request<ReindexRequest>,
    ) -> Result<Response<ReindexResponse>, Status> {
        let report = reindex::reindex(self.core()).await?;
        Ok(Response::new(ReindexResponse {
            keys: report.keys,
            merkle_root: report.root,
            seconds: report.seconds,
        }))
    }

    async fn check_merkle(
        &self,
        _: Request<CheckMerkleRequest>,
    ) -> Result<Response<CheckMerkleResponse>, Status> {
        let report = reindex::check(self.core()).await?;
        Ok(Response::new(CheckMerkleResponse {
            consistent: report.consistent(),
            keys_scanned: report.keys_scanned,
            mismatched_keys: report.mismatched_keys,
            phantom_key_hashes: report.phantom_key_hashes,
            index_root: report.index_root,
            scan_root: report.scan_root,
        }))
    }

    /// Served by the node's API (`node::NodeApi`), which knows the role; the gateway alone
    /// only knows whether it holds the fence.
    async fn leader(&self, _: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let role = crate::node::Role::of(self.core().fence.is_held(), true);
        Ok(Response::new(LeaderResponse {
            role: role.as_str().into(),
            ..LeaderResponse::default()
        }))
    }

    async fn nodes(&self, _: Request<NodesRequest>) -> Result<Response<NodesResponse>, Status> {
        let core = self.core();
        let nodes = crate::presence::list(&core.client, &core.keyspace).await?;
        Ok(Response::new(NodesResponse { nodes }))
    }

    async fn read_wal(
        &self,
        req: Request<ReadWalRequest>,
    ) -> Result<Response<ReadWalResponse>, Status> {
        let ReadWalRequest { after, limit } = req.into_inner();
        let limit = if limit == 0 {
            MAX_WAL_READ
        } else {
            limit.min(MAX_WAL_READ)
        };
        let read = read_after(self.core(), after, limit as usize).await?;
        let last_wal = self.core().wal().last;
        Ok(Response::new(match read {
            WalRead::NotRetained { first } => ReadWalResponse {
                entries: Vec::new(),
                not_retained_first: Some(first),
                last_wal,
            },
            WalRead::Entries(entries) => ReadWalResponse {
                entries: entries
                    .into_iter()
                    .map(|e| PbWalEntry {
                        index: e.index,
                        stream_id: e.stream_id.to_hex(),
                        epoch: e.epoch,
                        merkle_root: hex(&e.merkle_root),
                        operations: e
                            .ops
                            .into_iter()
                            .map(|op| WalOperation {
                                key: op.key,
                                value: op.value,
                            })
                            .collect(),
                    })
                    .collect(),
                not_retained_first: None,
                last_wal,
            },
        }))
    }
}
