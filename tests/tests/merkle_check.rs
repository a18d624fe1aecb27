//! The admin merkle check names keys changed behind the sidecar's back, and a reindex repairs
//! the index.

use ferry_proto::storage::{CheckMerkleRequest, PutRequest, ReindexRequest};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions, bin_dir};

#[tokio::test]
async fn check_reports_tampering_and_reindex_repairs() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("east", "n1")).await?;
    let mut s = sidecar.storage();
    for i in 0..200 {
        s.put(PutRequest {
            key: format!("logical/m/k{i}"),
            value: b"v".to_vec(),
        })
        .await?;
    }
    let mut admin = sidecar.admin();
    let clean = admin
        .check_merkle(CheckMerkleRequest {})
        .await?
        .into_inner();
    assert!(
        clean.consistent && clean.mismatched_keys.is_empty(),
        "{clean:?}"
    );
    assert_eq!(clean.keys_scanned, 200);

    // Someone writes etcd directly: a changed value, a new key, a removed key.
    let client = etcd.client().await?;
    let mut kv = client.kv_client();
    kv.put("/ferry/east/data/logical/m/k7", "tampered", None)
        .await?;
    kv.put("/ferry/east/data/logical/m/intruder", "x", None)
        .await?;
    kv.delete("/ferry/east/data/logical/m/k9", None).await?;
    // A local key changed directly is not the index's business.
    kv.put("/ferry/east/data/sys/token/id/t", "x", None).await?;

    let report = admin
        .check_merkle(CheckMerkleRequest {})
        .await?
        .into_inner();
    assert!(!report.consistent);
    let mut named = report.mismatched_keys.clone();
    named.sort();
    assert_eq!(named, ["logical/m/intruder", "logical/m/k7"]);
    assert_eq!(
        report.phantom_key_hashes.len(),
        1,
        "k9 is in the index but not in etcd"
    );
    assert_eq!(report.index_root, sidecar.status().await?.merkle_root);

    assert!(admin_cli(&sidecar, "reindex")?.status.success());
    let reindexed = admin.reindex(ReindexRequest {}).await?.into_inner();
    assert_eq!(reindexed.keys, 200);
    assert_eq!(reindexed.merkle_root, report.scan_root);
    let after = admin
        .check_merkle(CheckMerkleRequest {})
        .await?
        .into_inner();
    assert!(after.consistent, "{after:?}");
    assert_eq!(sidecar.status().await?.merkle_root, report.scan_root);
    Ok(())
}

/// Runs `ferry-sidecar admin <call>` against the sidecar's socket.
fn admin_cli(sidecar: &Sidecar, call: &str) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(bin_dir().join("ferry-sidecar"))
        .arg("admin")
        .arg(format!("--storage-socket={}", sidecar.socket().display()))
        .arg(call)
        .output()?)
}
