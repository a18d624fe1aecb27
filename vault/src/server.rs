//! The HTTP API, Vault's conventions: `/v1/` paths, `X-Vault-Token`, JSON bodies, Vault's status
//! codes and `{"errors": [...]}` bodies. This first slice serves `sys/health`, `sys/seal-status`,
//! `sys/init` and `auth/token/lookup-self`; the engines come next.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::barrier::Keyring;
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
    /// The last mount table read, with the sealed bytes it came from.
    pub mount_cache: std::sync::Mutex<Option<(Vec<u8>, Arc<crate::mounts::MountTable>)>>,
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
    /// The request needs a replicated write this cluster refuses: forward it to the primary.
    pub forward: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: Some(message.into()),
            forward: false,
        }
    }

    /// Vault's bare 404: `{"errors": []}`.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: None,
            forward: false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let errors: Vec<String> = self.message.into_iter().collect();
        let mut response = (self.status, axum::Json(json!({ "errors": errors }))).into_response();
        if self.forward {
            response
                .extensions_mut()
                .insert(crate::forwarding::MustForward);
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
                forward: true,
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this cluster cannot write replicated storage: {m}"),
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

fn request_id() -> String {
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

/// Every endpoint, as the primary also runs them for forwarded requests.
pub fn routes(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/sys/health", get(health).head(health))
        .route("/v1/sys/seal-status", get(seal_status))
        .route("/v1/sys/init", get(init_status))
        .route(
            "/v1/auth/token/{*rest}",
            axum::routing::any(crate::token_api::handle),
        )
        .route(
            "/v1/sys/mounts",
            axum::routing::any(crate::mounts_api::handle),
        )
        .route(
            "/v1/sys/mounts/{*path}",
            axum::routing::any(crate::mounts_api::handle),
        )
        .route(
            "/v1/sys/policies/acl",
            axum::routing::any(crate::policy_api::handle),
        )
        .route(
            "/v1/sys/policies/acl/{name}",
            axum::routing::any(crate::policy_api::handle),
        )
        .route(
            "/v1/sys/replication/{*rest}",
            axum::routing::any(crate::replication_proxy::handle),
        )
        // Everything else is a secrets engine's, by the mount table.
        .fallback(crate::mounts_api::logical)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `sys/health`, with Vault's status codes and the query parameters that change them:
/// `activecode` (200), `sealedcode` (503), `uninitcode` (501), `standbycode` (429),
/// `performancestandbycode` (473) and `drsecondarycode` (472), and `standbyok` /
/// `perfstandbyok`, which answer a standby with the active code. Every node of a ferry-vault
/// cluster is active for now (standbys come later), so only the active and sealed codes are
/// ever sent; the others are still checked.
async fn health(
    State(s): Shared,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
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
        for (name, default) in [
            ("uninitcode", 501),
            ("standbycode", 429),
            ("performancestandbycode", 473),
            ("drsecondarycode", 472),
        ] {
            code(name, default)?;
        }
        flag("standbyok")?;
        flag("perfstandbyok")?;
        Ok::<_, ApiError>((active, sealed))
    })();
    let (active, sealed_code) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let sealed = s.sealed();
    let body = json!({
        "initialized": true,
        "sealed": sealed,
        "standby": false,
        "performance_standby": false,
        "replication_dr_mode": "disabled",
        "server_time_utc": crate::unseal::unix_now(),
        "version": VERSION,
    });
    let status = if sealed { sealed_code } else { active };
    (status, axum::Json(body)).into_response()
}

async fn seal_status(State(s): Shared) -> Response {
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

async fn init_status() -> Response {
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
    let internal = |e: crate::storage::StorageError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
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
