//! Forwarded routes: any request under a configured prefix goes, unchanged, through its
//! queue to a proxy's upstream, and the upstream's response comes back unchanged. Hop-by-hop
//! headers stay here; `X-Forwarded-For`/`-Proto`/`-Host` and `Via` are added.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use shared::http::{Problem, RequestId};
use shared::protocol::{HttpRequestHead, Operation, ReplyStatus};

use crate::broker::{Call, Queue};
use crate::client_key::TrustedProxies;
use crate::error::ApiError;
use crate::forwarding::RouteConfig;
use crate::routes::weather::{count_refusal, requested_timeout, traceparent};
use crate::state::AppState;

/// A configured route with its queue (request stream and sampled state).
pub struct ForwardRoute {
    /// Prefix, queue and per-route settings.
    pub config: RouteConfig,
    /// Where its requests go.
    pub queue: Queue,
    /// Peers whose `X-Forwarded-Proto` / `-Host` are believed (TRUSTED_PROXIES).
    pub trusted: TrustedProxies,
    /// Body bytes all forwarded requests may hold at once (FORWARD_BUFFER_BYTES), in KiB
    /// permits; shared by every route.
    pub buffer: Arc<tokio::sync::Semaphore>,
}

/// KiB permits a body of up to `bytes` needs.
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .max(1)
}

pub use shared::protocol::is_hop_by_hop;

/// Handles one request on `route`.
pub async fn handle(
    state: Arc<AppState>,
    route: Arc<ForwardRoute>,
    request: Request<Body>,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let request_id = match RequestId::from_request_parts(&mut parts, &()).await {
        Ok(id) => id,
        Err(problem) => return problem.into_response(),
    };
    let result = async {
        let config = &route.config;
        if let Some(methods) = &config.methods
            && !methods.contains(&parts.method)
        {
            return Err(method_not_allowed(config, &parts.method));
        }
        check_path(&parts.uri)?;
        let cap = config.timeout.unwrap_or(state.request_timeout);
        let timeout = requested_timeout(&parts.headers, cap)?;
        // Admitted before the body is read: a refused request costs no memory.
        let _in_flight = state.admission.admit(&route.queue, timeout)?;
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > config.max_body_bytes as u64) {
            return Err(body_too_large(config));
        }
        // What the body will take: its declared or known length (0 for a GET without a
        // body), else (chunked) the route's limit; given back down to its real size once read,
        // and wholly once the request is in Redis.
        let known = declared.or_else(|| axum::body::HttpBody::size_hint(&body).exact());
        let reserve = known.unwrap_or(config.max_body_bytes as u64);
        let mut buffer = match reserve {
            0 => None,
            _ => Some(
                route
                    .buffer
                    .clone()
                    .try_acquire_many_owned(kib(reserve))
                    .map_err(|_| buffer_full())?,
            ),
        };
        let body = match axum::body::to_bytes(body, config.max_body_bytes).await {
            Ok(body) => body,
            Err(err) => return Err(body_error(config, err)),
        };
        if let Some(permit) = buffer.as_mut() {
            let excess = permit
                .num_permits()
                .saturating_sub(kib(body.len() as u64) as usize);
            drop(permit.split(excess));
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let upstream_path = match path.split_once('?') {
            Some((p, q)) => format!("{}?{q}", config.upstream_path(p)),
            None => config.upstream_path(path).into_owned(),
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let head = HttpRequestHead {
            method: parts.method.as_str().to_string(),
            path: upstream_path,
            headers: forwarded_headers(&parts.headers, peer, &route.trusted),
        };
        let reply = state
            .broker
            .call(Call {
                request_id: request_id.as_str(),
                queue: &route.queue,
                operation: Operation::Http,
                payload: body,
                timeout,
                traceparent: traceparent(&parts.headers),
                http: Some(head),
                hold: buffer.map(|permit| Box::new(permit) as Box<dyn std::any::Any + Send>),
            })
            .await
            .inspect_err(count_refusal)?;
        match (reply.status, reply.http) {
            (ReplyStatus::Ok, Some(http)) => Ok(upstream_response(
                http,
                reply.payload,
                parts.method == axum::http::Method::HEAD,
            )),
            (ReplyStatus::Ok, None) => Err(ApiError::Call(crate::broker::CallError::InvalidReply(
                "an ok reply to a forwarded request carries no http_status".into(),
            ))),
            (ReplyStatus::Error { code, message }, _) => {
                static PROXY_ERROR: shared::telemetry::LogLimiter =
                    shared::telemetry::LogLimiter::new(5);
                if let Some(suppressed) = PROXY_ERROR.check() {
                    tracing::warn!(
                        code,
                        message,
                        proxy = reply.proxy,
                        suppressed,
                        route = config.prefix,
                        "forwarding failed"
                    );
                }
                Err(ApiError::Proxy { code, message })
            }
        }
    };
    match result.await {
        Ok(response) => response,
        Err(err) => {
            let mut response = err.into_problem(&request_id).into_response();
            if response.status() == StatusCode::METHOD_NOT_ALLOWED
                && let Some(methods) = &route.config.methods
            {
                let allowed: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                    response
                        .headers_mut()
                        .insert(axum::http::header::ALLOW, value);
                }
            }
            response
        }
    }
}

