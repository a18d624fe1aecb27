//! Group commit, the pure part: limits, validation, and which requests share a transaction.
//!
//! Every write (a put, a delete or an atomic batch) is validated at the edge against [`Limits`]
//! and queued for the committer (see `committer`), which packs queued requests into [`Group`]s:
//! one etcd transaction each. A group respects etcd's limits: at most `max-txn-ops` operations
//! (its WAL entry included) and a bounded request size. Two writes to the same key never share a
//! transaction (etcd refuses that), so the later one waits for the next group.

use std::collections::HashSet;

use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::path::{PathClass, validate_key};

/// Slots of every transaction kept for other than the writes: the WAL entry, and on a
/// secondary the record of the primary's index applied. A primary's group leaves the second
/// free too, so that a secondary can apply any of its WAL entries in one transaction.
pub const RESERVED_OPS: usize = 2;

/// etcd's default `--max-txn-ops`. Every WAL entry fits a transaction of this many operations,
/// whatever the primary's own etcd allows, so that any secondary can apply any entry in one
/// transaction; a secondary whose etcd allows more merges consecutive entries up to its limit.
pub const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;

/// Size limits on keys, values, batches and transactions.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Most operations in one write request, and in one group of them (one WAL entry): etcd's
    /// default limit less [`RESERVED_OPS`], or less when this cluster's etcd allows fewer.
    pub max_batch_ops: usize,
    /// Most keys a secondary writes in one transaction when it applies the primary's entries:
    /// this cluster's etcd limit less [`RESERVED_OPS`]. Fewer, larger transactions are what
    /// makes catch-up fast: etcd's cost per transaction dwarfs its cost per key.
    pub max_apply_ops: usize,
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
            max_batch_ops: max_txn_ops.min(ETCD_DEFAULT_MAX_TXN_OPS) - RESERVED_OPS,
            max_apply_ops: max_txn_ops - RESERVED_OPS,
            max_batch_bytes,
            max_txn_ops,
            max_txn_bytes: 2 * max_batch_bytes + 64 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(1024, 512 * 1024, ETCD_DEFAULT_MAX_TXN_OPS)
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
    pub fn txn_bytes(&self) -> usize {
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

/// Who asked for a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A client of the storage API: refused on replicated paths unless this cluster is writable.
    Client,
    /// The replication applier of a secondary: writes from the primary, plus the record of what
    /// was applied (`meta/applied`), stored in the same transaction.
    Primary { applied: Option<Vec<u8>> },
}

/// A queued write request and where to send its outcome: the WAL index that carries it (0 when
/// it touched only local paths).
#[derive(Debug)]
pub struct Pending {
    pub ops: Vec<WriteOp>,
    pub source: Source,
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
            ops: RESERVED_OPS,
            bytes: 0,
            keys: HashSet::new(),
        }
    }

    /// Adds `request` if it fits; gives it back otherwise. An empty group takes any valid request
    /// (and a secondary's merged apply, which may be larger than a client's).
    pub fn offer(&mut self, request: Pending) -> Result<(), Pending> {
        let ops = request.ops.len();
        let bytes: usize = request.ops.iter().map(WriteOp::txn_bytes).sum();
        let fits = self.requests.is_empty()
            || (self.ops + ops <= self.limits.max_batch_ops + RESERVED_OPS
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

    /// Whether `request` writes a key in `keys`.
    pub fn touches(request: &Pending, keys: &HashSet<String>) -> bool {
        request.ops.iter().any(|op| keys.contains(&op.key))
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
            source: Source::Client,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn validation_names_the_limit() {
        let limits = Limits::default();
        let too_many: Vec<_> = (0..200).map(|i| put(&format!("k{i}"), 1)).collect();
        let err = validate(&too_many, &limits).unwrap_err().to_string();
        assert!(
            err.contains("200 operations, over the limit of 126"),
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
        // 126 writes, the WAL entry and the applied record slot make 128 operations.
        assert_eq!(taken, 126);
    }

    #[test]
    fn wal_entries_stay_within_etcds_default_limit_when_etcd_allows_more() {
        let limits = Limits::new(1024, 512 * 1024, 1024);
        assert_eq!(limits.max_batch_ops, 126);
        assert_eq!(limits.max_apply_ops, 1022);
        let too_many: Vec<_> = (0..127).map(|i| put(&format!("k{i}"), 1)).collect();
        assert!(validate(&too_many, &limits).is_err());
        let mut group = Group::new(limits);
        let taken = (0..200)
            .take_while(|i| group.offer(pending(vec![put(&format!("k{i}"), 8)])).is_ok())
            .count();
        assert_eq!(taken, 126);
        // A secondary's merged apply travels alone, at its own etcd's size.
        let merged: Vec<_> = (0..limits.max_apply_ops)
            .map(|i| put(&format!("m{i}"), 8))
            .collect();
        assert!(Group::new(limits).offer(pending(merged)).is_ok());
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
