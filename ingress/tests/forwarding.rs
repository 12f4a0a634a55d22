//! The generic forwarding mode end to end: a real upstream process (`echo-upstream`) behind
//! real proxies (`QUEUE`, `UPSTREAM_URL`) and ingresses (`ROUTES`, `ROUTES_FILE`) and a real
//! redis-server.

mod common;

use std::time::Duration;

use common::{Stack, StackOptions, assert_forecast, assert_problem, get_json};
use serde_json::Value;
use testkit::{Service, wait_until};

/// An upstream, one proxy serving queue `orders` in front of it, and an ingress routing `/api`
/// there (plus the weather proxy, so the demo is checked beside it).
async fn forwarding_stack(
    ingress_env: Vec<(&'static str, String)>,
    proxy_env: Vec<(&'static str, String)>,
) -> (Stack, Service) {
    let upstream = Service::start("echo-upstream", &[]).await;
    let mut ingress_env = ingress_env;
    // The queue's proxy starts after the ingress: never let a slow start read as "no consumers".
    ingress_env.push(("NO_CONSUMER_GRACE", "30s".to_string()));
    let mut stack = Stack::start(StackOptions {
        proxies: 1,
        ingress_env,
        ..StackOptions::default()
    })
    .await;
    let extra: Vec<(&'static str, &str)> =
        proxy_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    add_forwarder(&mut stack, "orders", &upstream.url, &extra).await;
    (stack, upstream)
}

/// An ingress with `env` and no proxy yet: each test adds its queues' proxies.
async fn ingress_alone(mut env: Vec<(&'static str, String)>) -> Stack {
    // The queues' proxies start after the ingress: never let that read as "no consumers".
    env.push(("NO_CONSUMER_GRACE", "30s".to_string()));
    Stack::start(StackOptions {
        proxies: 0,
        ingress_env: env,
        ..StackOptions::default()
    })
    .await
}

/// Starts a proxy forwarding `queue` to `upstream`, with `extra` settings.
async fn add_forwarder(
    stack: &mut Stack,
    queue: &str,
    upstream: &str,
    extra: &[(&'static str, &str)],
) {
    let mut env = vec![
        ("QUEUE", queue.to_string()),
        ("UPSTREAM_URL", upstream.to_string()),
    ];
    env.extend(extra.iter().map(|(name, value)| (*name, value.to_string())));
    stack.add_proxy(&env).await;
}

fn routes(value: &str) -> Vec<(&'static str, String)> {
    vec![("ROUTES", value.to_string())]
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

async fn upstream_stats(upstream: &Service) -> Value {
    get_json(&reqwest::Client::new(), &format!("{}/stats", upstream.url)).await
}

#[tokio::test]
async fn every_method_path_and_query_reaches_the_upstream_and_the_answer_comes_back() {
    let (stack, _upstream) = forwarding_stack(routes("/api=orders"), vec![]).await;
    let url = format!("{}/api/echo/items/7?a=1&b=%C3%A9&c", stack.ingress().url);
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let body = format!("body of {method}");
        let response = stack
            .http
            .request(method.clone(), &url)
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{method}");
        assert_eq!(
            header(&response, "x-echo-method").as_deref(),
            Some(method.as_str())
        );
        assert_eq!(
            header(&response, "x-echo-path").as_deref(),
            Some("/api/echo/items/7?a=1&b=%C3%A9&c"),
            "{method}: path and query arrive unchanged"
        );
        assert!(header(&response, "x-request-id").is_some());
        let length = header(&response, "content-length");
        let got = response.bytes().await.expect("body");
        if method == reqwest::Method::HEAD {
            assert!(got.is_empty());
            assert_eq!(
                length.as_deref(),
                Some(body.len().to_string().as_str()),
                "HEAD keeps the length the upstream declared"
            );
        } else {
            assert_eq!(got, body.as_bytes(), "{method}");
        }
    }
}

#[tokio::test]
async fn a_one_mebibyte_binary_body_arrives_and_returns_byte_for_byte() {
    let (stack, _upstream) = forwarding_stack(routes("/api=orders"), vec![]).await;
    // Every byte value, NULs, CR/LF and invalid UTF-8 included.
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let response = stack
        .http
        .post(format!("{}/api/echo/blob", stack.ingress().url))
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("application/octet-stream")
    );
    let got = response.bytes().await.expect("body");
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the body came back changed");

    // One byte over the route's limit (1 MiB by default): 413, nothing queued.
    let mut over = body;
    over.push(0);
    let response = stack
        .http
        .post(format!("{}/api/echo/blob", stack.ingress().url))
        .body(over)
        .send()
        .await
        .expect("POST");
    assert_problem(response, 413).await;
}

#[tokio::test]
async fn headers_pass_unchanged_except_hop_by_hop_ones_and_forwarding_headers_are_added() {
    let (stack, _upstream) = forwarding_stack(routes("/api=orders"), vec![]).await;
    let latin = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").expect("obs-text value");
    let response = stack
        .http
        .get(format!("{}/api/inspect/x", stack.ingress().url))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("x-latin", latin)
        .header("authorization", "Bearer abc")
        .header("connection", "x-secret")
        .header("x-secret", "must-not-pass")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "fwd-headers-1")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.expect("JSON");
    let headers: Vec<(String, String)> = seen["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap_or_default().to_string(),
                pair[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        values("x-multi"),
        ["one", "two"],
        "repeated headers keep their order"
    );
    assert_eq!(
        values("x-latin"),
        ["hex:636166e9"],
        "non-ASCII bytes arrive unchanged"
    );
    assert_eq!(values("authorization"), ["Bearer abc"]);
    for hop in [
        "x-secret",
        "te",
        "proxy-authorization",
        "keep-alive",
        "upgrade",
        "trailer",
    ] {
        assert!(values(hop).is_empty(), "{hop} must not reach the upstream");
    }
    assert_eq!(values("x-request-id"), ["fwd-headers-1"]);
    assert_eq!(values("x-delivery-attempt"), ["1"]);
    assert_eq!(values("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(values("x-forwarded-proto"), ["http"]);
    assert_eq!(values("via"), ["1.1 ingress"]);
    assert_eq!(values("x-forwarded-host").len(), 1);
    assert_eq!(seen["method"], "GET");

    // The response side: repeated and non-ASCII headers come back, hop-by-hop ones do not.
    let response = stack
        .http
        .get(format!("{}/api/echo/x", stack.ingress().url))
        .send()
        .await
        .expect("GET");
    let multi: Vec<_> = response.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(
        response
            .headers()
            .get("x-latin")
            .map(|v| v.as_bytes().to_vec()),
        Some(b"caf\xe9".to_vec())
    );
    assert_eq!(
        response
            .headers()
            .get("server")
            .and_then(|v| v.to_str().ok()),
        Some("echo-upstream"),
        "the upstream's Server header is part of its answer"
    );
    assert!(
        response.headers().get("x-hop").is_none(),
        "a header named in Connection came back"
    );
}

#[tokio::test]
async fn upstream_statuses_come_back_unchanged_and_other_paths_keep_their_routes() {
    let (stack, _upstream) = forwarding_stack(routes("/api=orders"), vec![]).await;
    for status in [404u16, 500, 503, 201, 302] {
        let response = stack
            .http
            .get(format!("{}/api/status/{status}", stack.ingress().url))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), status);
        let ct = header(&response, "content-type").unwrap_or_default();
        assert!(
            !ct.contains("problem"),
            "the upstream's {status} is not ours: {ct}"
        );
        assert_eq!(
            response.text().await.expect("body"),
            format!("status {status}")
        );
    }
    // `/api` takes whole segments only: `/api-docs` and `/apix` are not forwarded.
    let response = stack
        .http
        .get(format!("{}/apix/echo", stack.ingress().url))
        .send()
        .await
        .expect("GET");
    assert_problem(response, 404).await;
    let response = stack
        .http
        .get(format!("{}/api-docs/openapi.json", stack.ingress().url))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    // The weather demo is unchanged beside the forwarded route.
    let response = stack
        .post_city("Paris", "Montmartre", Some("weather-beside-1"))
        .await;
    assert_forecast(response, "Paris", "Montmartre", Some("weather-beside-1")).await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_at_once_and_a_slow_one_a_504_that_cancels_the_call() {
    let upstream = Service::start("echo-upstream", &[]).await;
    let mut stack = ingress_alone(routes("/down=down,/api=orders")).await;
    let closed = format!("http://127.0.0.1:{}", testkit::free_port());
    add_forwarder(&mut stack, "down", &closed, &[]).await;
    add_forwarder(&mut stack, "orders", &upstream.url, &[]).await;
    for method in [reqwest::Method::POST, reqwest::Method::GET] {
        let response = stack
            .http
            .request(method.clone(), format!("{}/down/x", stack.ingress().url))
            .header("request-timeout", "20s")
            .send()
            .await
            .expect("request");
        let problem = assert_problem(response, 502).await;
        assert_eq!(
            problem["type"], "urn:problem:broker:upstream-unavailable",
            "{method}: {problem}"
        );
    }

    let response = stack
        .http
        .get(format!("{}/api/slow?ms=30000", stack.ingress().url))
        .header("request-timeout", "1s")
        .send()
        .await
        .expect("GET");
    assert_problem(response, 504).await;
    wait_until(
        "the upstream call to be cancelled",
        Duration::from_secs(15),
        || async { upstream_stats(&upstream).await["cancelled"].as_u64() >= Some(1) },
    )
    .await;
}

/// An "upstream" that answers every request with bytes that are not HTTP (for a path with
/// `badchunk`: a valid head, then a chunked body whose chunk size is not a number), counting
/// the connections it accepted. A real HTTP server cannot be made to send this; a raw socket
/// can.
async fn garbage_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port for the garbage upstream");
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .expect("the garbage upstream's address")
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer: &[u8] = if seen.windows(8).any(|w| w == b"badchunk") {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n"
                } else {
                    b"THIS IS NOT HTTP\r\n\r\n"
                };
                let _ = socket.write_all(answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn an_upstream_answering_with_something_not_http_is_a_502_at_once_and_not_retried() {
    let (garbage, accepted) = garbage_upstream().await;
    let mut stack = ingress_alone(routes("/api=orders")).await;
    add_forwarder(&mut stack, "orders", &garbage, &[]).await;
    // A GET is safe to repeat after a connection failure; an invalid answer is not one.
    for (path, what) in [("/api/x", "head"), ("/api/badchunk", "body")] {
        let response = stack
            .http
            .get(format!("{}{path}", stack.ingress().url))
            .header("request-timeout", "20s")
            .send()
            .await
            .expect("GET");
        let problem = assert_problem(response, 502).await;
        assert_eq!(
            problem["type"], "urn:problem:broker:proxy-error",
            "{what}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("upstream_invalid_response:")
                && detail.contains("not valid HTTP/1.1"),
            "{what}: {problem}"
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "each request sent once, not retried"
    );

    // CONNECT is never forwarded, whatever its target: a 2xx would read as an open tunnel.
    let mut socket = testkit::raw_http::connect(&stack.ingress().url).await;
    testkit::raw_http::send(
        &mut socket,
        b"CONNECT /api/x HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .await;
    let response = testkit::raw_http::read_response(&mut socket, Duration::from_secs(15)).await;
    assert_eq!(response.status, 405, "{}", response.head);
    assert!(
        response.text().contains("opens no tunnels"),
        "{}",
        response.text()
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the CONNECT reached no upstream"
    );
}

#[tokio::test]
async fn responses_over_the_limit_are_a_502_and_route_settings_apply() {
    let upstream = Service::start("echo-upstream", &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        "[[route]]\nprefix = \"/v1/orders\"\nqueue = \"orders\"\nmax_body_bytes = 10\nmethods = [\"GET\", \"POST\"]\nstrip_prefix = true\n",
    )
    .expect("write routes file");
    let mut stack = ingress_alone(vec![("ROUTES_FILE", file.display().to_string())]).await;
    add_forwarder(
        &mut stack,
        "orders",
        &upstream.url,
        &[("UPSTREAM_MAX_RESPONSE_BYTES", "1000")],
    )
    .await;
    let base = format!("{}/v1/orders", stack.ingress().url);
    let response = stack
        .http
        .get(format!("{base}/echo/a?q=1"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-echo-path").as_deref(),
        Some("/echo/a?q=1"),
        "prefix stripped"
    );

    let response = stack
        .http
        .get(format!("{base}/big?bytes=5000"))
        .send()
        .await
        .expect("GET");
    let problem = assert_problem(response, 502).await;
    assert_eq!(
        problem["type"],
        "urn:problem:broker:upstream-response-too-large"
    );
    let response = stack
        .http
        .get(format!("{base}/big?bytes=1000"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);

    let response = stack
        .http
        .post(format!("{base}/echo"))
        .body("0123456789A")
        .send()
        .await
        .expect("POST");
    assert_problem(response, 413).await;
    let response = stack
        .http
        .delete(format!("{base}/echo"))
        .send()
        .await
        .expect("DELETE");
    assert_problem(response, 405).await;
    let response = stack
        .http
        .get(format!("{base}/echo"))
        .header("x-request-id", "bad id")
        .send()
        .await
        .expect("GET");
    assert_problem(response, 400).await;
}

#[tokio::test]
async fn each_queue_is_its_own_stream_so_a_slow_backend_holds_up_no_other() {
    let slow_upstream = Service::start("echo-upstream", &[]).await;
    let fast_upstream = Service::start("echo-upstream", &[]).await;
    let mut stack = ingress_alone(routes("/api=orders,/reports=reports")).await;
    add_forwarder(
        &mut stack,
        "orders",
        &slow_upstream.url,
        &[("TERMINALS", "1")],
    )
    .await;
    add_forwarder(&mut stack, "reports", &fast_upstream.url, &[]).await;
    // Occupy the orders queue's only terminal for a long time.
    let http = stack.http.clone();
    let slow_url = format!("{}/api/slow?ms=20000", stack.ingress().url);
    let slow = tokio::spawn(async move {
        http.get(slow_url)
            .header("request-timeout", "30s")
            .send()
            .await
            .map(|r| r.status())
    });
    wait_until(
        "the slow request to reach its upstream",
        Duration::from_secs(15),
        || async { upstream_stats(&slow_upstream).await["requests"].as_u64() >= Some(1) },
    )
    .await;
    for i in 0..5 {
        let response = stack
            .http
            .post(format!("{}/reports/echo/{i}", stack.ingress().url))
            .body(format!("report {i}"))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), format!("report {i}"));
    }
    assert!(
        !slow.is_finished(),
        "the reports were answered while the orders queue was busy"
    );
    let redis = stack.redis_client().await;
    let served = |key: &'static str| {
        let redis = redis.clone();
        async move {
            use fred::prelude::*;
            redis
                .get::<Option<u64>, _>(key)
                .await
                .ok()
                .flatten()
                .unwrap_or(0)
        }
    };
    assert_eq!(served("reports-requests:served").await, 5);
    assert_eq!(served("orders-requests:served").await, 0);
    slow.abort();
}

#[tokio::test]
async fn a_request_whose_proxy_is_killed_reaches_the_upstream_again_with_attempt_2_and_is_answered_once()
 {
    let upstream = Service::start("echo-upstream", &[]).await;
    let mut stack = ingress_alone(routes("/api=orders")).await;
    let proxy_env = [
        ("QUEUE", "orders".to_string()),
        ("UPSTREAM_URL", upstream.url.clone()),
        ("RECLAIM_MIN_IDLE", "1s".to_string()),
        ("RECLAIM_INTERVAL", "200ms".to_string()),
    ];
    stack.add_proxy(&proxy_env).await;
    let http = stack.http.clone();
    let url = format!("{}/api/slow?ms=5000", stack.ingress().url);
    let call = tokio::spawn(async move {
        let response = http
            .get(url)
            .header("x-request-id", "killed-1")
            .header("request-timeout", "30s")
            .send()
            .await?;
        Ok::<_, reqwest::Error>((response.status(), response.text().await?))
    });
    wait_until(
        "the first delivery to reach the upstream",
        Duration::from_secs(15),
        || async {
            upstream_stats(&upstream).await["attempts"]["killed-1"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    )
    .await;
    stack.proxies[0].sigkill();
    stack.add_proxy(&proxy_env).await;
    let (status, body) = call.await.expect("task").expect("response");
    assert_eq!(status, 200);
    assert_eq!(body, "slept 5000 ms");
    let attempts = upstream_stats(&upstream).await["attempts"]["killed-1"].clone();
    assert_eq!(
        attempts,
        serde_json::json!(["1", "2"]),
        "the upstream saw the first delivery and the reclaimed one"
    );
}

#[test]
fn bad_route_settings_stop_the_ingress_with_a_clear_message() {
    for (routes, buffer, expected) in [
        ("/metrics=x", "67108864", "overlaps"),
        ("/api", "67108864", "PREFIX=QUEUE"),
        ("/api=bad queue", "67108864", "queue name"),
        ("/api=a,/api=b", "67108864", "twice"),
        ("/api=a", "4096", "FORWARD_BUFFER_BYTES"),
    ] {
        let output = std::process::Command::new(testkit::binary("ingress"))
            .env_clear()
            .env("ROUTES", routes)
            .env("FORWARD_BUFFER_BYTES", buffer)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env(
                "REDIS_URL",
                format!("redis://127.0.0.1:{}", testkit::free_port()),
            )
            .output()
            .expect("run ingress");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{routes}: started");
        assert!(stderr.contains(expected), "{routes}: {stderr}");
    }
}

#[tokio::test]
async fn the_body_budget_holds_only_bodies_being_read_and_bodyless_requests_take_none() {
    let upstream = Service::start("echo-upstream", &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        "[[route]]\nprefix = \"/api\"\nqueue = \"orders\"\nmax_body_bytes = 10000\n",
    )
    .expect("write routes file");
    let mut stack = ingress_alone(vec![
        ("ROUTES_FILE", file.display().to_string()),
        ("FORWARD_BUFFER_BYTES", "16384".to_string()),
    ])
    .await;
    add_forwarder(&mut stack, "orders", &upstream.url, &[]).await;
    let ingress = stack.ingress().url.clone();

    // A body being read holds its declared size: another that would pass the budget is
    // refused at once with 503 overloaded (not queued); once the first is in, it passes.
    let mut slow_body = testkit::raw_http::connect(&ingress).await;
    testkit::raw_http::send(
        &mut slow_body,
        b"POST /api/echo/held HTTP/1.1\r\nHost: test\r\nContent-Length: 9000\r\n\r\nstart",
    )
    .await;
    let url = format!("{ingress}/api/echo/second");
    // The held request is admitted (and has reserved its body) once it is in flight.
    common::wait_metric(stack.ingress(), "ingress_requests_in_flight", 1.0).await;
    let response = stack
        .http
        .post(&url)
        .body(vec![1u8; 9000])
        .send()
        .await
        .expect("POST");
    let problem = assert_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:problem:broker:overloaded");
    testkit::raw_http::send(&mut slow_body, &vec![b'x'; 8995]).await;
    let held = testkit::raw_http::read_response(&mut slow_body, Duration::from_secs(15)).await;
    assert_eq!(held.status, 200, "{}", held.head);
    let response = stack
        .http
        .post(&url)
        .body(vec![1u8; 9000])
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    // Requests without a body reserve nothing, and a queued request holds nothing: three slow
    // GETs in flight at once with a budget smaller than two route limits.
    let gets: Vec<_> = (0..3)
        .map(|_| {
            let http = stack.http.clone();
            let url = format!("{ingress}/api/slow?ms=1000");
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for get in gets {
        assert_eq!(get.await.expect("task").expect("GET"), 200);
    }

    let _ = upstream;
}

#[tokio::test]
async fn dot_segments_and_slow_bodies_get_clear_errors() {
    let (stack, upstream) = forwarding_stack(
        vec![
            ("ROUTES", "/api=orders".to_string()),
            ("HTTP_BODY_READ_TIMEOUT", "1s".to_string()),
        ],
        vec![],
    )
    .await;
    let ingress = stack.ingress().url.clone();
    for path in [
        "/api/x/../admin",
        "/api/%2e%2e/admin",
        "/api/./x",
        "/api/x/.%2E",
    ] {
        let mut socket = testkit::raw_http::connect(&ingress).await;
        testkit::raw_http::send(&mut socket, &testkit::raw_http::get(path)).await;
        let response = testkit::raw_http::read_response(&mut socket, Duration::from_secs(10)).await;
        assert_eq!(response.status, 400, "{path}: {}", response.head);
        assert!(
            response.text().contains("invalid-path"),
            "{path}: {}",
            response.text()
        );
    }
    assert_eq!(
        upstream_stats(&upstream).await["requests"].as_u64(),
        Some(0)
    );

    let mut socket = testkit::raw_http::connect(&ingress).await;
    testkit::raw_http::send(
        &mut socket,
        b"POST /api/echo/x HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    let response = testkit::raw_http::read_response(&mut socket, Duration::from_secs(15)).await;
    assert_eq!(response.status, 408, "{}", response.head);
    assert!(
        response.text().contains("body-timeout"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn a_forwarding_proxy_lists_dead_letters_only_with_the_admin_token() {
    const TOKEN: &str = "forwarding-admin-token-0123";
    let (stack, upstream) = forwarding_stack(
        routes("/api=orders"),
        vec![("ADMIN_TOKEN", TOKEN.to_string())],
    )
    .await;
    // A second forwarding proxy, started without any token (the stack gives its proxies one).
    let tokenless = Service::start(
        "proxy",
        &[
            ("REDIS_URL", stack.proxy_redis_url.clone()),
            ("QUEUE", "orders".to_string()),
            ("UPSTREAM_URL", upstream.url.clone()),
        ],
    )
    .await;
    let (weather, forwarding) = (&stack.proxies[0], &stack.proxies[1]);
    let list = |base: &str, token: Option<&str>| {
        let request = stack.http.get(format!("{base}/api/dead-letters"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.expect("GET") }
    };

    // The weather demo's dead letters hold a city name: the list stays open.
    assert_eq!(list(&weather.url, None).await.status(), 200);

    // A forwarding proxy's dead letters hold callers' headers and bodies.
    let response = list(&forwarding.url, None).await;
    assert!(response.headers().contains_key("www-authenticate"));
    assert_problem(response, 401).await;
    assert_problem(
        list(&forwarding.url, Some("not-the-token-at-all")).await,
        401,
    )
    .await;
    assert_eq!(list(&forwarding.url, Some(TOKEN)).await.status(), 200);
    let problem = assert_problem(list(&tokenless.url, None).await, 403).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("ADMIN_TOKEN_FILE"),
        "{problem}"
    );

    // Each proxy's OpenAPI document says what it enforces.
    let http = &stack.http;
    let security = |base: &str| {
        let url = format!("{base}/api-docs/openapi.json");
        async move {
            get_json(http, &url).await["paths"]["/api/dead-letters"]["get"]["security"].clone()
        }
    };
    assert!(security(&weather.url).await.is_null());
    assert!(!security(&forwarding.url).await.is_null());
}

#[tokio::test]
async fn a_proxy_without_upstream_on_a_forwarded_queue_keeps_bodies_out_of_its_open_list() {
    let (stack, _upstream) = forwarding_stack(routes("/api=orders,/stray=stray"), vec![]).await;
    // The misconfiguration docs/forwarding.md warns about: QUEUE without UPSTREAM_URL. It
    // serves the weather demo, which dead-letters `http` entries, and its list needs no token.
    let misconfigured = Service::start(
        "proxy",
        &[
            ("REDIS_URL", stack.proxy_redis_url.clone()),
            ("QUEUE", "stray".to_string()),
        ],
    )
    .await;
    let response = stack
        .http
        .post(format!("{}/stray/x", stack.ingress().url))
        .body("secret-body-of-a-caller")
        .send()
        .await
        .expect("POST");
    assert_problem(response, 502).await;
    let letters = get_json(
        &stack.http,
        &format!("{}/api/dead-letters", misconfigured.url),
    )
    .await;
    let letters = letters.as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["operation"], "http");
    assert!(
        letters[0]["payload"].is_null(),
        "a forwarded body is listed without a token: {letters:?}"
    );
}
