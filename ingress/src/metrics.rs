//! The ingress's own metrics: their names and meaning in one place (docs/operations.md).

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Reasons in `ingress_rejections_total{reason}`.
pub const REJECTION_REASONS: &[&str] = &[
    "in_flight_limit",
    "backlog_limit",
    "draining",
    "redis_unavailable",
    "circuit_open",
    "rate_limited",
    "wait_exceeds_deadline",
    "no_consumers",
    "redis_out_of_memory",
    "buffer_full",
];

/// Describes the ingress metrics and publishes the counters at zero.
pub fn register() {
    shared::telemetry::register_common_metrics();
    describe_gauge!(
        "ingress_requests_in_flight",
        "Requests awaiting their reply on this instance"
    );
    describe_gauge!("ingress_draining", "1 while the instance is shutting down");
    describe_histogram!(
        "ingress_round_trip_seconds",
        metrics::Unit::Seconds,
        "From XADD of the request to its reply (or the deadline), by operation and outcome"
    );
    describe_counter!(
        "ingress_rejections_total",
        "Requests refused before reaching Redis, by reason"
    );
    describe_gauge!(
        "circuit_breaker_state",
        "Circuit breaker around Redis: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        "ingress_replies_unmatched_total",
        "Replies that found no waiter (late after a timeout, or duplicates)"
    );
    describe_counter!(
        "ingress_replies_invalid_total",
        "Unreadable entries on the reply stream"
    );
    describe_gauge!(
        "ingress_rate_limit_clients",
        "Clients the rate limiter tracks (at most RATE_LIMIT_MAX_KEYS, plus the overflow bucket)"
    );
    describe_counter!(
        "ingress_rate_limit_overflow_total",
        "Requests from clients first seen while RATE_LIMIT_MAX_KEYS were tracked: they share one bucket"
    );
    metrics::counter!("ingress_rate_limit_overflow_total").absolute(0);
    for reason in REJECTION_REASONS {
        metrics::counter!("ingress_rejections_total", "reason" => *reason).absolute(0);
    }
    metrics::counter!("ingress_replies_unmatched_total").absolute(0);
    metrics::counter!("ingress_replies_invalid_total").absolute(0);
}
