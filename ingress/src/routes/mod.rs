//! The ingress's HTTP surface: routes, middleware and the OpenAPI document.

pub mod health;
pub mod weather;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Router, middleware};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

/// The OpenAPI document served at /api-docs/openapi.json and rendered at /swagger.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ingress",
        description = "HTTP front door of the Redis Streams broker. Each request is written to the request stream, processed by a proxy, and answered with the proxy's reply. Every error is an application/problem+json body carrying the request id."
    ),
    paths(
        weather::city_forecast,
        weather::sample_forecast,
        shared::health::live,
        health::ready,
        health::healthz,
        shared::http::metrics_handler,
    ),
    tags(
        (name = "weather", description = "Forecasts, answered through the broker"),
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Prometheus metrics"),
    )
)]
pub struct ApiDoc;

/// Builds the router with its middleware; `max_body_bytes` bounds request bodies (413 above).
/// The state sits behind one `Arc` so each request clones a pointer, not every handle in it.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/WeatherForecast/city", post(weather::city_forecast))
        .route("/WeatherForecast", get(weather::sample_forecast))
        .route("/health/live", get(shared::health::live))
        .route("/health/ready", get(health::ready))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(shared::http::metrics_handler))
        .merge(SwaggerUi::new("/swagger").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(shared::http::not_found)
        .method_not_allowed_fallback(shared::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(shared::http::request_context))
        .with_state(Arc::new(state))
}
