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
//! A node waits at start-up until the fence is free. A node that loses it (its lease expired
//! while it stalled, or while etcd was unreachable) refuses writes until it takes the fence
//! again: [`Fence::retake`] creates the key under a new lease once nobody holds it, which is a
//! new generation (a new mod revision, so nothing sent under the old one can commit). Whoever
//! drives the retake brings the node's state back in step with etcd before writes resume, as a
//! restart would (see `reopen`). While another node holds the fence, this one keeps refusing.
//! Leader election among several nodes of one cluster comes later.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::TXN_TIMEOUT;
use crate::error::StoreError;

/// The write fence held by this node.
#[derive(Debug)]
pub struct Fence {
    key: String,
    node_id: String,
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
    /// Acquires the fence at `key` for `node_id`, waiting while another node holds it.
    pub async fn acquire(
        client: &Client,
        key: String,
        node_id: String,
        ttl_seconds: i64,
    ) -> Result<Self, StoreError> {
        let mut announced = false;
        loop {
            // A fresh lease per attempt: one granted before a long wait would expire unused.
            let lease = client.lease_client().grant(ttl_seconds, None).await?.id();
            match take(client, &key, &node_id, lease).await? {
                Taken::Yes(revision) => {
                    info!(%key, node = %node_id, revision, "acquired write fence");
                    return Ok(Self {
                        key,
                        node_id,
                        ttl_seconds,
                        lease: AtomicI64::new(lease),
                        revision: AtomicI64::new(revision),
                        held: AtomicBool::new(true),
                        lost_reason: Mutex::new(None),
                        rotation: tokio::sync::Mutex::new(()),
                    });
                }
                Taken::HeldBy(holder) => {
                    let _ = client.lease_client().revoke(lease).await;
                    if !announced {
                        info!(%key, %holder, "waiting for the write fence");
                        announced = true;
                    }
                }
            }
            // The holder's lease expires within its TTL if it is gone; poll well inside that.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
                && kv.value() == self.node_id.as_bytes()
        });
        if !ours {
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
            self.node_id.as_str(),
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
            Some(kv) if kv.lease() == self.lease() && kv.value() == self.node_id.as_bytes() => {
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

    /// After the fence was lost: takes it again under a new lease when nobody holds it (or only
    /// this node's own earlier generation does). Returns whether this node holds it now;
    /// `false` while another node does.
    ///
    /// The caller must keep every write path quiet until its state is back in step with etcd:
    /// from here on, this node's transactions commit again.
    pub async fn retake(&self, client: &Client) -> Result<bool, StoreError> {
        let _rotation = self.rotation.lock().await;
        if self.is_held() {
            return Ok(true);
        }
        let lease = client
            .lease_client()
            .grant(self.ttl_seconds, None)
            .await?
            .id();
        match take(client, &self.key, &self.node_id, lease).await {
            Ok(Taken::Yes(revision)) => {
                let mut lost_reason = self.lost_reason.lock().expect("fence lock");
                self.lease.store(lease, Ordering::SeqCst);
                self.revision.store(revision, Ordering::SeqCst);
                *lost_reason = None;
                self.held.store(true, Ordering::SeqCst);
                info!(key = %self.key, node = %self.node_id, revision, "retook the write fence under a new lease");
                Ok(true)
            }
            Ok(Taken::HeldBy(_)) => {
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
        |kv| format!("held by {}", String::from_utf8_lossy(kv.value())),
    )
}

enum Taken {
    Yes(i64),
    HeldBy(String),
}

/// One attempt to take the fence under `lease`: create the key if absent; reclaim it if an
/// earlier run of this same node holds it.
async fn take(client: &Client, key: &str, node_id: &str, lease: i64) -> Result<Taken, StoreError> {
    let mut kv = client.kv_client();
    let put = TxnOp::put(key, node_id, Some(PutOptions::new().with_lease(lease)));
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put])
        .or_else([TxnOp::get(key, None)]);
    let resp = kv.txn(txn).await?;
    if resp.succeeded() {
        return Ok(Taken::Yes(resp.header().map_or(0, |h| h.revision())));
    }
    let Some(holder) = first_got(resp) else {
        return Ok(Taken::HeldBy("(gone)".into()));
    };
    let holder_id = String::from_utf8_lossy(holder.value()).into_owned();
    if holder_id != node_id || holder.lease() == lease {
        return Ok(Taken::HeldBy(holder_id));
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
    Box::pin(take(client, key, node_id, lease)).await
}
