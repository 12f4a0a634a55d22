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
            ApiError::Rejected(Rejection::BacklogLimit) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog-full",
                "Request backlog full",
                "the request stream holds more entries than MAX_BACKLOG; the proxies are behind, retry after the indicated delay",
            )
            .retry_after(2),
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
                format!("the request could not be queued because Redis is unreachable ({why}); retry shortly"),
            )
            .retry_after(2),
            ApiError::Call(CallError::CircuitOpen(retry_after)) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit-open",
                "Redis circuit open",
                "recent Redis calls failed, so requests are refused at once instead of hanging; retry after the indicated delay",
            )
            .retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            ApiError::Call(CallError::Timeout(timeout)) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "No reply before the deadline",
                format!(
                    "no proxy replied within {} ms; the proxies may be down or behind (see /healthz streamLength)",
                    timeout.as_millis()
                ),
            ),
            ApiError::Call(CallError::ShuttingDown) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "Instance shutting down",
                "this instance stopped waiting for the reply while shutting down; retry",
            )
            .retry_after(1),
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
