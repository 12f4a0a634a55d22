//! Collecting outcomes: HDR latency histograms plus failure tallies.
//!
//! An HDR histogram keeps every percentile accurate to 3 significant digits in
//! fixed memory (about 180 KB each) however many requests are recorded, which a
//! sorted vector of samples would not at 20,000 req/s for ten minutes. One
//! recorder is shared by all workers of a phase (behind a mutex held only for
//! the few nanoseconds of a record), so memory does not grow with
//! `--concurrency`. [`Live`] holds the few
//! atomic counters the progress bar reads while the run is going.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::verify::{ErrorKind, Failure};

/// Highest latency the histogram tracks exactly (one hour, in microseconds);
/// anything slower is recorded as this value.
const MAX_TRACKABLE_US: u64 = 3_600_000_000;
/// How many failure details are kept for the report.
pub const MAX_SAMPLES: usize = 5;

/// Counters shared with the progress bar; updated with relaxed atomics so they
/// cost next to nothing on the hot path.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests sent (finished or still waiting for their reply).
    pub started: AtomicU64,
    /// Requests finished (success or failure).
    pub completed: AtomicU64,
    /// Requests failed.
    pub failed: AtomicU64,
    /// Workers currently allowed to send (profiles change this over time).
    pub active_users: AtomicUsize,
    /// Set once no further request will be sent; from then on the phase only
    /// waits for the replies still outstanding, which the progress bar shows.
    pub sending_done: AtomicBool,
}

impl Live {
    /// Counts one request about to be sent.
    pub fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one finished request.
    pub fn finish(&self, ok: bool) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the end of sending: everything left is waiting for replies.
    pub fn stop_sending(&self) {
        self.sending_done.store(true, Ordering::Relaxed);
    }

    /// Whether [`Live::stop_sending`] was called.
    pub fn is_sending_done(&self) -> bool {
        self.sending_done.load(Ordering::Relaxed)
    }

    /// Requests sent whose reply has not arrived yet. Reads two relaxed
    /// counters, so it may be off by one or two while requests finish; it
    /// never goes below zero.
    pub fn outstanding(&self) -> u64 {
        let completed = self.completed.load(Ordering::Relaxed);
        self.started
            .load(Ordering::Relaxed)
            .saturating_sub(completed)
    }
}

