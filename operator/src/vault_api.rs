//! The client of one Vault-like cluster's replication API (`/v1/sys/replication/...`), as the
//! operator uses it: JSON over HTTPS (with the resource's CA bundle), or plain HTTP only where the
//! resource says `insecureHttp`; the admin token in `X-Vault-Token`, Vault's `{"errors": [...]}`
//! turned into [`VaultError::Refused`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::ConfigBuilderExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::crd::ClusterRef;
use crate::observe::Observed;

/// How long one ordinary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A planned promotion first drains the old primary: it may take longer.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest response read.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The cluster did not answer (connection refused, timeout, TLS failure).
    #[error("the cluster's API at {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    /// The cluster answered with an error status.
    #[error("{path} answered {status}: {message}")]
    Refused {
        path: String,
        status: u16,
        message: String,
        /// The sidecar's machine-readable `error_code`, when it gave one.
        code: Option<String>,
    },
    /// The configuration given cannot make a client (bad address or CA bundle).
    #[error("{0}")]
    Config(String),
    #[error("{path}: unexpected answer: {reason}")]
    Malformed { path: String, reason: String },
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of one cluster's API.
#[derive(Clone)]
pub struct VaultApi {
    base: String,
    token: String,
    client: Client<Https, Full<Bytes>>,
}

