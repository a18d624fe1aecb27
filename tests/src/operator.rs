//! An operator region for the end-to-end tests: one region's etcd and sidecar ([`Region`]),
//! ferry-vault on it, a real kube-apiserver with the CRD and the operator's RBAC applied, and
//! ferry-operator processes running as the operator's ServiceAccount.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use ferry_operator::crd::ReplicationCluster;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use tempfile::TempDir;

use crate::http::JsonClient;
use crate::kube::KubeApiServer;
use crate::ports::free_port;
use crate::process::Process;
use crate::region::Region;
use crate::sidecar::bin_dir;
use crate::vault::VaultServer;
use crate::wait_for;

/// The namespace the operator watches in every test region.
pub const NAMESPACE: &str = "ferry";
/// The Secret holding each region's ferry-vault root token, for the operator.
pub const ADMIN_SECRET: &str = "vault-admin";
const ROOT_KEY: &str = "6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f";

/// One ferry-operator process, stopped on drop.
pub struct Operator {
    process: Process,
    pub identity: String,
    pub metrics: JsonClient,
    pub metrics_port: u16,
    dir: TempDir,
}

impl Operator {
    /// Starts `ferry-operator run` with `kubeconfig`, watching [`NAMESPACE`].
    pub fn start(kubeconfig: &std::path::Path, identity: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-operator-")
            .tempdir()?;
        let metrics_port = free_port();
        let mut cmd = Command::new(bin_dir().join("ferry-operator"));
        cmd.arg("run")
            .arg(format!("--namespace={NAMESPACE}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--identity={identity}"))
            .arg("--resync-seconds=2")
            .arg("--log-format=text")
            .arg("--log=info,ferry_operator=debug")
            .env("KUBECONFIG", kubeconfig);
        let process = Process::spawn("ferry-operator", cmd, &dir.path().join("operator.log"))?;
        Ok(Self {
            process,
            identity: identity.into(),
            metrics: JsonClient::new(format!("http://127.0.0.1:{metrics_port}")),
            metrics_port,
            dir,
        })
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.exited()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.log")).unwrap_or_default()
    }
}

/// A region run by an operator.
pub struct OperatorRegion {
    pub name: String,
    pub region: Region,
    pub vault: VaultServer,
    pub kube: KubeApiServer,
    pub client: kube::Client,
    /// The operator ServiceAccount's kubeconfig (RBAC as shipped).
    pub operator_kubeconfig: PathBuf,
    pub root_token: String,
    pub operators: Vec<Operator>,
}

impl OperatorRegion {
    /// Starts everything but the operator: etcd, sidecar, ferry-vault, kube-apiserver with the
    /// CRD, namespace, RBAC and the admin token Secret.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        let region = Region::start(name, &[]).await?;
        let root_token = format!("hvs.{name}-operator-root");
        let vault = VaultServer::start(&region.sidecar, ROOT_KEY, &root_token).await?;
        let kube = KubeApiServer::start().await?;
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let crd = std::fs::read_to_string(format!(
            "{repo}/crds/replicationclusters.replication.ferry.dev.yaml"
        ))?;
        kube.apply_yaml(&crd).await.context("applying the CRD")?;
        kube.wait_crd_established(
            "replicationclusters.replication.ferry.dev",
            Duration::from_secs(60),
        )
        .await?;
        kube.apply_yaml(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
        ))
        .await?;
        let rbac = std::fs::read_to_string(format!("{repo}/deploy/operator-rbac.yaml"))?
            .replace("ferry-system", NAMESPACE);
        kube.apply_yaml(&rbac).await.context("applying the RBAC")?;
        let operator_kubeconfig = kube
            .service_account_kubeconfig(NAMESPACE, "ferry-operator")
            .await?;
        let client = kube.client().await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
        secrets
            .create(
                &PostParams::default(),
                &secret(ADMIN_SECRET, "token", &root_token),
            )
            .await?;
        Ok(Self {
            name: name.into(),
            region,
            vault,
            kube,
            client,
            operator_kubeconfig,
            root_token,
            operators: Vec::new(),
        })
    }

    /// Starts one more operator replica named `identity`.
    pub fn start_operator(&mut self, identity: &str) -> anyhow::Result<()> {
        let op = Operator::start(&self.operator_kubeconfig, identity)?;
        self.operators.push(op);
        Ok(())
    }

    pub fn clusters(&self) -> Api<ReplicationCluster> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// ferry-vault's API with the root token.
    pub fn vault_api(&self) -> JsonClient {
        self.vault.api.with_token(&self.root_token)
    }

    /// Polls resource `name` until `done` holds; the error carries the operators' logs.
    pub async fn wait_resource(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ReplicationCluster) -> bool,
    ) -> anyhow::Result<ReplicationCluster> {
        let api = self.clusters();
        let found = wait_for(what, timeout, || async {
            let rc = api.get_opt(name).await.ok()??;
            done(&rc).then_some(rc)
        })
        .await;
        match found {
            Ok(rc) => Ok(rc),
            Err(e) => {
                let last = api.get_opt(name).await.ok().flatten();
                Err(e.context(format!(
                    "{}: last status {}\n--- operator logs ---\n{}\n--- sidecar ---\n{}",
                    self.name,
                    serde_json::to_string_pretty(&last.and_then(|r| r.status)).unwrap_or_default(),
                    self.operators
                        .iter()
                        .map(|o| format!("[{}]\n{}", o.identity, tail(&o.log(), 60)))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.region.sidecar.log_tail(30),
                )))
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A Secret with one key.
pub fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            [(key.to_owned(), ByteString(value.as_bytes().to_vec()))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    }
}

/// The status of condition `type_` of `rc`, if set.
pub fn condition(rc: &ReplicationCluster, type_: &str) -> Option<(String, String)> {
    rc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}
