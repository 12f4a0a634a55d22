//! Status and health of the proxy.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use shared::health::HealthReport;
use utoipa::ToSchema;

use super::ProxyState;

/// Static facts about this proxy.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub consumer_name: String,
    pub request_stream: String,
    pub consumer_group: String,
    pub dead_letter_stream: String,
    pub processing_delay_ms: String,
}

/// Body of `GET /WeatherForecast/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "status": "running", "consumerName": "proxy-7d9f-1-a1b2c3", "requestStream": "weather-requests",
    "consumerGroup": "processing-group", "deadLetterStream": "weather-requests:dlq",
    "processingDelayMs": "100-500", "terminalsTotal": 5, "terminalsBusy": 2, "handled": 1234,
    "streamLength": 3, "groupLag": 1, "groupPending": 2, "circuit": "closed"
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
    /// Circuit breaker around Redis: `closed`, `half-open` or `open`.
    pub circuit: &'static str,
}

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
        circuit: state.breaker.state().as_str(),
    })
}

async fn report(state: &ProxyState) -> HealthReport {
    HealthReport::check(
        &state.redis,
        &state.stream_stats,
        &state.breaker,
        state.memory.is_out_of_memory(),
        state.terminals.draining.load(Ordering::Acquire),
        state.terminals.busy.load(Ordering::Acquire),
    )
    .await
}

/// Ready: Redis answers, the consumer group exists, the circuit is not open, not draining.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, description = "Ready", body = HealthReport),
    (status = 503, description = "Not ready: Redis unreachable, group missing, circuit open or draining", body = HealthReport),
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
