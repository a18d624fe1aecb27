//! The secondary's follower: connect, heartbeat, stream the WAL, reconcile when needed.
//!
//! ```text
//!   connecting ──▶ stream-wals ◀──────────────┐
//!        ▲             │ refused: guard,      │ root matches the snapshot:
//!        │             │ WAL gone, stream     │ store (stream, index) applied
//!        │             ▼                      │
//!   (backoff) ◀── merkle-diff ──▶ merkle-sync ┘
//! ```
//!
//! Streaming: consecutive entries are merged (the last write to a key wins) into transactions
//! that stay within one transaction's limits, each committed with the applied record of its last
//! entry; after each, the local merkle root must equal the root that entry carries, or the
//! follower reconciles (the applying is in [`apply`](super::apply)). Messages keep being read while a transaction is in flight (up to
//! [`MAX_BUFFERED_BYTES`]), and whatever arrived meanwhile is merged into the next one: when
//! the local etcd stalls, the entries that queued behind the stall are applied together instead
//! of one transaction each, so the backlog clears in one round trip.
//!
//! Reconciling: two round trips against one primary snapshot locate the conflicting subpages;
//! the primary's keys in them are fetched and written where they differ, local keys the
//! primary lacks there are deleted, and once the local root equals the snapshot's, the
//! snapshot's index is stored as applied and streaming resumes from it.
//!
//! Only the cluster's active node follows: a node that loses the write fence (another node took
//! it) ends its session and waits, idle, until it holds the fence again.
//!
//! Any other failure (the primary unreachable, a call timing out, the heartbeat failing three
//! times in a row) ends the session; the follower waits with bounded exponential backoff and
//! connects again. Reads keep being served throughout: the follower only ever adds writes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferry_proto::replication as pb;
use ferry_proto::replication::replication_client::ReplicationClient;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::Replication;
use super::applied::Applied;
use super::apply::{apply_entries, local_path, shipped_local_path};
use super::definition::PRIMARY_ADDRS_PATH;
use super::resolver::{self, Targets};
use super::transport::{CONNECT_TIMEOUT, TlsMaterial, client};
use crate::error::StoreError;
use crate::etcd::get;
use crate::wal::record::WalEntry;

/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the follower checks that this node still holds the write fence.
const FENCE_POLL: Duration = Duration::from_millis(500);
/// Longest wait between connection attempts while the primary's standbys answer and its active
/// node does not (a standby takes over within one fence lease).
const STANDBY_RETRY: Duration = Duration::from_millis(500);
/// Longest a unary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeats missed in a row before the session is dropped.
const MAX_MISSED_HEARTBEATS: u32 = 3;
/// Most bytes of WAL entries read ahead of the transaction in flight; reading waits beyond it.
const MAX_BUFFERED_BYTES: usize = 16 * 1024 * 1024;

pub(super) type Client = ReplicationClient<Channel>;

/// Why a session ended.
#[derive(Debug)]
pub(super) enum End {
    Stopped,
    Failed(String),
    /// No target is the primary's active node, but some answered as its performance standbys:
    /// the primary is changing active node, so the next try comes sooner ([`STANDBY_RETRY`]).
    AwaitingActive(String),
}

impl From<Status> for End {
    fn from(s: Status) -> Self {
        End::Failed(format!("{}: {}", code_name(s.code()), s.message()))
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        End::Failed(format!("local storage: {e}"))
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Unavailable => "primary unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::PermissionDenied => "refused by the primary",
        Code::FailedPrecondition => "primary not ready",
        _ => "replication call failed",
    }
}

