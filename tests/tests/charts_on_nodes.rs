//! Ferry as users run it: the charts installed with the real `helm` on two real single-node
//! Kubernetes regions joined by a WAN link, from the images `make images` built, driven only
//! through Helm values, Secrets copied as GitOps would, and Services.
//!
//! One test walks the life of a two-region installation, step by step (issue 17):
//! 1. `helm install` of ferry-operator and ferry in west and east;
//! 2. west the primary and east its secondary through the ReplicationClusters the chart renders,
//!    with the keys and the activation Secret copied from west to east;
//! 3. hvac through the Services: west's writes read on east, east's writes forwarded, tokens
//!    local;
//! 4. `kubectl delete pod` of west's Vault pod under a write load: it comes back, no
//!    acknowledged write is lost, east streams again by itself;
//! 5. a switchover by `helm upgrade` with the roles flipped in values (as a Git commit would):
//!    no acknowledged write lost, its RTO measured;
//! 6. `helm upgrade` to a new image tag rolls the pods with no acknowledged write lost;
//! 7. `helm uninstall` leaves only what the README says it keeps.
//!
//! The timings (time to a ready two-region install, the switchover's RTO) are printed; with
//! `FERRY_BENCH_RESULTS` set to a file, they are appended to it as benchmark rows (`make bench`
//! runs this test so).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_operator::crd::ReplicationCluster;
use ferry_tests::http::JsonClient;
use ferry_tests::kube_node::{KubeRegion, Wan};
use ferry_tests::operator::{Acked, Writer, is_true, secret, state};
use ferry_tests::wait_for;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, PostParams};

const NAMESPACE: &str = "ferry-system";
/// The cluster port's NodePort in both regions; the other region reaches `<node ip>:<port>`
/// across the WAN.
const CLUSTER_NODE_PORT: u16 = 30201;
/// The tag `make images` gives (Cargo's version) and the one step 6 rolls to (the same image
/// tagged anew in each region's containerd, so only the tag changes).
const TAG: &str = env!("CARGO_PKG_VERSION");
const NEW_TAG: &str = concat!(env!("CARGO_PKG_VERSION"), "-rolled");
/// Pods start in seconds once images are imported; two regions share two cores.
const LONG: Duration = Duration::from_secs(180);

/// A region's role in its values.
#[derive(Debug, Clone, Copy)]
enum Role {
    Primary,
    /// A secondary joining with the activation token its primary issued.
    Secondary,
    /// A secondary following a primary by its addresses, after a switchover.
    Follower,
}

/// One region: its node and, once installed, a loopback port relayed to its client Service.
struct Site {
    region: KubeRegion,
    values: tempfile::TempDir,
    api_port: Option<u16>,
    root_token: String,
}

impl Site {
    fn name(&self) -> &str {
        self.region.name()
    }

    /// How the other region reaches this one's cluster port.
    fn cluster_addr(&self) -> String {
        format!("{}:{CLUSTER_NODE_PORT}", self.region.plan().node_ip())
    }

    /// ferry-vault through the client Service, with this region's root token.
    fn api(&self) -> JsonClient {
        let port = self.api_port.expect("the region is installed");
        JsonClient::new(format!("http://127.0.0.1:{port}")).with_token(&self.root_token)
    }

