//! An operator region for the end-to-end tests: one region's etcd and sidecar ([`Region`]),
//! ferry-vault on it, a real kube-apiserver with the CRD and the operator's RBAC applied, and
//! ferry-operator processes running as the operator's ServiceAccount.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_operator::crd::{
    ClusterRef, PrimarySpec, ReplicationCluster, ReplicationClusterSpec, Role, SecondaryGrant,
    SecondarySpec, SecretKeyRef,
};
use ferry_operator::secret_use::SEND_TO;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::Mutex;

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
        let operator_kubeconfig =
            prepare_operator_namespace(&kube, &root_token, vault.api.base()).await?;
        let client = kube.client().await?;
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

/// What the operator needs on `kube` before it starts: the CRD (established), the namespace,
/// the RBAC of `deploy/operator-rbac.yaml` in it, and the Secret with ferry-vault's admin token
/// `root_token`, allowed to be sent to `address` (ferry-vault's). Returns the kubeconfig of the
/// operator's service account.
pub async fn prepare_operator_namespace(
    kube: &KubeApiServer,
    root_token: &str,
    address: &str,
) -> anyhow::Result<PathBuf> {
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
    let secrets: Api<Secret> = Api::namespaced(kube.client().await?, NAMESPACE);
    secrets
        .create(
            &PostParams::default(),
            &send_to(secret(ADMIN_SECRET, "token", root_token), address),
        )
        .await?;
    kube.service_account_kubeconfig(NAMESPACE, "ferry-operator")
        .await
}

/// `secret`, its value allowed to be sent to `addresses` (comma-separated), as the operator
/// requires of an admin token's Secret.
pub fn send_to(mut secret: Secret, addresses: &str) -> Secret {
    secret.metadata.annotations = Some(
        [(SEND_TO.to_owned(), addresses.to_owned())]
            .into_iter()
            .collect(),
    );
    secret
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

/// The message of condition `type_` of `rc` (empty when unset).
pub fn condition_message(rc: &ReplicationCluster, type_: &str) -> String {
    rc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
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

pub const LONG: Duration = Duration::from_secs(90);

/// Acknowledged writes: number → the region that answered, and when.
pub type Acked = BTreeMap<u64, (&'static str, Instant)>;

/// The region's ferry-vault, which the harness serves over plain http on loopback: hence
/// `insecureHttp` (the operator refuses an `http://` address without it).
pub fn cluster_ref(r: &OperatorRegion) -> ClusterRef {
    let address = r.vault.api.base().to_owned();
    ClusterRef {
        insecure_http: address.starts_with("http://"),
        address,
        token_secret_ref: SecretKeyRef {
            name: ADMIN_SECRET.into(),
            key: "token".into(),
        },
        ca_bundle: None,
    }
}

pub fn primary_spec(r: &OperatorRegion, secondaries: &[&str]) -> ReplicationClusterSpec {
    ReplicationClusterSpec {
        cluster: cluster_ref(r),
        role: Role::Primary,
        primary: Some(PrimarySpec {
            primary_cluster_addr: Some(r.region.cluster_addr()),
            secondaries: secondaries
                .iter()
                .map(|id| SecondaryGrant {
                    id: (*id).into(),
                    token_secret_name: format!("{id}-activation"),
                    ttl: "30m".into(),
                })
                .collect(),
        }),
        ..Default::default()
    }
}

pub fn secondary_spec(r: &OperatorRegion, id: &str) -> ReplicationClusterSpec {
    ReplicationClusterSpec {
        cluster: cluster_ref(r),
        role: Role::Secondary,
        secondary: Some(SecondarySpec {
            token_secret_ref: Some(SecretKeyRef {
                name: format!("{id}-activation"),
                key: "token".into(),
            }),
            primary_addrs: Vec::new(),
        }),
        ..Default::default()
    }
}

pub async fn create(
    r: &OperatorRegion,
    name: &str,
    spec: ReplicationClusterSpec,
) -> anyhow::Result<()> {
    r.clusters()
        .create(&PostParams::default(), &ReplicationCluster::new(name, spec))
        .await?;
    Ok(())
}

pub async fn set_spec(
    r: &OperatorRegion,
    name: &str,
    spec: &ReplicationClusterSpec,
) -> anyhow::Result<()> {
    r.clusters()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await?;
    Ok(())
}

pub fn state(rc: &ReplicationCluster) -> Option<&str> {
    rc.status.as_ref()?.state.as_deref()
}

pub fn is_true(rc: &ReplicationCluster, type_: &str) -> bool {
    condition(rc, type_).is_some_and(|(s, _)| s == "True")
}

/// West primary, east its secondary, both through their operators: the token Secret is copied
/// from west's API server to east's. Returns the seconds from applying to `stream-wals`.
pub async fn connect(west: &OperatorRegion, east: &OperatorRegion) -> anyhow::Result<f64> {
    let started = Instant::now();
    create(west, "west", primary_spec(west, &["east"])).await?;
    create(east, "east", secondary_spec(east, "east")).await?;
    // The primary's operator writes the activation token into a Secret it owns.
    let token_secret = wait_for("the activation token Secret", LONG, || async {
        west.secrets().get_opt("east-activation").await.ok()?
    })
    .await?;
    let labels = token_secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("replication.ferry.dev/secondary-id")
            .map(String::as_str),
        Some("east")
    );
    let owner = &token_secret
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ReplicationCluster", "west")
    );
    // GitOps copies it to the secondary's region.
    let token = String::from_utf8(token_secret.data.unwrap_or_default()["token"].0.clone())?;
    east.secrets()
        .create(
            &PostParams::default(),
            &secret("east-activation", "token", &token),
        )
        .await?;
    east.wait_resource("east", "east streaming and Ready", LONG, |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready") && is_true(rc, "Replicating")
    })
    .await?;
    let took = started.elapsed().as_secs_f64();
    let rc = west
        .wait_resource("west", "west reporting east connected", LONG, |rc| {
            rc.status.as_ref().is_some_and(|s| {
                s.secondaries
                    .iter()
                    .any(|x| x.id == "east" && x.connection_state == "connected")
            }) && is_true(rc, "Ready")
                && is_true(rc, "Replicating")
        })
        .await?;
    let status = rc.status.expect("status");
    assert_eq!(status.role.as_deref(), Some("primary"));
    assert!(status.issued_tokens.contains_key("east"));
    assert_eq!(status.observed_generation, rc.metadata.generation);
    Ok(took)
}

