//! The HTTP forwarder (`UPSTREAM_URL`): sends each `http` request to the team's upstream
//! service with a pooled keep-alive client and hands back its response unchanged. The terminal
//! pool caps concurrent upstream calls (`TERMINALS`): that cap is the backpressure that
//! protects the backend.
//!
//! At-least-once: a proxy that dies after the upstream answered but before the reply was
//! written has its entry reclaimed, so the upstream can see the same request twice. It gets
//! `X-Request-Id` and `X-Delivery-Attempt` (1 on first delivery) to deduplicate.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shared::protocol::{HttpResponseHead, Operation};

use crate::handler::{BoxFuture, Handler, HandlerError, Request, Response};

/// Header telling the upstream how often this request has been delivered (1 = first time).
pub const DELIVERY_ATTEMPT_HEADER: &str = "x-delivery-attempt";
/// How long to wait before the first retry of a request that could not reach the upstream.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Attempts for a request that is safe to repeat (the first one included). Kept small, so a
/// down upstream is reported within a fraction of a second, not at the caller's deadline.
const MAX_ATTEMPTS: u32 = 3;

pub use shared::protocol::is_hop_by_hop;

/// Forwards `http` requests to one upstream base URL.
pub struct Forwarder {
    /// `scheme://authority` of the upstream.
    origin: String,
    /// Path prefix of the upstream URL without a trailing `/` (often empty).
    base_path: String,
    client: Client<HttpConnector, Full<Bytes>>,
    max_response_bytes: usize,
    /// The request stream served, the `queue` label of the upstream metrics (one per process).
    queue: String,
}

/// Why an `UPSTREAM_URL` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("UPSTREAM_URL `{0}` is not a URL: {1}")]
    Invalid(String, String),
    #[error(
        "UPSTREAM_URL `{0}`: only http:// upstreams are supported; put the proxy beside the service (same pod or host) or terminate TLS in a sidecar"
    )]
    UnsupportedScheme(String),
    #[error("UPSTREAM_URL `{0}` must not have a query or fragment")]
    HasQuery(String),
    #[error(
        "UPSTREAM_URL must not carry a user or password (they would end up in logs and are not sent); let the client's Authorization header pass through instead"
    )]
    HasCredentials,
}

