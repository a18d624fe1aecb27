//! `sys/audit` (list the devices), `sys/audit/<path>` (enable with `PUT`/`POST`, disable with
//! `DELETE`) and `sys/audit-hash/<path>` (the hash a device writes for an input), in Vault's
//! shapes; see `audit` for what the devices do and where their table lives.
//!
//! `sys/audit` and `sys/audit/<path>` need `sudo` on their path (a root token has it), as in
//! Vault, where they are root-protected paths; a device's path is authorized without its
//! trailing slash, however the request spelled it. `sys/audit-hash/<path>` needs `update`.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::info;

use crate::audit::{Device, DeviceConfig, new_salt};
use crate::policy_api::{authorize, authorize_request};
use crate::request::{ApiRequest, Operation};
use crate::server::{ApiError, ServerState, parse_body};
use crate::token::TokenEntry;

/// Longest device path accepted.
const MAX_PATH_BYTES: usize = 128;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// `sys/audit`, `sys/audit/<path>` and `sys/audit-hash/<path>`, for an authenticated caller.
pub async fn handle(
    state: &ServerState,
    request: &ApiRequest,
    entry: &TokenEntry,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let operation = request.operation;
    if let Some(device) = request.under("sys/audit-hash/") {
        authorize_request(state, entry, request).await?;
        if operation != Operation::Write {
            return Err(request.unsupported());
        }
        return hash(state, &device_path(device)?, body);
    }
    let sub = match request.path.strip_prefix("sys/audit") {
        Some(sub) if sub.is_empty() || sub.starts_with('/') => sub,
        _ => return Err(request.no_handler()),
    };
    if sub.trim_matches('/').is_empty() {
        authorize(state, entry, operation, "sys/audit", &["sudo"]).await?;
        return match operation {
            Operation::Read | Operation::List => Ok(list(state)),
            _ => Err(request.unsupported()),
        };
    }
    let path = device_path(&sub[1..])?;
    let acl_path = format!("sys/audit/{}", path.trim_end_matches('/'));
    authorize(state, entry, operation, &acl_path, &["sudo"]).await?;
    match operation {
        Operation::Write => enable(state, &path, body).await,
        Operation::Delete => disable(state, &path).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("unsupported operation {operation} on {acl_path}"),
        )),
    }
}

/// A device's path with its trailing slash (`file/`); 400 unless it is 1 to
/// [`MAX_PATH_BYTES`] ASCII letters, digits, `-`, `_`, `.` and `/`.
fn device_path(raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed.len() > MAX_PATH_BYTES
        || !trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return Err(bad(format!(
            "invalid audit device path {raw:?}: 1 to {MAX_PATH_BYTES} ASCII letters, digits, \
             '-', '_', '.' or '/'"
        )));
    }
    Ok(format!("{trimmed}/"))
}

/// Vault's description of one device (never its salt).
fn device_json(config: &DeviceConfig) -> Value {
    json!({
        "type": config.kind,
        "description": config.description,
        "options": config.options,
        "local": config.local,
        "path": config.path,
    })
}

fn list(state: &ServerState) -> Response {
    let data = state
        .audit
        .devices()
        .iter()
        .map(|d| (d.config.path.clone(), device_json(&d.config)))
        .collect();
    crate::server::top_level_envelope(Value::Object(data))
}

async fn enable(state: &ServerState, path: &str, body: &[u8]) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Enable {
        #[serde(rename = "type")]
        kind: Option<String>,
        description: Option<String>,
        options: Option<HashMap<String, Value>>,
        #[serde(default)]
        local: bool,
    }
    let req: Enable = parse_body(body)?;
    let kind = req.kind.unwrap_or_default();
    if kind.is_empty() {
        return Err(bad("missing audit device type"));
    }
    if kind != "file" {
        return Err(bad(format!(
            "unsupported audit device type {kind:?}: ferry-vault has file devices only"
        )));
    }
    let mut options = BTreeMap::new();
    for (name, value) in req.options.unwrap_or_default() {
        let text = match value {
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            other => return Err(bad(format!("invalid option {name}: {other} is not text"))),
        };
        options.insert(name, text);
    }
    let config = DeviceConfig {
        path: path.to_owned(),
        kind,
        description: req.description.unwrap_or_default(),
        options,
        local: req.local,
        salt: new_salt(),
    };
    let device = std::sync::Arc::new(Device::new(config.clone()).map_err(bad)?);
    let file_path = config.options.get("file_path").cloned().unwrap_or_default();
    tokio::task::spawn_blocking(move || device.check())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| bad(format!("failed to open the audit file {file_path}: {e}")))?;
    state
        .audit
        .change(&state.storage, &state.local, |table| {
            if table.devices.iter().any(|d| d.path == path) {
                return Err(bad(format!("path already in use: {path}")));
            }
            table.devices.push(config);
            Ok(())
        })
        .await?;
    info!(path, file_path = %file_path, "enabled an audit device");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn disable(state: &ServerState, path: &str) -> Result<Response, ApiError> {
    let removed = state
        .audit
        .change(&state.storage, &state.local, |table| {
            let before = table.devices.len();
            table.devices.retain(|d| d.path != path);
            Ok(table.devices.len() != before)
        })
        .await?;
    if removed {
        info!(path, "disabled an audit device");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn hash(state: &ServerState, path: &str, body: &[u8]) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Input {
        input: Option<String>,
    }
    let input: Input = parse_body(body)?;
    let input = input.input.ok_or_else(|| bad("missing input"))?;
    let devices = state.audit.devices();
    let device = devices
        .iter()
        .find(|d| d.config.path == path)
        .ok_or_else(|| bad(format!("no audit device at {path}")))?;
    let mut data = Map::new();
    data.insert("hash".into(), device.hash(&input).into());
    Ok(crate::server::top_level_envelope(Value::Object(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths_get_one_trailing_slash_or_are_refused() {
        assert_eq!(device_path("file").expect("valid"), "file/");
        assert_eq!(device_path("file/").expect("valid"), "file/");
        assert_eq!(device_path("a/b.c_d-e").expect("valid"), "a/b.c_d-e/");
        for raw in ["", "/", "a b", "x%2f", &"a".repeat(MAX_PATH_BYTES + 1)] {
            assert!(device_path(raw).is_err(), "{raw:?} accepted");
        }
    }
}
