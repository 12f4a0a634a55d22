//! The fault-injection suite: crashed proxies, a crashed and restarted Redis, Redis down,
//! poison requests, injected failures under load, and a rolling restart. The promise under
//! test: no accepted request is lost or answered twice, and no caller waits for nothing.
//!
//! The tests run one at a time (they measure latencies and share two cores).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fred::prelude::*;
use serde_json::{Value, json};
use testkit::wait_until;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reclaim settings short enough for tests.
fn fast_recovery(min_idle: &str, interval: &str) -> Vec<(&'static str, String)> {
    vec![
        ("RECLAIM_MIN_IDLE", min_idle.into()),
        ("RECLAIM_INTERVAL", interval.into()),
        ("MAX_DELIVERIES", "3".into()),
        ("CONSUMER_IDLE_TIMEOUT", "2s".into()),
    ]
}

fn with(
    mut base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    base.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    base
}

/// One finished request of a load run.
#[derive(Debug)]
#[allow(dead_code)] // `body` is shown by the Debug output of failed assertions
struct Outcome {
    status: u16,
    elapsed: Duration,
    correct: bool,
    body: Value,
}

/// Sends requests from `workers` loops until `stop` is set; each with its own id.
fn run_load(
    stack: &Stack,
    workers: usize,
    timeout: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinSet<Vec<Outcome>> {
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let http = stack.http.clone();
        let url = format!("{}/WeatherForecast/city", stack.ingress().url);
        let stop = stop.clone();
        set.spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (city, location) = CITIES[(worker + n) % CITIES.len()];
                let id = format!("load-{worker}-{n}");
                let started = Instant::now();
                let response = http
                    .post(&url)
                    .header("X-Request-Id", &id)
                    .header("Request-Timeout", timeout)
                    .json(&json!({"city": city, "location": location}))
                    .send()
                    .await;
                let Ok(response) = response else {
                    outcomes.push(Outcome {
                        status: 0,
                        elapsed: started.elapsed(),
                        correct: false,
                        body: Value::Null,
                    });
                    continue;
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let correct = if status == 200 {
                    body["requestId"] == id.as_str()
                        && body["city"] == city
                        && body["location"] == location
                } else {
                    body["requestId"] == id.as_str() && body["status"] == status
                };
                outcomes.push(Outcome {
                    status,
                    elapsed: started.elapsed(),
                    correct,
                    body,
                });
            }
            outcomes
        });
    }
    set
}

async fn collect(mut set: tokio::task::JoinSet<Vec<Outcome>>) -> Vec<Outcome> {
    let mut all = Vec::new();
    while let Some(result) = set.join_next().await {
        all.extend(result.expect("load worker"));
    }
    all
}

fn by_status(outcomes: &[Outcome]) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.status).or_insert(0) += 1;
    }
    counts
}

async fn consumers(redis: &Client) -> Vec<String> {
    let reply: fred::types::Value = redis
        .xinfo_consumers(REQUEST_STREAM, GROUP)
        .await
        .unwrap_or(fred::types::Value::Null);
    let fred::types::Value::Array(rows) = reply else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|row| row.into_map().ok())
        .filter_map(|map| {
            map.inner()
                .into_iter()
                .find(|(k, _)| k.as_str() == Some("name"))
                .and_then(|(_, v)| v.as_string())
        })
        .collect()
}

/// Waits until the ingress has finished `more` further requests (any outcome).
async fn wait_for_more_round_trips(stack: &Stack, more: f64) {
    let done = stack
        .ingress()
        .metric_sum("ingress_round_trip_seconds_count")
        .await;
    wait_metric(
        stack.ingress(),
        "ingress_round_trip_seconds_count",
        done + more,
    )
    .await;
}

async fn wait_drained(redis: &Client, within: Duration) {
    wait_until(
        "request stream drained (nothing waiting, nothing pending)",
        within,
        || {
            let redis = redis.clone();
            async move {
                stream_len(&redis, REQUEST_STREAM).await == 0 && group_pending(&redis).await == 0
            }
        },
    )
    .await;
}

