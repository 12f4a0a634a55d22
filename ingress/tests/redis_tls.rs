//! TLS and mutual TLS to Redis, against a real TLS-only redis-server with certificates made
//! for the test: the round trip works with the right CA and client certificate; a wrong CA, an
//! expired server certificate or a missing client certificate keep the service not ready with
//! one log line naming the cause; unusable TLS files stop the service at start.

mod common;

use std::path::Path;
use std::time::Duration;

use common::assert_forecast;
use testkit::{RedisServer, Service, TestPki, TlsOptions, binary, free_port, wait_until};

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

async fn mutual_tls_redis(pki: &TestPki, server_cert: &Path) -> RedisServer {
    RedisServer::start_tls(&TlsOptions {
        cert: server_cert.to_path_buf(),
        key: pki.server_key(),
        ca: pki.ca_cert(),
        auth_clients: true,
    })
    .await
}

/// REDIS_URL and all three TLS files, right for `redis`.
fn tls_env(redis: &RedisServer, pki: &TestPki) -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", redis.url()),
        ("REDIS_TLS_CA_FILE", path(&pki.ca_cert())),
        ("REDIS_TLS_CERT_FILE", path(&pki.client_cert())),
        ("REDIS_TLS_KEY_FILE", path(&pki.client_key())),
    ]
}

#[tokio::test]
async fn requests_round_trip_over_mutual_tls() {
    let pki = TestPki::generate();
    let redis = mutual_tls_redis(&pki, &pki.server_cert()).await;
    assert!(redis.url().starts_with("rediss://127.0.0.1:"));
    let env = tls_env(&redis, &pki);
    let mut proxy_env = env.clone();
    proxy_env.push(("PROCESSING_DELAY_MS", "0".into()));
    let proxy = Service::start("proxy", &proxy_env).await;
    let ingress = Service::start("ingress", &env).await;

    let http = reqwest::Client::new();
    for (city, location) in [("Oslo", "Sentrum"), ("Lima", "Miraflores")] {
        let response = http
            .post(format!("{}/WeatherForecast/city", ingress.url))
            .json(&serde_json::json!({"city": city, "location": location}))
            .send()
            .await
            .expect("POST");
        assert_forecast(response, city, location, None).await;
    }
    for service in [&ingress, &proxy] {
        let health: serde_json::Value = http
            .get(format!("{}/healthz", service.url))
            .send()
            .await
            .expect("healthz")
            .json()
            .await
            .expect("JSON");
        assert_eq!(health["redis"], "connected", "{}: {health}", service.name);
        assert!(
            !service.logs().contains("cause="),
            "no connection problem expected:\n{}",
            service.logs()
        );
    }
    assert!(
        !redis.log().contains("Error accepting a client connection"),
        "every handshake succeeded:\n{}",
        redis.log()
    );
}