/// Follows the primary until `stop`.
pub async fn run(replication: Arc<Replication>, mut stop: watch::Receiver<bool>) {
    let Some(definition) = replication.definition() else {
        return;
    };
    drop(definition);
    let targets = Arc::new(Targets::default());
    let resolver = {
        let (replication, targets, stop) = (replication.clone(), targets.clone(), stop.clone());
        crate::tasks::spawn_restarting("resolver", move || {
            resolver::run(replication.clone(), targets.clone(), stop.clone())
        })
    };
    // The resolver lives as long as this follower, however it ends.
    let _resolver = AbortOnDrop(resolver);
    let mut backoff = BACKOFF_MIN;
    loop {
        // Only the cluster's active node follows: a node that lost the write fence to another
        // (which follows now) waits until it holds it again, if ever.
        if !replication.core.fence.is_held() {
            set_state(&replication, "idle", "idle");
            tokio::select! {
                _ = tokio::time::sleep(FENCE_POLL) => continue,
                _ = stop.changed() => {
                    set_state(&replication, "idle", "shutdown");
                    return;
                }
            }
        }
        set_state(&replication, "connecting", "connecting");
        let started = Instant::now();
        // Read at each attempt: the client certificate is renewed, the member CAs change.
        let Some(tls) = replication
            .definition()
            .as_ref()
            .map(TlsMaterial::to_primary)
        else {
            return;
        };
        let (reason, wait) = match session(&replication, &tls, &targets, &mut stop).await {
            End::Stopped => {
                set_state(&replication, "idle", "shutdown");
                return;
            }
            End::Failed(reason) => {
                // A session that ran a while resets the backoff.
                if started.elapsed() > BACKOFF_MAX * 2 {
                    backoff = BACKOFF_MIN;
                }
                (reason, backoff)
            }
            End::AwaitingActive(reason) => (reason, backoff.min(STANDBY_RETRY)),
        };
        warn!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "replication session ended");
        {
            let mut s = replication.follower_status();
            s.last_error = Some(reason);
            s.connection_state = "transient_failure";
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                set_state(&replication, "idle", "shutdown");
                return;
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn set_state(replication: &Replication, state: &'static str, connection: &'static str) {
    let mut s = replication.follower_status();
    s.state = state;
    s.connection_state = connection;
}

/// One connection to the primary: connect, then stream and reconcile until something fails.
async fn session(
    replication: &Arc<Replication>,
    tls: &TlsMaterial,
    targets: &Targets,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let (address, client) = match connect(replication, tls, targets).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    {
        let mut s = replication.follower_status();
        s.connected_to = address.clone();
        s.connection_state = "ready";
        s.last_error = None;
    }
    *replication.primary.lock().expect("primary lock poisoned") =
        Some((address.clone(), client.clone()));
    let (lost_tx, mut lost) = watch::channel(false);
    let heartbeat = crate::tasks::spawn_reported(
        "heartbeats",
        heartbeats(
            replication.clone(),
            client.clone(),
            address.clone(),
            lost_tx,
        ),
    );
    // However the session ends, aborted included: no forwarding to it, no heartbeats.
    let _ended = SessionGuard {
        replication: replication.clone(),
        heartbeat: heartbeat.abort_handle(),
    };
    let result = tokio::select! {
        end = follow(replication, client) => end,
        _ = fence_lost(replication) => End::Failed("this node lost the write fence: its successor follows the primary".into()),
        _ = stop.changed() => End::Stopped,
        _ = lost.changed() => End::Failed(format!("lost the primary at {address}: heartbeats failed")),
    };
    result
}

/// Resolves once this node no longer holds the cluster's write fence.
async fn fence_lost(replication: &Replication) {
    while replication.core.fence.is_held() {
        tokio::time::sleep(FENCE_POLL).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ends a session's side effects when the session ends, however it ends.
struct SessionGuard {
    replication: Arc<Replication>,
    heartbeat: tokio::task::AbortHandle,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.replication
            .primary
            .lock()
            .expect("primary lock poisoned")
            .take();
    }
}

/// Tries every target at once with a heartbeat; the one that answers is the primary's active
/// node.
/// Most primary addresses tried at once.
const MAX_PARALLEL_CONNECTS: usize = 16;

async fn connect(
    replication: &Replication,
    tls: &TlsMaterial,
    targets: &Targets,
) -> Result<(String, Client), End> {
    let mut list = targets.list();
    if list.is_empty() {
        list = resolver::candidates(replication);
    }
    // Every address at once: only the active node answers a heartbeat (standbys refuse it),
    // so the first answer wins, and a dead address costs no more than the others' time.
    let mut attempts: FuturesUnordered<_> = list
        .iter()
        .take(MAX_PARALLEL_CONNECTS)
        .map(|address| async move {
            let mut c = client(address, tls).map_err(|e| (false, format!("{address}: {e:#}")))?;
            match timeout(c.heartbeat(heartbeat_request(replication))).await {
                Ok(reply) => Ok((address, c, reply.into_inner())),
                Err(status) => Err((
                    ferry_proto::is_standby_refusal(&status),
                    format!("{address}: {}", status.message()),
                )),
            }
        })
        .collect();
    let mut errors = Vec::new();
    let mut standbys = 0;
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok((address, c, reply)) => {
                note_heartbeat(replication, reply, Duration::ZERO, true).await;
                info!(primary = %address, "connected to the primary");
                return Ok((address.clone(), c));
            }
            Err((standby, error)) => {
                standbys += usize::from(standby);
                errors.push(error);
            }
        }
    }
    targets.report_none_work();
    let reason = format!(
        "no primary address works: {}",
        if errors.is_empty() {
            "none known".to_string()
        } else {
            errors.join("; ")
        }
    );
    Err(if standbys > 0 {
        End::AwaitingActive(reason)
    } else {
        End::Failed(reason)
    })
}

pub(super) async fn timeout<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<tonic::Response<T>, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

pub(super) fn secondary_id(replication: &Replication) -> String {
    replication
        .definition()
        .map(|d| d.secondary_id)
        .unwrap_or_default()
}

fn heartbeat_request(replication: &Replication) -> pb::HeartbeatRequest {
    let status = replication.follower_status();
    pb::HeartbeatRequest {
        secondary_id: secondary_id(replication),
        cluster_addr: replication.config.cluster_addr.clone(),
        // The epoch of this replication set as far as we know it (our own stream's epoch may
        // come from an earlier life of this cluster and means nothing to this primary).
        epoch: status.primary_epoch,
        last_remote_wal: status.last_remote_wal,
        sent_at_ms: super::unix_now_ms(),
        epoch_proof: replication.epoch_proof(),
    }
}

/// Records a heartbeat reply; persists and logs the primary's addresses when they changed.
async fn note_heartbeat(
    replication: &Replication,
    reply: pb::HeartbeatResponse,
    took: Duration,
    first: bool,
) {
    let changed = {
        let mut s = replication.follower_status();
        s.last_heartbeat = Some(SystemTime::now());
        s.last_heartbeat_duration_ms = took.as_millis() as u64;
        s.primary_last_wal = reply.last_wal;
        s.primary_epoch = reply.epoch;
        let changed = s.known_primary_cluster_addrs != reply.cluster_addrs;
        s.known_primary_cluster_addrs = reply.cluster_addrs.clone();
        changed
    };
    if changed {
        let gateway = &replication.gateway;
        let value = serde_json::to_vec(&reply.cluster_addrs).expect("addresses serialise");
        if let Err(e) = gateway
            .write(vec![gateway.op(PRIMARY_ADDRS_PATH.into(), Some(value))])
            .await
        {
            warn!(error = %e, "failed to store the primary's cluster addresses");
        }
    }
    // Relayed to a former primary in this cluster's heartbeats, should it still run.
    if let Some(proof) = reply.epoch_proof.clone() {
        replication.keep_epoch_proof(proof);
    }
    // A member joined or left: trust its CA, or no longer.
    let members_changed = !reply.member_cas_pem.is_empty()
        && replication
            .definition()
            .is_some_and(|d| d.member_cas_pem != reply.member_cas_pem);
    if members_changed {
        let members = reply.member_cas_pem.clone();
        if let Err(e) = replication
            .store_definition(|d| d.member_cas_pem = members)
            .await
        {
            warn!(error = %e, "failed to store the member CA certificates");
        }
    }
    if changed || first {
        info!(known_primary_cluster_addrs = ?reply.cluster_addrs, "replication: successful heartbeat");
    } else {
        debug!(known_primary_cluster_addrs = ?reply.cluster_addrs, "replication: successful heartbeat");
    }
}

/// Heartbeats the primary every interval; raises `lost` after too many misses in a row.
async fn heartbeats(
    replication: Arc<Replication>,
    mut client: Client,
    address: String,
    lost: watch::Sender<bool>,
) {
    let mut missed = 0;
    let mut ticker = tokio::time::interval(replication.config.heartbeat_interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        match timeout(client.heartbeat(heartbeat_request(&replication))).await {
            Ok(reply) => {
                missed = 0;
                note_heartbeat(&replication, reply.into_inner(), started.elapsed(), false).await;
            }
            Err(status) => {
                missed += 1;
                warn!(primary = %address, missed, error = %status.message(), "replication heartbeat failed");
                if missed >= MAX_MISSED_HEARTBEATS {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

/// Streams while the primary accepts our position; reconciles when it does not.
async fn follow(replication: &Replication, mut client: Client) -> End {
    loop {
        let applied = match load_applied(replication).await {
            Ok(a) => a,
            Err(e) => return e,
        };
        match stream(replication, &mut client, applied).await {
            Err(End::Failed(reason)) if reason.starts_with(REFUSED) => {
                info!(reason = %reason, "cannot stream from the current position; reconciling");
                if let Err(e) = super::reconcile::reconcile(replication, &mut client).await {
                    return e;
                }
            }
            Err(e) => return e,
            Ok(()) => return End::Failed("the primary ended the WAL stream".into()),
        }
    }
}

/// The prefix of a failure that reconciling resolves.
const REFUSED: &str = "refused: ";

pub(super) fn refused(reason: impl std::fmt::Display) -> End {
    End::Failed(format!("{REFUSED}{reason}"))
}

async fn load_applied(replication: &Replication) -> Result<Option<Applied>, End> {
    let core = &replication.core;
    let found = get(&mut core.kv(), &core.keyspace.applied()).await?;
    found
        .map(|kv| {
            Applied::decode(kv.value())
                .map_err(|e| End::Failed(format!("the applied record is corrupt: {e}")))
        })
        .transpose()
}

/// Streams WAL entries after `applied` and applies them, until the stream ends or fails.
async fn stream(
    replication: &Replication,
    client: &mut Client,
    applied: Option<Applied>,
) -> Result<(), End> {
    let core = &replication.core;
    let Some(mut position) = applied else {
        return Err(refused("nothing applied yet"));
    };
    let request = pb::StreamWalsRequest {
        secondary_id: secondary_id(replication),
        stream_id: position.stream_id.0.to_vec(),
        after_index: position.index,
        guard: core.index().root().to_vec(),
        epoch: replication
            .follower_status()
            .primary_epoch
            .max(position.epoch),
    };
    info!(after = position.index, "requesting WAL stream");
    let mut messages = match timeout(client.stream_wals(request)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::FailedPrecondition => return Err(refused(s.message())),
        Err(s) => return Err(s.into()),
    };
    {
        let mut s = replication.follower_status();
        s.state = "stream-wals";
        s.last_remote_wal = position.index;
    }
    let mut buffered = Buffered::default();
    loop {
        if buffered.entries.is_empty() {
            if let Some(end) = buffered.end.take() {
                return end;
            }
            buffered.read(replication, &mut messages).await;
            continue;
        }
        let entries = std::mem::take(&mut buffered.entries);
        buffered.bytes = 0;
        let apply = apply_entries(replication, &mut position, &entries);
        tokio::pin!(apply);
        loop {
            tokio::select! {
                biased;
                applied = &mut apply => {
                    applied?;
                    break;
                }
                _ = buffered.read(replication, &mut messages),
                    if buffered.end.is_none() && buffered.bytes < MAX_BUFFERED_BYTES => {}
            }
        }
    }
}

/// WAL entries read from the stream and not yet applied, and how the stream ended, if it did.
#[derive(Default)]
struct Buffered {
    entries: Vec<WalEntry>,
    bytes: usize,
    end: Option<Result<(), End>>,
}

impl Buffered {
    /// Reads one message into the buffer, or notes how the stream ended. Cancel-safe: the
    /// stream keeps a partly received message until the next call.
    async fn read(
        &mut self,
        replication: &Replication,
        messages: &mut tonic::Streaming<pb::StreamWalsResponse>,
    ) {
        let message = match messages.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return self.end = Some(Ok(())),
            Err(s) if s.code() == Code::FailedPrecondition => {
                return self.end = Some(Err(refused(s.message())));
            }
            Err(s) => return self.end = Some(Err(s.into())),
        };
        replication.follower_status().primary_last_wal = message.primary_last_wal;
        debug!(
            entries = message.entries.len(),
            primary_last_wal = message.primary_last_wal,
            "WAL message received"
        );
        for raw in &message.entries {
            match WalEntry::decode(raw) {
                Ok(entry) => {
                    if let Some(key) =
                        local_path(replication, entry.ops.iter().map(|op| op.key.as_str()))
                    {
                        self.end = Some(Err(shipped_local_path(key, Some(entry.index))));
                        return;
                    }
                    self.bytes += raw.len();
                    self.entries.push(entry);
                }
                Err(e) => {
                    self.end = Some(Err(End::Failed(format!(
                        "the primary sent a corrupt WAL entry: {e}"
                    ))));
                    return;
                }
            }
        }
    }
}

/// Used by `control`: checks a primary answers, and returns its heartbeat reply.
pub async fn probe(
    address: &str,
    tls: &TlsMaterial,
    secondary_id: &str,
) -> Result<pb::HeartbeatResponse, Status> {
    let mut c = client(address, tls).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
    let call = c.heartbeat(pb::HeartbeatRequest {
        secondary_id: secondary_id.to_owned(),
        ..Default::default()
    });
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the primary at {address} did not answer within {}s",
            (CONNECT_TIMEOUT * 2).as_secs()
        ))),
    }
}
