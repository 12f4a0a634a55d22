//! Per-stage figures of a profile run (`--profile load|spike|soak`).
//!
//! A profile changes the load over time, so whole-run numbers blur its stages
//! together: a spike's 503s and the recovery's latency would end up in one
//! histogram, and "did latency recover after the spike?" could not be
//! answered. The runner therefore keeps one [`Recorder`] per stage and
//! attributes every request to the stage it was *sent* in (a request sent in
//! the last moment of a stage is that stage's load, even if its reply arrives
//! in the next one). This module turns those recorders into the report's
//! per-stage entries, renders them as text, and flags a stage whose p99 is far
//! above the first stage's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::profile::Stage;
use crate::report::{error_rate, format_ms, format_percent, per_second};
use crate::stats::{LatencySummary, Recorder};

/// A stage's p99 is flagged when it is more than this many times the first
/// stage's p99 ...
pub const FAR_ABOVE_FACTOR: f64 = 2.0;
/// ... and at least this many milliseconds above it, so that sub-millisecond
/// jitter (0.3 ms against 0.7 ms) is not reported as a regression.
pub const FAR_ABOVE_MIN_MS: f64 = 1.0;

/// One stage of a profile with what happened during it.
///
/// The first four keys (`name`, `duration`, `from`, `to`) are the stage
/// definition, as in earlier versions of the report; the rest are figures of
/// the requests sent during the stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    /// The stage definition: name, planned duration (seconds), users at its
    /// start and end.
    #[serde(flatten)]
    pub stage: Stage,
    /// Seconds of the stage that actually ran: its `duration`, or less when
    /// the run was interrupted during or before it. Throughput is per this.
    pub measured_secs: f64,
    /// Requests sent during the stage that finished (success or failure).
    pub requests: u64,
    /// Of those, 2xx replies that matched the request.
    pub successes: u64,
    /// Of those, all others.
    pub failures: u64,
    /// `failures / requests` (1 when the stage has no finished request, as
    /// for the whole run).
    pub error_rate: f64,
    /// Finished requests (failures included) per second of the stage.
    pub requests_per_second: f64,
    /// Successful requests per second of the stage.
    pub successes_per_second: f64,
    /// Failures per kind; every kind is present.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Failures per HTTP status (only statuses that occurred).
    pub failures_by_status: BTreeMap<String, u64>,
    /// Latency of the stage's successful requests; `null` if none succeeded.
    pub latency_ms: Option<LatencySummary>,
    /// This stage's p99 divided by the first stage's; `null` for the first
    /// stage and when either stage has no successful request.
    pub p99_vs_first_stage: Option<f64>,
    /// Whether this stage's p99 is far above the first stage's (more than
    /// [`FAR_ABOVE_FACTOR`] times and at least [`FAR_ABOVE_MIN_MS`] more).
    pub p99_far_above_first_stage: bool,
}

/// Whether `p99` is far above the `first` stage's p99 (see the constants).
pub fn far_above(p99: f64, first: f64) -> bool {
    p99 > first * FAR_ABOVE_FACTOR && p99 - first >= FAR_ABOVE_MIN_MS
}

/// How much of a stage starting at `start` and lasting `duration` ran before
/// the phase ended at `elapsed`.
fn measured(start: Duration, duration: Duration, elapsed: Duration) -> Duration {
    elapsed.saturating_sub(start).min(duration)
}

/// Builds the per-stage entries. `recorders[i]` holds the requests sent
/// during `stages[i]`; `elapsed` is how long the phase ran (it decides how
/// much of each stage counts when the run was interrupted).
pub fn stage_reports(
    stages: &[Stage],
    recorders: &[Recorder],
    elapsed: Duration,
) -> Vec<StageReport> {
    let empty = Recorder::new();
    let mut start = Duration::ZERO;
    let mut out: Vec<StageReport> = Vec::with_capacity(stages.len());
    for (i, stage) in stages.iter().enumerate() {
        let rec = recorders.get(i).unwrap_or(&empty);
        let secs = measured(start, stage.duration, elapsed).as_secs_f64();
        start += stage.duration;
        let requests = rec.requests();
        let failures = rec.failures();
        let latency = rec.latency();
        let first_p99 = out.first().and_then(|f| f.latency_ms).map(|l| l.p99);
        let ratio = match (first_p99, latency) {
            (Some(first), Some(l)) if first > 0.0 => Some(l.p99 / first),
            _ => None,
        };
        let flagged = match (first_p99, latency) {
            (Some(first), Some(l)) => far_above(l.p99, first),
            _ => false,
        };
        out.push(StageReport {
            stage: stage.clone(),
            measured_secs: secs,
            requests,
            successes: rec.successes(),
            failures,
            error_rate: error_rate(requests, failures),
            requests_per_second: per_second(requests, secs),
            successes_per_second: per_second(rec.successes(), secs),
            failures_by_kind: rec.failures_by_kind(),
            failures_by_status: rec.failures_by_status(),
            latency_ms: latency,
            p99_vs_first_stage: ratio,
            p99_far_above_first_stage: flagged,
        });
    }
    out
}

