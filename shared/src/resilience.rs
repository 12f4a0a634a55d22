//! Retry with backoff and a circuit breaker, for every Redis call on a request's path.
//!
//! Retry absorbs short faults (a dropped connection fred re-establishes, `LOADING` while Redis
//! replays its AOF) within the request's own deadline. The breaker stops a service from piling
//! requests onto a Redis that is not answering: after `failure_threshold` consecutive
//! failures it opens and callers fail at once (HTTP 503 + Retry-After) instead of hanging;
//! after `open_duration` one probe is let through (half-open) and its outcome closes or
//! re-opens it. A reconnect closes it at once (see [`CircuitBreaker::reset`]).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Breaker states, also exported as `circuit_breaker_state{service}`: 0 closed, 1 half-open, 2 open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// One probe call is allowed to find out whether Redis is back.
    HalfOpen,
    /// Calls fail at once.
    Open,
}

impl BreakerState {
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// Lower-case name, for health reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open => "open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Thresholds of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit (BREAKER_FAILURE_THRESHOLD).
    pub failure_threshold: u32,
    /// How long it stays open before a probe is allowed (BREAKER_OPEN_DURATION).
    pub open_duration: Duration,
}

/// The circuit is open: fail at once and retry after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    pub retry_after: Duration,
}

/// A circuit breaker around Redis for one service.
#[derive(Debug)]
pub struct CircuitBreaker {
    service: &'static str,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// A closed breaker; `service` labels its gauge.
    pub fn new(service: &'static str, settings: BreakerSettings) -> Self {
        metrics::gauge!("circuit_breaker_state", "service" => service).set(0.0);
        CircuitBreaker {
            service,
            settings,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` valid, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("circuit_breaker_state", "service" => self.service).set(state.gauge());
    }

    /// The current state (an open circuit whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call: `Ok` when closed, or as the single probe when half-open.
    pub fn allow(&self) -> Result<(), CircuitOpen> {
        let mut inner = self.lock();
        let now = Instant::now();
        match &mut *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until } if now >= *until => {
                *inner = Inner::HalfOpen { probing: true };
                drop(inner);
                self.publish(BreakerState::HalfOpen);
                Ok(())
            }
            Inner::Open { until } => Err(CircuitOpen {
                retry_after: *until - now,
            }),
            Inner::HalfOpen { probing } if !*probing => {
                *probing = true;
                Ok(())
            }
            Inner::HalfOpen { .. } => Err(CircuitOpen {
                retry_after: self.settings.open_duration,
            }),
        }
    }

    /// A call succeeded: close the circuit.
    pub fn record_success(&self) {
        let mut inner = self.lock();
        let was_closed = matches!(*inner, Inner::Closed { .. });
        *inner = Inner::Closed { failures: 0 };
        drop(inner);
        if !was_closed {
            tracing::info!(
                service = self.service,
                "circuit closed: Redis answers again"
            );
            self.publish(BreakerState::Closed);
        }
    }

    /// A call failed: count it, and open the circuit at the threshold or after a failed probe.
    pub fn record_failure(&self) {
        let mut inner = self.lock();
        let open = match &mut *inner {
            Inner::Closed { failures } => {
                *failures += 1;
                *failures >= self.settings.failure_threshold
            }
            Inner::HalfOpen { .. } => true,
            Inner::Open { .. } => false,
        };
        if open {
            *inner = Inner::Open {
                until: Instant::now() + self.settings.open_duration,
            };
            drop(inner);
            tracing::warn!(service = self.service, open_for = ?self.settings.open_duration, "circuit open: Redis calls fail fast");
            self.publish(BreakerState::Open);
        }
    }

    /// Closes the circuit without a probe: the client has just reconnected.
    pub fn reset(&self) {
        self.record_success();
    }
}

/// Why a guarded call gave up.
#[derive(Debug)]
pub enum GuardedError<E> {
    /// The breaker refused the call.
    CircuitOpen(CircuitOpen),
    /// The last attempt failed and the deadline leaves no time for another.
    Failed(E),
}

/// First pause between attempts; doubled each time, with full jitter, capped at 500 ms.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Runs `call` through `breaker`, retrying failures that `retryable` accepts with exponential
/// backoff and jitter until `deadline`. Each attempt counts for the breaker.
pub async fn guarded<T, E, F, Fut>(
    breaker: &CircuitBreaker,
    deadline: Instant,
    retryable: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, GuardedError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        breaker.allow().map_err(GuardedError::CircuitOpen)?;
        match call().await {
            Ok(value) => {
                breaker.record_success();
                return Ok(value);
            }
            Err(err) => {
                let retry = retryable(&err);
                if retry {
                    breaker.record_failure();
                } else {
                    // A logical error (wrong type, NOGROUP…) says Redis is up.
                    breaker.record_success();
                }
                let pause =
                    Duration::from_micros(rand::rng().random_range(0..=backoff.as_micros() as u64));
                if !retry || Instant::now() + pause >= deadline {
                    return Err(GuardedError::Failed(err));
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerSettings {
                failure_threshold: threshold,
                open_duration: Duration::from_millis(open_ms),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_probes_once_and_closes() {
        let b = breaker(3, 1_000);
        for _ in 0..2 {
            b.record_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow().is_err(), "open refuses");

        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(
            b.allow().is_ok(),
            "first call after the open period is the probe"
        );
        assert!(b.allow().is_err(), "only one probe at a time");
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker(1, 500);
        b.record_failure();
        tokio::time::advance(Duration::from_millis(501)).await;
        assert!(b.allow().is_ok());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_retries_transient_failures_within_the_deadline() {
        let b = breaker(100, 1_000);
        let mut attempts = 0;
        let result: Result<u32, GuardedError<&str>> = guarded(
            &b,
            Instant::now() + Duration::from_secs(5),
            |_| true,
            || {
                attempts += 1;
                let outcome = if attempts < 3 { Err("down") } else { Ok(7) };
                async move { outcome }
            },
        )
        .await;
        assert!(matches!(result, Ok(7)));
        assert_eq!(attempts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_gives_up_at_the_deadline_and_on_permanent_errors() {
        let b = breaker(1_000, 1_000);
        let started = Instant::now();
        let result: Result<(), GuardedError<&str>> = guarded(
            &b,
            started + Duration::from_millis(200),
            |_| true,
            || async { Err("down") },
        )
        .await;
        assert!(matches!(result, Err(GuardedError::Failed("down"))));
        assert!(Instant::now() <= started + Duration::from_millis(200));

        let mut attempts = 0;
        let result: Result<(), GuardedError<&str>> = guarded(
            &b,
            started + Duration::from_secs(5),
            |_| false,
            || {
                attempts += 1;
                async { Err("WRONGTYPE") }
            },
        )
        .await;
        assert!(matches!(result, Err(GuardedError::Failed("WRONGTYPE"))));
        assert_eq!(attempts, 1, "permanent errors are not retried");
    }

    #[tokio::test]
    async fn an_open_circuit_fails_at_once() {
        let b = breaker(1, 60_000);
        b.record_failure();
        let result: Result<(), GuardedError<&str>> = guarded(
            &b,
            Instant::now() + Duration::from_secs(5),
            |_| true,
            || async { Ok(()) },
        )
        .await;
        assert!(matches!(result, Err(GuardedError::CircuitOpen(_))));
    }
}
