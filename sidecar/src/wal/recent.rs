//! The most recent WAL entries, encoded, in memory: WAL shippers serve a streaming secondary
//! from here instead of reading each new entry back from etcd.
//!
//! The committer adds each committed entry in index order; a gap (after a failed transaction
//! and a resync) empties the cache, which refills from the next commit. Bounded by bytes: the
//! oldest entries go first. A reader asking for entries the cache no longer (or not yet) holds
//! gets `None` and reads etcd.

use std::collections::VecDeque;
use std::sync::Arc;

/// Default bound on the bytes of entries kept.
pub const DEFAULT_RECENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug)]
pub struct RecentEntries {
    entries: VecDeque<(u64, Arc<[u8]>)>,
    bytes: usize,
    max_bytes: usize,
}

impl RecentEntries {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds entry `index`; a non-consecutive index empties the cache first.
    pub fn push(&mut self, index: u64, encoded: Arc<[u8]>) {
        if self
            .entries
            .back()
            .is_some_and(|(last, _)| last + 1 != index)
        {
            self.clear();
        }
        self.bytes += encoded.len();
        self.entries.push_back((index, encoded));
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let (_, old) = self.entries.pop_front().expect("more than one entry");
            self.bytes -= old.len();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Up to `limit` entries (and about `max_bytes`) after `after`, if the cache holds entry
    /// `after + 1`; an empty list when `after` is the last entry cached.
    pub fn after(&self, after: u64, limit: usize, max_bytes: usize) -> Option<Vec<Arc<[u8]>>> {
        let (first, _) = self.entries.front()?;
        let (last, _) = self.entries.back()?;
        if after + 1 < *first || after > *last {
            return None;
        }
        let mut bytes = 0;
        let out = self
            .entries
            .iter()
            .skip((after + 1 - first) as usize)
            .take(limit)
            .take_while(|(_, e)| {
                let take = bytes < max_bytes;
                bytes += e.len();
                take
            })
            .map(|(_, e)| e.clone())
            .collect();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Arc<[u8]> {
        Arc::from(vec![0u8; n])
    }

    #[test]
    fn serves_what_it_holds_and_nothing_else() {
        let mut cache = RecentEntries::new(100);
        for i in 1..=5 {
            cache.push(i, entry(10));
        }
        assert_eq!(cache.after(0, 10, 1000).map(|v| v.len()), Some(5));
        assert_eq!(cache.after(3, 10, 1000).map(|v| v.len()), Some(2));
        assert_eq!(cache.after(5, 10, 1000).map(|v| v.len()), Some(0));
        assert_eq!(cache.after(6, 10, 1000), None, "ahead of the cache");
        assert_eq!(cache.after(2, 1, 1000).map(|v| v.len()), Some(1));
        assert_eq!(cache.after(0, 10, 15).map(|v| v.len()), Some(2));
    }

    #[test]
    fn bounded_by_bytes_and_emptied_by_a_gap() {
        let mut cache = RecentEntries::new(30);
        for i in 1..=5 {
            cache.push(i, entry(10));
        }
        assert_eq!(cache.after(1, 10, 1000), None, "entry 2 was evicted");
        assert_eq!(cache.after(2, 10, 1000).map(|v| v.len()), Some(3));
        cache.push(9, entry(10));
        assert_eq!(cache.after(4, 10, 1000), None);
        assert_eq!(cache.after(8, 10, 1000).map(|v| v.len()), Some(1));
    }
}
