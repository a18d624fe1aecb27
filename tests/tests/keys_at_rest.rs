//! What a reader of any region's etcd gets: ciphertext and key names, nothing usable. After
//! replication, token issuance and a promotion, no key or value in either region's etcd holds,
//! in any form it could be stored in (PEM, DER, raw bytes, hex, base64), a private key, the
//! key-encryption key, Vault's root key, an activation token (used or not), a Vault token
//! (either region's root token included) or a secret's value. The replication keys
//! are sealed with a key-encryption key that is not in etcd; without one, replication cannot be
//! enabled (and nothing is written), and with another one, a sealed key does not open. What a
//! version from before sealing stored in clear is sealed at the next start.

use base64::Engine;
use etcd_client::GetOptions;
use ferry_proto::storage::StatusRequest;
use ferry_sidecar::keyspace::Keyspace;
use ferry_sidecar::replication::definition::{CA_PATH, DEFINITION_PATH};
use ferry_sidecar::seal::{KeyEncryptionKey, is_sealed};
use ferry_sidecar::wal::record::hex;
use ferry_tests::etcd::EtcdServer;
use ferry_tests::http::JsonClient;
use ferry_tests::inspect::opened_values;
use ferry_tests::region::{PERF, Region};
use ferry_tests::sidecar::TEST_KEK;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::vault::{EAST_ROOT_TOKEN, SHARED_ROOT_KEY, VaultPair, WEST_ROOT_TOKEN};
use serde_json::json;

const SECRET_VALUE: &str = "correct-horse-battery-staple";

/// Every key and value in `etcd`, as bytes.
async fn everything_in(etcd: &EtcdServer) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut client = etcd.client().await?;
    let all = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await?;
    Ok(all
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect())
}

/// Whether `needle` occurs in `haystack`.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Each PEM private key in `text`, as the forms its bytes could be stored in: the PKCS#8 DER,
/// the first line of its base64, and the raw 32-byte P-256 scalar with its hex. The PEM may sit
/// in a JSON string, its line breaks escaped.
fn private_key_forms(text: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let text = text.replace("\\n", "\n");
    let mut forms = Vec::new();
    for block in text.split("-----BEGIN PRIVATE KEY-----").skip(1) {
        let body: String = block
            .split("-----END PRIVATE KEY-----")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD.decode(&body)?;
        forms.push((
            "a private key's base64".into(),
            body.as_bytes()[..64].to_vec(),
        ));
        // ECPrivateKey: version 1 (02 01 01), then the scalar as a 32-byte octet string.
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .ok_or_else(|| anyhow::anyhow!("no P-256 scalar in a private key"))?;
        let scalar = der[at + 5..at + 37].to_vec();
        forms.push((
            "a private key's scalar, hex".into(),
            hex(&scalar).into_bytes(),
        ));
        forms.push(("a private key's scalar".into(), scalar));
        forms.push(("a private key's DER".into(), der));
    }
    Ok(forms)
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
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

    let text = |what: &str, value: &str| (what.to_owned(), value.as_bytes().to_vec());
    let mut forbidden = vec![
        text("a PEM private key", "PRIVATE KEY"),
        text("an unused activation token", &activation),
        text("the activation token east used", &pair.east_activation),
        text("a Vault token", &child_token),
        text("west's root token", WEST_ROOT_TOKEN),
        text("east's root token", EAST_ROOT_TOKEN),
        text("a secret's value", SECRET_VALUE),
        text(
            "a secret's value, base64",
            &base64::engine::general_purpose::STANDARD.encode(SECRET_VALUE),
        ),
        text("the key-encryption key, hex", TEST_KEK),
        ("the key-encryption key".into(), unhex(TEST_KEK)),
        text("Vault's root key, hex", SHARED_ROOT_KEY),
        ("Vault's root key".into(), unhex(SHARED_ROOT_KEY)),
    ];
    // Every private key the sidecars keep (opened with the KEK), in each form it could leak in.
    let regions = [("west", &pair.west.etcd), ("east", &pair.east.etcd)];
    let mut keys = 0;
    for (region, etcd) in regions {
        for (_, value) in opened_values(etcd, region).await? {
            let forms = private_key_forms(&value)?;
            keys += forms.len() / 4;
            forbidden.extend(forms);
        }
    }
    // Each region's own CA and identity; the promotion gave east nothing new to keep.
    assert!(
        keys >= 4,
        "found only {keys} sealed private keys to look for"
    );

    for (region, etcd) in regions {
        let all = everything_in(etcd).await?;
        assert!(all.len() > 20, "{region}: only {} keys", all.len());
        for (key, value) in &all {
            for (what, needle) in &forbidden {
                assert!(
                    !holds(value, needle) && !holds(key, needle),
                    "{region}'s etcd holds {what} in clear at {}",
                    String::from_utf8_lossy(key)
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
            .any(|(k, _)| holds(k, b"perf-replication") || holds(k, b"cluster/replicated")),
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

/// What `keyspace`'s cluster stores at `path`, as etcd holds it.
async fn stored_at(
    client: &mut etcd_client::Client,
    keyspace: &Keyspace,
    path: &str,
) -> anyhow::Result<Vec<u8>> {
    let got = client.get(keyspace.data(path), None).await?;
    let value = got.kvs().first().map(|kv| kv.value().to_vec());
    value.ok_or_else(|| anyhow::anyhow!("nothing is stored at {path}"))
}

/// A version from before sealing stored the replication CA and the cluster definition in clear;
/// the CA is never written again by itself, so the next start seals both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_version_before_sealing_stored_in_clear_is_sealed_at_the_next_start()
-> anyhow::Result<()> {
    let mut west = Region::start("west", &[]).await?;
    west.enable_primary().await?;
    let kek = KeyEncryptionKey::from_hex(TEST_KEK).map_err(anyhow::Error::msg)?;
    let keyspace = Keyspace::for_cluster("west");
    let paths = [CA_PATH, DEFINITION_PATH];
    let mut client = west.etcd.client().await?;
    let mut clear = Vec::new();
    for path in paths {
        let value = stored_at(&mut client, &keyspace, path).await?;
        assert!(is_sealed(&value), "{path} was stored in clear");
        let opened = kek.open(path, &value)?;
        // As the version before sealing left it.
        client
            .put(keyspace.data(path), opened.clone(), None)
            .await?;
        clear.push(opened);
    }
    west.restart().await?;
    for (path, opened) in paths.into_iter().zip(clear) {
        let value = stored_at(&mut client, &keyspace, path).await?;
        assert!(is_sealed(&value), "{path} is still in clear after a start");
        assert_eq!(kek.open(path, &value)?, opened, "{path} changed");
    }
    // Still the primary it was, with its CA: it issues an activation token.
    west.token("south").await?;
    Ok(())
}
