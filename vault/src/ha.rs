//! Nodes inside a cluster, the server's part: forwarding a performance standby's writes to the
//! active node, and Vault's `sys/leader`, `sys/ha-status` and the node role in `sys/health`.
//!
//! The sidecar decides the role (the node holding the write fence is active; see the sidecar's
//! `node` module) and tells it through `Admin.Leader`, with the active node's ferry-vault address
//! (its sidecar's `--api-addr`). A standby serves reads from its own view of storage. A request
//! whose handler hits a write is refused by the standby's sidecar ("not active") before anything
//! is stored; the forwarding layer then sends the whole request, as the client sent it (method,
//! path and query, headers with the client's own token, body), to the active node over HTTP (over
//! HTTPS when the nodes serve TLS, trusting only the certificate this node serves: see `tls`) and
//! returns its answer unchanged ([`forward_to_active`]). The active node authenticates and
//! authorizes it again, so forwarding grants nothing. It is bounded: one request body
//! ([`MAX_BODY_BYTES`](crate::server::MAX_BODY_BYTES)) out, [`MAX_RESPONSE_BYTES`] back, within
//! [`FORWARD_TIMEOUT`]; a request forwarded once is never forwarded again ([`FORWARDED_BY`]).
//! Without a known active node (the fence is free, or its holder gave no address) the client
//! gets a 503 that says so.
//!
//! The active node's write is in the cluster's etcd before it answers, and a standby reads that
//! etcd, so a forwarded write is visible on the standby when the answer arrives; the layer still
//! checks the answer's `X-Vault-Index` (as for a secondary) and warns if it is not.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_proto::storage::{LeaderResponse, NodeInfo, NodePresence};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tracing::debug;

use crate::server::{ServerState, VERSION, error};
use crate::tls::ReloadingCert;

/// How long a forwarded request may take on the active node.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response accepted from the active node.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// The header a standby adds to a request it forwards (its node id): the active node never
/// forwards such a request again.
pub const FORWARDED_BY: &str = "x-ferry-forwarded-by";

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The HTTP client a standby forwards with; cheap to clone. It speaks HTTPS when this node
/// serves TLS, trusting only this node's own certificate (see `tls`), and plain HTTP otherwise.
#[derive(Clone)]
pub struct ActiveClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    tls: bool,
}

impl ActiveClient {
    /// A client for a node that serves `tls` (`None`: plain HTTP).
    pub fn new(tls: Option<&Arc<ReloadingCert>>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new();
        let connector = match tls {
            Some(cert) => builder
                .with_tls_config(cert.peer_client_config())
                .https_or_http(),
            // Never used for https:// (refused before), but the type wants a configuration.
            None => builder
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http(),
        }
        .enable_http1()
        .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            tls: tls.is_some(),
        }
    }
}

/// A node's role, as `sys/health`, `sys/leader` and the forwarding layer see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    Active,
    /// A performance standby: reads here, writes forwarded.
    PerformanceStandby,
    /// Neither (yet): the node took the fence and is recovering, or its sidecar does not
    /// answer. Vault's plain standby.
    Standby,
}

impl NodeRole {
    pub fn of(leader: Option<&LeaderResponse>) -> Self {
        match leader.map(|l| l.role.as_str()) {
            Some("active") => NodeRole::Active,
            Some("standby") => NodeRole::PerformanceStandby,
            _ => NodeRole::Standby,
        }
    }
}

