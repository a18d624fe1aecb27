//! `make demo`: `scripts/demo.sh` in its non-interactive mode (`FERRY_DEMO_EXIT=1`) on free
//! ports, with the binaries this test was built with. It starts two regions (etcd, ferry-sidecar
//! and ferry-vault each), makes east west's secondary, runs the hvac tour, stops everything it
//! started and removes its state; a port already in use stops it before it starts anything.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_tests::sidecar::bin_dir;

/// The demo takes a few seconds; start-up and replication waits inside it are bounded at 60 s.
const TIMEOUT: Duration = Duration::from_secs(180);
/// The demo uses ports B..=B+14 from its base port B.
const SPAN: u16 = 15;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh")
}

/// The low end of the kernel's ephemeral port range: free_port() and outgoing connections take
/// their ports from there up, so demo ports below it do not collide with other tests.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A base port whose demo ports are all free now, picked pseudo-randomly in 10000..ephemeral.
fn free_base_port() -> u16 {
    let slots = u64::from((ephemeral_low().max(12000) - 10000) / 20 - 1);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 20);
    for attempt in 0..500u64 {
        let base = 10000 + ((seed.wrapping_add(attempt.wrapping_mul(7919))) % slots) as u16 * 20;
        // std binds with SO_REUSEADDR, as the servers do.
        if (base..base + SPAN).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!(
        "no free range of {SPAN} loopback ports below {}",
        ephemeral_low()
    );
}

/// What one run of the script did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn output(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the demo non-interactively with `base` as its base port; SIGTERM (its cleanup trap stops
/// what it started) and then SIGKILL when it overruns [`TIMEOUT`].
fn run_demo(base: u16) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-demo-test-")
        .tempdir()?;
    let state = dir.path().join("state");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new("bash")
        .arg(script())
        .env("FERRY_DEMO_EXIT", "1")
        .env("FERRY_DEMO_SKIP_BUILD", "1")
        .env("FERRY_BIN_DIR", bin_dir())
        .env("FERRY_DEMO_BASE_PORT", base.to_string())
        .env("FERRY_DEMO_DIR", &state)
        .env_remove("FERRY_DEMO_KEEP")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path)?)
        .stderr(File::create(&stderr_path)?)
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let stop = Instant::now();
            while child.try_wait()?.is_none() && stop.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "scripts/demo.sh did not finish in {TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Run {
        status,
        stdout: std::fs::read_to_string(&stdout_path)?,
        stderr: std::fs::read_to_string(&stderr_path)?,
        state,
        _dir: dir,
    })
}

/// The process ids of the script's "demo: started NAME (pid N), log ..." lines.
fn started_pids(stdout: &str) -> Vec<(String, u32)> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("demo: started ")?;
            let (name, rest) = rest.split_once(" (pid ")?;
            let pid = rest.split(')').next()?.parse().ok()?;
            Some((name.to_owned(), pid))
        })
        .collect()
}

/// Whether `pid` is still one of the demo's processes (and not a reused id).
fn still_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("etcd") || cmdline.contains("ferry-")
        })
        .unwrap_or(false)
}

#[test]
fn the_demo_runs_the_tour_and_stops_everything_it_started() -> anyhow::Result<()> {
    // Only this range's ports matter; should another process take one between the check and
    // the script's own check, the script says so and we try another range.
    let mut attempt = 0;
    let (run, base) = loop {
        let base = free_base_port();
        let run = run_demo(base)?;
        attempt += 1;
        if attempt < 3 && !run.status.success() && run.stderr.contains("is already in use") {
            continue;
        }
        break (run, base);
    };
    let out = run.output();
    assert!(run.status.success(), "the demo failed\n{out}");

    // Replication was set up through the API and east streams.
    assert!(out.contains("state: stream-wals"), "{out}");
    // Every step of the tour ran and passed.
    for step in [
        "[1/5] A secret written on the primary (west) is read on the secondary (east)",
        "[2/5] A write through the secondary (east) is forwarded to the primary (west)",
        "[3/5] Tokens are local to their cluster",
        "[4/5] Transit on the secondary",
        "[5/5] Replication status",
    ] {
        assert!(
            run.stdout.contains(step),
            "missing tour step {step:?}\n{out}"
        );
    }
    assert_eq!(
        run.stdout.lines().filter(|l| l.trim() == "ok").count(),
        5,
        "{out}"
    );
    assert!(!run.stdout.contains("FAILED"), "{out}");
    assert!(run.stdout.contains("tour: all 5 steps passed"), "{out}");
    assert!(run.stdout.contains("X-Vault-Index"), "{out}");
    assert!(run.stdout.contains("refused: 403"), "{out}");
    assert!(
        run.stdout.contains("west: mode=primary") && run.stdout.contains("east: mode=secondary"),
        "{out}"
    );
    // The addresses, root tokens and examples are printed.
    let west = format!("VAULT_ADDR=https://127.0.0.1:{base}");
    let east = format!("VAULT_ADDR=https://127.0.0.1:{}", base + 10);
    for expected in [
        west.as_str(),
        east.as_str(),
        "root token hvs.demo-west-",
        "VAULT_CACERT=",
        "root token hvs.demo-east-",
        "X-Vault-Token: $VAULT_TOKEN",
        "hvac.Client(url=",
    ] {
        assert!(run.stdout.contains(expected), "missing {expected:?}\n{out}");
    }

    // Everything it started is stopped, and its state is gone.
    let started = started_pids(&run.stdout);
    let names: Vec<&str> = started.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd (west)",
            "etcd (east)",
            "ferry-sidecar (west)",
            "ferry-sidecar (east)",
            "ferry-vault (west)",
            "ferry-vault (east)"
        ],
        "{out}"
    );
    for (name, pid) in &started {
        assert!(
            run.stdout
                .contains(&format!("demo: stopped {name} (pid {pid})")),
            "{name} was not stopped\n{out}"
        );
        assert!(!still_running(*pid), "{name} (pid {pid}) still runs\n{out}");
    }
    assert!(
        !run.state.exists(),
        "{} was not removed\n{out}",
        run.state.display()
    );
    for p in base..base + SPAN {
        assert!(
            TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "port {p} is still taken after the demo\n{out}"
        );
    }
    Ok(())
}

#[test]
fn a_busy_port_stops_the_demo_before_it_starts_anything() -> anyhow::Result<()> {
    let base = free_base_port();
    // East's cluster port.
    let busy = base + 11;
    let _holder = TcpListener::bind(("127.0.0.1", busy))?;
    let run = run_demo(base)?;
    let out = run.output();
    assert!(!run.status.success(), "{out}");
    assert!(
        run.stderr.contains(&format!(
            "port {busy} (east's cluster) on 127.0.0.1 is already in use"
        )),
        "{out}"
    );
    assert!(started_pids(&run.stdout).is_empty(), "{out}");
    Ok(())
}
