//! Paged scans of a real etcd (`ferry_sidecar::etcd::Pages`): every scan of the sidecar (a new
//! secondary's copy, reindex, merkle-sync, List) reads through them.

use ferry_sidecar::etcd::{Pages, Scan};
use ferry_tests::etcd::EtcdServer;

/// Values of this size, against a client that accepts responses of at most [`CLIENT_LIMIT`].
const VALUE_BYTES: usize = 256 * 1024;
const CLIENT_LIMIT: usize = 1024 * 1024;
const KEYS: usize = 24;

fn key(i: usize) -> String {
    format!("/scan/k{i:03}")
}

/// Pages over every key [`key`] names.
fn over_keys(scan: Scan) -> Pages {
    Pages::new(b"/scan/".to_vec(), b"/scan0".to_vec(), scan)
}

/// A page of large values over the client's response limit is asked for again with fewer keys:
/// the scan returns every key once, in order, instead of failing for good (which would leave a
/// keyspace of large values impossible to copy to a secondary or to reindex).
#[tokio::test]
async fn a_page_over_the_response_limit_is_split_not_failed() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let client = etcd.client().await?;
    let mut kv = client.kv_client();
    for i in 0..KEYS {
        kv.put(key(i), vec![i as u8; VALUE_BYTES], None).await?;
    }
    // A first page of 16 keys is 4 MiB; later pages are sized for 16 MiB: both over the limit.
    let mut small = client.kv_client().max_decoding_message_size(CLIENT_LIMIT);
    let mut pages = over_keys(Scan {
        page: 16,
        ..Scan::default()
    });
    let mut seen = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next(&mut small).await? {
        page_count += 1;
        for kv in page {
            assert_eq!(
                kv.value().len(),
                VALUE_BYTES,
                "{} came back cut",
                kv.key_str()?
            );
            seen.push(kv.key_str()?.to_owned());
        }
    }
    let expected: Vec<String> = (0..KEYS).map(key).collect();
    assert_eq!(seen, expected, "every key once, in order");
    assert!(
        page_count >= KEYS / 3,
        "{page_count} pages: each must hold at most 3 values of 256 KiB to fit in 1 MiB"
    );
    Ok(())
}

/// Only a response over the size limit is retried: etcd's own out-of-range answer (a compacted
/// revision) still fails the scan, with etcd's reason.
#[tokio::test]
async fn a_compacted_revision_still_fails_the_scan() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let client = etcd.client().await?;
    let mut kv = client.kv_client();
    let first = kv.put("/scan/a", "1", None).await?;
    let old = first.header().expect("a header").revision();
    let last = kv.put("/scan/a", "2", None).await?;
    kv.compact(last.header().expect("a header").revision(), None)
        .await?;
    let mut pages = over_keys(Scan {
        revision: old,
        page: 16,
        ..Scan::default()
    });
    let e = pages
        .next(&mut kv)
        .await
        .expect_err("a scan at a compacted revision must fail");
    assert!(
        e.to_string().contains("compacted"),
        "the error names the cause: {e}"
    );
    Ok(())
}

/// A scan that wants a few keys asks etcd for no more: after a first page of small values, the
/// next would otherwise be sized for 16 MiB (tens of thousands of keys) and mostly thrown away,
/// which is how a secondary catching up used to read its primary's WAL.
#[tokio::test]
async fn a_scan_up_to_n_keys_reads_no_more_than_n() -> anyhow::Result<()> {
    let etcd = EtcdServer::start()?;
    let client = etcd.client().await?;
    let mut kv = client.kv_client();
    for i in 0..500 {
        kv.put(key(i), "v", None).await?;
    }
    let mut pages = over_keys(Scan {
        page: 100,
        ..Scan::default()
    })
    .up_to(250);
    let mut sizes = Vec::new();
    while let Some(page) = pages.next(&mut kv).await? {
        sizes.push(page.len());
    }
    assert_eq!(sizes, [100, 150], "pages read for 250 keys");
    Ok(())
}
