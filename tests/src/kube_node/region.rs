//! [`KubeRegion`]: one region's single-node cluster, started in order and stopped on drop.
//! What it waits for while starting is in [`readiness`]; the binaries, images and host
//! commands it needs are found by [`tools`].

mod readiness;
mod tools;

use tools::{NodeTools, node_tools, preflight};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use tempfile::TempDir;

use super::cgroup::RegionCgroup;
use super::namespaces::{Namespaces, run};
use super::plan::{self, APISERVER_PORT, CLUSTER_DOMAIN, RegionPlan};
use crate::kube::pki::Credentials;
use crate::kube::{client_from_kubeconfig, create_if_missing, write_kubeconfig};
use crate::ports::free_port;
use crate::process::Process;

/// From the start of the first process to a Ready node with DNS answering. Warm, it takes
/// about 20 s; two regions starting together on two cores take longer.
const START_TIMEOUT: Duration = Duration::from_secs(240);
/// Bound on each readiness probe, so a hung connection cannot eat the whole budget.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// The StorageClass of the local PersistentVolumes the harness creates (the default class).
pub const LOCAL_STORAGE_CLASS: &str = "local";
/// How many local PersistentVolumes a region starts with.
const INITIAL_VOLUMES: usize = 4;

/// Regions of this test process are numbered from 1: see [`RegionPlan`].
static NEXT_INDEX: AtomicU8 = AtomicU8::new(1);

/// A single-node Kubernetes cluster in its own network and mount namespaces and cgroup.
///
/// Dropping it kills every process it started (by PID, in reverse order), then everything left
/// in its cgroup (pods, shims), removes the cgroups, ends the namespaces' holder and deletes its
/// directory.
pub struct KubeRegion {
    name: String,
    plan: RegionPlan,
    // Stopped in reverse start order by `Drop`; the fields below drop after them, in order.
    processes: Vec<Process>,
    cgroup: RegionCgroup,
    namespaces: Namespaces,
    kubeconfig: PathBuf,
    tools: &'static NodeTools,
    dir: TempDir,
}

