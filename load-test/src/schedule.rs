//! The open-loop send schedule used by `--mode rate`.
//!
//! Request `i` is *intended* to start at `start + i / rate`. Latency is measured
//! from that intended time, not from when the generator actually got round to
//! sending it: if the service (or the generator) stalls, the requests that
//! should have been sent during the stall are charged the waiting time, as real
//! users arriving at that rate would be. This is the standard correction for
//! "coordinated omission". Sends that leave noticeably after their intended time
//! are counted as late, so a report can say when the generator itself was the
//! bottleneck. A handful of late sends is normal on a busy machine (a thread
//! descheduled for a few milliseconds), so the report only warns when lateness
//! changed what the service actually received: see [`Lag::fell_behind`].

use std::time::Duration;

/// How far behind schedule a send may leave before it counts as late.
///
/// Tokio's timer has millisecond resolution, so sub-millisecond lag is normal
/// and not worth reporting.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(5);

/// Default for `--max-late-fraction`: warn when more than 1 % of sends were late.
///
/// Below that the service still received (nearly) the configured rate and the
/// few late requests are already charged their wait in the corrected latency,
/// so a warning would only cry wolf (2 late sends out of 20 000 used to warn).
pub const DEFAULT_MAX_LATE_FRACTION: f64 = 0.01;

/// A single send this far behind schedule is worth a warning whatever the
/// fraction: the generator (or `--max-in-flight`) stalled for a noticeable
/// time, and the sends held back during the stall went out as a burst
/// afterwards, which is not the steady rate that was asked for.
pub const STALL_THRESHOLD: Duration = Duration::from_secs(1);

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
    /// Sends made (late or not): the denominator of [`Lag::late_fraction`].
    pub sends: u64,
    /// Sends that left more than [`LATE_THRESHOLD`] after their intended time.
    pub late: u64,
    /// The largest lag seen.
    pub max: Duration,
}

impl Lag {
    /// Records one send that left `lag` after its intended time.
    pub fn record(&mut self, lag: Duration) {
        self.sends += 1;
        if lag > LATE_THRESHOLD {
            self.late += 1;
        }
        self.max = self.max.max(lag);
    }

    /// Combines two accounts (for merging per-phase or per-task tallies).
    pub fn merge(&mut self, other: Lag) {
        self.sends += other.sends;
        self.late += other.late;
        self.max = self.max.max(other.max);
    }

    /// Late sends as a fraction of all sends (0 when nothing was sent).
    pub fn late_fraction(&self) -> f64 {
        if self.sends == 0 {
            0.0
        } else {
            self.late as f64 / self.sends as f64
        }
    }

    /// Whether more than `max_late_fraction` of the sends were late.
    pub fn too_many_late(&self, max_late_fraction: f64) -> bool {
        self.late > 0 && self.late_fraction() > max_late_fraction
    }

    /// Whether one send was more than [`STALL_THRESHOLD`] behind schedule.
    pub fn stalled(&self) -> bool {
        self.max > STALL_THRESHOLD
    }

    /// Whether the generator fell behind enough to change the load the
    /// service received, so the report should warn: too many late sends, or
    /// one long stall.
    pub fn fell_behind(&self, max_late_fraction: f64) -> bool {
        self.too_many_late(max_late_fraction) || self.stalled()
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
        assert_eq!(lag.sends, 3);
        assert_eq!(lag.max, Duration::from_millis(20));
        let mut other = Lag::default();
        other.record(Duration::from_millis(50));
        lag.merge(other);
        assert_eq!(
            lag,
            Lag {
                sends: 4,
                late: 2,
                max: Duration::from_millis(50)
            }
        );
    }

    /// The case from the issue: 2 late sends out of 20 000 is noise, not a
    /// generator that could not keep up.
    #[test]
    fn a_few_late_sends_do_not_mean_falling_behind() {
        let mut lag = Lag::default();
        for i in 0..20_000u32 {
            let ms = if i == 7 || i == 13_000 { 12 } else { 0 };
            lag.record(Duration::from_millis(ms));
        }
        assert_eq!(lag.late, 2);
        assert!((lag.late_fraction() - 0.0001).abs() < 1e-12);
        assert!(!lag.fell_behind(DEFAULT_MAX_LATE_FRACTION));
        // --max-late-fraction 0 restores "any late send warns".
        assert!(lag.fell_behind(0.0));
    }

    #[test]
    fn more_than_the_allowed_fraction_late_is_falling_behind() {
        let mut lag = Lag::default();
        for i in 0..1000u32 {
            // 10 late = exactly 1 %: not more than allowed.
            lag.record(Duration::from_millis(if i < 10 { 6 } else { 1 }));
        }
        assert!(!lag.fell_behind(0.01));
        lag.record(Duration::from_millis(6));
        assert!(lag.too_many_late(0.01));
        assert!(lag.fell_behind(0.01));
        assert!(!lag.stalled());
    }

    #[test]
    fn one_long_stall_is_falling_behind_whatever_the_fraction() {
        let mut lag = Lag::default();
        for _ in 0..100_000u32 {
            lag.record(Duration::ZERO);
        }
        lag.record(STALL_THRESHOLD);
        assert!(
            !lag.fell_behind(0.01),
            "exactly the threshold is not a stall"
        );
        lag.record(STALL_THRESHOLD + Duration::from_millis(1));
        assert!(lag.stalled());
        assert!(!lag.too_many_late(0.01));
        assert!(lag.fell_behind(0.01));
    }

    #[test]
    fn nothing_sent_is_not_behind() {
        let lag = Lag::default();
        assert_eq!(lag.late_fraction(), 0.0);
        assert!(!lag.fell_behind(0.0));
    }
}
