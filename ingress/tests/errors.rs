//! Every error a client can meet: its status, its problem body, and that it comes promptly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::{Service, binary, free_port};

#[tokio::test]
async fn bad_input_gets_a_problem_body_with_the_right_status() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    let http = &stack.http;
    let json = |body: &str| {
        http.post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    let body = assert_problem(json("{\"city\":").send().await.expect("send"), 400).await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("JSON"),
        "{body}"
    );
    let body = assert_problem(
        json("{\"location\":\"x\"}").send().await.expect("send"),
        400,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("city"),
        "{body}"
    );
    assert_problem(json("{\"city\":\"   \"}").send().await.expect("send"), 400).await;
    assert_problem(json("{\"city\":42}").send().await.expect("send"), 400).await;
    let long = "a".repeat(101);
    let body = assert_problem(
        json(&format!("{{\"city\":\"{long}\"}}"))
            .send()
            .await
            .expect("send"),
        400,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap_or_default().contains("city"),
        "{body}"
    );
    let body = assert_problem(
        json(&format!("{{\"city\":\"Oslo\",\"location\":\"{long}\"}}"))
            .send()
            .await
            .expect("send"),
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("location"),
        "{body}"
    );

    // Headers.
    let body = assert_problem(
        json("{\"city\":\"Oslo\"}")
            .header("X-Request-Id", "bad id!")
            .send()
            .await
            .expect("send"),
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("X-Request-Id"),
        "{body}"
    );
    assert_problem(
        json("{\"city\":\"Oslo\"}")
            .header("X-Request-Id", "a".repeat(129))
            .send()
            .await
            .expect("send"),
        400,
    )
    .await;
    let body = assert_problem(
        json("{\"city\":\"Oslo\"}")
            .header("Request-Timeout", "soon")
            .send()
            .await
            .expect("send"),
        400,
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Request-Timeout"),
        "{body}"
    );

    // Size and media type.
    let huge = format!("{{\"city\":\"{}\"}}", "a".repeat(17 * 1024));
    assert_problem(json(&huge).send().await.expect("send"), 413).await;
    assert_problem(
        http.post(&url)
            .header("content-type", "text/plain")
            .body("{\"city\":\"Oslo\"}")
            .send()
            .await
            .expect("send"),
        415,
    )
    .await;
    assert_problem(
        http.post(&url)
            .body("{\"city\":\"Oslo\"}")
            .send()
            .await
            .expect("send"),
        415,
    )
    .await;

    // Unknown route and wrong method.
    assert_problem(
        http.get(format!("{}/nowhere", stack.ingress().url))
            .send()
            .await
            .expect("send"),
        404,
    )
    .await;
    assert_problem(http.delete(&url).send().await.expect("send"), 405).await;

    // None of it reached Redis.
    let redis = stack.redis_client().await;
    assert_eq!(stream_len(&redis, REQUEST_STREAM).await, 0);
}

#[tokio::test]
async fn a_request_without_a_reply_gets_504_and_is_never_processed() {
    let stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "3000".into()),
            ("TERMINALS", "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let redis = stack.redis_client().await;

    // A occupies the only terminal for 3 s.
    let slow = {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        tokio::spawn(async move {
            http.post(url)
                .json(&serde_json::json!({"city": "Rome", "location": "Trastevere"}))
                .send()
                .await
                .expect("POST A")
        })
    };
    testkit::wait_until("A in the terminal", Duration::from_secs(15), || {
        let redis = redis.clone();
        async move { group_pending(&redis).await == 1 }
    })
    .await;

    // B waits behind it with a 300 ms deadline.
    let started = Instant::now();
    let response = stack
        .http
        .post(format!("{}/WeatherForecast/city", stack.ingress().url))
        .header("Request-Timeout", "300ms")
        .header("X-Request-Id", "short-deadline")
        .json(&serde_json::json!({"city": "Oslo", "location": "Centre"}))
        .send()
        .await
        .expect("POST B");
    let elapsed = started.elapsed();
    let body = assert_problem(response, 504).await;
    assert_eq!(body["requestId"], "short-deadline");
    // Not before its deadline, and well before the 30 s default.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10),
        "504 after {elapsed:?}"
    );

    assert_forecast(slow.await.expect("A"), "Rome", "Trastevere", None).await;
    // B was withdrawn from the stream with its 504: no proxy ever reads it.
    testkit::wait_until("request stream empty", Duration::from_secs(15), || {
        let redis = redis.clone();
        async move { stream_len(&redis, REQUEST_STREAM).await == 0 && group_pending(&redis).await == 0 }
    })
    .await;
    let processed_ok = stack.proxies[0]
        .metric_sum("proxy_processed_total{operation=\"weather.city\",outcome=\"ok\"}")
        .await;
    assert_eq!(
        stack.proxies[0].metric_sum("proxy_expired_total").await,
        0.0,
        "B was never even read"
    );
    assert_eq!(processed_ok, 1.0, "only A was processed");
}

