//! The proxy's own metrics: their names and meaning in one place (docs/operations.md).

use metrics::{describe_counter, describe_gauge, describe_histogram};
use shared::protocol::Operation;

/// Outcomes in `proxy_processed_total{outcome}`.
pub const OUTCOMES: &[&str] = &["ok", "error", "expired", "invalid"];

/// Describes the proxy metrics and publishes the counters at zero.
pub fn register() {
    shared::telemetry::register_common_metrics();
    describe_gauge!(
        "proxy_terminals_total",
        "Size of the terminal pool (TERMINALS)"
    );
    describe_gauge!("proxy_terminals_busy", "Terminals processing an entry now");
    describe_counter!(
        "proxy_processed_total",
        "Entries handled, by operation and outcome"
    );
    describe_histogram!(
        "proxy_processing_seconds",
        metrics::Unit::Seconds,
        "Time the processor took, by operation"
    );
    describe_counter!(
        "proxy_expired_total",
        "Entries whose deadline had passed when read; acknowledged and dropped unprocessed"
    );
    describe_counter!(
        "proxy_abandoned_total",
        "Entries whose deadline passed while a terminal processed them: processing stopped, acknowledged without a reply (the caller had its 504)"
    );
    describe_counter!(
        "proxy_replies_dropped_total",
        "Replies not written because the caller's reply stream was gone"
    );
    describe_histogram!(
        "proxy_upstream_seconds",
        "Upstream calls of the forwarder (UPSTREAM_URL), retries included, by queue (request stream) and outcome: the status class (2xx…5xx), unavailable or too_large"
    );
    describe_histogram!(
        "proxy_reply_batch_size",
        "Replies written (and entries acknowledged) per Redis call: 1 at light load, more under load (a summary: quantiles, sum and count)"
    );
    for operation in [Operation::CityForecast, Operation::SampleForecast] {
        for outcome in OUTCOMES {
            metrics::counter!("proxy_processed_total", "operation" => operation.as_str(), "outcome" => *outcome).absolute(0);
        }
    }
    metrics::counter!("proxy_expired_total").absolute(0);
    metrics::counter!("proxy_abandoned_total").absolute(0);
    metrics::counter!("proxy_replies_dropped_total").absolute(0);

    describe_counter!(
        "proxy_reclaimed_total",
        "Idle pending entries of other (dead) consumers claimed and processed"
    );
    describe_counter!(
        "proxy_dead_lettered_total",
        "Entries moved to the dead-letter stream, by reason"
    );
    describe_counter!(
        "proxy_consumers_removed_total",
        "Idle consumers with nothing pending removed from the group"
    );
    describe_counter!(
        "proxy_faults_injected_total",
        "Faults injected through /api/config, by kind"
    );
    describe_gauge!(
        "circuit_breaker_state",
        "Circuit breaker around Redis: 0 closed, 1 half-open, 2 open"
    );
    metrics::counter!("proxy_reclaimed_total").absolute(0);
    metrics::counter!("proxy_consumers_removed_total").absolute(0);
    for reason in crate::dead_letter::REASONS {
        metrics::counter!("proxy_dead_lettered_total", "reason" => *reason).absolute(0);
    }
    for kind in crate::faults::FAULT_KINDS {
        metrics::counter!("proxy_faults_injected_total", "kind" => *kind).absolute(0);
    }
}
