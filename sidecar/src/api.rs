//! The replication API over HTTP: Vault's `sys/replication/...` paths and JSON shapes, served on
//! the sidecar's admin Unix socket. The Vault-like server proxies `/v1/sys/replication/` here
//! after checking the caller's `sudo`; tests call it directly.
//!
//! The API has no authentication of its own, so only this sidecar's user may reach it: the
//! socket lives in a directory created with mode 0700 before the socket exists (an existing one
//! must already be 0700), so there is no moment in which another user could connect, as there
//! would be between a bind and a `chmod` (or on a TCP port, which every container of a pod
//! shares).
//!
//! Errors follow Vault: a status code and `{"errors": ["..."]}`. Bad input and calls that do not
//! fit the cluster's role are 400 and change nothing; an unreachable peer is 503.
//!
//! The socket is served for the node's whole life ([`NodeRouter`]): replication runs only on the
//! active node, so until this node is active `status` answers with its node role, the active
//! node, the replication mode it reads in etcd and its last heartbeat to the active node (the
//! active node's status lists every node), and every other call is refused (503, `error_code`
//! `not_active`) naming the active node.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::info;

use crate::error::StoreError;
use crate::node::NodeApi;
use crate::replication::Replication;
use crate::replication::control::{ControlError, DEFAULT_TOKEN_TTL};
use crate::replication::standby::StandbyView;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

type Shared = State<Arc<Replication>>;

/// An API failure, rendered Vault style.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// A machine-readable reason beside Vault's `errors`, for callers that act on it.
    code: Option<&'static str>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.code {
            Some(code) => json!({ "errors": [self.message], "error_code": code }),
            None => json!({ "errors": [self.message] }),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(m) => Self::bad_request(m),
            ControlError::Unavailable(m) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: m,
                code: None,
            },
            ControlError::PrimaryUnreachable(m) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: m,
                code: Some(ferry_proto::PRIMARY_UNREACHABLE),
            },
            ControlError::Storage(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            StoreError::Unavailable(_)
            | StoreError::ShuttingDown
            | StoreError::FenceLost(_)
            | StoreError::NotActive { .. } => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            message: e.to_string(),
            code: None,
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// The routes, under `/v1/sys/replication/`.
pub fn router(replication: Arc<Replication>) -> Router {
    const P: &str = "/v1/sys/replication/performance";
    Router::new()
        .route("/v1/sys/replication/status", get(status))
        .route(&format!("{P}/status"), get(performance_status))
        .route(
            &format!("{P}/primary/enable"),
            post(primary_enable).put(primary_enable),
        )
        .route(
            &format!("{P}/primary/secondary-token"),
            post(secondary_token).put(secondary_token),
        )
        .route(
            &format!("{P}/primary/revoke-secondary"),
            post(revoke_secondary).put(revoke_secondary),
        )
        .route(&format!("{P}/primary/demote"), post(demote).put(demote))
        .route(
            &format!("{P}/primary/disable"),
            post(primary_disable).put(primary_disable),
        )
        .route(
            &format!("{P}/secondary/enable"),
            post(secondary_enable).put(secondary_enable),
        )
        .route(
            &format!("{P}/secondary/promote"),
            post(promote).put(promote),
        )
        .route(
            &format!("{P}/secondary/update-primary"),
            post(update_primary).put(update_primary),
        )
        .route(
            &format!("{P}/secondary/disable"),
            post(secondary_disable).put(secondary_disable),
        )
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "unsupported path".into(),
                code: None,
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(replication)
}

/// The `error_code` of a call a standby refuses because only the active node serves it.
pub const NOT_ACTIVE: &str = "not_active";

/// The API across the node's switch from standby to active: the standby's answers until
/// [`NodeRouter::activate`], then [`router`].
#[derive(Clone)]
pub struct NodeRouter {
    node: NodeApi,
    standby: Arc<StandbyView>,
    active: Arc<OnceLock<Router>>,
}

impl NodeRouter {
    pub fn new(node: NodeApi, standby: Arc<StandbyView>) -> Self {
        Self {
            node,
            standby,
            active: Arc::new(OnceLock::new()),
        }
    }

    /// Serves every route from now on, with `replication`.
    pub fn activate(&self, replication: Arc<Replication>) {
        let _ = self.active.set(router(replication));
    }
}

async fn node_route(State(api): State<NodeRouter>, request: axum::extract::Request) -> Response {
    if let Some(router) = api.active.get() {
        return match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let leader = api.node.leader();
    let node = leader.node.unwrap_or_default();
    let active = leader.active;
    let path = request.uri().path();
    if request.method() == axum::http::Method::GET
        && matches!(
            path,
            "/v1/sys/replication/status" | "/v1/sys/replication/performance/status"
        )
    {
        let definition = api.standby.definition();
        let heartbeat = api.standby.last_heartbeat();
        return data(json!({
            "node_role": leader.role,
            "node_id": node.node_id,
            "mode": definition.as_ref().map_or("disabled", |d| d.role.status_mode()),
            "cluster_id": definition.as_ref().map(|d| d.cluster_id.clone()),
            "active_node": active.map(|a| json!({
                "node_id": a.node_id,
                "api_addr": a.api_addr,
                "cluster_addr": a.cluster_addr,
            })),
            // This standby's heartbeats to its active node, and the addresses it answered with.
            "last_heartbeat": heartbeat.at.map(crate::replication::status::rfc3339),
            "cluster_addrs": heartbeat.cluster_addrs,
        }));
    }
    let active = active.map_or_else(
        || "no node holds the write fence yet".to_owned(),
        |a| format!("the active node is {} at {}", a.node_id, a.api_addr),
    );
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: format!(
            "this node ({}) is a performance standby ({}): only the active node serves replication; {active}",
            node.node_id, leader.role
        ),
        code: Some(NOT_ACTIVE),
    }
    .into_response()
}

/// Serves the API on the Unix socket `socket` until `shutdown`.
pub async fn serve(
    socket: PathBuf,
    api: NodeRouter,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = bind_private(&socket)?;
    info!(socket = %socket.display(), "replication API ready");
    let app = Router::new().fallback(node_route).with_state(api);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
        .context("replication API server failed")
}

/// Binds `socket` inside a directory only this user can enter, creating the directory (mode
/// 0700) when it is missing and refusing one that others may enter.
fn bind_private(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .with_context(|| {
            format!(
                "the replication API socket {} has no directory",
                socket.display()
            )
        })?;
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            anyhow::ensure!(
                meta.is_dir() && mode & 0o077 == 0,
                "the directory {} of the replication API socket must be a directory only its owner can enter (mode 700), not mode {mode:03o}",
                dir.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("failed to inspect {}", dir.display())),
    }
    ferry_proto::bind_private_unix(socket)
        .with_context(|| format!("failed to listen on {}", socket.display()))
}

