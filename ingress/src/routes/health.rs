//! Health endpoints of the ingress.

use axum::extract::State;
use shared::health::HealthReport;

use std::sync::Arc;

use crate::state::AppState;

async fn report(state: &AppState) -> HealthReport {
    HealthReport::check(
        &state.redis,
        &state.queue.stats,
        &state.breaker,
        state.memory.is_out_of_memory(),
        state.admission.is_draining(),
        state.admission.in_flight(),
    )
    .await
}

/// Ready for traffic: Redis answers, the consumer group exists, not draining.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, description = "Ready", body = HealthReport),
    (status = 503, description = "Not ready: Redis unreachable, group missing or draining", body = HealthReport),
))]
pub async fn ready(State(state): State<Arc<AppState>>) -> HealthReport {
    report(&state).await
}

/// The seed's health summary: status, Redis round trip, requests in flight.
#[utoipa::path(get, path = "/healthz", tag = "health", responses(
    (status = 200, description = "Healthy", body = HealthReport),
    (status = 503, description = "Unhealthy or draining", body = HealthReport),
))]
pub async fn healthz(State(state): State<Arc<AppState>>) -> HealthReport {
    report(&state).await
}
