//! Thin helpers over the etcd client: consistent paged scans and single-key reads.

use std::ops::ControlFlow;

use etcd_client::{Client, GetOptions, KeyValue, KvClient};
use tracing::debug;

use crate::error::StoreError;

/// Largest etcd response the sidecar accepts (a page of big values).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// The size a scan aims its pages at. Large, because etcd 3.4 walks its index over the whole
/// rest of the range for every page: a keys-only scan of a million keys took 7.4 s in pages of
/// 50,000 keys, 3.9 s in pages of 200,000 and 2.8 s in one page.
const TARGET_PAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most keys a scan asks for at once.
const MAX_PAGE_KEYS: i64 = 200_000;
/// The largest key and value one etcd request can carry (etcd's default `--max-request-bytes`
/// is 1.5 MiB, and the sidecar writes nothing larger): what one key of a values scan may cost
/// before anything is known about the range.
const MAX_ENTRY_BYTES: usize = 3 * 512 * 1024;
/// The first page of a scan of values: within [`TARGET_PAGE_BYTES`] even if every value is as
/// large as etcd allows. Later pages are sized from what the earlier ones held.
pub const FIRST_VALUES_PAGE: i64 = (TARGET_PAGE_BYTES / MAX_ENTRY_BYTES) as i64;
const _: () = assert!(FIRST_VALUES_PAGE >= 1);

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
    /// Keys in the first page; later pages are sized from what the earlier ones held.
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

/// Reads a key range page by page at one revision. The first page holds `scan.page` keys; each
/// later one as many as would fill [`TARGET_PAGE_BYTES`] at the size of the keys read so far, so
/// that large ranges take few round trips (etcd 3.4, whose ranges with a limit cost as much as
/// the rest of the range, is not asked too often) and memory stays bounded. etcd cannot limit a
/// page by bytes, so a page can still hold far larger values than the ones before it: when the
/// response is larger than the client accepts ([`MAX_RESPONSE_BYTES`]), the same page is asked
/// for again with half as many keys, down to one.
pub struct Pages {
    from: Vec<u8>,
    end: Vec<u8>,
    scan: Scan,
    /// Keys still wanted (see [`Pages::up_to`]).
    left: i64,
    done: bool,
}

impl Pages {
    pub fn new(start: Vec<u8>, end: Vec<u8>, scan: Scan) -> Self {
        Self {
            from: start,
            end,
            scan,
            left: i64::MAX,
            done: false,
        }
    }

    /// Reads at most `keys` keys in all: no page asks etcd for more keys than are still wanted.
    /// (Without it, a page sized for 16 MiB of small values can hold tens of thousands of keys
    /// that a caller wanting a few hundred would throw away.)
    pub fn up_to(mut self, keys: usize) -> Self {
        self.left = i64::try_from(keys).unwrap_or(i64::MAX);
        self
    }

    /// The revision read (pinned by the first page when the scan asked for 0).
    pub fn revision(&self) -> i64 {
        self.scan.revision
    }

    /// The next page, or `None` at the end of the range.
    pub async fn next(&mut self, kv: &mut KvClient) -> Result<Option<Vec<KeyValue>>, StoreError> {
        if self.done || self.left == 0 {
            return Ok(None);
        }
        let mut resp = loop {
            let limit = self.scan.page.min(self.left);
            let mut opts = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(limit)
                .with_revision(self.scan.revision);
            if self.scan.keys_only {
                opts = opts.with_keys_only();
            }
            match kv.get(self.from.clone(), Some(opts)).await {
                Ok(resp) => break resp,
                Err(e) if limit > 1 && response_too_large(&e) => {
                    debug!(keys = limit, "a scan page was too large; halving it");
                    self.scan.page = limit / 2;
                }
                Err(e) => return Err(e.into()),
            }
        };
        if self.scan.revision == 0 {
            self.scan.revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else {
            self.done = true;
            return Ok(None);
        };
        let bytes: usize = kvs
            .iter()
            .map(|kv| kv.key().len() + kv.value().len() + 32)
            .sum();
        self.scan.page = next_page(bytes, kvs.len());
        self.left = self.left.saturating_sub(kvs.len() as i64);
        self.from = last.key().to_vec();
        self.from.push(0);
        self.done = !more;
        Ok(Some(kvs))
    }
}

/// Keys for the next page after one of `keys` keys and `bytes` bytes.
fn next_page(bytes: usize, keys: usize) -> i64 {
    let per_key = (bytes / keys.max(1)).max(1);
    ((TARGET_PAGE_BYTES / per_key) as i64).clamp(1, MAX_PAGE_KEYS)
}

/// Whether `e` is the client refusing a response over its size limit (tonic says so with
/// `OutOfRange`, which etcd also uses for compacted and future revisions: the message decides).
fn response_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large"))
}

/// Calls `each` on every key in `[start, end)` in order, until it breaks; see [`Pages`].
/// Returns the revision read.
pub async fn scan(
    kv: &mut KvClient,
    start: Vec<u8>,
    end: Vec<u8>,
    scan: Scan,
    mut each: impl FnMut(KeyValue) -> Result<ControlFlow<()>, StoreError>,
) -> Result<i64, StoreError> {
    let mut pages = Pages::new(start, end, scan);
    while let Some(page) = pages.next(kv).await? {
        for kv in page {
            if each(kv)?.is_break() {
                return Ok(pages.revision());
            }
        }
    }
    Ok(pages.revision())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_sized_from_what_was_read() {
        // Keys of 50 bytes grow to the most keys a page may hold.
        assert_eq!(next_page(50 * 1000, 1000), MAX_PAGE_KEYS);
        // Values of 512 KiB shrink the page to what fits the target.
        let big = 512 * 1024;
        assert_eq!(next_page(big * 10, 10), (TARGET_PAGE_BYTES / big) as i64);
        // Never below one key, whatever was read.
        assert_eq!(next_page(usize::MAX / 2, 1), 1);
    }

    #[test]
    fn only_an_oversized_response_counts_as_too_large() {
        let too_large = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        ));
        assert!(response_too_large(&too_large));
        let compacted = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(!response_too_large(&compacted));
    }
}
