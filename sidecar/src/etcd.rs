//! Thin helpers over the etcd client: consistent paged scans and single-key reads.

use std::ops::ControlFlow;

use etcd_client::{Client, GetOptions, KeyValue, KvClient};

use crate::error::StoreError;

/// Largest etcd response the sidecar accepts (a page of big values).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// The size a scan aims its pages at.
const TARGET_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most keys a scan asks for at once.
const MAX_PAGE_KEYS: i64 = 50_000;

/// A KV client that accepts large responses.
pub fn kv(client: &Client) -> KvClient {
    client
        .kv_client()
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// Options for [`scan`].
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    /// Read at this revision; 0 reads the newest and pins later pages to it.
    pub revision: i64,
    pub keys_only: bool,
    /// Keys per round trip.
    pub page: i64,
}

impl Default for Scan {
    fn default() -> Self {
        Self {
            revision: 0,
            keys_only: false,
            page: 1000,
        }
    }
}

/// Reads every key in `[start, end)` in key order, page by page, all at one revision, calling
/// `each` on each until it breaks. Returns the revision read.
///
/// Pages grow towards [`TARGET_PAGE_BYTES`] once the first shows how big entries are: etcd 3.4
/// walks its index over the whole rest of the range for every limited request, so a scan of `N`
/// keys in pages of `P` costs `N²/2P`, and small pages make a million-key scan minutes long.
pub async fn scan(
    kv: &mut KvClient,
    start: Vec<u8>,
    end: Vec<u8>,
    scan: Scan,
    mut each: impl FnMut(KeyValue) -> Result<ControlFlow<()>, StoreError>,
) -> Result<i64, StoreError> {
    let mut from = start;
    let mut revision = scan.revision;
    let mut page = scan.page;
    loop {
        let mut opts = GetOptions::new()
            .with_range(end.clone())
            .with_limit(page)
            .with_revision(revision);
        if scan.keys_only {
            opts = opts.with_keys_only();
        }
        let mut resp = kv.get(from.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else {
            return Ok(revision);
        };
        let bytes: usize = kvs
            .iter()
            .map(|kv| kv.key().len() + kv.value().len() + 32)
            .sum();
        let per_key = (bytes / kvs.len()).max(1);
        page = ((TARGET_PAGE_BYTES / per_key) as i64).clamp(scan.page, MAX_PAGE_KEYS);
        from = last.key().to_vec();
        from.push(0);
        for kv in kvs {
            if each(kv)?.is_break() {
                return Ok(revision);
            }
        }
        if !more {
            return Ok(revision);
        }
    }
}

/// Reads one key's value.
pub async fn get(kv: &mut KvClient, key: &str) -> Result<Option<KeyValue>, StoreError> {
    let mut resp = kv.get(key, None).await?;
    Ok(resp.take_kvs().into_iter().next())
}

/// The first or last key in `[start, end)` with its value.
pub async fn edge(
    kv: &mut KvClient,
    start: &str,
    end: Vec<u8>,
    last: bool,
) -> Result<Option<KeyValue>, StoreError> {
    let mut opts = GetOptions::new().with_range(end).with_limit(1);
    if last {
        opts = opts.with_sort(
            etcd_client::SortTarget::Key,
            etcd_client::SortOrder::Descend,
        );
    }
    let mut resp = kv.get(start, Some(opts)).await?;
    Ok(resp.take_kvs().into_iter().next())
}
