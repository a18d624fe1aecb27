//! The HTTP API, Vault's conventions: `/v1/` paths, `X-Vault-Token`, JSON bodies, Vault's status
//! codes and `{"errors": [...]}` bodies. One handler ([`dispatch`]) takes every request: the
//! status endpoints, then authentication, then the family of the request's canonical path
//! (`auth/token/`, `sys/mounts`, `sys/policies/acl` and `sys/policy`, `sys/audit`,
//! `sys/replication/`, else the engine mounted there), each of which authorizes the operation
//! it serves on that path. Every request past authentication is written to the audit devices
//! before it runs (see `audit`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::barrier::Keyring;
use crate::request::ApiRequest;
use crate::storage::Storage;
use crate::token::{TokenEntry, TokenStore};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+ferry");

/// What every handler shares.
pub struct ServerState {
    pub storage: Storage,
    pub local: Keyring,
    /// `None` while a secondary waits for the replicated keyring: the server reports sealed.
    pub replicated: Arc<RwLock<Option<Keyring>>>,
    /// The root key, to open a replicated keyring that changed under the server.
    pub root: crate::barrier::Key,
    /// Serialise read-modify-write cycles on one KV path (striped by path hash).
    pub path_locks: PathLocks,
    pub sidecar_api: crate::replication_proxy::SidecarApi,
    /// How a performance standby forwards to its cluster's active node.
    pub active_client: crate::ha::ActiveClient,
    /// The last mount table read, with the sealed bytes it came from.
    pub mount_cache: std::sync::Mutex<Option<(Vec<u8>, Arc<crate::mounts::MountTable>)>>,
    /// This cluster's audit devices.
    pub audit: crate::audit::Broker,
}

/// The client's address, from the connection (absent for a request a secondary forwarded).
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub std::net::SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for RemoteAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, crate::tls::TlsListener>>
    for RemoteAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// A fixed set of locks; a path always maps to the same one.
pub struct PathLocks(Vec<tokio::sync::Mutex<()>>);

impl Default for PathLocks {
    fn default() -> Self {
        Self((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl PathLocks {
    pub async fn lock(&self, path: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let hash = blake3::hash(path.as_bytes());
        let stripe = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        self.0[(stripe % self.0.len() as u64) as usize].lock().await
    }
}

impl ServerState {
    pub fn tokens(&self) -> TokenStore<'_> {
        TokenStore {
            storage: &self.storage,
            keyring: &self.local,
        }
    }

    /// The replicated keyring; 503 while sealed.
    pub fn keyring(&self) -> Result<Keyring, ApiError> {
        self.replicated
            .read()
            .expect("keyring lock poisoned")
            .clone()
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Vault is sealed"))
    }

    /// Reads the replicated keyring from storage again and adopts it; `true` when it opened.
    ///
    /// A value that does not open may be sealed by a keyring this server has not picked up
    /// yet: its cluster has just joined a replication set and taken the primary's data and
    /// keyring (the watcher in `unseal` notices within a second). Callers retry once after it.
    pub async fn reload_keyring(&self) -> bool {
        let Ok(Some(sealed)) = self.storage.get(crate::unseal::REPLICATED_KEYRING).await else {
            return false;
        };
        match Keyring::open_with_root(&self.root, crate::unseal::REPLICATED_KEYRING, &sealed) {
            Ok(keyring) => {
                *self.replicated.write().expect("keyring lock poisoned") = Some(keyring);
                true
            }
            Err(_) => false,
        }
    }

    fn sealed(&self) -> bool {
        self.replicated
            .read()
            .expect("keyring lock poisoned")
            .is_none()
    }
}

type Shared = State<Arc<ServerState>>;

/// A Vault-style error: a status code and `{"errors": [message]}` (no message: `[]`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: Option<String>,
    /// The request needs a write this node refuses: forward it to the primary (a replicated
    /// write on a secondary) or to the cluster's active node (any write on a standby).
    pub forward: Option<crate::forwarding::MustForward>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: Some(message.into()),
            forward: None,
        }
    }

    /// Vault's bare 404: `{"errors": []}`.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: None,
            forward: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let errors: Vec<String> = self.message.into_iter().collect();
        let mut response = (self.status, axum::Json(json!({ "errors": errors }))).into_response();
        if let Some(to) = self.forward {
            response.extensions_mut().insert(to);
        }
        response
    }
}

