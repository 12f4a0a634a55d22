//! Per-client rate limits at the ingress: a burst over the limit gets 429 with `Retry-After`
//! and `RateLimit-*` headers and is counted; other clients keep their own buckets;
//! `X-Forwarded-For` counts only from trusted proxies; health and metrics are never limited.
//!
//! The rate is 1/min with bursts of 3, so no token can come back while a test runs.

mod common;

use common::*;
use serde_json::json;
use testkit::Service;

const LIMITED: &[(&str, &str)] = &[("RATE_LIMIT", "1/m"), ("RATE_LIMIT_BURST", "3")];

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// POST /WeatherForecast/city on `base` with extra headers.
async fn post(http: &reqwest::Client, base: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = http
        .post(format!("{base}/WeatherForecast/city"))
        .json(&json!({"city": "Oslo", "location": "Sentrum"}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST /WeatherForecast/city")
}

async fn assert_limited(response: reqwest::Response) {
    assert_eq!(header(&response, "ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(
        header(&response, "ratelimit-remaining").as_deref(),
        Some("0")
    );
    let retry_after: u64 = header(&response, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!(
        (1..=60).contains(&retry_after),
        "a token comes back within the minute: {retry_after}"
    );
    let reset: u64 = header(&response, "ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .expect("RateLimit-Reset in seconds");
    assert!(reset >= retry_after, "full only after the next token");
    let body = assert_problem(response, 429).await;
    assert_eq!(body["type"], "urn:problem:broker:rate-limited");
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_and_is_counted_while_other_clients_go_on() {
    let mut ingress_env: Vec<(&'static str, String)> =
        LIMITED.iter().map(|(k, v)| (*k, v.to_string())).collect();
    ingress_env.push(("RATE_LIMIT_KEY_HEADER", "X-Api-Key".into()));
    let stack = Stack::start(StackOptions {
        ingress_env,
        ..Default::default()
    })
    .await;
    let (http, base) = (&stack.http, &stack.ingress().url);

    for expected_remaining in ["2", "1", "0"] {
        let response = post(http, base, &[("X-Api-Key", "client-alpha")]).await;
        assert_eq!(
            header(&response, "ratelimit-remaining").as_deref(),
            Some(expected_remaining)
        );
        assert_eq!(header(&response, "ratelimit-limit").as_deref(), Some("3"));
        assert_forecast(response, "Oslo", "Sentrum", None).await;
    }
    assert_limited(post(http, base, &[("X-Api-Key", "client-alpha")]).await).await;
    let sample = http
        .get(format!("{base}/WeatherForecast"))
        .header("X-Api-Key", "client-alpha")
        .send()
        .await
        .expect("GET /WeatherForecast");
    assert_limited(sample).await;

    // Another key, and requests without the header (keyed by IP), have their own buckets.
    let other = post(http, base, &[("X-Api-Key", "client-beta")]).await;
    assert_eq!(other.status(), 200);
    let by_ip = post(http, base, &[]).await;
    assert_eq!(by_ip.status(), 200);

    // Probes, scrapers and Swagger are never limited, and carry no rate-limit headers.
    for _ in 0..5 {
        for path in [
            "/health/live",
            "/health/ready",
            "/healthz",
            "/metrics",
            "/swagger/",
        ] {
            let response = http
                .get(format!("{base}{path}"))
                .header("X-Api-Key", "client-alpha")
                .send()
                .await
                .expect("GET");
            assert_eq!(response.status(), 200, "{path}");
            assert!(header(&response, "ratelimit-limit").is_none(), "{path}");
        }
    }

    let service = stack.ingress();
    assert_eq!(
        service
            .metric_sum("ingress_rejections_total{reason=\"rate_limited\"}")
            .await,
        2.0
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    assert!(
        !metrics.contains("client-alpha") && !metrics.contains("127.0.0.1"),
        "no metric is labelled by client"
    );
}

#[tokio::test]
async fn x_forwarded_for_counts_only_when_the_peer_is_a_trusted_proxy() {
    let stack = Stack::start(StackOptions {
        ingresses: 0,
        ..Default::default()
    })
    .await;
    let start = |trusted: &str| {
        let mut env: Vec<(&str, String)> = vec![("REDIS_URL", stack.redis.url())];
        env.extend(LIMITED.iter().map(|(k, v)| (*k, v.to_string())));
        env.push(("TRUSTED_PROXIES", trusted.to_string()));
        async move { Service::start("ingress", &env).await }
    };
    let untrusting = start("").await;
    let trusting = start("10.0.0.0/8,127.0.0.1/32").await;
    let http = &stack.http;

    // From an untrusted peer the header is the client's own word: all four requests come
    // from 127.0.0.1, whatever they claim.
    for claimed in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        let response = post(http, &untrusting.url, &[("X-Forwarded-For", claimed)]).await;
        assert_eq!(response.status(), 200, "{claimed}");
    }
    assert_limited(post(http, &untrusting.url, &[("X-Forwarded-For", "203.0.113.4")]).await).await;

    // From a trusted peer the rightmost untrusted entry is the client; what the client wrote
    // further left proves nothing.
    for _ in 0..3 {
        let response = post(http, &trusting.url, &[("X-Forwarded-For", "203.0.113.1")]).await;
        assert_eq!(response.status(), 200);
    }
    assert_limited(
        post(
            http,
            &trusting.url,
            &[("X-Forwarded-For", "198.51.100.7, 203.0.113.1, 10.1.2.3")],
        )
        .await,
    )
    .await;
    let other = post(http, &trusting.url, &[("X-Forwarded-For", "203.0.113.2")]).await;
    assert_eq!(other.status(), 200, "another client behind the proxy");
    let direct = post(http, &trusting.url, &[]).await;
    assert_eq!(
        direct.status(),
        200,
        "the proxy's own address is a client too"
    );
}
