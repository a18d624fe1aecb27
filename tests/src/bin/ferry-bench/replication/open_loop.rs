//! An open-loop writer and a watch on the destination: sends are due on a fixed timeline
//! whatever happened to the sends before them, each in its own task (at most [`MAX_IN_FLIGHT`]
//! at once: past that, sends start late and their lateness is measured), and every key's put
//! event at the destination is timed against its acknowledgement at the source.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use etcd_client::{EventType, WatchOptions};
use ferry_proto::storage::PutRequest;
use ferry_proto::storage::storage_client::StorageClient;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::common::{nearest_rank, value_for};

/// Sends in flight at most; beyond this the driver falls behind its timeline (and says so).
const MAX_IN_FLIGHT: usize = 512;

/// Where a system's writes go: the sidecar's storage API, or etcd itself.
#[derive(Clone)]
pub enum Source {
    Ferry(StorageClient<Channel>),
    Etcd(Box<etcd_client::KvClient>),
}

impl Source {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        match self {
            Source::Ferry(s) => s
                .put(PutRequest { key, value })
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Source::Etcd(kv) => kv
                .put(key, value, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The fixed timeline of an open-loop driver: send `n` is due `n / rate` seconds after the
/// start, whatever happened to the sends before it.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rate: u64,
}

impl Schedule {
    /// When send `n` is due, after the start.
    pub fn offset(&self, n: u64) -> Duration {
        let (secs, rest) = (n / self.rate, n % self.rate);
        // rest < rate, so this fits; nanoseconds are rounded down.
        let nanos = (u128::from(rest) * 1_000_000_000 / u128::from(self.rate)) as u32;
        Duration::new(secs, nanos)
    }

    /// Sends due in `seconds`.
    pub fn count(&self, seconds: f64) -> u64 {
        (self.rate as f64 * seconds).round() as u64
    }
}

/// The `p`th percentile (0..=1) of `sorted` by nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    nearest_rank(sorted, p).unwrap_or(f64::NAN)
}

/// Per key: when its send was due and started, when it was acknowledged, when it arrived.
#[derive(Default)]
pub struct Tracker {
    due: Vec<Option<Instant>>,
    started: Vec<Option<Instant>>,
    acked: Vec<Option<Instant>>,
    applied: Vec<Option<Instant>>,
    pub arrived: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub type Shared = Arc<Mutex<Tracker>>;

impl Tracker {
    pub fn shared(n: u64) -> Shared {
        let n = n as usize;
        Arc::new(Mutex::new(Self {
            due: vec![None; n],
            started: vec![None; n],
            acked: vec![None; n],
            applied: vec![None; n],
            ..Self::default()
        }))
    }

    pub fn acked(&self) -> u64 {
        self.acked.iter().filter(|a| a.is_some()).count() as u64
    }
}

/// The raw measurements of one measured window (or several, pooled).
#[derive(Default)]
pub struct Samples {
    /// Arrival − acknowledgement per key, in milliseconds.
    lags: Vec<f64>,
    /// Send started − send due per key, in milliseconds.
    late: Vec<f64>,
    /// Seconds from the window's first due send to its last acknowledgement, summed.
    span_s: f64,
    pub errors: u64,
    /// Keys acknowledged but not at the destination by the cutoff (their lag in `lags` is the
    /// cutoff − acknowledgement, a lower bound).
    pub missing: u64,
}

impl Samples {
    /// Adds another window's measurements.
    pub fn pool(&mut self, other: Samples) {
        self.lags.extend(other.lags);
        self.late.extend(other.late);
        self.span_s += other.span_s;
        self.errors += other.errors;
        self.missing += other.missing;
    }

