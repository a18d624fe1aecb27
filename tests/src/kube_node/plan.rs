//! A region's addresses and the configuration files its node runs with (pure: no I/O).
//!
//! Region `n` (1, 2, ... in the order a test process starts them) owns `10.n.0.0/16`:
//!
//! ```text
//!   10.n.0.1/24    the node: on bridge `node0` (this kernel has no `dummy` driver, and a
//!                  bridge without ports holds an address as well); the API server, kubelet,
//!                  NodePorts and the cluster DNS (UDP 53) listen here
//!   10.n.1.0/24    pods, on bridge `cni0` (gateway 10.n.1.1), from the CNI bridge plugin
//!   10.n.2.0/24    Services (10.n.2.1 is `kubernetes.default`)
//!   10.255.0.n/24  the region's end of the WAN link, when regions are joined
//! ```
//!
//! Ranges only exist inside the region's network namespace, so regions of different test
//! processes may use the same numbers; regions joined by a WAN need distinct ones, which the
//! per-process numbering gives.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::json;

/// The container image every pod sandbox runs (kubelet 1.20's default, built by
/// `scripts/kube-node.sh` from the source tree's `pause.c`).
pub const PAUSE_IMAGE: &str = "k8s.gcr.io/pause:3.2";
/// Debian's static busybox as an image (`scripts/kube-node.sh`): a shell, httpd, nc, nslookup.
pub const BUSYBOX_IMAGE: &str = "ferry.test/busybox:1.35";
/// The cluster domain kubelet gives pods and the DNS server answers for.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The API server's port on the node address.
pub const APISERVER_PORT: u16 = 6443;

/// The addresses of region number `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionPlan {
    pub index: u8,
}

impl RegionPlan {
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.index, 0, 1)
    }
    /// The node address with its prefix, as `ip addr add` takes it.
    pub fn node_cidr(&self) -> String {
        format!("{}/24", self.node_ip())
    }
    pub fn pod_subnet(&self) -> String {
        format!("10.{}.1.0/24", self.index)
    }
    pub fn service_range(&self) -> String {
        format!("10.{}.2.0/24", self.index)
    }
    /// The ClusterIP of the `kubernetes` Service (the first of the range).
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.index, 2, 1)
    }
    /// Everything the region owns, as a route to it from another region.
    pub fn region_range(&self) -> String {
        format!("10.{}.0.0/16", self.index)
    }
    pub fn wan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 255, 0, self.index)
    }
    pub fn wan_cidr(&self) -> String {
        format!("{}/24", self.wan_ip())
    }
    /// The API server's URL from inside the region.
    pub fn apiserver_url(&self) -> String {
        format!("https://{}:{APISERVER_PORT}", self.node_ip())
    }
}

/// containerd's configuration: state under `dir`, the CRI plugin with the pause image, runc
/// with cgroupfs, CNI from Debian's plugins and the region's conf dir `cni_dir`.
pub fn containerd_config(dir: &Path, cni_dir: &Path) -> String {
    let d = dir.display();
    let cni = cni_dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: runc must not try a negative oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#
    )
}

/// The CNI network: a bridge with the pod subnet, the node as gateway, hairpin so a pod can
/// reach itself through its Service, and port mappings.
pub fn cni_config(plan: &RegionPlan, ipam_dir: &Path) -> String {
    json!({
        "cniVersion": "0.4.0",
        "name": "ferry",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": plan.pod_subnet()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// kubelet's configuration file (JSON is YAML). Test settings: anonymous access to its API (the
/// API server's `logs` and `exec`), status computed every second so readiness shows at once,
/// no eviction or image garbage collection on a busy disk (they would remove the imported
/// images, which no registry can give back).
pub fn kubelet_config(plan: &RegionPlan, cgroup_root: &str, resolv_conf: &Path) -> String {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": plan.node_ip().to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "clusterDNS": [plan.node_ip().to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": resolv_conf,
        "failSwapOn": false,
        "oomScoreAdj": 0,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "1s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "serializeImagePulls": false,
        "protectKernelDefaults": false,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_own_disjoint_ranges() {
        let (west, east) = (RegionPlan { index: 1 }, RegionPlan { index: 2 });
        assert_eq!(west.node_cidr(), "10.1.0.1/24");
        assert_eq!(east.pod_subnet(), "10.2.1.0/24");
        assert_eq!(east.kubernetes_service_ip(), Ipv4Addr::new(10, 2, 2, 1));
        assert_ne!(west.region_range(), east.region_range());
        assert_eq!(west.wan_cidr(), "10.255.0.1/24");
    }

    #[test]
    fn configs_name_the_region() {
        let plan = RegionPlan { index: 3 };
        let cni: serde_json::Value =
            serde_json::from_str(&cni_config(&plan, Path::new("/x"))).unwrap();
        assert_eq!(
            cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.3.1.0/24"
        );
        let kubelet: serde_json::Value =
            serde_json::from_str(&kubelet_config(&plan, "/a/b", Path::new("/r"))).unwrap();
        assert_eq!(kubelet["clusterDNS"][0], "10.3.0.1");
        assert!(
            containerd_config(Path::new("/d"), Path::new("/c"))
                .contains("address = \"/d/containerd.sock\"")
        );
    }
}
