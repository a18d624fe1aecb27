//! `auth/token/...`: create (`create`, `create-orphan`), lookup (self, by token, by accessor),
//! renew (self, by token) and revoke (self, by token, by accessor, `revoke-orphan`), in Vault's
//! shapes and by Vault's rules. Each call needs its capability on `auth/token/<call>` (the
//! implicit `default` policy grants the self calls); a token creates children with at most its
//! own policies unless it is root. On top of that, as in Vault:
//!
//! * a limited-use token (`num_uses`) creates no tokens, so its uses cannot be multiplied;
//! * a token is its creator's child, revoked with it, unless it is an orphan: `no_parent` needs
//!   `sudo` on `auth/token/create`, `create-orphan` needs only its own path's `update`;
//! * `renew-accessor` renews the token an accessor names, and never shows that token;
//! * `revoke`, `revoke-self` and `revoke-accessor` revoke the token's subtree; `revoke-orphan`
//!   (`sudo`) revokes the token alone and orphans its children;
//! * `LIST accessors` (`list` and `sudo`: a root path of Vault's token store) lists the
//!   accessors of the live tokens, at most [`MAX_LISTED_ACCESSORS`] of them;
//! * TTLs follow [`crate::token::ttl`]: a default instead of forever, `explicit_max_ttl`, and
//!   renewals capped by the max TTL counted from creation, with Vault's warnings.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::policy_api::{authorize, authorize_request};
use crate::request::{ApiRequest, Operation};
use crate::server::{ApiError, ServerState, envelope, parse_body};
use crate::storage::StorageError;
use crate::token::ttl::{self, CreateRequest, Grant, RenewRequest, SystemLimits, TtlError};
use crate::token::{MAX_TREE_DEPTH, TokenEntry, new_token, token_hash, validate_accessor};
use crate::unseal::unix_now;

/// Most accessors `LIST auth/token/accessors` answers with. Vault lists every one; ferry-vault
/// refuses (400) a list of more, rather than build an answer without bound, and each listed
/// accessor costs a lookup (its token must be live).
pub const MAX_LISTED_ACCESSORS: usize = 10_000;