impl From<crate::storage::StorageError> for ApiError {
    /// A refused replicated write marks the response for forwarding (see `forwarding`); any
    /// other storage failure is a 500.
    fn from(e: crate::storage::StorageError) -> Self {
        match e {
            crate::storage::StorageError::ReadOnly(m) => Self {
                forward: Some(crate::forwarding::MustForward::Primary),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this cluster cannot write replicated storage: {m}"),
                )
            },
            crate::storage::StorageError::NotActive { message, .. } => Self {
                forward: Some(crate::forwarding::MustForward::Active),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this node cannot write storage: {message}"),
                )
            },
            crate::storage::StorageError::Failed(m) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    /// An oversized or unreadable body, in Vault's error shape.
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        Self::new(r.status(), r.body_text())
    }
}

/// A Vault-style error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// Parses a JSON request body (an empty body is `{}`); a 400 naming the problem otherwise.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let raw: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("failed to parse JSON input: {e}"),
        )
    })
}

/// Vault's response envelope around `data`.
pub fn envelope(data: Value) -> Response {
    axum::Json(envelope_json(data)).into_response()
}

/// The envelope as JSON, for responses that add to it.
pub fn envelope_json(data: Value) -> Value {
    json!({
        "request_id": request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    })
}

/// Vault's answer on its legacy `sys/` paths (`sys/mounts`, `sys/policy`, `sys/audit`, ...): the
/// envelope, with `data`'s fields also at the top level, as Vault's HTTP layer copies them for
/// old clients (`injectDataIntoTopLevel`).
pub fn top_level_envelope(data: Value) -> Response {
    let mut body = data.as_object().cloned().unwrap_or_default();
    if let Value::Object(e) = envelope_json(data) {
        body.extend(e);
    }
    axum::Json(Value::Object(body)).into_response()
}

