//! Owned child processes: signals by process id, output to a log file, cleanup on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A child process this harness started; killed on drop.
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open log {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("failed to start {name}: {command:?}"))?;
        Ok(Self {
            child: Some(child),
            log: log.to_path_buf(),
            name: name.to_owned(),
        })
    }

    /// The name it was started under (for logs and lookups).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) to this process only.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("process already stopped")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Whether the process has exited; its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        self.signal("TERM")?;
        let mut child = self.child.take().context("process already stopped")?;
        Ok(child.wait()?.success())
    }

    /// The last `lines` lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last lines of {} log ({}) ---\n{tail}",
            self.name,
            self.log.display()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The TCP ports process `pid` listens on (IPv4 and IPv6), read from `/proc`: the socket inodes
/// among its open files, matched against the kernel's tables of listening sockets.
pub fn tcp_listening_ports(pid: u32) -> anyhow::Result<std::collections::BTreeSet<u16>> {
    let fds = Path::new("/proc").join(pid.to_string()).join("fd");
    let mut inodes = std::collections::BTreeSet::new();
    for fd in
        std::fs::read_dir(&fds).with_context(|| format!("failed to list {}", fds.display()))?
    {
        // A descriptor closed since the listing has no link left: skip it.
        let Ok(target) = std::fs::read_link(fd?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text =
            std::fs::read_to_string(table).with_context(|| format!("failed to read {table}"))?;
        // `sl local_address rem_address st ... uid timeout inode`; state 0A is LISTEN.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                .with_context(|| format!("unreadable address {local:?} in {table}"))?;
            ports.insert(port);
        }
    }
    Ok(ports)
}
