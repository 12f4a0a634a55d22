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
        "proxy_replies_dropped_total",
        "Replies not written because the caller's reply stream was gone"
    );
    for operation in [Operation::CityForecast, Operation::SampleForecast] {
        for outcome in OUTCOMES {
            metrics::counter!("proxy_processed_total", "operation" => operation.as_str(), "outcome" => *outcome).absolute(0);
        }
    }
    metrics::counter!("proxy_expired_total").absolute(0);
    metrics::counter!("proxy_replies_dropped_total").absolute(0);
}