/// Sends the request to the active node's ferry-vault and returns its answer as it came.
pub async fn forward_to_active(
    state: &ServerState,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key(FORWARDED_BY) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node cannot serve a request another node forwarded to it as the active node: \
             it is not active (any more); retry",
        );
    }
    let leader = match state.storage.leader().await {
        Ok(l) => l,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("this node is not active and cannot tell which node is: {e}"),
            );
        }
    };
    let me = leader.node.clone().unwrap_or_default().node_id;
    let Some(active) = leader.active.filter(|a| a.node_id != me) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is a performance standby and no active node is known (nobody holds the \
             cluster's write fence): the request was not executed; retry",
        );
    };
    if active.api_addr.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node is a performance standby and the active node {} advertises no API \
                 address (its sidecar's --api-addr): the request was not executed",
                active.node_id
            ),
        );
    }
    let base = active.api_addr.trim_end_matches('/');
    let https = base.starts_with("https://");
    if !https && !base.starts_with("http://") {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the active node {} advertises {base}, neither an http:// nor an https:// address",
                active.node_id
            ),
        );
    }
    if https && !state.active_client.tls {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the active node {} serves TLS at {base} and this node does not: it cannot \
                 verify that node's certificate; give every node the same --tls-cert-file and \
                 --tls-key-file",
                active.node_id
            ),
        );
    }
    debug!(%method, path = %path_and_query, active = %active.node_id, "forwarding to the active node");
    let mut request = hyper::Request::builder()
        .method(method.clone())
        .uri(format!("{base}{path_and_query}"));
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(&me) {
        request = request.header(FORWARDED_BY, value);
    }
    let request = match request.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot forward: {e}")),
    };
    let unavailable = |what: String| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "error forwarding the request to the active node {} at {base}: {what}",
                active.node_id
            ),
        )
    };
    let answer =
        match tokio::time::timeout(FORWARD_TIMEOUT, state.active_client.client.request(request))
            .await
        {
            Err(_) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the active node {} did not answer within {FORWARD_TIMEOUT:?}; it may have \
                     executed the request: check before retrying",
                        active.node_id
                    ),
                );
            }
            Ok(Err(e)) => {
                return unavailable(ferry_proto::with_causes(
                    e.to_string(),
                    std::error::Error::source(&e),
                ));
            }
            Ok(Ok(answer)) => answer,
        };
    let (parts, body) = answer.into_parts();
    let body = match tokio::time::timeout(
        FORWARD_TIMEOUT,
        http_body_util::Limited::new(body, MAX_RESPONSE_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return unavailable(format!("reading its answer failed: {e}")),
        Err(_) => return unavailable("its answer did not arrive in time".into()),
    };
    let mut response = (parts.status, body).into_response();
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// `sys/leader` (unauthenticated, as in Vault).
pub async fn leader(state: &ServerState) -> Response {
    let leader = state.storage.leader().await.ok();
    let role = NodeRole::of(leader.as_ref());
    let active = leader.as_ref().and_then(|l| l.active.clone());
    let active_since = leader.as_ref().map_or(0, |l| l.active_since);
    axum::Json(json!({
        "ha_enabled": true,
        "is_self": role == NodeRole::Active,
        "active_time": if active_since > 0 {
            ferry_proto::time::rfc3339(active_since as u64)
        } else {
            "0001-01-01T00:00:00Z".to_owned()
        },
        "leader_address": active.as_ref().map_or("", |a| a.api_addr.as_str()),
        "leader_cluster_address": active.as_ref().map_or(String::new(), |a| cluster_url(&a.cluster_addr)),
        "performance_standby": role == NodeRole::PerformanceStandby,
        "performance_standby_last_remote_wal": 0,
    }))
    .into_response()
}

/// `sys/ha-status`: every node of the cluster, the active one first, as Vault lists them (under
/// `nodes`, in `data` and at the top level, as OpenBao answers). The
/// list is the cluster's presence records (the sidecar's `presence` module: each node rewrites
/// its own every 5 s, and a node gone for 15 s drops out), so every node gives the same answer.
/// The active node's `last_echo` is null, as in Vault; a standby's is its last rewrite.
pub async fn ha_status(state: &ServerState) -> Result<Response, crate::server::ApiError> {
    let leader = state.storage.leader().await?;
    let present = state.storage.nodes().await?;
    Ok(crate::server::top_level_envelope(
        json!({ "nodes": ha_nodes(leader.active.as_ref(), &present) }),
    ))
}

/// The nodes `sys/ha-status` lists: the active node first (from the fence when its record is
/// missing), then the others in the records' order (by node id).
fn ha_nodes(active: Option<&NodeInfo>, present: &[NodePresence]) -> Vec<Value> {
    let node = |info: &NodeInfo, echo: Option<i64>, version: &str| -> Value {
        let version = if version.is_empty() { VERSION } else { version };
        json!({
            "hostname": info.node_id,
            "api_address": info.api_addr,
            "cluster_address": cluster_url(&info.cluster_addr),
            "active_node": echo.is_none(),
            "last_echo": echo.map(|ms| {
                let ms = ms.max(0) as u64;
                ferry_proto::time::rfc3339_micros(ms / 1000, (ms % 1000) as u32 * 1000)
            }),
            "version": version,
            "upgrade_version": version,
        })
    };
    let active_id = active.map(|a| a.node_id.as_str());
    let (mut first, mut rest) = (None, Vec::new());
    for p in present {
        let Some(info) = &p.node else { continue };
        if Some(info.node_id.as_str()) == active_id {
            first = Some(node(info, None, &p.version));
        } else {
            rest.push(node(info, Some(p.last_echo_ms), &p.version));
        }
    }
    first
        .or_else(|| active.map(|a| node(a, None, "")))
        .into_iter()
        .chain(rest)
        .collect()
}

/// A cluster address as Vault shows it: `https://host:port`.
fn cluster_url(addr: &str) -> String {
    if addr.is_empty() || addr.contains("://") {
        addr.to_owned()
    } else {
        format!("https://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_sidecar() {
        let leader = |role: &str| LeaderResponse {
            role: role.into(),
            ..LeaderResponse::default()
        };
        assert_eq!(NodeRole::of(Some(&leader("active"))), NodeRole::Active);
        assert_eq!(
            NodeRole::of(Some(&leader("standby"))),
            NodeRole::PerformanceStandby
        );
        assert_eq!(NodeRole::of(Some(&leader("activating"))), NodeRole::Standby);
        assert_eq!(NodeRole::of(None), NodeRole::Standby);
    }

    #[test]
    fn ha_status_lists_the_active_node_first_then_the_others_with_their_last_echo() {
        let info = |id: &str| NodeInfo {
            node_id: id.into(),
            api_addr: format!("http://{id}:8200"),
            cluster_addr: format!("{id}:8201"),
        };
        let present = |id: &str| NodePresence {
            node: Some(info(id)),
            last_echo_ms: 1_700_000_000_250,
            version: "9.9.9".into(),
        };
        let nodes = ha_nodes(
            Some(&info("b")),
            &[present("a"), present("b"), present("c")],
        );
        let ids: Vec<_> = nodes.iter().map(|n| n["hostname"].clone()).collect();
        assert_eq!(ids, ["b", "a", "c"]);
        assert_eq!(nodes[0]["active_node"], true);
        assert_eq!(nodes[0]["last_echo"], Value::Null);
        assert_eq!(nodes[1]["active_node"], false);
        assert_eq!(nodes[1]["last_echo"], "2023-11-14T22:13:20.250000Z");
        assert_eq!(nodes[1]["cluster_address"], "https://a:8201");
        assert_eq!(nodes[1]["version"], "9.9.9");

        // The active node without a record (it has not echoed yet) is still listed first.
        let nodes = ha_nodes(Some(&info("b")), &[present("a")]);
        assert_eq!(nodes[0]["hostname"], "b");
        assert_eq!(nodes[0]["version"], VERSION);
        assert_eq!(nodes.len(), 2);
        // No active node: only the records.
        assert_eq!(ha_nodes(None, &[present("a")]).len(), 1);
    }

    #[test]
    fn cluster_addresses_read_as_urls() {
        assert_eq!(cluster_url("10.0.0.5:8201"), "https://10.0.0.5:8201");
        assert_eq!(cluster_url("https://a:8201"), "https://a:8201");
        assert_eq!(cluster_url(""), "");
    }
}