#[tokio::test]
async fn sigkill_a_proxy_with_requests_in_flight_and_another_answers_them_all() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let recovery = fast_recovery("1s", "100ms");
    stack
        .add_proxy(&with(
            recovery.clone(),
            &[("PROCESSING_DELAY_MS", "3000"), ("TERMINALS", "5")],
        ))
        .await;
    let redis = stack.redis_client().await;

    let started = Instant::now();
    let requests: Vec<_> = (0..5)
        .map(|i| {
            let http = stack.http.clone();
            let url = format!("{}/WeatherForecast/city", stack.ingress().url);
            tokio::spawn(async move {
                http.post(url)
                    .header("X-Request-Id", format!("killed-{i}"))
                    .header("Request-Timeout", "15s")
                    .json(&json!({"city": "Oslo", "location": format!("pier {i}")}))
                    .send()
                    .await
                    .expect("POST")
            })
        })
        .collect();
    wait_until(
        "5 entries held by the first proxy",
        Duration::from_secs(15),
        || {
            let redis = redis.clone();
            async move { group_pending(&redis).await == 5 }
        },
    )
    .await;
    let killed = consumers(&redis).await;
    stack.proxies[0].sigkill();
    assert_eq!(
        stack.proxies[0].wait_exit(Duration::from_secs(5)).await,
        None,
        "killed by a signal"
    );

    stack
        .add_proxy(&with(
            recovery,
            &[("PROCESSING_DELAY_MS", "100"), ("TERMINALS", "5")],
        ))
        .await;
    for (i, request) in requests.into_iter().enumerate() {
        let id = format!("killed-{i}");
        assert_forecast(
            request.await.expect("task"),
            "Oslo",
            &format!("pier {i}"),
            Some(&id),
        )
        .await;
    }
    let recovered_in = started.elapsed();
    assert_eq!(
        stack.proxies[1].metric_sum("proxy_reclaimed_total").await,
        5.0
    );
    println!("sigkill proxy: 5 of 5 requests answered by the other proxy after {recovered_in:?}");

    // The dead consumer holds nothing any more and is removed from the group.
    wait_until(
        "the dead proxy's consumer removed",
        Duration::from_secs(10),
        || {
            let redis = redis.clone();
            let killed = killed.clone();
            async move { consumers(&redis).await.iter().all(|c| !killed.contains(c)) }
        },
    )
    .await;
    wait_drained(&redis, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn redis_sigkill_and_restart_with_aof_during_load_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = Stack::start(StackOptions {
        proxy_env: with(
            fast_recovery("1s", "100ms"),
            &[("PROCESSING_DELAY_MS", "0-20"), ("TERMINALS", "8")],
        ),
        redis_aof: true,
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&stack, 16, "5s", stop.clone());
    wait_metric(stack.ingress(), "ingress_round_trip_seconds_count", 100.0).await;

    stack.redis.kill().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await; // the outage
    stack.redis.restart().await;
    let restarted = Instant::now();
    let http = stack.http.clone();
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    wait_until(
        "a 200 after the Redis restart",
        Duration::from_secs(10),
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                http.post(url)
                    .header("Request-Timeout", "2s")
                    .json(&json!({"city": "Bern"}))
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let recovery = restarted.elapsed();
    wait_for_more_round_trips(&stack, 200.0).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(load).await;

    let counts = by_status(&outcomes);
    println!(
        "redis restart under load: {} requests {counts:?}, served again {recovery:?} after restart",
        outcomes.len()
    );
    for outcome in &outcomes {
        assert!(
            matches!(outcome.status, 200 | 503 | 504),
            "unexpected outcome {outcome:?}"
        );
        assert!(
            outcome.correct,
            "reply does not belong to its request: {outcome:?}"
        );
    }
    assert!(counts.get(&200).copied().unwrap_or(0) > 200);
    // Everything accepted was processed or dropped as expired; nothing is left behind.
    let redis = stack.redis_client().await;
    wait_drained(&redis, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn while_redis_is_down_the_ingress_answers_503_at_once_and_recovers_within_2s() {
    let _serial = SERIAL.lock().await;
    // A long command timeout and deadline: the old behaviour (a request waited for the
    // command timeout, or its whole deadline) would take 20 s, an order of magnitude more
    // than the bound asserted below.
    let mut stack = Stack::start(StackOptions {
        redis_aof: true,
        ingress_env: vec![("REDIS_COMMAND_TIMEOUT", "20s".into())],
        ..Default::default()
    })
    .await;
    assert_forecast(
        stack.post_city("Graz", "Centre", None).await,
        "Graz",
        "Centre",
        None,
    )
    .await;

    stack.redis.kill().await;
    let http = stack.http.clone();
    let ready_url = format!("{}/health/ready", stack.ingress().url);
    wait_until(
        "the ingress reports not ready",
        Duration::from_secs(15),
        || {
            let http = http.clone();
            let url = ready_url.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .map(|r| r.status() == 503)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let down = Instant::now();
    let mut slowest = Duration::ZERO;
    while down.elapsed() < Duration::from_secs(10) {
        let started = Instant::now();
        let response = stack.post_city("Graz", "Centre", None).await;
        let elapsed = started.elapsed();
        slowest = slowest.max(elapsed);
        assert!(response.headers().contains_key("retry-after"));
        let body = assert_problem(response, 503).await;
        assert!(
            body["type"] == "urn:problem:broker:redis-unavailable"
                || body["type"] == "urn:problem:broker:circuit-open",
            "{body}"
        );
        assert!(elapsed < Duration::from_secs(3), "503 took {elapsed:?}");
        let ready = http.get(&ready_url).send().await.expect("ready");
        assert_eq!(ready.status(), 503);
        tokio::time::sleep(Duration::from_millis(200)).await; // pacing of the probe, not a wait for state
    }

    stack.redis.restart().await;
    let back = Instant::now();
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    wait_until(
        "a 200 after Redis returned",
        Duration::from_secs(15),
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                http.post(url)
                    .header("Request-Timeout", "1500ms")
                    .json(&json!({"city": "Graz", "location": "Centre"}))
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let recovered = back.elapsed();
    println!(
        "redis down 10 s: slowest 503 {slowest:?}; served again {recovered:?} after Redis returned"
    );
    assert_eq!(
        http.get(&ready_url).send().await.expect("ready").status(),
        200
    );
}

#[tokio::test]
async fn unreadable_entries_are_dead_lettered_on_first_sight_and_the_caller_told_at_once() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(StackOptions::default()).await;
    let redis = stack.redis_client().await;
    // Act as a caller of our own: a reply stream and a request whose payload is not JSON.
    let reply_stream = "test-caller-replies";
    let _: String = redis
        .xadd(reply_stream, false, None, "*", vec![("created_by", "test")])
        .await
        .expect("XADD");
    let deadline = (std::time::SystemTime::now() + Duration::from_secs(30))
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .to_string();
    let started = Instant::now();
    let _: String = redis
        .xadd(
            REQUEST_STREAM,
            false,
            None,
            "*",
            vec![
                ("v", "1"),
                ("id", "poison-1"),
                ("reply_to", reply_stream),
                ("deadline_ms", deadline.as_str()),
                ("op", "weather.city"),
                ("payload", "this is not json"),
            ],
        )
        .await
        .expect("XADD poison");
    let _: String = redis
        .xadd(
            REQUEST_STREAM,
            false,
            None,
            "*",
            vec![("garbage", "no fields we know")],
        )
        .await
        .expect("XADD garbage");
    wait_until(
        "both in the dead-letter stream",
        Duration::from_secs(15),
        || {
            let redis = redis.clone();
            async move { stream_len(&redis, "weather-requests:dlq").await == 2 }
        },
    )
    .await;
    let replies: fred::types::Value = redis
        .xrange(reply_stream, "-", "+", None)
        .await
        .expect("XRANGE");
    let text = format!("{replies:?}");
    assert!(
        text.contains("poison-1") && text.contains("dead_lettered"),
        "error reply to the caller: {text}"
    );
    println!(
        "unreadable entry: dead-lettered and caller told in {:?}",
        started.elapsed()
    );
    wait_drained(&redis, Duration::from_secs(15)).await;

    let letters: Vec<Value> = stack
        .http
        .get(format!("{}/api/dead-letters", stack.proxies[0].url))
        .send()
        .await
        .expect("GET dead letters")
        .json()
        .await
        .expect("JSON");
    // Two terminals handle the two entries in parallel, so their order in the dead-letter
    // stream is a race: find each by what it is, never by position.
    assert_eq!(letters.len(), 2, "{letters:?}");
    let poison = letters
        .iter()
        .find(|letter| letter["requestId"] == "poison-1")
        .unwrap_or_else(|| panic!("the poison request is dead-lettered: {letters:?}"));
    assert_eq!(poison["reason"], "invalid_payload");
    let garbage = letters
        .iter()
        .find(|letter| letter["requestId"].is_null())
        .unwrap_or_else(|| panic!("the unreadable entry is dead-lettered: {letters:?}"));
    // It has no protocol version field at all.
    assert_eq!(garbage["reason"], "unsupported_version");
    assert_eq!(
        stack.proxies[0]
            .metric_sum("proxy_dead_lettered_total")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_request_that_crashes_every_proxy_is_dead_lettered_with_a_502_and_replays_once_fixed() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(StackOptions {
        proxy_env: with(
            fast_recovery("150ms", "25ms"),
            &[("PROCESSING_DELAY_MS", "0")],
        ),
        ..Default::default()
    })
    .await;
    let proxy = &stack.proxies[0];
    let http = &stack.http;
    let config_url = format!("{}/api/config", proxy.url);

    let bad = http
        .post(&config_url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"crashBeforeAckRate": 1.5}))
        .send()
        .await
        .expect("POST");
    let body = assert_problem(bad, 400).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("crashBeforeAckRate")
    );
    let set = http
        .post(&config_url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"crashBeforeAckRate": 1.0}))
        .send()
        .await
        .expect("POST");
    assert_eq!(set.status(), 200);
    let config: Value = http
        .get(&config_url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(config["crashBeforeAckRate"], 1.0);
    // Each request draws one fault at most: rates adding up to more than 1 are refused, and
    // the rate left out (crashBeforeAckRate, still 1.0) counts towards the sum.
    let over = http
        .post(&config_url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"processingErrorRate": 0.5}))
        .send()
        .await
        .expect("POST");
    let body = assert_problem(over, 400).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("add up to"),
        "{body}"
    );
    let config: Value = http
        .get(&config_url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        config["processingErrorRate"], 0.0,
        "a refused update changes nothing"
    );

    let started = Instant::now();
    let response = stack
        .post_city("Turin", "Centro", Some("crashes-everything"))
        .await;
    let elapsed = started.elapsed();
    let body = assert_problem(response, 502).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("dead_lettered"),
        "{body}"
    );
    // At once, not at the 30 s deadline (the bound leaves room for a slow host).
    assert!(elapsed < Duration::from_secs(10), "502 after {elapsed:?}");
    println!("poison (crash before ack x3): 502 after {elapsed:?}");

    let letters: Vec<Value> = http
        .get(format!("{}/api/dead-letters", proxy.url))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["requestId"], "crashes-everything");
    assert_eq!(letters[0]["reason"], "max_deliveries");
    assert_eq!(letters[0]["deliveries"], 3);
    assert_eq!(
        proxy
            .metric_sum("proxy_faults_injected_total{kind=\"crash_before_ack\"}")
            .await,
        3.0
    );

    // Fix the fault, replay: processed once, the dead-letter stream is empty.
    assert_eq!(
        http.post(format!("{config_url}/reset"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("reset")
            .status(),
        200
    );
    let id = letters[0]["id"].as_str().expect("dead-letter id");
    let replay = http
        .post(format!("{}/api/dead-letters/{id}/replay", proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 200);
    wait_metric(
        proxy,
        "proxy_processed_total{operation=\"weather.city\",outcome=\"ok\"}",
        1.0,
    )
    .await;
    let redis = stack.redis_client().await;
    assert_eq!(stream_len(&redis, "weather-requests:dlq").await, 0);
    wait_drained(&redis, Duration::from_secs(15)).await;
    let missing = http
        .post(format!("{}/api/dead-letters/{id}/replay", proxy.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("replay again");
    assert_problem(missing, 404).await;
    assert_problem(
        http.delete(format!("{}/api/dead-letters/not-an-id", proxy.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("DELETE"),
        400,
    )
    .await;
}

#[tokio::test]
async fn injected_errors_and_crashes_under_load_end_in_a_reply_or_a_502_never_a_wait() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(StackOptions {
        proxies: 2,
        proxy_env: with(
            fast_recovery("300ms", "50ms"),
            &[("PROCESSING_DELAY_MS", "0-5"), ("TERMINALS", "8")],
        ),
        ..Default::default()
    })
    .await;
    for proxy in &stack.proxies {
        let response = stack
            .http
            .post(format!("{}/api/config", proxy.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"processingErrorRate": 0.2, "crashBeforeAckRate": 0.1}))
            .send()
            .await
            .expect("POST config");
        assert_eq!(response.status(), 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&stack, 20, "10s", stop.clone());
    wait_metric(stack.ingress(), "ingress_round_trip_seconds_count", 400.0).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(load).await;
    let counts = by_status(&outcomes);
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
    println!(
        "20% errors + 10% crashes: {} requests {counts:?}, slowest {slowest:?}",
        outcomes.len()
    );
    for outcome in &outcomes {
        assert!(
            matches!(outcome.status, 200 | 502),
            "unexpected outcome {outcome:?}"
        );
        assert!(outcome.correct, "{outcome:?}");
    }
    let errors = counts.get(&502).copied().unwrap_or(0) as f64 / outcomes.len() as f64;
    assert!(
        (0.1..0.35).contains(&errors),
        "about 20% 502s, got {errors:.2}"
    );
    let redis = stack.redis_client().await;
    wait_drained(&redis, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn a_rolling_restart_of_the_proxies_under_load_fails_no_request() {
    let _serial = SERIAL.lock().await;
    let proxy_env = with(
        fast_recovery("2s", "200ms"),
        &[("PROCESSING_DELAY_MS", "5-20"), ("TERMINALS", "5")],
    );
    let mut stack = Stack::start(StackOptions {
        proxies: 2,
        proxy_env: proxy_env.clone(),
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_load(&stack, 10, "10s", stop.clone());
    for round in 0..2 {
        wait_for_more_round_trips(&stack, 100.0).await;
        let old = &mut stack.proxies[round];
        old.sigterm();
        assert_eq!(
            old.wait_exit(Duration::from_secs(30)).await,
            Some(0),
            "round {round}: {}",
            old.logs()
        );
        stack.add_proxy(&proxy_env).await;
    }
    wait_for_more_round_trips(&stack, 100.0).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = collect(load).await;
    let counts = by_status(&outcomes);
    println!("rolling restart: {} requests {counts:?}", outcomes.len());
    assert_eq!(
        counts.get(&200).copied().unwrap_or(0),
        outcomes.len(),
        "every request succeeded: {counts:?}"
    );
    assert!(outcomes.iter().all(|o| o.correct));
}
