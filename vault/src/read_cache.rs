//! Recently read storage values, kept in memory so that a read needs no storage round trip.
//!
//! A request reads several values before it answers (the token, its policies, the mount table,
//! a KV version's metadata and data), each through the sidecar to etcd. The cache keeps them
//! by storage path, as sealed bytes (the barrier opens them as before), and stays correct by
//! forgetting a value the moment anyone may have changed it:
//!
//! ```text
//!   this server's write (put, delete, batch)  ──▶ forget its paths once the sidecar answered
//!                                                 (ok or not: it may have committed)
//!   any writer (the active node, replication) ──▶ sidecar's Changes.Watch ──▶ forget the paths
//!   a write forwarded elsewhere (to the active node or the primary) ──▶ forget everything
//!   a request with X-Vault-Index                ──▶ reads around the cache (`forwarding`)
//!   the watch's progress message (every 250 ms) ──▶ trust the cache until VALIDITY after the
//!                                                   sidecar received it (its stamp)
//!   no progress for VALIDITY, or the watch ended ──▶ reads go around the cache; when it comes
//!                                                   back, everything is forgotten first
//! ```
//!
//! A read that missed fills the cache only if nothing touched its path while it was in flight:
//! it takes a [`Ticket`] (the generation of the path's stripe) before asking the sidecar, and
//! [`ReadCache::fill`] drops the value when the generation moved. So a value read before a
//! write can never be cached after that write was acknowledged.
//!
//! Why it cannot outlive a lost fence: a node cut off from etcd gets no progress message and
//! stops using its cache after [`VALIDITY`] (1 s), while another node can take the write fence
//! only once this node's lease expired (seconds). A node that lost the fence to another sees the
//! new active node's writes through the watch like anyone else's.
//!
//! Bounded: the values and paths held are counted in bytes against the budget
//! (`--read-cache-bytes`, 64 MiB by default); past it, arbitrary entries are dropped until a
//! tenth of the budget is free. Absent values are cached too (a lookup of a missing path is
//! common: a token's absent lease, a KV path never written).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the cache is trusted after the watch's last progress message.
pub const VALIDITY: Duration = Duration::from_secs(1);
/// The default budget, in bytes.
pub const DEFAULT_BUDGET: usize = 64 * 1024 * 1024;
/// What an entry costs beyond its path and value: the map's slot (48 bytes) with the slack of
/// its load factor, and the two allocations' headers and rounding. Measured: a million absent
/// paths counted at 64 bytes each took 1.66× the counted bytes of resident memory; at this
/// figure the count and the resident set agree within about a tenth.
const ENTRY_OVERHEAD: usize = 144;
/// Stripes of generations: a write bumps the generation of its path's stripe.
const STRIPES: usize = 256;

/// A storage read's claim to fill the cache with what it reads.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    stripe: usize,
    generation: u64,
}

struct Entries {
    map: HashMap<String, Option<Vec<u8>>>,
    bytes: usize,
    generations: [u64; STRIPES],
}

/// The cache; shared by every clone of the storage client.
pub struct ReadCache {
    budget: usize,
    hasher: RandomState,
    entries: RwLock<Entries>,
    origin: Instant,
    /// Milliseconds after `origin` until which the cache is trusted; 0 when it is not.
    valid_until_ms: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Hits and misses since start, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
}

impl ReadCache {
    /// A cache of at most `budget` bytes (0: nothing is ever cached). It is not trusted until
    /// the first [`confirm`](Self::confirm).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            hasher: RandomState::new(),
            entries: RwLock::new(Entries {
                map: HashMap::new(),
                bytes: 0,
                generations: [0; STRIPES],
            }),
            origin: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn trusted(&self) -> bool {
        self.budget > 0 && self.now_ms() < self.valid_until_ms.load(Ordering::Acquire)
    }

    fn stripe(&self, path: &str) -> usize {
        (self.hasher.hash_one(path) as usize) % STRIPES
    }

