//! The storage API through the socket on a real etcd: reads, writes, lists, batches, bad input.

use ferry_proto::storage::operation::Op;
use ferry_proto::storage::{
    BatchRequest, DeleteRequest, GetRequest, ListRequest, Operation, PutRequest,
};
use ferry_tests::etcd::EtcdServer;
use ferry_tests::sidecar::{Sidecar, SidecarOptions};
use tonic::Code;

fn put(key: &str, value: &[u8]) -> Operation {
    Operation {
        op: Some(Op::Put(PutRequest {
            key: key.into(),
            value: value.to_vec(),
        })),
    }
}

#[tokio::test]
async fn put_get_delete_and_list() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("east", "n1")).await?;
    let mut s = sidecar.storage();

    let w = s
        .put(PutRequest {
            key: "logical/m1/data/app".into(),
            value: b"v1".to_vec(),
        })
        .await?
        .into_inner();
    assert_eq!(w.wal_index, 1, "the first replicated write is WAL entry 1");
    let got = s
        .get(GetRequest {
            key: "logical/m1/data/app".into(),
        })
        .await?
        .into_inner();
    assert!(got.found);
    assert_eq!(got.value, b"v1");

    // A local write gets no WAL entry.
    let local = s
        .put(PutRequest {
            key: "sys/token/id/abc".into(),
            value: b"t".to_vec(),
        })
        .await?
        .into_inner();
    assert_eq!(local.wal_index, 0);

    for key in [
        "logical/m1/data/app/x",
        "logical/m1/data/b",
        "logical/m1/data/c/d/e",
        "logical/m1/meta",
    ] {
        s.put(PutRequest {
            key: key.into(),
            value: b"x".to_vec(),
        })
        .await?;
    }
    let listed = s
        .list(ListRequest {
            prefix: "logical/m1/data/".into(),
        })
        .await?
        .into_inner()
        .keys;
    assert_eq!(listed, ["app", "app/", "b", "c/"]);
    let root = s
        .list(ListRequest {
            prefix: String::new(),
        })
        .await?
        .into_inner()
        .keys;
    assert_eq!(root, ["logical/", "sys/"]);
    assert!(
        s.list(ListRequest {
            prefix: "nothing/".into()
        })
        .await?
        .into_inner()
        .keys
        .is_empty()
    );

    let d = s
        .delete(DeleteRequest {
            key: "logical/m1/data/app".into(),
        })
        .await?
        .into_inner();
    assert!(d.wal_index > w.wal_index);
    assert!(
        !s.get(GetRequest {
            key: "logical/m1/data/app".into()
        })
        .await?
        .into_inner()
        .found
    );
    // Deleting a missing key succeeds.
    s.delete(DeleteRequest {
        key: "logical/m1/data/never".into(),
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn batch_is_one_wal_entry() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("east", "n1")).await?;
    let mut s = sidecar.storage();
    let ops = (0..50)
        .map(|i| put(&format!("core/k{i}"), b"v"))
        .chain([put("sys/expire/id/l", b"lease")])
        .collect();
    let w = s
        .batch(BatchRequest { operations: ops })
        .await?
        .into_inner();
    let status = sidecar.status().await?;
    assert_eq!(status.last_wal, w.wal_index);
    assert_eq!(status.last_wal, 1, "51 operations, one WAL entry");
    assert_eq!(
        status.merkle_keys, 50,
        "the local key is not in the merkle index"
    );
    let mut admin = sidecar.admin();
    let wal = admin
        .read_wal(ferry_proto::storage::ReadWalRequest {
            after: 0,
            limit: 10,
        })
        .await?
        .into_inner();
    assert_eq!(wal.entries.len(), 1);
    assert_eq!(
        wal.entries[0].operations.len(),
        50,
        "local operations are not shipped"
    );
    assert_eq!(wal.entries[0].merkle_root, status.merkle_root);
    Ok(())
}

