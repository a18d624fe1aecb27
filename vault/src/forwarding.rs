//! Forwarding and read-after-write: the server's part (the wire is described in
//! `proto/ferry/forward/v1/forward.proto`).
//!
//! Every public request runs inside a [`RequestScope`] that [`layer`] sets up:
//!
//! 1. A request carrying `X-Vault-Index` is answered 412 unless this cluster holds that state.
//! 2. The handler runs. `authenticate` notes the identity it established; storage writes note
//!    the replicated state they produced.
//! 3. A handler whose replicated write was refused (this cluster is a performance secondary)
//!    marks its response [`MustForward`]. The layer then sends the whole request (method, path,
//!    body and the identity) to the primary through the sidecar and returns the primary's
//!    response as it came, once this cluster has applied the state it names, or after
//!    [`READ_AFTER_WRITE`] with a warning that the write may not be visible here yet.
//!    On a performance standby any write is refused (the response is marked
//!    [`MustForward::Active`]): the layer sends the request as the client sent it, token
//!    included, to the cluster's active node over HTTP (see `ha`) and returns its answer.
//! 4. Otherwise a response to a replicated write carries `X-Vault-Index`.
//!
//! A forwarded request's response entry is written to this cluster's audit devices here, with
//! the primary's response (the handler's response carried it as `audit::PendingAudit`).
//!
//! A forwarded request's handler has changed nothing here: a replicated write is refused before
//! anything is stored, batches are atomic, and a local write (a token's use count) belongs to
//! this cluster anyway.
//!
//! On the primary, [`crate::forward_server`] serves the forward socket and runs what a
//! secondary forwarded through [`run_forwarded`], in a scope whose identity is the one the
//! secondary authenticated. A forwarded request is never forwarded again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_proto::forward::{ForwardedRequest, ForwardedResponse, Identity, ReplicatedState};
use serde_json::{Value, json};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::server::{ApiError, MAX_BODY_BYTES, ServerState, error};
use crate::token::TokenEntry;

/// How long a secondary holds a forwarded write's response for the write to arrive.
pub const READ_AFTER_WRITE: Duration = Duration::from_secs(2);
/// The largest response body a forwarded request may produce: with its envelope it stays under
/// the 4 MiB every hop decodes.
pub const MAX_RESPONSE_BYTES: usize = 3 * 1024 * 1024;
/// What each hop decodes at most.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
const INDEX_HEADER: &str = "x-vault-index";
const NOT_VISIBLE_YET: &str = "the request was forwarded to the primary and succeeded there, \
    but this cluster had not received the write after 2s: it may not be visible here yet";

const NOT_VISIBLE_ON_NODE: &str = "the request was forwarded to the active node and succeeded \
    there, but this node did not see the write after 2s: it may not be visible here yet";

tokio::task_local! {
    static SCOPE: Arc<RequestScope>;
}

/// What one request's handler reports to the layer around it.
#[derive(Default)]
pub struct RequestScope {
    /// Set on the primary for a forwarded request: who the secondary authenticated.
    forwarded: Option<TokenEntry>,
    authenticated: Mutex<Option<TokenEntry>>,
    written: Mutex<Option<ReplicatedState>>,
    /// The request carried `X-Vault-Index`: its reads go to storage, not the read cache.
    fresh_reads: bool,
}

impl RequestScope {
    fn written(&self) -> Option<ReplicatedState> {
        self.written.lock().expect("scope lock poisoned").clone()
    }
}

/// Marks a response whose request must be forwarded, and where to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MustForward {
    /// A replicated write on a performance secondary: to the primary, through the sidecar.
    Primary,
    /// Any write on a performance standby: to the cluster's active node, over HTTP (see `ha`).
    Active,
}

/// The identity of a forwarded request being executed here, if this is one.
pub fn forwarded_identity() -> Option<TokenEntry> {
    SCOPE.try_with(|s| s.forwarded.clone()).ok().flatten()
}

/// Whether this request's storage reads must skip the read cache (it carried `X-Vault-Index`,
/// and the cache may not have heard yet of the state the header names).
pub fn wants_fresh_reads() -> bool {
    SCOPE.try_with(|s| s.fresh_reads).unwrap_or(false)
}

/// Called by `authenticate`: the identity to forward with, should it come to that.
pub fn note_authenticated(entry: &TokenEntry) {
    let _ = SCOPE.try_with(|s| {
        *s.authenticated.lock().expect("scope lock poisoned") = Some(entry.clone());
    });
}

