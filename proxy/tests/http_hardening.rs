//! The proxy's HTTP side against the real binary over raw TCP sockets: slow headers, a body
//! that never completes and idle keep-alive connections are closed on time, and request ids
//! never fail its probes.

use std::time::{Duration, Instant};

/// The proxies here are started with this admin token (the admin routes need it).
const ADMIN_TOKEN: &str = "http-test-admin-token-01";

use testkit::raw_http::{connect, get, read_response, send, still_open_after, wait_closed};
use testkit::{RedisServer, Service, wait_until};

const GENEROUS: Duration = Duration::from_secs(15);

async fn proxy(redis: &RedisServer) -> Service {
    Service::start(
        "proxy",
        &[
            ("REDIS_URL", redis.url()),
            ("PROCESSING_DELAY_MS", "0".into()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("HTTP_HEADER_READ_TIMEOUT", "300ms".into()),
            ("HTTP_BODY_READ_TIMEOUT", "300ms".into()),
            ("HTTP_IDLE_TIMEOUT", "3s".into()),
        ],
    )
    .await
}

async fn wait_timeouts(service: &Service, phase: &str) {
    let metric = format!("http_connection_timeouts_total{{phase=\"{phase}\"}}");
    wait_until(&format!("{metric} >= 1"), GENEROUS, || async {
        service.metric_sum(&metric).await >= 1.0
    })
    .await;
}

#[tokio::test]
async fn slow_headers_unfinished_bodies_and_idle_connections_are_closed() {
    let redis = RedisServer::start().await;
    let proxy = proxy(&redis).await;
    let started = Instant::now();

    let mut half = connect(&proxy.url).await;
    send(&mut half, b"GET /health/live HTTP/1.1\r\nHost: te").await;
    let mut stalled = connect(&proxy.url).await;
    send(
        &mut stalled,
        b"POST /api/config HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer http-test-admin-token-01\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"processingErrorRate\"",
    )
    .await;
    wait_closed(&mut half, GENEROUS).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let received = wait_closed(&mut stalled, GENEROUS).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("urn:problem:broker:body-timeout"), "{text}");

    let mut idle = connect(&proxy.url).await;
    send(&mut idle, &get("/health/live")).await;
    assert_eq!(read_response(&mut idle, GENEROUS).await.status, 200);
    assert!(
        still_open_after(&mut idle, Duration::from_millis(600)).await,
        "an idle connection is not cut by the header timeout"
    );
    wait_closed(&mut idle, GENEROUS).await;

    for phase in ["header", "body", "idle"] {
        wait_timeouts(&proxy, phase).await;
    }
    let response = reqwest::get(format!("{}/health/live", proxy.url))
        .await
        .expect("still serving");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_malformed_request_id_never_fails_probes_and_is_400_on_the_api() {
    let redis = RedisServer::start().await;
    let proxy = proxy(&redis).await;
    let http = reqwest::Client::new();
    for path in [
        "/health/live",
        "/health/ready",
        "/healthz",
        "/metrics",
        "/WeatherForecast/status",
    ] {
        let response = http
            .get(format!("{}{path}", proxy.url))
            .header("X-Request-Id", "bad id!")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{path}");
        assert_ne!(response.headers()["x-request-id"], "bad id!");
    }
    let response = http
        .get(format!("{}/nowhere", proxy.url))
        .header("X-Request-Id", "bad id!")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    for request in [
        http.get(format!("{}/api/config", proxy.url)),
        http.get(format!("{}/api/dead-letters", proxy.url)),
        http.post(format!("{}/api/config", proxy.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"processingErrorRate": 0.5})),
    ] {
        let response = request
            .header("X-Request-Id", "bad id!")
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400);
        let header_id = response.headers()["x-request-id"]
            .to_str()
            .expect("ASCII id")
            .to_string();
        let body: serde_json::Value = response.json().await.expect("problem body");
        assert_eq!(body["type"], "urn:problem:broker:invalid-request-id");
        assert_eq!(body["requestId"], header_id.as_str());
    }
    // The refused update changed nothing.
    let config: serde_json::Value = http
        .get(format!("{}/api/config", proxy.url))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("JSON");
    assert_eq!(config["processingErrorRate"], 0.0);
}
