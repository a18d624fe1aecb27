//! The sidecar's replication admin API, which has no authentication of its own, is reachable
//! only by the sidecar's user: a Unix socket (mode 0600) in a directory of mode 0700 created
//! before the socket, never a TCP port that every container of a pod shares. A directory others
//! may enter is refused at start-up.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ferry_tests::etcd::EtcdServer;
use ferry_tests::region::Region;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_a_socket_only_its_owner_can_reach() -> anyhow::Result<()> {
    let region = Region::start("west", &[]).await?;
    let socket = region.sidecar.api_socket();
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(socket.parent().expect("a directory"))?, 0o700);
    assert_eq!(mode(&socket)?, 0o600);
    region.enable_primary().await?;
    assert_eq!(region.status().await?["mode"], "primary");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_directory_others_may_enter_is_refused() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let dir = tempfile::tempdir()?;
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755))?;
    let options = SidecarOptions::new("west", "n1").arg(format!(
        "--api-socket={}",
        shared.join("api.sock").display()
    ));
    let mut sidecar = Sidecar::spawn(&etcd.endpoint(), options)?;
    let status = sidecar.wait_exit(Duration::from_secs(60)).await?;
    assert!(!status.success());
    let log = sidecar.log();
    assert!(log.contains("not mode 755"), "{log}");
    assert!(!shared.join("api.sock").exists());
    Ok(())
}