/// The system's token TTLs: Vault's defaults (no `sys/auth/token/tune` yet).
const LIMITS: SystemLimits = SystemLimits::VAULT_DEFAULTS;

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
    use Operation::{List, Read, Write};
    match (call, request.operation) {
        ("accessors/", List) => caller.list_accessors(request).await,
        ("lookup-self", Read | Write) => caller.lookup_self(),
        ("renew-self", Write) => caller.renew_self(body).await,
        ("revoke-self", Write) => caller.revoke_self().await,
        ("create", Write) => caller.create(body, false).await,
        ("create-orphan", Write) => caller.create(body, true).await,
        ("lookup", Read | Write) => caller.lookup(request, body).await,
        ("lookup-accessor", Write) => caller.lookup_accessor(body).await,
        ("renew", Write) => caller.renew(body).await,
        ("renew-accessor", Write) => caller.renew_accessor(body).await,
        ("revoke", Write) => caller.revoke(body).await,
        ("revoke-accessor", Write) => caller.revoke_accessor(body).await,
        ("revoke-orphan", Write) => caller.revoke_orphan(body).await,
        (
            "lookup-self" | "renew-self" | "revoke-self" | "create" | "create-orphan" | "lookup"
            | "lookup-accessor" | "renew" | "renew-accessor" | "revoke" | "revoke-accessor"
            | "revoke-orphan" | "accessors" | "accessors/",
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

/// A storage failure is a 500, except a write a performance standby refuses: that request is
/// forwarded to the active node.
fn internal(e: StorageError) -> ApiError {
    match e {
        StorageError::NotActive { .. } => e.into(),
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn ttl_refused(e: TtlError) -> ApiError {
    bad(e.to_string())
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

/// Vault's `data` for a token lookup; `id` empty for a lookup by accessor. Like Vault's, it
/// does not name the parent.
fn lookup_data(id: &str, e: &TokenEntry) -> Value {
    let now = unix_now();
    let expires = e.expire_time != 0;
    let path = match e.path.as_str() {
        "" if e.is_root() => "auth/token/root",
        "" => "auth/token/create",
        path => path,
    };
    let mut data = json!({
        "id": id,
        "accessor": e.accessor,
        "policies": e.policies,
        "display_name": e.display_name,
        "creation_time": e.creation_time,
        "creation_ttl": e.ttl,
        "ttl": e.ttl_left(now),
        "expire_time": expires.then(|| ferry_proto::time::rfc3339(e.expire_time)),
        "explicit_max_ttl": e.explicit_max_ttl,
        "num_uses": e.num_uses,
        "orphan": e.orphan,
        "path": path,
        "type": "service",
        "meta": e.meta,
        "entity_id": "",
    });
    // As Vault: a token that never expires has no lease, hence no issue time and no word on
    // renewal.
    if expires {
        data["issue_time"] = json!(ferry_proto::time::rfc3339(e.creation_time));
        data["renewable"] = json!(e.renewable);
    }
    data
}

/// Vault's `auth` block for a created or renewed token, with the warnings of its TTL. `granted`
/// is when its TTL was set, so `lease_duration` is the TTL granted, not what is left of it a
/// second later.
fn auth_response(token: &str, e: &TokenEntry, granted: u64, warnings: Vec<String>) -> Response {
    axum::Json(json!({
        "request_id": crate::server::request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": (!warnings.is_empty()).then_some(warnings),
        "auth": {
            "client_token": token,
            "accessor": e.accessor,
            "policies": e.policies,
            "token_policies": e.policies,
            "metadata": e.meta,
            "lease_duration": e.ttl_left(granted),
            "renewable": e.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": e.orphan,
            "num_uses": e.num_uses,
            "mfa_requirement": null,
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

/// The token `auth/token/lookup` looks up, as Vault chooses it: the `token` parameter, from
/// the query of a GET (Vault reads a GET's parameters there) or from the body otherwise, and
/// without one the caller's own token.
fn lookup_target<'a>(
    request: &'a ApiRequest,
    body_token: &'a str,
    caller_token: &'a str,
) -> &'a str {
    let given = match request.operation {
        Operation::Read => request.query.get("token").map_or("", String::as_str),
        _ => body_token,
    };
    if given.is_empty() {
        caller_token
    } else {
        given
    }
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

    /// Whether the caller has `sudo` on `path` (root has everything).
    async fn has_sudo(&self, path: &str) -> Result<bool, ApiError> {
        match authorize(self.state, &self.entry, Operation::Write, path, &["sudo"]).await {
            Ok(()) => Ok(true),
            Err(e) if e.status == StatusCode::FORBIDDEN => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `create` (a child of the caller, or an orphan with `no_parent` and `sudo`) and
    /// `create-orphan` (`orphan_path`).
    async fn create(&self, body: &Bytes, orphan_path: bool) -> ApiResult {
        #[derive(Deserialize)]
        struct Create {
            policies: Option<Vec<String>>,
            ttl: Option<Value>,
            explicit_max_ttl: Option<Value>,
            renewable: Option<bool>,
            #[serde(default)]
            no_parent: bool,
            display_name: Option<String>,
            #[serde(default)]
            num_uses: u64,
            meta: Option<BTreeMap<String, String>>,
        }
        // Its uses would otherwise be multiplied by its children's.
        if self.entry.num_uses > 0 {
            return Err(bad("restricted use token cannot generate child tokens"));
        }
        let req: Create = parse_body(body)?;
        let orphan = if orphan_path {
            true
        } else if req.no_parent {
            if !self.has_sudo("auth/token/create").await? {
                return Err(bad(
                    "root or sudo privileges required to create orphan token",
                ));
            }
            true
        } else {
            false
        };
        if !orphan && self.entry.depth >= MAX_TREE_DEPTH {
            return Err(bad(format!(
                "a token may have at most {MAX_TREE_DEPTH} ancestors: create an orphan instead"
            )));
        }
        let duration = |v: &Option<Value>| v.as_ref().map_or(Ok(0), parse_duration);
        let (ttl, explicit_max_ttl) = (duration(&req.ttl)?, duration(&req.explicit_max_ttl)?);
        let mut policies = req.policies.unwrap_or_else(|| self.entry.policies.clone());
        policies.sort();
        policies.dedup();
        if !self.entry.is_root()
            && let Some(extra) = policies
                .iter()
                .find(|p| *p != "default" && !self.entry.policies.contains(p))
        {
            return Err(bad(format!(
                "child policies must be a subset of the parent's: {extra:?} is not"
            )));
        }
        if policies.iter().any(|p| p.is_empty() || p.len() > 128) {
            return Err(bad("policy names must be 1 to 128 characters"));
        }
        let root = policies.iter().any(|p| p == "root");
        let Grant { ttl, warnings } = ttl::creation(
            LIMITS,
            CreateRequest {
                ttl,
                explicit_max_ttl,
                root,
                parent_expires: self.entry.expire_time != 0,
            },
        )
        .map_err(ttl_refused)?;
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
            // As Vault: a token that never expires is not advertised as renewable.
            renewable: ttl != 0 && req.renewable.unwrap_or(true),
            num_uses: req.num_uses,
            orphan,
            meta: req.meta,
            parent: (!orphan).then(|| token_hash(&self.token)),
            depth: if orphan { 0 } else { self.entry.depth + 1 },
            explicit_max_ttl,
            path: if orphan_path {
                "auth/token/create-orphan".into()
            } else {
                "auth/token/create".into()
            },
        };
        self.state
            .tokens()
            .create(&token, &entry)
            .await
            .map_err(internal)?;
        Ok(auth_response(&token, &entry, now, warnings))
    }

    async fn lookup(&self, request: &ApiRequest, body: &Bytes) -> ApiResult {
        let req: TokenField = parse_body(body)?;
        let token = lookup_target(request, &req.token, &self.token);
        if token.is_empty() {
            return Err(bad("missing token to look up"));
        }
        // As Vault: an unknown token is refused as a permission, not as a malformed request.
        let entry = self
            .state
            .tokens()
            .lookup(token)
            .await
            .map_err(internal)?
            .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "bad token"))?;
        Ok(envelope(lookup_data(token, &entry)))
    }

    /// `LIST auth/token/accessors` (Vault's `tokenStoreAccessorList`): `keys` holds the
    /// accessor of every live token of this cluster; 404 when there is none, as for any empty
    /// list. The caller needs `sudo` besides the `list` already checked.
    async fn list_accessors(&self, request: &ApiRequest) -> ApiResult {
        authorize(
            self.state,
            &self.entry,
            Operation::List,
            &request.path,
            &["sudo"],
        )
        .await?;
        let store = self.state.tokens();
        let indexed = store.accessors().await.map_err(internal)?;
        if indexed.len() > MAX_LISTED_ACCESSORS {
            return Err(bad(format!(
                "cannot list {} token accessors: the limit is {MAX_LISTED_ACCESSORS}",
                indexed.len()
            )));
        }
        let mut keys = Vec::with_capacity(indexed.len());
        for accessor in indexed {
            // An accessor whose token expired unseen is swept here rather than listed.
            if store
                .by_accessor(&accessor)
                .await
                .map_err(internal)?
                .is_some()
            {
                keys.push(accessor);
            }
        }
        if keys.is_empty() {
            return Err(ApiError::not_found());
        }
        Ok(envelope(json!({ "keys": keys })))
    }

    /// The token `accessor` names (its hash and entry); a malformed or unknown accessor is a
    /// 400, as in Vault.
    async fn by_accessor(&self, accessor: &str) -> Result<(String, TokenEntry), ApiError> {
        validate_accessor(accessor).map_err(bad)?;
        self.state
            .tokens()
            .by_accessor(accessor)
            .await
            .map_err(internal)?
            .ok_or_else(|| bad("invalid accessor"))
    }

    async fn lookup_accessor(&self, body: &Bytes) -> ApiResult {
        let req: AccessorField = parse_body(body)?;
        let (_, entry) = self.by_accessor(&req.accessor).await?;
        Ok(envelope(lookup_data("", &entry)))
    }

    async fn renew_self(&self, body: &Bytes) -> ApiResult {
        let req: TokenField = parse_body(body)?;
        let hash = token_hash(&self.token);
        self.renew_token(
            &hash,
            &self.token,
            self.entry.clone(),
            req.increment.as_ref(),
        )
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
        let hash = token_hash(&req.token);
        self.renew_token(&hash, &req.token, entry, req.increment.as_ref())
            .await
    }

    /// Renews the token `accessor` names; the answer's `client_token` is empty.
    async fn renew_accessor(&self, body: &Bytes) -> ApiResult {
        #[derive(Deserialize)]
        struct RenewAccessor {
            #[serde(default)]
            accessor: String,
            #[serde(default)]
            increment: Option<Value>,
        }
        let req: RenewAccessor = parse_body(body)?;
        let (hash, entry) = self.by_accessor(&req.accessor).await?;
        self.renew_token(&hash, "", entry, req.increment.as_ref())
            .await
    }

    /// Renews the token stored under `<hash>`; `shown` is the token the answer names.
    async fn renew_token(
        &self,
        hash: &str,
        shown: &str,
        mut entry: TokenEntry,
        increment: Option<&Value>,
    ) -> ApiResult {
        if entry.ttl == 0 {
            return Err(bad("the token has no TTL: nothing to renew"));
        }
        if !entry.renewable {
            return Err(bad("the token is not renewable"));
        }
        let increment = increment.map_or(Ok(0), parse_duration)?;
        let now = unix_now();
        let Grant { ttl, warnings } = ttl::renewal(
            LIMITS,
            RenewRequest {
                increment,
                creation_ttl: entry.ttl,
                explicit_max_ttl: entry.explicit_max_ttl,
                creation_time: entry.creation_time,
            },
            now,
        )
        .map_err(ttl_refused)?;
        entry.expire_time = now + ttl;
        self.state
            .tokens()
            .put_hash(hash, &entry)
            .await
            .map_err(internal)?;
        Ok(auth_response(shown, &entry, now, warnings))
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
            // As Vault: nothing to revoke is a success, with a warning.
            let mut answer = crate::server::envelope_json(Value::Null);
            answer["warnings"] = json!(["No token found with this accessor"]);
            return Ok(axum::Json(answer).into_response());
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// Revokes one token and leaves its children, as orphans. Vault makes this a root path:
    /// `sudo` on it is needed besides `update`.
    async fn revoke_orphan(&self, body: &Bytes) -> ApiResult {
        if !self.has_sudo("auth/token/revoke-orphan").await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "root or sudo privileges required to revoke and orphan",
            ));
        }
        let req: TokenField = parse_body(body)?;
        if req.token.is_empty() {
            return Err(bad("missing token to revoke"));
        }
        if !self
            .state
            .tokens()
            .revoke_orphan(&req.token)
            .await
            .map_err(internal)?
        {
            return Err(bad("token to revoke not found"));
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A `ttl`, `explicit_max_ttl` or `increment` from a request body is whole seconds or a
        /// number and a unit, without overflow; anything else is a 400 naming the value.
        #[test]
        fn durations_are_seconds_or_a_bad_request(
            value in prop_oneof![
                any::<u64>().prop_map(|n| json!(n)),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|n| json!(n)),
                "[ +-]?[0-9]{0,22}[smhdy]?[ ]?".prop_map(|s| json!(s)),
                ".{0,24}".prop_map(|s| json!(s)),
                Just(json!(null)),
                Just(json!([]))
            ],
        ) {
            match parse_duration(&value) {
                Ok(seconds) => match &value {
                    Value::Number(n) => prop_assert_eq!(n.as_u64(), Some(seconds)),
                    Value::String(s) => {
                        let s = s.trim();
                        let digits = s.trim_end_matches(['s', 'm', 'h', 'd']);
                        prop_assert!(s.len() - digits.len() <= 1);
                        prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
                    }
                    _ => prop_assert!(false, "{value} is not a duration"),
                },
                Err(e) => {
                    prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    prop_assert!(e.message.unwrap_or_default().contains(&value.to_string()));
                }
            }
        }
    }

    #[test]
    fn a_lookup_takes_a_gets_token_from_the_query_and_defaults_to_the_callers() {
        let request = |method: &str, uri: &str| {
            ApiRequest::parse(
                &axum::http::Method::from_bytes(method.as_bytes()).unwrap(),
                &uri.parse().unwrap(),
            )
            .unwrap()
        };
        let get = request("GET", "/v1/auth/token/lookup?token=hvs.other");
        assert_eq!(lookup_target(&get, "", "hvs.caller"), "hvs.other");
        // A GET has no body parameters, as in Vault.
        let bare_get = request("GET", "/v1/auth/token/lookup");
        assert_eq!(
            lookup_target(&bare_get, "hvs.body", "hvs.caller"),
            "hvs.caller"
        );
        let post = request("POST", "/v1/auth/token/lookup?token=hvs.query");
        assert_eq!(lookup_target(&post, "hvs.body", "hvs.caller"), "hvs.body");
        assert_eq!(lookup_target(&post, "", "hvs.caller"), "hvs.caller");
        // A forwarded identity has no token: nothing to default to.
        assert_eq!(lookup_target(&post, "", ""), "");
    }

    #[test]
    fn durations_parse_like_vault() {
        assert_eq!(parse_duration(&json!("1h")).unwrap(), 3600);
        assert_eq!(parse_duration(&json!(90)).unwrap(), 90);
        assert_eq!(parse_duration(&json!("15m")).unwrap(), 900);
        assert!(parse_duration(&json!("soon")).is_err());
        assert!(parse_duration(&json!(-5)).is_err());
    }
}
