//! Redis passwords: read from REDIS_PASSWORD_FILE (for the default user and for an ACL user
//! named in REDIS_URL), and never shown in logs, health output, status or metrics, including
//! when the password is in REDIS_URL and Redis refuses it.

mod common;

use std::time::Duration;

use common::assert_forecast;
use fred::prelude::*;
use testkit::{RedisServer, Service, binary, free_port, wait_until};

const DEFAULT_PASSWORD: &str = "default-pw-7c1f0e";
const USER_PASSWORD: &str = "broker-pw-93ab2d";
const WRONG_PASSWORD: &str = "wrong-pw-5d8e41";

/// A redis-server that requires DEFAULT_PASSWORD, with an ACL user `broker`/USER_PASSWORD.
async fn password_protected_redis() -> RedisServer {
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        DEFAULT_PASSWORD,
    ])
    .await;
    let admin = Builder::from_config(
        Config::from_url(&format!(
            "redis://:{DEFAULT_PASSWORD}@127.0.0.1:{}",
            redis.port
        ))
        .expect("admin url"),
    )
    .build()
    .expect("admin client");
    admin.init().await.expect("admin connects");
    let _: String = admin
        .custom(
            fred::types::CustomCommand::new_static("ACL", None, false),
            vec![
                "SETUSER",
                "broker",
                "on",
                &format!(">{USER_PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ],
        )
        .await
        .expect("ACL SETUSER");
    let _ = admin.quit().await;
    redis
}

fn write_secret(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{value}\n")).expect("write secret file");
    path.to_string_lossy().into_owned()
}

/// Everything a service shows about itself over HTTP, concatenated.
async fn everything_shown(service: &Service) -> String {
    let http = reqwest::Client::new();
    let mut shown = String::new();
    for path in [
        "/healthz",
        "/health/ready",
        "/health/live",
        "/metrics",
        "/WeatherForecast/status",
    ] {
        if let Ok(response) = http.get(format!("{}{path}", service.url)).send().await {
            shown.push_str(&response.text().await.unwrap_or_default());
        }
    }
    shown.push_str(&service.logs());
    shown
}

fn assert_no_password(what: &str, text: &str) {
    for password in [DEFAULT_PASSWORD, USER_PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(password), "{what} shows a password:\n{text}");
    }
}

#[tokio::test]
async fn passwords_from_files_work_for_the_default_and_an_acl_user_and_are_never_shown() {
    let redis = password_protected_redis().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    // The proxy logs in as the default user, the ingress as the ACL user `broker`.
    let proxy = Service::start(
        "proxy",
        &[
            ("REDIS_URL", redis.url()),
            (
                "REDIS_PASSWORD_FILE",
                write_secret(&secrets, "default", DEFAULT_PASSWORD),
            ),
            ("PROCESSING_DELAY_MS", "0".into()),
        ],
    )
    .await;
    let ingress = Service::start(
        "ingress",
        &[
            (
                "REDIS_URL",
                format!("redis://broker@127.0.0.1:{}", redis.port),
            ),
            (
                "REDIS_PASSWORD_FILE",
                write_secret(&secrets, "broker", USER_PASSWORD),
            ),
        ],
    )
    .await;

    let response = reqwest::Client::new()
        .post(format!("{}/WeatherForecast/city", ingress.url))
        .json(&serde_json::json!({"city": "Bergen", "location": "Bryggen"}))
        .send()
        .await
        .expect("POST");
    assert_forecast(response, "Bergen", "Bryggen", None).await;

    for service in [&ingress, &proxy] {
        assert_no_password(&service.name, &everything_shown(service).await);
    }
}

#[tokio::test]
async fn a_refused_password_in_the_url_keeps_the_service_not_ready_and_is_never_shown() {
    let redis = password_protected_redis().await;
    let ingress = Service::start_live(
        "ingress",
        &[(
            "REDIS_URL",
            format!("redis://broker:{WRONG_PASSWORD}@127.0.0.1:{}", redis.port),
        )],
    )
    .await;
    wait_until(
        "the ingress to count 4 refused logins",
        Duration::from_secs(30),
        || async {
            ingress
                .metric_sum("redis_connection_errors_total{cause=\"auth_failed\"}")
                .await
                >= 4.0
        },
    )
    .await;
    let ready = reqwest::get(format!("{}/health/ready", ingress.url))
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let report: serde_json::Value = ready.json().await.expect("JSON");
    assert!(
        report["redis"]
            .as_str()
            .unwrap_or_default()
            .contains("refused the user name or password"),
        "{report}"
    );

    let logs = ingress.logs();
    let cause_lines = logs.lines().filter(|l| l.contains("cause=")).count();
    assert_eq!(cause_lines, 1, "one line, not one per attempt:\n{logs}");
    assert!(logs.contains("cause=auth_failed"), "{logs}");
    // The URL is in the log, with the password cut out.
    let redacted = format!("redis://broker:***@127.0.0.1:{}", redis.port);
    assert!(logs.contains(&redacted), "{logs}");
    assert_no_password("ingress", &everything_shown(&ingress).await);
}

#[tokio::test]
async fn no_password_at_all_is_named_as_the_cause() {
    let redis = password_protected_redis().await;
    let proxy = Service::start_live("proxy", &[("REDIS_URL", redis.url())]).await;
    wait_until(
        "the proxy to count 4 refused connections",
        Duration::from_secs(30),
        || async {
            proxy
                .metric_sum("redis_connection_errors_total{cause=\"auth_required\"}")
                .await
                >= 4.0
        },
    )
    .await;
    let ready = reqwest::get(format!("{}/health/ready", proxy.url))
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let logs = proxy.logs();
    assert_eq!(
        logs.lines().filter(|l| l.contains("cause=")).count(),
        1,
        "{logs}"
    );
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
async fn bad_password_settings_stop_the_service_with_one_line_that_shows_no_password() {
    let secrets = tempfile::tempdir().expect("temp dir");
    let good = write_secret(&secrets, "good", USER_PASSWORD);
    let empty = secrets.path().join("empty");
    std::fs::write(&empty, "").expect("write");
    let port = free_port();
    let cases: Vec<ConfigCase> = vec![
        (
            "ingress",
            "REDIS_PASSWORD_FILE",
            vec![(
                "REDIS_PASSWORD_FILE",
                secrets
                    .path()
                    .join("missing")
                    .to_string_lossy()
                    .into_owned(),
            )],
        ),
        (
            "proxy",
            "REDIS_PASSWORD_FILE",
            vec![("REDIS_PASSWORD_FILE", empty.to_string_lossy().into_owned())],
        ),
        (
            "ingress",
            "REDIS_PASSWORD_FILE",
            // Two passwords: refuse rather than pick one.
            vec![
                (
                    "REDIS_URL",
                    format!("redis://broker:{WRONG_PASSWORD}@127.0.0.1:{port}"),
                ),
                ("REDIS_PASSWORD_FILE", good.clone()),
            ],
        ),
        (
            "proxy",
            "REDIS_URL",
            vec![(
                "REDIS_URL",
                format!("redis://broker:{WRONG_PASSWORD}@127.0.0.1:notaport"),
            )],
        ),
    ];
    for (binary_name, setting, env) in &cases {
        let (code, stderr) = run_with(binary_name, env).await;
        assert_eq!(code, Some(2), "{binary_name} {setting}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected for {setting}: {stderr}");
        assert!(lines[0].contains(setting), "names {setting}: {stderr}");
        assert_no_password(binary_name, &stderr);
    }
}