    /// The cached value at `path` (`Some(None)`: cached as absent), or `None` on a miss or
    /// while the cache is not trusted.
    pub fn get(&self, path: &str) -> Option<Option<Vec<u8>>> {
        if !self.trusted() {
            return None;
        }
        let found = self
            .entries
            .read()
            .expect("read cache poisoned")
            .map
            .get(path)
            .cloned();
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Taken before a storage read of `path` whose answer may fill the cache; `None` while the
    /// cache is not trusted (the answer is then not kept).
    pub fn ticket(&self, path: &str) -> Option<Ticket> {
        if !self.trusted() {
            return None;
        }
        let stripe = self.stripe(path);
        let generation = self
            .entries
            .read()
            .expect("read cache poisoned")
            .generations[stripe];
        Some(Ticket { stripe, generation })
    }

    /// Keeps what a read found at `path`, unless the path's stripe changed since its ticket
    /// was taken or the cache stopped being trusted.
    pub fn fill(&self, path: &str, value: Option<&[u8]>, ticket: Ticket) {
        let cost = ENTRY_OVERHEAD + path.len() + value.map_or(0, <[u8]>::len);
        if cost > self.budget / 16 {
            return; // one value may not crowd out the rest
        }
        let mut entries = self.entries.write().expect("read cache poisoned");
        if entries.generations[ticket.stripe] != ticket.generation || !self.trusted() {
            return;
        }
        if let Some(old) = entries
            .map
            .insert(path.to_owned(), value.map(<[u8]>::to_vec))
        {
            entries.bytes -= ENTRY_OVERHEAD + path.len() + old.map_or(0, |v| v.len());
        }
        entries.bytes += cost;
        if entries.bytes > self.budget {
            let target = self.budget - self.budget / 10;
            let doomed: Vec<String> = entries
                .map
                .iter()
                .scan(entries.bytes, |bytes, (path, value)| {
                    (*bytes > target).then(|| {
                        *bytes -= ENTRY_OVERHEAD + path.len() + value.as_ref().map_or(0, Vec::len);
                        path.clone()
                    })
                })
                .collect();
            for path in doomed {
                if let Some(value) = entries.map.remove(&path) {
                    entries.bytes -= ENTRY_OVERHEAD + path.len() + value.map_or(0, |v| v.len());
                }
            }
        }
    }

    /// Forgets `paths`: what was cached, and any read of them in flight.
    pub fn forget<'p>(&self, paths: impl IntoIterator<Item = &'p str>) {
        let mut entries = self.entries.write().expect("read cache poisoned");
        for path in paths {
            let stripe = self.stripe(path);
            entries.generations[stripe] += 1;
            if let Some(value) = entries.map.remove(path) {
                entries.bytes -= ENTRY_OVERHEAD + path.len() + value.map_or(0, |v| v.len());
            }
        }
    }

    /// Forgets everything, including every read in flight.
    pub fn forget_all(&self) {
        let mut entries = self.entries.write().expect("read cache poisoned");
        entries.map.clear();
        entries.bytes = 0;
        for generation in &mut entries.generations {
            *generation += 1;
        }
    }

    /// The watch was live `age` ago (when the sidecar received etcd's progress answer): trust
    /// the cache until [`VALIDITY`] after that. Counting from then, not from now, matters when
    /// messages queued: a progress message read late, behind others, vouches for nothing newer
    /// than its own time, and one older than [`VALIDITY`] for nothing at all. After a lapse (the
    /// watch stalled, or this is a new one) everything is forgotten first.
    pub fn confirm(&self, age: Duration) {
        let Some(left) = VALIDITY.checked_sub(age).filter(|l| !l.is_zero()) else {
            return;
        };
        let now = self.now_ms();
        if now >= self.valid_until_ms.load(Ordering::Acquire) {
            self.forget_all();
        }
        self.valid_until_ms
            .fetch_max(now + left.as_millis() as u64, Ordering::AcqRel);
    }