impl VaultApi {
    /// A client of `cluster.address` (such as `https://vault:8200`) that sends `token`, trusting
    /// `cluster.caBundle` instead of the system's roots when set. A plain `http://` address is
    /// refused unless `cluster.insecureHttp` allows it, here as well as in the spec's validation:
    /// the token goes nowhere in clear text that the resource did not ask for.
    pub fn new(cluster: &ClusterRef, token: &str) -> Result<Self, VaultError> {
        let address = cluster.address.as_str();
        let base = address.trim_end_matches('/').to_owned();
        if base.starts_with("http://") && !cluster.insecure_http {
            return Err(VaultError::Config(format!(
                "address {address:?} is plain http://, which would send the admin token in clear \
                 text; use https:// or set insecureHttp"
            )));
        }
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(VaultError::Config(format!(
                "address {address:?} must start with http:// or https://"
            )));
        }
        let tls = match cluster.ca_bundle.as_deref() {
            Some(pem) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert =
                        cert.map_err(|e| VaultError::Config(format!("caBundle is not PEM: {e}")))?;
                    roots.add(cert).map_err(|e| {
                        VaultError::Config(format!("caBundle holds an unusable certificate: {e}"))
                    })?;
                }
                if roots.is_empty() {
                    return Err(VaultError::Config("caBundle holds no certificate".into()));
                }
                rustls::ClientConfig::builder_with_provider(
                    rustls::crypto::ring::default_provider().into(),
                )
                .with_safe_default_protocol_versions()
                .map_err(|e| VaultError::Config(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth()
            }
            None => rustls::ClientConfig::builder_with_provider(
                rustls::crypto::ring::default_provider().into(),
            )
            .with_safe_default_protocol_versions()
            .map_err(|e| VaultError::Config(e.to_string()))?
            .with_native_roots()
            .map_err(|e| VaultError::Config(format!("no system roots: {e}")))?
            .with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if cluster.insecure_http {
            connector.https_or_http()
        } else {
            connector.https_only()
        };
        let connector = connector.enable_http1().build();
        Ok(Self {
            base,
            token: token.to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub fn address(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, VaultError> {
        let unreachable = |reason: String| VaultError::Unreachable {
            address: self.base.clone(),
            reason,
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/v1/{path}", self.base))
            .header("x-vault-token", &self.token)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| VaultError::Config(format!("bad request to {path}: {e}")))?;
        // One deadline for the whole exchange, the body included.
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(format!("{e:#}")))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, VaultError>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", timeout.as_secs())))??;
        let json: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|e| VaultError::Malformed {
                path: path.into(),
                reason: format!("not JSON ({e}): {}", String::from_utf8_lossy(&body)),
            })?
        };
        if !(200..300).contains(&status) {
            let message = json["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "no message".into());
            return Err(VaultError::Refused {
                path: path.into(),
                status,
                message,
                code: json["error_code"].as_str().map(str::to_owned),
            });
        }
        Ok(json)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, VaultError> {
        self.call("POST", path, Some(body), CALL_TIMEOUT).await
    }

    /// `sys/replication/performance/status`.
    pub async fn status(&self) -> Result<Observed, VaultError> {
        let path = "sys/replication/performance/status";
        let reply = self.call("GET", path, None, CALL_TIMEOUT).await?;
        Observed::from_status(&reply["data"]).map_err(|reason| VaultError::Malformed {
            path: path.into(),
            reason,
        })
    }

    pub async fn enable_primary(
        &self,
        primary_cluster_addr: Option<&str>,
    ) -> Result<(), VaultError> {
        let body = match primary_cluster_addr {
            Some(a) => json!({ "primary_cluster_addr": a }),
            None => json!({}),
        };
        self.post("sys/replication/performance/primary/enable", body)
            .await
            .map(drop)
    }

    /// Issues an activation token for `id`, valid `ttl` (a duration such as `30m`).
    pub async fn secondary_token(&self, id: &str, ttl: &str) -> Result<String, VaultError> {
        let path = "sys/replication/performance/primary/secondary-token";
        let reply = self.post(path, json!({ "id": id, "ttl": ttl })).await?;
        reply["wrap_info"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| VaultError::Malformed {
                path: path.into(),
                reason: "no wrap_info.token".into(),
            })
    }

    pub async fn revoke_secondary(&self, id: &str) -> Result<(), VaultError> {
        self.post(
            "sys/replication/performance/primary/revoke-secondary",
            json!({ "id": id }),
        )
        .await
        .map(drop)
    }

    pub async fn demote(&self) -> Result<(), VaultError> {
        self.post("sys/replication/performance/primary/demote", json!({}))
            .await
            .map(drop)
    }

    pub async fn enable_secondary(&self, token: &str) -> Result<(), VaultError> {
        self.post(
            "sys/replication/performance/secondary/enable",
            json!({ "token": token }),
        )
        .await
        .map(drop)
    }

    pub async fn promote(&self, force: bool) -> Result<(), VaultError> {
        self.call(
            "POST",
            "sys/replication/performance/secondary/promote",
            Some(json!({ "force": force })),
            PROMOTE_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Follows the primary at `addrs` (a demoted primary joining its successor).
    pub async fn update_primary_addrs(&self, addrs: &[String]) -> Result<(), VaultError> {
        self.post(
            "sys/replication/performance/secondary/update-primary",
            json!({ "update_primary_addrs": addrs }),
        )
        .await
        .map(drop)
    }

    /// Follows the primary that issued `token`.
    pub async fn update_primary_token(&self, token: &str) -> Result<(), VaultError> {
        self.post(
            "sys/replication/performance/secondary/update-primary",
            json!({ "token": token }),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SecretKeyRef;

    fn cluster(address: &str, insecure_http: bool) -> ClusterRef {
        ClusterRef {
            address: address.into(),
            token_secret_ref: SecretKeyRef::default(),
            ca_bundle: None,
            insecure_http,
        }
    }

    /// The client itself refuses plain http:// without `insecureHttp`, whatever calls it (the
    /// finalizer's cleanup runs without the spec's validation).
    #[test]
    fn the_client_refuses_plain_http_unless_allowed() {
        let refused = VaultApi::new(&cluster("http://vault:8200", false), "t").err();
        assert!(
            matches!(&refused, Some(VaultError::Config(m)) if m.contains("insecureHttp")),
            "{refused:?}"
        );
        assert!(VaultApi::new(&cluster("http://vault:8200", true), "t").is_ok());
        assert!(VaultApi::new(&cluster("https://vault:8200", false), "t").is_ok());
    }
}
