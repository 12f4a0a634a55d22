//! Slow, silent and too many clients against the real ingress binary, over raw TCP sockets:
//! every phase of a connection has a deadline, the connection cap holds, and running out of
//! file descriptors neither stops the service nor makes it spin.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::raw_http::{connect, get, read_response, send, still_open_after, wait_closed};
use testkit::{Service, wait_until};

/// How long a test waits for something the server should do in a fraction of it.
const GENEROUS: Duration = Duration::from_secs(15);

async fn ingress_with(env: &[(&'static str, &str)]) -> Stack {
    Stack::start(StackOptions {
        proxies: 0,
        ingress_env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Default::default()
    })
    .await
}

async fn assert_serves(service: &Service) {
    let response = reqwest::get(format!("{}/health/live", service.url))
        .await
        .expect("GET /health/live");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed_after_the_header_timeout() {
    let stack = ingress_with(&[
        ("HTTP_HEADER_READ_TIMEOUT", "300ms"),
        ("HTTP_IDLE_TIMEOUT", "30s"),
    ])
    .await;
    let url = stack.ingress().url.clone();
    let started = Instant::now();

    // Silent: connects and sends nothing.
    let mut silent = connect(&url).await;
    // Half the headers, then nothing.
    let mut half = connect(&url).await;
    send(&mut half, b"GET /health/live HTTP/1.1\r\nHost: te").await;
    // A byte every 50 ms, never finishing: a deadline per read would never fire.
    let trickle = connect(&url).await;
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let trickler = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = trickle_write
            .write_all(b"GET /health/live HTTP/1.1\r\nX-Slow: ")
            .await;
        while trickle_write.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    wait_closed(&mut silent, GENEROUS).await;
    wait_closed(&mut half, GENEROUS).await;
    tokio::time::timeout(GENEROUS, async {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 64];
        while let Ok(n) = trickle_read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the trickling connection is closed");
    let _ = trickler.await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed by the header timeout, not at once"
    );

    wait_metric(
        stack.ingress(),
        "http_connection_timeouts_total{phase=\"header\"}",
        3.0,
    )
    .await;
    assert_serves(stack.ingress()).await;
}

#[tokio::test]
async fn a_request_whose_body_never_completes_gets_408_and_is_closed() {
    let stack = ingress_with(&[
        ("HTTP_BODY_READ_TIMEOUT", "300ms"),
        ("HTTP_HEADER_READ_TIMEOUT", "30s"),
        ("HTTP_IDLE_TIMEOUT", "30s"),
    ])
    .await;
    let url = stack.ingress().url.clone();

    let mut stalled = connect(&url).await;
    send(
        &mut stalled,
        b"POST /WeatherForecast/city HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\nX-Request-Id: slow-body-1\r\n\r\n{\"city\":\"Os",
    )
    .await;
    let received = wait_closed(&mut stalled, GENEROUS).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("urn:problem:broker:body-timeout"), "{text}");
    assert!(text.contains("\"requestId\":\"slow-body-1\""), "{text}");

    // A route that does not read its body answers, then closes: the rest never came.
    let mut unread = connect(&url).await;
    send(
        &mut unread,
        b"GET /health/live HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nabc",
    )
    .await;
    let received = wait_closed(&mut unread, GENEROUS).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    wait_metric(
        stack.ingress(),
        "http_connection_timeouts_total{phase=\"body\"}",
        1.0,
    )
    .await;
    let redis = stack.redis_client().await;
    assert_eq!(stream_len(&redis, REQUEST_STREAM).await, 0);
    assert_serves(stack.ingress()).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let stack = ingress_with(&[
        ("HTTP_HEADER_READ_TIMEOUT", "300ms"),
        ("HTTP_IDLE_TIMEOUT", "3s"),
    ])
    .await;
    let mut connection = connect(&stack.ingress().url).await;
    send(&mut connection, &get("/health/live")).await;
    assert_eq!(read_response(&mut connection, GENEROUS).await.status, 200);

    // Idle for longer than the header timeout: the idle limit applies, not the header one.
    assert!(
        still_open_after(&mut connection, Duration::from_millis(600)).await,
        "an idle connection is not cut by the header timeout"
    );
    send(&mut connection, &get("/health/live")).await;
    assert_eq!(read_response(&mut connection, GENEROUS).await.status, 200);
    let idle_since = Instant::now();
    wait_closed(&mut connection, GENEROUS).await;
    assert!(
        idle_since.elapsed() >= Duration::from_secs(2),
        "closed after {:?}, before the 3 s idle timeout",
        idle_since.elapsed()
    );
    wait_metric(
        stack.ingress(),
        "http_connection_timeouts_total{phase=\"idle\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_once_others_go_away() {
    let stack = ingress_with(&[
        ("MAX_CONNECTIONS", "4"),
        ("HTTP_HEADER_READ_TIMEOUT", "60s"),
    ])
    .await;
    let url = stack.ingress().url.clone();
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(connect(&url).await);
    }
    let mut waiting = connect(&url).await;
    send(&mut waiting, &get("/health/live")).await;
    let mut extra = Vec::new();
    for _ in 0..50 {
        extra.push(connect(&url).await);
    }
    assert!(
        still_open_after(&mut waiting, Duration::from_secs(1)).await,
        "a connection beyond MAX_CONNECTIONS is not served while the others are open"
    );

    drop(holders);
    let response = read_response(&mut waiting, GENEROUS).await;
    assert_eq!(response.status, 200, "served once a slot is free");
    drop(extra);
    drop(waiting);
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let response = http
            .get(format!("{url}/health/live"))
            .send()
            .await
            .expect("served after the flood");
        assert_eq!(response.status(), 200);
    }
    assert!(
        stack
            .ingress()
            .metric_sum("http_connection_limit_reached_total")
            .await
            >= 1.0
    );
    assert_eq!(
        stack.ingress().metric_sum("http_connections_max").await,
        4.0
    );
}

/// CPU time (user + system) the process used so far, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on every Linux architecture.
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn running_out_of_file_descriptors_neither_stops_the_service_nor_spins() {
    let redis = testkit::RedisServer::start().await;
    let ingress = Service::start_with_open_files_limit(
        "ingress",
        &[
            ("REDIS_URL", redis.url()),
            ("HTTP_HEADER_READ_TIMEOUT", "60s".into()),
        ],
        64,
    )
    .await;
    let pid = ingress.pid().expect("running");

    // More connections than the process may have files: accepts start failing with EMFILE.
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(connect(&ingress.url).await);
    }
    wait_until(
        "the ingress to report that it cannot accept",
        GENEROUS,
        || async { ingress.logs().contains("cannot accept connections") },
    )
    .await;

    let window = Duration::from_secs(2);
    let cpu_before = cpu_time(pid);
    tokio::time::sleep(window).await;
    let cpu_used = cpu_time(pid).saturating_sub(cpu_before);
    println!("CPU used while out of file descriptors: {cpu_used:?} in {window:?}");
    assert!(
        cpu_used < window / 5,
        "the accept loop spins: {cpu_used:?} of CPU in {window:?}"
    );

    drop(flood);
    let http = reqwest::Client::new();
    wait_until(
        "the ingress to serve again once the sockets are closed",
        Duration::from_secs(20),
        || {
            let http = http.clone();
            let url = format!("{}/health/live", ingress.url);
            async move {
                http.get(url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        },
    )
    .await;
    let logs = ingress.logs();
    let accept_lines = logs.matches("cannot accept connections").count();
    assert!(
        accept_lines <= 3,
        "accept failures are logged at most every 10 s, got {accept_lines} lines"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn tunnel_and_asterisk_requests_get_a_405_that_says_why_not_an_empty_404() {
    let stack = ingress_with(&[]).await;
    for request in [
        &b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"[..],
        &b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let mut connection = connect(&stack.ingress().url).await;
        send(&mut connection, request).await;
        let response = read_response(&mut connection, GENEROUS).await;
        let line = String::from_utf8_lossy(request.split(|b| *b == b'\r').next().unwrap_or(b""))
            .to_string();
        assert_eq!(response.status, 405, "{line}: {}", response.text());
        assert_eq!(
            response.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{line}"
        );
        let body = response.text();
        assert!(
            body.contains("opens no tunnels") && body.contains("/swagger"),
            "{line}: {body}"
        );
    }
    assert_serves(stack.ingress()).await;
}