/// Everything recorded about one phase of a run.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency_us: Histogram<u64>,
    service_us: Histogram<u64>,
    successes: u64,
    by_kind: BTreeMap<ErrorKind, u64>,
    by_status: BTreeMap<u16, u64>,
    samples: Vec<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        // The bounds are constants that satisfy hdrhistogram's requirements
        // (low >= 1, high >= 2 * low, sigfig <= 5); no input can reach this.
        let latency_us = Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3)
            .expect("constant histogram bounds are valid");
        Self {
            service_us: latency_us.clone(),
            latency_us,
            successes: 0,
            by_kind: BTreeMap::new(),
            by_status: BTreeMap::new(),
            samples: Vec::new(),
        }
    }

    /// Records a successful request whose latency is its service time
    /// (closed loop: measured from the actual send).
    pub fn success(&mut self, latency: Duration) {
        self.success_open(latency, latency);
    }

    /// Records a successful open-loop request: `latency` from its intended
    /// send time (the headline number) and `service` from its actual send.
    pub fn success_open(&mut self, latency: Duration, service: Duration) {
        self.successes += 1;
        self.latency_us.saturating_record(to_us(latency));
        self.service_us.saturating_record(to_us(service));
    }

    /// Records a failed request; the first few details are kept as samples.
    pub fn failure(&mut self, failure: Failure) {
        *self.by_kind.entry(failure.kind).or_insert(0) += 1;
        if let Some(status) = failure.status {
            *self.by_status.entry(status).or_insert(0) += 1;
        }
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(failure.detail);
        }
    }

    /// Records either outcome (closed loop).
    pub fn record(&mut self, outcome: Result<(), Failure>, latency: Duration) {
        self.record_open(outcome, latency, latency);
    }

    /// Records either outcome (open loop: see [`Recorder::success_open`]).
    pub fn record_open(
        &mut self,
        outcome: Result<(), Failure>,
        latency: Duration,
        service: Duration,
    ) {
        match outcome {
            Ok(()) => self.success_open(latency, service),
            Err(f) => self.failure(f),
        }
    }

    /// Folds another recorder in (workers may record separately).
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so `add` cannot fail; if it
        // somehow did, the percentiles would only lose that worker's samples.
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.service_us.add(&other.service_us);
        self.successes += other.successes;
        for (k, n) in &other.by_kind {
            *self.by_kind.entry(*k).or_insert(0) += n;
        }
        for (s, n) in &other.by_status {
            *self.by_status.entry(*s).or_insert(0) += n;
        }
        for sample in &other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(sample.clone());
            }
        }
    }

    /// Successful requests.
    pub fn successes(&self) -> u64 {
        self.successes
    }

    /// Failed requests.
    pub fn failures(&self) -> u64 {
        self.by_kind.values().sum()
    }

    /// All finished requests.
    pub fn requests(&self) -> u64 {
        self.successes + self.failures()
    }

    /// Failures per kind, with every kind present (zero if none) so the JSON
    /// report always has the same keys.
    pub fn failures_by_kind(&self) -> BTreeMap<String, u64> {
        ErrorKind::ALL
            .iter()
            .map(|k| {
                (
                    k.name().to_owned(),
                    self.by_kind.get(k).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Failures per HTTP status (only statuses that occurred).
    pub fn failures_by_status(&self) -> BTreeMap<String, u64> {
        self.by_status
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect()
    }

    /// First few failure details.
    pub fn samples(&self) -> &[String] {
        &self.samples
    }

    /// Latency percentiles of successful requests, or `None` if there were none.
    pub fn latency(&self) -> Option<LatencySummary> {
        LatencySummary::from_histogram(&self.latency_us)
    }

    /// Percentiles of time from *actual* send to reply. Equal to
    /// [`Recorder::latency`] in closed loop; in rate mode the difference between
    /// the two is time spent waiting behind schedule.
    pub fn service_latency(&self) -> Option<LatencySummary> {
        LatencySummary::from_histogram(&self.service_us)
    }
}

/// Microseconds, clamped into the histogram's trackable range.
fn to_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TRACKABLE_US)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Fastest request.
    pub min: f64,
    /// Arithmetic mean (useful to compare with p50, not a percentile).
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest request.
    pub max: f64,
}

impl LatencySummary {
    /// Reads the percentiles out of a microsecond histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Self {
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::new();
        for ms in 1..=1000u64 {
            r.success(Duration::from_millis(ms));
        }
        let l = r.latency().unwrap();
        assert_eq!(l.min, 1.0);
        // HDR keeps 3 significant digits: values are within 0.1%.
        assert!((l.p50 - 500.0).abs() <= 0.5, "{l:?}");
        assert!((l.p90 - 900.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.p999 - 999.0).abs() <= 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() <= 1.0, "{l:?}");
        assert!((l.mean - 500.5).abs() <= 1.0, "{l:?}");
    }

    #[test]
    fn open_loop_keeps_both_views() {
        let mut r = Recorder::new();
        r.record_open(Ok(()), Duration::from_millis(50), Duration::from_millis(2));
        // HDR reports the top of the value's bucket: within 0.1%.
        assert!((r.latency().unwrap().max - 50.0).abs() <= 0.05);
        assert!((r.service_latency().unwrap().max - 2.0).abs() <= 0.002);
        let mut closed = Recorder::new();
        closed.record(Ok(()), Duration::from_millis(7));
        assert_eq!(closed.latency(), closed.service_latency());
    }

    #[test]
    fn no_successes_means_no_latency() {
        let mut r = Recorder::new();
        r.failure(Failure::new(ErrorKind::Timeout, "t"));
        assert!(r.latency().is_none());
        assert_eq!(r.requests(), 1);
    }

    #[test]
    fn extreme_latencies_do_not_panic() {
        let mut r = Recorder::new();
        r.success(Duration::ZERO);
        r.success(Duration::MAX);
        assert_eq!(r.successes(), 2);
        let l = r.latency().unwrap();
        assert!(l.min <= 0.001 + f64::EPSILON);
        assert!(l.max >= 3_600_000.0 * 0.999);
    }

    #[test]
    fn failures_are_tallied_by_kind_status_and_sampled() {
        let mut r = Recorder::new();
        for i in 0..7 {
            r.failure(Failure {
                kind: ErrorKind::Status,
                status: Some(if i % 2 == 0 { 503 } else { 504 }),
                detail: format!("f{i}"),
            });
        }
        r.failure(Failure::new(ErrorKind::Mismatch, "m"));
        r.success(Duration::from_millis(3));
        assert_eq!(r.failures(), 8);
        assert_eq!(r.requests(), 9);
        let kinds = r.failures_by_kind();
        assert_eq!(kinds.len(), ErrorKind::ALL.len());
        assert_eq!(kinds["status"], 7);
        assert_eq!(kinds["mismatch"], 1);
        assert_eq!(kinds["connect"], 0);
        let statuses = r.failures_by_status();
        assert_eq!(statuses["503"], 4);
        assert_eq!(statuses["504"], 3);
        assert_eq!(r.samples().len(), MAX_SAMPLES);
        assert_eq!(r.samples()[0], "f0");
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Recorder::new();
        a.success(Duration::from_millis(1));
        a.failure(Failure::new(ErrorKind::Connect, "c"));
        let mut b = Recorder::new();
        b.success(Duration::from_millis(9));
        b.failure(Failure::new(ErrorKind::Connect, "c2"));
        a.merge(&b);
        assert_eq!(a.successes(), 2);
        assert_eq!(a.failures_by_kind()["connect"], 2);
        assert_eq!(a.samples(), ["c", "c2"]);
        assert!(a.latency().unwrap().max >= 8.99);
    }

    #[test]
    fn live_counts() {
        let live = Live::default();
        for _ in 0..3 {
            live.start();
        }
        live.finish(true);
        live.finish(false);
        assert_eq!(live.completed.load(Ordering::Relaxed), 2);
        assert_eq!(live.failed.load(Ordering::Relaxed), 1);
        assert_eq!(live.outstanding(), 1);
        assert!(!live.is_sending_done());
        live.stop_sending();
        assert!(live.is_sending_done());
    }
}
