//! The binaries and images a region runs (built by `scripts/kube-node.sh`) and the host commands
//! it needs, checked before anything starts.

use super::*;

/// Where the binaries and images are.
#[derive(Debug)]
pub(super) struct NodeTools {
    pub(super) apiserver: PathBuf,
    pub(super) bin_dir: PathBuf,
    pub(super) images: Vec<PathBuf>,
    pub(super) dns: PathBuf,
}

/// Fails at once, naming what is missing, when this process cannot run a node.
pub(super) fn preflight() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    anyhow::ensure!(
        uid == "0",
        "real Kubernetes nodes need root (network and mount namespaces, mounts, cgroups, \
         iptables); this test runs as uid {uid}"
    );
    let mut missing = Vec::new();
    for command in [
        "unshare",
        "nsenter",
        "mount",
        "ip",
        "socat",
        "etcd",
        "containerd",
        "ctr",
        "runc",
        "iptables",
        "conntrack",
        "busybox",
    ] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(command);
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "real Kubernetes nodes need {} on PATH: run `make setup` (scripts/kube-node.sh installs them)",
        missing.join(", ")
    );
    Ok(())
}

/// The binaries and images, resolved once per test process (`scripts/kube-node.sh`, which
/// builds them on a fresh machine; `make setup` runs it).
pub(super) fn node_tools() -> anyhow::Result<&'static NodeTools> {
    static TOOLS: OnceLock<Result<NodeTools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| find_node_tools().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn find_node_tools() -> anyhow::Result<NodeTools> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-node.sh");
    let output = Command::new(&script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}): run `make setup` to build the node binaries and images",
        script.display(),
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let dir = PathBuf::from(lines.last().copied().unwrap_or_default());
    let images: Vec<PathBuf> = lines
        .iter()
        .filter(|l| l.ends_with(".tar"))
        .map(PathBuf::from)
        .collect();
    let dns = crate::sidecar::bin_dir().join("ferry-kube-dns");
    anyhow::ensure!(
        dns.is_file(),
        "{} is missing: `cargo build --workspace --bins` (make test does) builds it",
        dns.display()
    );
    let tools = NodeTools {
        apiserver: crate::kube::apiserver_binary()?,
        bin_dir: dir.join("bin"),
        images,
        dns,
    };
    for binary in [
        "kubelet",
        "kube-proxy",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let path = tools.bin_dir.join(binary);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: run `make setup`",
            path.display()
        );
    }
    anyhow::ensure!(
        !tools.images.is_empty(),
        "{} printed no image tarballs",
        script.display()
    );
    Ok(tools)
}
