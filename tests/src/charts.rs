//! Ferry's charts on real Kubernetes regions ([`crate::kube_node`]), as users install them: the
//! real `helm` with per-region values, the images `make images` built imported into each node,
//! Secrets copied between regions as GitOps would, and ferry-vault reached through its Service.
//! The end-to-end test (`tests/charts_on_nodes.rs`) and the `kube` benchmark share these steps:
//!
//! * [`ChartRegion::start_pair`]: two regions joined by a WAN, the images imported;
//! * [`install_pair`]: ferry-operator and ferry in both, the first the primary and the second
//!   its secondary through the ReplicationClusters the chart renders, with the keys and the
//!   activation Secret copied across; it returns once the secondary streams;
//! * [`switch_over`]: the roles flipped in both regions' values and applied at once, under a
//!   write load; the RTO runs from the commit to the first write committed by the new primary
//!   (the epoch in the response's `X-Vault-Index` tells which primary committed it).
//!
//! The values are test-sized (one etcd member, small requests, a 5 s fence lease) and reach
//! the other region through a NodePort of the cluster port across the WAN.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_operator::crd::ReplicationCluster;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, ListParams, PostParams};

use crate::http::JsonClient;
use crate::kube_node::{KubeRegion, Wan};
use crate::operator::{Acked, Writer, is_true, secret, state};
use crate::wait_for;

/// The release namespace in every region.
pub const NAMESPACE: &str = "ferry-system";
/// The cluster port's NodePort in both regions; the other region reaches `<node ip>:<port>`
/// across the WAN.
pub const CLUSTER_NODE_PORT: u16 = 30201;
/// The tag `make images` gives (Cargo's version).
pub const TAG: &str = env!("CARGO_PKG_VERSION");
/// Pods start in seconds once images are imported; two regions share two cores.
pub const LONG: Duration = Duration::from_secs(180);

/// A region's role in its values.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Primary,
    /// A secondary joining with the activation token its primary issued.
    Secondary,
    /// A secondary following a primary by its addresses, after a switchover.
    Follower,
}

/// One region: its node and, once installed, a loopback port relayed to its client Service.
pub struct ChartRegion {
    pub region: KubeRegion,
    values: tempfile::TempDir,
    api_port: Option<u16>,
    /// This region's root token (Secret `ferry-root-token`), once installed.
    pub root_token: String,
    /// Whether this region's chart generates the root key and key-encryption key (the first
    /// region installed); the others name copies of them.
    generates_keys: bool,
}

impl ChartRegion {
    pub fn name(&self) -> &str {
        self.region.name()
    }

    /// How the other region reaches this one's cluster port.
    pub fn cluster_addr(&self) -> String {
        format!("{}:{CLUSTER_NODE_PORT}", self.region.plan().node_ip())
    }

    /// ferry-vault through the client Service, with this region's root token.
    pub fn api(&self) -> JsonClient {
        let port = self.api_port.expect("the region is installed");
        JsonClient::new(format!("http://127.0.0.1:{port}")).with_token(&self.root_token)
    }