/// Starts `name` against a TLS setup that cannot work and checks that it stays not ready,
/// counts the failures under `cause`, and says so in exactly one log line however many
/// attempts fail.
async fn assert_unready_with_one_line(
    name: &str,
    env: &[(&'static str, String)],
    redis: &RedisServer,
    cause: &str,
    health_says: &str,
) {
    let service = Service::start_live(name, env).await;
    let counter = format!("redis_connection_errors_total{{cause=\"{cause}\"}}");
    wait_until(
        &format!("{name} to count 6 failed attempts as {cause}"),
        Duration::from_secs(30),
        || async { service.metric_sum(&counter).await >= 6.0 },
    )
    .await;
    // The server refused (or was refused by) each of those attempts: the retries are real.
    assert!(
        redis
            .log()
            .matches("Error accepting a client connection")
            .count()
            >= 2,
        "redis saw the failed handshakes:\n{}",
        redis.log()
    );

    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/health/ready", service.url))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let report: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(report["status"], "unhealthy");
    let redis_field = report["redis"].as_str().unwrap_or_default();
    assert!(
        redis_field.contains(health_says),
        "health names the cause ({health_says}): {report}"
    );

    let logs = service.logs();
    let cause_lines: Vec<&str> = logs.lines().filter(|l| l.contains("cause=")).collect();
    assert_eq!(
        cause_lines.len(),
        1,
        "one line about the connection problem, not one per attempt:\n{logs}"
    );
    assert!(cause_lines[0].contains(&format!("cause={cause}")), "{logs}");
    assert!(cause_lines[0].contains("ERROR"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn a_wrong_ca_keeps_the_ingress_not_ready_with_one_clear_line() {
    let pki = TestPki::generate();
    let redis = mutual_tls_redis(&pki, &pki.server_cert()).await;
    let mut env = tls_env(&redis, &pki);
    env[1] = ("REDIS_TLS_CA_FILE", path(&pki.other_ca_cert()));
    assert_unready_with_one_line(
        "ingress",
        &env,
        &redis,
        "server_cert_unknown_ca",
        "not signed by a trusted CA",
    )
    .await;
}

#[tokio::test]
async fn an_expired_server_certificate_keeps_the_proxy_not_ready_with_one_clear_line() {
    let pki = TestPki::generate();
    let redis = mutual_tls_redis(&pki, &pki.expired_server_cert()).await;
    let env = tls_env(&redis, &pki);
    assert_unready_with_one_line(
        "proxy",
        &env,
        &redis,
        "server_cert_expired",
        "certificate has expired",
    )
    .await;
}

#[tokio::test]
async fn a_missing_client_certificate_keeps_the_ingress_not_ready_with_one_clear_line() {
    let pki = TestPki::generate();
    let redis = mutual_tls_redis(&pki, &pki.server_cert()).await;
    let env = vec![
        ("REDIS_URL", redis.url()),
        ("REDIS_TLS_CA_FILE", path(&pki.ca_cert())),
    ];
    assert_unready_with_one_line(
        "ingress",
        &env,
        &redis,
        "client_cert_required",
        "requires a client certificate",
    )
    .await;
}

/// (binary, the setting its error must name, its environment).
type ConfigCase = (&'static str, &'static str, Vec<(&'static str, String)>);

/// Runs a binary with `env` and returns (exit code, stderr).
async fn run_with(name: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let output = tokio::process::Command::new(binary(name))
        .env_clear()
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("run binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn unusable_tls_files_stop_the_service_at_start_with_one_line_naming_the_setting() {
    let pki = TestPki::generate();
    let garbage = pki.scratch("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write");
    let broken_pem = pki.scratch("broken.pem");
    std::fs::write(
        &broken_pem,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let url = format!("rediss://127.0.0.1:{}", free_port());
    let ca = path(&pki.ca_cert());
    let cert = path(&pki.client_cert());
    let key = path(&pki.client_key());
    let missing = path(&pki.scratch("missing.pem"));
    let cases: Vec<ConfigCase> = vec![
        (
            "ingress",
            "REDIS_TLS_CA_FILE",
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", missing.clone()),
            ],
        ),
        (
            "proxy",
            "REDIS_TLS_CA_FILE",
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", path(&garbage)),
            ],
        ),
        (
            "ingress",
            "REDIS_TLS_CA_FILE",
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", path(&broken_pem)),
            ],
        ),
        (
            "ingress",
            "REDIS_TLS_CA_FILE",
            // A key file holds no certificate.
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", key.clone()),
            ],
        ),
        (
            "proxy",
            "REDIS_TLS_CERT_FILE",
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", ca.clone()),
                ("REDIS_TLS_CERT_FILE", missing.clone()),
                ("REDIS_TLS_KEY_FILE", key.clone()),
            ],
        ),
        (
            "ingress",
            "REDIS_TLS_KEY_FILE",
            // A certificate file holds no key.
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", ca.clone()),
                ("REDIS_TLS_CERT_FILE", cert.clone()),
                ("REDIS_TLS_KEY_FILE", cert.clone()),
            ],
        ),
        (
            "proxy",
            "REDIS_TLS_KEY_FILE",
            // The server's key is not the client certificate's key.
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CA_FILE", ca.clone()),
                ("REDIS_TLS_CERT_FILE", cert.clone()),
                ("REDIS_TLS_KEY_FILE", path(&pki.server_key())),
            ],
        ),
        (
            "ingress",
            "REDIS_TLS_KEY_FILE",
            vec![
                ("REDIS_URL", url.clone()),
                ("REDIS_TLS_CERT_FILE", cert.clone()),
            ],
        ),
        (
            "proxy",
            "REDIS_TLS_CA_FILE",
            // TLS files with a plain-text URL: refuse rather than guess.
            vec![
                ("REDIS_URL", format!("redis://127.0.0.1:{}", free_port())),
                ("REDIS_TLS_CA_FILE", ca.clone()),
            ],
        ),
    ];
    for (binary_name, setting, env) in &cases {
        let (code, stderr) = run_with(binary_name, env).await;
        assert_eq!(code, Some(2), "{binary_name} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected for {env:?}: {stderr}");
        assert!(
            lines[0].contains(setting),
            "the message names {setting}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
