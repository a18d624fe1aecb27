//! The primary's part of forwarding: the forward socket's service, which runs what a
//! secondary forwarded for the identity the secondary authenticated (the secondary's side, and
//! the request scope both share, are in [`crate::forwarding`]).
//!
//! It serves the forward socket beside the storage socket, only for its owner (mode 0600):
//! whoever can reach it can act as any identity, so only the sidecar may. Only writes to what
//! replicates are executed ([`forwardable_method`], [`forwardable`]); the request runs through
//! the same [`crate::server::routes`], whose handlers check the policies again against the
//! replicated copies. A forwarded request is never forwarded again.

use axum::body::Body;
use axum::http::Method;
use ferry_proto::forward::forwarding_server::Forwarding;
use ferry_proto::forward::{ForwardedRequest, ForwardedResponse};
use tracing::debug;

use crate::forwarding::{MAX_RESPONSE_BYTES, run_forwarded};
use crate::token::TokenEntry;

/// Whether a secondary may have `path` executed here: what writes replicated storage (secrets
/// engines, mounts, policies under either of Vault's paths). Never `auth/` (tokens are local to each cluster) nor the rest
/// of `sys/` (replication roles, health): a forwarded identity acts only where it must.
fn forwardable(path: &str) -> bool {
    let Some(path) = path.strip_prefix("/v1/") else {
        return false;
    };
    if let Some(sys) = path.strip_prefix("sys/") {
        return sys.starts_with("mounts")
            || sys.starts_with("policies/acl/")
            || sys.starts_with("policy/");
    }
    !path.starts_with("auth/")
}

