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
}
