//! `sys/replication/...`: proxied to the sidecar's replication API, which owns replication.
//!
//! `status` and `performance/status` are unauthenticated, as in Vault; every other call needs
//! `sudo` on its path (a root token has it). The sidecar's status code
//! and JSON body reach the client unchanged. On a performance standby, whose sidecar runs no
//! replication, every call goes to the active node, the status included (its `nodes` lists the
//! whole cluster).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_proto::UnixConnector;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::policy_api::authorize;
use crate::request::{ApiRequest, Operation};
use crate::server::{ApiError, ServerState};
use crate::token::TokenEntry;

/// How long the sidecar may take to answer (promotion drains for up to 30 s).
/// The `error_code` of a call the sidecar of a standby refuses (the sidecar's `api::NOT_ACTIVE`).
const NOT_ACTIVE: &str = "not_active";
const PROXY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer accepted from the sidecar.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A client of the sidecar's replication API, on its Unix socket.
#[derive(Clone)]
pub struct SidecarApi {
    socket: std::path::PathBuf,
    client: Client<UnixConnector, Full<Bytes>>,
}

impl SidecarApi {
    pub fn new(socket: std::path::PathBuf) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(UnixConnector::new(socket.clone())),
            socket,
        }
    }

    async fn forward(&self, method: Method, path: &str, body: Bytes) -> Result<Response, ApiError> {
        let unavailable = |e: String| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the sidecar's replication API at {} failed: {e}",
                    self.socket.display()
                ),
            )
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://ferry-sidecar/v1/sys/replication/{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let answer = tokio::time::timeout(PROXY_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| unavailable("no answer in time".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let status = answer.status();
        let body = http_body_util::Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .to_bytes();
        // A standby's sidecar serves only its own view in the status; the active node serves
        // the rest, and the status of the cluster's replication with every node in it: a
        // client (the operator, through a Service in front of every node) sees the same
        // status whichever node it reaches.
        let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let refused = status == StatusCode::SERVICE_UNAVAILABLE
            && parsed
                .as_ref()
                .is_some_and(|v| v["error_code"] == NOT_ACTIVE);
        let standby_status = status == StatusCode::OK
            && parsed
                .as_ref()
                .is_some_and(|v| v["data"]["node_role"].is_string());
        if refused || standby_status {
            return Err(ApiError {
                forward: Some(crate::forwarding::MustForward::Active),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node is a performance standby: only the active node serves replication",
                )
            });
        }
        Ok((
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }
}

/// Whether `request` is one Vault answers without a token: a read of the replication status.
pub fn unauthenticated(request: &ApiRequest) -> bool {
    request.operation == Operation::Read
        && matches!(
            request.path.as_str(),
            "sys/replication/status" | "sys/replication/performance/status"
        )
}

/// `sys/replication/<rest>`: `caller` is the authenticated caller, `None` only when
/// [`unauthenticated`] holds. Every other call needs `sudo` on its canonical path, and the
/// sidecar is asked exactly that path, with the method of the operation authorized (it serves
/// no lists).
pub async fn handle(
    state: &ServerState,
    request: &ApiRequest,
    caller: Option<&TokenEntry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let rest = request
        .under("sys/replication/")
        .ok_or_else(|| request.no_handler())?;
    if !unauthenticated(request) {
        let entry =
            caller.ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "permission denied"))?;
        authorize(state, entry, request.operation, &request.path, &["sudo"]).await?;
    }
    let method = match request.operation {
        Operation::Read => Method::GET,
        Operation::Write => Method::POST,
        Operation::Delete => Method::DELETE,
        Operation::List => return Err(request.unsupported()),
    };
    state.sidecar_api.forward(method, rest, body).await
}
