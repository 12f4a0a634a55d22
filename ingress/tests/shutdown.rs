//! Graceful shutdown of the real binaries: SIGTERM with requests in flight loses none.

mod common;

use std::time::Duration;

use common::*;
use fred::prelude::*;
use testkit::wait_until;

fn spawn_requests(
    stack: &Stack,
    count: usize,
    tag: &str,
) -> Vec<tokio::task::JoinHandle<reqwest::Response>> {
    (0..count)
        .map(|i| {
            let http = stack.http.clone();
            let url = format!("{}/WeatherForecast/city", stack.ingress().url);
            let id = format!("{tag}-{i}");
            tokio::spawn(async move {
                http.post(url)
                    .header("X-Request-Id", id)
                    .json(&serde_json::json!({"city": "Madrid", "location": "Sol"}))
                    .send()
                    .await
                    .expect("POST")
            })
        })
        .collect()
}

#[tokio::test]
async fn sigterm_to_the_proxy_finishes_every_entry_it_holds() {
    let mut stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "3000".into()),
            ("TERMINALS", "5".into()),
        ],
        ..Default::default()
    })
    .await;
    let redis = stack.redis_client().await;
    let requests = spawn_requests(&stack, 5, "proxy-term");
    wait_until("5 entries in terminals", Duration::from_secs(15), || {
        let redis = redis.clone();
        async move { group_pending(&redis).await == 5 }
    })
    .await;

    let proxy = &mut stack.proxies[0];
    proxy.sigterm();
    for (i, request) in requests.into_iter().enumerate() {
        let id = format!("proxy-term-{i}");
        assert_forecast(request.await.expect("task"), "Madrid", "Sol", Some(&id)).await;
    }
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "exit code; log:\n{}",
        proxy.logs()
    );
    assert_eq!(group_pending(&redis).await, 0);
    assert_eq!(stream_len(&redis, REQUEST_STREAM).await, 0);
    let consumers: Vec<Value> = redis
        .xinfo_consumers(REQUEST_STREAM, GROUP)
        .await
        .expect("XINFO CONSUMERS");
    assert!(
        consumers.is_empty(),
        "the proxy left the group: {consumers:?}"
    );
}

#[tokio::test]
async fn sigterm_to_the_ingress_answers_requests_in_flight_and_refuses_new_ones() {
    let mut stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "3000".into()),
            ("TERMINALS", "5".into()),
        ],
        ..Default::default()
    })
    .await;
    let redis = stack.redis_client().await;
    let reply_streams = keys(&redis, "weather-responses:*").await;
    assert_eq!(reply_streams.len(), 1);
    let requests = spawn_requests(&stack, 5, "ingress-term");
    wait_metric(stack.ingress(), "ingress_requests_in_flight", 5.0).await;

    stack.ingress().sigterm();
    let ready_url = format!("{}/health/ready", stack.ingress().url);
    let http = stack.http.clone();
    wait_until("ingress reports not ready", Duration::from_secs(15), || {
        let http = http.clone();
        let url = ready_url.clone();
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status() == 503)
                .unwrap_or(false)
        }
    })
    .await;
    let refused = stack.post_city("Madrid", "late", None).await;
    let body = assert_problem(refused, 503).await;
    assert_eq!(body["type"], "urn:problem:broker:draining");

    for (i, request) in requests.into_iter().enumerate() {
        let id = format!("ingress-term-{i}");
        assert_forecast(request.await.expect("task"), "Madrid", "Sol", Some(&id)).await;
    }
    let ingress = &mut stack.ingresses[0];
    assert_eq!(
        ingress.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "exit code; log:\n{}",
        ingress.logs()
    );
    let exists: u64 = redis
        .exists(reply_streams[0].as_str())
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the ingress deleted its reply stream on exit");
}

/// A request still waiting when DRAIN_TIMEOUT ends was queued: its answer must not be a
/// 503 + Retry-After (which means "not queued, retry"), but a 504 that says it may be processed.
#[tokio::test]
async fn requests_still_waiting_when_the_drain_ends_are_told_they_may_still_be_processed() {
    let mut stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "20000".into()),
            ("TERMINALS", "2".into()),
        ],
        ingress_env: vec![("DRAIN_TIMEOUT", "1s".into())],
        ..Default::default()
    })
    .await;
    let requests = spawn_requests(&stack, 2, "drain-ends");
    wait_metric(stack.ingress(), "ingress_requests_in_flight", 2.0).await;
    stack.ingress().sigterm();
    for request in requests {
        let response = request.await.expect("task");
        assert!(response.headers().get("retry-after").is_none());
        let body = assert_problem(response, 504).await;
        assert_eq!(body["type"], "urn:problem:broker:shutdown-unanswered");
    }
    let ingress = &mut stack.ingresses[0];
    assert_eq!(ingress.wait_exit(Duration::from_secs(15)).await, Some(0));
}
