//! The `Changes` service: what changed in the cluster's storage, for ferry-vault's read cache.
//!
//! ferry-vault keeps recently read values in memory (its `read_cache`) and must forget one as
//! soon as anyone changes it. Writers are this node (its own commits), the active node when
//! this one is a standby, and replication's apply on a secondary; all of them write the
//! cluster's etcd under `<root>data/`. So the stream is an etcd watch on that prefix, which
//! sees every writer in commit order:
//!
//! ```text
//!   etcd watch <root>data/ (from now) ──events──▶ WatchResponse{paths}      ──▶ ferry-vault
//!   every PROGRESS_EVERY: request progress ──────▶ WatchResponse{} (no paths)    forgets paths;
//!                                                                                 trusts its
//!   watch broken / compacted / shutdown ─────────▶ stream ends                    cache for 1 s
//!                                                                                 after each
//!                                                                                 progress
//! ```
//!
//! A progress message is sent when etcd answers a progress request on the same watch stream,
//! so it proves that etcd was reachable and the watch live a moment ago; it carries the time the
//! sidecar received the answer, so that ferry-vault counts its second from then, however long
//! the message queued. A node cut off from
//! etcd stops sending them, and ferry-vault stops trusting its cache within a second: long
//! before another node can take the write fence (its lease is seconds long) and change what
//! this one cached. The stream's end tells ferry-vault to forget everything.
//!
//! Bounded: each subscriber has a queue of [`QUEUE`] messages; a subscriber that falls that far
//! behind is dropped (its stream ends, and it starts again with an empty cache).

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use ferry_proto::storage::changes_server::Changes;
use ferry_proto::storage::{WatchRequest, WatchResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::keyspace::Keyspace;

/// How often the watch asks etcd for a progress notification.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Messages queued for one subscriber before it is dropped.
const QUEUE: usize = 1024;

/// Serves `Changes.Watch` on the storage socket.
#[derive(Clone)]
pub struct ChangesService {
    client: Client,
    keyspace: Keyspace,
    shutdown: watch::Receiver<bool>,
}

impl ChangesService {
    pub fn new(client: Client, keyspace: Keyspace, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            client,
            keyspace,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl Changes for ChangesService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let prefix = self.keyspace.data_prefix();
        let mut stream = self
            .client
            .watch_client()
            .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| Status::unavailable(format!("failed to watch etcd: {e}")))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (keyspace, mut shutdown) = (self.keyspace.clone(), self.shutdown.clone());
        crate::tasks::spawn_reported("changes-watch", async move {
            let mut progress = tokio::time::interval(PROGRESS_EVERY);
            loop {
                let message = tokio::select! {
                    _ = progress.tick() => {
                        if stream.request_progress().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ = shutdown.changed() => break,
                    m = stream.message() => m,
                };
                let response = match message {
                    Ok(Some(r)) if !r.canceled() => r,
                    Ok(Some(r)) => {
                        debug!(
                            reason = r.cancel_reason(),
                            "etcd canceled the changes watch"
                        );
                        break;
                    }
                    Ok(None) | Err(_) => break,
                };
                if response.created() {
                    continue;
                }
                let paths: Vec<String> = response
                    .events()
                    .iter()
                    .filter(|e| matches!(e.event_type(), EventType::Put | EventType::Delete))
                    .filter_map(|e| e.kv())
                    .filter_map(|kv| keyspace.path_of(kv.key()))
                    .map(str::to_owned)
                    .collect();
                // A full queue: the subscriber is too slow to trust; ending its stream makes it
                // forget its cache.
                let received_unix_ms = progress_stamp(&paths);
                if tx
                    .try_send(Ok(WatchResponse {
                        paths,
                        received_unix_ms,
                    }))
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A progress message's stamp: now, in Unix milliseconds; 0 for a message of changes.
fn progress_stamp(paths: &[String]) -> i64 {
    if paths.is_empty() {
        crate::replication::unix_now_ms() as i64
    } else {
        0
    }
}
