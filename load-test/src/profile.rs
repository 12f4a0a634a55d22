//! Staged concurrency profiles (`--profile load|spike|soak`).
//!
//! A profile is a list of [`Stage`]s; within a stage the number of active
//! closed-loop users moves linearly from `from` to `to` (k6-style), and a jump
//! between stages is instantaneous. The runner samples [`concurrency_at`] a few
//! times a second and wakes or parks workers to match, so this module is pure
//! arithmetic and fully unit-testable.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

/// Which shape of load to apply over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Ramp up to `--concurrency` (20% of the time), hold (60%), ramp down (20%):
    /// the "normal expected peak" test.
    Load,
    /// Baseline at `--concurrency` (30%), sudden jump to `multiplier x` (20%), then
    /// back to baseline (50%). The report's per-stage figures show how the spike
    /// was handled (its failures by status, e.g. 503s shed) and put the recovery
    /// stage's p99 latency and failures next to the baseline's, flagging a p99
    /// far above the baseline's.
    Spike,
    /// Steady `--concurrency` for the whole (long) duration: finds leaks and drift.
    Soak,
}

impl Profile {
    /// Lower-case name, as accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Load => "load",
            Profile::Spike => "spike",
            Profile::Soak => "soak",
        }
    }

    /// Length used when `--duration` is not given: soak tests only make sense
    /// when long, the others are meant to be quick to run.
    pub fn default_duration(self) -> Duration {
        match self {
            Profile::Load | Profile::Spike => Duration::from_secs(60),
            Profile::Soak => Duration::from_secs(600),
        }
    }
}

/// One segment of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Human-readable name shown in reports (`ramp-up`, `hold`, `spike`, ...).
    pub name: &'static str,
    /// How long the stage lasts.
    #[serde(serialize_with = "serialize_secs")]
    pub duration: Duration,
    /// Active users at the start of the stage.
    pub from: usize,
    /// Active users at the end of the stage.
    pub to: usize,
}

fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Builds the stages of `profile` for a base `concurrency` over `total` time.
///
/// Stage durations always add up to exactly `total` (the last stage absorbs
/// rounding), and no stage ever asks for fewer than one user, so a run never
/// stalls with zero workers.
pub fn stages(
    profile: Profile,
    concurrency: usize,
    total: Duration,
    spike_multiplier: usize,
) -> Vec<Stage> {
    let c = concurrency.max(1);
    let split = |fractions: &[f64]| -> Vec<Duration> {
        let mut out: Vec<Duration> = fractions.iter().map(|f| total.mul_f64(*f)).collect();
        let used: Duration = out.iter().take(out.len().saturating_sub(1)).sum();
        if let Some(last) = out.last_mut() {
            *last = total.saturating_sub(used);
        }
        out
    };
    match profile {
        Profile::Load => {
            let d = split(&[0.2, 0.6, 0.2]);
            vec![
                Stage {
                    name: "ramp-up",
                    duration: d[0],
                    from: 1,
                    to: c,
                },
                Stage {
                    name: "hold",
                    duration: d[1],
                    from: c,
                    to: c,
                },
                Stage {
                    name: "ramp-down",
                    duration: d[2],
                    from: c,
                    to: 1,
                },
            ]
        }
        Profile::Spike => {
            let peak = c.saturating_mul(spike_multiplier.max(1));
            let d = split(&[0.3, 0.2, 0.5]);
            vec![
                Stage {
                    name: "baseline",
                    duration: d[0],
                    from: c,
                    to: c,
                },
                Stage {
                    name: "spike",
                    duration: d[1],
                    from: peak,
                    to: peak,
                },
                Stage {
                    name: "recovery",
                    duration: d[2],
                    from: c,
                    to: c,
                },
            ]
        }
        Profile::Soak => vec![Stage {
            name: "steady",
            duration: total,
            from: c,
            to: c,
        }],
    }
}

/// Total length of a list of stages.
pub fn total_duration(stages: &[Stage]) -> Duration {
    stages.iter().map(|s| s.duration).sum()
}

