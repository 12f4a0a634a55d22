//! Load far above capacity, and no proxy at all: what cannot be served in time is refused at
//! once (503 + Retry-After), what is admitted is served before its deadline, no work is done
//! for callers who already gave up, and the log stays readable.
//!
//! The figures a benchmark needs (latency of the 503s, throughput) are printed and recorded in
//! docs/benchmarks.md; the assertions here are the invariants, with bounds an order of
//! magnitude away from the behaviour they rule out.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use fred::interfaces::StreamsInterface;
use serde_json::{Value, json};
use testkit::wait_until;

/// These tests load the machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug)]
struct Outcome {
    sent_at: Duration,
    status: u16,
    kind: String,
    elapsed: Duration,
}

/// Sends `rate` requests a second for `duration`, open loop (a request is sent on schedule
/// whether or not earlier ones were answered), and returns every outcome.
async fn open_loop(stack: &Stack, rate: u32, duration: Duration, timeout: &str) -> Vec<Outcome> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = Vec::new();
    let start = tokio::time::Instant::now();
    let mut n: u32 = 0;
    while start.elapsed() < duration {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        let timeout = timeout.to_string();
        let sent_at = start.elapsed();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .header("Request-Timeout", timeout)
                .json(&json!({"city": "Quito", "location": "Centro"}))
                .send()
                .await;
            let Ok(response) = response else {
                return Outcome {
                    sent_at,
                    status: 0,
                    kind: "connection".into(),
                    elapsed: started.elapsed(),
                };
            };
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Outcome {
                sent_at,
                status,
                kind: body["type"].as_str().unwrap_or("ok").to_string(),
                elapsed: started.elapsed(),
            }
        }));
        n += 1;
        tokio::time::sleep_until(start + interval * n).await;
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("request task"));
    }
    outcomes
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let index = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

#[tokio::test]
async fn ten_times_capacity_is_shed_at_once_and_the_admitted_are_served_in_time() {
    let _serial = SERIAL.lock().await;
    // 2 terminals × 50 ms: about 40 requests a second.
    let stack = Stack::start(StackOptions {
        proxy_env: vec![
            ("TERMINALS", "2".into()),
            ("PROCESSING_DELAY_MS", "50".into()),
        ],
        ..Default::default()
    })
    .await;
    let outcomes = open_loop(&stack, 400, Duration::from_secs(4), "2s").await;
    let mut by_kind: HashMap<(u16, String), usize> = HashMap::new();
    for outcome in &outcomes {
        *by_kind
            .entry((outcome.status, outcome.kind.clone()))
            .or_default() += 1;
    }
    let served: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status == 200)
        .map(|o| o.elapsed)
        .collect();
    let shed: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status == 503)
        .map(|o| o.elapsed)
        .collect();
    let timed_out = outcomes.iter().filter(|o| o.status == 504).count();
    let shed_within_50ms = shed
        .iter()
        .filter(|d| **d <= Duration::from_millis(50))
        .count();
    println!(
        "10x overload: {} requests {by_kind:?}; served {} (p50 {:?}, p99 {:?}); shed {} (p50 {:?}, p95 {:?}, {:.1} % within 50 ms); 504 {timed_out}",
        outcomes.len(),
        served.len(),
        percentile(served.clone(), 0.5),
        percentile(served.clone(), 0.99),
        shed.len(),
        percentile(shed.clone(), 0.5),
        percentile(shed.clone(), 0.95),
        100.0 * shed_within_50ms as f64 / shed.len().max(1) as f64,
    );
    let mut timeline = std::collections::BTreeMap::<u128, (u32, u32, u32)>::new();
    for o in &outcomes {
        let slot = timeline.entry(o.sent_at.as_millis() / 250).or_default();
        match o.status {
            200 => slot.0 += 1,
            503 => slot.1 += 1,
            _ => slot.2 += 1,
        }
    }
    println!("timeline (250 ms of sends: 200/503/504): {timeline:?}");
    for outcome in &outcomes {
        assert!(
            matches!(outcome.status, 200 | 503 | 504),
            "unexpected {outcome:?}"
        );
    }
    for kind in by_kind.keys().filter(|(status, _)| *status == 503) {
        assert!(
            kind.1 == "urn:problem:broker:wait-exceeds-deadline"
                || kind.1 == "urn:problem:broker:backlog-full",
            "{kind:?}"
        );
    }
    // Refused at once: the 503s come back far sooner than the 2 s deadline they would
    // otherwise have waited out.
    assert!(
        percentile(shed.clone(), 0.95) < Duration::from_millis(500),
        "503 p95 {:?}",
        percentile(shed, 0.95)
    );
    // Before the drain rate is first measured everything is admitted; after that, only what
    // can be served in time. Most of the load must have been refused, not timed out.
    assert!(
        timed_out * 10 < outcomes.len(),
        "{timed_out} of {} timed out: {by_kind:?}",
        outcomes.len()
    );
    assert!(served.len() >= 60, "served {}", served.len());
    // No work for callers who already had their 504: replies that found nobody waiting are at
    // most what was in the 2 terminals at those moments.
    let proxy_ok = stack.proxies[0]
        .metric_sum("proxy_processed_total{operation=\"weather.city\",outcome=\"ok\"}")
        .await;
    let unmatched = stack
        .ingress()
        .metric_sum("ingress_replies_unmatched_total")
        .await;
    println!("proxy processed {proxy_ok} ok; replies unmatched {unmatched}");
    assert!(
        unmatched <= 2.0,
        "{unmatched} replies came after their caller's 504"
    );
}