#[tokio::test]
async fn a_request_id_already_in_flight_gets_409() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ingress_env: vec![("NO_CONSUMER_GRACE", "1h".into())],
        ..Default::default()
    })
    .await;
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    let first = {
        let http = stack.http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            http.post(url)
                .header("X-Request-Id", "dup-1")
                .header("Request-Timeout", "2s")
                .json(&serde_json::json!({"city": "Lima"}))
                .send()
                .await
                .expect("first")
        })
    };
    wait_metric(stack.ingress(), "ingress_requests_in_flight", 1.0).await;
    let response = stack
        .http
        .post(&url)
        .header("X-Request-Id", "dup-1")
        .json(&serde_json::json!({"city": "Lima"}))
        .send()
        .await
        .expect("second");
    let body = assert_problem(response, 409).await;
    assert_eq!(body["requestId"], "dup-1");
    assert_problem(first.await.expect("first"), 504).await;
}

#[tokio::test]
async fn redis_down_means_503_at_once_and_not_ready() {
    let nobody = free_port();
    // A long command timeout: waiting for it (the old behaviour) would take 30 s.
    let ingress = Service::start_live(
        "ingress",
        &[
            ("REDIS_URL", format!("redis://127.0.0.1:{nobody}")),
            ("REDIS_COMMAND_TIMEOUT", "30s".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let response = http
        .post(format!("{}/WeatherForecast/city", ingress.url))
        .json(&serde_json::json!({"city": "Quito"}))
        .send()
        .await
        .expect("POST");
    let elapsed = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    let body = assert_problem(response, 503).await;
    assert_eq!(body["type"], "urn:problem:broker:redis-unavailable");
    assert!(elapsed < Duration::from_secs(5), "503 took {elapsed:?}");

    let ready = http
        .get(format!("{}/health/ready", ingress.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let report: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(report["status"], "unhealthy");
    assert_ne!(report["redis"], "connected");
    let live = http
        .get(format!("{}/health/live", ingress.url))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
}

/// Runs a binary with `env` and returns (exit code, stderr).
async fn run_with(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(binary(name))
        .env_clear()
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_one_line_naming_the_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("ingress", "MAX_IN_FLIGHT", "lots"),
        ("ingress", "REQUEST_TIMEOUT", "forever"),
        ("ingress", "REDIS_URL", "not a url"),
        ("ingress", "LISTEN_ADDR", "localhost"),
        ("ingress", "RATE_LIMIT", "fast"),
        ("ingress", "RATE_LIMIT_BURST", "0"),
        ("ingress", "TRUSTED_PROXIES", "10.0.0.0/33"),
        ("ingress", "RATE_LIMIT_KEY_HEADER", "bad header"),
        ("proxy", "TERMINALS", "0"),
        ("proxy", "PROCESSING_DELAY_MS", "500-100"),
        ("proxy", "DRAIN_TIMEOUT", "later"),
        ("proxy", "ADMIN_TOKEN_FILE", "/nonexistent/admin-token"),
        ("proxy", "ADMIN_TOKEN", "s3cr3t-value"),
        ("proxy", "FAULT_INJECTION", "maybe"),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let empty_token_file = dir.path().join("empty-token");
    std::fs::write(&empty_token_file, "\n").expect("write");
    let empty_token_file = empty_token_file.display().to_string();
    let cases =
        cases
            .iter()
            .copied()
            .chain([("proxy", "ADMIN_TOKEN_FILE", empty_token_file.as_str())]);
    for (binary_name, setting, value) in cases {
        let (code, stderr) = run_with(binary_name, &[(setting, value)]).await;
        assert_eq!(code, Some(2), "{binary_name} {setting}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected for {setting}: {stderr}");
        assert!(
            lines[0].contains(setting),
            "the message names {setting}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        if setting == "ADMIN_TOKEN" {
            assert!(
                !stderr.contains(value),
                "the token is never echoed: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn with_redis_unreachable_a_service_says_so_at_once_and_exits_promptly_on_sigterm() {
    let nobody = free_port();
    for name in ["ingress", "proxy"] {
        let mut service = Service::start_live(
            name,
            &[
                ("REDIS_URL", format!("redis://127.0.0.1:{nobody}")),
                ("ADMIN_TOKEN", "errors-test-admin-token-1".into()),
            ],
        )
        .await;
        testkit::wait_until(
            &format!("{name} to log that Redis does not answer"),
            Duration::from_secs(15),
            || async { service.logs().contains("check that Redis runs") },
        )
        .await;
        let started = Instant::now();
        service.sigterm();
        let code = service.wait_exit(Duration::from_secs(30)).await;
        let took = started.elapsed();
        println!("{name} with Redis unreachable: exit {code:?} {took:?} after SIGTERM");
        assert_eq!(code, Some(0), "{}", service.logs());
        // It used to wait out Redis command timeouts: about 20 s.
        assert!(
            took < Duration::from_secs(5),
            "{name} took {took:?} to exit"
        );
    }
}
