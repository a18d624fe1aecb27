//! What an API request asks for, decided once at the edge: its [`Operation`] and its canonical
//! path. The router, the ACL check and the handlers all take the same [`ApiRequest`], so the
//! operation that is authorized on a path is the operation that runs there.
//!
//! The operation follows Vault's HTTP layer: `GET` reads, and lists when `?list=` is true
//! (`1`, `t`, `true`, ... as Go's `strconv.ParseBool`; anything else is a 400); `LIST` lists;
//! `POST` and `PUT` write; `DELETE` deletes. `?list=` means nothing on any other method: a
//! `POST ...?list=true` is a write, for the ACL and for the handler alike.
//!
//! A write is authorized as Vault authorizes it, by its [`WriteKind`]: on a path whose backend
//! has an existence check (KV v2 `data/` and `metadata/`, transit `encrypt/`), as `create` when
//! the target does not exist and as `update` when it does; on every other path as `update`
//! (Vault's `CheckToken`, `vault/request_handling.go`). The engines say which of their paths
//! have the check (`kv_api::existence_subject`, `transit_api::existence_subject`).
//!
//! The canonical path is the one string that is authorized and dispatched:
//!
//! * `/v1/` is removed and the rest is kept as sent. Percent-escapes are not decoded, so an
//!   escaped `/` never becomes a separator after the ACL has seen the path.
//! * An empty (`a//b`, a leading `/`), `.` or `..` segment is refused (400), never resolved.
//! * A list's path ends with `/` (added when missing), as in Vault: a list reads a directory,
//!   and an exact ACL rule on the directory's name also grants it (see `policy`).
//! * Any other operation keeps a trailing slash as sent: `transit/keys/k/` is not
//!   `transit/keys/k`, to the ACL nor to the handler.

use std::collections::HashMap;
use std::fmt;

use axum::extract::Query;
use axum::http::{Method, StatusCode, Uri};

use crate::server::ApiError;

/// What a request does to its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    List,
    /// Create or update (`POST`, `PUT`): which one is the [`WriteKind`].
    Write,
    Delete,
}

/// What a write is authorized as, after Vault's existence check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// The path has an existence check and its target does not exist: `create`.
    Create,
    /// The target exists, or the path has no existence check: `update`.
    Update,
}

impl WriteKind {
    /// The kind of a write whose existence check found `exists`.
    pub fn of(exists: bool) -> Self {
        if exists { Self::Update } else { Self::Create }
    }

    /// The capability that allows a write of this kind: only that one.
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Self::Create => &["create"],
            Self::Update => &["update"],
        }
    }
}

impl Operation {
    /// The operation of a `method` with these query parameters.
    pub fn of(method: &Method, query: &HashMap<String, String>) -> Result<Self, ApiError> {
        match method.as_str() {
            "GET" => match query.get("list").map(String::as_str) {
                None | Some("") => Ok(Self::Read),
                Some(value) => match parse_bool(value) {
                    Some(true) => Ok(Self::List),
                    Some(false) => Ok(Self::Read),
                    None => Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("invalid list parameter {value:?}: expected true or false"),
                    )),
                },
            },
            "LIST" => Ok(Self::List),
            "POST" | "PUT" => Ok(Self::Write),
            "DELETE" => Ok(Self::Delete),
            other => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("unsupported method {other}"),
            )),
        }
    }

    /// The capabilities that allow this operation on a path without an existence check, any
    /// one of them: there a write is an update, as in Vault. Where a path has the check, a
    /// write needs its [`WriteKind`]'s capability instead.
    pub fn capabilities(self) -> &'static [&'static str] {
        match self {
            Self::Read => &["read"],
            Self::List => &["list"],
            Self::Write => WriteKind::Update.capabilities(),
            Self::Delete => &["delete"],
        }
    }
}

impl fmt::Display for Operation {
    /// Vault's name for the operation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::List => "list",
            Self::Write => "update",
            Self::Delete => "delete",
        })
    }
}

/// Go's `strconv.ParseBool`, which Vault uses for `?list=`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The canonical form of `raw` (a request's path, `/v1/...`) for `operation`; see the module
/// documentation.
pub fn canonical_path(raw: &str, operation: Operation) -> Result<String, ApiError> {
    let Some(path) = raw.strip_prefix("/v1/") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unsupported path {raw}"),
        ));
    };
    let folders = path.strip_suffix('/').unwrap_or(path);
    if !path.is_empty()
        && folders
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request path {raw:?}: empty, '.' or '..' segment"),
        ));
    }
    let mut path = path.to_owned();
    if operation == Operation::List && !path.is_empty() && !path.ends_with('/') {
        path.push('/');
    }
    Ok(path)
}

