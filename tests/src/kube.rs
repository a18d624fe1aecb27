//! A real kube-apiserver with its own etcd, on loopback: the Kubernetes side of the operator tests.
//!
//! The operator is tested against the real API server, not a mock, so that what it relies on
//! (schema validation of the CRD, RBAC, the TokenRequest API, server-side apply, watches) is
//! Kubernetes' own behaviour. No registry publishes a kube-apiserver binary:
//! `scripts/kube-apiserver.sh` builds v1.20.2 once from Debian's source and caches it (`make
//! setup` runs it), or `FERRY_KUBE_APISERVER` names one.
//!
//! Each [`KubeApiServer`] is one region's cluster: its own etcd, certificates, admin token and
//! free port, so several run side by side. There is no controller manager, hence no garbage
//! collection, no pods and no token controller: the `ServiceAccount` admission plugin (which would
//! wait for that controller) is disabled, and ServiceAccount tokens come from the TokenRequest API.
//! The endpoint reconciler is off too: nothing here routes through the `kubernetes` Service.
//!
//! Readiness is `/readyz` answering `ok` to the admin, then the `default` namespace existing
//! (the bootstrap controller creates it after the post-start hooks); both are polled, never slept
//! for, and a failure carries the server's log tail.

mod apply;
pub(crate) mod pki;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::etcd::EtcdServer;
use crate::ports::free_port;
use crate::process::Process;
use pki::Credentials;

/// How long a kube-apiserver may take from spawn to serving the `default` namespace. It usually
/// takes a few seconds; two starting at once on two cores take longer.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on each readiness probe, so a hung connection cannot eat the whole budget.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Lifetime of the ServiceAccount tokens the harness requests: longer than any test.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 24 * 3600;
/// The cluster and context name in the kubeconfigs this module writes.
const KUBECONFIG_CONTEXT: &str = "ferry-test";

/// A kube-apiserver and the etcd it stores into, stopped (by process id) on drop.
pub struct KubeApiServer {
    // Fields drop in order: the API server stops before its etcd, the directory goes last.
    process: Process,
    _etcd: EtcdServer,
    credentials: Credentials,
    url: String,
    admin_kubeconfig: PathBuf,
    dir: TempDir,
}

impl KubeApiServer {
    /// Starts an etcd and a kube-apiserver on free loopback ports and waits until the API answers.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = tokio::task::spawn_blocking(apiserver_binary).await??;
        let etcd = tokio::task::spawn_blocking(EtcdServer::start)
            .await?
            .context("failed to start the kube-apiserver's etcd")?;
        let dir = tempfile::Builder::new().prefix("ferry-kube-").tempdir()?;
        let credentials = Credentials::generate(&dir.path().join("pki"))?;

        // A free port can be taken by another test between probing and binding: retry then, and
        // only then.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let url = format!("https://127.0.0.1:{port}");
            let admin_kubeconfig = dir.path().join("admin.kubeconfig");
            write_kubeconfig(
                &admin_kubeconfig,
                &url,
                &credentials.ca_pem,
                "ferry-admin",
                &credentials.admin_token,
            )?;
            let command = apiserver_command(&binary, port, &etcd.endpoint(), &credentials, &dir);
            let log = dir.path().join(format!("kube-apiserver-{attempt}.log"));
            let mut process = Process::spawn("kube-apiserver", command, &log)?;
            match wait_ready(&mut process, &url, &admin_kubeconfig).await {
                Ok(()) => {
                    return Ok(Self {
                        process,
                        _etcd: etcd,
                        credentials,
                        url,
                        admin_kubeconfig,
                        dir,
                    });
                }
                // Dropping the process kills it.
                Err(_) if attempt < 5 && lost_port_race(&mut process) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.credentials.ca_pem
    }

    /// A bearer token whose user is in `system:masters`.
    pub fn admin_token(&self) -> &str {
        &self.credentials.admin_token
    }