/// A new request id, in Vault's UUID form.
pub(crate) fn request_id() -> String {
    let h = crate::token::random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The public API: [`routes`] behind the forwarding and `X-Vault-Index` layer.
pub fn router(state: Arc<ServerState>) -> Router {
    routes(state.clone()).layer(axum::middleware::from_fn_with_state(
        state,
        crate::forwarding::layer,
    ))
}

/// Every endpoint, as the primary also runs them for forwarded requests: one handler, which
/// routes by the canonical path (see [`dispatch`]).
pub fn routes(state: Arc<ServerState>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Vault's status endpoints, answered without a token and before anything else, as Vault's own
/// HTTP handlers do (they look at the method only: `?list=` means nothing there).
const STATUS_PATHS: [&str; 4] = [
    "/v1/sys/health",
    "/v1/sys/seal-status",
    "/v1/sys/init",
    "/v1/sys/leader",
];

/// Every request:
///
/// 1. Vault's status endpoints ([`STATUS_PATHS`]) are answered at once.
/// 2. The request is parsed once into its operation and canonical path ([`ApiRequest`]).
/// 3. The caller is authenticated (403 without a valid token), except for the replication
///    status reads Vault leaves open: nothing below tells a stranger what exists. A refused
///    token is audited with its error.
/// 4. The request is written to the audit devices; when none writes it, it stops here (500).
/// 5. The handler of the path's family authorizes the operation on that path and serves it,
///    and the response is written to the same devices.
async fn dispatch(
    State(state): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if STATUS_PATHS.contains(&uri.path()) {
        return status(&state, &method, &uri).await;
    }
    let remote = extensions
        .get::<axum::extract::ConnectInfo<RemoteAddr>>()
        .map(|c| c.0.0);
    let served = async {
        let request = ApiRequest::parse(&method, &uri)?;
        let caller = if crate::replication_proxy::unauthenticated(&request) {
            None
        } else {
            match authenticate(&state, &headers).await {
                Ok(caller) => Some(caller),
                Err(e) => {
                    let message = e.message.as_deref().unwrap_or_default();
                    // Refused either way: a device that fails here changes nothing.
                    let _ = crate::audit::log_request(&state, &request, None, &[], remote, message)
                        .await;
                    return Err(e);
                }
            }
        };
        let body = body?;
        let audited = crate::audit::log_request(
            &state,
            &request,
            caller.as_ref().map(|(t, e)| (t.as_str(), e)),
            &body,
            remote,
            "",
        )
        .await?;
        let response = route(&state, &request, caller, body)
            .await
            .unwrap_or_else(IntoResponse::into_response);
        Ok::<_, ApiError>(audited.log_response(response).await)
    };
    served.await.unwrap_or_else(IntoResponse::into_response)
}

/// The handler of the request's path family.
async fn route(
    state: &ServerState,
    request: &ApiRequest,
    caller: Option<(String, TokenEntry)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = request.path.as_str();
    let Some((token, entry)) = caller else {
        return crate::replication_proxy::handle(state, request, None, body).await;
    };
    if path.starts_with("auth/token/") {
        crate::token_api::handle(state, request, token, entry, &body).await
    } else if path == "sys/mounts" || path.starts_with("sys/mounts/") {
        crate::mounts_api::handle(state, request, &entry, &body).await
    } else if path == "sys/policies/acl"
        || path.starts_with("sys/policies/acl/")
        || path == "sys/policy"
        || path.starts_with("sys/policy/")
    {
        crate::policy_api::handle(state, request, &entry, &body).await
    } else if path == "sys/audit"
        || path.starts_with("sys/audit/")
        || path.starts_with("sys/audit-hash/")
    {
        crate::audit_api::handle(state, request, &entry, &body).await
    } else if path.starts_with("sys/replication/") {
        crate::replication_proxy::handle(state, request, Some(&entry), body).await
    } else if path == "sys/ha-status" && request.operation == crate::request::Operation::Read {
        crate::policy_api::authorize_request(state, &entry, request).await?;
        crate::ha::ha_status(state).await
    } else if path == "sys/metrics" && request.operation == crate::request::Operation::Read {
        crate::policy_api::authorize_request(state, &entry, request).await?;
        Ok(metrics(state))
    } else {
        // Everything else is a secrets engine's, by the mount table.
        crate::mounts_api::logical(state, request, &entry, body).await
    }
}

/// `sys/metrics` in Vault's JSON form (gauges and counters), with what ferry-vault measures
/// itself: the read cache's entries, bytes, hits and misses.
fn metrics(state: &ServerState) -> Response {
    let cache = state.storage.cache().stats();
    let gauge = |name: &str, value: usize| json!({ "Name": name, "Value": value, "Labels": {} });
    let counter = |name: &str, count: u64| {
        json!({
            "Name": name, "Count": count, "Sum": count, "Rate": 0.0, "Min": 1, "Max": 1,
            "Mean": 1, "Stddev": 0, "Labels": {},
        })
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    axum::Json(json!({
        "Timestamp": ferry_proto::time::rfc3339(now),
        "Gauges": [
            gauge("ferry.read_cache.entries", cache.entries),
            gauge("ferry.read_cache.bytes", cache.bytes),
        ],
        "Counters": [
            counter("ferry.read_cache.hits", cache.hits),
            counter("ferry.read_cache.misses", cache.misses),
        ],
        "Points": [],
        "Samples": [],
    }))
    .into_response()
}

/// The unauthenticated status endpoints, by method.
async fn status(state: &ServerState, method: &Method, uri: &Uri) -> Response {
    match (uri.path(), method) {
        ("/v1/sys/health", &Method::GET | &Method::HEAD) => health(state, uri).await,
        ("/v1/sys/leader", &Method::GET) => crate::ha::leader(state).await,
        ("/v1/sys/seal-status", &Method::GET) => seal_status(state),
        ("/v1/sys/init", &Method::GET) => init_status(),
        (path, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("unsupported method {method} on {}", &path[4..]),
        ),
    }
}

/// `sys/health`, with Vault's status codes and the query parameters that change them:
/// `activecode` (200), `sealedcode` (503), `uninitcode` (501), `standbycode` (429),
/// `performancestandbycode` (473) and `drsecondarycode` (472), and `standbyok` /
/// `perfstandbyok`, which answer a standby (or a performance standby) with the active code.
/// The node's role comes from its sidecar ([`crate::ha::NodeRole`]); the DR and uninitialised
/// codes are checked but never sent.
async fn health(s: &ServerState, uri: &Uri) -> Response {
    let query = match Query::<HashMap<String, String>>::try_from_uri(uri) {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid query string: {}", e.body_text()),
            );
        }
    };
    let code = |name: &str, default: u16| -> Result<StatusCode, ApiError> {
        match query.get(name) {
            None => Ok(StatusCode::from_u16(default).expect("a valid default")),
            Some(v) => v
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("invalid {name} {v:?}: not an HTTP status code"),
                    )
                }),
        }
    };
    let flag = |name: &str| -> Result<bool, ApiError> {
        match query.get(name).map(String::as_str) {
            None | Some("" | "true") => Ok(query.contains_key(name)),
            Some("false") => Ok(false),
            Some(v) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid {name} {v:?}: expected true or false"),
            )),
        }
    };
    let checked = (|| {
        let active = code("activecode", 200)?;
        let sealed = code("sealedcode", 503)?;
        for (name, default) in [("uninitcode", 501), ("drsecondarycode", 472)] {
            code(name, default)?;
        }
        Ok::<_, ApiError>((
            active,
            sealed,
            code("standbycode", 429)?,
            code("performancestandbycode", 473)?,
            flag("standbyok")?,
            flag("perfstandbyok")?,
        ))
    })();
    let (active, sealed_code, standby_code, perf_standby_code, standby_ok, perf_standby_ok) =
        match checked {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
    let sealed = s.sealed();
    let leader = s.storage.leader().await.ok();
    let role = crate::ha::NodeRole::of(leader.as_ref());
    let body = json!({
        "initialized": true,
        "sealed": sealed,
        "standby": role != crate::ha::NodeRole::Active,
        "performance_standby": role == crate::ha::NodeRole::PerformanceStandby,
        "replication_dr_mode": "disabled",
        "server_time_utc": crate::unseal::unix_now(),
        "version": VERSION,
    });
    let status = match role {
        _ if sealed => sealed_code,
        crate::ha::NodeRole::Active => active,
        crate::ha::NodeRole::PerformanceStandby if perf_standby_ok => active,
        crate::ha::NodeRole::PerformanceStandby => perf_standby_code,
        crate::ha::NodeRole::Standby if standby_ok => active,
        crate::ha::NodeRole::Standby => standby_code,
    };
    (status, axum::Json(body)).into_response()
}

