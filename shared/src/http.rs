//! HTTP pieces both services use: RFC 9457 problem bodies, the request-id / metrics / tracing
//! middleware, a JSON extractor whose rejections are problems, and the /metrics handler.

use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;
use utoipa::ToSchema;

/// Header carrying the correlation id in both directions.
pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id accepted.
pub use crate::protocol::MAX_REQUEST_ID_LEN;

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response body as RFC 9457 describes it, plus the request id.
///
/// Every error either service returns has this shape, so a client needs one error parser.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "type": "urn:problem:broker:timeout",
    "title": "No reply before the deadline",
    "status": 504,
    "detail": "no proxy replied within 30000 ms; the request may still be processed later",
    "requestId": "6f1c2a9e-3d0b-4a53-9c1e-5b8f0e2d7a41"
}))]
pub struct Problem {
    /// Stable machine-readable kind, `urn:problem:broker:<kind>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary of the kind.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this case and what to do.
    pub detail: String,
    /// Correlation id of the request (also in the `X-Request-Id` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Seconds a client should wait before retrying; sent as `Retry-After`.
    #[serde(skip)]
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    /// A problem of kind `kind` (the last part of the `type` URN).
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            problem_type: format!("urn:problem:broker:{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            request_id: None,
            retry_after_secs: None,
        }
    }

    /// Attaches the request id.
    pub fn with_request_id(mut self, request_id: &RequestId) -> Self {
        self.request_id = Some(request_id.0.clone());
        self
    }

    /// Attaches the request id when there is one.
    pub fn with_optional_request_id(self, request_id: Option<&RequestId>) -> Self {
        match request_id {
            Some(id) => self.with_request_id(id),
            None => self,
        }
    }

    /// Asks the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 404 for a path no route matches.
    pub fn not_found(path: &str) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such endpoint",
            format!("nothing is served at `{path}`; see /swagger for the endpoints"),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert(REQUEST_ID_HEADER.clone(), id);
        }
        response
    }
}

/// The correlation id of the current request, put into request extensions by
/// [`request_context`]: the client's `X-Request-Id` when valid, a fresh UUID otherwise.
///
/// Handlers that pass the id on (the API routes) extract it directly, `request_id: RequestId`:
/// that answers 400 `invalid-request-id` when the client sent a malformed id, instead of
/// silently replacing an id the client will look for. `Extension<RequestId>` never fails and
/// gives the fresh id; health, metrics and the 404/405 fallbacks use that, so a probe or scraper
/// that forwards an odd id is still answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh random id (UUID v4).
    pub fn generate() -> Self {
        RequestId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Without the middleware there is no id yet; a fresh one is still a valid answer.
        let id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate);
        match parts.extensions.get::<InvalidRequestId>() {
            Some(invalid) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-request-id",
                "Invalid X-Request-Id",
                format!(
                    "{}; send 1 to {MAX_REQUEST_ID_LEN} such characters, or leave the header out and use the generated `requestId`",
                    invalid.0
                ),
            )
            .with_request_id(&id)),
            None => Ok(id),
        }
    }
}

/// Put into request extensions by [`request_context`] when the client's `X-Request-Id` failed
/// validation (the request then carries a fresh [`RequestId`]); holds what was wrong.
#[derive(Debug, Clone)]
struct InvalidRequestId(String);

/// Checks a client-supplied request id against the protocol's rule
/// ([`crate::protocol::validate_request_id`]); the message names the header.
pub fn validate_request_id(id: &str) -> Result<(), String> {
    crate::protocol::validate_request_id(id).map_err(|why| format!("X-Request-Id: {why}"))
}

/// The client's id when valid; otherwise a fresh one, plus what was wrong with the client's.
fn request_id_from(headers: &HeaderMap) -> (RequestId, Option<InvalidRequestId>) {
    let Some(value) = headers.get(&REQUEST_ID_HEADER) else {
        return (RequestId::generate(), None);
    };
    let checked = value
        .to_str()
        .map_err(|_| "X-Request-Id must be ASCII".to_string())
        .and_then(|id| validate_request_id(id).map(|()| id));
    match checked {
        Ok(id) => (RequestId(id.to_string()), None),
        Err(detail) => (RequestId::generate(), Some(InvalidRequestId(detail))),
    }
}

