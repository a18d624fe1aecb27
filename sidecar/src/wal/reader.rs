//! Reading the WAL back: for shipping to secondaries, and for redo after a crash.

use crate::core::Core;
use crate::error::StoreError;
use crate::etcd::{Pages, Scan};
use crate::keyspace::{Keyspace, prefix_end};
use crate::wal::record::WalEntry;

/// About the most bytes of entries one internal read (redo, catch-up) holds.
pub const MAX_READ_BYTES: usize = 8 * 1024 * 1024;
/// About the most bytes of entries one read for shipping returns: with the one entry that may
/// cross it, a response stays under gRPC's default 4 MiB message limit.
pub const MAX_SHIP_BYTES: usize = 2 * 1024 * 1024;

/// The answer to "entries after index i".
#[derive(Debug, PartialEq, Eq)]
pub enum WalRead {
    /// The entries after `i`, in order, gap-free (possibly none when `i` is the last index).
    Entries(Vec<WalEntry>),
    /// Entries after `i` were garbage collected: the oldest retained index is `first`.
    NotRetained { first: u64 },
}

/// Up to `limit` entries after `after`, or [`WalRead::NotRetained`] when the next one is gone.
pub async fn read_after(core: &Core, after: u64, limit: usize) -> Result<WalRead, StoreError> {
    let pos = core.wal();
    if after >= pos.last {
        return Ok(WalRead::Entries(Vec::new()));
    }
    if after + 1 < pos.first {
        return Ok(WalRead::NotRetained { first: pos.first });
    }
    let entries = read_range(
        &core.keyspace,
        &mut core.kv(),
        after + 1,
        limit,
        MAX_SHIP_BYTES,
    )
    .await?;
    // The GC may have trimmed between our check and the read.
    match entries.first() {
        Some(e) if e.index == after + 1 => Ok(WalRead::Entries(entries)),
        _ => Ok(WalRead::NotRetained {
            first: core.wal().first,
        }),
    }
}

/// Decoded entries from index `from` on, at most `limit` of them and about `max_bytes`.
/// Fails on a gap or an entry that does not decode.
pub async fn read_range(
    keyspace: &Keyspace,
    kv: &mut etcd_client::KvClient,
    from: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<WalEntry>, StoreError> {
    let mut entries: Vec<WalEntry> = Vec::new();
    let mut bytes = 0;
    let mut pages = Pages::new(
        keyspace.wal(from).into_bytes(),
        prefix_end(&keyspace.wal_prefix()),
        Scan {
            page: limit.clamp(1, 256) as i64,
            ..Scan::default()
        },
    )
    .up_to(limit);
    'pages: while let Some(page) = pages.next(kv).await? {
        for kv in page {
            if bytes >= max_bytes {
                break 'pages;
            }
            bytes += kv.value().len();
            entries.push(decode_at(keyspace, kv.key(), kv.value())?);
        }
    }
    for (i, e) in entries.iter().enumerate() {
        if e.index != from + i as u64 {
            return Err(StoreError::Corrupt(format!(
                "WAL gap: expected index {}, found {}",
                from + i as u64,
                e.index
            )));
        }
    }
    Ok(entries)
}

/// Calls `each` on every entry from `from` through `to` in order, reading a page at a time, and
/// returns how many there were. With `to == u64::MAX` it stops at the end of the WAL; otherwise a
/// missing entry up to `to` is an error.
pub async fn for_each_entry(
    keyspace: &Keyspace,
    kv: &mut etcd_client::KvClient,
    from: u64,
    to: u64,
    mut each: impl FnMut(WalEntry),
) -> Result<u64, StoreError> {
    let mut next = from;
    while next <= to {
        let entries = read_range(keyspace, kv, next, 256, MAX_READ_BYTES).await?;
        if entries.is_empty() {
            if to == u64::MAX {
                break;
            }
            return Err(StoreError::Corrupt(format!("WAL entry {next} is missing")));
        }
        for entry in entries.into_iter().take_while(|e| e.index <= to) {
            next = entry.index + 1;
            each(entry);
        }
    }
    Ok(next - from)
}

/// Decodes the entry stored at `key`, checking that it holds the index its key names.
pub fn decode_at(keyspace: &Keyspace, key: &[u8], value: &[u8]) -> Result<WalEntry, StoreError> {
    let at = keyspace.wal_index_of(key);
    let entry = WalEntry::decode(value).map_err(|e| {
        StoreError::Corrupt(format!("failed to decode WAL entry at index {at:?}: {e}"))
    })?;
    if at != Some(entry.index) {
        return Err(StoreError::Corrupt(format!(
            "WAL entry with index {} stored under key for index {at:?}",
            entry.index
        )));
    }
    Ok(entry)
}
