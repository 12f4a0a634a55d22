//! Logs (tracing) and metrics (Prometheus) set-up, identical in both services.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the default `info` level.
/// Calling it twice (tests running several apps in one process) is harmless.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in files and log collectors are noise, and
    // formatting them costs CPU on every span.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _already_installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Histogram buckets for latencies in seconds: sub-millisecond broker legs up to the 30 s
/// default deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
///
/// The `metrics` facade has one global recorder per process, so this is a once-only
/// installation; every app started in the same process (tests) shares it. Returns `None` only
/// if another recorder was installed by someone else, in which case /metrics says so.
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            let upkeep = handle.clone();
            // Histograms are drained into their buckets on render, but an idle process that is
            // never scraped would grow them; run upkeep periodically.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        upkeep.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .clone()
}

/// Redis operations whose failures are counted in `redis_errors_total{operation}`.
pub const REDIS_OPERATIONS: &[&str] = &[
    "xadd",
    "xadd_reply",
    "xread",
    "xreadgroup",
    "xack",
    "xtrim",
    "xlen",
    "xinfo_groups",
    "xgroup_create",
    "xpending",
    "xgroup_delconsumer",
    "pexpire",
    "del",
    "xclaim",
    "xinfo_consumers",
    "xadd_dlq",
    "xgroup_createconsumer",
    "enqueue",
    "keep_reply_stream",
    "get",
    "xdel",
];

/// Describes the metrics both services export and publishes every known series at zero, so
/// dashboards and `rate()` see a series from the first scrape, not from the first incident.
pub fn register_common_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests served, by method, matched route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request duration, by method, route and status"
    );
    describe_counter!("redis_errors_total", "Failed Redis calls, by operation");
    describe_counter!(
        "redis_connection_errors_total",
        "Failed connection attempts to Redis and dropped connections, by cause (TLS, auth, unreachable, ...)"
    );
    describe_gauge!(
        "stream_length",
        "Entries in the request stream (waiting + being processed), sampled"
    );
    describe_gauge!(
        "stream_group_lag",
        "Entries of the request stream not yet delivered to any consumer, sampled"
    );
    describe_gauge!(
        "stream_group_pending",
        "Entries delivered to a consumer and not yet acknowledged, sampled"
    );
    describe_gauge!(
        "stream_group_consumers",
        "Consumers registered in the consumer group, sampled"
    );
    crate::server::describe_metrics();
    for operation in REDIS_OPERATIONS {
        metrics::counter!("redis_errors_total", "operation" => *operation).absolute(0);
    }
    for cause in crate::redis_problems::Cause::ALL {
        metrics::counter!("redis_connection_errors_total", "cause" => cause.label()).absolute(0);
    }
}

/// A budget for a log line that can fire once per request: at most `per_second` lines a second
/// get through, the rest are counted and the count is reported with the next line let through.
/// Under overload (say 20,000 refused requests a second) the log stays readable and cheap
/// instead of drowning everything else; metrics still count every event.
///
/// Use one `static` per call site:
/// ```ignore
/// static LIMIT: LogLimiter = LogLimiter::new(5);
/// if let Some(suppressed) = LIMIT.check() {
///     tracing::warn!(suppressed, "request failed");
/// }
/// ```
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u64,
    /// The second (since [`log_epoch`]) the counts below belong to.
    window: std::sync::atomic::AtomicU64,
    /// Lines let through in that second.
    passed: std::sync::atomic::AtomicU64,
    /// Lines held back since the last line let through.
    suppressed: std::sync::atomic::AtomicU64,
}

fn log_epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl LogLimiter {
    /// A limiter letting `per_second` lines through each second.
    pub const fn new(per_second: u64) -> Self {
        use std::sync::atomic::AtomicU64;
        LogLimiter {
            per_second,
            window: AtomicU64::new(0),
            passed: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this line may be logged, `n` being how many were held back since the
    /// last one (include it in the line); `None` when it must be dropped.
    pub fn check(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = log_epoch().elapsed().as_secs();
        if self.window.swap(now, Relaxed) != now {
            self.passed.store(0, Relaxed);
        }
        if self.passed.fetch_add(1, Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limiter_lets_its_budget_through_and_counts_the_rest() {
        let limiter = LogLimiter::new(3);
        let passed: Vec<_> = (0..10).filter_map(|_| limiter.check()).collect();
        // Within one second (a test this short cannot straddle more than one boundary, and a
        // boundary only lets more through): at least the budget passes, the first with nothing
        // held back.
        assert!(passed.len() >= 3, "{passed:?}");
        assert_eq!(passed[0], 0);
    }
}
