//! Requests in, replies out: correctness of correlation under concurrency and with several
//! instances, and bounded streams.

mod common;

use std::time::Duration;

use common::*;
use fred::prelude::*;
use serde_json::Value;
use testkit::wait_until;

#[tokio::test]
async fn a_request_travels_through_both_services_and_back() {
    let stack = Stack::start(StackOptions::default()).await;

    let body = assert_forecast(
        stack.post_city("New York", "Downtown", None).await,
        "New York",
        "Downtown",
        None,
    )
    .await;
    assert!(body["temperature"].is_number(), "{body}");
    assert!(body["windSpeed"].is_number(), "{body}");
    assert!(
        body["humidity"].as_u64().is_some_and(|h| h <= 100),
        "{body}"
    );
    assert!(
        body["condition"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    assert!(
        body["forecastTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );

    // A client's own id is the correlation id.
    assert_forecast(
        stack
            .post_city("Paris", "Montmartre", Some("client-42"))
            .await,
        "Paris",
        "Montmartre",
        Some("client-42"),
    )
    .await;

    let response = stack
        .http
        .get(format!("{}/WeatherForecast", stack.ingress().url))
        .send()
        .await
        .expect("GET /WeatherForecast");
    assert_eq!(response.status(), 200);
    let days: Vec<Value> = response.json().await.expect("JSON array");
    assert_eq!(days.len(), 5);
    for day in &days {
        for field in ["date", "temperatureC", "temperatureF", "summary"] {
            assert!(!day[field].is_null(), "{field} missing in {day}");
        }
    }
}

#[tokio::test]
async fn five_hundred_concurrent_requests_each_get_their_own_reply() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        let (city, location) = CITIES[i % CITIES.len()];
        tasks.spawn(async move {
            let id = format!("c500-{i}");
            let response = http
                .post(url)
                .header("X-Request-Id", &id)
                .json(&serde_json::json!({"city": city, "location": format!("{location} {i}")}))
                .send()
                .await
                .expect("POST");
            assert_forecast(response, city, &format!("{location} {i}"), Some(&id)).await;
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        result.expect("request task");
        done += 1;
    }
    assert_eq!(done, 500);
}

#[tokio::test]
async fn two_ingresses_and_two_proxies_route_every_reply_home_and_process_once() {
    // The services run single-threaded by default (shared::runtime); here they run on tokio's
    // multi-threaded runtime, so that configuration gets the same concurrent traffic.
    let stack = Stack::start(StackOptions {
        proxies: 2,
        ingresses: 2,
        proxy_env: vec![
            ("PROCESSING_DELAY_MS", "1-3".into()),
            ("WORKER_THREADS", "3".into()),
        ],
        ingress_env: vec![("WORKER_THREADS", "2".into())],
        ..Default::default()
    })
    .await;
    let total = 400;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingresses[i % 2].url);
        let (city, location) = CITIES[i % CITIES.len()];
        tasks.spawn(async move {
            let id = format!("multi-{i}");
            let response = http
                .post(url)
                .header("X-Request-Id", &id)
                .json(&serde_json::json!({"city": city, "location": location}))
                .send()
                .await
                .expect("POST");
            assert_forecast(response, city, location, Some(&id)).await;
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("request task");
    }

    // Each request processed exactly once across the proxies, and both proxies took work.
    let mut processed = 0.0;
    for proxy in &stack.proxies {
        let mine = proxy.metric_sum("proxy_processed_total").await;
        assert!(mine > 0.0, "{} processed nothing", proxy.name);
        processed += mine;
    }
    assert_eq!(
        processed, total as f64,
        "every request processed exactly once"
    );
    // The setting took effect (each service logs its runtime at start).
    for service in stack.proxies.iter().chain(&stack.ingresses) {
        let wanted = if service.name == "proxy" { 3 } else { 2 };
        assert!(
            service.logs().contains(&format!("worker_threads={wanted}")),
            "{} did not start with WORKER_THREADS={wanted}: {}",
            service.name,
            service.logs()
        );
    }
    // No ingress saw a reply that was not its own.
    for ingress in &stack.ingresses {
        assert_eq!(
            ingress.metric_sum("ingress_replies_unmatched_total").await,
            0.0
        );
    }
}

#[tokio::test]
async fn streams_stay_bounded_after_two_thousand_requests() {
    let stack = Stack::start(StackOptions::default()).await;
    let redis = stack.redis_client().await;
    let mut tasks = tokio::task::JoinSet::new();
    let concurrency = 50;
    for worker in 0..concurrency {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        tasks.spawn(async move {
            for n in 0..(2000 / concurrency) {
                let response = http
                    .post(&url)
                    .json(&serde_json::json!({"city": "Berlin", "location": format!("w{worker}-{n}")}))
                    .send()
                    .await
                    .expect("POST");
                assert_eq!(response.status(), 200);
            }
        });
    }
    let mut max_len = 0;
    while !tasks.is_empty() {
        tokio::select! {
            result = tasks.join_next() => { if let Some(result) = result { result.expect("worker"); } }
            _ = tokio::time::sleep(Duration::from_millis(25)) => {
                max_len = max_len.max(stream_len(&redis, REQUEST_STREAM).await);
            }
        }
    }
    // A reply is written before its entry is acknowledged and deleted, so a client can send its
    // next request while the previous entry is still there: at most 2 per client, never 2,000.
    assert!(
        max_len <= 2 * concurrency as u64,
        "request stream held {max_len} entries with only {concurrency} clients"
    );
    // Every entry was deleted when it was answered (the last XDELs may still be in flight).
    wait_until("processed entries deleted", Duration::from_secs(15), || {
        let redis = redis.clone();
        async move { stream_len(&redis, REQUEST_STREAM).await == 0 }
    })
    .await;
    let reply_streams = keys(&redis, "weather-responses:*").await;
    assert_eq!(
        reply_streams.len(),
        1,
        "one reply stream per ingress: {reply_streams:?}"
    );
    let reply_stream = reply_streams[0].clone();
    wait_until("reply stream trimmed", Duration::from_secs(15), || {
        let redis = redis.clone();
        let key = reply_stream.clone();
        async move { stream_len(&redis, &key).await <= 2 }
    })
    .await;
    let ttl: i64 = redis.pttl(&reply_stream).await.expect("PTTL");
    assert!(
        ttl > 0,
        "the live ingress keeps an expiry on its reply stream (PTTL {ttl})"
    );
}
