//! Client input that must not grow metrics: made-up methods and paths.

mod common;

use common::*;
use reqwest::Method;

#[tokio::test]
async fn made_up_methods_and_paths_leave_the_request_metrics_bounded() {
    let stack = Stack::start(StackOptions {
        proxies: 0,
        ..Default::default()
    })
    .await;
    let url = &stack.ingress().url;
    for i in 0..300 {
        let method = format!("M{i}{}", "X".repeat(i % 200));
        let method = Method::from_bytes(method.as_bytes()).expect("a token");
        let path = match i % 3 {
            0 => format!("/made/up/{i}"),
            1 => "/WeatherForecast/city".to_string(),
            _ => "/health/live".to_string(),
        };
        let response = stack
            .http
            .request(method, format!("{url}{path}"))
            .send()
            .await
            .expect("send");
        let expected = if i % 3 == 0 { 404 } else { 405 };
        assert_problem(response, expected).await;
    }
    for i in 0..100 {
        let response = stack
            .http
            .get(format!("{url}/nowhere/{i}"))
            .send()
            .await
            .expect("send");
        assert_problem(response, 404).await;
    }

    let metrics = stack
        .http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("http_requests_total{"))
        .collect();
    assert!(
        series.len() <= 12,
        "{} series of http_requests_total:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(
        series
            .iter()
            .any(|line| line.contains("method=\"other\"") && line.contains("route=\"unmatched\"")),
        "{}",
        series.join("\n")
    );
    assert!(!metrics.contains("M1X"), "a made-up method became a label");
    assert!(
        !metrics.contains("/made/up"),
        "a made-up path became a label"
    );
    assert!(
        metrics.len() < 200_000,
        "/metrics is {} bytes",
        metrics.len()
    );
}
