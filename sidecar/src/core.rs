//! The state every part of the sidecar shares: the etcd client, the keyspace, the merkle index,
//! the WAL position and the fence.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use etcd_client::{Client, KvClient, Txn, TxnOp, TxnResponse};
use tracing::warn;

use crate::commit::Limits;
use crate::committer::CommitQueue;
use crate::error::{StoreError, definitely_not_applied};
use crate::fence::Fence;
use crate::keyspace::Keyspace;
use crate::merkle::MerkleIndex;
use crate::path::PathClassifier;
use crate::wal::{StreamState, WalPosition};

/// How long one etcd transaction may take before its outcome is treated as unknown.
pub const TXN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts of [`Core::retry_while_fenced`].
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// What an etcd transaction bounded by [`TXN_TIMEOUT`] came to.
pub type TxnOutcome = Result<Result<TxnResponse, etcd_client::Error>, tokio::time::error::Elapsed>;

/// An etcd transaction's response, or why there is none: `Unavailable` when etcd certainly did
/// not apply it, `OutcomeUnknown` when it may still land (only a fence rotation rules that out).
pub fn txn_response(outcome: TxnOutcome) -> Result<TxnResponse, StoreError> {
    match outcome {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) if definitely_not_applied(&e) => Err(StoreError::Unavailable(format!(
            "etcd refused the transaction: {e}"
        ))),
        Ok(Err(e)) => Err(StoreError::OutcomeUnknown(e.to_string())),
        Err(_) => Err(StoreError::OutcomeUnknown(format!(
            "no answer from etcd within {}s",
            TXN_TIMEOUT.as_secs()
        ))),
    }
}

/// What start-up did to rebuild the merkle index.
#[derive(Clone, Debug, Default)]
pub struct StartupReport {
    /// "recovery" (flushed subpages plus WAL redo) or "reindex" (a full scan).
    pub mode: String,
    pub index_seconds: f64,
    pub redo_entries: u64,
}

/// Whether this cluster accepts replicated writes from its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WriteMode {
    /// Replication disabled, or a primary: replicated writes are accepted.
    Open = 0,
    /// A performance secondary: replicated writes are refused (the server forwards them) and
    /// only the replication applier writes replicated paths.
    Secondary = 1,
    /// A demoted or fenced primary: replicated writes are refused and nothing is applied.
    Closed = 2,
}

/// Shared sidecar state.
pub struct Core {
    pub client: Client,
    pub keyspace: Keyspace,
    pub classes: PathClassifier,
    pub limits: Limits,
    pub fence: Arc<Fence>,
    stream: RwLock<StreamState>,
    write_mode: AtomicU8,
    /// The last WAL index committed to etcd and applied to the index: WAL shippers wait on it.
    committed: tokio::sync::watch::Sender<u64>,
    pub startup: StartupReport,
    index: Mutex<MerkleIndex>,
    wal: Mutex<WalPosition>,
    /// The WAL index up to which every merkle subpage is flushed, once one is stored.
    checkpoint: Mutex<Option<u64>>,
    /// The newest committed WAL entries, encoded, for WAL shippers.
    pub recent: Mutex<crate::wal::recent::RecentEntries>,
    /// The committer's queue: writes, and pauses that line etcd up with the index.
    pub commits: CommitQueue,
    /// Held by whoever writes merkle subpage records or the checkpoint: a flush round, the
    /// committer while a transaction carrying records is in flight (see `committer`), and a
    /// reindex while it swaps the index. Records of one subpage therefore reach etcd in the
    /// order they were taken, and a checkpoint never passes a record still in flight.
    pub flush_gate: Arc<tokio::sync::Mutex<()>>,
    /// Notices freezes of this process (see `stall`).
    pub stall: crate::stall::StallWatch,
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
            stream: RwLock::new(stream),
            write_mode: AtomicU8::new(WriteMode::Open as u8),
            committed: tokio::sync::watch::Sender::new(wal.last),
            startup,
            index: Mutex::new(index),
            wal: Mutex::new(wal),
            checkpoint: Mutex::new(checkpoint),
            commits,
            recent: Mutex::new(crate::wal::recent::RecentEntries::new(
                crate::wal::recent::DEFAULT_RECENT_BYTES,
            )),
            flush_gate: Arc::new(tokio::sync::Mutex::new(())),
            stall: crate::stall::StallWatch::default(),
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
        let last = {
            let mut pos = self.wal.lock().expect("WAL position lock poisoned");
            f(&mut pos);
            pos.last
        };
        self.committed
            .send_if_modified(|c| std::mem::replace(c, last) != last);
    }

    /// Follows the last committed WAL index.
    pub fn watch_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// This cluster's WAL stream and epoch.
    pub fn stream(&self) -> StreamState {
        *self.stream.read().expect("stream lock poisoned")
    }

    pub fn set_stream(&self, stream: StreamState) {
        *self.stream.write().expect("stream lock poisoned") = stream;
    }

    pub fn write_mode(&self) -> WriteMode {
        match self.write_mode.load(Ordering::Acquire) {
            0 => WriteMode::Open,
            1 => WriteMode::Secondary,
            _ => WriteMode::Closed,
        }
    }

    pub fn set_write_mode(&self, mode: WriteMode) {
        self.write_mode.store(mode as u8, Ordering::Release);
    }

    /// Commits `ops` in one transaction under the write fence. A failed compare means the fence
    /// is gone, or was rotated while the transaction was under way (then it can be retried).
    /// `OutcomeUnknown` means the transaction may still land: only a fence rotation rules
    /// that out.
    pub async fn fenced(&self, ops: impl Into<Vec<TxnOp>>) -> Result<(), StoreError> {
        let txn = Txn::new().when([self.fence.compare()?]).and_then(ops);
        let resp = txn_response(tokio::time::timeout(TXN_TIMEOUT, self.kv().txn(txn)).await)?;
        if resp.succeeded() {
            return Ok(());
        }
        if self.fence.verify(&self.client).await? {
            return Err(StoreError::Unavailable(
                "the write fence was rotated during the transaction; it will be retried".into(),
            ));
        }
        Err(self.fence.lost_error())
    }

    /// Runs `attempt` until it succeeds, with bounded exponential backoff, while the fence is
    /// ours (once it is lost, nothing sent under it can land, and nothing is left to do).
    /// Returns the successful attempt's value, or `None` once the fence is lost.
    pub async fn retry_while_fenced<T, F, Fut>(&self, what: &str, mut attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        while self.fence.is_held() {
            match attempt().await {
                Ok(value) => return Some(value),
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_BACKOFF);
                }
            }
        }
        None
    }

    pub fn checkpoint(&self) -> Option<u64> {
        *self.checkpoint.lock().expect("checkpoint lock poisoned")
    }

    pub fn set_checkpoint(&self, lsn: Option<u64>) {
        *self.checkpoint.lock().expect("checkpoint lock poisoned") = lsn;
    }
}