/// The request headers the upstream gets: end-to-end ones unchanged and in order, plus
/// `X-Forwarded-For` (the peer appended), `X-Forwarded-Proto`, `X-Forwarded-Host` and `Via`.
fn forwarded_headers(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &TrustedProxies,
) -> Vec<(String, Bytes)> {
    let named = shared::protocol::connection_tokens(
        headers
            .get_all(axum::http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let from_trusted = peer.is_some_and(|p| trusted.contains(p.ip().to_canonical()));
    let mut out: Vec<(String, Bytes)> = Vec::with_capacity(headers.len() + 4);
    let mut forwarded_for: Vec<String> = Vec::new();
    let mut via: Vec<String> = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        if is_hop_by_hop(name) || named.iter().any(|n| n == name) {
            continue;
        }
        match name {
            "x-forwarded-for" => {
                if let Ok(v) = value.to_str() {
                    forwarded_for.push(v.to_string());
                }
                continue;
            }
            "via" => {
                if let Ok(v) = value.to_str() {
                    via.push(v.to_string());
                }
                continue;
            }
            // Believed only from a trusted proxy (it terminated TLS or saw the real host).
            "x-forwarded-proto" | "x-forwarded-host" if !from_trusted => continue,
            _ => {}
        }
        out.push((name.to_string(), Bytes::copy_from_slice(value.as_bytes())));
    }
    if let Some(peer) = peer {
        forwarded_for.push(peer.ip().to_canonical().to_string());
    }
    if !forwarded_for.is_empty() {
        out.push(("x-forwarded-for".into(), forwarded_for.join(", ").into()));
    }
    if !out.iter().any(|(n, _)| n == "x-forwarded-proto") {
        out.push(("x-forwarded-proto".into(), Bytes::from_static(b"http")));
    }
    if !out.iter().any(|(n, _)| n == "x-forwarded-host")
        && let Some(host) = headers.get(axum::http::header::HOST)
    {
        out.push((
            "x-forwarded-host".into(),
            Bytes::copy_from_slice(host.as_bytes()),
        ));
    }
    via.push("1.1 ingress".into());
    out.push(("via".into(), via.join(", ").into()));
    out
}

/// The upstream's response, with its status, end-to-end headers and body.
/// For `HEAD`, the upstream's `Content-Length` is kept: it describes the body a `GET` would get.
fn upstream_response(
    http: shared::protocol::HttpResponseHead,
    body: Bytes,
    head: bool,
) -> Response {
    let status = StatusCode::from_u16(http.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in http.headers {
        // The request-id middleware sets X-Request-Id itself.
        let keep = head && name == "content-length";
        if (is_hop_by_hop(&name) && !keep) || name == "x-request-id" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

fn method_not_allowed(route: &RouteConfig, method: &axum::http::Method) -> ApiError {
    let allowed: Vec<&str> = route.methods.iter().flatten().map(|m| m.as_str()).collect();
    ApiError::Status {
        problem: Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!(
                "route `{}` accepts {} only, not {method}",
                route.prefix,
                allowed.join(", ")
            ),
        ),
    }
}

fn body_error(route: &RouteConfig, err: axum::Error) -> ApiError {
    if let Some(timeout) = shared::server::body_read_timeout_in(&err) {
        return ApiError::Status {
            problem: Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                format!("{timeout}; send the whole body right after the headers"),
            ),
        };
    }
    let too_large = std::error::Error::source(&err)
        .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
        || err.to_string().contains("length limit");
    if too_large {
        body_too_large(route)
    } else {
        ApiError::Status {
            problem: Problem::new(
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "Body could not be read",
                format!("the request body could not be read: {err}; send it again"),
            ),
        }
    }
}

/// Refuses `.` and `..` path segments, plain or percent-encoded: passed on, they would let a
/// client step out of the route's prefix (or the upstream's base path) on an upstream that
/// resolves them.
fn check_path(uri: &axum::http::Uri) -> Result<(), ApiError> {
    // Decoded as a lenient upstream might: %2e as `.`, %2f and %5c and `\` as separators,
    // and `;params` dropped (`..;` is `..` to some servers).
    let decoded = uri
        .path()
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    let dot_segment = decoded.split('/').any(|segment| {
        let segment = segment.split(';').next().unwrap_or_default();
        segment == "." || segment == ".."
    });
    if dot_segment {
        return Err(ApiError::Status {
            problem: Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-path",
                "Path with dot segments",
                "the path contains a `.` or `..` segment (plain or percent-encoded), which could step out of the route; send the resolved path",
            ),
        });
    }
    Ok(())
}

fn body_too_large(route: &RouteConfig) -> ApiError {
    ApiError::Status {
        problem: Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Body too large",
            format!(
                "route `{}` accepts bodies up to {} bytes; send a smaller body (the limit is the route's max_body_bytes in ROUTES_FILE, 1 MiB by default)",
                route.prefix, route.max_body_bytes
            ),
        ),
    }
}

fn buffer_full() -> ApiError {
    metrics::counter!("ingress_rejections_total", "reason" => "buffer_full").increment(1);
    ApiError::Status {
        problem: Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many request bodies in flight",
            "this instance holds as many forwarded request bodies as FORWARD_BUFFER_BYTES allows; the request was not read or queued; retry after the indicated delay",
        )
        .retry_after(1),
    }
}
