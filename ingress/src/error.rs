//! Every way an ingress request can fail, mapped to its status and problem body.

use axum::http::StatusCode;
use shared::http::{Problem, RequestId};

use crate::admission::Rejection;
use crate::broker::CallError;

/// A failed API request. Converted to a [`Problem`] with the request id attached.
#[derive(Debug)]
pub enum ApiError {
    /// The body parsed but its fields break a rule (400).
    Validation(String),
    /// A request header has a value we cannot use (400).
    BadHeader {
        header: &'static str,
        detail: String,
    },
    /// Refused before reaching Redis (503 + Retry-After).
    Rejected(Rejection),
    /// No reply (409 duplicate id, 503 Redis, 504 deadline, 503 shutdown).
    Call(CallError),
    /// The proxy replied with an error (502).
    Proxy { code: String, message: String },
    /// A bug on our side (500); never expected.
    Internal(String),
    /// A problem already worded by the handler (405, 413 on a forwarded route…).
    Status { problem: Problem },
}

impl ApiError {
    /// The problem body for this error.
    pub fn into_problem(self, request_id: &RequestId) -> Problem {
        let problem = match self {
            ApiError::Validation(detail) => {
                Problem::new(StatusCode::BAD_REQUEST, "validation", "Invalid request", detail)
            }
            ApiError::BadHeader { header, detail } => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-header",
                "Invalid header",
                format!("{header}: {detail}"),
            ),
            ApiError::Rejected(Rejection::Draining) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "Instance shutting down",
                "this instance is shutting down and takes no new requests; retry, another instance will answer",
            )
            .retry_after(1),
            ApiError::Rejected(Rejection::InFlightLimit) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many requests in flight",
                "this instance awaits as many replies as MAX_IN_FLIGHT allows; retry after the indicated delay",
            )
            .retry_after(1),
            ApiError::Rejected(Rejection::BacklogLimit) | ApiError::Call(CallError::BacklogFull(_)) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog-full",
                "Request backlog full",
                "the request stream holds MAX_BACKLOG entries; the proxies are behind and the request was not queued; retry after the indicated delay",
            )
            .retry_after(2),
            ApiError::Rejected(Rejection::WaitExceedsDeadline { ahead, rate, expected, retry_after }) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "wait-exceeds-deadline",
                "Queue too long for the deadline",
                format!(
                    "about {ahead} requests are ahead and the proxies finish about {rate:.1} per second, so this one would wait about {:.1} s, more than its deadline allows; it was not queued. Retry after the indicated delay, or allow a longer deadline with Request-Timeout",
                    expected.as_secs_f64()
                ),
            )
            .retry_after(retry_after.as_secs().max(1)),
            ApiError::Rejected(Rejection::NoConsumers(without)) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-consumers",
                "No proxy is reading the queue",
                format!(
                    "no proxy has read the request stream for {} s, so nobody would answer; the request was not queued. Start a proxy (or check why they stopped), then retry",
                    without.as_secs()
                ),
            )
            .retry_after(5),
            ApiError::Call(CallError::DuplicateRequestId(id)) => Problem::new(
                StatusCode::CONFLICT,
                "duplicate-request-id",
                "Request id already in flight",
                format!("a request with X-Request-Id `{id}` is still awaiting its reply; use a unique id per request"),
            ),
            ApiError::Call(CallError::RedisUnavailable(why)) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis-unavailable",
                "Redis unavailable",
                format!("the request was not queued because Redis is unreachable or refused it ({why}); retry shortly"),
            )
            .retry_after(2),
            ApiError::Call(CallError::RedisOutOfMemory) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis-out-of-memory",
                "Redis is out of memory",
                "Redis refuses writes because it reached its maxmemory limit; the request was not queued. An operator must free memory or raise the limit; retry after the indicated delay",
            )
            .retry_after(5),
            ApiError::Call(CallError::CircuitOpen(retry_after)) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit-open",
                "Redis circuit open",
                "recent Redis calls failed, so the request was refused at once without being queued; retry after the indicated delay",
            )
            .retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            ApiError::Call(CallError::Timeout(timeout)) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "No reply before the deadline",
                format!(
                    "no proxy replied within {} ms; the request was queued and may still be processed later; the proxies may be down or behind (see /healthz streamLength)",
                    timeout.as_millis()
                ),
            ),
            ApiError::Call(CallError::Unconfirmed { timeout, why }) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "enqueue-unconfirmed",
                "Redis did not confirm the request",
                format!(
                    "the request was sent to Redis, but Redis did not confirm it ({why}) and no reply came within {} ms; it may have been queued and may still be processed. Retry only if the request is safe to repeat",
                    timeout.as_millis()
                ),
            ),
            ApiError::Call(CallError::DataLost) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "redis-data-lost",
                "Redis lost the request",
                "Redis lost its data (restarted without persistence, flushed, or evicted this instance's reply stream) while the request was queued; it may or may not have been processed. Retry only if the request is safe to repeat",
            ),
            ApiError::Call(CallError::InvalidReply(why)) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "invalid-reply",
                "Unreadable reply",
                format!("a proxy answered, but its reply could not be read ({why}); the request was processed, its result is unknown"),
            ),
            // Not a 503 + Retry-After: that means "not queued", and this request was.
            ApiError::Call(CallError::ShuttingDown) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "shutdown-unanswered",
                "Instance shut down before the reply came",
                "the request was queued, but this instance had to stop (DRAIN_TIMEOUT passed) before its reply came; it may still be processed. Retry only if the request is safe to repeat",
            ),
            ApiError::Proxy { code, message } if code == "upstream_unavailable" => Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-unavailable",
                "The upstream service could not be reached",
                format!("{code}: {message}"),
            ),
            ApiError::Proxy { code, message } if code == "upstream_response_too_large" => Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-response-too-large",
                "The upstream's response is too large",
                format!("{code}: {message}"),
            ),
            ApiError::Status { problem } => problem,
            ApiError::Proxy { code, message } => Problem::new(
                StatusCode::BAD_GATEWAY,
                "proxy-error",
                "The proxy could not process the request",
                format!("{code}: {message}"),
            ),
            ApiError::Internal(detail) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                detail,
            ),
        };
        problem.with_request_id(request_id)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::Rejected(rejection)
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        ApiError::Call(err)
    }
}
