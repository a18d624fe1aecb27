//! `sys/policies/acl/...` (read, write, list, delete) and the authorisation every request goes
//! through. Policies are replicated (`sys/policy/<name>`, sealed by the replicated keyring);
//! they are loaded for each request, so a policy written on the primary applies on a secondary
//! as soon as it is replicated.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::barrier::Keyring;
use crate::policy::{Policy, capabilities, default_policy, parse};
use crate::server::{ApiError, ServerState, authenticate, envelope, parse_body};
use crate::token::TokenEntry;

const POLICY_PREFIX: &str = "sys/policy/";
const MAX_NAME_BYTES: usize = 128;

/// The capabilities that allow a request with `method` (a list when `list`), any one of them.
pub fn needed(method: &Method, list: bool) -> &'static [&'static str] {
    match *method {
        _ if list => &["list"],
        Method::GET => &["read"],
        Method::DELETE => &["delete"],
        _ => &["create", "update"],
    }
}

/// Fails with 403 unless `entry`'s policies grant one of `needed` on `path`.
pub async fn authorize(
    state: &ServerState,
    entry: &TokenEntry,
    path: &str,
    needed: &[&str],
) -> Result<(), ApiError> {
    if entry.is_root() {
        return Ok(());
    }
    let keyring = state.keyring()?;
    let mut policies = vec![default_policy()];
    for name in entry.policies.iter().filter(|n| *n != "default") {
        if let Some(p) = load(state, &keyring, name).await? {
            policies.push(p);
        }
    }
    let granted = capabilities(&policies, path);
    if needed.iter().any(|c| granted.contains(*c)) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "permission denied"))
    }
}

async fn load(
    state: &ServerState,
    keyring: &Keyring,
    name: &str,
) -> Result<Option<Policy>, ApiError> {
    let key = format!("{POLICY_PREFIX}{name}");
    let internal = |m: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m);
    let Some(sealed) = state.storage.get(&key).await? else {
        return Ok(None);
    };
    let text = keyring
        .open(&key, &sealed)
        .map_err(|e| internal(e.to_string()))?;
    let text = String::from_utf8(text).map_err(|e| internal(e.to_string()))?;
    parse(name, &text)
        .map(Some)
        .map_err(|e| internal(format!("stored policy {name:?}: {}", e.0)))
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid policy name {name:?}: use 1 to {MAX_NAME_BYTES} lowercase letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

/// `/v1/sys/policies/acl` and `/v1/sys/policies/acl/{name}`.
pub async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    name: Option<Path<String>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let name = name.map(|Path(n)| n).unwrap_or_default();
    let result = async {
        let body = body?;
        let (_, entry) = authenticate(&state, &headers).await?;
        let keyring = state.keyring()?;
        let list = method.as_str() == "LIST" || query.get("list").is_some_and(|v| v == "true");
        let path = format!("sys/policies/acl/{name}");
        if name.is_empty() || list {
            authorize(&state, &entry, "sys/policies/acl", &["list"]).await?;
            let mut keys = state.storage.list(POLICY_PREFIX).await?;
            keys.retain(|k| !k.ends_with('/'));
            keys.push("default".into());
            keys.push("root".into());
            keys.sort();
            keys.dedup();
            return Ok(envelope(json!({ "keys": keys, "policies": keys })));
        }
        validate_name(&name)?;
        match method {
            Method::GET => {
                authorize(&state, &entry, &path, &["read"]).await?;
                let text = match name.as_str() {
                    "default" => default_policy().text,
                    "root" => String::new(),
                    _ => {
                        load(&state, &keyring, &name)
                            .await?
                            .ok_or_else(ApiError::not_found)?
                            .text
                    }
                };
                Ok(envelope(
                    json!({ "name": name, "policy": text, "rules": text }),
                ))
            }
            Method::POST | Method::PUT => {
                authorize(&state, &entry, &path, &["create", "update"]).await?;
                #[derive(Deserialize)]
                struct Write {
                    policy: Option<String>,
                }
                let req: Write = parse_body(&body)?;
                let text = req.policy.ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "'policy' parameter not supplied")
                })?;
                if matches!(name.as_str(), "root" | "default") {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("cannot update the {name:?} policy"),
                    ));
                }
                parse(&name, &text).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("failed to parse policy: {}", e.0),
                    )
                })?;
                let key = format!("{POLICY_PREFIX}{name}");
                state
                    .storage
                    .put(&key, keyring.seal(&key, text.as_bytes()))
                    .await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Method::DELETE => {
                authorize(&state, &entry, &path, &["delete"]).await?;
                if matches!(name.as_str(), "root" | "default") {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("cannot delete the {name:?} policy"),
                    ));
                }
                state
                    .storage
                    .delete(&format!("{POLICY_PREFIX}{name}"))
                    .await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("unsupported operation {method} on {path}"),
            )),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