/// Whether `method` is one a secondary forwards: a write it cannot make itself. A secondary
/// serves every read from its own copy, so a forwarded read (`GET`, `LIST`, `HEAD`) can only
/// be someone using a member's credentials to read the primary as another identity, as Vault
/// also refuses.
fn forwardable_method(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

/// The forward socket's service: runs what a secondary forwarded, for the identity it sent.
pub struct ForwardServer {
    pub routes: axum::Router,
}

#[tonic::async_trait]
impl Forwarding for ForwardServer {
    async fn forward(
        &self,
        request: tonic::Request<ForwardedRequest>,
    ) -> Result<tonic::Response<ForwardedResponse>, tonic::Status> {
        let r = request.into_inner();
        let path = r.path_and_query.split('?').next().unwrap_or_default();
        if !forwardable_method(&r.method) {
            return Err(tonic::Status::permission_denied(format!(
                "a forwarded {} of {path} is refused: only writes are forwarded, a secondary serves reads itself",
                r.method
            )));
        }
        if !forwardable(path) {
            return Err(tonic::Status::permission_denied(format!(
                "{path} is not executed for another cluster: only secrets engines, sys/mounts and \
                 the policies (sys/policies/acl, sys/policy) are forwarded"
            )));
        }
        let identity = r.identity.ok_or_else(|| {
            tonic::Status::invalid_argument("a forwarded request must carry an identity")
        })?;
        let method = Method::from_bytes(r.method.as_bytes()).map_err(|_| {
            tonic::Status::invalid_argument(format!("invalid method {:?}", r.method))
        })?;
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(&r.path_and_query);
        for (name, value) in &r.headers {
            builder = builder.header(name, value);
        }
        let request = builder.body(Body::from(r.body)).map_err(|e| {
            tonic::Status::invalid_argument(format!("invalid forwarded request: {e}"))
        })?;
        debug!(secondary_id = %r.secondary_id, accessor = %identity.accessor, path = %r.path_and_query, "executing a forwarded request");
        let forwarded = TokenEntry {
            accessor: identity.accessor,
            policies: identity.policies,
            display_name: identity.display_name,
            ..TokenEntry::default()
        };
        let response = run_forwarded(self.routes.clone(), forwarded, request).await;
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| tonic::Status::internal(format!("reading the response failed: {e}")))?;
        let headers = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok(tonic::Response::new(ForwardedResponse {
            status: parts.status.as_u16().into(),
            headers,
            body: body.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use ferry_proto::forward::{Identity, ReplicatedState};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn only_replicated_writes_are_executed_for_another_cluster() {
        for path in [
            "/v1/secret/data/a",
            "/v1/transit/keys/k",
            "/v1/sys/mounts/x",
            "/v1/sys/policies/acl/p",
            "/v1/sys/policy/p",
        ] {
            assert!(forwardable(path), "{path}");
        }
        for path in [
            "/v1/auth/token/create",
            "/v1/sys/replication/performance/primary/demote",
            "/v1/sys/health",
            "/v1/sys/policyx",
            "/secret/data/a",
        ] {
            assert!(!forwardable(path), "{path}");
        }
    }

    #[test]
    fn only_writes_are_forwarded() {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert!(forwardable_method(method), "{method}");
        }
        for method in ["GET", "LIST", "HEAD", "OPTIONS", "get", ""] {
            assert!(!forwardable_method(method), "{method}");
        }
    }

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        })
    }

    /// A request a secondary's sidecar may deliver on the forward socket: any method, path,
    /// headers and body, with or without an identity.
    fn forwarded_request() -> impl Strategy<Value = ForwardedRequest> {
        let method = prop_oneof![
            Just("POST".to_owned()),
            Just("PUT".to_owned()),
            Just("DELETE".to_owned()),
            Just("GET".to_owned()),
            ".{0,8}"
        ];
        let path = prop_oneof![
            4 => "/v1/secret/data/[a-z]{1,4}(\\?[a-z]{1,4}=[a-z0-9]{0,3})?",
            1 => "/v1/[ -~]{0,20}",
            1 => "/v1/.{0,20}",
            1 => ".{0,24}"
        ];
        let name = prop_oneof![Just("content-type".to_owned()), "[a-z-]{1,8}", ".{0,12}"];
        let headers = proptest::collection::hash_map(name, ".{0,12}", 0..3);
        let identity = proptest::option::weighted(
            0.8,
            ("[a-z]{0,6}", ".{0,8}").prop_map(|(policy, accessor)| Identity {
                policies: vec![policy],
                display_name: String::new(),
                accessor,
            }),
        );
        (
            method,
            path,
            headers,
            proptest::collection::vec(any::<u8>(), 0..32),
            identity,
        )
            .prop_map(|(method, path_and_query, headers, body, identity)| {
                ForwardedRequest {
                    method,
                    path_and_query,
                    headers,
                    body,
                    identity,
                    secondary_id: "east".into(),
                }
            })
    }

    proptest! {
        /// A forwarded request, whatever its method, path, headers and body, is refused with
        /// a status that says why, or runs on a forwardable path; never a panic.
        #[test]
        fn forwarded_requests_run_or_are_refused(request in forwarded_request()) {
            // Every route writes, as what a secondary forwards does.
            let server = ForwardServer {
                routes: axum::Router::new().fallback(|| async {
                    crate::forwarding::note_write(ReplicatedState {
                        stream_id: vec![1; 16],
                        epoch: 1,
                        index: 7,
                    });
                    "ran"
                }),
            };
            let path = request.path_and_query.split('?').next().unwrap_or_default().to_owned();
            let has_identity = request.identity.is_some();
            match runtime().block_on(server.forward(tonic::Request::new(request))) {
                Ok(response) => {
                    prop_assert!(forwardable(&path) && has_identity);
                    prop_assert_eq!(response.get_ref().status, 200);
                }
                Err(status) => prop_assert!(
                    matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::InvalidArgument),
                    "{status:?}"
                ),
            }
        }

    }

    /// What writes nothing here is not answered, however it went: no reads, decrypts or rewraps
    /// for another cluster's made-up identity.
    #[test]
    fn a_forwarded_request_that_writes_nothing_is_not_answered() {
        let server = ForwardServer {
            routes: axum::Router::new().fallback(|| async { "the plaintext" }),
        };
        let request = ForwardedRequest {
            method: "POST".into(),
            path_and_query: "/v1/transit/decrypt/k".into(),
            identity: Some(Identity {
                policies: vec!["root".into()],
                ..Identity::default()
            }),
            secondary_id: "east".into(),
            ..ForwardedRequest::default()
        };
        let response = runtime()
            .block_on(server.forward(tonic::Request::new(request)))
            .expect("refused before running")
            .into_inner();
        assert_eq!(response.status, 412);
        let body = String::from_utf8_lossy(&response.body);
        assert!(!body.contains("the plaintext"), "{body}");
        assert!(body.contains("only what writes"), "{body}");
    }
}
