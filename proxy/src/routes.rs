//! The proxy's HTTP surface: health, status, metrics and its OpenAPI document.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router, middleware};
use fred::prelude::Client;
use serde::Serialize;
use shared::health::HealthReport;
use shared::streams::StreamStats;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use crate::consumer::TerminalStats;

/// Shared by the proxy's handlers.
#[derive(Clone)]
pub struct ProxyState {
    /// Non-blocking client, for health checks.
    pub redis: Client,
    /// Latest request-stream sample.
    pub stream_stats: Arc<StreamStats>,
    /// The terminal pool's counters.
    pub terminals: Arc<TerminalStats>,
    /// What `/WeatherForecast/status` reports about the configuration.
    pub identity: Arc<Identity>,
}

/// Static facts about this proxy.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub consumer_name: String,
    pub request_stream: String,
    pub consumer_group: String,
    pub processing_delay_ms: String,
}

/// Body of `GET /WeatherForecast/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "status": "running", "consumerName": "proxy-7d9f-1-a1b2c3", "requestStream": "weather-requests",
    "consumerGroup": "processing-group", "processingDelayMs": "100-500", "terminalsTotal": 5,
    "terminalsBusy": 2, "handled": 1234, "streamLength": 3, "groupLag": 1, "groupPending": 2
}))]
pub struct ProxyStatus {
    /// `running` or `draining`.
    pub status: &'static str,
    #[serde(flatten)]
    pub identity: Identity,
    pub terminals_total: u64,
    pub terminals_busy: u64,
    /// Entries handled since start, any outcome.
    pub handled: u64,
    pub stream_length: u64,
    pub group_lag: u64,
    pub group_pending: u64,
}

/// The OpenAPI document served at /api-docs/openapi.json and rendered at /swagger.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "proxy",
        description = "Worker of the Redis Streams broker: reads requests through the consumer group with a bounded pool of terminals, replies on the caller's reply stream, then acknowledges."
    ),
    paths(status, shared::health::live, ready, healthz, shared::http::metrics_handler),
    tags(
        (name = "weather", description = "Processing status"),
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Prometheus metrics"),
    )
)]
pub struct ApiDoc;

/// Terminal pool, stream depth and identity of this proxy.
#[utoipa::path(get, path = "/WeatherForecast/status", tag = "weather", responses(
    (status = 200, description = "Current status", body = ProxyStatus),
))]
pub async fn status(State(state): State<ProxyState>) -> Json<ProxyStatus> {
    let terminals = &state.terminals;
    let draining = terminals.draining.load(Ordering::Acquire);
    Json(ProxyStatus {
        status: if draining { "draining" } else { "running" },
        identity: (*state.identity).clone(),
        terminals_total: terminals.total,
        terminals_busy: terminals.busy.load(Ordering::Acquire),
        handled: terminals.handled.load(Ordering::Acquire),
        stream_length: state.stream_stats.length(),
        group_lag: state.stream_stats.lag(),
        group_pending: state.stream_stats.pending(),
    })
}

async fn report(state: &ProxyState) -> HealthReport {
    HealthReport::check(
        &state.redis,
        &state.stream_stats,
        state.terminals.draining.load(Ordering::Acquire),
        state.terminals.busy.load(Ordering::Acquire),
    )
    .await
}

/// Ready: Redis answers, the consumer group exists, not draining.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, description = "Ready", body = HealthReport),
    (status = 503, description = "Not ready: Redis unreachable, group missing or draining", body = HealthReport),
))]
pub async fn ready(State(state): State<ProxyState>) -> HealthReport {
    report(&state).await
}

/// Health summary: status, Redis round trip, entries in terminals.
#[utoipa::path(get, path = "/healthz", tag = "health", responses(
    (status = 200, description = "Healthy", body = HealthReport),
    (status = 503, description = "Unhealthy or draining", body = HealthReport),
))]
pub async fn healthz(State(state): State<ProxyState>) -> HealthReport {
    report(&state).await
}

/// Builds the proxy's router.
pub fn router(state: ProxyState) -> Router {
    Router::new()
        .route("/WeatherForecast/status", get(status))
        .route("/health/live", get(shared::health::live))
        .route("/health/ready", get(ready))
        .route("/healthz", get(healthz))
        .route("/metrics", get(shared::http::metrics_handler))
        .merge(SwaggerUi::new("/swagger").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(shared::http::not_found)
        .method_not_allowed_fallback(shared::http::method_not_allowed)
        .layer(middleware::from_fn(shared::http::request_context))
        .with_state(state)
}