    /// The watch ended: stop trusting the cache, and forget it.
    pub fn distrust(&self) {
        self.valid_until_ms.store(0, Ordering::Release);
        self.forget_all();
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.entries.read().expect("read cache poisoned");
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: entries.map.len(),
            bytes: entries.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(budget: usize) -> ReadCache {
        let cache = ReadCache::new(budget);
        cache.confirm(Duration::ZERO);
        cache
    }

    fn read(cache: &ReadCache, path: &str, value: Option<&[u8]>) {
        let ticket = cache.ticket(path).expect("trusted");
        cache.fill(path, value, ticket);
    }

    #[test]
    fn nothing_is_served_before_the_first_progress_or_after_the_watch_ended() {
        let cache = ReadCache::new(DEFAULT_BUDGET);
        assert!(cache.ticket("a").is_none());
        cache.confirm(Duration::ZERO);
        read(&cache, "a", Some(b"1"));
        assert_eq!(cache.get("a"), Some(Some(b"1".to_vec())));
        cache.distrust();
        assert_eq!(cache.get("a"), None);
        cache.confirm(Duration::ZERO);
        assert_eq!(cache.get("a"), None, "a new watch starts empty");
    }

    #[test]
    fn a_progress_message_vouches_only_for_validity_after_it_was_received() {
        let cache = ReadCache::new(DEFAULT_BUDGET);
        // Read late, after queueing behind others: too old to vouch for anything.
        cache.confirm(VALIDITY);
        assert!(cache.ticket("a").is_none());
        cache.confirm(VALIDITY + Duration::from_secs(5));
        assert!(cache.ticket("a").is_none());
        // Received 900 ms ago: trusted for the 100 ms left, not for a whole VALIDITY.
        cache.confirm(VALIDITY - Duration::from_millis(100));
        let until = cache.valid_until_ms.load(Ordering::Acquire);
        assert!(until <= cache.now_ms() + 100, "{until}");
        assert!(cache.ticket("a").is_some());
        // An older message read after a newer one does not shorten the trust.
        cache.confirm(Duration::ZERO);
        let fresh = cache.valid_until_ms.load(Ordering::Acquire);
        cache.confirm(VALIDITY - Duration::from_millis(1));
        assert_eq!(cache.valid_until_ms.load(Ordering::Acquire), fresh);
    }

    #[test]
    fn absent_values_are_cached_as_absent() {
        let cache = trusted(DEFAULT_BUDGET);
        read(&cache, "missing", None);
        assert_eq!(cache.get("missing"), Some(None));
        assert_eq!(cache.get("other"), None);
    }

    #[test]
    fn a_read_in_flight_across_a_write_is_not_kept() {
        let cache = trusted(DEFAULT_BUDGET);
        let ticket = cache.ticket("k").expect("trusted");
        // The write is acknowledged while the read (of the old value) is in flight.
        cache.forget(["k"]);
        cache.fill("k", Some(b"old"), ticket);
        assert_eq!(cache.get("k"), None);
        // A read that starts after the write is kept.
        read(&cache, "k", Some(b"new"));
        assert_eq!(cache.get("k"), Some(Some(b"new".to_vec())));
    }

    #[test]
    fn forgetting_everything_drops_reads_in_flight_too() {
        let cache = trusted(DEFAULT_BUDGET);
        read(&cache, "a", Some(b"1"));
        let ticket = cache.ticket("b").expect("trusted");
        cache.forget_all();
        cache.fill("b", Some(b"2"), ticket);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), None);
        assert_eq!(cache.stats().bytes, 0);
    }

    #[test]
    fn an_expired_cache_is_not_served_and_is_emptied_when_trusted_again() {
        let cache = trusted(DEFAULT_BUDGET);
        read(&cache, "a", Some(b"1"));
        cache.valid_until_ms.store(0, Ordering::Release); // VALIDITY passed without progress
        assert_eq!(cache.get("a"), None);
        assert!(cache.ticket("a").is_none());
        cache.confirm(Duration::ZERO);
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn the_budget_bounds_the_bytes_held() {
        let budget = 100 * (ENTRY_OVERHEAD + 8 + 100);
        let cache = trusted(budget);
        for i in 0..1000 {
            read(&cache, &format!("path{i:04}"), Some(&[0u8; 100]));
            assert!(cache.stats().bytes <= budget, "over budget after {i}");
        }
        let stats = cache.stats();
        assert!(stats.entries >= 80 && stats.entries <= 100, "{stats:?}");
        // A value over a sixteenth of the budget is never kept.
        read(&cache, "big", Some(&vec![0u8; budget / 8]));
        assert_eq!(cache.get("big"), None);
        // Nothing is kept with a zero budget.
        let none = trusted(0);
        assert!(none.ticket("a").is_none());
    }

    #[test]
    fn replacing_a_value_keeps_the_byte_count_exact() {
        let cache = trusted(DEFAULT_BUDGET);
        read(&cache, "a", Some(b"12345"));
        read(&cache, "a", Some(b"1"));
        read(&cache, "b", None);
        assert_eq!(cache.stats().bytes, 2 * ENTRY_OVERHEAD + 2 + 1);
        cache.forget(["a", "b", "never-cached"]);
        assert_eq!(cache.stats().bytes, 0);
    }
}
