//! Health reports. Liveness says only "the process answers"; readiness says "send me traffic":
//! Redis answers and accepts writes, the consumer group exists, the circuit breaker has not
//! stayed open, and the service is not draining.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fred::prelude::Client;
use serde::Serialize;
use utoipa::ToSchema;

use crate::redis::ping_ms;
use crate::resilience::CircuitBreaker;
use crate::streams::StreamStats;

/// How long a health check waits for Redis before calling it unreachable.
pub const HEALTH_PING_TIMEOUT: Duration = Duration::from_millis(500);

/// Body of `/healthz` and `/health/ready`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "status": "healthy", "redis": "connected", "redisRoundTripMs": 0.21,
    "consumerGroupPresent": true, "circuit": "closed", "draining": false, "requestsInFlight": 3,
    "streamLength": 0
}))]
pub struct HealthReport {
    /// `healthy`, `draining` or `unhealthy`.
    pub status: &'static str,
    /// `connected` or what went wrong talking to Redis.
    pub redis: String,
    /// PING round trip in milliseconds, when Redis answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_round_trip_ms: Option<f64>,
    /// Whether the request stream's consumer group exists.
    pub consumer_group_present: bool,
    /// State of the circuit breaker around Redis: `closed`, `half-open` or `open`. Readiness
    /// turns false when it has not been closed for longer than BREAKER_OPEN_DURATION.
    pub circuit: &'static str,
    /// Whether the service is shutting down.
    pub draining: bool,
    /// Requests this instance is working on (ingress: awaiting replies; proxy: in terminals).
    pub requests_in_flight: u64,
    /// Entries in the request stream at the last sample.
    pub stream_length: u64,
}

impl HealthReport {
    /// Checks Redis now and combines it with the sampled stream state, the breaker and
    /// whether Redis refuses writes for lack of memory.
    pub async fn check(
        client: &Client,
        stats: &StreamStats,
        breaker: &CircuitBreaker,
        out_of_memory: bool,
        draining: bool,
        in_flight: u64,
    ) -> Self {
        let ping = ping_ms(client, HEALTH_PING_TIMEOUT).await;
        let circuit = breaker.state();
        let ready = ping.is_ok()
            && stats.group_present()
            && breaker.is_ready()
            && !out_of_memory
            && !draining;
        HealthReport {
            status: if draining {
                "draining"
            } else if ready {
                "healthy"
            } else {
                "unhealthy"
            },
            redis: match &ping {
                Ok(_) if out_of_memory => {
                    "out of memory: Redis refuses writes (maxmemory reached)".into()
                }
                Ok(_) => "connected".into(),
                Err(err) => err.clone(),
            },
            redis_round_trip_ms: ping.ok().map(|ms| (ms * 1000.0).round() / 1000.0),
            consumer_group_present: stats.group_present(),
            circuit: circuit.as_str(),
            draining,
            requests_in_flight: in_flight,
            stream_length: stats.length(),
        }
    }

    /// Whether this instance should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.status == "healthy"
    }
}

impl IntoResponse for HealthReport {
    fn into_response(self) -> Response {
        let status = if self.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(self)).into_response()
    }
}

/// Body of `/health/live`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `alive`: the process answers HTTP.
    pub status: &'static str,
}

/// `GET /health/live`: 200 whenever the process can answer at all.
#[utoipa::path(get, path = "/health/live", tag = "health", responses(
    (status = 200, description = "The process answers", body = Liveness),
))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}