/// The `method` label value: the standard methods by name, anything else as `other`, so that
/// made-up methods cannot create metric series without bound.
pub fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// Middleware for every route: assigns the request id, runs the handler inside a tracing span
/// carrying it, echoes it in `X-Request-Id`, and records `http_requests_total` and
/// `http_request_duration_seconds` by method, matched route template and status.
///
/// Every label value is bounded whatever the client sends: methods by [`method_label`], routes
/// by their template (`unmatched` for any unknown path), status by the response. A malformed
/// `X-Request-Id` is replaced by a fresh id here and refused only by handlers that extract
/// [`RequestId`], so unknown routes and methods still get 404/405 and probes still get answers.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let (request_id, invalid) = request_id_from(request.headers());
    let span =
        tracing::info_span!("http", request_id = %request_id.0, method = %request.method(), %route);
    let header = HeaderValue::from_str(&request_id.0).ok();
    if let Some(invalid) = invalid {
        span.in_scope(|| tracing::debug!(problem = %invalid.0, "ignoring an invalid X-Request-Id"));
        request.extensions_mut().insert(invalid);
    }
    // Refused before any route sees it: no handler of either service serves a tunnel, and a
    // forwarded route would otherwise pass a CONNECT on to its upstream.
    let mut response =
        if request.method() == Method::CONNECT || !request.uri().path().starts_with('/') {
            not_a_path_request(request.method(), request.uri())
                .with_request_id(&request_id)
                .into_response()
        } else {
            request.extensions_mut().insert(request_id);
            next.run(request).instrument(span.clone()).await
        };
    if let Some(header) = header {
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER.clone(), header);
    }
    let status = response.status();
    span.in_scope(|| {
        // A 503 from a health probe is an answer, not a failure of this service. Under
        // overload this line could fire for every request: at most 5 a second get through,
        // the count of the others rides on the next (metrics count them all).
        static FAILED: crate::telemetry::LogLimiter = crate::telemetry::LogLimiter::new(5);
        if status.is_server_error() && !route.starts_with("/health") {
            if let Some(suppressed) = FAILED.check() {
                tracing::warn!(
                    status = status.as_u16(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    suppressed,
                    "request failed"
                );
            }
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request served"
            );
        }
    });
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The 405 for a request these services never serve: a CONNECT (on any path) or a target that
/// is not a path (`CONNECT host:443`, `OPTIONS *`, `GET host:80`). They are origin servers, not
/// forward proxies or tunnels; a 2xx to a CONNECT would tell the client a tunnel is open.
fn not_a_path_request(method: &Method, uri: &axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "{method} `{uri}` is not served: this service answers requests for paths (e.g. `GET /health/live`); it is not a forward proxy and opens no tunnels; see /swagger for the endpoints"
        ),
    )
}

/// Fallback for unknown paths: a 404 problem instead of an empty body.
pub async fn not_found(request: Request) -> Problem {
    let problem = Problem::not_found(request.uri().path());
    match request.extensions().get::<RequestId>() {
        Some(id) => problem.with_request_id(id),
        None => problem,
    }
}

/// Fallback for a known path with the wrong method: a 405 problem.
pub async fn method_not_allowed(request: Request) -> Problem {
    let problem = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!(
            "`{}` does not accept {}; see /swagger for the allowed methods",
            request.uri().path(),
            request.method()
        ),
    );
    match request.extensions().get::<RequestId>() {
        Some(id) => problem.with_request_id(id),
        None => problem,
    }
}

/// `GET /metrics`: the Prometheus text exposition of this process's metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
))]
pub async fn metrics_handler() -> Response {
    match crate::telemetry::prometheus() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics-unavailable",
            "Metrics unavailable",
            "another metrics recorder was installed in this process",
        )
        .into_response(),
    }
}

/// A JSON body extractor whose rejections are [`Problem`]s: 400 for malformed JSON or wrong
/// fields, 408 when the body does not arrive within HTTP_BODY_READ_TIMEOUT, 413 over the body
/// limit, 415 for a missing or wrong `Content-Type`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let request_id = request.extensions().get::<RequestId>().cloned();
        let problem = match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => return Ok(ApiJson(value)),
            Err(rejection) => {
                use axum::extract::rejection::JsonRejection;
                if let Some(timeout) = crate::server::body_read_timeout_in(&rejection) {
                    return Err(Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body-timeout",
                        "Request body too slow",
                        format!("{timeout}; send the whole body right after the headers"),
                    )
                    .with_optional_request_id(request_id.as_ref()));
                }
                match rejection {
                    JsonRejection::MissingJsonContentType(_) => Problem::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported-media-type",
                        "Unsupported media type",
                        "send the body as JSON with `Content-Type: application/json`",
                    ),
                    JsonRejection::JsonSyntaxError(err) => Problem::new(
                        StatusCode::BAD_REQUEST,
                        "malformed-json",
                        "Malformed JSON",
                        format!("the body is not valid JSON: {}", err.body_text()),
                    ),
                    JsonRejection::JsonDataError(err) => Problem::new(
                        StatusCode::BAD_REQUEST,
                        "validation",
                        "Invalid request",
                        format!(
                            "the body does not have the expected fields: {}",
                            err.body_text()
                        ),
                    ),
                    other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload-too-large",
                        "Body too large",
                        "the body is over the size limit; send a smaller body",
                    ),
                    other => Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-body",
                        "Unreadable body",
                        other.body_text(),
                    ),
                }
            }
        };
        Err(problem.with_optional_request_id(request_id.as_ref()))
    }
}

// --- Query and path extractors whose rejections are problems --------------------------------

/// A query-string extractor whose rejections are [`Problem`]s: 400 with the request id, so a
/// bad parameter (`?count=abc`, `?count=-1`, `?count=`) gets the same error body as every other
/// error instead of axum's plain-text rejection.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(extractor_problem(
                parts,
                rejection.status(),
                "Invalid query string",
                format!(
                    "{}; fix the query parameters (see /swagger for their types)",
                    rejection.body_text()
                ),
            )),
        }
    }
}

