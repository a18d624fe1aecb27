//! The committer: one task that turns queued writes into pipelined etcd transactions.
//!
//! It takes the first waiting request and every other queued one that fits (see
//! [`crate::commit::Group`]) and sends them as one transaction:
//!
//! * compares: the fence key's mod revision is the one this node last wrote; the group's WAL
//!   slot `n` is empty; and WAL entry `n - 1` exists, so that etcd applies WAL entries strictly
//!   in index order;
//! * operations: every key update, plus exactly one WAL entry holding the replicated operations
//!   and the merkle root after them (none when the group touched only local paths).
//!
//! Up to [`MAX_IN_FLIGHT`] transactions are under way at once (one, as measured best on etcd
//! 3.4). Under load, a group waits for the writers the previous transaction answered, no longer
//! than that transaction took (and at most `MAX_LINGER`), so that every active writer rides in
//! each transaction instead of two half-size groups alternating. Each group's merkle root is
//! staged on top of the groups still in flight
//! ([`MerkleIndex::stage_on`](crate::merkle::MerkleIndex::stage_on)); the index itself only ever
//! holds committed state, because outcomes are settled strictly in the order groups left. A group
//! never writes a key that a group in flight writes, so reordering can change nothing visible.
//!
//! A small transaction also carries a few dirty merkle subpage records (see `flusher`), taken
//! from the index as it stands at launch, so each reflects the last WAL entry committed: one
//! of `n` writes carries up to `records_per_txn - n` records. Under light load that keeps the
//! index flushed without any transactions of its own, which would otherwise queue in etcd
//! ahead of commits. Under heavy load groups grow, carry nothing, and the flusher's rounds
//! write each subpage once however often it changed, which costs etcd less. While such a
//! transaction is in flight the committer holds the flush gate ([`Core::flush_gate`]), taken
//! only if free, so records of one subpage reach etcd in the order they were taken and no flush
//! round writes a checkpoint past a record that may yet fail. When it fails, its subpages are
//! marked dirty again and the gate is held until the resynchronisation below has rotated the
//! fence, so that a transaction whose outcome was unknown cannot land after a newer record of
//! the same subpage.
//!
//! Outcomes, settled oldest first:
//! * committed: the staged changes enter the index, and every write in the group is acknowledged;
//! * refused while the fence is still ours: etcd evaluated the group before its predecessor's WAL
//!   entry existed; it is sent again (a bounded number of times);
//! * anything else (fence lost, refused for good, outcome unknown): the group's writes get the
//!   error, every later group is settled as it lands, and once the window is empty the committer
//!   rotates the fence (so no transaction sent before can still commit) and brings the index
//!   back in step from the WAL in etcd.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::commit::{Group, Pending, Source};
use crate::core::WriteMode;
use crate::core::{Core, TXN_TIMEOUT, TxnOutcome, txn_response};
use crate::error::StoreError;
use crate::flusher::record_put;
use crate::merkle::{Change, Staged};
use crate::path::PathClass;
use crate::wal::record::{WalEntry, WalOp};

/// Most transactions under way at once. Measured on etcd 3.4 with two cores, more than one loses:
/// etcd evaluates concurrent transactions in no fixed order, so a later group often overtakes
/// its predecessor, fails the WAL-order compare and must be sent again.
pub const MAX_IN_FLIGHT: usize = 1;
/// Longest a group waits for the writers the previous transaction just answered. The wait is
/// also bounded by how long that transaction took: a writer left behind would wait at least
/// that long for the next one, so under light load, where commits are quick, groups hardly wait.
const MAX_LINGER: Duration = Duration::from_millis(3);
/// How often a group refused for ordering is sent again before it fails.
const MAX_RESENDS: u32 = 8;
/// How often the committer asks etcd whether the fence is still ours before it gives up.
const FENCE_CHECKS: u32 = 3;
/// Longest one of those checks may take.
const FENCE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a pause may hold the committer before it resumes by itself.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Most merkle leaves the subpage records carried by one transaction hold: 32 KiB of hashes,
/// well inside the room etcd's request limit leaves above a full group.
const MAX_CARRIED_LEAVES: usize = 1024;

