//! `auth/token/...`: create, lookup (self, by token, by accessor), renew (self, by token) and
//! revoke (self, by token, by accessor), in Vault's shapes. Each call needs its capability on
//! `auth/token/<call>` (the implicit `default` policy grants the self calls); a token creates
//! children with at most its own policies unless it is root.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::policy_api::authorize_request;
use crate::request::{ApiRequest, Operation};
use crate::server::{ApiError, ServerState, envelope, parse_body};
use crate::storage::StorageError;
use crate::token::{MAX_TTL, TokenEntry, new_token, validate_accessor};
use crate::unseal::unix_now;

type ApiResult = Result<Response, ApiError>;

/// `auth/token/<call>`, for an authenticated caller (`token`, `entry`).
pub async fn handle(
    state: &ServerState,
    request: &ApiRequest,
    token: String,
    entry: TokenEntry,
    body: &Bytes,
) -> ApiResult {
    authorize_request(state, &entry, request).await?;
    let call = request
        .under("auth/token/")
        .ok_or_else(|| request.no_handler())?;
    let caller = Caller {
        state,
        token,
        entry,
    };
    use Operation::{Read, Write};
    match (call, request.operation) {
        ("lookup-self", Read | Write) => caller.lookup_self(),
        ("renew-self", Write) => caller.renew_self(body).await,
        ("revoke-self", Write) => caller.revoke_self().await,
        ("create", Write) => caller.create(body).await,
        ("lookup", Read | Write) => caller.lookup(body).await,
        ("lookup-accessor", Write) => caller.lookup_accessor(body).await,
        ("renew", Write) => caller.renew(body).await,
        ("revoke", Write) => caller.revoke(body).await,
        ("revoke-accessor", Write) => caller.revoke_accessor(body).await,
        (
            "lookup-self" | "renew-self" | "revoke-self" | "create" | "lookup" | "lookup-accessor"
            | "renew" | "revoke" | "revoke-accessor",
            _,
        ) => Err(request.unsupported()),
        _ => Err(request.no_handler()),
    }
}

struct Caller<'s> {
    state: &'s ServerState,
    token: String,
    entry: TokenEntry,
}

fn internal(e: StorageError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// A duration as Vault takes it: whole seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration(value: &Value) -> Result<u64, ApiError> {
    let seconds = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => ferry_proto::time::parse_duration(s),
        _ => None,
    };
    seconds.ok_or_else(|| bad(format!("{value} is not a duration such as 30m, 1h or 3600")))
}

/// Vault's `data` for a token lookup; `id` empty for a lookup by accessor.
fn lookup_data(id: &str, e: &TokenEntry) -> Value {
    let now = unix_now();
    json!({
        "id": id,
        "accessor": e.accessor,
        "policies": e.policies,
        "display_name": e.display_name,
        "creation_time": e.creation_time,
        "creation_ttl": e.ttl,
        "ttl": e.ttl_left(now),
        "expire_time": (e.expire_time != 0).then(|| ferry_proto::time::rfc3339(e.expire_time)),
        "explicit_max_ttl": 0,
        "num_uses": e.num_uses,
        "orphan": e.orphan,
        "path": if e.is_root() { "auth/token/root" } else { "auth/token/create" },
        "renewable": e.renewable,
        "type": "service",
        "meta": e.meta,
        "entity_id": "",
    })
}

/// Vault's `auth` block for a created or renewed token.
fn auth_response(token: &str, e: &TokenEntry) -> Response {
    axum::Json(json!({
        "request_id": "",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": token,
            "accessor": e.accessor,
            "policies": e.policies,
            "token_policies": e.policies,
            "metadata": e.meta,
            "lease_duration": e.ttl_left(unix_now()),
            "renewable": e.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": e.orphan,
            "num_uses": e.num_uses,
        },
    }))
    .into_response()
}

#[derive(Deserialize)]
struct TokenField {
    #[serde(default)]
    token: String,
    #[serde(default)]
    increment: Option<Value>,
}

#[derive(Deserialize)]
struct AccessorField {
    #[serde(default)]
    accessor: String,
}

impl<'s> Caller<'s> {
    fn lookup_self(&self) -> ApiResult {
        Ok(envelope(lookup_data(&self.token, &self.entry)))
    }