/// A path-parameter extractor whose rejections are [`Problem`]s: 400 with the request id for a
/// segment that does not decode (bad percent-encoding, not UTF-8, wrong type), instead of
/// axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(extractor_problem(
                parts,
                rejection.status(),
                "Invalid path parameter",
                format!(
                    "{}; fix the URL path (see /swagger for its parameters)",
                    rejection.body_text()
                ),
            )),
        }
    }
}

/// The problem for an extractor rejection: 400 for anything the client sent; a 5xx rejection
/// (a route declared without the parameter its handler extracts) is a bug of the service and
/// stays a 500 saying so.
fn extractor_problem(
    parts: &axum::http::request::Parts,
    status: StatusCode,
    title: &str,
    detail: String,
) -> Problem {
    let problem = if status.is_server_error() {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("the route does not match its handler ({detail}); report this as a bug"),
        )
    } else {
        Problem::new(StatusCode::BAD_REQUEST, "validation", title, detail)
    };
    match parts.extensions.get::<RequestId>() {
        Some(id) => problem.with_request_id(id),
        None => problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_bounded_and_safe() {
        assert!(validate_request_id("lt-1-42").is_ok());
        assert!(validate_request_id("a.b_c:d-e").is_ok());
        assert!(validate_request_id("").is_err());
        assert!(validate_request_id(&"a".repeat(129)).is_err());
        assert!(validate_request_id("a b").is_err());
        assert!(validate_request_id("a\nb").is_err());
    }

    #[test]
    fn method_labels_are_bounded() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ] {
            assert_eq!(method_label(&method), method.as_str());
        }
        let made_up = Method::from_bytes("X".repeat(200).as_bytes()).expect("a token"); // invariant: test code; a failure here is the test failing
        assert_eq!(method_label(&made_up), "other");
        assert_eq!(
            method_label(&Method::from_bytes(b"get").expect("a token")), // invariant: test code; a failure here is the test failing
            "other"
        );
    }

    fn parts_with_request_id(value: &str) -> Parts {
        let mut headers = HeaderMap::new();
        headers.insert(
            REQUEST_ID_HEADER.clone(),
            HeaderValue::from_str(value).expect("header value"), // invariant: test code; a failure here is the test failing
        );
        let (request_id, invalid) = request_id_from(&headers);
        let mut request = axum::http::Request::new(());
        request.extensions_mut().insert(request_id);
        if let Some(invalid) = invalid {
            request.extensions_mut().insert(invalid);
        }
        request.into_parts().0
    }

    #[tokio::test]
    async fn a_valid_request_id_is_kept() {
        let mut parts = parts_with_request_id("lt-1-42");
        let id = RequestId::from_request_parts(&mut parts, &())
            .await
            .expect("valid id"); // invariant: test code; a failure here is the test failing
        assert_eq!(id.as_str(), "lt-1-42");
    }

    #[tokio::test]
    async fn an_invalid_request_id_is_replaced_and_refused_by_the_extractor() {
        let mut parts = parts_with_request_id("bad id!");
        let fresh = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .expect("a fresh id for everyone else"); // invariant: test code; a failure here is the test failing
        assert!(uuid::Uuid::parse_str(fresh.as_str()).is_ok());
        let problem = RequestId::from_request_parts(&mut parts, &())
            .await
            .expect_err("API handlers refuse it");
        assert_eq!(problem.status, 400);
        assert_eq!(
            problem.problem_type,
            "urn:problem:broker:invalid-request-id"
        );
        assert_eq!(problem.request_id.as_deref(), Some(fresh.as_str()));
        assert!(
            problem.detail.contains("X-Request-Id"),
            "{}",
            problem.detail
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_is_a_408_problem() {
        struct Stalled;
        impl axum::body::HttpBody for Stalled {
            type Data = axum::body::Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<
                Option<Result<hyper::body::Frame<axum::body::Bytes>, std::convert::Infallible>>,
            > {
                std::task::Poll::Pending
            }
        }
        let body = crate::server::TimedBody::new(Stalled, std::time::Duration::from_secs(30));
        let mut request = axum::http::Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::new(body))
            .expect("request"); // invariant: test code; a failure here is the test failing
        request.extensions_mut().insert(RequestId("slow-1".into()));
        let problem = match ApiJson::<serde_json::Value>::from_request(request, &()).await {
            Ok(_) => panic!("a stalled body cannot be parsed"),
            Err(problem) => problem,
        };
        assert_eq!(problem.status, 408);
        assert_eq!(problem.problem_type, "urn:problem:broker:body-timeout");
        assert_eq!(problem.request_id.as_deref(), Some("slow-1"));
    }

    #[test]
    fn problem_sets_content_type_retry_after_and_id() {
        let problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Overloaded",
            "try later",
        )
        .with_request_id(&RequestId("r1".into()))
        .retry_after(2);
        let response = problem.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[&REQUEST_ID_HEADER], "r1");
    }
}
