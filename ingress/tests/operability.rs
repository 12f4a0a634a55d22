//! What operators look at: Swagger UI, the OpenAPI document, metrics, health, and recovery
//! when Redis loses its data.

mod common;

use std::time::Duration;

use common::*;
use fred::prelude::*;
use serde_json::Value;
use testkit::wait_until;

#[tokio::test]
async fn both_services_serve_swagger_ui_and_a_complete_openapi_document() {
    let stack = Stack::start(StackOptions::default()).await;
    for (service, paths) in [
        (
            stack.ingress(),
            vec![
                "/WeatherForecast/city",
                "/WeatherForecast",
                "/health/live",
                "/health/ready",
                "/healthz",
                "/metrics",
            ],
        ),
        (
            &stack.proxies[0],
            vec![
                "/WeatherForecast/status",
                "/health/live",
                "/health/ready",
                "/healthz",
                "/metrics",
            ],
        ),
    ] {
        let page = stack
            .http
            .get(format!("{}/swagger/", service.url))
            .send()
            .await
            .expect("GET /swagger/");
        assert_eq!(page.status(), 200, "{} /swagger/", service.name);
        assert!(
            page.text().await.expect("html").contains("swagger-ui"),
            "{} serves Swagger UI",
            service.name
        );
        let redirect = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .get(format!("{}/swagger", service.url))
            .send()
            .await
            .expect("GET /swagger");
        assert!(
            redirect.status().is_redirection(),
            "/swagger redirects to /swagger/"
        );

        let doc: Value = stack
            .http
            .get(format!("{}/api-docs/openapi.json", service.url))
            .send()
            .await
            .expect("GET openapi")
            .json()
            .await
            .expect("JSON");
        for path in paths {
            assert!(
                doc["paths"][path].is_object(),
                "{} documents {path}",
                service.name
            );
        }
    }
    let doc: Value = stack
        .http
        .get(format!("{}/api-docs/openapi.json", stack.ingress().url))
        .send()
        .await
        .expect("GET openapi")
        .json()
        .await
        .expect("JSON");
    let responses = &doc["paths"]["/WeatherForecast/city"]["post"]["responses"];
    for status in ["200", "400", "409", "413", "415", "502", "503", "504"] {
        assert!(
            responses[status].is_object(),
            "POST /WeatherForecast/city documents {status}"
        );
    }
    assert!(
        doc["components"]["schemas"]["CityForecastRequest"]["example"].is_object(),
        "request example present"
    );
}

#[tokio::test]
async fn metrics_expose_what_operators_need() {
    let stack = Stack::start(StackOptions::default()).await;
    assert_forecast(
        stack.post_city("Lisbon", "Alfama", None).await,
        "Lisbon",
        "Alfama",
        None,
    )
    .await;
    // Gauges are sampled; wait for the first sample to be published.
    wait_metric(&stack.proxies[0], "stream_group_consumers", 1.0).await;
    let text = |url: String| {
        let http = stack.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("GET /metrics")
                .text()
                .await
                .expect("text")
        }
    };
    let ingress = text(format!("{}/metrics", stack.ingress().url)).await;
    for name in [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "ingress_requests_in_flight",
        "ingress_round_trip_seconds_bucket{",
        "ingress_rejections_total{reason=\"in_flight_limit\"}",
        "ingress_rejections_total{reason=\"backlog_limit\"}",
        "stream_length{",
        "stream_group_lag{",
        "stream_group_pending{",
        "redis_errors_total{",
    ] {
        assert!(ingress.contains(name), "ingress /metrics lacks {name}");
    }
    assert!(
        ingress.contains(
            "http_requests_total{method=\"POST\",route=\"/WeatherForecast/city\",status=\"200\"} 1"
        ),
        "routes are labelled by template:\n{ingress}"
    );
    let proxy = text(format!("{}/metrics", stack.proxies[0].url)).await;
    for name in [
        "proxy_terminals_busy",
        "proxy_terminals_total 5",
        "proxy_processed_total{operation=\"weather.city\",outcome=\"ok\"} 1",
        "proxy_processing_seconds_bucket{",
        "proxy_expired_total",
        "stream_length{",
        "stream_group_lag{",
        "stream_group_pending{",
        "redis_errors_total{",
    ] {
        assert!(proxy.contains(name), "proxy /metrics lacks {name}");
    }
    let status: Value = stack
        .http
        .get(format!("{}/WeatherForecast/status", stack.proxies[0].url))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("JSON");
    assert_eq!(status["terminalsTotal"], 5);
    assert_eq!(status["handled"], 1);
    let healthz: Value = stack
        .http
        .get(format!("{}/healthz", stack.ingress().url))
        .send()
        .await
        .expect("healthz")
        .json()
        .await
        .expect("JSON");
    assert_eq!(healthz["status"], "healthy");
    assert!(healthz["redisRoundTripMs"].is_number());
    assert_eq!(healthz["requestsInFlight"], 0);
}

#[tokio::test]
async fn after_redis_loses_its_data_both_services_recreate_what_they_need() {
    let stack = Stack::start(StackOptions::default()).await;
    assert_forecast(
        stack.post_city("Prague", "Old Town", None).await,
        "Prague",
        "Old Town",
        None,
    )
    .await;
    let redis = stack.redis_client().await;
    let _: () = redis.flushall(false).await.expect("FLUSHALL");

    // The group and the reply stream are gone; the services notice and re-create them.
    let http = stack.http.clone();
    let url = format!("{}/WeatherForecast/city", stack.ingress().url);
    wait_until(
        "a 200 again after FLUSHALL",
        Duration::from_secs(20),
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                http.post(url)
                    .header("Request-Timeout", "1s")
                    .json(&serde_json::json!({"city": "Prague", "location": "Old Town"}))
                    .send()
                    .await
                    .map(|r| r.status() == 200)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    assert!(
        shared::streams::group_info(&redis, REQUEST_STREAM, GROUP)
            .await
            .expect("XINFO")
            .is_some()
    );
}
