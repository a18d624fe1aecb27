//! Free loopback ports.

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago. Callers retry when a server then fails to
/// bind it (another test may have taken it in between).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("failed to find a free loopback port")
}