#[tokio::test]
async fn bad_input_is_rejected_and_writes_nothing() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("east", "n1")).await?;
    let mut s = sidecar.storage();
    let before = sidecar.status().await?;

    let cases: Vec<(BatchRequest, &str)> = vec![
        (
            BatchRequest {
                operations: vec![put("", b"v")],
            },
            "key is empty",
        ),
        (
            BatchRequest {
                operations: vec![put(&"k".repeat(1025), b"v")],
            },
            "over the limit of 1024 bytes",
        ),
        (
            BatchRequest {
                operations: vec![put("ok", &vec![0; 512 * 1024 + 1])],
            },
            "over the limit of 524288 bytes",
        ),
        (
            BatchRequest {
                operations: (0..127).map(|i| put(&format!("k{i}"), b"v")).collect(),
            },
            "over the limit of 126",
        ),
        (
            BatchRequest {
                operations: vec![put("a/../b", b"v")],
            },
            "'.' and '..'",
        ),
        (
            BatchRequest {
                operations: vec![put("/abs", b"v")],
            },
            "empty path segment",
        ),
        (
            BatchRequest {
                operations: vec![put("dir/", b"v")],
            },
            "must not end with '/'",
        ),
        (
            BatchRequest {
                operations: vec![put("fine", b"v"), put("fine", b"w")],
            },
            "appears twice",
        ),
        (
            BatchRequest { operations: vec![] },
            "at least one operation",
        ),
        (
            BatchRequest {
                operations: vec![put("good/key", b"v"), Operation { op: None }],
            },
            "neither a put nor a delete",
        ),
    ];
    for (request, expected) in cases {
        let err = s.batch(request).await.expect_err(expected);
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}: {err:?}");
        assert!(
            err.message().contains(expected),
            "{expected:?} not in {:?}",
            err.message()
        );
    }
    let err = s
        .list(ListRequest {
            prefix: "no-slash".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = s.get(GetRequest { key: "a//b".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing was written: not the valid half of a rejected batch, not a WAL entry.
    assert!(
        !s.get(GetRequest {
            key: "good/key".into()
        })
        .await?
        .into_inner()
        .found
    );
    assert!(
        !s.get(GetRequest { key: "fine".into() })
            .await?
            .into_inner()
            .found
    );
    let after = sidecar.status().await?;
    assert_eq!(after.last_wal, before.last_wal);
    assert_eq!(after.merkle_root, before.merkle_root);
    let client = etcd.client().await?;
    let data = client
        .kv_client()
        .get(
            "/ferry/east/data/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?;
    assert_eq!(data.count(), 0);
    Ok(())
}

#[tokio::test]
async fn concurrent_writers_are_group_committed() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let sidecar = Sidecar::start(&etcd.endpoint(), SidecarOptions::new("east", "n1")).await?;
    let writers = 32;
    let per_writer = 40;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut s = sidecar.storage();
        tasks.push(tokio::spawn(async move {
            let mut indexes = Vec::new();
            for i in 0..per_writer {
                let r = s
                    .put(PutRequest {
                        key: format!("logical/w{w}/k{i}"),
                        value: vec![w as u8; 64],
                    })
                    .await?;
                indexes.push(r.into_inner().wal_index);
            }
            anyhow::Ok(indexes)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let status = sidecar.status().await?;
    assert_eq!(status.merkle_keys, (writers * per_writer) as u64);
    // Every acknowledged write has an index within the WAL, and writers shared entries.
    assert!(all.iter().all(|i| *i >= 1 && *i <= status.last_wal));
    assert!(
        status.last_wal < (writers * per_writer) as u64,
        "{} writes took {} WAL entries: no group commit happened",
        writers * per_writer,
        status.last_wal
    );
    // The WAL is gap-free and the index matches a full scan.
    let mut admin = sidecar.admin();
    let wal = admin
        .read_wal(ferry_proto::storage::ReadWalRequest {
            after: 0,
            limit: 1000,
        })
        .await?
        .into_inner();
    let indexes: Vec<u64> = wal.entries.iter().map(|e| e.index).collect();
    assert_eq!(indexes, (1..=status.last_wal).collect::<Vec<_>>());
    let ops: usize = wal.entries.iter().map(|e| e.operations.len()).sum();
    assert_eq!(ops, writers * per_writer);
    let check = admin
        .check_merkle(ferry_proto::storage::CheckMerkleRequest {})
        .await?
        .into_inner();
    assert!(check.consistent, "{check:?}");
    Ok(())
}