impl KubeRegion {
    /// Starts region `name` (also its Node's name) and waits until its node is Ready, its DNS
    /// answers and its local PersistentVolumes exist.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 11
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "region name {name:?}: 1 to 11 lowercase letters or digits (it names links and cgroups)"
        );
        preflight()?;
        let tools = tokio::task::spawn_blocking(node_tools).await??;
        let index = NEXT_INDEX.fetch_add(1, Ordering::SeqCst);
        anyhow::ensure!(index < 255, "too many regions in one test process");
        let plan = RegionPlan { index };
        let started = Instant::now();

        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-kube-{name}-"))
            .tempdir()?;
        for sub in ["logs", "containerd", "cni", "ipam", "kubelet", "etcd", "pv"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let cgroup = RegionCgroup::create(name)?;
        let namespaces = Namespaces::create(dir.path(), &plan.node_cidr(), &plan.service_range())?;
        let mut region = Self {
            name: name.to_owned(),
            plan,
            processes: Vec::new(),
            cgroup,
            namespaces,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            tools,
            dir,
        };
        let deadline = started + START_TIMEOUT;
        region
            .start_all(deadline)
            .await
            .inspect_err(|_| region.keep_logs())?;
        eprintln!(
            "kube-node: region {name} ready in {:.1} s (node {}, kubeconfig {})",
            started.elapsed().as_secs_f64(),
            region.plan.node_ip(),
            region.kubeconfig.display()
        );
        Ok(region)
    }

    /// The region's name, which is also its Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The region's addresses.
    pub fn plan(&self) -> RegionPlan {
        self.plan
    }

    /// A kubeconfig (admin, over a loopback port of the host) for `kubectl`, `helm` and clients.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A fresh admin client.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A command that runs `program` inside the region's namespaces (as root on its node, where
    /// pod IPs, Service IPs and NodePorts are reachable). Its process joins the region's cgroup,
    /// so it is stopped with the region.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.namespaces
            .command(&self.cgroup.daemon_procs(), program)
    }

    /// Runs `args` inside the region to completion; its stdout, or an error with its output.
    pub async fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, rest) = args.split_first().context("exec: no command given")?;
        let mut command = self.command(program);
        command.args(rest);
        tokio::task::spawn_blocking(move || run(&mut command)).await?
    }

    /// Imports a docker-archive or OCI image tarball into the region's containerd (namespace
    /// `k8s.io`, where kubelet looks), for pods with `imagePullPolicy: IfNotPresent` or `Never`.
    pub async fn import_image(&self, tarball: &Path) -> anyhow::Result<()> {
        let tarball_arg = tarball.display().to_string();
        self.containerd_images(&["import", &tarball_arg])
            .await
            .with_context(|| format!("failed to import image {}", tarball.display()))?;
        Ok(())
    }

    /// Runs `ctr images <args>` against the region's containerd (namespace `k8s.io`), e.g.
    /// `["tag", "a:1", "a:2"]`; its stdout.
    pub async fn containerd_images(&self, args: &[&str]) -> anyhow::Result<String> {
        let socket = self.containerd_socket();
        let mut command = self.command("ctr");
        command
            .arg(format!("--address={}", socket.display()))
            .args(["-n", "k8s.io", "images"])
            .args(args);
        tokio::task::spawn_blocking(move || run(&mut command)).await?
    }

    /// Creates `count` more local PersistentVolumes of `size` (`1Gi`) in the `local` class,
    /// each a directory of the region's, bound to its node.
    pub async fn create_local_volumes(&self, count: usize, size: &str) -> anyhow::Result<()> {
        let volumes: Api<PersistentVolume> = Api::all(self.client().await?);
        let existing = volumes.list(&Default::default()).await?.items.len();
        for n in existing..existing + count {
            let name = format!("local-{}-{n}", self.name);
            let path = self.dir.path().join("pv").join(&name);
            std::fs::create_dir_all(&path)?;
            let volume: PersistentVolume = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": LOCAL_STORAGE_CLASS,
                    "local": {"path": path},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.name]}
                    ]}]}},
                },
            }))?;
            create_if_missing(&volumes, &volume)
                .await
                .with_context(|| format!("failed to create PersistentVolume {name}"))?;
        }
        Ok(())
    }

    /// A loopback port of the host relayed to `target` (`address:port`) inside the region, e.g.
    /// a Service's ClusterIP or a NodePort: a `socat` on the host forwards each connection over a
    /// Unix socket (which crosses network namespaces) to a `socat` inside that dials `target`.
    /// `name` names the relay's processes (`relay-<name>-host`, `relay-<name>-inside`).
    pub async fn relay(&mut self, name: &str, target: &str) -> anyhow::Result<u16> {
        let socket = self.dir.path().join(format!("relay-{name}.sock"));
        let mut inside = self.command("socat");
        inside
            .arg(format!(
                "UNIX-LISTEN:{},fork,unlink-early",
                socket.display()
            ))
            .arg(format!("TCP:{target}"));
        self.spawn(&format!("relay-{name}-inside"), inside)?;
        let port = free_port();
        let mut host = super::namespaces::wrapped(&self.cgroup.daemon_procs(), None, "socat");
        host.arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", socket.display()));
        self.spawn(&format!("relay-{name}-host"), host)?;
        // Ready when both ends listen: the socket exists and the host port accepts.
        crate::wait_for(
            &format!("relay {name} to listen"),
            Duration::from_secs(10),
            || async {
                let listening = socket.exists()
                    && tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_ok();
                listening.then_some(())
            },
        )
        .await?;
        Ok(port)
    }

    /// Runs the real `helm` (from `make setup`; `FERRY_HELM` overrides) with the region's
    /// kubeconfig, in the repository's root (so `charts/ferry` names the chart); its stdout, or
    /// an error with its output.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        self.host_tool(crate::helm_binary(), args).await
    }

    /// Runs the real `kubectl` (from `make setup`; `FERRY_KUBECTL` overrides) with the region's
    /// kubeconfig; its stdout, or an error with its output.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.host_tool(crate::kubectl_binary(), args).await
    }

    async fn host_tool(&self, binary: PathBuf, args: &[&str]) -> anyhow::Result<String> {
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: run `make setup`",
            binary.display()
        );
        let mut command = Command::new(binary);
        command
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args);
        tokio::task::spawn_blocking(move || run(&mut command)).await?
    }

    /// The last `lines` lines of a component's log (`kubelet`, `containerd`, `kube-dns`, ...).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        self.processes
            .iter()
            .find(|p| p.name() == component)
            .map(|p| p.log_tail(lines))
            .unwrap_or_else(|| format!("no component {component} in region {}", self.name))
    }

    /// A process of this region's network namespace, for `ip link set ... netns <pid>`.
    pub(super) fn anchor_pid(&self) -> anyhow::Result<u32> {
        self.processes
            .first()
            .and_then(Process::pid)
            .context("region has no running process")
    }

    /// The region's network namespace file (`nsenter --net=`).
    pub(super) fn net_namespace(&self) -> &Path {
        self.namespaces.net()
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.path().join("containerd/containerd.sock")
    }

    fn spawn(&mut self, name: &str, command: Command) -> anyhow::Result<()> {
        let log = self.dir.path().join("logs").join(format!("{name}.log"));
        self.processes.push(Process::spawn(name, command, &log)?);
        Ok(())
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.tools.bin_dir.join(name)
    }

    async fn start_all(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let d = self.dir.path().to_path_buf();
        let plan = self.plan;
        let node_ip = plan.node_ip().to_string();
        let service_ip = plan.kubernetes_service_ip().to_string();
        let credentials = Credentials::generate_for(
            &d.join("pki"),
            &[
                "127.0.0.1",
                "localhost",
                &node_ip,
                &service_ip,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                &format!("kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            ],
        )?;
        // Components inside the region reach the API server at the node address.
        let inner_kubeconfig = d.join("region.kubeconfig");
        write_kubeconfig(
            &inner_kubeconfig,
            &plan.apiserver_url(),
            &credentials.ca_pem,
            "ferry-admin",
            &credentials.admin_token,
        )?;

        // etcd, then the API server, then the relay that makes it reachable from the host.
        let mut etcd = self.command("etcd");
        etcd.arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg("--listen-client-urls=http://127.0.0.1:2379")
            .arg("--advertise-client-urls=http://127.0.0.1:2379")
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg(format!(
                "--initial-cluster={}=http://127.0.0.1:2380",
                self.name
            ))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH);
        self.spawn("etcd", etcd)?;

        let mut apiserver = self.command(&self.tools.apiserver);
        apiserver
            .arg("--etcd-servers=http://127.0.0.1:2379")
            .arg("--bind-address=0.0.0.0")
            .arg(format!("--advertise-address={node_ip}"))
            .arg(format!("--secure-port={APISERVER_PORT}"))
            .arg(format!(
                "--cert-dir={}",
                d.join("apiserver-certs").display()
            ))
            .args(credentials.apiserver_args())
            .arg("--authorization-mode=Node,RBAC")
            .arg("--allow-privileged=true")
            .arg(format!(
                "--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                plan.service_range()
            ))
            .arg("--kubelet-preferred-address-types=InternalIP");
        self.spawn("kube-apiserver", apiserver)?;

        let port = self
            .relay("apiserver", &format!("{node_ip}:{APISERVER_PORT}"))
            .await?;
        write_kubeconfig(
            &self.kubeconfig,
            &format!("https://127.0.0.1:{port}"),
            &credentials.ca_pem,
            "ferry-admin",
            &credentials.admin_token,
        )?;
        let client = self.client().await?;
        self.wait_api(&client, deadline).await?;

        // The controllers: ServiceAccount tokens, Endpoints, StatefulSets, ...
        let mut controller_manager = self.command(self.binary("kube-controller-manager"));
        controller_manager
            .arg(format!("--kubeconfig={}", inner_kubeconfig.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                credentials.service_account_key_file.display()
            ))
            .arg(format!("--root-ca-file={}", credentials.ca_file.display()))
            .arg("--use-service-account-credentials=false")
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--port=0")
            .arg(format!(
                "--cert-dir={}",
                d.join("controller-manager-certs").display()
            ));
        self.spawn("kube-controller-manager", controller_manager)?;
        let mut scheduler = self.command(self.binary("kube-scheduler"));
        scheduler
            .arg(format!("--kubeconfig={}", inner_kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--port=0")
            .arg(format!(
                "--cert-dir={}",
                d.join("scheduler-certs").display()
            ));
        self.spawn("kube-scheduler", scheduler)?;

        // containerd with the CNI network, then the images no registry can give.
        std::fs::write(
            d.join("cni/10-ferry.conflist"),
            plan::cni_config(&plan, &d.join("ipam")),
        )?;
        let containerd_config = d.join("containerd/config.toml");
        std::fs::write(
            &containerd_config,
            plan::containerd_config(&d.join("containerd"), &d.join("cni")),
        )?;
        let mut containerd = self.command("containerd");
        containerd.arg(format!("--config={}", containerd_config.display()));
        self.spawn("containerd", containerd)?;
        self.wait_containerd(deadline).await?;
        for image in &self.tools.images {
            self.import_image(image).await?;
        }

        // The cluster DNS, on the node address (kubelet's clusterDNS).
        let mut dns = self.command(&self.tools.dns);
        dns.arg(format!("--kubeconfig={}", inner_kubeconfig.display()))
            .arg(format!("--listen={node_ip}:53"))
            .arg(format!("--domain={CLUSTER_DOMAIN}"));
        self.spawn("kube-dns", dns)?;

        // kubelet and kube-proxy.
        let resolv_conf = d.join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {node_ip}\n"))?;
        let kubelet_config = d.join("kubelet-config.json");
        std::fs::write(
            &kubelet_config,
            plan::kubelet_config(&plan, self.cgroup.path(), &resolv_conf),
        )?;
        // Heartbeats carry whole seconds.
        let kubelet_start = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let mut kubelet = self.command(self.binary("kubelet"));
        kubelet
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", inner_kubeconfig.display()))
            .arg("--container-runtime=remote")
            .arg(format!(
                "--container-runtime-endpoint=unix://{}",
                self.containerd_socket().display()
            ))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={node_ip}"))
            .arg(format!("--root-dir={}", d.join("kubelet").display()))
            .arg(format!("--cert-dir={}", d.join("kubelet/pki").display()))
            .arg(format!("--pod-infra-container-image={}", plan::PAUSE_IMAGE))
            // No cloud: without this the AWS SDK in kubelet probes 169.254.169.254.
            .env("AWS_EC2_METADATA_DISABLED", "true");
        self.spawn("kubelet", kubelet)?;
        let mut proxy = self.command(self.binary("kube-proxy"));
        proxy
            .arg(format!("--kubeconfig={}", inner_kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--bind-address={node_ip}"))
            .arg(format!("--cluster-cidr={}", plan.pod_subnet()))
            .arg("--proxy-mode=iptables")
            // Pods share one bridge and this kernel has no br_netfilter: without SNAT, a reply
            // from a Service's pod to a pod on the same bridge would bypass the DNAT's undoing.
            .arg("--masquerade-all")
            // 0: leave the host-wide conntrack settings alone.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-min=0")
            .arg("--conntrack-tcp-timeout-established=0")
            .arg("--conntrack-tcp-timeout-close-wait=0")
            .arg("--oom-score-adj=0")
            .arg("--healthz-bind-address=127.0.0.1:10256")
            .arg("--metrics-bind-address=127.0.0.1:10249");
        self.spawn("kube-proxy", proxy)?;

        self.wait_node_ready(&client, kubelet_start, deadline)
            .await?;
        self.wait_default_service_account(&client, deadline).await?;
        self.wait_dns(deadline).await?;

        let classes: Api<StorageClass> = Api::all(client.clone());
        let class: StorageClass = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": LOCAL_STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        }))?;
        create_if_missing(&classes, &class)
            .await
            .context("failed to create the local StorageClass")?;
        self.create_local_volumes(INITIAL_VOLUMES, "1Gi").await
    }

    /// Copies the region's logs out of its directory (which drop deletes) after a failure.
    fn keep_logs(&self) {
        let kept = std::env::temp_dir().join(format!(
            "ferry-kube-logs-{}-{}",
            self.name,
            std::process::id()
        ));
        let _ = std::fs::create_dir_all(&kept);
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) {
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
            }
        }
        eprintln!(
            "kube-node: region {} failed; its logs are kept in {}",
            self.name,
            kept.display()
        );
    }
}

impl Drop for KubeRegion {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        while let Some(mut process) = self.processes.pop() {
            process.kill();
        }
        // Then `cgroup` kills what is left (pods, shims) and removes the cgroups, `namespaces`
        // ends the namespaces' holder, and `dir` goes.
    }
}
