//! Group commit: concurrent writes coalesced into one etcd transaction.
//!
//! Every write (a put, a delete or an atomic batch) is validated at the edge and queued on a
//! bounded channel. A single committer task takes the first waiting request and every other one
//! already queued that still fits, and commits them in one transaction:
//!
//! * compares: the fence key's create revision is ours, and the next WAL slot is empty;
//! * operations: every key update, plus exactly one WAL entry holding the replicated operations
//!   and the merkle root after them (none when the group touched only local paths).
//!
//! A group respects etcd's limits: at most `max-txn-ops` operations (the WAL entry included) and
//! a bounded request size. Two writes to the same key never share a transaction (etcd refuses
//! that), so the later one waits for the next group. While one transaction is in flight the
//! queue fills, so the busier the sidecar, the larger its transactions: one etcd transaction of
//! 64 puts costs about what one put costs.
//!
//! A write is acknowledged only after its transaction committed. A failed transaction fails every
//! write in it, with the reason. When the outcome is unknown (a timeout or a lost connection)
//! the writes are answered "outcome unknown", the fence is rotated so that the lost transaction
//! can no longer commit, and the index is brought back in step from the WAL in etcd.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::core::{Core, TXN_TIMEOUT};
use crate::error::{StoreError, definitely_not_applied};
use crate::merkle::Change;
use crate::path::{PathClass, validate_key};
use crate::wal::record::{WalEntry, WalOp};

/// Size limits on keys, values, batches and transactions.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Most operations in one write request (one slot of a transaction is the WAL entry).
    pub max_batch_ops: usize,
    /// Most key and value bytes in one write request.
    pub max_batch_bytes: usize,
    /// Most operations in one transaction, etcd's `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// Most bytes in one transaction: data plus the WAL's copy of the replicated data. etcd's
    /// default `--max-request-bytes` is 1.5 MiB; this leaves room for framing.
    pub max_txn_bytes: usize,
}

impl Limits {
    pub fn new(max_key_bytes: usize, max_value_bytes: usize, max_txn_ops: usize) -> Self {
        let max_batch_bytes = 600 * 1024;
        Self {
            max_key_bytes,
            max_value_bytes,
            max_batch_ops: max_txn_ops - 1,
            max_batch_bytes,
            max_txn_ops,
            max_txn_bytes: 2 * max_batch_bytes + 64 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(1024, 512 * 1024, 128)
    }
}

/// One operation of a write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOp {
    pub key: String,
    /// The value to put, or `None` to delete.
    pub value: Option<Vec<u8>>,
    pub class: PathClass,
}

impl WriteOp {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }

    /// Bytes this operation adds to a transaction: itself, and its WAL copy if replicated.
    fn txn_bytes(&self) -> usize {
        let once = self.bytes() + 16;
        match self.class {
            PathClass::Replicated => 2 * once,
            PathClass::Local => once,
        }
    }
}

/// Checks a write request against the limits; the message names what was wrong.
pub fn validate(ops: &[WriteOp], limits: &Limits) -> Result<(), StoreError> {
    let bad = |m: String| Err(StoreError::InvalidArgument(m));
    if ops.is_empty() {
        return bad("a batch needs at least one operation".into());
    }
    if ops.len() > limits.max_batch_ops {
        return bad(format!(
            "batch has {} operations, over the limit of {}",
            ops.len(),
            limits.max_batch_ops
        ));
    }
    let mut seen = HashSet::with_capacity(ops.len());
    let mut total = 0;
    for op in ops {
        validate_key(&op.key, limits.max_key_bytes)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        if let Some(value) = &op.value
            && value.len() > limits.max_value_bytes
        {
            return bad(format!(
                "value for key {:?} is {} bytes, over the limit of {} bytes",
                op.key,
                value.len(),
                limits.max_value_bytes
            ));
        }
        if !seen.insert(op.key.as_str()) {
            return bad(format!("key {:?} appears twice in one batch", op.key));
        }
        total += op.bytes();
    }
    if total > limits.max_batch_bytes {
        return bad(format!(
            "batch holds {total} bytes of keys and values, over the limit of {} bytes",
            limits.max_batch_bytes
        ));
    }
    Ok(())
}