impl Forwarder {
    /// A forwarder to `upstream` (e.g. `http://127.0.0.1:8080` or `http://svc:8080/base`),
    /// refusing upstream bodies over `max_response_bytes`.
    pub fn new(
        upstream: &str,
        max_response_bytes: usize,
        queue: &str,
    ) -> Result<Self, UpstreamUrlError> {
        let url = url::Url::parse(upstream)
            .map_err(|e| UpstreamUrlError::Invalid(upstream.into(), e.to_string()))?;
        if url.scheme() != "http" {
            return Err(UpstreamUrlError::UnsupportedScheme(upstream.into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(UpstreamUrlError::HasQuery(upstream.into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UpstreamUrlError::HasCredentials);
        }
        let Some(host) = url.host_str() else {
            return Err(UpstreamUrlError::Invalid(upstream.into(), "no host".into()));
        };
        let origin = match url.port() {
            Some(port) => format!("http://{host}:{port}"),
            None => format!("http://{host}"),
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            // Below the keep-alive timeout of common servers (Node: 5 s), so a request is
            // rarely sent on a connection the upstream is closing.
            .pool_idle_timeout(Duration::from_secs(4))
            .build(connector);
        Ok(Forwarder {
            origin,
            base_path: url.path().trim_end_matches('/').to_string(),
            client,
            max_response_bytes,
            queue: queue.to_string(),
        })
    }

    /// The upstream as configured, for the status endpoint and logs.
    pub fn upstream(&self) -> String {
        format!("{}{}", self.origin, self.base_path)
    }

    /// Builds the upstream request for one attempt.
    fn build(&self, request: &Request<'_>) -> Result<hyper::Request<Full<Bytes>>, HandlerError> {
        let entry = request.entry;
        let Some(head) = entry.http.as_ref() else {
            return Err(invalid("the entry has no method, path or headers"));
        };
        let method = Method::from_bytes(head.method.as_bytes())
            .map_err(|_| invalid(format!("`{}` is not an HTTP method", head.method)))?;
        if method == Method::CONNECT {
            // hyper would send `CONNECT host:port` and a 2xx would read as an open tunnel.
            return Err(invalid(
                "CONNECT is not forwarded: the proxy opens no tunnels",
            ));
        }
        let uri: Uri = format!("{}{}{}", self.origin, self.base_path, head.path)
            .parse()
            .map_err(|e| invalid(format!("path `{}` is not valid: {e}", head.path)))?;
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        let headers = builder
            .headers_mut()
            .ok_or_else(|| invalid("the request could not be built"))?;
        for (name, value) in &head.headers {
            if is_hop_by_hop(name) || name == "x-request-id" || name == DELIVERY_ATTEMPT_HEADER {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
            let value = HeaderValue::from_maybe_shared(value.clone())
                .map_err(|_| invalid(format!("the value of `{name}` is not valid")))?;
            headers.append(name, value);
        }
        if let Ok(id) = HeaderValue::from_str(&entry.request_id) {
            headers.insert("x-request-id", id);
        }
        headers.insert(
            DELIVERY_ATTEMPT_HEADER,
            HeaderValue::from(request.deliveries),
        );
        builder
            .body(Full::new(entry.payload.clone()))
            .map_err(|e| invalid(format!("the request could not be built: {e}")))
    }

    async fn forward(&self, request: Request<'_>) -> Result<Response, HandlerError> {
        if request.entry.operation != Operation::Http.as_str() {
            return Err(HandlerError::Invalid {
                code: "unknown_operation",
                message: format!(
                    "this proxy forwards `http` requests to {}; `{}` is served by a proxy without UPSTREAM_URL",
                    self.upstream(),
                    request.entry.operation
                ),
            });
        }
        let repeatable = is_repeatable(&request);
        let head = request
            .entry
            .http
            .as_ref()
            .is_some_and(|h| h.method == "HEAD");
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let response = loop {
            let upstream_request = self.build(&request)?;
            match self.client.request(upstream_request).await {
                Ok(response) => break response,
                Err(err) if is_invalid_response(&err) => {
                    // It answered, with something that is not HTTP/1.1: asking again gets the
                    // same, and the request may have been acted on. Not retried.
                    return Err(self.fail(
                        Failure::Invalid,
                        started,
                        format!(
                            "the upstream {} sent a response that is not valid HTTP/1.1: {}",
                            self.upstream(),
                            error_chain(&err)
                        ),
                    ));
                }
                Err(err) => {
                    // A failed connect never reached the upstream: safe for any method.
                    // Anything else may have: only for requests safe to repeat.
                    let retry = (repeatable || err.is_connect())
                        && attempt < MAX_ATTEMPTS
                        && tokio::time::Instant::now() + backoff < request.deadline;
                    if !retry {
                        return Err(self.fail(
                            Failure::Unavailable,
                            started,
                            format!(
                                "the upstream {} could not be reached ({}; {attempt} attempt{}): {}",
                                self.upstream(),
                                if err.is_connect() {
                                    "connect failed"
                                } else {
                                    "connection failed"
                                },
                                if attempt == 1 { "" } else { "s" },
                                error_chain(&err)
                            ),
                        ));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        };
        let (parts, body) = response.into_parts();
        // A final answer only: a 101 (the Upgrade header is not passed) or a code past 599
        // would be a broken response at the client.
        if !(200..=599).contains(&parts.status.as_u16()) {
            return Err(self.fail(
                Failure::Invalid,
                started,
                format!(
                    "the upstream {} answered status {}, which cannot be passed on",
                    self.upstream(),
                    parts.status.as_u16()
                ),
            ));
        }
        let too_large = || {
            self.fail(
                Failure::TooLarge,
                started,
                format!(
                    "the upstream's response body is larger than UPSTREAM_MAX_RESPONSE_BYTES ({} bytes)",
                    self.max_response_bytes
                ),
            )
        };
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        // A HEAD answer has no body, whatever length it declares.
        if !head && declared.is_some_and(|len| len > self.max_response_bytes as u64) {
            return Err(too_large());
        }
        let body = match Limited::new(body, self.max_response_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err)
                if err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(too_large());
            }
            Err(err) if has_parse_error(&*err) => {
                return Err(self.fail(
                    Failure::Invalid,
                    started,
                    format!(
                        "the upstream {} sent a response body that is not valid HTTP/1.1: {}",
                        self.upstream(),
                        error_chain(&*err)
                    ),
                ));
            }
            Err(err) => {
                return Err(self.fail(
                    Failure::Unavailable,
                    started,
                    format!(
                        "the upstream {} broke off its response: {}",
                        self.upstream(),
                        error_chain(&*err)
                    ),
                ));
            }
        };
        self.record(status_class(parts.status.as_u16()), started);
        let named_in_connection = shared::protocol::connection_tokens(
            parts
                .headers
                .get_all(hyper::header::CONNECTION)
                .iter()
                .map(|v| v.as_bytes()),
        );
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                // HEAD: the declared length describes the body a GET would get; keep it.
                let keep = head && *name == hyper::header::CONTENT_LENGTH;
                (keep || !is_hop_by_hop(name.as_str()))
                    && !named_in_connection.iter().any(|t| t == name.as_str())
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
            })
            .collect();
        Ok(Response {
            payload: body,
            http: Some(HttpResponseHead {
                status: parts.status.as_u16(),
                headers,
            }),
        })
    }
}

impl Handler for Forwarder {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Result<Response, HandlerError>> {
        Box::pin(self.forward(request))
    }
}

/// Safe to send again after a failure: GET, HEAD, OPTIONS, PUT, DELETE (idempotent by
/// RFC 9110), or any request carrying an `Idempotency-Key`.
fn is_repeatable(request: &Request<'_>) -> bool {
    let Some(head) = request.entry.http.as_ref() else {
        return false;
    };
    matches!(
        head.method.as_str(),
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
    ) || head
        .headers
        .iter()
        .any(|(name, _)| name == "idempotency-key")
}

fn invalid(message: impl Into<String>) -> HandlerError {
    HandlerError::Invalid {
        code: "invalid_request",
        message: message.into(),
    }
}

/// `2xx`, `4xx`… for the `status_class` label (bounded: four values; statuses outside
/// 200..=599 never get here, they are `invalid`).
fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// How an upstream call failed: each has one metric outcome and one error code.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// No HTTP response (connect failed, reset, closed, the body broke off).
    Unavailable,
    /// An answer that is not valid HTTP/1.1, or a status that cannot be passed on.
    Invalid,
    /// A body over UPSTREAM_MAX_RESPONSE_BYTES.
    TooLarge,
}

impl Failure {
    fn outcome(self) -> &'static str {
        match self {
            Failure::Unavailable => "unavailable",
            Failure::Invalid => "invalid",
            Failure::TooLarge => "too_large",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Failure::Unavailable => "upstream_unavailable",
            Failure::Invalid => "upstream_invalid_response",
            Failure::TooLarge => "upstream_response_too_large",
        }
    }
}

impl Forwarder {
    /// One upstream call in `proxy_upstream_seconds{queue, outcome}`: the status class, or
    /// `unavailable` / `too_large` / `invalid`. Retries are inside one call.
    fn record(&self, outcome: &'static str, started: Instant) {
        metrics::histogram!("proxy_upstream_seconds", "queue" => self.queue.clone(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
    }

    /// Records a failed call and makes its error reply.
    fn fail(&self, failure: Failure, started: Instant, message: String) -> HandlerError {
        self.record(failure.outcome(), started);
        HandlerError::Failed {
            code: failure.code(),
            message,
        }
    }
}

/// Whether the upstream answered with bytes that are not a valid HTTP/1.1 response (a bad
/// status line, malformed headers, a head over hyper's limit), as opposed to no answer at all.
/// A failed connect never is, whatever its io error kind (EINVAL is `InvalidInput` too).
fn is_invalid_response(err: &hyper_util::client::legacy::Error) -> bool {
    !err.is_connect() && std::error::Error::source(err).is_some_and(has_parse_error)
}

/// Whether `err` or one of its causes says the bytes were not valid HTTP/1.1: hyper's parse
/// error for a response head, or, for a body, the decoder's `InvalidData`/`InvalidInput`
/// (a chunk size or chunk end that cannot be read). A body that merely stops is
/// `UnexpectedEof` or a reset: the connection broke off, which is not this.
fn has_parse_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(cause) = current {
        if let Some(hyper_error) = cause.downcast_ref::<hyper::Error>()
            && (hyper_error.is_parse() || hyper_error.is_parse_status())
        {
            return true;
        }
        if let Some(io_error) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io_error.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        {
            return true;
        }
        current = cause.source();
    }
    false
}

/// The error and its causes on one line (hyper's top-level message alone says little).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_checked() {
        assert!(Forwarder::new("http://127.0.0.1:8080", 1, "q").is_ok());
        assert!(
            Forwarder::new("http://svc/base/", 1, "q")
                .is_ok_and(|f| f.upstream() == "http://svc/base")
        );
        for bad in [
            "https://svc",
            "svc:80",
            "http://svc/?a=1",
            "ftp://x",
            "http://u:p@svc",
        ] {
            assert!(Forwarder::new(bad, 1, "q").is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_recognised() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "host",
            "content-length",
        ] {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop("x-custom"));
    }
}
