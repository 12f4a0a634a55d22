//! The stream client: one call = register a waiter, XADD the request, await the reply.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fred::prelude::*;
use shared::protocol::{Operation, ReplyEntry, RequestEntry, unix_ms};
use shared::redis::{is_transient, record_error};
use shared::resilience::{CircuitBreaker, GuardedError, guarded};
use tokio_util::sync::CancellationToken;

use crate::replies::PendingReplies;

/// Why a call produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("request id `{0}` is already in flight on this instance")]
    DuplicateRequestId(String),
    #[error("Redis is unreachable: {0}")]
    RedisUnavailable(String),
    #[error("the circuit breaker around Redis is open; retry in {0:?}")]
    CircuitOpen(Duration),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the instance stopped waiting while shutting down")]
    ShuttingDown,
}

/// Sends requests to the request stream and awaits their replies on this instance's stream.
#[derive(Clone)]
pub struct StreamClient {
    commands: Client,
    request_stream: Arc<str>,
    reply_stream: Arc<str>,
    pending: Arc<PendingReplies>,
    breaker: Arc<CircuitBreaker>,
    abandon: CancellationToken,
}

/// A request ready to be sent.
pub struct Call<'a> {
    pub request_id: &'a str,
    pub operation: Operation,
    pub payload: String,
    pub timeout: Duration,
    pub traceparent: Option<String>,
}

impl StreamClient {
    /// `abandon` is cancelled when the drain timeout passes: waiters still waiting give up.
    pub fn new(
        commands: Client,
        request_stream: &str,
        reply_stream: &str,
        pending: Arc<PendingReplies>,
        breaker: Arc<CircuitBreaker>,
        abandon: CancellationToken,
    ) -> Self {
        StreamClient {
            commands,
            request_stream: request_stream.into(),
            reply_stream: reply_stream.into(),
            pending,
            breaker,
            abandon,
        }
    }

    /// Sends one request and waits for its reply until `call.timeout` passes.
    pub async fn call(&self, call: Call<'_>) -> Result<ReplyEntry, CallError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + call.timeout;
        let operation = call.operation.as_str();
        let result = self.send_and_wait(call, deadline).await;
        let outcome = match &result {
            Ok(reply) if matches!(reply.status, shared::protocol::ReplyStatus::Ok) => "ok",
            Ok(_) => "proxy_error",
            Err(CallError::Timeout(_)) => "timeout",
            Err(CallError::RedisUnavailable(_)) => "redis_unavailable",
            Err(CallError::CircuitOpen(_)) => "circuit_open",
            Err(CallError::DuplicateRequestId(_)) => "duplicate_id",
            Err(CallError::ShuttingDown) => "shutting_down",
        };
        metrics::histogram!("ingress_round_trip_seconds", "operation" => operation, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn send_and_wait(
        &self,
        call: Call<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<ReplyEntry, CallError> {
        // Fail at once rather than queue behind a reconnect: the client gets 503 + Retry-After.
        self.breaker
            .allow()
            .map_err(|open| CallError::CircuitOpen(open.retry_after))?;
        if !self.commands.is_connected() {
            self.breaker.record_failure();
            return Err(CallError::RedisUnavailable("not connected".into()));
        }
        // Waiter first, then the request: an instant reply must find somebody waiting.
        let mut waiter = self
            .pending
            .register(call.request_id)
            .map_err(|_| CallError::DuplicateRequestId(call.request_id.to_string()))?;
        let entry = RequestEntry {
            request_id: call.request_id.to_string(),
            reply_to: self.reply_stream.to_string(),
            deadline_ms: unix_ms(SystemTime::now()) + call.timeout.as_millis() as u64,
            operation: call.operation.as_str().to_string(),
            payload: call.payload,
            traceparent: call.traceparent,
        };
        let fields = entry.to_fields();
        // Transient failures are retried with backoff within the deadline. A retry after a lost
        // answer can write the request twice; the second reply is then ignored (at-least-once).
        let write = guarded(&self.breaker, deadline, is_transient, || {
            self.commands.xadd::<String, _, _, _, _>(
                &*self.request_stream,
                false,
                None,
                "*",
                fields.clone(),
            )
        });
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(_entry_id)) => {}
            Ok(Err(GuardedError::CircuitOpen(open))) => {
                return Err(CallError::CircuitOpen(open.retry_after));
            }
            Ok(Err(GuardedError::Failed(err))) => {
                record_error("xadd", &err);
                return Err(CallError::RedisUnavailable(err.to_string()));
            }
            Err(_) => return Err(CallError::Timeout(call.timeout)),
        }
        tokio::select! {
            reply = waiter.reply() => reply.ok_or(CallError::ShuttingDown),
            _ = tokio::time::sleep_until(deadline) => Err(CallError::Timeout(call.timeout)),
            _ = self.abandon.cancelled() => Err(CallError::ShuttingDown),
        }
    }
}