#[tokio::test]
async fn a_burst_never_overshoots_the_backlog_limit() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ingress_env: vec![
            ("MAX_BACKLOG", "5".into()),
            ("NO_CONSUMER_GRACE", "1h".into()),
        ],
        ..Default::default()
    })
    .await;
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let http = stack.http.clone();
            let url = format!("{}/WeatherForecast/city", stack.ingress().url);
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .header("Request-Timeout", "1s")
                    .json(&json!({"city": "Riga", "location": format!("{i}")}))
                    .send()
                    .await
                    .expect("POST");
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body)
            })
        })
        .collect();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for request in burst {
        let (status, body) = request.await.expect("task");
        *counts.entry(status).or_default() += 1;
        if status == 503 {
            assert_eq!(body["type"], "urn:problem:broker:backlog-full", "{body}");
        }
    }
    let redis = stack.redis_client().await;
    let written = entries_added(&redis).await;
    println!("burst of 40 against MAX_BACKLOG 5: {counts:?}, entries written {written}");
    assert_eq!(written, 5, "exactly the limit was written: {counts:?}");
    assert_eq!(counts.get(&504).copied().unwrap_or(0), 5, "{counts:?}");
    assert_eq!(counts.get(&503).copied().unwrap_or(0), 35, "{counts:?}");
}

async fn status_and_type(stack: &Stack, timeout: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = stack
        .http
        .post(format!("{}/WeatherForecast/city", stack.ingress().url))
        .header("Request-Timeout", timeout)
        .json(&json!({"city": "Lima"}))
        .send()
        .await
        .expect("POST");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["type"].as_str().unwrap_or("ok").to_string(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn with_no_proxy_left_requests_get_503_no_consumers_at_once() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions {
        ingress_env: vec![("NO_CONSUMER_GRACE", "1s".into())],
        ..Default::default()
    })
    .await;
    assert_eq!(status_and_type(&stack, "5s").await.0, 200);

    // A clean stop: the proxy leaves the group.
    stack.proxies[0].sigterm();
    assert_eq!(
        stack.proxies[0].wait_exit(Duration::from_secs(30)).await,
        Some(0)
    );
    let stopped = Instant::now();
    // Requests admitted before the rule applies wait (a proxy may come back for them); probe
    // with short deadlines until it applies.
    wait_until("503 no-consumers", Duration::from_secs(20), || async {
        let (status, kind, _) = status_and_type(&stack, "1s").await;
        status == 503 && kind == "urn:problem:broker:no-consumers"
    })
    .await;
    println!(
        "proxy stopped: 503 no-consumers from {:?} after the stop",
        stopped.elapsed()
    );
    // Now even a request with a 30 s deadline is refused at once instead of waiting it out.
    let (status, kind, elapsed) = status_and_type(&stack, "30s").await;
    assert_eq!(
        (status, kind.as_str()),
        (503, "urn:problem:broker:no-consumers")
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "refused after {elapsed:?}"
    );
    let response = stack
        .http
        .post(format!("{}/WeatherForecast/city", stack.ingress().url))
        .json(&json!({"city": "Lima"}))
        .send()
        .await
        .expect("POST");
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503).await;

    // Hundreds of refusals: the log gets a few lines, not one per request.
    for _ in 0..300 {
        let _ = status_and_type(&stack, "30s").await;
    }
    let failed_lines = stack
        .ingress()
        .logs()
        .lines()
        .filter(|line| line.contains("request failed"))
        .count();
    assert!(
        failed_lines < 100,
        "{failed_lines} 'request failed' lines for 300 refusals"
    );

    // A proxy comes back: served again.
    stack
        .add_proxy(&[("PROCESSING_DELAY_MS", "0".into())])
        .await;
    wait_until("served again", Duration::from_secs(15), || async {
        status_and_type(&stack, "5s").await.0 == 200
    })
    .await;

    // A crash: the consumer stays registered, but it stops reading and counts as gone.
    stack.proxies[1].sigkill();
    let _ = stack.proxies[1].wait_exit(Duration::from_secs(10)).await;
    wait_until(
        "503 no-consumers after a crash",
        Duration::from_secs(20),
        || async {
            let (status, kind, _) = status_and_type(&stack, "1s").await;
            status == 503 && kind == "urn:problem:broker:no-consumers"
        },
    )
    .await;
}

/// Before Redis 7.2 a consumer's `idle` restarts only on a read that returns entries, so a
/// proxy waiting on a quiet stream looks idle for ever. That must not read as "no consumers":
/// after a quiet spell longer than the liveness window and the grace, requests are served.
#[tokio::test]
async fn a_quiet_stream_does_not_make_a_waiting_proxy_count_as_gone() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(StackOptions {
        ingress_env: vec![("NO_CONSUMER_GRACE", "1s".into())],
        ..Default::default()
    })
    .await;
    assert_eq!(status_and_type(&stack, "5s").await.0, 200);
    let redis = stack.redis_client().await;
    wait_until(
        "the proxy to look idle for 5 s in XINFO CONSUMERS",
        Duration::from_secs(30),
        || async {
            let consumers: Vec<HashMap<String, fred::types::Value>> = redis
                .xinfo_consumers(common::REQUEST_STREAM, common::GROUP)
                .await
                .unwrap_or_default();
            // Redis 7.2+ resets `idle` on every read attempt and reports the time since the
            // last read that returned entries as `inactive`; before 7.2 that is `idle`.
            let quiet = consumers
                .iter()
                .filter_map(|consumer| {
                    let idle = consumer.get("idle")?.as_u64()?;
                    let inactive = consumer.get("inactive").and_then(|v| v.as_u64());
                    Some(inactive.unwrap_or(idle))
                })
                .min();
            quiet.is_some_and(|ms| ms > 5_000)
        },
    )
    .await;
    let (status, kind, _) = status_and_type(&stack, "5s").await;
    assert_eq!((status, kind.as_str()), (200, "ok"));
}
