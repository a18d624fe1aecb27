//! The cluster's write fence: an etcd key under a lease that names the one node allowed to write.
//!
//! Every transaction the sidecar commits compares the fence key's mod revision with the one
//! this node last wrote. A node whose lease expired (it stalled, or lost etcd) and whose fence
//! another node then took can therefore never commit, even if it wakes up with writes in flight.
//! When a transaction's outcome is unknown the holder *rotates* the fence: it rewrites the key,
//! under the same lease, which gives it a new mod revision and so guarantees that the lost
//! transaction can no longer commit behind its back.
//!
//! A rotation is one transaction, so it cannot stop halfway (an earlier design deleted and
//! recreated the key, and an etcd error between the two left the key gone and the fence lost
//! until restart, just when etcd was flaky). A rotation whose own outcome is unknown is simply
//! tried again: the retry either finds the old revision and rewrites it, or finds the key
//! rewritten under this node's lease, which only this node's unanswered rotation can have
//! done, and adopts its revision. Keep-alives do not change a key's mod revision.
//!
//! The fence is also how the nodes of one cluster elect their **active** node: whoever holds it
//! is active, every other node is a performance standby (see `node`). The key's value is the
//! holder's [`FenceHolder`] record (JSON: node id, the API address its ferry-vault serves, its
//! cluster address), so that a standby can name the active node and forward writes to it. A
//! value that is not such a record (a fence written by an older sidecar) reads as a bare node id.
//!
//! A fence starts out not held ([`Fence::new`]); [`Fence::retake`] takes it when nobody holds
//! it: the key is created under a new lease, which is a new generation (a new mod revision, so
//! nothing sent under an earlier one can commit). A standby calls it every 500 ms until it
//! succeeds; a node that loses the fence (its lease expired while it stalled, or while etcd was
//! unreachable) refuses writes and calls it the same way. Whoever drives the retake brings the
//! node's state back in step with etcd before writes resume, as a restart would (see `reopen`,
//! and `recovery` at start-up). While another node holds the fence, this one refuses writes and
//! remembers who holds it ([`Fence::active_holder`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::TXN_TIMEOUT;
use crate::error::StoreError;

/// Who holds the fence: the value of the fence key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceHolder {
    pub node_id: String,
    /// Where clients reach the holder's ferry-vault (`http://10.0.0.5:8200`); empty when the
    /// holder was not told.
    #[serde(default)]
    pub api_addr: String,
    /// The holder's cluster port address, as other clusters reach it.
    #[serde(default)]
    pub cluster_addr: String,
}

impl FenceHolder {
    /// The record as the fence key stores it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a fence holder serialises")
    }

    /// Reads a fence key's value: a record, or (written by an older sidecar) a bare node id.
    pub fn decode(value: &[u8]) -> Self {
        serde_json::from_slice(value).unwrap_or_else(|_| Self {
            node_id: String::from_utf8_lossy(value).into_owned(),
            ..Self::default()
        })
    }
}

/// The cluster's write fence, as this node sees it: held by this node, or not.
#[derive(Debug)]
pub struct Fence {
    key: String,
    node_id: String,
    /// This node's record, as it writes it into the key.
    value: String,
    /// The last other holder this node saw while it did not hold the fence.
    other_holder: Mutex<Option<FenceHolder>>,
    ttl_seconds: i64,
    /// The lease the fence key is under; a retake replaces it.
    lease: AtomicI64,
    /// Mod revision of the fence key as this node last wrote it; 0 once lost.
    revision: AtomicI64,
    held: AtomicBool,
    lost_reason: Mutex<Option<String>>,
    /// Held while rotating, and while verifying, so that a check never sees the rotated key
    /// before `revision` says so.
    rotation: tokio::sync::Mutex<()>,
}

