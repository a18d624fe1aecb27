//! ferry-vault's barrier and unattended start: the first start initialises the cluster with
//! the given root token, everything it stores is ciphertext, a wrong root key stops start-up,
//! and the right one opens the store again; a root key file its group or others may access
//! stops start-up too.

use std::os::unix::fs::PermissionsExt;

use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::VaultServer;

const ROOT_TOKEN: &str = "hvs.barrier-test-root-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_holds_only_ciphertext_and_opens_only_with_the_root_key() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    let root_key = "11".repeat(32);
    let mut vault = VaultServer::start(&sidecar, &root_key, ROOT_TOKEN).await?;

    let health = vault.api.get("/v1/sys/health").await?;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["initialized"], true);
    assert_eq!(health.body["sealed"], false);
    // Vault's query parameters choose the codes; bad ones are named.
    let custom = vault
        .api
        .get("/v1/sys/health?activecode=204&standbyok=true")
        .await?;
    assert_eq!(custom.status, 204);
    let bad = vault.api.get("/v1/sys/health?sealedcode=abc").await?;
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("sealedcode"), "{}", bad.error());
    assert_eq!(
        vault.api.get("/v1/sys/seal-status").await?.body["sealed"],
        false
    );
    assert_eq!(
        vault.api.get("/v1/sys/init").await?.body["initialized"],
        true
    );

    let me = vault
        .api
        .with_token(ROOT_TOKEN)
        .get("/v1/auth/token/lookup-self")
        .await?
        .ok()?;
    assert_eq!(me.body["data"]["policies"][0], "root");
    let denied = vault
        .api
        .with_token("hvs.not-a-token")
        .get("/v1/auth/token/lookup-self")
        .await?;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.error(), "permission denied");
    let missing = vault.api.get("/v1/auth/token/lookup-self").await?;
    assert_eq!(missing.status, 403);

    // Everything ferry-vault stored is sealed: version byte 1, no plaintext.
    let mut client = etcd.client().await?;
    let stored = client
        .get(
            "/ferry/west/data/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    assert!(stored.kvs().len() >= 3, "keyrings and the root token entry");
    for kv in stored.kvs() {
        let value = kv.value();
        assert_eq!(value.first(), Some(&1), "{:?} is not sealed", kv.key_str());
        for plain in [&b"root"[..], ROOT_TOKEN.as_bytes(), b"policies", b"active"] {
            assert!(
                !value.windows(plain.len()).any(|w| w == plain),
                "{:?} holds plaintext",
                kv.key_str()
            );
        }
    }

    // A wrong root key stops start-up and names what it could not open.
    vault.set_root_key(&"22".repeat(32))?;
    let log = vault.restart_expecting_failure().await?;
    assert!(log.contains("does not open core/local/keyring"), "{log}");
    vault.set_root_key("not a key")?;
    let log = vault.restart_expecting_failure().await?;
    assert!(log.contains("64 hex digits or as base64"), "{log}");

    // The right key opens the same store; the root token still works.
    vault.set_root_key(&root_key)?;
    vault.restart().await?;
    vault
        .api
        .with_token(ROOT_TOKEN)
        .get("/v1/auth/token/lookup-self")
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_key_file_others_may_access_stops_start_up() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    let mut vault = VaultServer::start(&sidecar, &"12".repeat(32), ROOT_TOKEN).await?;
    let key_file = vault.root_key_path();
    let chmod = |mode| std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(mode));

    for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
        chmod(mode)?;
        let log = vault.restart_expecting_failure().await?;
        let says = format!(
            "the root key file {} has mode {mode:04o}",
            key_file.display()
        );
        assert!(log.contains(&says), "{says}:\n{log}");
        assert!(log.contains("chmod 600"), "{log}");
    }
    // Readable by its owner only, it opens the store as before.
    for mode in [0o600, 0o400] {
        chmod(mode)?;
        vault.restart().await?;
        vault
            .api
            .with_token(ROOT_TOKEN)
            .get("/v1/auth/token/lookup-self")
            .await?
            .ok()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_vault_started_before_its_sidecar_waits_for_it() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut sidecar =
        Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    // As in a pod whose containers start together: the sidecar is not serving yet.
    sidecar.stop()?;
    let mut vault = VaultServer::spawn(&sidecar, &"22".repeat(32), ROOT_TOKEN)?;
    ferry_tests::wait_for(
        "ferry-vault to wait for the storage socket",
        std::time::Duration::from_secs(30),
        || {
            let log = vault.log();
            async move {
                log.contains("waiting for the sidecar's storage socket")
                    .then_some(())
            }
        },
    )
    .await?;
    sidecar.restart().await?;
    vault.wait_ready().await?;
    Ok(())
}