fn seal_status(s: &ServerState) -> Response {
    axum::Json(json!({
        "type": "ferry-root-key-file",
        "initialized": true,
        "sealed": s.sealed(),
        "t": 1,
        "n": 1,
        "progress": 0,
        "nonce": "",
        "version": VERSION,
        "migration": false,
        "recovery_seal": false,
        "storage_type": "ferry",
    }))
    .into_response()
}

fn init_status() -> Response {
    axum::Json(json!({ "initialized": true })).into_response()
}

/// The token a request carries and its live entry; 403 when it is missing, unknown or expired.
/// A token with limited uses spends one here, and is revoked on its last.
pub async fn authenticate(
    state: &ServerState,
    headers: &HeaderMap,
) -> Result<(String, TokenEntry), ApiError> {
    if let Some(entry) = crate::forwarding::forwarded_identity() {
        return Ok((String::new(), entry));
    }
    let denied = || ApiError::new(StatusCode::FORBIDDEN, "permission denied");
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(denied)?
        .to_owned();
    let store = state.tokens();
    // A use counted on a performance standby is a write: the request goes to the active node.
    let internal = |e: crate::storage::StorageError| match e {
        crate::storage::StorageError::NotActive { .. } => e.into(),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut entry = store
        .lookup(&token)
        .await
        .map_err(internal)?
        .ok_or_else(denied)?;
    match entry.num_uses {
        0 => {}
        1 => store.revoke(&token).await.map_err(internal)?,
        _ => {
            entry.num_uses -= 1;
            store.put(&token, &entry).await.map_err(internal)?;
        }
    }
    crate::forwarding::note_authenticated(&entry);
    Ok((token, entry))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any request body parses (an empty or blank one as `{}`) or is a 400 that names the
        /// JSON problem; never a panic or a 500.
        #[test]
        fn bodies_parse_or_are_bad_requests(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                "[ \\t\\r\\n]{0,4}".prop_map(String::into_bytes),
                "[{}\\[\\]\":, a-z0-9.-]{0,24}".prop_map(String::into_bytes),
            ],
        ) {
            match parse_body::<Value>(&body) {
                Ok(value) => {
                    if body.iter().all(u8::is_ascii_whitespace) {
                        prop_assert_eq!(value, json!({}));
                    }
                }
                Err(e) => {
                    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    let message = e.message.unwrap_or_default();
                    prop_assert!(message.starts_with("failed to parse JSON input"), "{message}");
                }
            }
        }
    }
}