/// Called by storage for every replicated write: the request's `X-Vault-Index` is the newest.
pub fn note_write(state: ReplicatedState) {
    let _ = SCOPE.try_with(|s| {
        let mut written = s.written.lock().expect("scope lock poisoned");
        let newer = match &*written {
            Some(w) => w.stream_id != state.stream_id || w.index < state.index,
            None => true,
        };
        if newer {
            *written = Some(state);
        }
    });
}

/// `X-Vault-Index`: `ferry1.<stream id, hex>.<epoch>.<index>`.
pub fn encode_index(state: &ReplicatedState) -> String {
    let stream: String = state.stream_id.iter().map(|b| format!("{b:02x}")).collect();
    format!("ferry1.{stream}.{}.{}", state.epoch, state.index)
}

/// Reads an `X-Vault-Index` value; the error says what is wrong with it.
pub fn decode_index(text: &str) -> Result<ReplicatedState, String> {
    let parts: Vec<&str> = text.trim().split('.').collect();
    let [version, stream, epoch, index] = parts[..] else {
        return Err("expected ferry1.<stream>.<epoch>.<index>".into());
    };
    if version != "ferry1" {
        return Err(format!("unknown version {version:?}"));
    }
    if stream.len() != 32 || !stream.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the stream id must be 32 hex digits".into());
    }
    let stream_id = (0..16)
        .map(|i| u8::from_str_radix(&stream[2 * i..2 * i + 2], 16).expect("hex checked"))
        .collect();
    let number = |what: &str, s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("the {what} {s:?} is not a number"))
    };
    Ok(ReplicatedState {
        stream_id,
        epoch: number("epoch", epoch)?,
        index: number("index", index)?,
    })
}

fn with_index(mut response: Response, scope: &RequestScope) -> Response {
    if let Some(state) = scope.written()
        && let Ok(value) = HeaderValue::from_str(&encode_index(&state))
    {
        response.headers_mut().insert(INDEX_HEADER, value);
    }
    response
}

/// The public API's layer: `X-Vault-Index` requirements, forwarding and read-after-write.
pub async fn layer(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(value) = request.headers().get(INDEX_HEADER) {
        let wanted = match value
            .to_str()
            .map_err(|_| "not text".to_owned())
            .and_then(decode_index)
        {
            Ok(w) => w,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("malformed X-Vault-Index header: {e}"),
                );
            }
        };
        match state.storage.wait_for_state(wanted, Duration::ZERO).await {
            Ok(true) => {}
            Ok(false) => {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    "required index state not present",
                );
            }
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let (parts, body) = request.into_parts();
    // Kept for forwarding; the handlers see the same bytes.
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        let mut refused = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {MAX_BODY_BYTES} bytes or unreadable"),
        );
        // The rest of the body is never read: the connection cannot serve another request,
        // and the client must not reuse it.
        refused
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return refused;
    };
    let method = parts.method.clone();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    // Kept for forwarding to the active node, which gets the request as the client sent it.
    let client_headers = parts.headers.clone();
    let scope = Arc::new(RequestScope {
        fresh_reads: client_headers.contains_key(INDEX_HEADER),
        ..RequestScope::default()
    });
    let request = Request::from_parts(parts, Body::from(body.clone()));
    let mut response = SCOPE.scope(scope.clone(), next.run(request)).await;
    let Some(&to) = response.extensions().get::<MustForward>() else {
        return with_index(response, &scope);
    };
    // The response entry is written with what the client gets (see `audit`).
    let pending = response
        .extensions_mut()
        .remove::<crate::audit::PendingAudit>();
    if to == MustForward::Active {
        let response =
            crate::ha::forward_to_active(&state, &method, &path_and_query, &client_headers, body)
                .await;
        let response = hold_for_write(&state, response).await;
        // What the active node changed is in etcd now; what this node cached may predate it.
        state.storage.cache().forget_all();
        return match pending {
            Some(p) => p.0.log_final_response(response).await,
            None => response,
        };
    }
    let Some(identity) = scope
        .authenticated
        .lock()
        .expect("scope lock poisoned")
        .take()
    else {
        return match pending {
            Some(p) => p.0.log_final_response(response).await,
            None => response,
        };
    };
    let mut headers = HashMap::new();
    if let Some(ct) = content_type.and_then(|v| v.to_str().map(str::to_owned).ok()) {
        headers.insert(header::CONTENT_TYPE.as_str().to_owned(), ct);
    }
    let request = ForwardedRequest {
        method: method.to_string(),
        path_and_query,
        headers,
        body: body.to_vec(),
        identity: Some(Identity {
            policies: identity.policies,
            display_name: identity.display_name,
            accessor: identity.accessor,
        }),
        secondary_id: String::new(),
    };
    let response = forward(&state, request).await;
    // The primary's write has been applied here (or the response warns that it may not be):
    // what this node cached may predate it.
    state.storage.cache().forget_all();
    match pending {
        Some(p) => p.0.log_final_response(response).await,
        None => response,
    }
}

