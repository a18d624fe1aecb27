//! The region's cgroup: everything a region runs lives below it, so it can be stopped and
//! removed whole.
//!
//! The harness starts its daemons in `<root>/daemons`; containerd's shims inherit that, and
//! kubelet puts pods in `<root>/kubepods/...` (`cgroupRoot`). On drop every process left below
//! the root (shims and container processes the daemons started for the region) is killed by
//! PID, then the directories are removed bottom-up, then the ancestors this module created.
//!
//! The machine has cgroup v1 controllers at `/sys/fs/cgroup/<controller>` and a cgroup2 tree at
//! `/sys/fs/cgroup/unified` (hybrid). kubelet's `cgroupRoot` is one path for every hierarchy, so
//! the root is `<this process's memory cgroup>/ferry-kube-<region>-<pid>` in each of them
//! (created where missing): the region stays inside the memory cgroup the test runs in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";
const KILL_TIMEOUT: Duration = Duration::from_secs(20);

/// A cgroup subtree created in every hierarchy; emptied and removed on drop.
pub struct RegionCgroup {
    /// The path inside each hierarchy, e.g. `/process_api/abc/ferry-kube-west-123`.
    path: String,
    /// Mount points of the hierarchies (`/sys/fs/cgroup/memory`, ...).
    hierarchies: Vec<PathBuf>,
    /// Directories this module created, in creation order.
    created: Vec<PathBuf>,
}

impl RegionCgroup {
    pub fn create(region: &str) -> anyhow::Result<Self> {
        let hierarchies = hierarchies()?;
        anyhow::ensure!(
            !hierarchies.is_empty(),
            "no cgroup hierarchies are mounted under {CGROUP_MOUNTS}"
        );
        let base = memory_cgroup_of_self()?;
        let path = format!(
            "{}/ferry-kube-{region}-{}",
            base.trim_end_matches('/'),
            std::process::id()
        );
        let mut cgroup = Self {
            path,
            hierarchies,
            created: Vec::new(),
        };
        for hierarchy in cgroup.hierarchies.clone() {
            cgroup.make_dirs(&hierarchy, &format!("{}/daemons", cgroup.path))?;
        }
        Ok(cgroup)
    }

    /// The path kubelet takes as `cgroupRoot`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `cgroup.procs` files a daemon writes its PID to (in every hierarchy).
    pub fn daemon_procs(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| {
                h.join(self.path.trim_start_matches('/'))
                    .join("daemons/cgroup.procs")
            })
            .collect()
    }

    /// SIGKILLs every process below the root, by PID, until none is left.
    pub fn kill_all(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "processes {pids:?} still in cgroup {} after {KILL_TIMEOUT:?}",
                    self.path
                );
            }
            for pid in &pids {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for hierarchy in &self.hierarchies {
            for dir in subtree(&hierarchy.join(self.path.trim_start_matches('/'))) {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Creates every missing component of `path` in `hierarchy`, recording what it created.
    fn make_dirs(&mut self, hierarchy: &Path, path: &str) -> anyhow::Result<()> {
        let mut dir = hierarchy.to_path_buf();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let parent = dir.clone();
            dir.push(component);
            if dir.is_dir() {
                continue;
            }
            std::fs::create_dir(&dir)
                .with_context(|| format!("failed to create cgroup {}", dir.display()))?;
            self.created.push(dir.clone());
            // A new cpuset starts with no CPUs and no memory nodes: no process could join it.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                    std::fs::write(dir.join(file), value.trim())
                        .with_context(|| format!("failed to copy {file} into {}", dir.display()))?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for RegionCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all() {
            eprintln!("kube-node: {e:#}");
        }
        for hierarchy in &self.hierarchies {
            let root = hierarchy.join(self.path.trim_start_matches('/'));
            let mut dirs = subtree(&root);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                remove_cgroup_dir(&dir);
            }
        }
        for dir in self.created.iter().rev() {
            // An ancestor another region still uses is busy: leave it to that region.
            if dir.exists() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Removes an empty cgroup, retrying briefly: a killed process leaves its cgroup a moment
/// after it is reaped.
fn remove_cgroup_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("kube-node: failed to remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `root` and every directory below it.
fn subtree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        out.push(dir);
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(entry.path());
            }
        }
    }
    out
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup (v1 controllers and a cgroup2 tree).
fn hierarchies() -> anyhow::Result<Vec<PathBuf>> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("failed to read /proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (point, fstype) = (*fields.get(1)?, *fields.get(2)?);
            ((fstype == "cgroup" || fstype == "cgroup2") && point.starts_with(CGROUP_MOUNTS))
                .then(|| PathBuf::from(point))
        })
        .collect())
}

/// This process's cgroup in the memory hierarchy (`/` when it has none).
fn memory_cgroup_of_self() -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string("/proc/self/cgroup").context("failed to read /proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_owned())
        })
        .next()
        .unwrap_or_else(|| "/".to_owned()))
}
