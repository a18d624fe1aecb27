//! Reading a sidecar's keyspace straight from etcd, to check what it wrote.

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};
use ferry_sidecar::keyspace::Keyspace;
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
