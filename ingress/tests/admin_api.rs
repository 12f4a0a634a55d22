//! The proxy's admin API: the endpoints that change the proxy need the bearer token, the
//! read-only ones stay open, and FAULT_INJECTION=off refuses fault changes and injects nothing.

mod common;

use common::*;
use serde_json::{Value, json};
use testkit::{RedisServer, Service};

/// Every mutating admin endpoint, and the status it answers once past the guard on an empty
/// dead-letter stream (404: the guard let it through to a handler that found nothing).
const MUTATING: &[(&str, &str, u16)] = &[
    ("POST", "/api/config", 200),
    ("POST", "/api/config/reset", 200),
    ("POST", "/api/dead-letters/replay", 200),
    ("POST", "/api/dead-letters/1-0/replay", 404),
    ("DELETE", "/api/dead-letters/1-0", 404),
    ("DELETE", "/api/dead-letters", 204),
];

/// Read-only endpoints: open with or without a token.
const READ_ONLY: &[&str] = &[
    "/WeatherForecast/status",
    "/api/config",
    "/api/dead-letters",
    "/health/live",
    "/health/ready",
    "/healthz",
    "/metrics",
    "/swagger/",
    "/api-docs/openapi.json",
];

fn request(
    http: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{base}{path}");
    match method {
        // An empty update is valid for /api/config; the replay endpoints ignore the body.
        "POST" => http.post(url).json(&json!({})),
        "DELETE" => http.delete(url),
        other => panic!("no {other} in this test"),
    }
}

async fn assert_read_only_routes_open(http: &reqwest::Client, base: &str) {
    for path in READ_ONLY {
        let response = http.get(format!("{base}{path}")).send().await.expect("GET");
        assert_eq!(response.status(), 200, "GET {path} needs no token");
    }
}

#[tokio::test]
async fn without_a_token_configured_changes_are_refused_with_403_saying_how_to_enable_them() {
    let redis = RedisServer::start().await;
    let proxy = Service::start("proxy", &[("REDIS_URL", redis.url())]).await;
    let http = reqwest::Client::new();
    for (method, path, _) in MUTATING {
        for token in [None, Some(ADMIN_TOKEN)] {
            let mut builder = request(&http, &proxy.url, method, path);
            if let Some(token) = token {
                builder = builder.bearer_auth(token);
            }
            let body = assert_problem(builder.send().await.expect("send"), 403).await;
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains("ADMIN_TOKEN_FILE"),
                "{method} {path}: says how to enable: {body}"
            );
        }
    }
    assert_read_only_routes_open(&http, &proxy.url).await;
}

#[tokio::test]
async fn with_a_token_configured_only_the_right_bearer_token_gets_through() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write token file");
    let proxy = Service::start(
        "proxy",
        &[
            ("REDIS_URL", redis.url()),
            ("ADMIN_TOKEN_FILE", token_file.display().to_string()),
            ("PROCESSING_DELAY_MS", "0".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    for (method, path, expected) in MUTATING {
        let missing = request(&http, &proxy.url, method, path)
            .send()
            .await
            .expect("send");
        let challenge = missing
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert!(
            challenge
                .as_deref()
                .is_some_and(|c| c.starts_with("Bearer")),
            "{method} {path} without a token: WWW-Authenticate {challenge:?}"
        );
        assert_problem(missing, 401).await;

        for wrong in [
            request(&http, &proxy.url, method, path).bearer_auth("test-admin-token-0123456780"),
            request(&http, &proxy.url, method, path).basic_auth("admin", Some(ADMIN_TOKEN)),
        ] {
            let response = wrong.send().await.expect("send");
            assert!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.starts_with("Bearer")),
                "{method} {path}: challenge on a wrong token"
            );
            assert_problem(response, 401).await;
        }

        let right = request(&http, &proxy.url, method, path)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("send");
        assert_eq!(right.status(), *expected, "{method} {path} with the token");
    }
    assert_read_only_routes_open(&http, &proxy.url).await;
    let logs = proxy.logs();
    assert!(
        !logs.contains(ADMIN_TOKEN),
        "the token never reaches the log"
    );

    // Swagger UI offers the bearer scheme on exactly the protected operations.
    let doc: Value = http
        .get(format!("{}/api-docs/openapi.json", proxy.url))
        .send()
        .await
        .expect("GET openapi")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path) in [
        ("post", "/api/config"),
        ("post", "/api/config/reset"),
        ("post", "/api/dead-letters/replay"),
        ("post", "/api/dead-letters/{id}/replay"),
        ("delete", "/api/dead-letters/{id}"),
        ("delete", "/api/dead-letters"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(
            operation["security"],
            json!([{"bearer": []}]),
            "{method} {path}"
        );
        assert!(operation["responses"]["401"].is_object(), "{method} {path}");
        assert!(operation["responses"]["403"].is_object(), "{method} {path}");
    }
    for (method, path) in [("get", "/api/config"), ("get", "/api/dead-letters")] {
        assert!(
            doc["paths"][path][method]["security"].is_null(),
            "{method} {path} is open"
        );
    }
}

#[tokio::test]
async fn fault_injection_off_refuses_changes_and_injects_nothing() {
    let stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "0".into()),
            ("FAULT_INJECTION", "off".into()),
        ],
        ..Default::default()
    })
    .await;
    let proxy = &stack.proxies[0];
    let http = &stack.http;
    for path in ["/api/config", "/api/config/reset"] {
        let refused = http
            .post(format!("{}{path}", proxy.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"processingErrorRate": 1.0, "crashBeforeAckRate": 0.0}))
            .send()
            .await
            .expect("POST");
        let body = assert_problem(refused, 403).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("FAULT_INJECTION=off"),
            "{path}: {body}"
        );
    }
    // Without the token the guard answers first: nothing about the proxy is revealed.
    let anonymous = http
        .post(format!("{}/api/config", proxy.url))
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    assert_problem(anonymous, 401).await;
    // The dead-letter admin is not affected by the switch.
    let purge = http
        .delete(format!("{}/api/dead-letters", proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(purge.status(), 204);

    let config: Value = http
        .get(format!("{}/api/config", proxy.url))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(config["processingErrorRate"], 0.0);
    for (city, location) in CITIES {
        let response = stack.post_city(city, location, None).await;
        assert_forecast(response, city, location, None).await;
    }
    assert_eq!(proxy.metric_sum("proxy_faults_injected_total").await, 0.0);
}
