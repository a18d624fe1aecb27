//! Noticing that this process was frozen, so that it checks for a newer primary before it
//! acknowledges another replicated write.
//!
//! A primary frozen for a few seconds (SIGSTOP, a VM pause, a swap storm) keeps a write fence
//! whose lease outlived the freeze, yet a secondary may have been force-promoted meanwhile and
//! taken writes. On waking, the writes that queued up in its sockets would commit under the
//! still-valid fence at the old epoch, after the new primary's first write. So a ticker notes
//! the time every [`TICK`]; a gap longer than [`STALL_THRESHOLD`] marks the node *suspect*, and
//! the committer refuses replicated client writes (retryably, `Unavailable`) until the
//! replication check (`Replication::check_superseded`, run by the `reopen` task) clears it.
//! The committer also counts a tick overdue by the threshold as suspect, since after a freeze
//! it may run before the ticker does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::warn;

/// How often the ticker notes the time.
pub const TICK: Duration = Duration::from_millis(100);
/// A gap between ticks longer than this is a freeze (scheduling delays on a busy machine stay
/// well below it).
pub const STALL_THRESHOLD: Duration = Duration::from_secs(2);

/// The ticker's state, shared with the committer and the checker.
#[derive(Debug)]
pub struct StallWatch {
    origin: Instant,
    /// Milliseconds since `origin` at the last tick; 0 until the ticker runs.
    last_tick_ms: AtomicU64,
    suspect: AtomicBool,
    stalled: Notify,
}

impl Default for StallWatch {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            suspect: AtomicBool::new(false),
            stalled: Notify::new(),
        }
    }
}

impl StallWatch {
    fn now_ms(&self) -> u64 {
        // At least 1, so that 0 keeps meaning "not started".
        (self.origin.elapsed().as_millis() as u64).max(1)
    }

    /// Notes a tick at `now_ms`; returns the length of the freeze that just ended, if one did.
    fn tick_at(&self, now_ms: u64) -> Option<Duration> {
        let last = self.last_tick_ms.load(Ordering::SeqCst);
        let gap = Duration::from_millis(now_ms.saturating_sub(last));
        let stalled = last != 0 && gap > STALL_THRESHOLD;
        if stalled {
            // Before the new tick is visible: the committer never sees a fresh tick and no
            // suspicion after a freeze.
            self.suspect.store(true, Ordering::SeqCst);
            self.stalled.notify_one();
        }
        self.last_tick_ms.store(now_ms, Ordering::SeqCst);
        stalled.then_some(gap)
    }

    fn suspected_at(&self, now_ms: u64) -> bool {
        let last = self.last_tick_ms.load(Ordering::SeqCst);
        self.suspect.load(Ordering::SeqCst)
            || (last != 0 && now_ms.saturating_sub(last) > STALL_THRESHOLD.as_millis() as u64)
    }

    /// Whether replicated writes must wait for the check: a freeze ended (or is just ending)
    /// and the check has not run since.
    pub fn suspected(&self) -> bool {
        self.suspected_at(self.now_ms())
    }

    pub fn is_marked(&self) -> bool {
        self.suspect.load(Ordering::SeqCst)
    }

    /// The check ran: replicated writes may go ahead (if the role still allows them).
    pub fn clear(&self) {
        self.suspect.store(false, Ordering::SeqCst);
    }

    /// Resolves when a freeze has been noticed.
    pub async fn stalled(&self) {
        self.stalled.notified().await;
    }

    /// Ticks until `shutdown`.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        loop {
            if let Some(gap) = self.tick_at(self.now_ms()) {
                warn!(
                    frozen_ms = gap.as_millis() as u64,
                    "this process was frozen; replicated writes wait for a check for a newer primary"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_over_the_threshold_is_suspect_until_cleared() {
        let watch = StallWatch::default();
        assert!(!watch.suspected_at(10_000), "not started: never suspect");
        assert_eq!(watch.tick_at(1_000), None);
        assert_eq!(watch.tick_at(1_100), None);
        assert!(!watch.suspected_at(1_150));
        // Woken from a freeze: the committer may look before the ticker runs.
        assert!(watch.suspected_at(5_000));
        assert_eq!(watch.tick_at(5_000), Some(Duration::from_millis(3_900)));
        assert!(watch.suspected_at(5_001), "marked once the ticker saw it");
        watch.clear();
        assert!(!watch.suspected_at(5_050));
        assert_eq!(watch.tick_at(5_100), None);
        assert!(!watch.suspected_at(5_200));
    }
}
