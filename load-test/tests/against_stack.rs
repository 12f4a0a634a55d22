//! The load-test binary against the real stack: redis-server, proxy and ingress processes.
//! This is the suite's smoke test: any failed or crossed reply fails it (--max-error-rate 0).

use std::time::Duration;

use serde_json::Value;
use testkit::{RedisServer, Service, binary, free_port};

async fn stack(redis: &RedisServer) -> (Service, Service) {
    let proxy = Service::start(
        "proxy",
        &[
            ("REDIS_URL", redis.url()),
            ("PROCESSING_DELAY_MS", "0-2".into()),
            ("TERMINALS", "16".into()),
        ],
    )
    .await;
    let ingress = Service::start("ingress", &[("REDIS_URL", redis.url())]).await;
    (proxy, ingress)
}

async fn load_test(args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(binary("load-test"))
            .args(args)
            .output(),
    )
    .await
    .expect("load-test finished within 60 s")
    .expect("run load-test");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn concurrent_and_rate_runs_pass_with_zero_errors() {
    let redis = RedisServer::start().await;
    let (_proxy, ingress) = stack(&redis).await;

    let (code, stdout, stderr) = load_test(&[
        "--url",
        &ingress.url,
        "--mode",
        "concurrent",
        "--count",
        "400",
        "--concurrency",
        "20",
        "--max-error-rate",
        "0",
        "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "stderr: {stderr}\nstdout: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["requests"], 400);
    assert_eq!(report["successes"], 400);
    assert_eq!(report["failures"], 0);

    let (code, stdout, stderr) = load_test(&[
        "--url",
        &ingress.url,
        "--mode",
        "rate",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--max-error-rate",
        "0",
        "--json",
    ])
    .await;
    assert_eq!(code, Some(0), "stderr: {stderr}\nstdout: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    let requests = report["requests"].as_u64().expect("requests");
    assert!(
        (300..=450).contains(&requests),
        "about 400 requests at 200/s for 2 s, got {requests}"
    );
    assert_eq!(report["failures"], 0);
}

#[tokio::test]
async fn no_service_means_exit_2_with_a_clear_message() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, _stdout, stderr) = load_test(&["--url", &url, "--count", "5"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no service at"), "{stderr}");
}