/// Parses a JSON body; an empty body is `{}`. Unknown fields are refused by name.
fn body<T: DeserializeOwned>(raw: &Bytes) -> Result<T, ApiError> {
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn data(value: Value) -> Response {
    axum::Json(json!({ "data": value })).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn status(State(r): Shared) -> ApiResult {
    Ok(data(r.status().await?))
}

async fn performance_status(State(r): Shared) -> ApiResult {
    Ok(data(r.performance_status().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrimaryEnable {
    #[serde(default)]
    primary_cluster_addr: String,
}

async fn primary_enable(State(r): Shared, raw: Bytes) -> ApiResult {
    let req: PrimaryEnable = body(&raw)?;
    r.enable_primary(req.primary_cluster_addr).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecondaryToken {
    #[serde(default)]
    id: String,
    #[serde(default)]
    ttl: Option<Value>,
}

async fn secondary_token(State(r): Shared, raw: Bytes) -> ApiResult {
    let req: SecondaryToken = body(&raw)?;
    let ttl = match &req.ttl {
        None => DEFAULT_TOKEN_TTL,
        Some(v) => parse_ttl(v).map_err(ApiError::bad_request)?,
    };
    let wrap = r.secondary_token(req.id, ttl).await?;
    Ok(axum::Json(json!({
        "request_id": "",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": wrap,
        "warnings": null,
        "auth": null,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Id {
    #[serde(default)]
    id: String,
}

async fn revoke_secondary(State(r): Shared, raw: Bytes) -> ApiResult {
    let req: Id = body(&raw)?;
    r.revoke_secondary(req.id).await?;
    Ok(no_content())
}

async fn demote(State(r): Shared) -> ApiResult {
    let last = r.demote().await?;
    Ok(data(json!({ "last_wal": last })))
}

async fn primary_disable(State(r): Shared) -> ApiResult {
    r.disable_primary().await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecondaryEnable {
    #[serde(default)]
    token: String,
}

async fn secondary_enable(State(r): Shared, raw: Bytes) -> ApiResult {
    let req: SecondaryEnable = body(&raw)?;
    if req.token.trim().is_empty() {
        return Err(ApiError::bad_request("token is required"));
    }
    r.enable_secondary(req.token).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    primary_cluster_addr: Option<String>,
}

async fn promote(State(r): Shared, raw: Bytes) -> ApiResult {
    let req: Promote = body(&raw)?;
    let done = r.promote(req.force, req.primary_cluster_addr).await?;
    Ok(data(serde_json::to_value(done).expect("serialises")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatePrimary {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    update_primary_addrs: Option<Vec<String>>,
}

async fn update_primary(State(r): Shared, raw: Bytes) -> ApiResult {
    let req: UpdatePrimary = body(&raw)?;
    r.update_primary(req.token, req.update_primary_addrs)
        .await?;
    Ok(no_content())
}

async fn secondary_disable(State(r): Shared) -> ApiResult {
    r.disable_secondary().await?;
    Ok(no_content())
}

/// A TTL as Vault takes it: whole seconds, or a number with `s`, `m`, `h` or `d`.
fn parse_ttl(value: &Value) -> Result<Duration, String> {
    let seconds = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => ferry_proto::time::parse_duration(s),
        _ => None,
    };
    seconds
        .map(Duration::from_secs)
        .ok_or_else(|| format!("ttl {value} is not a duration such as 30m, 1h or 3600"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A JSON value as a request body may hold one: numbers of every kind, duration-like text
    /// and anything else.
    fn json_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            "[ +-]?[0-9]{0,22}[smhdy]?[ ]?".prop_map(|s| json!(s)),
            ".{0,24}".prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(json!(null)),
            Just(json!([1])),
            Just(json!({ "ttl": 1 })),
        ]
    }

    proptest! {
        /// A TTL from the admin API is whole seconds, or a number and a unit, without overflow:
        /// anything else is refused with the value in the message.
        #[test]
        fn ttls_are_seconds_or_refused(value in json_value()) {
            match parse_ttl(&value) {
                Ok(ttl) => {
                    let seconds = match &value {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => {
                            let s = s.trim();
                            let (digits, scale) = match s.strip_suffix(['s', 'm', 'h', 'd']) {
                                Some(digits) => (digits, match s.chars().last() {
                                    Some('m') => 60,
                                    Some('h') => 3600,
                                    Some('d') => 86_400,
                                    _ => 1,
                                }),
                                None => (s, 1),
                            };
                            digits.parse::<u64>().ok().and_then(|n| n.checked_mul(scale))
                        }
                        _ => None,
                    };
                    prop_assert_eq!(Some(ttl.as_secs()), seconds);
                }
                Err(e) => prop_assert!(e.contains(&value.to_string()), "{e}"),
            }
        }

        /// Any request body is a JSON object of known fields, empty, or refused as a 400 that
        /// says so; never a panic.
        #[test]
        fn bodies_are_parsed_or_refused_as_bad_requests(
            raw in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                json_value().prop_map(|v| json!({ "id": "east", "ttl": v }).to_string().into_bytes()),
            ],
        ) {
            match body::<SecondaryToken>(&Bytes::from(raw.clone())) {
                Ok(_) => prop_assert!(
                    raw.iter().all(u8::is_ascii_whitespace)
                        || serde_json::from_slice::<Value>(&raw).is_ok_and(|v| v.is_object())
                ),
                Err(e) => {
                    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    prop_assert!(e.message.starts_with("invalid request body"), "{}", e.message);
                }
            }
        }
    }

    #[test]
    fn ttls_parse_like_vault() {
        assert_eq!(parse_ttl(&json!("30m")), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl(&json!("2h")), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_ttl(&json!(90)), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl(&json!("45")), Ok(Duration::from_secs(45)));
        assert!(parse_ttl(&json!("soon")).is_err());
        assert!(parse_ttl(&json!("5y")).is_err());
        assert!(parse_ttl(&json!(-1)).is_err());
    }
}
