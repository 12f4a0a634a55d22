//! Backpressure: the proxy never holds more entries than terminals, the backlog stays in the
//! stream, and the ingress refuses early when it or the stream is full.

mod common;

use std::time::Duration;

use common::*;
use testkit::wait_until;

#[tokio::test]
async fn the_proxy_never_reads_more_than_its_terminals() {
    let stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "300".into()),
            ("TERMINALS", "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let redis = stack.redis_client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        tasks.spawn(async move {
            let response = http
                .post(url)
                .json(&serde_json::json!({"city": "Vienna", "location": format!("district {i}")}))
                .send()
                .await
                .expect("POST");
            assert_forecast(response, "Vienna", &format!("district {i}"), None).await;
        });
    }
    let (mut max_pending, mut max_len, mut max_busy) = (0, 0, 0.0f64);
    while !tasks.is_empty() {
        tokio::select! {
            result = tasks.join_next() => { if let Some(result) = result { result.expect("request"); } }
            _ = tokio::time::sleep(Duration::from_millis(30)) => {
                max_pending = max_pending.max(group_pending(&redis).await);
                max_len = max_len.max(stream_len(&redis, REQUEST_STREAM).await);
                max_busy = max_busy.max(stack.proxies[0].metric_sum("proxy_terminals_busy").await);
            }
        }
    }
    assert_eq!(
        max_pending, 1,
        "the proxy held {max_pending} entries with 1 terminal"
    );
    assert!(max_busy <= 1.0, "terminals busy peaked at {max_busy}");
    assert!(
        max_len >= 3,
        "the backlog waited in the stream (peak length {max_len})"
    );
}

#[tokio::test]
async fn past_max_in_flight_new_requests_get_503_with_retry_after() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ingress_env: vec![
            ("MAX_IN_FLIGHT", "2".into()),
            ("NO_CONSUMER_GRACE", "1h".into()),
        ],
        ..Default::default()
    })
    .await;
    let mut waiting = Vec::new();
    for i in 0..2 {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        waiting.push(tokio::spawn(async move {
            http.post(url)
                .header("Request-Timeout", "3s")
                .json(&serde_json::json!({"city": "Kyiv", "location": format!("{i}")}))
                .send()
                .await
                .expect("POST")
        }));
    }
    wait_metric(stack.ingress(), "ingress_requests_in_flight", 2.0).await;
    let response = stack.post_city("Kyiv", "third", None).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body = assert_problem(response, 503).await;
    assert_eq!(body["type"], "urn:problem:broker:overloaded");
    assert_eq!(
        stack
            .ingress()
            .metric_sum("ingress_rejections_total{reason=\"in_flight_limit\"}")
            .await,
        1.0
    );
    for task in waiting {
        assert_problem(task.await.expect("task"), 504).await;
    }
}

#[tokio::test]
async fn past_max_backlog_new_requests_get_503_before_reaching_redis() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ingress_env: vec![
            ("MAX_BACKLOG", "3".into()),
            ("NO_CONSUMER_GRACE", "1h".into()),
        ],
        ..Default::default()
    })
    .await;
    // With no proxy, three waiting requests fill the backlog.
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let http = stack.http.clone();
            let url = format!("{}/WeatherForecast/city", stack.ingress().url);
            tokio::spawn(async move {
                http.post(url)
                    .header("Request-Timeout", "30s")
                    .json(&serde_json::json!({"city": "Riga", "location": format!("{i}")}))
                    .send()
                    .await
                    .ok()
            })
        })
        .collect();
    let redis = stack.redis_client().await;
    wait_until("3 requests in the stream", Duration::from_secs(15), || {
        let redis = redis.clone();
        async move { stream_len(&redis, REQUEST_STREAM).await == 3 }
    })
    .await;
    let length = stream_len(&redis, REQUEST_STREAM).await;
    let response = stack.post_city("Riga", "again", None).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    assert_problem(response, 503).await;
    assert_eq!(
        stream_len(&redis, REQUEST_STREAM).await,
        length,
        "a refused request is not written"
    );
    for task in waiting {
        task.abort();
    }
}
