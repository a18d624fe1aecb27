//! Reading a sidecar's keyspace straight from etcd, to check what it wrote.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};

use crate::etcd::EtcdServer;
use crate::sidecar::TEST_KEK;
use ferry_sidecar::keyspace::Keyspace;
use ferry_sidecar::seal::{KeyEncryptionKey, is_sealed};
use ferry_sidecar::wal::record::WalEntry;

/// Everything a cluster's sidecar stored, decoded.
pub struct Stored {
    /// Data keys (storage paths) and values.
    pub data: BTreeMap<String, Vec<u8>>,
    /// WAL entries in index order.
    pub wal: Vec<WalEntry>,
}

/// Reads the data and WAL of `cluster` at one etcd revision.
pub async fn read_stored(client: &Client, cluster: &str) -> anyhow::Result<Stored> {
    let ks = Keyspace::for_cluster(cluster);
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(512 * 1024 * 1024);
    let data_resp = kv
        .get(ks.data_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = data_resp.header().map_or(0, |h| h.revision());
    let data = data_resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                ks.path_of(kv.key()).expect("data key").to_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    let wal_resp = kv
        .get(
            ks.wal_prefix(),
            Some(GetOptions::new().with_prefix().with_revision(revision)),
        )
        .await?;
    let mut wal = Vec::new();
    for kv in wal_resp.kvs() {
        wal.push(WalEntry::decode(kv.value())?);
    }
    Ok(Stored { data, wal })
}

/// Every value of cluster `cluster`'s data keys in `etcd`, opened with the test KEK when
/// sealed, as text.
pub async fn opened_values(
    etcd: &EtcdServer,
    cluster: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let kek = KeyEncryptionKey::from_hex(TEST_KEK).map_err(anyhow::Error::msg)?;
    let keyspace = Keyspace::for_cluster(cluster);
    let all = etcd
        .client()
        .await?
        .get(
            keyspace.data_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut out = Vec::new();
    for kv in all.kvs() {
        let path = keyspace.path_of(kv.key()).unwrap_or_default().to_owned();
        let value = if is_sealed(kv.value()) {
            kek.open(&path, kv.value())?
        } else {
            kv.value().to_vec()
        };
        out.push((path, String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(out)
}