/// What the committer is asked to do.
#[derive(Debug)]
pub enum Command {
    Write(Pending),
    /// Settle every transaction in flight, answer `drained`, then commit nothing until `resume`
    /// fires or is dropped.
    Pause {
        drained: oneshot::Sender<()>,
        resume: oneshot::Receiver<()>,
    },
}

/// A group's WAL entry: its index, cumulative bytes through it, and its encoded length.
#[derive(Clone, Copy, Debug)]
struct EntryMeta {
    index: u64,
    cumulative: u64,
    len: u64,
}

/// Merkle subpage records a transaction carries, and the flush gate held until it settles.
struct Records {
    subpages: Vec<u32>,
    gate: OwnedMutexGuard<()>,
}

/// One transaction under way.
struct Flight {
    requests: Vec<Pending>,
    keys: HashSet<String>,
    staged: Option<Staged>,
    entry: Option<EntryMeta>,
    /// The group's WAL entry as written, for the shippers' cache.
    encoded: Option<Arc<[u8]>>,
    /// Merkle subpage records carried along, if any.
    records: Option<Records>,
    /// Kept to send again only when groups can overtake one another (more than one in flight).
    txn: Option<Txn>,
    sends: u32,
    handle: JoinHandle<TxnOutcome>,
    sent_at: std::time::Instant,
}

/// The committer task's state.
pub struct Committer {
    core: Arc<Core>,
    queue: mpsc::Receiver<Command>,
    window: VecDeque<Flight>,
    /// A command taken off the queue that could not be acted on yet.
    held: Option<Command>,
    /// Set when a group failed: later outcomes are only reported, and the index is resynchronised
    /// from etcd once the window is empty.
    diverged: bool,
    /// How many requests the next group should wait for: those the last settled transaction
    /// answered (their writers tend to come straight back) plus those queued then.
    expected: usize,
    /// How long the last committed transaction took, from sending to settling.
    last_commit: Duration,
    /// Most merkle subpage records one transaction carries.
    records_per_txn: usize,
    /// The flush gate of a failed transaction that carried records, held until the resync.
    failed_gate: Option<OwnedMutexGuard<()>>,
}

impl Committer {
    /// A committer taking writes from `queue`; a transaction of `n` writes carries up to
    /// `records_per_txn - n` dirty merkle subpages.
    pub fn new(core: Arc<Core>, queue: mpsc::Receiver<Command>, records_per_txn: usize) -> Self {
        Self {
            core,
            queue,
            window: VecDeque::new(),
            held: None,
            diverged: false,
            expected: 0,
            last_commit: Duration::ZERO,
            records_per_txn,
            failed_gate: None,
        }
    }

