//! A small real HTTP upstream for the forwarding tests and the compose demo: echoes what it
//! gets, answers any status, is slow or large on request, and counts what it saw.
//!
//! The first path segment named below decides, wherever it is in the path (`/api/status/404`
//! works as `/status/404`, so routes need not strip their prefix); any other path echoes.
//!
//! - `/echo/...` (any method): the request body back unchanged, with `x-echo-method`,
//!   `x-echo-path` (path and query) and `x-echo-attempt` (the `X-Delivery-Attempt` it got),
//!   plus two `x-multi` headers, `server: echo-upstream` and a hop-by-hop `x-hop` named in
//!   `Connection`.
//! - `/inspect/...`: the request as JSON: method, path, headers (non-UTF-8 values as `hex:`).
//! - `/status/{code}`: that status, body `status {code}`.
//! - `/slow?ms=N`: answers after N ms; counts requests dropped before that in `cancelled`.
//! - `/big?bytes=N`: a body of N bytes.
//! - `/stats`: `{"requests": n, "cancelled": n, "attempts": {"<x-request-id>": [attempts…]}}`.
//! - `/health/ready`, `/health/live`: 200.
//!
//! LISTEN_ADDR (default 127.0.0.1:8080) says where it listens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    cancelled: AtomicU64,
    attempts: Mutex<HashMap<String, Vec<String>>>,
}

type Shared = Arc<Stats>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let stats: Shared = Arc::default();
    let app = Router::new()
        .route("/health/ready", get(|| async { "ok" }))
        .route("/health/live", get(|| async { "ok" }))
        .route("/stats", get(stats_handler))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(stats.clone(), count))
        .with_state(stats);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("echo-upstream: cannot listen on {addr} (LISTEN_ADDR): {err}");
            std::process::exit(1);
        }
    };
    eprintln!("echo-upstream listening on {addr}");
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    {
        eprintln!("echo-upstream: {err}");
    }
}

async fn count(
    State(stats): State<Shared>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_string();
    if !path.starts_with("/health") && path != "/stats" {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = header_text(request.headers(), "x-request-id") {
            let attempt = header_text(request.headers(), "x-delivery-attempt").unwrap_or_default();
            if let Ok(mut attempts) = stats.attempts.lock() {
                attempts.entry(id).or_default().push(attempt);
            }
        }
    }
    next.run(request).await
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_string)
}

async fn stats_handler(State(stats): State<Shared>) -> Response {
    let attempts = stats.attempts.lock().map(|a| a.clone()).unwrap_or_default();
    axum::Json(serde_json::json!({
        "requests": stats.requests.load(Ordering::Relaxed),
        "cancelled": stats.cancelled.load(Ordering::Relaxed),
        "attempts": attempts,
    }))
    .into_response()
}

/// Picks the behaviour by the first known segment of the path.
async fn dispatch(
    State(stats): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let segments: Vec<String> = request
        .uri()
        .path()
        .split('/')
        .map(str::to_string)
        .collect();
    for (i, segment) in segments.iter().enumerate() {
        match segment.as_str() {
            "status" => {
                let code = segments
                    .get(i + 1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(400);
                return status(code);
            }
            "slow" => return slow(stats, &query).await,
            "big" => return big(&query),
            "inspect" => return inspect(request),
            "echo" => break,
            _ => {}
        }
    }
    echo(request).await
}

async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    if let Some(ct) = parts.headers.get("content-type") {
        headers.insert("content-type", ct.clone());
    }
    if let Ok(v) = HeaderValue::from_str(parts.method.as_str()) {
        headers.insert("x-echo-method", v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Ok(v) = HeaderValue::from_str(path) {
        headers.insert("x-echo-path", v);
    }
    if let Some(v) = parts.headers.get("x-delivery-attempt") {
        headers.insert("x-echo-attempt", v.clone());
    }
    headers.append("x-multi", HeaderValue::from_static("a"));
    headers.append("x-multi", HeaderValue::from_static("b"));
    if let Ok(v) = HeaderValue::from_bytes(b"caf\xe9") {
        headers.insert("x-latin", v);
    }
    headers.insert("server", HeaderValue::from_static("echo-upstream"));
    headers.insert("connection", HeaderValue::from_static("x-hop"));
    headers.insert("x-hop", HeaderValue::from_static("must-not-pass"));
    response
}

fn inspect(request: Request) -> Response {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let text = match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => text.to_string(),
                Err(_) => format!(
                    "hex:{}",
                    value
                        .as_bytes()
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                ),
            };
            (name.as_str().to_string(), text)
        })
        .collect();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    axum::Json(serde_json::json!({
        "method": request.method().as_str(),
        "path": path,
        "headers": headers,
    }))
    .into_response()
}

fn status(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("status {code}")).into_response()
}

/// Counts a request whose future is dropped before it finished (the caller went away).
struct CancelGuard {
    stats: Shared,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn slow(stats: Shared, q: &HashMap<String, String>) -> Response {
    let ms = q
        .get("ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000);
    let mut guard = CancelGuard { stats, done: false };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    guard.done = true;
    format!("slept {ms} ms").into_response()
}

fn big(q: &HashMap<String, String>) -> Response {
    let bytes = q
        .get("bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(256 << 20);
    Bytes::from(vec![b'x'; bytes]).into_response()
}