/// Sends a request to the primary and returns its response once this cluster has its write.
async fn forward(state: &ServerState, request: ForwardedRequest) -> Response {
    debug!(method = %request.method, path = %request.path_and_query, "forwarding to the primary");
    let reply = match state.storage.forward(request).await {
        Ok(r) => r,
        Err(status) => {
            let (code, outcome) = if status.code() == tonic::Code::DeadlineExceeded {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    "; the primary may have executed it: check before retrying",
                )
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "")
            };
            return error(
                code,
                format!(
                    "error forwarding the request to the primary cluster: {}{outcome}",
                    status.message()
                ),
            );
        }
    };
    let mut warning = None;
    if let Some(written) = reply
        .headers
        .get(INDEX_HEADER)
        .and_then(|v| decode_index(v).ok())
    {
        match state
            .storage
            .wait_for_state(written, READ_AFTER_WRITE)
            .await
        {
            Ok(true) => {}
            Ok(false) => warning = Some(NOT_VISIBLE_YET),
            Err(e) => {
                warn!(error = %e, "could not wait for a forwarded write");
                warning = Some(NOT_VISIBLE_YET);
            }
        }
    }
    primary_response(reply, warning)
}

/// The active node's answer to a forwarded request, once this node sees the write it names
/// (at once, normally: the nodes share etcd), else with a warning.
async fn hold_for_write(state: &ServerState, response: Response) -> Response {
    let Some(written) = response
        .headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| decode_index(v).ok())
    else {
        return response;
    };
    match state
        .storage
        .wait_for_state(written, READ_AFTER_WRITE)
        .await
    {
        Ok(true) => response,
        outcome => {
            if let Err(e) = outcome {
                warn!(error = %e, "could not wait for a write the active node made");
            }
            let (parts, body) = response.into_parts();
            let Ok(body) = axum::body::to_bytes(body, MAX_RESPONSE_BYTES).await else {
                return error(
                    StatusCode::BAD_GATEWAY,
                    "the active node's answer is over the size limit",
                );
            };
            let headers = parts
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect();
            primary_response(
                ForwardedResponse {
                    status: parts.status.as_u16().into(),
                    headers,
                    body: body.to_vec(),
                },
                Some(NOT_VISIBLE_ON_NODE),
            )
        }
    }
}

