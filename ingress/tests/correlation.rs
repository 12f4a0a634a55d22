//! A reply completes only the attempt that caused it. Clients reuse X-Request-Id values (a
//! retry after a 504 is the common case), and an ingress restarted under the same INSTANCE_ID
//! reads the same reply stream: a late reply of an earlier attempt must never answer a later
//! request. The test plays the proxy itself, so it controls exactly when each reply arrives.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::Service;

/// An ingress with no proxy: the test answers. `NO_CONSUMER_GRACE` is long because no proxy
/// reads continuously here.
async fn stack(instance_id: Option<&str>) -> Stack {
    let mut ingress_env = vec![("NO_CONSUMER_GRACE", "1h".to_string())];
    if let Some(id) = instance_id {
        ingress_env.push(("INSTANCE_ID", id.to_string()));
    }
    Stack::start(StackOptions {
        proxies: 0,
        ingress_env,
        ..Default::default()
    })
    .await
}

fn forecast(city: &str, location: &str, id: &str) -> String {
    json!({"requestId": id, "city": city, "location": location, "forecastTime": "2026-01-01T00:00:00Z",
           "temperature": 1.0, "condition": "Sunny", "humidity": 50, "windSpeed": 1.0})
    .to_string()
}

fn send(
    stack: &Stack,
    id: &'static str,
    city: &'static str,
    location: &'static str,
    timeout: &'static str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let http = stack.http.clone();
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    tokio::spawn(async move {
        http.post(url)
            .header("X-Request-Id", id)
            .header("Request-Timeout", timeout)
            .json(&json!({"city": city, "location": location}))
            .send()
            .await
            .expect("POST")
    })
}

#[tokio::test]
async fn a_late_reply_never_answers_a_later_request_that_reuses_the_id() {
    let stack = stack(None).await;
    let redis = stack.redis_client().await;

    let first = send(&stack, "dup-1", "Paris", "A", "500ms");
    let first_entry = take_request(&redis, "test-worker").await;
    assert_problem(first.await.expect("first"), 504).await;

    let second = send(&stack, "dup-1", "Tokyo", "B", "10s");
    let second_entry = take_request(&redis, "test-worker").await;
    assert_ne!(
        first_entry["token"], second_entry["token"],
        "each attempt has its own token"
    );
    // The first attempt's reply arrives late, while the second waits.
    write_reply(
        &redis,
        &first_entry,
        Some(&first_entry["token"]),
        &forecast("Paris", "A", "dup-1"),
    )
    .await;
    wait_metric(stack.ingress(), "ingress_replies_unmatched_total", 1.0).await;
    write_reply(
        &redis,
        &second_entry,
        Some(&second_entry["token"]),
        &forecast("Tokyo", "B", "dup-1"),
    )
    .await;
    assert_forecast(second.await.expect("second"), "Tokyo", "B", Some("dup-1")).await;
}

#[tokio::test]
async fn a_reply_without_the_attempts_token_answers_nothing() {
    let stack = stack(None).await;
    let redis = stack.redis_client().await;
    let request = send(&stack, "tokenless-1", "Lima", "Centro", "10s");
    let entry = take_request(&redis, "test-worker").await;
    assert_eq!(entry["v"], "2", "the ingress writes protocol version 2");
    write_reply(
        &redis,
        &entry,
        None,
        &forecast("Lima", "Wrong", "tokenless-1"),
    )
    .await;
    write_reply(
        &redis,
        &entry,
        Some("0000000000000000-1"),
        &forecast("Lima", "Wrong", "tokenless-1"),
    )
    .await;
    wait_metric(stack.ingress(), "ingress_replies_unmatched_total", 2.0).await;
    write_reply(
        &redis,
        &entry,
        Some(&entry["token"]),
        &forecast("Lima", "Centro", "tokenless-1"),
    )
    .await;
    assert_forecast(
        request.await.expect("request"),
        "Lima",
        "Centro",
        Some("tokenless-1"),
    )
    .await;
}

#[tokio::test]
async fn an_ingress_restarted_with_the_same_instance_id_ignores_its_predecessors_replies() {
    let mut stack = stack(Some("ingress-0")).await;
    let redis = stack.redis_client().await;

    // Its caller's connection dies with the ingress; the request stays queued.
    let orphan = {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        tokio::spawn(async move {
            http.post(url)
                .header("X-Request-Id", "dup-2")
                .json(&json!({"city": "Oslo", "location": "Old"}))
                .send()
                .await
                .ok()
        })
    };
    let old_entry = take_request(&redis, "test-worker").await;
    stack.ingresses[0].sigkill();
    assert_eq!(
        stack.ingresses[0].wait_exit(Duration::from_secs(10)).await,
        None
    );
    let _ = orphan.await;

    // Same pod name, same reply stream.
    let env = vec![
        ("REDIS_URL", stack.redis.url()),
        ("INSTANCE_ID", "ingress-0".to_string()),
        ("NO_CONSUMER_GRACE", "1h".to_string()),
    ];
    stack.ingresses[0] = Service::start("ingress", &env).await;
    let again = send(&stack, "dup-2", "Oslo", "New", "10s");
    let new_entry = take_request(&redis, "test-worker").await;
    assert_eq!(old_entry["reply_to"], new_entry["reply_to"]);

    // The dead predecessor's request is answered now, on the shared reply stream.
    write_reply(
        &redis,
        &old_entry,
        Some(&old_entry["token"]),
        &forecast("Oslo", "Old", "dup-2"),
    )
    .await;
    wait_metric(stack.ingress(), "ingress_replies_unmatched_total", 1.0).await;
    write_reply(
        &redis,
        &new_entry,
        Some(&new_entry["token"]),
        &forecast("Oslo", "New", "dup-2"),
    )
    .await;
    assert_forecast(again.await.expect("again"), "Oslo", "New", Some("dup-2")).await;
}
