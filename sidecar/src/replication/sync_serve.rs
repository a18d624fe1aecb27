//! MerkleSync, the primary's side: the replicated keys of the subpages a secondary asks for, as
//! of the merkle snapshot it located them in (the etcd revision of that snapshot), in bounded
//! chunks of keys and bytes, values fetched in bounded transactions.

use std::collections::HashSet;
use std::sync::Arc;

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
use ferry_proto::replication as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::Replication;
use super::snapshot::MerkleSnapshot;
use crate::error::StoreError;
use crate::etcd::{FIRST_VALUES_PAGE, Pages, Scan};
use crate::keyspace::prefix_end;
use crate::merkle::hash_path;
use crate::path::PathClass;

/// Most keys, and about the most key and value bytes, per merkle-sync message.
const SYNC_CHUNK_KEYS: usize = 1024;
const SYNC_CHUNK_BYTES: usize = 1024 * 1024;
/// Reads per etcd transaction when fetching values of selected keys.
const SYNC_GETS_PER_TXN: usize = 64;
/// Streams the primary's replicated keys in `wanted` subpages, as of the snapshot's revision.
pub(super) async fn serve_sync(
    replication: Arc<Replication>,
    snapshot: Arc<MerkleSnapshot>,
    wanted: HashSet<u32>,
    total: u64,
    tx: mpsc::Sender<Result<pb::MerkleSyncResponse, Status>>,
) {
    let result = sync_chunks(&replication, &snapshot, &wanted, total, &tx).await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

async fn sync_chunks(
    replication: &Replication,
    snapshot: &MerkleSnapshot,
    wanted: &HashSet<u32>,
    total: u64,
    tx: &mpsc::Sender<Result<pb::MerkleSyncResponse, Status>>,
) -> Result<(), Status> {
    let core = &replication.core;
    let ks = &core.keyspace;
    let geometry = snapshot.geometry;
    let selects = |path: &str| {
        core.classes.classify(path) == PathClass::Replicated
            && wanted.contains(&geometry.subpage_of(&hash_path(path)))
    };
    // Most subpages wanted (a new secondary): read values along with the scan. Otherwise a
    // keys-only scan, then the values of the selected keys.
    let with_values = wanted.len() as u64 * 2 > u64::from(geometry.subpages());
    let prefix = ks.data_prefix();
    let mut pages = Pages::new(
        prefix.clone().into_bytes(),
        prefix_end(&prefix),
        Scan {
            revision: snapshot.revision,
            keys_only: !with_values,
            page: if with_values { FIRST_VALUES_PAGE } else { 2000 },
        },
    );
    let mut kv = core.kv();
    let mut chunk = Chunk::new(total);
    let read_failed = |e: StoreError| Status::unavailable(format!("merkle-sync read failed: {e}"));
    while let Some(page) = pages.next(&mut kv).await.map_err(read_failed)? {
        for item in page {
            let Some(path) = ks.path_of(item.key()).filter(|p| selects(p)) else {
                continue;
            };
            chunk.push(pb::KeyValue {
                key: path.to_owned(),
                value: item.value().to_vec(),
            });
            if chunk.full() && !chunk.send(core, with_values, snapshot.revision, tx).await? {
                return Ok(());
            }
        }
    }
    chunk.send(core, with_values, snapshot.revision, tx).await?;
    Ok(())
}

/// The keys of one merkle-sync message, bounded by count and bytes.
struct Chunk {
    keys: Vec<pb::KeyValue>,
    bytes: usize,
    /// Sent in the first message only.
    total: Option<u64>,
}

impl Chunk {
    fn new(total: u64) -> Self {
        Self {
            keys: Vec::new(),
            bytes: 0,
            total: Some(total),
        }
    }

    fn push(&mut self, kv: pb::KeyValue) {
        self.bytes += kv.key.len() + kv.value.len();
        self.keys.push(kv);
    }

    fn full(&self) -> bool {
        self.keys.len() >= SYNC_CHUNK_KEYS || self.bytes >= SYNC_CHUNK_BYTES
    }

    /// Sends what is gathered (the first message even when empty); false when the secondary
    /// went away.
    async fn send(
        &mut self,
        core: &crate::core::Core,
        with_values: bool,
        revision: i64,
        tx: &mpsc::Sender<Result<pb::MerkleSyncResponse, Status>>,
    ) -> Result<bool, Status> {
        if self.keys.is_empty() && self.total.is_none() {
            return Ok(true);
        }
        let mut keys = std::mem::take(&mut self.keys);
        self.bytes = 0;
        if !with_values {
            fetch_values(core, revision, &mut keys).await?;
        }
        let message = pb::MerkleSyncResponse {
            total_keys: self.total.take().unwrap_or(0),
            keys,
        };
        Ok(tx.send(Ok(message)).await.is_ok())
    }
}

/// Fills in the values of `chunk`'s keys as of `revision`.
async fn fetch_values(
    core: &crate::core::Core,
    revision: i64,
    chunk: &mut [pb::KeyValue],
) -> Result<(), Status> {
    let mut kv = core.kv();
    for part in chunk.chunks_mut(SYNC_GETS_PER_TXN) {
        let gets: Vec<TxnOp> = part
            .iter()
            .map(|item| {
                TxnOp::get(
                    core.keyspace.data(&item.key),
                    Some(GetOptions::new().with_revision(revision)),
                )
            })
            .collect();
        let resp = kv
            .txn(Txn::new().and_then(gets))
            .await
            .map_err(|e| Status::unavailable(format!("merkle-sync read failed: {e}")))?;
        for (item, op) in part.iter_mut().zip(resp.op_responses()) {
            if let TxnOpResponse::Get(get) = op
                && let Some(found) = get.kvs().first()
            {
                item.value = found.value().to_vec();
            }
        }
    }
    Ok(())
}
