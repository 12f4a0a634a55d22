//! The weather API: validate, admit, forward through the broker, answer with the reply.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::http::{ApiJson, Problem, RequestId};
use shared::protocol::{Operation, ReplyStatus};
use shared::weather::{CityForecast, CityForecastRequest, DailyForecast};

use crate::broker::{Call, CallError};
use crate::error::ApiError;
use std::sync::Arc;

use crate::state::AppState;

/// Header a client may send to ask for a shorter deadline than REQUEST_TIMEOUT, e.g. `5s`
/// (values: [`shared::openapi::REQUEST_TIMEOUT_PATTERN`]).
pub const REQUEST_TIMEOUT_HEADER: &str = "request-timeout";

/// Forecast for one city, made by a proxy.
#[utoipa::path(
    post,
    path = "/WeatherForecast/city",
    tag = "weather",
    request_body(content = CityForecastRequest, content_type = "application/json"),
    params(
        ("X-Request-Id" = String, Header, description = "Correlation id, 1 to 128 of `A-Z a-z 0-9 . _ : -`; generated when absent; echoed in the response header and the body's `requestId`. Another value is refused with 400 `invalid-request-id`"),
        ("Request-Timeout" = String, Header, description = "Deadline for this request: a whole number of milliseconds (`500ms`) or seconds (`5s`, or just `5`), no leading zeros, at most ten digits; capped at REQUEST_TIMEOUT (default 30s). Another value is refused with 400 `invalid-header`"),
    ),
    responses(
        (status = 200, description = "The proxy's forecast", body = CityForecast),
        (status = 400, description = "Malformed JSON, not a JSON object, invalid fields or headers (including a malformed X-Request-Id)", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within HTTP_BODY_READ_TIMEOUT after the headers", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The X-Request-Id is already in flight", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit (16 KiB by default)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The proxy replied with an error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not queued: overloaded, queue too long for the deadline, no proxy reading, draining, or Redis unreachable / out of memory; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "No reply before the deadline (the request may still be processed), or Redis did not confirm the write", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn city_forecast(
    State(state): State<Arc<AppState>>,
    request_id: RequestId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CityForecastRequest>,
) -> Result<Response, Problem> {
    let result = async {
        body.validate().map_err(ApiError::Validation)?;
        let payload =
            serde_json::to_string(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
        forward(
            &state,
            &request_id,
            &headers,
            Operation::CityForecast,
            payload.into(),
        )
        .await
    };
    result.await.map_err(|err| err.into_problem(&request_id))
}

/// The five-day sample forecast, made by a proxy.
#[utoipa::path(
    get,
    path = "/WeatherForecast",
    tag = "weather",
    params(
        ("X-Request-Id" = String, Header, description = "Correlation id, 1 to 128 of `A-Z a-z 0-9 . _ : -`; generated when absent; echoed in the response header. Another value is refused with 400 `invalid-request-id`"),
        ("Request-Timeout" = String, Header, description = "Deadline for this request: a whole number of milliseconds (`500ms`) or seconds (`5s`, or just `5`), no leading zeros, at most ten digits; capped at REQUEST_TIMEOUT (default 30s). Another value is refused with 400 `invalid-header`"),
    ),
    responses(
        (status = 200, description = "Five days of sample forecast", body = [DailyForecast]),
        (status = 400, description = "Invalid headers (a malformed X-Request-Id or Request-Timeout)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The X-Request-Id is already in flight", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The proxy replied with an error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not queued: overloaded, queue too long for the deadline, no proxy reading, draining, or Redis unreachable / out of memory; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "No reply before the deadline (the request may still be processed), or Redis did not confirm the write", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sample_forecast(
    State(state): State<Arc<AppState>>,
    request_id: RequestId,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    forward(
        &state,
        &request_id,
        &headers,
        Operation::SampleForecast,
        bytes::Bytes::from_static(b"{}"),
    )
    .await
    .map_err(|err| err.into_problem(&request_id))
}

/// Admits the request, sends it through the broker and turns the reply into a response.
async fn forward(
    state: &AppState,
    request_id: &RequestId,
    headers: &HeaderMap,
    operation: Operation,
    payload: bytes::Bytes,
) -> Result<Response, ApiError> {
    let timeout = requested_timeout(headers, state.request_timeout)?;
    let _in_flight = state.admission.admit(&state.queue, timeout)?;
    let reply = state
        .broker
        .call(Call {
            request_id: request_id.as_str(),
            queue: &state.queue,
            operation,
            payload,
            timeout,
            traceparent: traceparent(headers),
            http: None,
            hold: None,
        })
        .await
        .inspect_err(count_refusal)?;
    match reply.status {
        ReplyStatus::Ok => Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            reply.payload,
        )
            .into_response()),
        ReplyStatus::Error { code, message } => {
            static PROXY_ERROR: shared::telemetry::LogLimiter =
                shared::telemetry::LogLimiter::new(5);
            if let Some(suppressed) = PROXY_ERROR.check() {
                tracing::warn!(
                    code,
                    message,
                    proxy = reply.proxy,
                    suppressed,
                    "proxy replied with an error"
                );
            }
            Err(ApiError::Proxy { code, message })
        }
    }
}

/// Counts Redis-side refusals with the admission refusals in `ingress_rejections_total`.
pub(crate) fn count_refusal(err: &CallError) {
    let reason = match err {
        CallError::RedisUnavailable(_) => "redis_unavailable",
        CallError::RedisOutOfMemory => "redis_out_of_memory",
        CallError::CircuitOpen(_) => "circuit_open",
        CallError::BacklogFull(_) => "backlog_limit",
        _ => return,
    };
    metrics::counter!("ingress_rejections_total", "reason" => reason).increment(1);
}

/// The deadline for this request: `Request-Timeout` when given (capped at `max`), else `max`.
pub(crate) fn requested_timeout(headers: &HeaderMap, max: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(REQUEST_TIMEOUT_HEADER) else {
        return Ok(max);
    };
    let bad = |detail: String| ApiError::BadHeader {
        header: "Request-Timeout",
        detail,
    };
    let text = value
        .to_str()
        .map_err(|_| bad("must be ASCII, e.g. `5s`".into()))?;
    let timeout = shared::openapi::parse_request_timeout(text).map_err(bad)?;
    Ok(timeout.min(max))
}

/// The W3C `traceparent` header, passed on to the proxy when it looks sane.
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    (value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn request_timeout_is_parsed_and_capped() {
        let max = Duration::from_secs(30);
        assert_eq!(requested_timeout(&HeaderMap::new(), max).ok(), Some(max));
        assert_eq!(
            requested_timeout(&headers("5s"), max).ok(),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            requested_timeout(&headers("250ms"), max).ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(requested_timeout(&headers("600s"), max).ok(), Some(max));
        assert!(requested_timeout(&headers("0s"), max).is_err());
        assert!(requested_timeout(&headers("10m"), max).is_err());
        assert!(requested_timeout(&headers("soon"), max).is_err());
    }
}
