//! `sys/policies/acl/...` (read, write, list, delete), Vault's older `sys/policy/...` for the
//! same policies, and the authorisation every request goes through, on the request's canonical
//! path and operation (see `request`). A policy write is an update whether the policy exists or
//! not: Vault has no existence check on either path (`vault/logical_system_paths.go`
//! `policyPaths`). Policies are
//! replicated (`sys/policy/<name>`, sealed by the replicated keyring); they are loaded for each
//! request, so a policy written on the primary applies on a secondary as soon as it is
//! replicated.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::barrier::Keyring;
use crate::policy::{Policy, capabilities, default_policy, list_capabilities, parse};
use crate::request::{ApiRequest, Operation};
use crate::server::{
    ApiError, ServerState, envelope, envelope_json, parse_body, top_level_envelope,
};
use crate::token::TokenEntry;

const POLICY_PREFIX: &str = "sys/policy/";
const MAX_NAME_BYTES: usize = 128;

/// Fails with 403 unless `entry`'s policies grant one of `needed` on `path` for `operation`
/// (a list also looks for an exact rule on the directory's name, as Vault does).
pub async fn authorize(
    state: &ServerState,
    entry: &TokenEntry,
    operation: Operation,
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
    let granted = match operation {
        Operation::List => list_capabilities(&policies, path),
        _ => capabilities(&policies, path),
    };
    if needed.iter().any(|c| granted.contains(*c)) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "permission denied"))
    }
}

/// Fails with 403 unless `entry` may do what `request` asks, on its canonical path.
pub async fn authorize_request(
    state: &ServerState,
    entry: &TokenEntry,
    request: &ApiRequest,
) -> Result<(), ApiError> {
    authorize(
        state,
        entry,
        request.operation,
        &request.path,
        request.operation.capabilities(),
    )
    .await
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

/// Which of Vault's two policy APIs a request uses: they serve the same policies in slightly
/// different shapes (`vault/logical_system.go`, `handlePolicies*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyApi {
    /// `sys/policies/acl`: a list is a `LIST`; a read answers `policy`; a write takes `policy`.
    Acl,
    /// `sys/policy`: a `GET` of the directory lists too; a read answers `rules`; a write takes
    /// `policy` or, deprecated, `rules`.
    Legacy,
}

/// The API and the policy name (empty for the directory) of a request path, if it is one of
/// the policy APIs'.
fn policy_route(path: &str) -> Option<(PolicyApi, &str)> {
    for (api, directory) in [
        (PolicyApi::Acl, "sys/policies/acl"),
        (PolicyApi::Legacy, "sys/policy"),
    ] {
        if let Some(rest) = path.strip_prefix(directory) {
            match rest.strip_prefix('/') {
                Some(name) => return Some((api, name)),
                None if rest.is_empty() => return Some((api, "")),
                None => {}
            }
        }
    }
    None
}

/// `sys/policies/acl/` and `sys/policy/` (list) and `sys/policies/acl/<name>` and
/// `sys/policy/<name>` (read, write, delete), for an authenticated caller.
pub async fn handle(
    state: &ServerState,
    request: &ApiRequest,
    entry: &TokenEntry,
    body: &Bytes,
) -> Result<Response, ApiError> {
    authorize_request(state, entry, request).await?;
    let keyring = state.keyring()?;
    let (api, name) = policy_route(&request.path).ok_or_else(|| request.no_handler())?;
    if name.is_empty() {
        let listed = match api {
            PolicyApi::Acl => request.operation == Operation::List,
            PolicyApi::Legacy => matches!(request.operation, Operation::List | Operation::Read),
        };
        if !listed {
            return Err(request.unsupported());
        }
        let mut keys = state.storage.list(POLICY_PREFIX).await?;
        keys.retain(|k| !k.ends_with('/'));
        keys.push("default".into());
        keys.push("root".into());
        keys.sort();
        keys.dedup();
        // As Vault: the legacy API also names them `policies`, at the top level too.
        return Ok(match api {
            PolicyApi::Acl => envelope(json!({ "keys": keys })),
            PolicyApi::Legacy => top_level_envelope(json!({ "keys": keys, "policies": keys })),
        });
    }
    if request.operation == Operation::List {
        return Err(request.unsupported());
    }
    // As Vault: `sys/policies/acl/ops/` names the policy `ops` (the ACL has seen the path as
    // sent).
    let name = name.strip_suffix('/').unwrap_or(name);
    validate_name(name)?;
    match request.operation {
        Operation::Read => {
            let text = match name {
                "default" => default_policy().text,
                "root" => String::new(),
                _ => {
                    load(state, &keyring, name)
                        .await?
                        .ok_or_else(ApiError::not_found)?
                        .text
                }
            };
            Ok(match api {
                PolicyApi::Acl => envelope(json!({ "name": name, "policy": text })),
                PolicyApi::Legacy => top_level_envelope(json!({ "name": name, "rules": text })),
            })
        }
        Operation::Write => {
            #[derive(Deserialize)]
            struct Write {
                policy: Option<String>,
                rules: Option<String>,
            }
            let req: Write = parse_body(body)?;
            let mut warnings = Vec::new();
            let text = match (api, req.policy.filter(|p| !p.is_empty()), req.rules) {
                (_, Some(policy), _) => policy,
                (PolicyApi::Legacy, None, Some(rules)) if !rules.is_empty() => {
                    warnings.push("'rules' is deprecated, please use 'policy' instead");
                    rules
                }
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "'policy' parameter not supplied or empty",
                    ));
                }
            };
            if matches!(name, "root" | "default") {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot update the {name:?} policy"),
                ));
            }
            parse(name, &text).map_err(|e| {
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
            if warnings.is_empty() {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
            let mut answer = envelope_json(Value::Null);
            answer["warnings"] = json!(warnings);
            Ok(axum::Json(answer).into_response())
        }
        Operation::Delete => {
            if matches!(name, "root" | "default") {
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
        Operation::List => Err(request.unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_policy_apis_route_to_a_name_or_their_directory() {
        use PolicyApi::{Acl, Legacy};
        assert_eq!(policy_route("sys/policies/acl"), Some((Acl, "")));
        assert_eq!(policy_route("sys/policies/acl/"), Some((Acl, "")));
        assert_eq!(policy_route("sys/policies/acl/ops"), Some((Acl, "ops")));
        assert_eq!(policy_route("sys/policy"), Some((Legacy, "")));
        assert_eq!(policy_route("sys/policy/"), Some((Legacy, "")));
        assert_eq!(policy_route("sys/policy/ops"), Some((Legacy, "ops")));
        // A name with a slash is routed whole, and refused by `validate_name`.
        assert_eq!(policy_route("sys/policy/a/b"), Some((Legacy, "a/b")));
        assert_eq!(policy_route("sys/policyx"), None);
        assert_eq!(policy_route("sys/policies/aclx"), None);
        assert_eq!(policy_route("sys/policies"), None);
    }
}
