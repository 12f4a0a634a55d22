//! Runs the whole tool in-process against a tiny hand-written HTTP/1.1 server
//! that imitates the ingress API, so the runner, the verification and the
//! report are exercised end to end without the real stack. The lead's
//! end-to-end test against the real services is separate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use load_test::{Config, HealthCheckError, Mode, Profile, Stop, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq)]
enum Behavior {
    /// Echo the request id, city and location back, like the real service.
    Echo,
    /// Every 10th reply carries another request's id: crossed replies.
    Cross,
    /// Every 4th request gets a 503 problem+json.
    Shed,
    /// `/healthz` says 503.
    Unhealthy,
    /// Every reply is held back this long: a service slower than the rate.
    Slow(Duration),
    /// Each request is held 2 ms, and answered 503 when more than this many
    /// are in flight at once: a service that sheds load above a capacity.
    ShedAbove(usize),
}

struct Server {
    behavior: Behavior,
    seen: AtomicU64,
    in_flight: AtomicUsize,
}

async fn start(behavior: Behavior) -> (String, Arc<Server>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = Arc::new(Server {
        behavior,
        seen: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(handle(sock, Arc::clone(&s)));
        }
    });
    (url, server)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn handle(mut sock: TcpStream, server: Arc<Server>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let header_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut content_length = 0usize;
        let mut request_id = String::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    "x-request-id" => request_id = v.trim().to_owned(),
                    _ => {}
                }
            }
        }
        while buf.len() < header_end + content_length {
            match sock.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf[header_end..header_end + content_length].to_vec();
        buf.drain(..header_end + content_length);

        let (status, content_type, reply_id, payload) = if request_line.starts_with("GET /healthz")
        {
            if server.behavior == Behavior::Unhealthy {
                (
                    "503 Service Unavailable",
                    "application/json",
                    String::new(),
                    r#"{"status":"unhealthy"}"#.to_owned(),
                )
            } else {
                (
                    "200 OK",
                    "application/json",
                    String::new(),
                    r#"{"status":"healthy","redisRoundTripMs":0.4,"requestsInFlight":0}"#
                        .to_owned(),
                )
            }
        } else if request_line.starts_with("POST /WeatherForecast/city") {
            let n = server.seen.fetch_add(1, Ordering::Relaxed);
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let concurrent = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            match server.behavior {
                Behavior::Slow(d) => tokio::time::sleep(d).await,
                Behavior::ShedAbove(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                _ => {}
            }
            // Decremented before the reply is written, so the client can never
            // send its next request while this one still counts as in flight.
            server.in_flight.fetch_sub(1, Ordering::SeqCst);
            let overloaded =
                matches!(server.behavior, Behavior::ShedAbove(cap) if concurrent > cap);
            match server.behavior {
                _ if overloaded => (
                    "503 Service Unavailable",
                    "application/problem+json",
                    request_id.clone(),
                    format!(
                        r#"{{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"over capacity","requestId":"{request_id}"}}"#
                    ),
                ),
                Behavior::Shed if n.is_multiple_of(4) => (
                    "503 Service Unavailable",
                    "application/problem+json",
                    request_id.clone(),
                    format!(
                        r#"{{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"overloaded","requestId":"{request_id}"}}"#
                    ),
                ),
                _ => {
                    let id = if server.behavior == Behavior::Cross && n % 10 == 3 {
                        format!("{request_id}-someone-else")
                    } else {
                        request_id.clone()
                    };
                    let reply = serde_json::json!({
                        "requestId": id, "city": sent["city"], "location": sent["location"],
                        "forecastTime": "2026-11-21T22:00:00Z", "temperature": 12.3,
                        "condition": "Sunny", "humidity": 55, "windSpeed": 10.2
                    });
                    ("200 OK", "application/json", id, reply.to_string())
                }
            }
        } else {
            (
                "404 Not Found",
                "text/plain",
                String::new(),
                "not found".to_owned(),
            )
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
            payload.len()
        );
        if !reply_id.is_empty() {
            response.push_str(&format!("x-request-id: {reply_id}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&payload);
        if sock.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn config(url: &str) -> Config {
    Config {
        url: url.to_owned(),
        timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

#[tokio::test]
async fn sequential_smoke_test_passes() {
    let (url, server) = start(Behavior::Echo).await;
    let report = run(&Config {
        mode: Mode::Sequential,
        stop: Stop::Count(30),
        ..config(&url)
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.to_text());
    assert_eq!(report.requests, 30);
    assert_eq!(report.successes, 30);
    assert_eq!(report.concurrency, Some(1));
    assert_eq!(server.seen.load(Ordering::Relaxed), 30);
    assert!(report.latency_ms.is_some());
    assert_eq!(load_test::exit_code(&report), load_test::EXIT_PASS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_run_detects_crossed_replies() {
    let (url, _) = start(Behavior::Cross).await;
    let report = run(&Config {
        stop: Stop::Count(200),
        concurrency: 8,
        ..config(&url)
    })
    .await
    .unwrap();
    assert_eq!(report.requests, 200);
    assert_eq!(
        report.failures_by_kind["mismatch"],
        20,
        "{}",
        report.to_text()
    );
    assert_eq!(report.failures, 20);
    assert!(!report.passed);
    assert_eq!(load_test::exit_code(&report), load_test::EXIT_FAILED);
    assert!(report.sample_errors[0].contains("someone-else"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_load_is_counted_by_status_and_error_rate_decides() {
    let (url, _) = start(Behavior::Shed).await;
    let report = run(&Config {
        stop: Stop::Count(100),
        max_error_rate: 0.25,
        ..config(&url)
    })
    .await
    .unwrap();
    assert_eq!(report.failures_by_status["503"], 25);
    assert_eq!(report.failures_by_kind["status"], 25);
    assert!(report.passed, "25% allowed: {}", report.to_text());
}

/// The issue: a service answering nearly everything with fast 503s got a
/// headline throughput that counted the 503s. Successful and total
/// throughput are reported separately, over the same wall-clock time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_and_total_throughput_are_separate() {
    let (url, _) = start(Behavior::Shed).await;
    let report = run(&Config {
        stop: Stop::Count(200),
        max_error_rate: 1.0,
        ..config(&url)
    })
    .await
    .unwrap();
    assert_eq!(report.successes, 150, "{}", report.to_text());
    assert!(report.requests_per_second > 0.0);
    let ratio = report.successes_per_second / report.requests_per_second;
    assert!((ratio - 0.75).abs() < 1e-9, "{ratio}");
    assert_eq!(report.throughput_rps, report.requests_per_second);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["throughputRps"], json["requestsPerSecond"]);
    assert!(json["successesPerSecond"].as_f64().unwrap() > 0.0);
    let text = report.to_text();
    assert!(
        text.contains(&format!(
            "throughput    {:.1} req/s successful, {:.1} req/s in total",
            report.successes_per_second, report.requests_per_second
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_measures_from_intended_send_time() {
    let (url, _) = start(Behavior::Echo).await;
    let report = run(&Config {
        mode: Mode::Rate,
        rate: Some(500.0),
        stop: Stop::Count(100),
        ..config(&url)
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.to_text());
    assert_eq!(report.requests, 100);
    // 100 requests at 500/s: the last is scheduled at 198 ms.
    assert!(report.duration_secs >= 0.19, "{}", report.duration_secs);
    let schedule = report.schedule.expect("rate mode reports its schedule");
    assert_eq!(schedule.sends, 100);
    assert!(report.service_latency_ms.is_some());
    assert_eq!(report.concurrency, None);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["latencyFrom"], "intendedSend");
}

/// A service slower than the rate with one request allowed in flight: every
/// send after the first waits for the previous 50 ms reply, so it leaves at
/// least 45 ms x its index behind its 5 ms slot, far past the 5 ms lateness
/// threshold on any host. That is falling behind, and the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_warns_when_the_generator_falls_behind() {
    let (url, _) = start(Behavior::Slow(Duration::from_millis(50))).await;
    let report = run(&Config {
        mode: Mode::Rate,
        rate: Some(200.0),
        stop: Stop::Count(20),
        max_in_flight: 1,
        ..config(&url)
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.to_text());
    let schedule = report.schedule.expect("rate mode reports its schedule");
    assert_eq!(schedule.sends, 20);
    assert!(schedule.late_sends >= 19, "{}", report.to_text());
    // Request 19 waited for 19 replies of at least 50 ms but was due at 95 ms.
    assert!(schedule.max_lag_ms >= 19.0 * 45.0, "{}", report.to_text());
    assert!(schedule.fell_behind);
    let text = report.to_text();
    assert!(text.contains("sends late"), "{text}");
    assert!(
        text.contains("WARNING     the generator fell behind (more than 1.000% of sends late"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["schedule"]["fellBehind"], true);
    assert_eq!(json["schedule"]["sends"], 20);
}

/// Per-stage figures of a spike against a service that sheds above two
/// requests in flight. Which requests get shed depends on timing, so this
/// checks what does not: every stage is there with its definition, has
/// requests, its figures are consistent, and the stages add up to the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_reports_figures_per_stage() {
    let (url, _) = start(Behavior::ShedAbove(2)).await;
    let report = run(&Config {
        profile: Some(Profile::Spike),
        profile_duration: Some(Duration::from_secs(3)),
        concurrency: 2,
        spike_multiplier: 3,
        max_error_rate: 1.0,
        ..config(&url)
    })
    .await
    .unwrap();
    let text = report.to_text();
    let stages = report.stages.as_ref().expect("a profile reports stages");
    let names: Vec<&str> = stages.iter().map(|s| s.stage.name).collect();
    assert_eq!(names, ["baseline", "spike", "recovery"]);
    let users: Vec<(usize, usize)> = stages.iter().map(|s| (s.stage.from, s.stage.to)).collect();
    assert_eq!(users, [(2, 2), (6, 6), (2, 2)]);
    for s in stages {
        assert!(s.requests > 0, "{text}");
        assert_eq!(s.requests, s.successes + s.failures, "{text}");
        assert_eq!(s.measured_secs, s.stage.duration.as_secs_f64(), "{text}");
        let rps = s.requests as f64 / s.measured_secs;
        assert!((s.requests_per_second - rps).abs() < 1e-9, "{text}");
        let statuses: u64 = s.failures_by_status.values().sum();
        assert_eq!(statuses, s.failures_by_kind["status"], "{text}");
        assert_eq!(s.latency_ms.is_some(), s.successes > 0, "{text}");
    }
    let sum = |f: fn(&load_test::StageReport) -> u64| stages.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.requests), report.requests, "{text}");
    assert_eq!(sum(|s| s.successes), report.successes, "{text}");
    assert_eq!(sum(|s| s.failures), report.failures, "{text}");
    let shed = |s: &load_test::StageReport| s.failures_by_status.get("503").copied().unwrap_or(0);
    assert_eq!(
        sum(shed),
        report.failures_by_status.get("503").copied().unwrap_or(0),
        "{text}"
    );
    assert!(
        text.contains("(each request counted in the stage it was sent in)"),
        "{text}"
    );
    assert!(
        text.contains("    spike       6 users for 0.600 s: "),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["stages"][2]["name"], "recovery");
    assert_eq!(json["stages"][2]["duration"], 1.5);
    assert!(json["stages"][2]["requests"].as_u64().unwrap() > 0);
    assert!(json["stages"][2]["p99FarAboveFirstStage"].is_boolean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_and_profile_runs_stop_on_time() {
    let (url, _) = start(Behavior::Echo).await;
    let report = run(&Config {
        stop: Stop::Duration(Duration::from_millis(300)),
        concurrency: 2,
        warmup: Some(Duration::from_millis(100)),
        ..config(&url)
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.to_text());
    assert!(report.warmup_requests > 0);
    assert!(
        report.duration_secs >= 0.3 && report.duration_secs < 2.0,
        "{}",
        report.duration_secs
    );

    let report = run(&Config {
        profile: Some(Profile::Spike),
        profile_duration: Some(Duration::from_millis(500)),
        concurrency: 2,
        spike_multiplier: 3,
        ..config(&url)
    })
    .await
    .unwrap();
    assert!(report.passed, "{}", report.to_text());
    assert_eq!(report.concurrency, Some(6));
    assert_eq!(report.stages.as_ref().map(Vec::len), Some(3));
    assert!(
        report.duration_secs >= 0.5 && report.duration_secs < 2.5,
        "{}",
        report.duration_secs
    );
}

#[tokio::test]
async fn no_service_is_a_health_check_error() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let err = run(&config(&format!("http://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    let health = err
        .downcast_ref::<HealthCheckError>()
        .expect("a HealthCheckError");
    assert!(health.unreachable);
    assert_eq!(health.reason, "connection refused");
    assert!(err.to_string().contains("start it with ./scripts/run"));
}

#[tokio::test]
async fn unhealthy_service_is_a_health_check_error() {
    let (url, server) = start(Behavior::Unhealthy).await;
    let err = run(&config(&url)).await.unwrap_err();
    let health = err
        .downcast_ref::<HealthCheckError>()
        .expect("a HealthCheckError");
    assert!(!health.unreachable);
    assert!(health.reason.contains("503"), "{}", health.reason);
    assert!(health.reason.contains("unhealthy"), "{}", health.reason);
    assert_eq!(
        server.seen.load(Ordering::Relaxed),
        0,
        "no load after a failed health check"
    );
}

#[tokio::test]
async fn cancelling_returns_a_partial_report() {
    let (url, _) = start(Behavior::Echo).await;
    let cancel = load_test::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.cancel();
    });
    let report = load_test::run_with_cancel(
        &Config {
            mode: Mode::Rate,
            rate: Some(100.0),
            stop: Stop::Duration(Duration::from_secs(30)),
            ..config(&url)
        },
        cancel,
    )
    .await
    .unwrap();
    assert!(report.interrupted);
    assert!(
        report.requests > 0 && report.requests < 100,
        "{}",
        report.requests
    );
    assert!(report.duration_secs < 5.0);
}