    async fn create(&self, body: &Bytes) -> ApiResult {
        #[derive(Deserialize)]
        struct Create {
            policies: Option<Vec<String>>,
            ttl: Option<Value>,
            renewable: Option<bool>,
            #[serde(default)]
            no_parent: bool,
            display_name: Option<String>,
            #[serde(default)]
            num_uses: u64,
            meta: Option<BTreeMap<String, String>>,
        }
        let req: Create = parse_body(body)?;
        let ttl = match &req.ttl {
            Some(v) => parse_duration(v)?,
            None => MAX_TTL,
        };
        if ttl > MAX_TTL {
            return Err(bad(format!("ttl {ttl}s is over the maximum of {MAX_TTL}s")));
        }
        let mut policies = req.policies.unwrap_or_else(|| self.entry.policies.clone());
        policies.sort();
        policies.dedup();
        if !self.entry.is_root()
            && let Some(extra) = policies
                .iter()
                .find(|p| *p != "default" && !self.entry.policies.contains(p))
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("child policies must be a subset of the parent's: {extra:?} is not"),
            ));
        }
        if policies.iter().any(|p| p.is_empty() || p.len() > 128) {
            return Err(bad("policy names must be 1 to 128 characters"));
        }
        let now = unix_now();
        let (token, accessor) = new_token();
        let entry = TokenEntry {
            accessor,
            policies,
            display_name: format!(
                "token{}",
                req.display_name
                    .filter(|d| !d.is_empty())
                    .map(|d| format!("-{d}"))
                    .unwrap_or_default()
            ),
            creation_time: now,
            ttl,
            expire_time: if ttl == 0 { 0 } else { now + ttl },
            renewable: req.renewable.unwrap_or(true),
            num_uses: req.num_uses,
            orphan: req.no_parent,
            meta: req.meta,
        };
        self.state
            .tokens()
            .put(&token, &entry)
            .await
            .map_err(internal)?;
        Ok(auth_response(&token, &entry))
    }

    async fn lookup(&self, body: &Bytes) -> ApiResult {
        let req: TokenField = parse_body(body)?;
        if req.token.is_empty() {
            return Err(bad("missing token to look up"));
        }
        let entry = self
            .state
            .tokens()
            .lookup(&req.token)
            .await
            .map_err(internal)?
            .ok_or_else(|| bad("bad token"))?;
        Ok(envelope(lookup_data(&req.token, &entry)))
    }

    async fn lookup_accessor(&self, body: &Bytes) -> ApiResult {
        let req: AccessorField = parse_body(body)?;
        validate_accessor(&req.accessor).map_err(bad)?;
        let (_, entry) = self
            .state
            .tokens()
            .by_accessor(&req.accessor)
            .await
            .map_err(internal)?
            .ok_or_else(|| bad("invalid accessor"))?;
        Ok(envelope(lookup_data("", &entry)))
    }

    async fn renew_self(&self, body: &Bytes) -> ApiResult {
        let req: TokenField = parse_body(body)?;
        self.renew_token(&self.token, self.entry.clone(), req.increment.as_ref())
            .await
    }

    async fn renew(&self, body: &Bytes) -> ApiResult {
        let req: TokenField = parse_body(body)?;
        let entry = self
            .state
            .tokens()
            .lookup(&req.token)
            .await
            .map_err(internal)?
            .ok_or_else(|| bad("bad token"))?;
        self.renew_token(&req.token, entry, req.increment.as_ref())
            .await
    }

    async fn renew_token(
        &self,
        token: &str,
        mut entry: TokenEntry,
        increment: Option<&Value>,
    ) -> ApiResult {
        if entry.ttl == 0 {
            return Err(bad("the token has no TTL: nothing to renew"));
        }
        if !entry.renewable {
            return Err(bad("the token is not renewable"));
        }
        let increment = match increment {
            Some(v) => parse_duration(v)?,
            None => entry.ttl,
        };
        let now = unix_now();
        entry.expire_time = now + increment.clamp(1, MAX_TTL);
        self.state
            .tokens()
            .put(token, &entry)
            .await
            .map_err(internal)?;
        Ok(auth_response(token, &entry))
    }

    async fn revoke_self(&self) -> ApiResult {
        self.state
            .tokens()
            .revoke(&self.token)
            .await
            .map_err(internal)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn revoke(&self, body: &Bytes) -> ApiResult {
        let req: TokenField = parse_body(body)?;
        if req.token.is_empty() {
            return Err(bad("missing token to revoke"));
        }
        self.state
            .tokens()
            .revoke(&req.token)
            .await
            .map_err(internal)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn revoke_accessor(&self, body: &Bytes) -> ApiResult {
        let req: AccessorField = parse_body(body)?;
        validate_accessor(&req.accessor).map_err(bad)?;
        if !self
            .state
            .tokens()
            .revoke_accessor(&req.accessor)
            .await
            .map_err(internal)?
        {
            return Err(bad("invalid accessor"));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_vault() {
        assert_eq!(parse_duration(&json!("1h")).unwrap(), 3600);
        assert_eq!(parse_duration(&json!(90)).unwrap(), 90);
        assert_eq!(parse_duration(&json!("15m")).unwrap(), 900);
        assert!(parse_duration(&json!("soon")).is_err());
        assert!(parse_duration(&json!(-5)).is_err());
    }
}