    pub fn api_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port.expect("installed"))
    }

    pub async fn clusters(&self) -> anyhow::Result<Api<ReplicationCluster>> {
        Ok(Api::namespaced(self.region.client().await?, NAMESPACE))
    }

    pub async fn secrets(&self) -> anyhow::Result<Api<Secret>> {
        Ok(Api::namespaced(self.region.client().await?, NAMESPACE))
    }

    /// Writes this region's values file for `role` (as its folder in Git would hold it) and
    /// returns its path.
    pub fn write_values(
        &self,
        role: Role,
        peer: &ChartRegion,
        tag: &str,
    ) -> anyhow::Result<String> {
        let name = self.name();
        let replication = match role {
            Role::Primary => format!(
                "  role: primary\n  secondaries:\n    - {{id: {peer}, tokenSecretName: {peer}-activation}}\n",
                peer = peer.name()
            ),
            Role::Secondary => {
                format!("  role: secondary\n  activationSecretName: {name}-activation\n")
            }
            Role::Follower => format!(
                "  role: secondary\n  primaryAddrs: [{:?}]\n",
                peer.cluster_addr()
            ),
        };
        let keys = if self.generates_keys {
            String::new()
        } else {
            "rootKey: {existingSecret: ferry-root-key}\n\
             keyEncryptionKey: {existingSecret: ferry-key-encryption-key}\n"
                .to_owned()
        };
        let values = format!(
            "clusterName: {name}\n\
             image: {{tag: {tag:?}, pullPolicy: Never}}\n\
             {keys}\
             vault: {{log: info, resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 512Mi}}}}}}\n\
             sidecar:\n  log: info\n  fenceTtlSeconds: 5\n  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 512Mi}}}}\n\
             clusterService: {{type: NodePort, nodePort: {CLUSTER_NODE_PORT}, address: {:?}}}\n\
             etcd:\n  replicas: 1\n  image: {{pullPolicy: Never}}\n  storage: {{size: 1Gi}}\n  \
             resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 1Gi}}}}\n\
             terminationGracePeriodSeconds: 10\n\
             replication:\n  enabled: true\n  insecureHttp: true\n  forcePromotion: true\n{replication}",
            self.cluster_addr()
        );
        let path = self
            .values
            .path()
            .join(format!("{name}-{role:?}-{tag}.yaml"));
        std::fs::write(&path, values)?;
        Ok(path.display().to_string())
    }

    /// `helm upgrade --install` of charts/ferry with `values`.
    pub async fn helm_ferry(&self, values: &str) -> anyhow::Result<()> {
        self.region
            .helm(&[
                "upgrade",
                "--install",
                "ferry",
                "charts/ferry",
                "-n",
                NAMESPACE,
                "-f",
                values,
            ])
            .await
            .with_context(|| format!("helm upgrade --install ferry in {}", self.name()))?;
        Ok(())
    }

    /// Polls this region's ReplicationCluster until `done` holds; the error carries its status
    /// and the pods' logs.
    pub async fn wait_cluster(
        &self,
        what: &str,
        done: impl Fn(&ReplicationCluster) -> bool,
    ) -> anyhow::Result<ReplicationCluster> {
        let api = self.clusters().await?;
        let name = self.name().to_owned();
        let found = wait_for(&format!("{what} ({})", self.name()), LONG, || async {
            let rc = api.get_opt(&name).await.ok()??;
            done(&rc).then_some(rc)
        })
        .await;
        match found {
            Ok(rc) => Ok(rc),
            Err(e) => Err(self.explain(e).await),
        }
    }

    /// `failure` with what the region shows: its ReplicationCluster's status, its pods, its
    /// recent events and the pods' logs.
    pub async fn explain(&self, failure: anyhow::Error) -> anyhow::Error {
        let last = match self.clusters().await {
            Ok(api) => api.get_opt(self.name()).await.ok().flatten(),
            Err(_) => None,
        };
        let mut shown = Vec::new();
        for args in [
            &["get", "pods", "-n", NAMESPACE, "-o", "wide"][..],
            &["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"][..],
        ] {
            let out = self
                .region
                .kubectl(args)
                .await
                .unwrap_or_else(|e| format!("{e:#}"));
            shown.push(format!(
                "--- {} kubectl {} ---\n{out}",
                self.name(),
                args.join(" ")
            ));
        }
        failure.context(format!(
            "{}'s last status {}\n{}\n{}",
            self.name(),
            serde_json::to_string_pretty(&last.and_then(|r| r.status)).unwrap_or_default(),
            shown.join("\n"),
            self.logs().await
        ))
    }

    /// Waits until the region's ReplicationCluster lists `count` nodes, one of them active and
    /// not `not_active` (a node known to be gone: the status is refreshed every few seconds,
    /// so until then it may still show the old view); the active node's id (its pod's name).
    pub async fn wait_nodes(
        &self,
        count: usize,
        not_active: Option<&str>,
    ) -> anyhow::Result<String> {
        let active = |rc: &ReplicationCluster| {
            let nodes = rc
                .status
                .as_ref()
                .map(|s| s.nodes.as_slice())
                .unwrap_or_default();
            let active: Vec<&str> = nodes
                .iter()
                .filter(|n| n.role == "active")
                .map(|n| n.node_id.as_str())
                .collect();
            match active[..] {
                [one] if nodes.len() == count && Some(one) != not_active => Some(one.to_owned()),
                _ => None,
            }
        };
        let what = match not_active {
            Some(gone) => format!("{count} nodes, one active other than {gone}"),
            None => format!("{count} nodes, one active"),
        };
        let rc = self.wait_cluster(&what, |rc| active(rc).is_some()).await?;
        active(&rc).context("no active node")
    }

    /// Every container of the region's Ferry node pods that restarted, as
    /// `pod/container: count (how it last ended)`.
    pub async fn restarted(&self) -> anyhow::Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.region.client().await?, NAMESPACE);
        let nodes = ListParams::default().labels("app.kubernetes.io/component=node");
        let mut restarted = Vec::new();
        for pod in pods.list(&nodes).await? {
            let statuses = pod.status.and_then(|s| s.container_statuses);
            for c in statuses.unwrap_or_default() {
                if c.restart_count > 0 {
                    let name = pod.metadata.name.as_deref().unwrap_or("?");
                    let ended = c.last_state.and_then(|s| s.terminated).map(|t| {
                        let reason = t.reason.unwrap_or_default();
                        format!(" ({reason}, exit code {})", t.exit_code)
                    });
                    restarted.push(format!(
                        "{name}/{}: {}{}",
                        c.name,
                        c.restart_count,
                        ended.unwrap_or_default()
                    ));
                }
            }
        }
        Ok(restarted)
    }

    /// The recent logs of the region's Ferry pods, for failure messages.
    pub async fn logs(&self) -> String {
        let mut out = String::new();
        for (selector, container) in [
            ("app.kubernetes.io/name=ferry-operator", "operator"),
            ("app.kubernetes.io/component=node", "ferry-sidecar"),
            ("app.kubernetes.io/component=node", "ferry-vault"),
        ] {
            let logs = self
                .region
                .kubectl(&[
                    "logs",
                    "-n",
                    NAMESPACE,
                    "-l",
                    selector,
                    "-c",
                    container,
                    "--tail=40",
                    "--prefix",
                ])
                .await
                .unwrap_or_else(|e| format!("{e:#}"));
            out.push_str(&format!("--- {} {container} ---\n{logs}\n", self.name()));
        }
        out
    }

    /// Waits for the StatefulSet `name` to have rolled out completely.
    pub async fn rollout(&self, name: &str) -> anyhow::Result<()> {
        self.region
            .kubectl(&[
                "rollout",
                "status",
                "-n",
                NAMESPACE,
                &format!("statefulset/{name}"),
                "--timeout=180s",
            ])
            .await
            .map(drop)
    }

    /// After the first install: the relay to the client Service, and the root token.
    pub async fn connect_api(&mut self) -> anyhow::Result<()> {
        let client = self.region.client().await?;
        let services: Api<Service> = Api::namespaced(client, NAMESPACE);
        let cluster_ip = services
            .get("ferry")
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .context("Service ferry has no clusterIP")?;
        self.api_port = Some(
            self.region
                .relay("ferry-api", &format!("{cluster_ip}:8200"))
                .await?,
        );
        self.root_token = secret_value(&self.secrets().await?, "ferry-root-token", "token").await?;
        Ok(())
    }
}

