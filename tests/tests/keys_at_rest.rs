//! What a reader of any region's etcd gets: ciphertext and key names, nothing usable. After
//! replication, token issuance and a promotion, no value in either region's etcd holds a
//! private key, an activation token, a Vault token or a secret's value. The replication keys
//! are sealed with a key-encryption key that is not in etcd; without one, replication cannot be
//! enabled (and nothing is written), and with another one, a sealed key does not open.

use etcd_client::GetOptions;
use ferry_proto::storage::StatusRequest;
use ferry_tests::etcd::EtcdServer;
use ferry_tests::http::JsonClient;
use ferry_tests::region::PERF;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::{VaultPair, WEST_ROOT_TOKEN};
use serde_json::json;

const SECRET_VALUE: &str = "correct-horse-battery-staple";

/// Every key and value in `etcd`, values lossily as text.
async fn everything_in(etcd: &EtcdServer) -> anyhow::Result<Vec<(String, String)>> {
    let mut client = etcd.client().await?;
    let all = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await?;
    Ok(all
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_region_stores_a_private_key_a_token_or_a_secret_in_clear() -> anyhow::Result<()> {
    let pair = VaultPair::start(&[]).await?;
    pair.west_root()
        .post(
            "/v1/secret/data/app/db",
            json!({ "data": { "password": SECRET_VALUE } }),
        )
        .await?
        .ok()?;
    let activation = pair.west.token("south").await?;
    let child = pair
        .west_root()
        .post("/v1/auth/token/create", json!({ "policies": ["default"] }))
        .await?
        .ok()?;
    let child_token = child.body["auth"]["client_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!child_token.is_empty(), "{}", child.body);
    pair.east.wait_caught_up(&pair.west).await?;
    // A forced promotion stores east's role anew.
    pair.east
        .call("secondary/promote", json!({ "force": true }))
        .await?
        .ok()?;

    let forbidden = [
        ("a private key", "PRIVATE KEY".to_owned()),
        ("the activation token", activation.clone()),
        ("a Vault token", child_token.clone()),
        ("a Vault root token", WEST_ROOT_TOKEN.to_owned()),
        ("a secret's value", SECRET_VALUE.to_owned()),
    ];
    for (region, etcd) in [("west", &pair.west.etcd), ("east", &pair.east.etcd)] {
        let all = everything_in(etcd).await?;
        assert!(all.len() > 20, "{region}: only {} keys", all.len());
        for (key, value) in &all {
            for (what, needle) in &forbidden {
                assert!(
                    !value.contains(needle.as_str()) && !key.contains(needle.as_str()),
                    "{region}'s etcd holds {what} in clear at {key}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_encryption_key_replication_is_refused_and_nothing_written()
-> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut options = SidecarOptions::new("west", "west-1");
    options.key_encryption_key = None;
    let sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    let api = JsonClient::unix(sidecar.api_socket());
    let reply = api
        .post(&format!("{PERF}/primary/enable"), json!({}))
        .await?;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.error().contains("--key-encryption-key-file"),
        "{}",
        reply.error()
    );
    let all = everything_in(&etcd).await?;
    assert!(
        !all.iter()
            .any(|(k, _)| k.contains("perf-replication") || k.contains("cluster/replicated")),
        "{all:?}"
    );
    let status = sidecar.admin().status(StatusRequest {}).await?.into_inner();
    assert!(status.fence_held, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_key_does_not_open_with_another_key_encryption_key() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let mut sidecar =
        Sidecar::start(&etcd.endpoint(), SidecarOptions::new("west", "west-1")).await?;
    let api = JsonClient::unix(sidecar.api_socket());
    api.post(&format!("{PERF}/primary/enable"), json!({}))
        .await?
        .ok()?;
    sidecar.set_key_encryption_key(Some(&"0f".repeat(32)));
    assert!(sidecar.restart().await.is_err(), "started with another KEK");
    let log = sidecar.log();
    assert!(
        log.contains("does not open with this key-encryption key"),
        "{log}"
    );
    Ok(())
}