    /// The percentiles and rates of what was pooled.
    pub fn lag(&self) -> Lag {
        let mut lags = self.lags.clone();
        let mut late = self.late.clone();
        lags.sort_by(f64::total_cmp);
        late.sort_by(f64::total_cmp);
        Lag {
            p50_ms: percentile(&lags, 0.50),
            p99_ms: percentile(&lags, 0.99),
            max_ms: lags.last().copied().unwrap_or(f64::NAN),
            samples: lags.len(),
            achieved_rate: lags.len() as f64 / self.span_s,
            late_p99_ms: percentile(&late, 0.99),
            late_max_ms: late.last().copied().unwrap_or(f64::NAN),
            errors: self.errors,
            missing: self.missing,
        }
    }
}

/// What a case measured.
pub struct Lag {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
    pub achieved_rate: f64,
    pub late_p99_ms: f64,
    pub late_max_ms: f64,
    pub errors: u64,
    /// Keys acknowledged that had not arrived by the cutoff: with any, the percentiles and the
    /// maximum are lower bounds.
    pub missing: u64,
}

/// Watches `prefix` on `destination` (the watch is created before this returns) and records
/// the first put event of each key `<prefix><n>` in `tracker`.
pub async fn watch_arrivals(
    mut destination: etcd_client::Client,
    prefix: String,
    tracker: Shared,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let mut watch = destination
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .context("failed to watch the destination")?;
    let created = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .context("the destination's watch was not created within 10s")??;
    ensure!(
        created.as_ref().is_some_and(|r| r.created()),
        "unexpected first watch response: {created:?}"
    );
    Ok(tokio::spawn(async move {
        while let Some(response) = watch.message().await? {
            let now = Instant::now();
            let mut t = tracker.lock().expect("tracker lock");
            for event in response.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                let Some(n) = event
                    .kv()
                    .and_then(|kv| kv.key_str().ok())
                    .and_then(|k| k.strip_prefix(prefix.as_str()))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                if let Some(slot) = t.applied.get_mut(n)
                    && slot.is_none()
                {
                    *slot = Some(now);
                    t.arrived += 1;
                }
            }
        }
        anyhow::Ok(())
    }))
}

/// Sends `total` puts of `<prefix><n>` on `schedule`'s timeline, each from its own task (at
/// most [`MAX_IN_FLIGHT`] at once), and waits for their acknowledgements. Returns the start.
pub async fn drive(
    source: &Source,
    prefix: &str,
    schedule: Schedule,
    total: u64,
    tracker: &Shared,
) -> anyhow::Result<Instant> {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now() + Duration::from_millis(20);
    for n in 0..total {
        let due = start + schedule.offset(n);
        tokio::time::sleep_until(due.into()).await;
        let permit = slots.clone().acquire_owned().await?;
        let mut source = source.clone();
        let key = format!("{prefix}{n}");
        let value = value_for(n);
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = source.put(key, value).await;
            let acked = Instant::now();
            let mut t = tracker.lock().expect("tracker lock");
            let i = n as usize;
            t.due[i] = Some(due);
            t.started[i] = Some(sent);
            match result {
                Ok(()) => t.acked[i] = Some(acked),
                Err(e) => {
                    t.errors += 1;
                    t.first_error.get_or_insert(e);
                }
            }
            drop(permit);
        });
    }
    // Every send is done once all the slots are free again; a put has 60 s at most.
    let _all = tokio::time::timeout(
        Duration::from_secs(60),
        slots.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await
    .context("puts still unanswered 60s after the last was sent")??;
    Ok(start)
}

