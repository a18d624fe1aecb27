//! Real single-node Kubernetes clusters, one per region, on this machine: where Ferry's charts
//! and images run as they would for users (issue 17 part 3).
//!
//! [`crate::kube::KubeApiServer`] is an API server alone, enough for the operator's logic. A
//! [`KubeRegion`] is a whole node: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, containerd (with runc and the CNI bridge plugin), kubelet, kube-proxy and a
//! cluster DNS (`ferry-kube-dns`, as Debian has no CoreDNS), so pods really run, Services
//! really route and StatefulSet members find each other by name. The Kubernetes binaries are
//! v1.20.2 built from Debian's source by `scripts/kube-node.sh` and `scripts/kube-apiserver.sh`
//! (`make setup` runs both), which also build the `pause` and busybox images imported into
//! each region's containerd.
//!
//! Isolation, and why it takes what it takes (see [`namespaces`] and [`cgroup`]):
//!
//! * each region has its own network namespace: its node address, pod and Service ranges exist
//!   only there ([`plan`] lays them out), and nothing is sent outside these namespaces or
//!   loopback. The test reaches the API server through `socat` on a loopback port of the host,
//!   relayed over a Unix socket (which crosses network namespaces) to a `socat` inside;
//! * each has its own mount namespace, because kubelet needs /sys for the namespace's devices
//!   and the cgroup tree at once, and writes host-wide sysctls the harness must not change;
//! * each has its own cgroup subtree, so everything it ran, the pods and containerd's shims
//!   included, is stopped by PID and removed when the region drops.
//!
//! Two regions are joined by [`Wan`], a veth pair with routes, so a pod IP or a NodePort of one
//! is reachable from the other; tests can cut and heal it.
//!
//! Everything here needs root (namespaces, mounts, cgroups, iptables). Without it
//! [`KubeRegion::start`] fails at once, naming what is missing. Readiness is polled, never
//! slept for: the API server's `/readyz`, containerd answering, the Node `Ready` with a
//! heartbeat newer than this kubelet's start, and the DNS answering for `kubernetes.default`.

mod cgroup;
mod namespaces;
pub mod plan;
mod region;
mod wan;

pub use plan::{BUSYBOX_IMAGE, CLUSTER_DOMAIN, PAUSE_IMAGE, RegionPlan};
pub use region::KubeRegion;
pub use wan::Wan;