/// The tarballs `make images` wrote (`make test` builds them before the tests).
pub fn image_tarballs() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images");
    let images: Vec<_> = ["ferry", "ferry-operator", "etcd"]
        .iter()
        .map(|name| dir.join(format!("{name}-{TAG}.tar")))
        .collect();
    for image in &images {
        anyhow::ensure!(
            image.is_file(),
            "{} is missing: run `make images` (make test does)",
            image.display()
        );
    }
    Ok(images)
}

pub async fn secret_value(secrets: &Api<Secret>, name: &str, key: &str) -> anyhow::Result<String> {
    let secret = secrets
        .get(name)
        .await
        .with_context(|| format!("Secret {name}"))?;
    let value = secret
        .data
        .unwrap_or_default()
        .remove(key)
        .with_context(|| format!("Secret {name} has no key {key}"))?;
    Ok(String::from_utf8(value.0)?.trim().to_owned())
}

/// Copies Secrets from one region to the other as GitOps would: the data only.
pub async fn copy_secrets(
    from: &ChartRegion,
    to: &ChartRegion,
    names: &[&str],
) -> anyhow::Result<()> {
    let (source, target) = (from.secrets().await?, to.secrets().await?);
    for name in names {
        let data = source.get(name).await?.data.unwrap_or_default();
        anyhow::ensure!(data.len() == 1, "Secret {name} holds {} keys", data.len());
        let (key, value) = data.into_iter().next().expect("one key");
        let copy = secret(name, &key, &String::from_utf8(value.0)?);
        target
            .create(&PostParams::default(), &copy)
            .await
            .with_context(|| format!("failed to copy Secret {name} to {}", to.name()))?;
    }
    Ok(())
}