impl Fence {
    /// The fence at `key` as `holder` would write it, not held yet: [`Self::retake`] takes it.
    pub fn new(key: String, holder: FenceHolder, ttl_seconds: i64) -> Self {
        Self {
            key,
            node_id: holder.node_id.clone(),
            value: holder.encode(),
            other_holder: Mutex::new(None),
            ttl_seconds,
            lease: AtomicI64::new(0),
            revision: AtomicI64::new(0),
            held: AtomicBool::new(false),
            lost_reason: Mutex::new(None),
            rotation: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes the fence at `key` for `node_id` (a holder with no addresses), waiting while
    /// another node holds it.
    pub async fn acquire(
        client: &Client,
        key: String,
        node_id: String,
        ttl_seconds: i64,
    ) -> Result<Self, StoreError> {
        let holder = FenceHolder {
            node_id,
            ..FenceHolder::default()
        };
        let fence = Self::new(key, holder, ttl_seconds);
        // The holder's lease expires within its TTL if it is gone; poll well inside that.
        while !fence.retake(client).await? {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(fence)
    }

    /// The node that holds the fence when this one does not, as last seen; `None` while this
    /// node holds it, or when nobody was seen holding it.
    pub fn active_holder(&self) -> Option<FenceHolder> {
        if self.is_held() {
            return None;
        }
        self.other_holder.lock().expect("fence lock").clone()
    }

    /// The error a write gets while this node does not hold the fence: [`StoreError::NotActive`]
    /// naming the active node when another node is known to hold it, else `FenceLost`.
    pub fn refusal(&self) -> StoreError {
        match self.active_holder() {
            Some(active) => StoreError::NotActive {
                message: format!(
                    "this node ({}) does not hold the cluster's write fence; the active node is {}{}",
                    self.node_id,
                    active.node_id,
                    if active.api_addr.is_empty() {
                        String::new()
                    } else {
                        format!(" at {}", active.api_addr)
                    }
                ),
                active,
            },
            None => self.lost_error(),
        }
    }

    fn note_other_holder(&self, holder: Option<FenceHolder>) {
        *self.other_holder.lock().expect("fence lock") = holder;
    }

    /// The compare every fenced transaction carries, or `FenceLost`.
    pub fn compare(&self) -> Result<Compare, StoreError> {
        if !self.held.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        Ok(Compare::mod_revision(
            self.key.as_str(),
            CompareOp::Equal,
            self.revision.load(Ordering::SeqCst),
        ))
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Records that the fence is gone; every later write fails with `FenceLost`.
    pub fn mark_lost(&self, reason: String) {
        // The reason is in place before the fence reads as lost: a write refused in between
        // says why (it used to say "not acquired").
        let mut lost_reason = self.lost_reason.lock().expect("fence lock");
        if self.held.load(Ordering::SeqCst) {
            warn!(key = %self.key, %reason, "lost the write fence; refusing writes until it is retaken");
            *lost_reason = Some(reason);
            self.held.store(false, Ordering::SeqCst);
            self.revision.store(0, Ordering::SeqCst);
        }
    }

    pub fn lost_error(&self) -> StoreError {
        let reason = self
            .lost_reason
            .lock()
            .expect("fence lock")
            .clone()
            .unwrap_or_else(|| "not acquired".into());
        StoreError::FenceLost(format!(
            "this node ({}) no longer holds the cluster's write fence: {reason}",
            self.node_id
        ))
    }

    /// After a failed fenced transaction: tells whether the fence is still ours, and marks it
    /// lost if not.
    pub async fn verify(&self, client: &Client) -> Result<bool, StoreError> {
        let _rotation = self.rotation.lock().await;
        let mut kv = client.kv_client();
        let current = crate::etcd::get(&mut kv, &self.key).await?;
        let ours = current.as_ref().is_some_and(|kv| {
            kv.mod_revision() == self.revision.load(Ordering::SeqCst)
                && kv.value() == self.value.as_bytes()
        });
        if !ours {
            self.note_other_holder(current.as_ref().map(|kv| FenceHolder::decode(kv.value())));
            self.mark_lost(holder(current.as_ref()));
        }
        Ok(ours)
    }

    /// Rewrites the fence key so that no transaction sent before can commit. An error leaves
    /// the fence as it was or rotated without this node knowing; either way a retry completes.
    pub async fn rotate(&self, client: &Client) -> Result<(), StoreError> {
        let _rotation = self.rotation.lock().await;
        let old = self.compare()?;
        let put = TxnOp::put(
            self.key.as_str(),
            self.value.as_str(),
            Some(PutOptions::new().with_lease(self.lease())),
        );
        let txn = Txn::new()
            .when([old])
            .and_then([put])
            .or_else([TxnOp::get(self.key.as_str(), None)]);
        // A hung call would stall whoever waits for the rotation (the committer's resync, the
        // flusher); its retry adopts a rotation that landed unanswered, so giving up is safe.
        let resp = tokio::time::timeout(TXN_TIMEOUT, client.kv_client().txn(txn))
            .await
            .map_err(|_| {
                StoreError::OutcomeUnknown(format!(
                    "rotating the write fence took longer than {TXN_TIMEOUT:?}"
                ))
            })??;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            self.revision.store(revision, Ordering::SeqCst);
            info!(key = %self.key, revision, "rotated the write fence");
            return Ok(());
        }
        match first_got(resp) {
            // Only this node writes under its lease: an earlier rotation landed unanswered.
            Some(kv) if kv.lease() == self.lease() && kv.value() == self.value.as_bytes() => {
                let revision = kv.mod_revision();
                self.revision.store(revision, Ordering::SeqCst);
                info!(
                    key = %self.key,
                    revision,
                    "rotated the write fence (an earlier, unanswered rotation had landed)"
                );
                Ok(())
            }
            other => {
                self.note_other_holder(other.as_ref().map(|kv| FenceHolder::decode(kv.value())));
                self.mark_lost(holder(other.as_ref()));
                Err(self.lost_error())
            }
        }
    }

    fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Keeps the current lease alive until `shutdown`; marks the fence lost when the lease is
    /// gone or has not been renewed for a whole TTL. While the fence is lost it idles, and it
    /// takes up the new lease once the fence is retaken.
    pub async fn keep_alive(
        &self,
        client: Client,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let period = Duration::from_millis((self.ttl_seconds as u64 * 1000) / 3);
        let ttl = Duration::from_secs(self.ttl_seconds as u64);
        let mut last_renewed = Instant::now();
        let mut stream = None;
        let mut kept = 0; // the lease `stream` renews
        loop {
            let lease = self.lease();
            if !self.is_held() {
                stream = None;
                kept = 0;
            } else {
                if lease != kept {
                    // A new generation: its lease was just granted.
                    stream = None;
                    kept = lease;
                    last_renewed = Instant::now();
                }
                if stream.is_none() {
                    stream = client.lease_client().keep_alive(lease).await.ok();
                }
                let renewed = match stream.as_mut() {
                    Some((keeper, responses)) => {
                        let sent = keeper.keep_alive().await.is_ok();
                        match tokio::time::timeout(period, responses.message()).await {
                            Ok(Ok(Some(resp))) if sent && resp.ttl() > 0 => true,
                            Ok(Ok(Some(_))) => {
                                self.mark_lost("the fence lease expired".into());
                                false
                            }
                            _ => {
                                stream = None;
                                false
                            }
                        }
                    }
                    None => false,
                };
                if renewed {
                    last_renewed = Instant::now();
                } else if last_renewed.elapsed() >= ttl {
                    self.mark_lost(format!("lease not renewed for {}s", self.ttl_seconds));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Takes the fence under a new lease when nobody holds it (or only this node's own earlier
    /// generation does): at start-up, on a standby, and after the fence was lost. Returns
    /// whether this node holds it now; `false` while another node does (noted as the active
    /// node).
    ///
    /// The caller must keep every write path quiet until its state is back in step with etcd:
    /// from here on, this node's transactions commit again.
    pub async fn retake(&self, client: &Client) -> Result<bool, StoreError> {
        let _rotation = self.rotation.lock().await;
        if self.is_held() {
            return Ok(true);
        }
        // A plain read first: a standby polls, and a held fence needs no lease grant.
        if let Some(current) = crate::etcd::get(&mut client.kv_client(), &self.key).await? {
            let current = FenceHolder::decode(current.value());
            if current.node_id != self.node_id {
                self.note_other_holder(Some(current));
                return Ok(false);
            }
        }
        let lease = client
            .lease_client()
            .grant(self.ttl_seconds, None)
            .await?
            .id();
        match take(client, &self.key, &self.node_id, &self.value, lease).await {
            Ok(Taken::Yes(revision)) => {
                let mut lost_reason = self.lost_reason.lock().expect("fence lock");
                self.lease.store(lease, Ordering::SeqCst);
                self.revision.store(revision, Ordering::SeqCst);
                *lost_reason = None;
                self.note_other_holder(None);
                self.held.store(true, Ordering::SeqCst);
                info!(key = %self.key, node = %self.node_id, revision, "took the write fence under a new lease");
                Ok(true)
            }
            Ok(Taken::HeldBy(holder)) => {
                self.note_other_holder(holder);
                let _ = client.lease_client().revoke(lease).await;
                Ok(false)
            }
            Err(e) => {
                let _ = client.lease_client().revoke(lease).await;
                Err(e)
            }
        }
    }

    /// Gives the fence up (clean shutdown), so that another node can take it at once.
    pub async fn release(&self, client: &Client) {
        self.held.store(false, Ordering::SeqCst);
        if let Err(e) = client.lease_client().revoke(self.lease()).await {
            warn!(error = %e, "failed to release the write fence; it expires with its lease");
        }
    }
}

/// The key the `get` of a failed transaction's else branch found, if any.
fn first_got(resp: TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
        _ => None,
    })
}

/// Who holds the fence, given its key as read, for a lost fence's reason.
fn holder(current: Option<&KeyValue>) -> String {
    current.map_or_else(
        || "nobody holds it (the lease expired)".to_string(),
        |kv| format!("held by {}", FenceHolder::decode(kv.value()).node_id),
    )
}

enum Taken {
    Yes(i64),
    /// Another node holds it (`None`: the key vanished between the compare and the read).
    HeldBy(Option<FenceHolder>),
}

/// One attempt to take the fence under `lease`, writing `value`: create the key if absent;
/// reclaim it if an earlier run of this same node holds it.
async fn take(
    client: &Client,
    key: &str,
    node_id: &str,
    value: &str,
    lease: i64,
) -> Result<Taken, StoreError> {
    let mut kv = client.kv_client();
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put])
        .or_else([TxnOp::get(key, None)]);
    let resp = kv.txn(txn).await?;
    if resp.succeeded() {
        return Ok(Taken::Yes(resp.header().map_or(0, |h| h.revision())));
    }
    let Some(holder) = first_got(resp) else {
        return Ok(Taken::HeldBy(None));
    };
    let holder_record = FenceHolder::decode(holder.value());
    if holder_record.node_id != node_id || holder.lease() == lease {
        return Ok(Taken::HeldBy(Some(holder_record)));
    }
    // Our previous run (killed before its lease expired): take it back.
    let txn = Txn::new()
        .when([Compare::create_revision(
            key,
            CompareOp::Equal,
            holder.create_revision(),
        )])
        .and_then([TxnOp::delete(key, None)]);
    kv.txn(txn).await?;
    let _ = client.lease_client().revoke(holder.lease()).await;
    info!(%key, "reclaimed the write fence from this node's previous run");
    Box::pin(take(client, key, node_id, value, lease)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_record_round_trips_and_a_bare_node_id_still_reads() {
        let holder = FenceHolder {
            node_id: "west-2".into(),
            api_addr: "http://10.0.0.5:8200".into(),
            cluster_addr: "10.0.0.5:8201".into(),
        };
        assert_eq!(FenceHolder::decode(holder.encode().as_bytes()), holder);
        // A fence written by an older sidecar holds the bare node id.
        assert_eq!(
            FenceHolder::decode(b"west-1"),
            FenceHolder {
                node_id: "west-1".into(),
                ..FenceHolder::default()
            }
        );
    }
}
