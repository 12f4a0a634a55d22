//! Client input that must not grow metrics, break probes or slip past validation: made-up
//! methods and paths, malformed request ids, and JSON that is not an object.

mod common;

use common::*;
use reqwest::Method;
use reqwest::header::HeaderValue;

const BAD_IDS: &[&[u8]] = &[
    b"bad id!",
    b"semi;colon",
    &[b'x'; 129],
    b"caf\xc3\xa9",
    b"\xff",
];

fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("a header value")
}

/// The fresh id the service answered with: present, a UUID, not the client's.
fn fresh_id(response: &reqwest::Response) -> String {
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("X-Request-Id in the response")
        .to_string();
    assert_eq!(id.len(), 36, "a generated UUID, got {id}");
    assert_eq!(id.matches('-').count(), 4, "a generated UUID, got {id}");
    id
}

#[tokio::test]
async fn made_up_methods_and_paths_leave_the_request_metrics_bounded() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let url = &stack.ingress().url;
    for i in 0..300 {
        let method = format!("M{i}{}", "X".repeat(i % 200));
        let method = Method::from_bytes(method.as_bytes()).expect("a token");
        let path = match i % 3 {
            0 => format!("/made/up/{i}"),
            1 => "/WeatherForecast/city".to_string(),
            _ => "/health/live".to_string(),
        };
        let response = stack
            .http
            .request(method, format!("{url}{path}"))
            .send()
            .await
            .expect("send");
        let expected = if i % 3 == 0 { 404 } else { 405 };
        assert_problem(response, expected).await;
    }
    for i in 0..100 {
        let response = stack
            .http
            .get(format!("{url}/nowhere/{i}"))
            .send()
            .await
            .expect("send");
        assert_problem(response, 404).await;
    }

    let metrics = stack
        .http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("http_requests_total{"))
        .collect();
    assert!(
        series.len() <= 12,
        "{} series of http_requests_total:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(
        series
            .iter()
            .any(|line| line.contains("method=\"other\"") && line.contains("route=\"unmatched\"")),
        "{}",
        series.join("\n")
    );
    assert!(!metrics.contains("M1X"), "a made-up method became a label");
    assert!(
        !metrics.contains("/made/up"),
        "a made-up path became a label"
    );
    assert!(
        metrics.len() < 200_000,
        "/metrics is {} bytes",
        metrics.len()
    );
}

#[tokio::test]
async fn a_malformed_request_id_never_fails_health_or_metrics() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let url = &stack.ingress().url;
    for bad in BAD_IDS {
        for path in ["/health/live", "/health/ready", "/healthz", "/metrics"] {
            let response = stack
                .http
                .get(format!("{url}{path}"))
                .header("X-Request-Id", header_value(bad))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 200, "{path} with X-Request-Id {bad:?}");
            fresh_id(&response);
        }
    }
}

#[tokio::test]
async fn a_malformed_request_id_keeps_404_and_405_and_is_400_on_the_api() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let url = &stack.ingress().url;
    let city = format!("{url}/WeatherForecast/city");
    for bad in BAD_IDS {
        let response = stack
            .http
            .get(format!("{url}/nowhere"))
            .header("X-Request-Id", header_value(bad))
            .send()
            .await
            .expect("send");
        let id = fresh_id(&response);
        let body = assert_problem(response, 404).await;
        assert_eq!(body["requestId"], id);

        let response = stack
            .http
            .delete(&city)
            .header("X-Request-Id", header_value(bad))
            .send()
            .await
            .expect("send");
        fresh_id(&response);
        assert_problem(response, 405).await;

        let response = stack
            .http
            .post(&city)
            .header("X-Request-Id", header_value(bad))
            .json(&serde_json::json!({"city": "Oslo"}))
            .send()
            .await
            .expect("send");
        let id = fresh_id(&response);
        let body = assert_problem(response, 400).await;
        assert_eq!(body["type"], "urn:problem:broker:invalid-request-id");
        assert_eq!(body["requestId"], id, "the 400 carries the fresh id");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("X-Request-Id")),
            "{body}"
        );

        let response = stack
            .http
            .get(format!("{url}/WeatherForecast"))
            .header("X-Request-Id", header_value(bad))
            .send()
            .await
            .expect("send");
        let id = fresh_id(&response);
        let body = assert_problem(response, 400).await;
        assert_eq!(body["type"], "urn:problem:broker:invalid-request-id");
        assert_eq!(body["requestId"], id);
    }
    let redis = stack.redis_client().await;
    assert_eq!(stream_len(&redis, REQUEST_STREAM).await, 0);
}

#[tokio::test]
async fn only_a_json_object_is_a_city_request() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    for body in [
        r#"["Oslo","Center"]"#,
        r#"["Oslo"]"#,
        r#""Oslo""#,
        "42",
        "null",
    ] {
        let response = stack
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let problem = assert_problem(response, 400).await;
        assert!(problem["requestId"].is_string(), "{problem}");
        if body.starts_with('[') {
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("JSON object")),
                "{body}: {problem}"
            );
        }
    }
    let redis = stack.redis_client().await;
    assert_eq!(stream_len(&redis, REQUEST_STREAM).await, 0);
}
