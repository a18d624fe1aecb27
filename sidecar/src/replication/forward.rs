//! Request forwarding and read-after-write: the sidecar's part (see
//! `proto/ferry/forward/v1/forward.proto` for the three hops).
//!
//! * On a secondary, [`Forwarder`] takes, on the storage socket, the requests its server could
//!   not execute because they write replicated storage, and sends them to the primary over the
//!   follower's connection. Without a live connection it fails at once with `UNAVAILABLE`: the
//!   client gets a fast, clear error while reads go on being served locally.
//! * On the primary, [`execute`] hands what an authenticated secondary forwarded to this
//!   cluster's server on its forward socket.
//! * [`Forwarder`] also answers `WaitForState`. A state (stream, epoch, index) is present on a
//!   cluster that writes its own stream once that stream reaches the index, and on a secondary
//!   once the primary stream it applies does. A state of an older epoch than the stream this
//!   cluster is on now counts as present: a promotion and a reconciliation came after it.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::forward::consistency_server::Consistency;
use ferry_proto::forward::forwarding_client::ForwardingClient;
use ferry_proto::forward::forwarding_server::Forwarding;
use ferry_proto::forward::{
    ForwardedRequest, ForwardedResponse, ReplicatedState, WaitForStateRequest, WaitForStateResponse,
};
use tonic::{Code, Request, Response, Status};

use super::Replication;
use super::follower::timeout;
use crate::core::WriteMode;
use crate::wal::record::StreamId;

/// The longest `WaitForState` waits, whatever the caller asks.
pub const MAX_WAIT: Duration = Duration::from_secs(10);
/// Most requests forwarded at once. They share the follower's connection, whose calls the
/// primary limits (64): heartbeats and the WAL stream must always find room beside them.
pub const MAX_IN_FLIGHT: usize = 32;

/// The storage socket's forwarding and consistency services.
#[derive(Clone)]
pub struct Forwarder {
    replication: Arc<Replication>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Forwarder {
    pub fn new(replication: Arc<Replication>) -> Self {
        Self {
            replication,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Whether this cluster holds `state` now.
    fn present(&self, stream: StreamId, epoch: u64, index: u64) -> bool {
        let core = &self.replication.core;
        let (own_stream, own_epoch, reached) = if core.write_mode() == WriteMode::Secondary {
            match *self.replication.applied.borrow() {
                Some(a) => (a.stream_id, a.epoch, a.index),
                None => return false,
            }
        } else {
            let s = core.stream();
            (s.stream_id, s.epoch, core.wal().last)
        };
        if own_stream == stream {
            reached >= index
        } else {
            own_epoch > epoch
        }
    }
}

#[tonic::async_trait]
impl Forwarding for Forwarder {
    async fn forward(
        &self,
        request: Request<ForwardedRequest>,
    ) -> Result<Response<ForwardedResponse>, Status> {
        let secondary_id = match self.replication.definition() {
            Some(d) if d.follows_primary() => d.secondary_id,
            _ => {
                return Err(Status::failed_precondition(
                    "this cluster is not a performance secondary: there is no primary to forward to",
                ));
            }
        };
        let connection = self
            .replication
            .primary
            .lock()
            .expect("primary lock poisoned")
            .clone();
        let Some((address, mut client)) = connection else {
            let s = self.replication.follower_status();
            let why = s
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected yet".into());
            return Err(Status::unavailable(format!(
                "the primary cluster is unreachable ({why}); the request was not forwarded"
            )));
        };
        let Ok(_slot) = self.in_flight.try_acquire() else {
            return Err(Status::unavailable(format!(
                "{MAX_IN_FLIGHT} requests are already being forwarded to the primary; retry shortly"
            )));
        };
        let mut forwarded = request.into_inner();
        forwarded.secondary_id = secondary_id;
        timeout(client.forward(forwarded)).await.map_err(|s| {
            let code = match s.code() {
                Code::DeadlineExceeded => Code::DeadlineExceeded,
                Code::FailedPrecondition | Code::PermissionDenied => s.code(),
                _ => Code::Unavailable,
            };
            Status::new(
                code,
                format!(
                    "forwarding to the primary at {address} failed: {}",
                    s.message()
                ),
            )
        })
    }
}

#[tonic::async_trait]
impl Consistency for Forwarder {
    async fn wait_for_state(
        &self,
        request: Request<WaitForStateRequest>,
    ) -> Result<Response<WaitForStateResponse>, Status> {
        let req = request.into_inner();
        let ReplicatedState {
            stream_id,
            epoch,
            index,
        } = req
            .state
            .ok_or_else(|| Status::invalid_argument("state is required"))?;
        let stream = StreamId(
            stream_id
                .try_into()
                .map_err(|_| Status::invalid_argument("state.stream_id must be 16 bytes"))?,
        );
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.timeout_ms.into()).min(MAX_WAIT);
        let mut committed = self.replication.core.watch_committed();
        let mut applied = self.replication.watch_applied();
        loop {
            if self.present(stream, epoch, index) {
                return Ok(Response::new(WaitForStateResponse { present: true }));
            }
            tokio::select! {
                changed = committed.changed() => if changed.is_err() { break },
                changed = applied.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(Response::new(WaitForStateResponse {
            present: self.present(stream, epoch, index),
        }))
    }
}

/// On the primary: runs a request a secondary forwarded on this cluster's server.
pub async fn execute(
    replication: &Replication,
    request: ForwardedRequest,
) -> Result<Response<ForwardedResponse>, Status> {
    let socket = &replication.config.forward_socket;
    let mut server = ForwardingClient::new(replication.server.clone());
    timeout(server.forward(request))
        .await
        .map_err(|s| match s.code() {
            Code::Unavailable | Code::Unknown => Status::unavailable(format!(
                "the primary's server does not answer on {}: {}",
                socket.display(),
                s.message()
            )),
            _ => s,
        })
}