    /// A kubeconfig file (server, CA and the admin token) for clients and child processes.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.admin_kubeconfig.clone()
    }

    /// A fresh admin client, built from [`Self::admin_kubeconfig`].
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name`, creating both when
    /// missing. The token comes from the TokenRequest API (no token controller runs) and carries
    /// exactly the permissions RBAC grants that account.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        create_if_missing(
            &namespaces,
            &Namespace {
                metadata: named(namespace),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("failed to create namespace {namespace}"))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        create_if_missing(
            &accounts,
            &ServiceAccount {
                metadata: named(name),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("failed to create ServiceAccount {namespace}/{name}"))?;

        let request = TokenRequest {
            spec: TokenRequestSpec {
                // Empty: the server's own audience (its issuer), which it accepts back.
                audiences: Vec::new(),
                expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("failed to request a token for {namespace}/{name}"))?
            .status
            .with_context(|| format!("the token request for {namespace}/{name} has no status"))?
            .token;

        let path = self
            .dir
            .path()
            .join(format!("serviceaccount-{namespace}-{name}.kubeconfig"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        write_kubeconfig(&path, &self.url, &self.credentials.ca_pem, &user, &token)?;
        Ok(path)
    }

    /// Applies every document of a multi-document YAML, as `kubectl apply --server-side` would;
    /// see [`apply`] for the details.
    pub async fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        apply::apply_yaml(&self.client().await?, yaml).await
    }

    /// Waits until the CustomResourceDefinition `name` (`<plural>.<group>`) is `Established`.
    pub async fn wait_crd_established(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        crate::wait_for(
            &format!("CustomResourceDefinition {name} to be Established"),
            timeout,
            || async {
                let crd = crds.get_opt(name).await.ok().flatten()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            },
        )
        .await
    }

    /// The last `lines` lines of the kube-apiserver's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Polls `/readyz` as the admin, then the `default` namespace; fails early if the process exits.
async fn wait_ready(
    process: &mut Process,
    url: &str,
    admin_kubeconfig: &Path,
) -> anyhow::Result<()> {
    let client = client_from_kubeconfig(admin_kubeconfig).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    let mut api_ready = false;
    loop {
        if let Some(status) = process.exited() {
            anyhow::bail!(
                "kube-apiserver exited during start-up ({status})\n{}",
                process.log_tail(30)
            );
        }
        if !api_ready {
            let readyz = hyper::Request::get("/readyz").body(Vec::new())?;
            match tokio::time::timeout(PROBE_TIMEOUT, client.request_text(readyz)).await {
                Ok(Ok(body)) if body.trim() == "ok" => api_ready = true,
                Ok(Ok(body)) => last = format!("/readyz: {body}"),
                Ok(Err(e)) => last = format!("/readyz: {e}"),
                Err(_) => last = format!("/readyz: no answer in {PROBE_TIMEOUT:?}"),
            }
        }
        if api_ready {
            match tokio::time::timeout(PROBE_TIMEOUT, namespaces.get_opt("default")).await {
                Ok(Ok(Some(_))) => return Ok(()),
                Ok(Ok(None)) => last = "namespace default does not exist yet".to_owned(),
                Ok(Err(e)) => last = format!("namespace default: {e}"),
                Err(_) => last = format!("namespace default: no answer in {PROBE_TIMEOUT:?}"),
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "kube-apiserver at {url} not ready after {READY_TIMEOUT:?}; last: {last}\n{}",
                process.log_tail(30)
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Whether start-up failed because another process took the port first.
fn lost_port_race(process: &mut Process) -> bool {
    process.exited().is_some() && process.log_tail(50).contains("address already in use")
}

/// An admin or ServiceAccount client from a kubeconfig file written by this module (or any other).
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("failed to read kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("failed to load kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("failed to build a Kubernetes client")
}

/// The flags that work with v1.20.2 and Debian's etcd 3.4 (as in `scripts/kube-smoke.sh`).
fn apiserver_command(
    binary: &Path,
    port: u16,
    etcd_url: &str,
    credentials: &Credentials,
    dir: &TempDir,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg("--bind-address=127.0.0.1")
        // Otherwise the server advertises the host's first interface address as its own.
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        // Unused while --tls-cert-file is given, but its default lies outside the temp dir.
        .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
        .args(credentials.apiserver_args())
        .arg("--authorization-mode=RBAC")
        .arg(format!("--service-account-issuer=https://127.0.0.1:{port}"))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--endpoint-reconciler-type=none")
        .arg("--disable-admission-plugins=ServiceAccount");
    command
}

/// The kube-apiserver binary: `FERRY_KUBE_APISERVER`, else the last line that
/// `scripts/kube-apiserver.sh` prints. Resolved once per test process, so servers starting
/// together never run the script twice.
pub(crate) fn apiserver_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_apiserver_binary().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_apiserver_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("FERRY_KUBE_APISERVER") {
        Some(path) => PathBuf::from(path),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-apiserver.sh");
            // The script's progress (minutes of building when nothing is cached) goes to our
            // stderr; only its last stdout line matters.
            let output = Command::new(&script)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("failed to run {}", script.display()))?;
            anyhow::ensure!(
                output.status.success(),
                "{} failed ({}): run `make setup` to build and cache kube-apiserver",
                script.display(),
                output.status
            );
            let stdout = String::from_utf8_lossy(&output.stdout);
            let last = stdout.lines().last().unwrap_or_default().trim();
            anyhow::ensure!(
                !last.is_empty(),
                "{} printed no path: run `make setup` to build and cache kube-apiserver",
                script.display()
            );
            PathBuf::from(last)
        }
    };
    anyhow::ensure!(
        path.is_file(),
        "kube-apiserver binary {} does not exist: run `make setup` (or set FERRY_KUBE_APISERVER)",
        path.display()
    );
    Ok(path)
}

/// Writes a one-context kubeconfig that authenticates with a bearer token.
pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": KUBECONFIG_CONTEXT,
            "cluster": {"server": server, "certificate-authority-data": ca_data},
        }],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{
            "name": KUBECONFIG_CONTEXT,
            "context": {"cluster": KUBECONFIG_CONTEXT, "user": user},
        }],
        "current-context": KUBECONFIG_CONTEXT,
    });
    let yaml = serde_saphyr::to_string(&kubeconfig).context("failed to render a kubeconfig")?;
    std::fs::write(path, yaml).with_context(|| format!("failed to write {}", path.display()))
}

/// Creates `object`; an existing one (409 Conflict) is left as it is.
pub(crate) async fn create_if_missing<K>(api: &Api<K>, object: &K) -> kube::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..Default::default()
    }
}
