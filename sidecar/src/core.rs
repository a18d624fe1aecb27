//! The state every part of the sidecar shares: the etcd client, the keyspace, the merkle index,
//! the WAL position and the fence.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, KvClient, Txn, TxnOp};

use crate::commit::Limits;
use crate::committer::CommitQueue;
use crate::error::StoreError;
use crate::fence::Fence;
use crate::keyspace::Keyspace;
use crate::merkle::MerkleIndex;
use crate::path::PathClassifier;
use crate::wal::{StreamState, WalPosition};

/// How long one etcd transaction may take before its outcome is treated as unknown.
pub const TXN_TIMEOUT: Duration = Duration::from_secs(10);

/// What start-up did to rebuild the merkle index.
#[derive(Clone, Debug, Default)]
pub struct StartupReport {
    /// "recovery" (flushed subpages plus WAL redo) or "reindex" (a full scan).
    pub mode: String,
    pub index_seconds: f64,
    pub redo_entries: u64,
}

/// Shared sidecar state.
pub struct Core {
    pub client: Client,
    pub keyspace: Keyspace,
    pub classes: PathClassifier,
    pub limits: Limits,
    pub fence: Arc<Fence>,
    pub stream: StreamState,
    pub startup: StartupReport,
    index: Mutex<MerkleIndex>,
    wal: Mutex<WalPosition>,
    /// The WAL index up to which every merkle subpage is flushed, once one is stored.
    checkpoint: Mutex<Option<u64>>,
    /// The committer's queue: writes, and pauses that line etcd up with the index.
    pub commits: CommitQueue,
    /// Held by a flush round, and by a reindex while it swaps the index.
    pub flush_gate: tokio::sync::Mutex<()>,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        keyspace: Keyspace,
        classes: PathClassifier,
        limits: Limits,
        fence: Arc<Fence>,
        stream: StreamState,
        startup: StartupReport,
        index: MerkleIndex,
        wal: WalPosition,
        checkpoint: Option<u64>,
        commits: CommitQueue,
    ) -> Self {
        Self {
            client,
            keyspace,
            classes,
            limits,
            fence,
            stream,
            startup,
            index: Mutex::new(index),
            wal: Mutex::new(wal),
            checkpoint: Mutex::new(checkpoint),
            commits,
            flush_gate: tokio::sync::Mutex::new(()),
        }
    }

    pub fn kv(&self) -> KvClient {
        crate::etcd::kv(&self.client)
    }

    pub fn index(&self) -> MutexGuard<'_, MerkleIndex> {
        self.index.lock().expect("merkle index lock poisoned")
    }

    pub fn wal(&self) -> WalPosition {
        *self.wal.lock().expect("WAL position lock poisoned")
    }

    pub fn update_wal(&self, f: impl FnOnce(&mut WalPosition)) {
        f(&mut self.wal.lock().expect("WAL position lock poisoned"));
    }

    /// Commits `ops` in one transaction under the write fence. A failed compare means the fence
    /// is gone, or was rotated while the transaction was under way (then it can be retried).
    pub async fn fenced(&self, ops: impl Into<Vec<TxnOp>>) -> Result<(), StoreError> {
        let txn = Txn::new().when([self.fence.compare()?]).and_then(ops);
        if self.kv().txn(txn).await?.succeeded() {
            return Ok(());
        }
        if self.fence.verify(&self.client).await? {
            return Err(StoreError::Unavailable(
                "the write fence was rotated during the transaction; it will be retried".into(),
            ));
        }
        Err(self.fence.lost_error())
    }

    pub fn checkpoint(&self) -> Option<u64> {
        *self.checkpoint.lock().expect("checkpoint lock poisoned")
    }

    pub fn set_checkpoint(&self, lsn: Option<u64>) {
        *self.checkpoint.lock().expect("checkpoint lock poisoned") = lsn;
    }
}