/// A queued write request and where to send its outcome: the WAL index that carries it (0 when
/// it touched only local paths).
#[derive(Debug)]
pub struct Pending {
    pub ops: Vec<WriteOp>,
    pub reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// The requests one transaction will carry. Pure: decides what fits.
#[derive(Debug)]
pub struct Group {
    limits: Limits,
    requests: Vec<Pending>,
    ops: usize,
    bytes: usize,
    keys: HashSet<String>,
}

impl Group {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            requests: Vec::new(),
            ops: 1, // the WAL entry
            bytes: 0,
            keys: HashSet::new(),
        }
    }

    /// Adds `request` if it fits; gives it back otherwise. An empty group takes any valid request.
    pub fn offer(&mut self, request: Pending) -> Result<(), Pending> {
        let ops = request.ops.len();
        let bytes: usize = request.ops.iter().map(WriteOp::txn_bytes).sum();
        let fits = self.requests.is_empty()
            || (self.ops + ops <= self.limits.max_txn_ops
                && self.bytes + bytes <= self.limits.max_txn_bytes
                && request.ops.iter().all(|op| !self.keys.contains(&op.key)));
        if !fits {
            return Err(request);
        }
        self.ops += ops;
        self.bytes += bytes;
        self.keys
            .extend(request.ops.iter().map(|op| op.key.clone()));
        self.requests.push(request);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn into_requests(self) -> Vec<Pending> {
        self.requests
    }
}

/// The committer task: takes groups off `queue` and commits them until `shutdown`, then drains
/// what is queued.
pub async fn run(
    core: Arc<Core>,
    mut queue: mpsc::Receiver<Pending>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                biased;
                p = queue.recv() => match p { Some(p) => p, None => return Ok(()) },
                _ = shutdown.changed() => {
                    queue.close();
                    continue;
                }
            },
        };
        let mut group = Group::new(core.limits);
        if !first.reply.is_closed() {
            group
                .offer(first)
                .expect("an empty group takes any request");
        }
        while let Ok(next) = queue.try_recv() {
            if next.reply.is_closed() {
                continue; // the caller gave up before we started
            }
            if let Err(next) = group.offer(next) {
                carry = Some(next);
                break;
            }
        }
        if !group.is_empty() {
            commit_group(&core, group.into_requests()).await;
        }
    }
}

/// Commits one group and answers every request in it.
async fn commit_group(core: &Core, requests: Vec<Pending>) {
    let _gate = core.commit_gate.lock().await;
    // An abandoned request (its caller timed out) is not worth a transaction.
    let requests: Vec<Pending> = requests
        .into_iter()
        .filter(|r| !r.reply.is_closed())
        .collect();
    if requests.is_empty() {
        return;
    }
    let outcome = commit_locked(core, &requests).await;
    for request in requests {
        let has_replicated = request
            .ops
            .iter()
            .any(|op| op.class == PathClass::Replicated);
        let reply = match &outcome {
            Ok(index) => Ok(if has_replicated { *index } else { 0 }),
            Err(e) => Err(e.clone()),
        };
        let _ = request.reply.send(reply);
    }
    if matches!(outcome, Err(StoreError::OutcomeUnknown(_))) {
        resync(core).await;
    }
}

async fn commit_locked(core: &Core, requests: &[Pending]) -> Result<u64, StoreError> {
    let fence = core.fence.compare()?;
    let ks = &core.keyspace;
    let mut txn_ops = Vec::new();
    let mut wal_ops = Vec::new();
    let mut changes = Vec::new();
    for op in requests.iter().flat_map(|r| &r.ops) {
        txn_ops.push(match &op.value {
            Some(v) => TxnOp::put(ks.data(&op.key), v.clone(), None),
            None => TxnOp::delete(ks.data(&op.key), None),
        });
        if op.class == PathClass::Replicated {
            changes.push(Change::new(&op.key, op.value.as_deref()));
            wal_ops.push(WalOp {
                key: op.key.clone(),
                value: op.value.clone(),
            });
        }
    }
    let mut compares = vec![fence];
    let mut staged = None;
    let mut entry_meta = None;
    if !wal_ops.is_empty() {
        let pos = core.wal();
        let index = pos.last + 1;
        let s = core.index().stage(&changes);
        let entry = WalEntry {
            index,
            stream_id: core.stream.stream_id,
            epoch: core.stream.epoch,
            merkle_root: s.root(),
            cumulative_bytes: pos.cumulative_last + WalEntry::encoded_len(&wal_ops) as u64,
            ops: wal_ops,
        };
        compares.push(Compare::create_revision(ks.wal(index), CompareOp::Equal, 0));
        txn_ops.push(TxnOp::put(ks.wal(index), entry.encode(), None));
        let len = WalEntry::encoded_len(&entry.ops) as u64;
        entry_meta = Some((index, entry.cumulative_bytes, len));
        staged = Some(s);
    }

    let txn = Txn::new().when(compares).and_then(txn_ops);
    let sent = tokio::time::timeout(TXN_TIMEOUT, core.kv().txn(txn)).await;
    let resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) if definitely_not_applied(&e) => {
            return Err(StoreError::Unavailable(format!(
                "etcd refused the transaction: {e}"
            )));
        }
        Ok(Err(e)) => return Err(StoreError::OutcomeUnknown(e.to_string())),
        Err(_) => {
            return Err(StoreError::OutcomeUnknown(format!(
                "no answer within {}s",
                TXN_TIMEOUT.as_secs()
            )));
        }
    };
    if !resp.succeeded() {
        // Either the fence moved or the WAL slot was taken: both mean another writer.
        if core.fence.verify(&core.client).await.unwrap_or(false) {
            core.fence
                .mark_lost("another writer appended to this cluster's WAL".into());
        }
        return Err(core.fence.lost_error());
    }
    let Some((index, cumulative, len)) = entry_meta else {
        return Ok(0);
    };
    {
        let mut merkle = core.index();
        merkle.commit(staged.expect("staged with the entry"));
        merkle.set_lsn(index);
    }
    core.update_wal(|pos| pos.append(index, cumulative, len));
    debug!(index, "committed WAL entry");
    Ok(index)
}