/// Lag (arrival − acknowledgement, at least 0) and lateness of the sends `warm..total`, which
/// were due from `started + schedule.offset(warm)` on. A key acknowledged but not arrived by
/// `cutoff` counts as missing, with `cutoff` − acknowledgement as its lag.
pub fn summarize(
    t: &Tracker,
    schedule: Schedule,
    started: Instant,
    warm: u64,
    total: u64,
    cutoff: Instant,
) -> Samples {
    let mut samples = Samples {
        errors: t.errors,
        ..Samples::default()
    };
    let mut last_ack = None::<Instant>;
    for n in warm as usize..total as usize {
        if let Some(ack) = t.acked[n] {
            let applied = t.applied[n].unwrap_or_else(|| {
                samples.missing += 1;
                cutoff
            });
            samples
                .lags
                .push(applied.saturating_duration_since(ack).as_secs_f64() * 1000.0);
            last_ack = Some(last_ack.map_or(ack, |l| l.max(ack)));
        }
        if let (Some(due), Some(s)) = (t.due[n], t.started[n]) {
            samples
                .late
                .push(s.saturating_duration_since(due).as_secs_f64() * 1000.0);
        }
    }
    let window_start = started + schedule.offset(warm);
    samples.span_s = last_ack.map_or(f64::NAN, |l| (l - window_start).as_secs_f64());
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_fixed_timeline() {
        let s = Schedule { rate: 2000 };
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(500));
        assert_eq!(s.offset(2000), Duration::from_secs(1));
        assert_eq!(s.offset(2001), Duration::from_micros(1_000_500));
        assert_eq!(s.count(5.0), 10_000);
        assert_eq!(s.count(0.5), 1000);
        let s = Schedule { rate: 3 };
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3), Duration::from_secs(1));
        // Large indexes do not overflow.
        let s = Schedule { rate: 1 };
        assert_eq!(s.offset(1 << 40), Duration::from_secs(1 << 40));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.5), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn lag_counts_the_measured_window_only_and_never_goes_negative() {
        let tracker = Tracker::shared(4);
        let mut t = tracker.lock().unwrap();
        let start = Instant::now();
        let ms = Duration::from_millis;
        let schedule = Schedule { rate: 1000 };
        for n in 0..4u64 {
            let due = start + schedule.offset(n);
            t.due[n as usize] = Some(due);
            t.started[n as usize] = Some(due + ms(1));
            t.acked[n as usize] = Some(due + ms(2));
        }
        // Warm-up key 0 arrives late but is not measured; key 2 arrives before its ack.
        t.applied[0] = Some(start + ms(500));
        t.applied[1] = Some(start + schedule.offset(1) + ms(5));
        t.applied[2] = Some(start + schedule.offset(2) + ms(1));
        t.applied[3] = Some(start + schedule.offset(3) + ms(12));
        let cutoff = start + ms(1000);
        let lag = summarize(&t, schedule, start, 1, 4, cutoff).lag();
        assert_eq!(lag.samples, 3);
        assert_eq!(lag.missing, 0);
        assert_eq!(lag.p50_ms, 3.0);
        assert_eq!(lag.max_ms, 10.0);
        assert_eq!(lag.p99_ms, 10.0);
        assert_eq!(lag.late_max_ms, 1.0);
        // Three acks over 4 ms (from when send 1 was due to the last ack).
        assert!(
            (lag.achieved_rate - 750.0).abs() < 1e-6,
            "{}",
            lag.achieved_rate
        );

        // Two windows pooled: their samples and spans add up.
        let mut pooled = summarize(&t, schedule, start, 1, 4, cutoff);
        pooled.pool(summarize(&t, schedule, start, 1, 4, cutoff));
        let both = pooled.lag();
        assert_eq!(both.samples, 6);
        assert_eq!(both.max_ms, 10.0);
        assert!((both.achieved_rate - 750.0).abs() < 1e-6);
    }

    #[test]
    fn a_key_missing_at_the_cutoff_counts_with_a_lower_bound() {
        let tracker = Tracker::shared(3);
        let mut t = tracker.lock().unwrap();
        let start = Instant::now();
        let ms = Duration::from_millis;
        let schedule = Schedule { rate: 1000 };
        for n in 0..3u64 {
            let due = start + schedule.offset(n);
            t.due[n as usize] = Some(due);
            t.started[n as usize] = Some(due);
            t.acked[n as usize] = Some(due + ms(1));
        }
        t.applied[0] = Some(start + ms(3));
        t.applied[1] = Some(start + schedule.offset(1) + ms(4));
        // Key 2 never arrives: its lag is at least the cutoff − its ack, 100 ms.
        let cutoff = start + schedule.offset(2) + ms(101);
        let lag = summarize(&t, schedule, start, 0, 3, cutoff).lag();
        assert_eq!(lag.samples, 3);
        assert_eq!(lag.missing, 1);
        assert_eq!(lag.max_ms, 100.0);
        assert_eq!(lag.p50_ms, 3.0);
        // Unacknowledged keys are neither samples nor missing.
        t.acked[2] = None;
        let lag = summarize(&t, schedule, start, 0, 3, cutoff).lag();
        assert_eq!((lag.samples, lag.missing), (2, 0));
    }
}