/// One request as every handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub operation: Operation,
    /// Canonical, without `/v1/`: `secret/data/app`, `secret/metadata/` (a list).
    pub path: String,
    /// The query parameters but `list`.
    pub query: HashMap<String, String>,
}

impl ApiRequest {
    /// The operation and canonical path of a request; 400 for a malformed path or query, 405
    /// for a method Vault does not serve.
    pub fn parse(method: &Method, uri: &Uri) -> Result<Self, ApiError> {
        let Query(mut query) =
            Query::<HashMap<String, String>>::try_from_uri(uri).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("invalid query string: {}", e.body_text()),
                )
            })?;
        let operation = Operation::of(method, &query)?;
        query.remove("list");
        let path = canonical_path(uri.path(), operation)?;
        Ok(Self {
            operation,
            path,
            query,
        })
    }

    /// The path after `prefix` (which ends with `/`), when the request is under it.
    pub fn under(&self, prefix: &str) -> Option<&str> {
        self.path.strip_prefix(prefix)
    }

    /// The same 405 for every handler: `operation` is not served on this path.
    pub fn unsupported(&self) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("unsupported operation {} on {}", self.operation, self.path),
        )
    }

    /// The same 404 for every handler: nothing is served on this path.
    pub fn no_handler(&self) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no handler for route \"{}\"", self.path),
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            Just(Operation::Read),
            Just(Operation::List),
            Just(Operation::Write),
            Just(Operation::Delete),
        ]
    }

    /// A request path: any text, or `/v1/` and segments of what makes paths interesting.
    fn raw_path() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,30}",
            "/v1/([a-z]{1,3}|\\.|\\.\\.|%2[fF]|)(/([a-z]{1,3}|\\.|\\.\\.|%2[fF]|)){0,4}",
        ]
    }

    proptest! {
        /// Whatever path a request names, its canonical form is refused or is the path as sent
        /// (a list's with one `/` added) without any empty, `.` or `..` segment to resolve.
        #[test]
        fn canonical_paths_are_the_path_as_sent_or_refused(raw in raw_path(), op in operation()) {
            if let Ok(path) = canonical_path(&raw, op) {
                let sent = raw.strip_prefix("/v1/").unwrap();
                let listed = format!("{sent}/");
                prop_assert!(path == sent || (op == Operation::List && path == listed));
                if !path.is_empty() {
                    let folders = path.strip_suffix('/').unwrap_or(&path);
                    prop_assert!(folders.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                }
                prop_assert!(op != Operation::List || path.is_empty() || path.ends_with('/'));
                // Canonical once is canonical for good.
                prop_assert_eq!(canonical_path(&format!("/v1/{path}"), op).ok(), Some(path));
            }
        }

        /// Any method and URI a client sends is parsed or refused with a 400, 404 or 405,
        /// never a panic; `list` never reaches a handler's query.
        #[test]
        fn any_request_line_is_parsed_or_refused(
            method in prop_oneof![
                Just("GET"), Just("LIST"), Just("POST"), Just("PUT"), Just("DELETE"),
                Just("PATCH"), Just("HEAD"), Just("get"), Just("BREW"),
            ],
            path in raw_path(),
            query in prop_oneof![
                "([a-z]{1,4}(=[a-zA-Z0-9%+&=]{0,6})?&?){0,3}",
                "list(=[a-zA-Z0-9%]{0,5})?(&[a-z]{1,3}=[a-z]{0,3})?",
            ],
        ) {
            let Ok(uri) = format!("{path}?{query}").parse::<Uri>() else {
                return Ok(());
            };
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            match ApiRequest::parse(&method, &uri) {
                Ok(request) => prop_assert!(!request.query.contains_key("list")),
                Err(e) => prop_assert!(
                    [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED]
                        .contains(&e.status),
                    "{e:?}"
                ),
            }
        }
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn list() -> Method {
        Method::from_bytes(b"LIST").unwrap()
    }

    #[test]
    fn list_query_makes_a_list_only_on_get() {
        let listing = query(&[("list", "true")]);
        assert_eq!(
            Operation::of(&Method::GET, &listing).unwrap(),
            Operation::List
        );
        assert_eq!(
            Operation::of(&Method::POST, &listing).unwrap(),
            Operation::Write
        );
        assert_eq!(
            Operation::of(&Method::PUT, &listing).unwrap(),
            Operation::Write
        );
        assert_eq!(
            Operation::of(&Method::DELETE, &listing).unwrap(),
            Operation::Delete
        );
        assert_eq!(
            Operation::of(&list(), &query(&[])).unwrap(),
            Operation::List
        );
        for value in ["1", "t", "True", "TRUE"] {
            let q = query(&[("list", value)]);
            assert_eq!(Operation::of(&Method::GET, &q).unwrap(), Operation::List);
        }
        for value in ["", "0", "false", "F"] {
            let q = query(&[("list", value)]);
            assert_eq!(Operation::of(&Method::GET, &q).unwrap(), Operation::Read);
        }
        let e = Operation::of(&Method::GET, &query(&[("list", "yes")])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = Operation::of(&Method::PATCH, &query(&[])).unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn each_operation_needs_its_own_capability() {
        assert_eq!(Operation::Read.capabilities(), ["read"]);
        assert_eq!(Operation::List.capabilities(), ["list"]);
        // Without an existence check a write is an update: `create` alone never allows it.
        assert_eq!(Operation::Write.capabilities(), ["update"]);
        assert_eq!(Operation::Delete.capabilities(), ["delete"]);
    }

    #[test]
    fn a_write_is_a_create_only_where_its_target_does_not_exist() {
        assert_eq!(WriteKind::of(false), WriteKind::Create);
        assert_eq!(WriteKind::of(true), WriteKind::Update);
        assert_eq!(WriteKind::Create.capabilities(), ["create"]);
        assert_eq!(WriteKind::Update.capabilities(), ["update"]);
    }

    #[test]
    fn canonical_paths_keep_what_was_sent_and_end_lists_with_a_slash() {
        use Operation::*;
        let ok = |raw, op| canonical_path(raw, op).unwrap();
        assert_eq!(ok("/v1/secret/data/app", Read), "secret/data/app");
        // A trailing slash is kept: it names another path than the one without.
        assert_eq!(ok("/v1/transit/keys/k/", Write), "transit/keys/k/");
        assert_eq!(ok("/v1/transit/keys/k/", Read), "transit/keys/k/");
        // A list reads a directory.
        assert_eq!(ok("/v1/secret/metadata/app", List), "secret/metadata/app/");
        assert_eq!(ok("/v1/secret/metadata/app/", List), "secret/metadata/app/");
        assert_eq!(ok("/v1/sys/policies/acl", List), "sys/policies/acl/");
        // Escapes are not decoded: `%2F` is not a separator.
        assert_eq!(ok("/v1/secret/data/a%2Fb", Read), "secret/data/a%2Fb");
        assert_eq!(ok("/v1/", Read), "");
    }

    #[test]
    fn canonical_paths_refuse_empty_and_dot_segments() {
        for raw in [
            "/v1//secret/data/x",
            "/v1/secret//data/x",
            "/v1/secret/data/x//",
            "/v1/secret/./data/x",
            "/v1/secret/data/../../auth/token/create",
            "/v1/transit/keys/..",
        ] {
            for op in [
                Operation::Read,
                Operation::List,
                Operation::Write,
                Operation::Delete,
            ] {
                let e = canonical_path(raw, op).unwrap_err();
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{raw} {op}");
                assert!(
                    e.message
                        .as_deref()
                        .unwrap()
                        .contains("invalid request path"),
                    "{raw}: {e:?}"
                );
            }
        }
        let e = canonical_path("/v2/secret", Operation::Read).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_request_is_parsed_once_into_operation_path_and_query() {
        let uri: Uri = "/v1/secret/data/x?list=true&version=2".parse().unwrap();
        let get = ApiRequest::parse(&Method::GET, &uri).unwrap();
        assert_eq!(get.operation, Operation::List);
        assert_eq!(get.path, "secret/data/x/");
        assert_eq!(get.query, query(&[("version", "2")]));
        let post = ApiRequest::parse(&Method::POST, &uri).unwrap();
        assert_eq!(post.operation, Operation::Write);
        assert_eq!(post.path, "secret/data/x");
        assert_eq!(post.under("secret/"), Some("data/x"));
        assert_eq!(post.under("transit/"), None);
    }
}