/// The primary's response as it came, with `warning` added to its `warnings`.
fn primary_response(reply: ForwardedResponse, warning: Option<&str>) -> Response {
    let mut status = u16::try_from(reply.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body = reply.body;
    let mut headers = reply.headers;
    if let Some(warning) = warning {
        let mut json = if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!({}))
        };
        if let Some(object) = json.as_object_mut() {
            let warnings = object.entry("warnings").or_insert(Value::Null);
            match warnings {
                Value::Array(list) => list.push(warning.into()),
                other => *other = json!([warning]),
            }
            body = serde_json::to_vec(&json).expect("JSON serialises");
            headers.insert(
                header::CONTENT_TYPE.as_str().to_owned(),
                "application/json".into(),
            );
            if status == StatusCode::NO_CONTENT {
                status = StatusCode::OK;
            }
        }
    }
    let mut response = (status, body).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) && name != header::CONTENT_LENGTH
        {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Runs `request` through `routes` for the identity a secondary authenticated (`forwarded`),
/// as [`crate::forward_server`] does for what a secondary forwarded: the handlers see that
/// identity instead of authenticating a token, and the response carries `X-Vault-Index` as a
/// direct write's would.
///
/// A secondary forwards only what it could not do itself because it writes (its handler hit a
/// replicated write). So a forwarded request that succeeds here without writing anything is not
/// answered: with a member's credentials and a made-up identity it would be a way to decrypt,
/// rewrap or sign as anyone (transit's are POSTs). It gets a 412, which Vault's clients retry;
/// a secondary asked again serves it itself once the write that made it one is replicated.
pub(crate) async fn run_forwarded(
    routes: axum::Router,
    forwarded: TokenEntry,
    request: Request,
) -> Response {
    let scope = Arc::new(RequestScope {
        forwarded: Some(forwarded),
        ..RequestScope::default()
    });
    let response = match SCOPE.scope(scope.clone(), routes.oneshot(request)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if response.status().is_success() && scope.written().is_none() {
        return error(StatusCode::PRECONDITION_FAILED, WROTE_NOTHING);
    }
    with_index(response, &scope)
}

/// The answer to a forwarded request that wrote nothing here (see [`run_forwarded`]).
pub const WROTE_NOTHING: &str = "the primary executes for another cluster only what writes, and \
    this forwarded request wrote nothing there (what made it a write may just have been \
    replicated): retry it, the cluster that forwarded it serves it itself";

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn index_header_round_trips() {
        let state = ReplicatedState {
            stream_id: (0u8..16).collect(),
            epoch: 3,
            index: 12345,
        };
        let text = encode_index(&state);
        assert_eq!(text, "ferry1.000102030405060708090a0b0c0d0e0f.3.12345");
        assert_eq!(decode_index(&text).unwrap(), state);
    }

    #[test]
    fn malformed_index_headers_name_the_problem() {
        for (text, says) in [
            ("", "expected"),
            ("ferry2.000102030405060708090a0b0c0d0e0f.3.1", "version"),
            ("ferry1.0001.3.1", "32 hex"),
            ("ferry1.zz0102030405060708090a0b0c0d0e0f.3.1", "32 hex"),
            ("ferry1.000102030405060708090a0b0c0d0e0f.x.1", "epoch"),
            ("ferry1.000102030405060708090a0b0c0d0e0f.3.-1", "index"),
        ] {
            let e = decode_index(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    /// Text that may be an `X-Vault-Index` value: anything, or the right shape with parts
    /// that may be wrong.
    fn index_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,60}",
            "(ferry1|ferry2|)\\.[0-9a-fA-FzZ]{30,34}\\.[0-9+-]{0,21}\\.[0-9+-]{0,21}(\\.)?",
        ]
    }

    proptest! {
        /// Whatever a client sends as `X-Vault-Index`, or a primary returns in it, it is refused
        /// with a message or is a state of a 16-byte stream id that reads back the same.
        #[test]
        fn index_headers_decode_to_a_state_or_an_error(text in index_text()) {
            match decode_index(&text) {
                Ok(state) => {
                    prop_assert_eq!(state.stream_id.len(), 16);
                    prop_assert_eq!(decode_index(&encode_index(&state)), Ok(state));
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        #[test]
        fn every_state_round_trips_through_its_header(id: [u8; 16], epoch: u64, index: u64) {
            let state = ReplicatedState { stream_id: id.to_vec(), epoch, index };
            let text = encode_index(&state);
            prop_assert!(HeaderValue::from_str(&text).is_ok());
            prop_assert_eq!(decode_index(&text), Ok(state));
        }

        /// Whatever the primary answers a forwarded request with, the secondary makes a
        /// response of it: its status when valid, else 502; a warning joins a JSON body.
        #[test]
        fn primary_responses_are_relayed_whatever_they_hold(
            status in prop_oneof![100u32..600, any::<u32>()],
            headers in proptest::collection::hash_map(".{0,12}", ".{0,12}", 0..3),
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..32),
                Just(b"{\"warnings\":[\"w\"]}".to_vec()),
                Just(b"{\"warnings\":7}".to_vec()),
                Just(b"[1]".to_vec()),
            ],
            warn: bool,
        ) {
            let reply = ForwardedResponse { status, headers, body };
            let response = primary_response(reply, warn.then_some(NOT_VISIBLE_YET));
            let valid = u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok());
            match valid {
                Some(s) if s != StatusCode::NO_CONTENT || !warn => prop_assert_eq!(response.status(), s),
                Some(_) => {}
                None => prop_assert_eq!(response.status(), StatusCode::BAD_GATEWAY),
            }
        }
    }
}