    /// Commits until `shutdown`, then settles what is queued and in flight.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            let command = match self.held.take() {
                Some(c) if self.window.len() < MAX_IN_FLIGHT => c,
                Some(c) => {
                    // The window is full: settle before launching what was held back.
                    self.held = Some(c);
                    self.settle_next().await;
                    continue;
                }
                None if self.window.is_empty() => tokio::select! {
                    c = self.queue.recv() => match c {
                        Some(c) => c,
                        None => return Ok(()),
                    },
                    _ = shutdown.changed() => {
                        // Stop taking requests; settle the ones already queued.
                        self.queue.close();
                        continue;
                    }
                },
                None if self.window.len() < MAX_IN_FLIGHT => {
                    let front = self.window.front_mut().expect("window is not empty");
                    tokio::select! {
                        biased;
                        outcome = &mut front.handle => {
                            self.settle_front(outcome).await;
                            continue;
                        }
                        c = self.queue.recv() => match c {
                            Some(c) => c,
                            None => {
                                self.drain().await;
                                return Ok(());
                            }
                        },
                    }
                }
                None => {
                    self.settle_next().await;
                    continue;
                }
            };
            match command {
                Command::Pause { drained, resume } => {
                    self.drain().await;
                    let _ = drained.send(());
                    let _ = tokio::time::timeout(MAX_PAUSE, resume).await;
                }
                Command::Write(first) => {
                    if self.in_flight_keys_touched(&first) {
                        // Wait for the earlier write to the same key to settle first.
                        self.held = Some(Command::Write(first));
                        self.settle_next().await;
                        continue;
                    }
                    let group = self.gather(first).await;
                    self.launch(group);
                }
            }
        }
    }

    fn in_flight_keys_touched(&self, request: &Pending) -> bool {
        self.window.iter().any(|f| Group::touches(request, &f.keys))
    }

    /// `first` and every queued request that fits with it and conflicts with nothing in flight.
    ///
    /// With nothing in flight, the group also waits (up to the last transaction's duration, at
    /// most [`MAX_LINGER`]) for the writers the last transaction answered: without that, a busy
    /// sidecar settles into two half-size groups that alternate, each writer waiting for two
    /// transactions instead of riding in every one. It waits for all of them: etcd's cost is
    /// mostly per transaction, so a full group is worth the wait (measured: groups of 63 instead
    /// of 40 at 64 closed-loop writers, and about 15% more throughput).
    async fn gather(&mut self, first: Pending) -> Vec<Pending> {
        let mut group = Group::new(self.core.limits);
        group
            .offer(first)
            .expect("an empty group takes any request");
        let wanted = if self.window.is_empty() {
            std::mem::take(&mut self.expected)
        } else {
            0
        };
        let deadline = tokio::time::Instant::now() + self.last_commit.min(MAX_LINGER);
        loop {
            let command = match self.queue.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Empty) if group.len() < wanted => {
                    match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                        Ok(Some(c)) => c,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            let next = match command {
                Command::Write(next) if !self.in_flight_keys_touched(&next) => next,
                other => {
                    self.held = Some(other);
                    break;
                }
            };
            if let Err(next) = group.offer(next) {
                self.held = Some(Command::Write(next));
                break;
            }
        }
        group.into_requests()
    }

    /// Builds the group's transaction, staged on the groups in flight, and sends it.
    fn launch(&mut self, requests: Vec<Pending>) {
        let core = &self.core;
        let ks = &core.keyspace;
        let mode = core.write_mode();
        let stalled = core.stall.suspected();
        let requests: Vec<Pending> = requests
            .into_iter()
            .filter(|r| !r.reply.is_closed())
            .filter_map(|r| match refusal(&r, mode, stalled) {
                Some(error) => {
                    let _ = r.reply.send(Err(error));
                    None
                }
                None => Some(r),
            })
            .collect();
        if requests.is_empty() {
            return;
        }
        let fence = match core.fence.compare() {
            Ok(f) => f,
            Err(e) => return reply_all(requests, Err(e)),
        };
        let mut ops = Vec::new();
        let mut wal_ops = Vec::new();
        let mut changes = Vec::new();
        let mut keys = HashSet::new();
        for op in requests.iter().flat_map(|r| &r.ops) {
            keys.insert(op.key.clone());
            ops.push(match &op.value {
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
        for request in &requests {
            if let Source::Primary {
                applied: Some(record),
            } = &request.source
            {
                ops.push(TxnOp::put(ks.applied(), record.clone(), None));
            }
        }
        let mut compares = vec![fence];
        let (mut staged, mut entry, mut encoded) = (None, None, None);
        if !wal_ops.is_empty() {
            let (last, cumulative) = match self.window.iter().rev().find_map(|f| f.entry) {
                Some(e) => (e.index, e.cumulative),
                None => {
                    let pos = core.wal();
                    (pos.last, pos.cumulative_last)
                }
            };
            let pending: Vec<&Staged> = self
                .window
                .iter()
                .filter_map(|f| f.staged.as_ref())
                .collect();
            let s = core.index().stage_on(&pending, &changes);
            let stream = core.stream();
            let len = WalEntry::encoded_len(&wal_ops) as u64;
            let index = last + 1;
            let record = WalEntry {
                index,
                stream_id: stream.stream_id,
                epoch: stream.epoch,
                merkle_root: s.root(),
                cumulative_bytes: cumulative + len,
                ops: wal_ops,
            };
            compares.push(Compare::create_revision(ks.wal(index), CompareOp::Equal, 0));
            if last > 0 {
                compares.push(Compare::create_revision(
                    ks.wal(last),
                    CompareOp::Greater,
                    0,
                ));
            }
            let bytes = record.encode();
            encoded = Some(Arc::from(bytes.as_slice()));
            ops.push(TxnOp::put(ks.wal(index), bytes, None));
            entry = Some(EntryMeta {
                index,
                cumulative: cumulative + len,
                len,
            });
            staged = Some(s);
        }
        let writes = requests.iter().map(|r| r.ops.len()).sum();
        let records = self.carry_records(&mut ops, writes);
        let txn = Txn::new().when(compares).and_then(ops);
        // With one transaction in flight nothing can overtake it: keep no copy of its values.
        let (txn, handle) = if MAX_IN_FLIGHT > 1 {
            (Some(txn.clone()), send(core, txn))
        } else {
            (None, send(core, txn))
        };
        self.window.push_back(Flight {
            requests,
            keys,
            staged,
            entry,
            encoded,
            records,
            txn,
            sends: 1,
            handle,
            sent_at: std::time::Instant::now(),
        });
    }

    /// Adds dirty merkle subpage records to the `ops` of a transaction of `writes` writes: up
    /// to [`Self::records_per_txn`] less `writes`, within etcd's limit, unless someone else
    /// holds the flush gate. (The caller already checked that the fence is ours.)
    fn carry_records(&self, ops: &mut Vec<TxnOp>, writes: usize) -> Option<Records> {
        let core = &self.core;
        let room = core
            .limits
            .max_txn_ops
            .saturating_sub(ops.len())
            .min(self.records_per_txn.saturating_sub(writes));
        if room == 0 {
            return None;
        }
        let (gate, taken, lsn) = {
            let mut index = core.index();
            if index.dirty_count() == 0 {
                return None;
            }
            let gate = core.flush_gate.clone().try_lock_owned().ok()?;
            let taken = index.take_next_dirty(room, MAX_CARRIED_LEAVES);
            (gate, taken, index.lsn())
        };
        if taken.is_empty() {
            return None;
        }
        let subpages = taken.iter().map(|(subpage, _)| *subpage).collect();
        ops.extend(
            taken
                .into_iter()
                .map(|(subpage, leaves)| record_put(core, subpage, lsn, leaves).1),
        );
        Some(Records { subpages, gate })
    }

    /// Waits for the oldest transaction and settles it.
    async fn settle_next(&mut self) {
        if let Some(front) = self.window.front_mut() {
            let outcome = (&mut front.handle).await;
            self.settle_front(outcome).await;
        }
    }

    /// Settles every transaction in flight, then resynchronises if anything went wrong.
    async fn drain(&mut self) {
        while !self.window.is_empty() {
            self.settle_next().await;
        }
    }

    /// Settles the oldest transaction, whose task finished with `outcome`.
    async fn settle_front(&mut self, outcome: Result<TxnOutcome, tokio::task::JoinError>) {
        let mut flight = self.window.pop_front().expect("a transaction in flight");
        debug!(
            etcd_us = flight.sent_at.elapsed().as_micros() as u64,
            requests = flight.requests.len(),
            wal = flight.entry.map_or(0, |e| e.index),
            "transaction settled"
        );
        let result = match outcome.map(txn_response) {
            Ok(Ok(resp)) if resp.succeeded() => Ok(()),
            Ok(Ok(_)) => Err(None),
            Ok(Err(e)) => Err(Some(e)),
            Err(e) => Err(Some(StoreError::OutcomeUnknown(format!(
                "the transaction task failed: {e}"
            )))),
        };
        // A refusal is definite: etcd evaluated the group and wrote nothing. Whether the fence
        // is still ours says why, so it is checked afresh (a node that slept past its lease
        // learns here that it lost the fence, before its keep-alive task has said so).
        let refused_with_fence = match result {
            Err(None) => Some(self.fence_is_ours().await),
            _ => None,
        };
        match result {
            Ok(()) => self.committed(flight),
            Err(None)
                if !self.diverged
                    && flight.txn.is_some()
                    && flight.sends <= MAX_RESENDS
                    && matches!(refused_with_fence, Some(Ok(true))) =>
            {
                // Evaluated before its predecessor's WAL entry existed: send it again, first.
                debug!(index = ?flight.entry.map(|e| e.index), "resending a transaction that overtook its predecessor");
                flight.sends += 1;
                let txn = flight.txn.clone().expect("checked above");
                flight.handle = send(&self.core, txn);
                self.window.push_front(flight);
            }
            Err(reason) => {
                let error = reason.unwrap_or_else(|| match refused_with_fence {
                    Some(Ok(false)) => self.core.fence.lost_error(),
                    Some(Err(e)) => StoreError::Unavailable(format!(
                        "the write was refused and the write fence could not be checked: {e}"
                    )),
                    _ if !self.core.fence.is_held() => self.core.fence.lost_error(),
                    _ => StoreError::Unavailable("an earlier write in the pipeline failed".into()),
                });
                self.diverged = true;
                if let Some(records) = flight.records.take() {
                    let mut index = self.core.index();
                    for subpage in records.subpages {
                        index.mark_dirty(subpage);
                    }
                    self.failed_gate = Some(records.gate);
                }
                reply_all(flight.requests, Err(error));
            }
        }
        if self.window.is_empty() && self.diverged {
            self.resync().await;
        }
    }

    /// Whether the fence is still ours, asked of etcd (a few times, as one slow answer after a
    /// pause must not decide it); marks it lost when it is not.
    async fn fence_is_ours(&self) -> Result<bool, StoreError> {
        let mut last = None;
        for _ in 0..FENCE_CHECKS {
            match tokio::time::timeout(
                FENCE_CHECK_TIMEOUT,
                self.core.fence.verify(&self.core.client),
            )
            .await
            {
                Ok(Ok(ours)) => return Ok(ours),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(StoreError::Unavailable(
                        "etcd did not answer the write fence check in time".into(),
                    ))
                }
            }
        }
        Err(last.expect("checked at least once"))
    }

    /// A transaction committed: apply it to the index (unless a resync will) and acknowledge.
    fn committed(&mut self, flight: Flight) {
        let index = flight.entry.map_or(0, |e| e.index);
        self.expected = flight.requests.len() + self.queue.len() + usize::from(self.held.is_some());
        self.last_commit = flight.sent_at.elapsed();
        if let (false, Some(entry)) = (self.diverged, flight.entry) {
            {
                let mut merkle = self.core.index();
                merkle.commit(flight.staged.expect("staged with the entry"));
                merkle.set_lsn(entry.index);
            }
            if let Some(encoded) = flight.encoded {
                self.core
                    .recent
                    .lock()
                    .expect("recent entries lock poisoned")
                    .push(entry.index, encoded);
            }
            self.core
                .update_wal(|pos| pos.append(entry.index, entry.cumulative, entry.len));
        }
        for request in flight.requests {
            let replicated = request
                .ops
                .iter()
                .any(|op| op.class == PathClass::Replicated);
            let _ = request.reply.send(Ok(if replicated { index } else { 0 }));
        }
    }

    /// After a failure: rotate the fence so no transaction sent before can still commit, then
    /// apply whatever the WAL in etcd holds beyond the index. Retries with bounded backoff until
    /// it succeeds or the fence is lost.
    async fn resync(&mut self) {
        let core = &self.core;
        let attempt = move || async move {
            core.fence.rotate(&core.client).await?;
            crate::recovery::catch_up(core).await
        };
        if let Some(applied) = core
            .retry_while_fenced("resynchronising with etcd", attempt)
            .await
        {
            warn!(
                applied,
                "resynchronised with etcd after a failed transaction"
            );
        }
        self.diverged = false;
        self.failed_gate = None;
    }
}

fn send(core: &Core, txn: Txn) -> JoinHandle<TxnOutcome> {
    let mut kv = core.kv();
    tokio::spawn(async move { tokio::time::timeout(TXN_TIMEOUT, kv.txn(txn)).await })
}

/// Why `request` may not commit while the cluster is in write `mode`, if it may not: the
/// check happens here, at launch, so that a role change followed by a pause (which drains what
/// was launched) leaves nothing behind that could still commit. `stalled`: this process was
/// frozen and has not yet checked for a newer primary (see `stall`).
fn refusal(request: &Pending, mode: WriteMode, stalled: bool) -> Option<StoreError> {
    let replicated = request
        .ops
        .iter()
        .any(|op| op.class == PathClass::Replicated);
    match (&request.source, mode) {
        (Source::Client, WriteMode::Open) if replicated && stalled => {
            Some(StoreError::Unavailable(
                "this node was frozen and is checking for a newer primary before it accepts replicated writes again; retry"
                    .into(),
            ))
        }
        (Source::Client, WriteMode::Open) => None,
        (Source::Client, WriteMode::Secondary) if replicated => Some(StoreError::ReadOnly(
            "this cluster is a performance secondary; replicated writes go to the primary".into(),
        )),
        (Source::Client, WriteMode::Closed) if replicated => Some(StoreError::ReadOnly(
            "this cluster was demoted or fenced by a newer primary; it accepts no replicated writes"
                .into(),
        )),
        (Source::Client, _) => None,
        (Source::Primary { .. }, WriteMode::Secondary) => None,
        (Source::Primary { .. }, _) => Some(StoreError::ReadOnly(
            "this cluster is no longer a secondary; the primary's writes are not applied".into(),
        )),
    }
}

fn reply_all(requests: Vec<Pending>, result: Result<u64, StoreError>) {
    for request in requests {
        let _ = request.reply.send(result.clone());
    }
}

/// The way into the committer: writes, and pauses for admin work that needs etcd and the index
/// to stand still together.
#[derive(Clone, Debug)]
pub struct CommitQueue(mpsc::Sender<Command>);

/// Holds the committer paused; it resumes when this is dropped.
#[derive(Debug)]
pub struct PauseGuard {
    _resume: oneshot::Sender<()>,
}

impl CommitQueue {
    /// A queue of `capacity` commands and its receiving end, for [`Committer::new`].
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self(tx), rx)
    }

    /// Queues a write, waiting at most `wait` for room.
    pub async fn write(&self, pending: Pending, wait: Duration) -> Result<(), StoreError> {
        match self.0.send_timeout(Command::Write(pending), wait).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                Err(StoreError::Unavailable(format!(
                    "write queue full ({} requests waiting) for {}s",
                    self.0.max_capacity(),
                    wait.as_secs()
                )))
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(StoreError::ShuttingDown),
        }
    }

    /// Waits until every transaction in flight is settled and holds the committer there.
    pub async fn pause(&self) -> Result<PauseGuard, StoreError> {
        let (drained_tx, drained) = oneshot::channel();
        let (resume, resume_rx) = oneshot::channel();
        self.0
            .send(Command::Pause {
                drained: drained_tx,
                resume: resume_rx,
            })
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        drained.await.map_err(|_| StoreError::ShuttingDown)?;
        Ok(PauseGuard { _resume: resume })
    }
}
