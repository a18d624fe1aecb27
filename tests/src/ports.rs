//! Free loopback ports for the servers tests start.
//!
//! A port the kernel hands out for `bind(…:0)` is free only for a moment: nextest runs every
//! test in its own process, and another test's server, or any outgoing connection (the kernel
//! takes those from the same ephemeral range), can take it before our server binds it. A sidecar
//! binds its cluster port only once replication is enabled, so the window can last seconds, and a
//! secondary then reached whatever had taken the port ("received corrupt message of type
//! InvalidContentType" from TLS). So ports come from below the kernel's ephemeral range, where
//! nothing is handed out implicitly, and each is reserved across test processes by creating a
//! file named after it in a shared directory; reservations older than ten minutes (twice what
//! nextest lets a test run) are taken back.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Ports handed out: below Linux's default ephemeral range (32768-60999).
const FIRST: u16 = 10_000;
const LAST: u16 = 32_000;
/// How long a reservation holds: nextest ends a test after five minutes.
const RESERVED_FOR: Duration = Duration::from_secs(600);
/// Random draws before giving up (the range holds 22,001 ports).
const ATTEMPTS: usize = 10_000;

fn reservations() -> PathBuf {
    std::env::temp_dir().join("ferry-test-ports")
}

/// A loopback port no other test process was given in the last ten minutes and that nothing
/// listens on now.
pub fn free_port() -> u16 {
    let dir = reservations();
    std::fs::create_dir_all(&dir).expect("failed to create the port reservation directory");
    for _ in 0..ATTEMPTS {
        let mut bytes = [0u8; 2];
        getrandom::fill(&mut bytes).expect("no randomness for a port");
        let port = FIRST + u16::from_le_bytes(bytes) % (LAST - FIRST + 1);
        if reserve(&dir.join(port.to_string())) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {LAST}");
}

/// Creates the reservation file at `path`, replacing one older than [`RESERVED_FOR`].
fn reserve(path: &std::path::Path) -> bool {
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .is_ok()
    };
    if create() {
        return true;
    }
    let stale = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > RESERVED_FOR);
    // Two processes reclaiming the same stale port at the same moment could both win; with
    // ports drawn at random from thousands, that is not worth a lock.
    stale && std::fs::remove_file(path).is_ok() && create()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice_and_are_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        for port in ports {
            assert!((FIRST..=LAST).contains(&port));
            TcpListener::bind(("127.0.0.1", port)).expect("a handed-out port binds");
        }
    }
}