/// Highest number of users any stage asks for: how many workers to spawn.
pub fn peak_concurrency(stages: &[Stage]) -> usize {
    stages
        .iter()
        .map(|s| s.from.max(s.to))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Index of the stage running at `elapsed` into the profile, or `None` once
/// it is over. Stages are half-open intervals: a stage's end belongs to the
/// next one (the same rule as [`concurrency_at`]).
pub fn stage_index_at(stages: &[Stage], elapsed: Duration) -> Option<usize> {
    let mut end = Duration::ZERO;
    for (i, stage) in stages.iter().enumerate() {
        end += stage.duration;
        if elapsed < end {
            return Some(i);
        }
    }
    None
}

/// Time from `elapsed` to the start of the next stage (or the end of the
/// profile), `None` once it is over; lets the runner wake exactly at a stage
/// boundary instead of up to one sampling interval late.
pub fn until_next_stage(stages: &[Stage], elapsed: Duration) -> Option<Duration> {
    let mut end = Duration::ZERO;
    for stage in stages {
        end += stage.duration;
        if elapsed < end {
            return Some(end - elapsed);
        }
    }
    None
}

/// Active users wanted at `elapsed` into the profile, or `None` once it is over.
///
/// Linear interpolation within a stage, rounded to the nearest user and never
/// below one.
pub fn concurrency_at(stages: &[Stage], elapsed: Duration) -> Option<usize> {
    let mut start = Duration::ZERO;
    for stage in stages {
        let end = start + stage.duration;
        if elapsed < end {
            let into = (elapsed - start).as_secs_f64();
            let len = stage.duration.as_secs_f64();
            let frac = if len > 0.0 { into / len } else { 0.0 };
            let from = stage.from as f64;
            let to = stage.to as f64;
            let users = (from + (to - from) * frac).round();
            return Some((users as usize).max(1));
        }
        start = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn load_ramps_up_holds_and_ramps_down() {
        let s = stages(Profile::Load, 10, MIN, 10);
        assert_eq!(s.len(), 3);
        assert_eq!(total_duration(&s), MIN);
        assert_eq!(s[0].duration, Duration::from_secs(12));
        assert_eq!(s[1].duration, Duration::from_secs(36));
        assert_eq!(peak_concurrency(&s), 10);
        assert_eq!(concurrency_at(&s, Duration::ZERO), Some(1));
        // halfway up the ramp: 1 + 9 * 0.5 = 5.5 -> 6
        assert_eq!(concurrency_at(&s, Duration::from_secs(6)), Some(6));
        assert_eq!(concurrency_at(&s, Duration::from_secs(30)), Some(10));
        assert_eq!(concurrency_at(&s, Duration::from_millis(59_999)), Some(1));
        assert_eq!(concurrency_at(&s, MIN), None);
    }

    #[test]
    fn spike_jumps_to_multiple_and_back() {
        let s = stages(Profile::Spike, 10, MIN, 10);
        assert_eq!(peak_concurrency(&s), 100);
        assert_eq!(concurrency_at(&s, Duration::from_secs(17)), Some(10));
        assert_eq!(concurrency_at(&s, Duration::from_secs(18)), Some(100));
        assert_eq!(concurrency_at(&s, Duration::from_secs(29)), Some(100));
        assert_eq!(concurrency_at(&s, Duration::from_secs(30)), Some(10));
        assert_eq!(total_duration(&s), MIN);
    }

    #[test]
    fn stage_index_follows_stage_boundaries() {
        let s = stages(Profile::Spike, 10, MIN, 10);
        assert_eq!(stage_index_at(&s, Duration::ZERO), Some(0));
        assert_eq!(stage_index_at(&s, Duration::from_millis(17_999)), Some(0));
        assert_eq!(stage_index_at(&s, Duration::from_secs(18)), Some(1));
        assert_eq!(stage_index_at(&s, Duration::from_secs(30)), Some(2));
        assert_eq!(stage_index_at(&s, Duration::from_millis(59_999)), Some(2));
        assert_eq!(stage_index_at(&s, MIN), None);
        assert_eq!(stage_index_at(&[], Duration::ZERO), None);
    }

    #[test]
    fn time_until_the_next_stage() {
        let s = stages(Profile::Spike, 10, MIN, 10);
        assert_eq!(
            until_next_stage(&s, Duration::ZERO),
            Some(Duration::from_secs(18))
        );
        assert_eq!(
            until_next_stage(&s, Duration::from_millis(17_950)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            until_next_stage(&s, Duration::from_secs(18)),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            until_next_stage(&s, Duration::from_secs(59)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(until_next_stage(&s, MIN), None);
    }

    #[test]
    fn soak_is_steady() {
        let s = stages(Profile::Soak, 4, Profile::Soak.default_duration(), 10);
        assert_eq!(s.len(), 1);
        assert_eq!(total_duration(&s), Duration::from_secs(600));
        for t in [0, 1, 300, 599] {
            assert_eq!(concurrency_at(&s, Duration::from_secs(t)), Some(4));
        }
    }

    #[test]
    fn durations_sum_exactly_even_when_not_divisible() {
        let total = Duration::from_millis(1001);
        for p in [Profile::Load, Profile::Spike, Profile::Soak] {
            assert_eq!(total_duration(&stages(p, 3, total, 10)), total, "{p:?}");
        }
    }

    #[test]
    fn never_asks_for_zero_users() {
        let s = stages(Profile::Load, 1, Duration::from_secs(10), 10);
        for ms in (0..10_000).step_by(250) {
            assert!(concurrency_at(&s, Duration::from_millis(ms)).unwrap_or(1) >= 1);
        }
        assert_eq!(peak_concurrency(&[]), 1);
        assert_eq!(concurrency_at(&[], Duration::ZERO), None);
    }
}
