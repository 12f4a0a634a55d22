//! The open-loop send schedule used by `--mode rate`.
//!
//! Request `i` is *intended* to start at `start + i / rate`. Latency is measured
//! from that intended time, not from when the generator actually got round to
//! sending it: if the service (or the generator) stalls, the requests that
//! should have been sent during the stall are charged the waiting time, as real
//! users arriving at that rate would be. This is the standard correction for
//! "coordinated omission". Sends that leave noticeably after their intended time
//! are counted as late, so a report can say when the generator itself was the
//! bottleneck.

use std::time::Duration;

/// How far behind schedule a send may leave before it counts as late.
///
/// Tokio's timer has millisecond resolution, so sub-millisecond lag is normal
/// and not worth reporting.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(5);

/// A fixed-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSchedule {
    rate: f64,
}

impl RateSchedule {
    /// A schedule of `rate` requests per second; `None` unless `rate` is a
    /// positive finite number.
    pub fn new(rate: f64) -> Option<Self> {
        (rate.is_finite() && rate > 0.0).then_some(Self { rate })
    }

    /// Offset from the start of the run at which request `index` should be sent.
    pub fn offset(&self, index: u64) -> Duration {
        // Saturates instead of panicking for absurdly small rates.
        Duration::try_from_secs_f64(index as f64 / self.rate).unwrap_or(Duration::MAX)
    }

    /// Whether request `index` still falls inside a run of length `duration`.
    pub fn within(&self, index: u64, duration: Duration) -> bool {
        self.offset(index) < duration
    }
}

/// Running account of how far behind schedule the generator has been.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Sends that left more than [`LATE_THRESHOLD`] after their intended time.
    pub late: u64,
    /// The largest lag seen.
    pub max: Duration,
}

impl Lag {
    /// Records one send that left `lag` after its intended time.
    pub fn record(&mut self, lag: Duration) {
        if lag > LATE_THRESHOLD {
            self.late += 1;
        }
        self.max = self.max.max(lag);
    }

    /// Combines two accounts (for merging per-phase or per-task tallies).
    pub fn merge(&mut self, other: Lag) {
        self.late += other.late;
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_evenly_spaced() {
        let s = RateSchedule::new(2000.0).unwrap();
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(500));
        assert_eq!(s.offset(2000), Duration::from_secs(1));
    }

    #[test]
    fn duration_bounds_the_number_of_sends() {
        let s = RateSchedule::new(10.0).unwrap();
        let d = Duration::from_secs(3);
        let sent = (0..).take_while(|i| s.within(*i, d)).count();
        assert_eq!(sent, 30);
    }

    #[test]
    fn rejects_non_positive_rates() {
        assert!(RateSchedule::new(0.0).is_none());
        assert!(RateSchedule::new(-5.0).is_none());
        assert!(RateSchedule::new(f64::NAN).is_none());
        assert!(RateSchedule::new(f64::INFINITY).is_none());
    }

    #[test]
    fn lag_counts_only_beyond_threshold() {
        let mut lag = Lag::default();
        lag.record(Duration::from_micros(900));
        lag.record(LATE_THRESHOLD);
        lag.record(Duration::from_millis(20));
        assert_eq!(lag.late, 1);
        assert_eq!(lag.max, Duration::from_millis(20));
        let mut other = Lag::default();
        other.record(Duration::from_millis(50));
        lag.merge(other);
        assert_eq!(
            lag,
            Lag {
                late: 2,
                max: Duration::from_millis(50)
            }
        );
    }
}
