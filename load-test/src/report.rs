//! The end-of-run report: its JSON shape, its text rendering, and the exit-code
//! decision.
//!
//! The JSON field names are a contract for scripts and CI (`--json`), so the
//! struct is flat, camelCase like the service's own JSON, and every key is
//! always present (`null` when not applicable).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Mode;
use crate::profile::Profile;
use crate::schedule::{LATE_THRESHOLD, Lag, STALL_THRESHOLD};
use crate::stage_report::{self, StageReport};
use crate::stats::LatencySummary;

/// Exit code when the run passed.
pub const EXIT_PASS: u8 = 0;
/// Exit code when more requests failed than `--max-error-rate` allows.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for usage errors and a failed health check.
pub const EXIT_USAGE: u8 = 2;

/// Where latency is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LatencyOrigin {
    /// From the moment the request was actually started (closed-loop modes).
    Send,
    /// From the moment the open-loop schedule said it should start (rate mode),
    /// so generator or service stalls are not hidden (coordinated omission).
    IntendedSend,
}

/// How well the open-loop generator kept to its schedule (rate mode only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleReport {
    /// Sends that left more than `lateThresholdMs` after their intended time.
    pub late_sends: u64,
    /// The lateness threshold.
    pub late_threshold_ms: f64,
    /// Largest lag between intended and actual send time (the worst lateness).
    pub max_lag_ms: f64,
    /// Sends made, late or not.
    pub sends: u64,
    /// `lateSends / sends` (0 when nothing was sent).
    pub late_fraction: f64,
    /// `--max-late-fraction`: a larger `lateFraction` means the generator fell behind.
    pub max_late_fraction: f64,
    /// A single send more than this late also means the generator fell behind.
    pub stall_threshold_ms: f64,
    /// Whether the generator fell behind (too many late sends, or one stall),
    /// i.e. the service did not receive the target rate as a steady stream.
    pub fell_behind: bool,
}

impl ScheduleReport {
    /// Summarises the generator's lag against `--max-late-fraction`.
    pub fn new(lag: &Lag, max_late_fraction: f64) -> Self {
        Self {
            late_sends: lag.late,
            late_threshold_ms: LATE_THRESHOLD.as_secs_f64() * 1000.0,
            max_lag_ms: lag.max.as_secs_f64() * 1000.0,
            sends: lag.sends,
            late_fraction: lag.late_fraction(),
            max_late_fraction,
            stall_threshold_ms: STALL_THRESHOLD.as_secs_f64() * 1000.0,
            fell_behind: lag.fell_behind(max_late_fraction),
        }
    }

    /// Why the generator counts as fallen behind (empty when it did not).
    fn reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.late_sends > 0 && self.late_fraction > self.max_late_fraction {
            out.push(format!(
                "more than {} of sends late",
                format_percent(self.max_late_fraction)
            ));
        }
        if self.max_lag_ms > self.stall_threshold_ms {
            out.push(format!(
                "one send {} ms late (a stall of over {} ms)",
                format_ms(self.max_lag_ms),
                self.stall_threshold_ms
            ));
        }
        out
    }
}

/// The result of a run; printed as text or JSON, and returned by [`crate::run`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Random id of this run; every request id is `lt-<runId>-<n>`.
    pub run_id: String,
    /// Base URL that was tested.
    pub url: String,
    /// How requests were issued.
    pub mode: Mode,
    /// Concurrency profile, if any.
    pub profile: Option<Profile>,
    /// The profile's stages with the figures of the requests sent in each, if
    /// a profile ran.
    pub stages: Option<Vec<StageReport>>,
    /// Closed-loop workers (the peak for profiles); `null` in rate mode.
    pub concurrency: Option<usize>,
    /// Target requests per second in rate mode.
    pub target_rate: Option<f64>,
    /// Per-request timeout in milliseconds.
    pub timeout_ms: f64,
    /// True when the run was stopped early (Ctrl-C).
    pub interrupted: bool,
    /// Requests sent during warm-up (not included in any other number).
    pub warmup_requests: u64,
    /// Wall-clock length of the measured phase.
    pub duration_secs: f64,
    /// Requests finished (successes + failures).
    pub requests: u64,
    /// Requests whose reply was a 2xx that matched the request.
    pub successes: u64,
    /// All other requests.
    pub failures: u64,
    /// `failures / requests` (1 when there were no requests).
    pub error_rate: f64,
    /// The allowed error rate (`--max-error-rate`).
    pub max_error_rate: f64,
    /// Whether the run passes, i.e. exits 0.
    pub passed: bool,
    /// Finished requests (failures included) per second of wall-clock time.
    /// Kept for existing scripts; the same number as `requestsPerSecond`.
    pub throughput_rps: f64,
    /// Finished requests, failures included, per second: the load the
    /// service answered, not how much of it was useful.
    pub requests_per_second: f64,
    /// Successful requests per second: the useful throughput. A service that
    /// sheds nearly everything with fast 503s has a high `requestsPerSecond`
    /// and a low `successesPerSecond`.
    pub successes_per_second: f64,
    /// Failures per kind; every kind is present.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Failures per HTTP status, for `status` failures.
    pub failures_by_status: BTreeMap<String, u64>,
    /// What the latency numbers are measured from.
    pub latency_from: LatencyOrigin,
    /// Latency of successful requests in milliseconds; `null` if none succeeded.
    pub latency_ms: Option<LatencySummary>,
    /// Rate mode only: latency from the *actual* send, i.e. without the time
    /// spent behind schedule (the "uncorrected" view, for comparison).
    pub service_latency_ms: Option<LatencySummary>,
    /// Generator lateness, rate mode only.
    pub schedule: Option<ScheduleReport>,
    /// The first few failure details, for a quick diagnosis.
    pub sample_errors: Vec<String>,
}