    fn api_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port.expect("installed"))
    }

    async fn clusters(&self) -> anyhow::Result<Api<ReplicationCluster>> {
        Ok(Api::namespaced(self.region.client().await?, NAMESPACE))
    }

    async fn secrets(&self) -> anyhow::Result<Api<Secret>> {
        Ok(Api::namespaced(self.region.client().await?, NAMESPACE))
    }

    /// Writes this region's values file for `role` (as its folder in Git would hold it) and
    /// returns its path.
    fn write_values(&self, role: Role, peer: &Site, tag: &str) -> anyhow::Result<String> {
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
        // The first region installed generates the keys; the other names the copies.
        let keys = if name == "west" {
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
    async fn helm_ferry(&self, values: &str) -> anyhow::Result<()> {
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
    async fn wait_cluster(
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
            Err(e) => {
                let last = api.get_opt(&name).await.ok().flatten();
                Err(e.context(format!(
                    "last status {}\n{}",
                    serde_json::to_string_pretty(&last.and_then(|r| r.status)).unwrap_or_default(),
                    self.logs().await
                )))
            }
        }
    }

    /// The recent logs of the region's Ferry pods, for failure messages.
    async fn logs(&self) -> String {
        let mut out = String::new();
        for (selector, container) in [
            ("app.kubernetes.io/name=ferry-operator", "operator"),
            ("app.kubernetes.io/component=vault", "ferry-sidecar"),
            ("app.kubernetes.io/component=vault", "ferry-vault"),
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
    async fn rollout(&self, name: &str) -> anyhow::Result<()> {
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
    async fn connect_api(&mut self) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_installed_with_helm_replicate_fail_over_and_uninstall_cleanly()
-> anyhow::Result<()> {
    let images = image_tarballs()?;
    let started = Instant::now();
    let (west, east) = tokio::try_join!(KubeRegion::start("west"), KubeRegion::start("east"))?;
    eprintln!("regions ready in {:.1} s", started.elapsed().as_secs_f64());
    let _wan = Wan::connect(&west, &east)?;
    let mut west = Site {
        region: west,
        values: tempfile::tempdir()?,
        api_port: None,
        root_token: String::new(),
    };
    let mut east = Site {
        region: east,
        values: tempfile::tempdir()?,
        api_port: None,
        root_token: String::new(),
    };
    for site in [&west, &east] {
        for image in &images {
            site.region.import_image(image).await?;
        }
    }

    // 1 and 2: install, west first; its keys and east's activation Secret copied to east.
    let install_started = Instant::now();
    for site in [&west, &east] {
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
    west.helm_ferry(&west.write_values(Role::Primary, &east, TAG)?)
        .await?;
    copy_secrets(
        &west,
        &east,
        &["ferry-root-key", "ferry-key-encryption-key"],
    )
    .await?;
    east.helm_ferry(&east.write_values(Role::Secondary, &west, TAG)?)
        .await?;
    wait_for("west's operator to write east-activation", LONG, || async {
        west.secrets()
            .await
            .ok()?
            .get_opt("east-activation")
            .await
            .ok()?
    })
    .await?;
    copy_secrets(&west, &east, &["east-activation"]).await?;
    east.wait_cluster("east streaming and Ready", |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready")
    })
    .await?;
    let install_seconds = install_started.elapsed().as_secs_f64();
    eprintln!("helm install to a replicating two-region install: {install_seconds:.1} s");
    west.connect_api().await?;
    east.connect_api().await?;

    // 3: hvac through both Services.
    ferry_tests::hvac::run_script(
        "replication_hvac.py",
        &[
            ("VAULT_ADDR", east.api_addr()),
            ("VAULT_TOKEN", east.root_token.clone()),
            ("VAULT_PRIMARY_ADDR", west.api_addr()),
            ("VAULT_PRIMARY_TOKEN", west.root_token.clone()),
        ],
        String::new,
    )
    .await?;
    eprintln!("hvac checks passed through both Services");

    // 4: west's Vault pod deleted under a write load.
    let writer = Writer::start(west.api(), east.api());
    wait_acked(&writer, 20).await?;
    let deleted = Instant::now();
    west.region
        .kubectl(&["delete", "pod", "-n", NAMESPACE, "ferry-0"])
        .await?;
    let gone = deleted.elapsed().as_secs_f64();
    west.rollout("ferry").await?;
    let ready = deleted.elapsed().as_secs_f64();
    let before = writer.acked().await.len();
    wait_acked(&writer, before + 20).await?;
    eprintln!(
        "west's pod deleted: gone after {gone:.1} s, its successor Ready after {ready:.1} s, \
         writes acknowledged again after {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    let (acked, _) = writer.stop().await;
    check_everywhere(&acked, &[&west, &east]).await?;
    east.wait_cluster("east streaming again", |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready")
    })
    .await?;

    // 5: switchover by a commit: both regions' values with the roles flipped, applied in both
    // regions at once (as Argo CD or Flux in each region would). The RTO runs from then to the
    // first write that east acknowledges as the new primary.
    let writer = Writer::start(west.api(), east.api());
    wait_acked(&writer, 20).await?;
    let old_epoch = write_epoch(&east.api(), "rto/before").await?;
    let east_values = east.write_values(Role::Primary, &west, TAG)?;
    let west_values = west.write_values(Role::Follower, &east, TAG)?;
    let east_api = east.api();
    let committed = Instant::now();
    let (on_new_primary, (), ()) = tokio::try_join!(
        first_write_above_epoch(&east_api, old_epoch),
        east.helm_ferry(&east_values),
        west.helm_ferry(&west_values),
    )?;
    let rto = on_new_primary.duration_since(committed).as_secs_f64();
    east.wait_cluster("east the primary and Ready", |rc| {
        rc.status.as_ref().and_then(|s| s.role.as_deref()) == Some("primary")
            && is_true(rc, "Ready")
    })
    .await?;
    west.wait_cluster("west following east", |rc| {
        state(rc) == Some("stream-wals") && is_true(rc, "Ready")
    })
    .await?;
    let (acked, _) = writer.stop().await;
    let gap = longest_gap(&acked);
    eprintln!(
        "switchover by helm upgrade: east acknowledged a write as the primary {rto:.2} s after \
         the commit; longest time without an acknowledged write {gap:.2} s; {} writes",
        acked.len()
    );
    check_everywhere(&acked, &[&east, &west]).await?;

    // 6: a new image tag rolls both regions' pods.
    for site in [&west, &east] {
        tag_image(&site.region, "ferry.dev/ferry", TAG, NEW_TAG).await?;
    }
    let writer = Writer::start(west.api(), east.api());
    wait_acked(&writer, 20).await?;
    east.helm_ferry(&east.write_values(Role::Primary, &west, NEW_TAG)?)
        .await?;
    west.helm_ferry(&west.write_values(Role::Follower, &east, NEW_TAG)?)
        .await?;
    for site in [&east, &west] {
        site.rollout("ferry").await?;
        let image = pod_image(site, "ferry-0").await?;
        anyhow::ensure!(
            image.ends_with(&format!(":{NEW_TAG}")),
            "ferry-0 in {} runs {image} after the upgrade",
            site.name()
        );
    }
    let before = writer.acked().await.len();
    wait_acked(&writer, before + 20).await?;
    let (acked, _) = writer.stop().await;
    check_everywhere(&acked, &[&east, &west]).await?;
    eprintln!("rolled to {NEW_TAG}: {} writes, none lost", acked.len());

    // 7: uninstall leaves only what the README says: the key Secrets and etcd's claims.
    for site in [&west, &east] {
        site.region
            .helm(&["uninstall", "ferry", "-n", NAMESPACE, "--wait"])
            .await?;
        site.region
            .helm(&["uninstall", "ferry-operator", "-n", NAMESPACE, "--wait"])
            .await?;
        check_left_behind(site).await?;
    }

    record_bench(&[
        ("install_to_replicating", install_seconds, "s"),
        ("switchover_rto", rto, "s"),
    ])?;
    eprintln!("test done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The tarballs `make images` wrote (`make test` builds them before the tests).
fn image_tarballs() -> anyhow::Result<Vec<std::path::PathBuf>> {
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

async fn secret_value(secrets: &Api<Secret>, name: &str, key: &str) -> anyhow::Result<String> {
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
async fn copy_secrets(from: &Site, to: &Site, names: &[&str]) -> anyhow::Result<()> {
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
async fn wait_acked(writer: &Writer, count: usize) -> anyhow::Result<()> {
    wait_for(&format!("{count} acknowledged writes"), LONG, || async {
        (writer.acked().await.len() >= count).then_some(())
    })
    .await
}

/// Every acknowledged write is readable in every one of `sites` (the first is the primary;
/// the others may take a moment to apply the last ones).
async fn check_everywhere(acked: &Acked, sites: &[&Site]) -> anyhow::Result<()> {
    anyhow::ensure!(!acked.is_empty(), "no write was acknowledged");
    for site in sites {
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
async fn write_epoch(api: &JsonClient, key: &str) -> anyhow::Result<u64> {
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
async fn first_write_above_epoch(api: &JsonClient, epoch: u64) -> anyhow::Result<Instant> {
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
fn longest_gap(acked: &Acked) -> f64 {
    let mut times: Vec<Instant> = acked.values().map(|(_, at)| *at).collect();
    times.sort();
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .fold(0.0, f64::max)
}

/// Tags `image:tag` anew as `image:new_tag` in the region's containerd.
async fn tag_image(
    region: &KubeRegion,
    image: &str,
    tag: &str,
    new_tag: &str,
) -> anyhow::Result<()> {
    region
        .containerd_images(&[
            "tag",
            &format!("{image}:{tag}"),
            &format!("{image}:{new_tag}"),
        ])
        .await
        .map(drop)
}

async fn pod_image(site: &Site, pod: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(site.region.client().await?, NAMESPACE);
    let spec = pods.get(pod).await?.spec.context("pod without spec")?;
    Ok(spec
        .containers
        .first()
        .and_then(|c| c.image.clone())
        .unwrap_or_default())
}

/// After `helm uninstall` of both charts: no Ferry pod, Service, StatefulSet, ReplicationCluster
/// or operator object is left; the key Secrets and etcd's claims are.
async fn check_left_behind(site: &Site) -> anyhow::Result<()> {
    let kinds = "pods,services,statefulsets,deployments,replicasets,configmaps,secrets,\
                 serviceaccounts,roles,rolebindings,persistentvolumeclaims,replicationclusters,\
                 poddisruptionbudgets,networkpolicies,leases";
    let listed = wait_for(
        &format!("{}'s pods to be gone", site.name()),
        LONG,
        || async {
            let out = site
                .region
                .kubectl(&["get", kinds, "-n", NAMESPACE, "-o", "name"])
                .await
                .ok()?;
            (!out.lines().any(|l| l.starts_with("pod/"))).then_some(out)
        },
    )
    .await?;
    let left: BTreeSet<&str> = listed
        .lines()
        .filter(|l| {
            // What Kubernetes itself puts in every namespace.
            !l.starts_with("serviceaccount/default")
                && !l.starts_with("secret/default-token-")
                && *l != "configmap/kube-root-ca.crt"
        })
        .collect();
    let mut expected: BTreeSet<&str> = [
        "secret/ferry-root-token",
        "persistentvolumeclaim/data-ferry-etcd-0",
    ]
    .into_iter()
    .collect();
    if site.name() == "west" {
        expected.extend(["secret/ferry-root-key", "secret/ferry-key-encryption-key"]);
    } else {
        // Copies made by hand (GitOps): Helm never owned them.
        expected.extend([
            "secret/ferry-root-key",
            "secret/ferry-key-encryption-key",
            "secret/east-activation",
        ]);
    }
    anyhow::ensure!(
        left == expected,
        "after helm uninstall, {} holds {left:?}; expected {expected:?}",
        site.name()
    );
    Ok(())
}

/// Appends the timings to `FERRY_BENCH_RESULTS` (one JSON object per line), when set.
fn record_bench(rows: &[(&str, f64, &str)]) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("FERRY_BENCH_RESULTS") else {
        return Ok(());
    };
    let mut lines = String::new();
    for (case, value, unit) in rows {
        lines.push_str(&serde_json::to_string(&serde_json::json!({
            "bench": "charts_on_nodes",
            "case": case,
            "metric": "seconds",
            "value": value,
            "unit": unit,
        }))?);
        lines.push('\n');
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(lines.as_bytes())?;
    Ok(())
}
