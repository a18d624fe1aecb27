//! A sidecar killed with SIGKILL during a write load never leaves a key without its WAL entry or
//! a WAL entry without its keys, and every acknowledged write survives.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::storage::operation::Op;
use ferry_proto::storage::{BatchRequest, Operation, PutRequest};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::inspect::read_stored;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use ferry_tests::wait_for;

/// The value every writer stores under `key`: checkable after the crash.
fn value_for(key: &str) -> Vec<u8> {
    format!("ciphertext-of:{key}").into_bytes()
}

/// Starts `writers` tasks writing fresh keys (single puts and batches) until they fail.
fn start_load(
    sidecar: &Sidecar,
    round: usize,
    writers: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
) {
    for w in 0..writers {
        let mut s = sidecar.storage();
        let acked = acked.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let keys: Vec<String> = if i % 3 == 0 {
                    (0..8)
                        .map(|j| format!("logical/r{round}/w{w}/b{i}/{j}"))
                        .collect()
                } else {
                    vec![format!("logical/r{round}/w{w}/k{i}")]
                };
                let result = if keys.len() == 1 {
                    s.put(PutRequest {
                        key: keys[0].clone(),
                        value: value_for(&keys[0]),
                    })
                    .await
                    .map(|_| ())
                } else {
                    let operations = keys
                        .iter()
                        .map(|k| Operation {
                            op: Some(Op::Put(PutRequest {
                                key: k.clone(),
                                value: value_for(k),
                            })),
                        })
                        .collect();
                    s.batch(BatchRequest { operations }).await.map(|_| ())
                };
                if result.is_err() {
                    return;
                }
                acked.lock().unwrap().extend(keys);
            }
        });
    }
}

#[tokio::test]
async fn sigkill_during_writes_keeps_keys_and_wal_together() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let options = SidecarOptions::new("east", "n1").arg("--merkle-flush-interval-ms=50");
    let mut sidecar = Sidecar::start(&etcd.endpoint(), options).await?;
    let client = etcd.client().await?;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    for round in 0..3 {
        let before = acked.lock().unwrap().len();
        start_load(&sidecar, round, 16, acked.clone());
        // Kill mid-load, once a good number of writes went through.
        wait_for("writes to be acknowledged", Duration::from_secs(30), || {
            let n = acked.lock().unwrap().len();
            async move { (n >= before + 300).then_some(()) }
        })
        .await?;
        sidecar.kill();

        let stored = read_stored(&client, "east").await?;
        let mut in_wal = BTreeSet::new();
        for (i, entry) in stored.wal.iter().enumerate() {
            assert_eq!(
                entry.index,
                stored.wal[0].index + i as u64,
                "the WAL has a gap"
            );
            for op in &entry.ops {
                in_wal.insert(op.key.clone());
                assert_eq!(op.value.as_deref(), Some(value_for(&op.key).as_slice()));
            }
        }
        let in_data: BTreeSet<String> = stored.data.keys().cloned().collect();
        assert_eq!(
            in_data, in_wal,
            "keys and WAL entries disagree after SIGKILL in round {round}"
        );
        for (key, value) in &stored.data {
            assert_eq!(value, &value_for(key), "{key} holds a torn value");
        }
        let acked_now = acked.lock().unwrap().clone();
        let lost: Vec<_> = acked_now.difference(&in_data).take(5).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

        let status = sidecar.restart().await?;
        assert_eq!(status.merkle_keys, in_data.len() as u64);
        assert_eq!(status.last_wal, stored.wal.last().map_or(0, |e| e.index));
    }
    Ok(())
}