/// After an unknown outcome: rotate the fence so the lost transaction cannot land later, then
/// apply whatever the WAL in etcd holds beyond the index. Retries with bounded backoff until it
/// succeeds or the fence is lost. The caller holds the commit gate.
async fn resync(core: &Core) {
    let mut delay = Duration::from_millis(100);
    while core.fence.is_held() {
        let attempt = async {
            core.fence.rotate(&core.client).await?;
            crate::recovery::catch_up(core).await
        };
        match attempt.await {
            Ok(applied) => {
                warn!(
                    applied,
                    "resynchronised with etcd after an unknown transaction outcome"
                );
                return;
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "resynchronising with etcd failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, len: usize) -> WriteOp {
        WriteOp {
            key: key.into(),
            value: Some(vec![0; len]),
            class: PathClass::Replicated,
        }
    }

    fn pending(ops: Vec<WriteOp>) -> Pending {
        Pending {
            ops,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn validation_names_the_limit() {
        let limits = Limits::default();
        let too_many: Vec<_> = (0..200).map(|i| put(&format!("k{i}"), 1)).collect();
        let err = validate(&too_many, &limits).unwrap_err().to_string();
        assert!(
            err.contains("200 operations, over the limit of 127"),
            "{err}"
        );
        let big = vec![put("k", limits.max_value_bytes + 1)];
        let err = validate(&big, &limits).unwrap_err().to_string();
        assert!(err.contains("over the limit of 524288 bytes"), "{err}");
        let dup = vec![put("k", 1), put("k", 2)];
        assert!(
            validate(&dup, &limits)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(validate(&[], &limits).is_err());
        let heavy: Vec<_> = (0..3).map(|i| put(&format!("k{i}"), 300 * 1024)).collect();
        assert!(
            validate(&heavy, &limits)
                .unwrap_err()
                .to_string()
                .contains("over the limit of 614400 bytes")
        );
        assert!(validate(&[put("a//b", 1)], &limits).is_err());
    }

    #[test]
    fn groups_respect_the_op_limit() {
        let limits = Limits::default();
        let mut group = Group::new(limits);
        let mut taken = 0;
        for i in 0..200 {
            if group
                .offer(pending(vec![put(&format!("k{i}"), 8)]))
                .is_err()
            {
                break;
            }
            taken += 1;
        }
        // 127 writes plus the WAL entry make 128 operations.
        assert_eq!(taken, 127);
    }

    #[test]
    fn groups_respect_the_byte_limit() {
        let limits = Limits::default();
        let mut group = Group::new(limits);
        assert!(group.offer(pending(vec![put("a", 500 * 1024)])).is_ok());
        assert!(group.offer(pending(vec![put("b", 500 * 1024)])).is_err());
        assert_eq!(group.len(), 1);
    }

    #[test]
    fn the_same_key_never_shares_a_transaction() {
        let mut group = Group::new(Limits::default());
        assert!(group.offer(pending(vec![put("a", 1), put("b", 1)])).is_ok());
        assert!(group.offer(pending(vec![put("b", 2)])).is_err());
        assert!(group.offer(pending(vec![put("c", 2)])).is_ok());
    }

    #[test]
    fn a_full_size_request_always_fits_alone() {
        let limits = Limits::default();
        let ops: Vec<_> = (0..limits.max_batch_ops)
            .map(|i| {
                put(
                    &format!("k{i}"),
                    limits.max_batch_bytes / limits.max_batch_ops - 8,
                )
            })
            .collect();
        validate(&ops, &limits).unwrap();
        let bytes: usize = ops.iter().map(WriteOp::txn_bytes).sum();
        assert!(bytes <= limits.max_txn_bytes);
        assert!(Group::new(limits).offer(pending(ops)).is_ok());
    }
}
