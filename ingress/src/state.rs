//! What the HTTP handlers share: passed explicitly as axum state.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;
use shared::redis::MemoryState;
use shared::resilience::CircuitBreaker;

use crate::admission::Admission;
use crate::broker::{Queue, StreamClient};

/// Shared by every handler (behind one `Arc`, see `routes::router`).
pub struct AppState {
    /// Sends requests and awaits replies.
    pub broker: StreamClient,
    /// In-flight limit, wait estimate, draining flag.
    pub admission: Arc<Admission>,
    /// The request stream requests go to, with its sampled state.
    pub queue: Queue,
    /// Whether Redis refuses writes for lack of memory (readiness reports it).
    pub memory: Arc<MemoryState>,
    /// Circuit breaker around Redis (readiness reports it).
    pub breaker: Arc<CircuitBreaker>,
    /// Non-blocking client, for health checks.
    pub redis: Client,
    /// Upper bound of any request's deadline (REQUEST_TIMEOUT).
    pub request_timeout: Duration,
}