/// Waits until the writer has had `count` writes acknowledged.
pub async fn wait_acked(writer: &Writer, count: usize) -> anyhow::Result<()> {
    wait_for(&format!("{count} acknowledged writes"), LONG, || async {
        (writer.acked().await.len() >= count).then_some(())
    })
    .await
}

/// Every acknowledged write is readable in every one of `regions` (the first is the primary;
/// the others may take a moment to apply the last ones).
pub async fn check_everywhere(acked: &Acked, regions: &[&ChartRegion]) -> anyhow::Result<()> {
    anyhow::ensure!(!acked.is_empty(), "no write was acknowledged");
    for site in regions {
        let api = site.api();
        let last = *acked.keys().last().expect("writes");
        wait_for(
            &format!("write {last} to be readable in {}", site.name()),
            LONG,
            || async {
                let r = api
                    .get(&format!("/v1/secret/data/load/{last}"))
                    .await
                    .ok()?;
                (r.status == 200).then_some(())
            },
        )
        .await?;
        let mut missing = BTreeSet::new();
        for n in acked.keys() {
            let r = api.get(&format!("/v1/secret/data/load/{n}")).await?;
            if r.status != 200 || r.body["data"]["data"]["n"] != *n {
                missing.insert(*n);
            }
        }
        anyhow::ensure!(
            missing.is_empty(),
            "{} of {} acknowledged writes are missing in {}: {missing:?}",
            missing.len(),
            acked.len(),
            site.name()
        );
    }
    Ok(())
}

/// Writes `key` through `api`; the epoch of the primary that committed it, from the response's
/// `X-Vault-Index` (`ferry1.<stream>.<epoch>.<index>`).
pub async fn write_epoch(api: &JsonClient, key: &str) -> anyhow::Result<u64> {
    let response = api
        .post(
            &format!("/v1/secret/data/{key}"),
            serde_json::json!({"data": {"probe": true}}),
        )
        .await?
        .ok()?;
    let index = response
        .header("x-vault-index")
        .context("a write answered without X-Vault-Index")?;
    index
        .split('.')
        .nth(2)
        .and_then(|epoch| epoch.parse().ok())
        .with_context(|| format!("X-Vault-Index {index:?} names no epoch"))
}

/// Writes through `api` every 20 ms until one is committed at an epoch above `epoch`, that is
/// by a newer primary; when it was acknowledged.
pub async fn first_write_above_epoch(api: &JsonClient, epoch: u64) -> anyhow::Result<Instant> {
    let mut n = 0u64;
    wait_for("a write committed by the new primary", LONG, || {
        n += 1;
        let key = format!("rto/{n}");
        async move {
            let committed = write_epoch(api, &key).await.ok()?;
            (committed > epoch).then(Instant::now)
        }
    })
    .await
}

/// The longest time between two consecutive acknowledgements, in seconds.
pub fn longest_gap(acked: &Acked) -> f64 {
    let mut times: Vec<Instant> = acked.values().map(|(_, at)| *at).collect();
    times.sort();
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .fold(0.0, f64::max)
}