/// How long the [`Writer`] waits for one write before it tries again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes numbered secrets to whichever region accepts them (directly or forwarded),
/// remembering every acknowledged one: where and when.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    first_on_east: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(west: JsonClient, east: JsonClient) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let first_on_east = Arc::new(Mutex::new(None));
        let task = {
            let (stop, acked, first_on_east) = (stop.clone(), acked.clone(), first_on_east.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let path = format!("/v1/secret/data/load/{n}");
                    let body = json!({ "data": { "n": n } });
                    for (name, api) in [("west", &west), ("east", &east)] {
                        // A write stuck on a dead connection (a pod gone without a reset)
                        // is given up, unacknowledged, and sent again.
                        let sent =
                            tokio::time::timeout(WRITE_TIMEOUT, api.post(&path, body.clone()));
                        let Ok(Ok(r)) = sent.await else {
                            continue;
                        };
                        if r.status == 200 {
                            acked.lock().await.insert(n, (name, Instant::now()));
                            if name == "east" {
                                first_on_east.lock().await.get_or_insert_with(Instant::now);
                            }
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Self {
            stop,
            acked,
            first_on_east,
            task,
        }
    }

    /// The writes acknowledged so far.
    pub async fn acked(&self) -> Acked {
        self.acked.lock().await.clone()
    }

    /// When the new primary (east) first acknowledged a write, if it has.
    pub async fn first_on_east(&self) -> Option<Instant> {
        *self.first_on_east.lock().await
    }

    pub async fn stop(self) -> (Acked, Option<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.acked.lock().await.clone(),
            *self.first_on_east.lock().await,
        )
    }
}

/// Flips the roles as GitOps would: west becomes a secondary following east, east the primary.
pub async fn flip(west: &OperatorRegion, east: &OperatorRegion) -> anyhow::Result<()> {
    let mut w = secondary_spec(west, "west");
    w.secondary = Some(SecondarySpec {
        token_secret_ref: None,
        primary_addrs: vec![east.region.cluster_addr()],
    });
    // The new primary first: the less favourable order, where its promotion has to wait for
    // the old primary's demotion. With `force` set, as it may stay in Git after the day it was
    // needed: a reachable old primary must still be demoted and drained first.
    let mut e = primary_spec(east, &[]);
    e.promotion.force = true;
    set_spec(east, "east", &e).await?;
    set_spec(west, "west", &w).await?;
    Ok(())
}