/// `10 users`, or `1→10 users` for a ramp.
fn users(stage: &Stage) -> String {
    if stage.from == stage.to {
        format!("{} users", stage.from)
    } else {
        format!("{}→{} users", stage.from, stage.to)
    }
}

/// `0 failed`, or `12 failed (4.000%: 503: 10, timeout 2)`.
fn failures(s: &StageReport) -> String {
    if s.failures == 0 {
        return "0 failed".to_owned();
    }
    let mut parts: Vec<String> = s
        .failures_by_status
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect();
    parts.extend(
        s.failures_by_kind
            .iter()
            .filter(|(kind, n)| **n > 0 && kind.as_str() != "status")
            .map(|(kind, n)| format!("{kind} {n}")),
    );
    format!(
        "{} failed ({}: {})",
        s.failures,
        format_percent(s.error_rate),
        parts.join(", ")
    )
}

/// Appends the per-stage section of the text report.
pub fn write_text(out: &mut String, stages: &[StageReport]) {
    let Some(first) = stages.first() else {
        return;
    };
    let width = stages
        .iter()
        .map(|s| s.stage.name.len())
        .max()
        .unwrap_or(0)
        .max(10);
    let _ = writeln!(
        out,
        "  stages        (each request counted in the stage it was sent in)"
    );
    for s in stages {
        let planned = s.stage.duration.as_secs_f64();
        let time = if (s.measured_secs - planned).abs() < 0.0005 {
            format!("{planned:.3} s")
        } else {
            format!("{:.3} of {planned:.3} s", s.measured_secs)
        };
        let _ = writeln!(
            out,
            "    {:<width$}  {} for {time}: {} requests ({:.1} req/s), {} successful ({:.1} req/s), {}",
            s.stage.name,
            users(&s.stage),
            s.requests,
            s.requests_per_second,
            s.successes,
            s.successes_per_second,
            failures(s),
        );
        // Second line aligned under the first line's "N users".
        let pad = " ".repeat(4 + width + 2);
        match &s.latency_ms {
            Some(l) => {
                let flag = if s.p99_far_above_first_stage {
                    format!(
                        "  — p99 {:.1}x the {} stage's (flagged above {FAR_ABOVE_FACTOR}x)",
                        s.p99_vs_first_stage.unwrap_or(f64::INFINITY),
                        first.stage.name
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{pad}latency (ms) p50 {}  p90 {}  p99 {}  max {}{flag}",
                    format_ms(l.p50),
                    format_ms(l.p90),
                    format_ms(l.p99),
                    format_ms(l.max),
                );
            }
            None => {
                let _ = writeln!(out, "{pad}latency (ms) n/a (no successful requests)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Profile, stages};
    use crate::verify::{ErrorKind, Failure};

    fn recorder(latencies_ms: &[u64], statuses: &[u16]) -> Recorder {
        let mut r = Recorder::new();
        for ms in latencies_ms {
            r.success(Duration::from_millis(*ms));
        }
        for s in statuses {
            r.failure(Failure {
                kind: ErrorKind::Status,
                status: Some(*s),
                detail: format!("HTTP {s}"),
            });
        }
        r
    }

    fn spike(baseline: &[u64], spike: &[u64], recovery: &[u64]) -> Vec<StageReport> {
        let st = stages(Profile::Spike, 10, Duration::from_secs(10), 10);
        let recs = [
            recorder(baseline, &[]),
            recorder(spike, &[503, 503, 503, 504]),
            recorder(recovery, &[]),
        ];
        stage_reports(&st, &recs, Duration::from_secs(11))
    }

    #[test]
    fn figures_per_stage() {
        let r = spike(&[2; 300], &[40; 196], &[3; 500]);
        assert_eq!(r.len(), 3);
        let names: Vec<_> = r.iter().map(|s| s.stage.name).collect();
        assert_eq!(names, ["baseline", "spike", "recovery"]);
        assert_eq!(r[0].measured_secs, 3.0);
        assert_eq!(r[0].requests, 300);
        assert_eq!(r[0].requests_per_second, 100.0);
        assert_eq!(r[1].stage.from, 100);
        assert_eq!(r[1].requests, 200);
        assert_eq!(r[1].successes, 196);
        assert_eq!(r[1].failures, 4);
        assert_eq!(r[1].requests_per_second, 100.0);
        assert_eq!(r[1].successes_per_second, 98.0);
        assert_eq!(r[1].failures_by_status["503"], 3);
        assert_eq!(r[1].failures_by_status["504"], 1);
        assert_eq!(r[1].failures_by_kind["status"], 4);
        assert_eq!(r[1].error_rate, 0.02);
        assert_eq!(r[2].measured_secs, 5.0);
        assert!(r[2].failures_by_status.is_empty());
    }

    #[test]
    fn p99_far_above_the_first_stage_is_flagged() {
        let r = spike(&[2; 300], &[40; 196], &[3; 500]);
        assert_eq!(r[0].p99_vs_first_stage, None);
        assert!(!r[0].p99_far_above_first_stage);
        assert!(r[1].p99_far_above_first_stage, "20x the baseline");
        let ratio = r[1].p99_vs_first_stage.unwrap();
        assert!((ratio - 20.0).abs() < 0.1, "{ratio}");
        assert!(!r[2].p99_far_above_first_stage, "1.5x: recovered");

        let r = spike(&[2; 300], &[40; 196], &[9; 500]);
        assert!(r[2].p99_far_above_first_stage, "4.5x: not recovered");
        let text = {
            let mut t = String::new();
            write_text(&mut t, &r);
            t
        };
        assert!(
            text.contains("p99 4.5x the baseline stage's (flagged above 2x)"),
            "{text}"
        );
    }

    #[test]
    fn far_above_needs_both_factor_and_margin() {
        assert!(!far_above(0.7, 0.3), "2.3x but only 0.4 ms more");
        assert!(!far_above(20.0, 10.0), "exactly 2x");
        assert!(far_above(20.1, 10.0));
        assert!(far_above(2.5, 1.0));
    }

    #[test]
    fn stage_without_successes_has_no_latency_and_no_flag() {
        let r = spike(&[2; 10], &[], &[]);
        assert_eq!(r[1].latency_ms, None);
        assert_eq!(r[1].p99_vs_first_stage, None);
        assert!(!r[1].p99_far_above_first_stage);
        assert_eq!(r[2].requests, 0);
        assert_eq!(r[2].error_rate, 1.0);
        let mut t = String::new();
        write_text(&mut t, &r);
        assert!(t.contains("n/a (no successful requests)"), "{t}");
        assert!(t.contains("4 failed (100.000%: 503: 3, 504: 1)"), "{t}");
    }

    #[test]
    fn an_interrupted_run_counts_only_the_time_that_ran() {
        let st = stages(Profile::Spike, 10, Duration::from_secs(10), 10);
        let recs = [recorder(&[1; 30], &[]), recorder(&[1; 10], &[])];
        let r = stage_reports(&st, &recs, Duration::from_millis(4000));
        assert_eq!(r[0].measured_secs, 3.0);
        assert_eq!(r[1].measured_secs, 1.0);
        assert_eq!(r[1].requests_per_second, 10.0);
        assert_eq!(r[2].measured_secs, 0.0);
        assert_eq!(r[2].requests, 0);
        assert_eq!(r[2].requests_per_second, 0.0);
        let mut t = String::new();
        write_text(&mut t, &r);
        assert!(t.contains("1.000 of 2.000 s"), "{t}");
    }

    #[test]
    fn text_shows_users_throughput_failures_and_percentiles() {
        let st = stages(Profile::Load, 10, Duration::from_secs(10), 10);
        let recs = [
            recorder(&[1; 20], &[]),
            recorder(&[2; 58], &[503, 503]),
            recorder(&[1; 20], &[]),
        ];
        let r = stage_reports(&st, &recs, Duration::from_secs(10));
        let mut t = String::new();
        write_text(&mut t, &r);
        assert!(
            t.contains(
                "    ramp-up     1→10 users for 2.000 s: 20 requests (10.0 req/s), 20 successful (10.0 req/s), 0 failed\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "    hold        10 users for 6.000 s: 60 requests (10.0 req/s), 58 successful (9.7 req/s), 2 failed (3.333%: 503: 2)\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "\n                latency (ms) p50 2.000  p90 2.000  p99 2.000  max 2.000\n"
            ),
            "{t}"
        );
    }
}