impl ChartRegion {
    /// Starts two regions, `first` and `second`, joins them by a WAN and imports the images
    /// into both. The WAN is returned to be kept (dropping it unlinks the regions).
    pub async fn start_pair(first: &str, second: &str) -> anyhow::Result<(Self, Self, Wan)> {
        let images = image_tarballs()?;
        let (a, b) = tokio::try_join!(KubeRegion::start(first), KubeRegion::start(second))?;
        let wan = Wan::connect(&a, &b)?;
        let mut pair = Vec::new();
        for (region, generates_keys) in [(a, true), (b, false)] {
            for image in &images {
                region.import_image(image).await?;
            }
            pair.push(Self {
                region,
                values: tempfile::tempdir()?,
                api_port: None,
                root_token: String::new(),
                generates_keys,
            });
        }
        let second = pair.pop().expect("two regions");
        let first = pair.pop().expect("two regions");
        Ok((first, second, wan))
    }
}

/// Installs ferry-operator and ferry in both regions, `primary` first (its chart generates the
/// keys, copied to `secondary` before its install), then copies the activation Secret
/// `primary`'s operator writes; returns once `secondary` streams, with the seconds it took
/// from the first `helm install`.
pub async fn install_pair(
    primary: &mut ChartRegion,
    secondary: &mut ChartRegion,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for site in [&*primary, &*secondary] {
        site.region
            .helm(&[
                "install",
                "ferry-operator",
                "charts/ferry-operator",
                "-n",
                NAMESPACE,
                "--create-namespace",
                "--set",
                "image.pullPolicy=Never",
            ])
            .await?;
    }
    primary
        .helm_ferry(&primary.write_values(Role::Primary, secondary, TAG)?)
        .await?;
    copy_secrets(
        primary,
        secondary,
        &["ferry-root-key", "ferry-key-encryption-key"],
    )
    .await?;
    secondary
        .helm_ferry(&secondary.write_values(Role::Secondary, primary, TAG)?)
        .await?;
    let activation = format!("{}-activation", secondary.name());
    let written = wait_for(
        &format!("{}'s operator to write {activation}", primary.name()),
        LONG,
        || async {
            primary
                .secrets()
                .await
                .ok()?
                .get_opt(&activation)
                .await
                .ok()?
        },
    )
    .await;
    if let Err(e) = written {
        return Err(primary.explain(e).await);
    }
    copy_secrets(primary, secondary, &[&activation]).await?;
    secondary
        .wait_cluster("streaming and Ready", |rc| {
            state(rc) == Some("stream-wals") && is_true(rc, "Ready")
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    primary.connect_api().await?;
    secondary.connect_api().await?;
    Ok(seconds)
}

/// A switchover's measurements.
pub struct SwitchOver {
    /// From the commit to the first write the new primary committed, in seconds.
    pub rto: f64,
    /// The longest time without an acknowledged write, in seconds.
    pub gap: f64,
    /// Every write acknowledged during it (all checked present on both regions).
    pub acked: Acked,
}

/// Flips the roles by values, as a Git commit would: `to` becomes the primary, `from` follows
/// it by address; both `helm upgrade`s run at once (as Argo CD or Flux in each region would),
/// under a write load. Returns once `to` is the primary and `from` streams from it, with every
/// acknowledged write checked on both.
pub async fn switch_over(
    from: &ChartRegion,
    to: &ChartRegion,
    tag: &str,
) -> anyhow::Result<SwitchOver> {
    let writer = Writer::start(from.api(), to.api());
    wait_acked(&writer, 20).await?;
    let to_api = to.api();
    let old_epoch = write_epoch(&to_api, "rto/before").await?;
    let to_values = to.write_values(Role::Primary, from, tag)?;
    let from_values = from.write_values(Role::Follower, to, tag)?;
    let committed = Instant::now();
    let (on_new_primary, (), ()) = tokio::try_join!(
        first_write_above_epoch(&to_api, old_epoch),
        to.helm_ferry(&to_values),
        from.helm_ferry(&from_values),
    )?;
    let rto = on_new_primary.duration_since(committed).as_secs_f64();
    to.wait_cluster("the primary and Ready", |rc| {
        rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("primary")
            && is_true(rc, "Ready")
    })
    .await?;
    from.wait_cluster("following the new primary", |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready")
    })
    .await?;
    let (acked, _) = writer.stop().await;
    check_everywhere(&acked, &[to, from]).await?;
    Ok(SwitchOver {
        rto,
        gap: longest_gap(&acked),
        acked,
    })
}
