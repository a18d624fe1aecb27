//! A small JSON-over-HTTP/1.1 client for the Vault API (TCP) and the sidecar's replication API
//! (its Unix socket).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one HTTP base address such as `http://127.0.0.1:8200`, or of one Unix socket.
#[derive(Clone)]
pub struct JsonClient {
    base: String,
    client: Transport,
    /// Sent as `X-Vault-Token` when set.
    token: Option<String>,
    /// Further headers sent with every request.
    headers: Vec<(String, String)>,
}

/// A response: status code and JSON body (`Null` when empty).
#[derive(Clone, Debug)]
pub struct JsonResponse {
    pub status: u16,
    pub body: Value,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl JsonResponse {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first of Vault's `errors`, or an empty string.
    pub fn error(&self) -> String {
        self.body["errors"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Fails unless the status is 2xx.
    pub fn ok(self) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (200..300).contains(&self.status),
            "HTTP {}: {}",
            self.status,
            self.body
        );
        Ok(self)
    }
}

#[derive(Clone)]
enum Transport {
    Tcp(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
    Unix(Client<ferry_proto::UnixConnector, Full<Bytes>>),
}

impl JsonClient {
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            client: Transport::Tcp(Client::builder(TokioExecutor::new()).build_http()),
            token: None,
            headers: Vec::new(),
        }
    }

    /// A client of an `https://` base address whose certificate the CA at `ca` (PEM) signed.
    pub fn https(base: impl Into<String>, ca: &std::path::Path) -> anyhow::Result<Self> {
        let config = crate::pki::client_config(ca)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            base: base.into(),
            client: Transport::Tls(Client::builder(TokioExecutor::new()).build(connector)),
            token: None,
            headers: Vec::new(),
        })
    }

    /// A client of the HTTP server on the Unix socket at `socket`.
    pub fn unix(socket: impl Into<std::path::PathBuf>) -> Self {
        let connector = ferry_proto::UnixConnector::new(socket);
        Self {
            base: "http://unix-socket".into(),
            client: Transport::Unix(Client::builder(TokioExecutor::new()).build(connector)),
            token: None,
            headers: Vec::new(),
        }
    }

    /// The base address, e.g. `http://127.0.0.1:8200`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client, sending `token` as `X-Vault-Token`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same client, also sending header `name: value`.
    pub fn with_header(&self, name: &str, value: &str) -> Self {
        let mut client = self.clone();
        client.headers.push((name.to_owned(), value.to_owned()));
        client
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<JsonResponse> {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<JsonResponse> {
        self.request("POST", path, Some(body.to_string().into_bytes()))
            .await
    }

    /// A request without a body, with any method (`DELETE`, `LIST`).
    pub async fn send(&self, method: &str, path: &str) -> anyhow::Result<JsonResponse> {
        self.request(method, path, None).await
    }

    /// A request with any method and an optional JSON body (`PUT` with a body, `LIST`).
    pub async fn send_json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<JsonResponse> {
        let body = body.map(|b| b.to_string().into_bytes());
        self.request(method, path, body).await
    }

    /// Sends raw bytes as the body, for malformed-input tests.
    pub async fn post_raw(&self, path: &str, body: &[u8]) -> anyhow::Result<JsonResponse> {
        self.request("POST", path, Some(body.to_vec())).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<JsonResponse> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("x-vault-token", token);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let sent = async {
            match &self.client {
                Transport::Tcp(c) => c.request(request).await,
                Transport::Tls(c) => c.request(request).await,
                Transport::Unix(c) => c.request(request).await,
            }
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, sent)
            .await
            .with_context(|| format!("{method} {path} timed out"))?
            .with_context(|| format!("{method} {path} failed"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{method} {path}: body is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?
        };
        Ok(JsonResponse {
            status,
            body,
            headers,
        })
    }
}