/// Fraction of requests that failed. With no requests at all nothing was
/// verified, which a smoke test must not mistake for success, so that is 1.
pub fn error_rate(requests: u64, failures: u64) -> f64 {
    if requests == 0 {
        1.0
    } else {
        failures as f64 / requests as f64
    }
}

/// The pass/fail rule: at least one request, and an error rate no higher than
/// allowed. With the default `max_error_rate` of 0 any failure fails the run.
pub fn passes(requests: u64, failures: u64, max_error_rate: f64) -> bool {
    requests > 0 && error_rate(requests, failures) <= max_error_rate
}

/// `n` per second over `secs` (0 when no time passed).
pub fn per_second(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Exit code for a finished run.
pub fn exit_code(report: &Report) -> u8 {
    if report.passed {
        EXIT_PASS
    } else {
        EXIT_FAILED
    }
}

/// Milliseconds with three decimals (microsecond resolution, as recorded).
pub fn format_ms(ms: f64) -> String {
    format!("{ms:.3}")
}

/// A fraction as a percentage with three decimals.
pub fn format_percent(fraction: f64) -> String {
    format!("{:.3}%", fraction * 100.0)
}

impl Report {
    /// Pretty JSON for `--json`.
    pub fn to_json(&self) -> String {
        // Serializing plain structs, maps with string keys and finite floats
        // cannot fail; fall back to an error object rather than panic.
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize report: {e}\"}}"))
    }

    /// Human-readable summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let how = match (self.mode, self.profile, self.concurrency, self.target_rate) {
            (_, Some(p), Some(c), _) => format!("{} profile, up to {c} users", p.name()),
            (Mode::Rate, _, _, Some(r)) => format!("open loop at {r} req/s"),
            (Mode::Sequential, ..) => "sequential".to_owned(),
            (_, _, Some(c), _) => format!("concurrent, {c} users"),
            _ => format!("{:?}", self.mode).to_lowercase(),
        };
        let _ = writeln!(
            out,
            "load-test run {}: {how} against {}",
            self.run_id, self.url
        );
        if self.interrupted {
            let _ = writeln!(out, "  (interrupted: numbers cover the part that ran)");
        }
        if self.warmup_requests > 0 {
            let _ = writeln!(
                out,
                "  warm-up       {} requests (not counted below)",
                self.warmup_requests
            );
        }
        let _ = writeln!(
            out,
            "  requests      {} in {:.3} s",
            self.requests, self.duration_secs
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} req/s successful, {:.1} req/s in total (failures included)",
            self.successes_per_second, self.requests_per_second
        );
        let _ = writeln!(out, "  successes     {}", self.successes);
        let _ = writeln!(
            out,
            "  failures      {} ({})",
            self.failures,
            format_percent(if self.requests == 0 {
                0.0
            } else {
                self.error_rate
            })
        );
        if self.failures > 0 {
            let kinds: Vec<String> = self
                .failures_by_kind
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "    by kind     {}", kinds.join(", "));
            if !self.failures_by_status.is_empty() {
                let statuses: Vec<String> = self
                    .failures_by_status
                    .iter()
                    .map(|(s, n)| format!("{s}: {n}"))
                    .collect();
                let _ = writeln!(out, "    by status   {}", statuses.join(", "));
            }
        }
        match &self.latency_ms {
            Some(l) => {
                let from = match self.latency_from {
                    LatencyOrigin::Send => "",
                    LatencyOrigin::IntendedSend => ", from intended send time",
                };
                let _ = writeln!(
                    out,
                    "  latency (ms)  min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}{from})",
                    format_ms(l.min),
                    format_ms(l.p50),
                    format_ms(l.p90),
                    format_ms(l.p99),
                    format_ms(l.p999),
                    format_ms(l.max),
                    format_ms(l.mean),
                );
            }
            None => {
                let _ = writeln!(out, "  latency (ms)  n/a (no successful requests)");
            }
        }
        if let Some(l) = &self.service_latency_ms {
            let _ = writeln!(
                out,
                "  from send     min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, uncorrected)",
                format_ms(l.min),
                format_ms(l.p50),
                format_ms(l.p90),
                format_ms(l.p99),
                format_ms(l.p999),
                format_ms(l.max),
                format_ms(l.mean),
            );
        }
        if let Some(s) = &self.schedule {
            let _ = writeln!(
                out,
                "  schedule      {} of {} sends late ({}, > {} ms behind schedule), max lag {} ms",
                s.late_sends,
                s.sends,
                format_percent(s.late_fraction),
                s.late_threshold_ms,
                format_ms(s.max_lag_ms),
            );
            let reasons = s.reasons();
            if !reasons.is_empty() {
                let _ = writeln!(
                    out,
                    "    WARNING     the generator fell behind ({}): it (or --max-in-flight) could not keep up, so the service did not receive a steady {} req/s; latency includes the wait",
                    reasons.join("; "),
                    self.target_rate.unwrap_or_default(),
                );
            }
        }
        if let Some(stages) = &self.stages {
            stage_report::write_text(&mut out, stages);
        }
        if !self.sample_errors.is_empty() {
            let _ = writeln!(out, "  first errors");
            for e in &self.sample_errors {
                let _ = writeln!(out, "    {e}");
            }
        }
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        if self.requests == 0 {
            let _ = writeln!(out, "{verdict}: no requests completed");
        } else {
            let _ = writeln!(
                out,
                "{verdict}: error rate {} (allowed {})",
                format_percent(self.error_rate),
                format_percent(self.max_error_rate)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut by_kind: BTreeMap<String, u64> =
            ["connect", "decode", "io", "mismatch", "status", "timeout"]
                .iter()
                .map(|k| (k.to_string(), 0))
                .collect();
        by_kind.insert("status".into(), 2);
        Report {
            run_id: "0a1b2c3d".into(),
            url: "http://localhost:5009".into(),
            mode: Mode::Rate,
            profile: None,
            stages: None,
            concurrency: None,
            target_rate: Some(2000.0),
            timeout_ms: 30000.0,
            interrupted: false,
            warmup_requests: 0,
            duration_secs: 2.0,
            requests: 4000,
            successes: 3998,
            failures: 2,
            error_rate: error_rate(4000, 2),
            max_error_rate: 0.001,
            passed: passes(4000, 2, 0.001),
            throughput_rps: 2000.0,
            requests_per_second: 2000.0,
            successes_per_second: 1999.0,
            failures_by_kind: by_kind,
            failures_by_status: [("503".to_string(), 2)].into_iter().collect(),
            latency_from: LatencyOrigin::IntendedSend,
            latency_ms: Some(LatencySummary {
                min: 0.2,
                mean: 0.9,
                p50: 0.8,
                p90: 1.5,
                p99: 3.25,
                p999: 12.0,
                max: 40.125,
            }),
            service_latency_ms: Some(LatencySummary {
                min: 0.1,
                mean: 0.5,
                p50: 0.4,
                p90: 1.0,
                p99: 2.0,
                p999: 3.0,
                max: 4.0,
            }),
            schedule: Some(ScheduleReport::new(
                &Lag {
                    sends: 4000,
                    late: 3,
                    max: std::time::Duration::from_micros(7500),
                },
                0.01,
            )),
            sample_errors: vec!["lt-0a1b2c3d-17: HTTP 503: Service Unavailable: overloaded".into()],
        }
    }

    #[test]
    fn exit_code_decision() {
        assert!(passes(100, 0, 0.0));
        assert!(!passes(100, 1, 0.0));
        assert!(passes(100, 1, 0.01));
        assert!(!passes(100, 2, 0.01));
        assert!(passes(100, 100, 1.0));
        assert!(!passes(0, 0, 1.0), "no requests never passes");
        let mut r = sample();
        assert_eq!(exit_code(&r), EXIT_PASS);
        r.passed = false;
        assert_eq!(exit_code(&r), EXIT_FAILED);
    }

    #[test]
    fn error_rate_handles_zero_requests() {
        assert_eq!(error_rate(0, 0), 1.0);
        assert_eq!(error_rate(4, 1), 0.25);
    }

    #[test]
    fn number_formatting() {
        assert_eq!(format_ms(0.4), "0.400");
        assert_eq!(format_ms(1234.5678), "1234.568");
        assert_eq!(format_percent(0.0005), "0.050%");
        assert_eq!(format_percent(1.0), "100.000%");
    }

    #[test]
    fn text_summary_contains_the_essentials() {
        let text = sample().to_text();
        assert!(
            text.starts_with(
                "load-test run 0a1b2c3d: open loop at 2000 req/s against http://localhost:5009\n"
            ),
            "{text}"
        );
        assert!(text.contains("requests      4000 in 2.000 s\n"), "{text}");
        assert!(
            text.contains(
                "throughput    1999.0 req/s successful, 2000.0 req/s in total (failures included)\n"
            ),
            "{text}"
        );
        assert!(text.contains("failures      2 (0.050%)"), "{text}");
        assert!(text.contains("by kind     status 2\n"), "{text}");
        assert!(text.contains("by status   503: 2"), "{text}");
        assert!(
            text.contains("min 0.200  p50 0.800  p90 1.500  p99 3.250  p99.9 12.000  max 40.125  (mean 0.900, from intended send time)"),
            "{text}"
        );
        assert!(
            text.contains(
                "schedule      3 of 4000 sends late (0.075%, > 5 ms behind schedule), max lag 7.500 ms\n"
            ),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
        assert!(!text.contains("could not keep up"), "{text}");
        assert!(text.contains("HTTP 503"), "{text}");
        assert!(
            text.ends_with("PASS: error rate 0.050% (allowed 0.100%)\n"),
            "{text}"
        );
    }

    #[test]
    fn text_summary_without_successes() {
        let mut r = sample();
        r.latency_ms = None;
        r.requests = 0;
        r.passed = false;
        let text = r.to_text();
        assert!(text.contains("n/a (no successful requests)"), "{text}");
        assert!(text.ends_with("FAIL: no requests completed\n"), "{text}");
    }

    #[test]
    fn json_shape_is_stable() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "runId",
            "url",
            "mode",
            "profile",
            "stages",
            "concurrency",
            "targetRate",
            "timeoutMs",
            "interrupted",
            "warmupRequests",
            "durationSecs",
            "requests",
            "successes",
            "failures",
            "errorRate",
            "maxErrorRate",
            "passed",
            "throughputRps",
            "requestsPerSecond",
            "successesPerSecond",
            "failuresByKind",
            "failuresByStatus",
            "latencyFrom",
            "serviceLatencyMs",
            "latencyMs",
            "schedule",
            "sampleErrors",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(v["mode"], "rate");
        assert_eq!(v["profile"], serde_json::Value::Null);
        assert_eq!(v["latencyFrom"], "intendedSend");
        assert_eq!(v["failuresByKind"]["status"], 2);
        assert_eq!(v["failuresByKind"]["mismatch"], 0);
        assert_eq!(v["failuresByStatus"]["503"], 2);
        assert_eq!(v["latencyMs"]["p999"], 12.0);
        let mut latency_keys: Vec<_> = v["latencyMs"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        latency_keys.sort_unstable();
        assert_eq!(
            latency_keys,
            ["max", "mean", "min", "p50", "p90", "p99", "p999"]
        );
        assert_eq!(v["schedule"]["lateSends"], 3);
        assert_eq!(v["schedule"]["maxLagMs"], 7.5);
        assert_eq!(v["schedule"]["lateThresholdMs"], 5.0);
        assert_eq!(v["schedule"]["sends"], 4000);
        assert_eq!(v["schedule"]["lateFraction"], 0.00075);
        assert_eq!(v["schedule"]["maxLateFraction"], 0.01);
        assert_eq!(v["schedule"]["stallThresholdMs"], 1000.0);
        assert_eq!(v["schedule"]["fellBehind"], false);
        assert_eq!(v["throughputRps"], 2000.0);
        assert_eq!(v["requestsPerSecond"], 2000.0);
        assert_eq!(v["successesPerSecond"], 1999.0);
        assert_eq!(v["passed"], true);
    }

    /// The issue: 7 600 req/s reported when 99.97 % were 503s. The headline
    /// must say how much of it was successful.
    #[test]
    fn throughput_of_a_shedding_service_is_split() {
        let mut r = sample();
        r.requests = 228_000;
        r.successes = 68;
        r.failures = 227_932;
        r.duration_secs = 30.0;
        r.throughput_rps = 7600.0;
        r.requests_per_second = per_second(228_000, 30.0);
        r.successes_per_second = per_second(68, 30.0);
        let text = r.to_text();
        assert!(
            text.contains("throughput    2.3 req/s successful, 7600.0 req/s in total"),
            "{text}"
        );
        assert_eq!(per_second(5, 0.0), 0.0);
    }

    #[test]
    fn falling_behind_warns_with_the_reason() {
        let mut r = sample();
        r.schedule = Some(ScheduleReport::new(
            &Lag {
                sends: 4000,
                late: 41,
                max: std::time::Duration::from_millis(30),
            },
            0.01,
        ));
        let text = r.to_text();
        assert!(
            text.contains("schedule      41 of 4000 sends late (1.025%"),
            "{text}"
        );
        assert!(
            text.contains(
                "WARNING     the generator fell behind (more than 1.000% of sends late): it (or --max-in-flight) could not keep up, so the service did not receive a steady 2000 req/s"
            ),
            "{text}"
        );
        r.schedule = Some(ScheduleReport::new(
            &Lag {
                sends: 4000,
                late: 1,
                max: std::time::Duration::from_millis(1500),
            },
            0.01,
        ));
        let text = r.to_text();
        assert!(
            text.contains("fell behind (one send 1500.000 ms late (a stall of over 1000 ms))"),
            "{text}"
        );
        assert_eq!(r.schedule.map(|s| s.fell_behind), Some(true));
    }

    #[test]
    fn json_for_profile_includes_stages_with_their_figures() {
        let mut r = sample();
        r.mode = Mode::Concurrent;
        r.profile = Some(Profile::Spike);
        r.target_rate = None;
        r.schedule = None;
        r.service_latency_ms = None;
        let stages =
            crate::profile::stages(Profile::Spike, 2, std::time::Duration::from_secs(10), 10);
        let mut spike = crate::stats::Recorder::new();
        spike.success(std::time::Duration::from_millis(4));
        spike.failure(crate::verify::Failure {
            kind: crate::verify::ErrorKind::Status,
            status: Some(503),
            detail: "shed".into(),
        });
        let recs = [crate::stats::Recorder::new(), spike];
        r.stages = Some(stage_report::stage_reports(
            &stages,
            &recs,
            std::time::Duration::from_secs(10),
        ));
        r.concurrency = Some(20);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["profile"], "spike");
        // The keys of earlier versions are still there ...
        assert_eq!(v["stages"][1]["name"], "spike");
        assert_eq!(v["stages"][1]["from"], 20);
        assert_eq!(v["stages"][1]["to"], 20);
        assert_eq!(v["stages"][1]["duration"], 2.0);
        // ... next to the stage's figures.
        assert_eq!(v["stages"][1]["measuredSecs"], 2.0);
        assert_eq!(v["stages"][1]["requests"], 2);
        assert_eq!(v["stages"][1]["successes"], 1);
        assert_eq!(v["stages"][1]["failures"], 1);
        assert_eq!(v["stages"][1]["errorRate"], 0.5);
        assert_eq!(v["stages"][1]["requestsPerSecond"], 1.0);
        assert_eq!(v["stages"][1]["successesPerSecond"], 0.5);
        assert_eq!(v["stages"][1]["failuresByStatus"]["503"], 1);
        assert_eq!(v["stages"][1]["failuresByKind"]["status"], 1);
        assert!(v["stages"][1]["latencyMs"]["p99"].as_f64().unwrap() >= 4.0);
        assert_eq!(v["stages"][1]["p99VsFirstStage"], serde_json::Value::Null);
        assert_eq!(v["stages"][1]["p99FarAboveFirstStage"], false);
        assert_eq!(v["stages"][0]["latencyMs"], serde_json::Value::Null);
        let mut keys: Vec<&str> = v["stages"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "duration",
                "errorRate",
                "failures",
                "failuresByKind",
                "failuresByStatus",
                "from",
                "latencyMs",
                "measuredSecs",
                "name",
                "p99FarAboveFirstStage",
                "p99VsFirstStage",
                "requests",
                "requestsPerSecond",
                "successes",
                "successesPerSecond",
                "to"
            ]
        );
        let text = r.to_text();
        assert!(text.contains("spike profile, up to 20 users"), "{text}");
        assert!(
            text.contains("stages        (each request counted in the stage it was sent in)"),
            "{text}"
        );
        assert!(
            text.contains("    spike       20 users for 2.000 s: 2 requests"),
            "{text}"
        );
    }
}
