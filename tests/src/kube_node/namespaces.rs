//! The region's persistent network and mount namespaces, and commands run inside them.
//!
//! `ip netns exec` would not do: it remounts /sys for the namespace and so hides the cgroup
//! mounts that kubelet and runc need. Instead `unshare --net --mount` makes both namespaces for
//! a holder process, which prepares the mount namespace once with a setup script and then sleeps
//! for the region's life; the namespaces are reached through its `/proc/<pid>/ns/` files. (Pinning
//! them to bind-mounted files instead would fail where the tests themselves run in a mount
//! namespace other than the machine's first, as in `make fresh-check`: the kernel refuses to
//! bind a mount namespace's file there, with EINVAL.) The setup script:
//!
//! * /sys is a fresh sysfs (this network namespace's devices), with the cgroup tree bound back;
//! * the host-wide sysctls kubelet writes (`vm.overcommit_memory`, `kernel.panic`,
//!   `kernel.panic_on_oops`) are files of the region's, bind-mounted over /proc/sys, holding
//!   what kubelet wants, so the host's values are never touched;
//! * /run and /var/log are the region's (containerd shim sockets, kubelet's pod logs), and so
//!   is /var/lib/cni (CNI results), so nothing of a region lands on the host;
//! * `/` is made rshared, as kubelet expects for volume mount propagation: its peers exist only
//!   in this namespace;
//! * the loopback is up, bridge `node0` holds the node address, the Service range is routed to
//!   it (so the node itself can dial a ClusterIP: the route comes first, then kube-proxy's
//!   rules rewrite the address), and the namespace forwards.
//!
//! Everything then runs through [`Namespaces::command`], which puts the process into the
//! region's cgroup and `nsenter`s both namespaces before `exec`: the PID the harness holds is
//! the daemon's own. Dropping ends the holder; once the region's processes are gone too, the
//! namespaces, and every mount made inside, go with them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Runs inside the new namespaces with `$1` the region directory, `$2` the node address and
/// `$3` the Service range.
const SETUP_SCRIPT: &str = r#"
set -eu
d=$1
node_cidr=$2
service_range=$3
mkdir -p "$d/mnt/cgroup" "$d/mnt/sysctl" "$d/mnt/var-log" "$d/mnt/var-lib-cni"
mount --rbind /sys/fs/cgroup "$d/mnt/cgroup"
mount -t sysfs sysfs /sys
mount --move "$d/mnt/cgroup" /sys/fs/cgroup
for setting in vm/overcommit_memory=1 kernel/panic=10 kernel/panic_on_oops=1; do
  key=${setting%=*}
  file="$d/mnt/sysctl/$(echo "$key" | tr / .)"
  echo "${setting#*=}" > "$file"
  mount --bind "$file" "/proc/sys/$key"
done
mount -t tmpfs -o mode=0755 tmpfs /run
mount --bind "$d/mnt/var-log" /var/log
mount --bind "$d/mnt/var-lib-cni" /var/lib/cni
mount --make-rshared /
ip link set lo up
ip link add node0 type bridge
ip addr add "$node_cidr" dev node0
ip link set node0 up
ip route add "$service_range" dev node0
echo 1 > /proc/sys/net/ipv4/ip_forward
echo ready
exec sleep infinity
"#;

/// Puts the process into the cgroups (`$1`, `:`-separated `cgroup.procs` files), then either
/// enters the namespaces `$2` and `$3` or, with empty ones, stays on the host; then `exec`s
/// the rest of the arguments.
const WRAPPER_SCRIPT: &str = r#"
procs=$1 net=$2 mnt=$3
shift 3
IFS=:
for f in $procs; do echo $$ > "$f" || exit 125; done
unset IFS
if [ -n "$net" ]; then exec nsenter --net="$net" --mount="$mnt" -- "$@"; fi
exec "$@"
"#;

/// A network and a mount namespace held by a sleeping process; ended on drop.
pub struct Namespaces {
    holder: std::process::Child,
    net: PathBuf,
    mnt: PathBuf,
}

impl Namespaces {
    /// Creates the namespaces for a region whose files live in `region_dir`, with the node
    /// address `node_cidr` on `node0` and the Services' `service_range` routed to it.
    pub fn create(region_dir: &Path, node_cidr: &str, service_range: &str) -> anyhow::Result<Self> {
        use std::io::BufRead;
        std::fs::create_dir_all("/var/lib/cni").context("failed to create /var/lib/cni")?;
        let mut holder = Command::new("unshare")
            .arg("--net")
            .arg("--mount")
            .arg("--propagation=private")
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(SETUP_SCRIPT)
            .arg("sh")
            .arg(region_dir)
            .arg(node_cidr)
            .arg(service_range)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(region_dir.join("namespaces.log"))?)
            .spawn()
            .context("failed to run unshare")?;
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("piped");
        // The script says "ready" once the namespaces are prepared, or ends without it.
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || line.trim() != "ready" {
            let _ = holder.kill();
            let status = holder.wait()?;
            anyhow::bail!(
                "failed to set up the region's namespaces ({status}): {}",
                std::fs::read_to_string(region_dir.join("namespaces.log")).unwrap_or_default()
            );
        }
        let ns = PathBuf::from(format!("/proc/{}/ns", holder.id()));
        Ok(Self {
            net: ns.join("net"),
            mnt: ns.join("mnt"),
            holder,
        })
    }

    /// A command that runs `program` inside the namespaces, in the cgroups of `procs`.
    pub fn command(&self, procs: &[PathBuf], program: impl AsRef<OsStr>) -> Command {
        wrapped(procs, Some(self), program)
    }

    /// The network namespace file, for `nsenter --net=`.
    pub fn net(&self) -> &Path {
        &self.net
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A command that runs `program` in the cgroups of `procs`, inside `namespaces` if given, else
/// on the host.
pub fn wrapped(
    procs: &[PathBuf],
    namespaces: Option<&Namespaces>,
    program: impl AsRef<OsStr>,
) -> Command {
    let procs = procs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut command = Command::new("sh");
    command.arg("-c").arg(WRAPPER_SCRIPT).arg("sh").arg(procs);
    match namespaces {
        Some(ns) => command.arg(&ns.net).arg(&ns.mnt),
        None => command.arg("").arg(""),
    };
    command.arg(program);
    command
}

/// Runs a short command to completion; fails with its output when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("failed to run {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
