//! What the HTTP handlers share: passed explicitly as axum state.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use shared::resilience::CircuitBreaker;
use shared::streams::StreamStats;

use crate::admission::Admission;
use crate::broker::StreamClient;

/// Shared by every handler (behind one `Arc`, see `routes::router`).
pub struct AppState {
    /// Sends requests and awaits replies.
    pub broker: StreamClient,
    /// In-flight limit, backlog limit, draining flag.
    pub admission: Arc<Admission>,
    /// Latest request-stream sample (backlog, group presence).
    pub stream_stats: Arc<StreamStats>,
    /// Circuit breaker around Redis (readiness reports it).
    pub breaker: Arc<CircuitBreaker>,
    /// Non-blocking client, for health checks.
    pub redis: Client,
    /// Upper bound of any request's deadline (REQUEST_TIMEOUT).
    pub request_timeout: Duration,
}
