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
    inner: Mutex<State>,
}

#[derive(Debug)]
struct State {
    inner: Inner,
    /// When the circuit last left the closed state; `None` while closed.
    not_closed_since: Option<Instant>,
}

/// Leave to make one call through a [`CircuitBreaker`]. Report how it went with
/// [`success`](Permit::success) or [`failure`](Permit::failure). A permit dropped without a
/// report (its call was cancelled: the caller went away, a timeout fired around it) reports
/// nothing — but if it was the half-open probe, the probe is given back, so the next call can
/// probe. Without that, a lost probe would leave the breaker half-open and refusing forever.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// The call succeeded, or Redis answered (a logical error also proves it is up).
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record_success();
    }

    /// The call failed in a way that says Redis is unwell (connection, timeout, LOADING…).
    pub fn failure(mut self) {
        self.reported = true;
        self.breaker.record_failure();
    }

    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.release_probe();
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker; `service` labels its gauge.
    pub fn new(service: &'static str, settings: BreakerSettings) -> Self {
        metrics::gauge!("circuit_breaker_state", "service" => service).set(0.0);
        CircuitBreaker {
            service,
            settings,
            inner: Mutex::new(State {
                inner: Inner::Closed { failures: 0 },
                not_closed_since: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state valid, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("circuit_breaker_state", "service" => self.service).set(state.gauge());
    }

    /// The current state (an open circuit whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        match &self.lock().inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether the service should take traffic as far as the breaker is concerned: the circuit
    /// is closed, or has not been closed for less than the open duration (a short blip does not
    /// flap readiness; a circuit that stays open or half-open does turn readiness false).
    pub fn is_ready(&self) -> bool {
        match self.lock().not_closed_since {
            None => true,
            Some(since) => since.elapsed() < self.settings.open_duration,
        }
    }

    /// Asks to make a call: a permit when closed, or the single probe when half-open.
    pub fn allow(&self) -> Result<Permit<'_>, CircuitOpen> {
        let mut state = self.lock();
        let now = Instant::now();
        let probe = match &mut state.inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if now >= *until => {
                state.inner = Inner::HalfOpen { probing: true };
                drop(state);
                self.publish(BreakerState::HalfOpen);
                return Ok(self.permit(true));
            }
            Inner::Open { until } => {
                return Err(CircuitOpen {
                    retry_after: *until - now,
                });
            }
            Inner::HalfOpen { probing } if !*probing => {
                *probing = true;
                true
            }
            Inner::HalfOpen { .. } => {
                return Err(CircuitOpen {
                    retry_after: self.settings.open_duration,
                });
            }
        };
        Ok(self.permit(probe))
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            reported: false,
        }
    }

    /// A probe ended without an outcome: let the next call probe.
    fn release_probe(&self) {
        if let Inner::HalfOpen { probing } = &mut self.lock().inner {
            *probing = false;
        }
    }

    /// A call succeeded: close the circuit.
    fn record_success(&self) {
        let mut state = self.lock();
        let was_closed = matches!(state.inner, Inner::Closed { .. });
        state.inner = Inner::Closed { failures: 0 };
        state.not_closed_since = None;
        drop(state);
        if !was_closed {
            tracing::info!(
                service = self.service,
                "circuit closed: Redis answers again"
            );
            self.publish(BreakerState::Closed);
        }
    }

    /// A call failed: count it, and open the circuit at the threshold or after a failed probe.
    fn record_failure(&self) {
        let mut state = self.lock();
        let open = match &mut state.inner {
            Inner::Closed { failures } => {
                *failures += 1;
                *failures >= self.settings.failure_threshold
            }
            Inner::HalfOpen { .. } => true,
            Inner::Open { .. } => false,
        };
        if open {
            let now = Instant::now();
            state.inner = Inner::Open {
                until: now + self.settings.open_duration,
            };
            state.not_closed_since.get_or_insert(now);
            drop(state);
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
    /// The breaker refused the call: it was not made.
    CircuitOpen(CircuitOpen),
    /// The last attempt failed and the policy or the deadline leaves no other.
    Failed(E),
}

/// What a failed attempt means, decided by the caller of [`guarded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Redis is unwell and repeating the call is safe: retry with backoff.
    Retry,
    /// Redis is unwell, but the call must not be repeated (its outcome is unknown).
    GiveUp,
    /// Redis answered with an error: it is up; do not repeat.
    Answered,
}

/// First pause between attempts; doubled each time, with full jitter, capped at 500 ms.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Runs `call` through `breaker`, retrying the failures `classify` calls [`Attempt::Retry`]
/// with exponential backoff and jitter until `deadline`. Each attempt takes its own permit, so
/// every attempt counts for the breaker and a cancelled attempt never keeps the probe.
pub async fn guarded<T, E, F, Fut>(
    breaker: &CircuitBreaker,
    deadline: Instant,
    classify: impl Fn(&E) -> Attempt,
    mut call: F,
) -> Result<T, GuardedError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        let permit = breaker.allow().map_err(GuardedError::CircuitOpen)?;
        match call().await {
            Ok(value) => {
                permit.success();
                return Ok(value);
            }
            Err(err) => {
                let attempt = classify(&err);
                match attempt {
                    Attempt::Answered => permit.success(),
                    Attempt::Retry | Attempt::GiveUp => permit.failure(),
                }
                let pause =
                    Duration::from_micros(rand::rng().random_range(0..=backoff.as_micros() as u64));
                if attempt != Attempt::Retry || Instant::now() + pause >= deadline {
                    return Err(GuardedError::Failed(err));
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The classification for calls that are safe to repeat: transient errors are retried, other
/// errors are Redis answering.
pub fn retry_transient(err: &fred::error::Error) -> Attempt {
    if crate::redis::is_transient(err) {
        Attempt::Retry
    } else {
        Attempt::Answered
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
        let probe = b.allow();
        assert!(
            probe.as_ref().is_ok_and(Permit::is_probe),
            "first call after the open period is the probe"
        );
        assert!(b.allow().is_err(), "only one probe at a time");
        if let Ok(probe) = probe {
            probe.success();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker(1, 500);
        b.record_failure();
        tokio::time::advance(Duration::from_millis(501)).await;
        let probe = b.allow();
        assert!(probe.is_ok());
        if let Ok(probe) = probe {
            probe.failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_an_outcome_lets_the_next_call_probe() {
        let b = breaker(1, 500);
        b.record_failure();
        tokio::time::advance(Duration::from_millis(501)).await;
        let probe = b.allow();
        assert!(probe.is_ok());
        drop(probe); // e.g. the request's future was dropped mid-call
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let next = b.allow();
        assert!(
            next.as_ref().is_ok_and(Permit::is_probe),
            "the probe was given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_closes_a_half_open_circuit_when_its_probe_succeeds() {
        // The bug this guards against: a caller took the probe, then guarded asked again and
        // was refused; nothing ever reported an outcome and the circuit stayed half-open.
        let b = breaker(1, 500);
        b.record_failure();
        tokio::time::advance(Duration::from_millis(501)).await;
        let result: Result<u32, GuardedError<&str>> = guarded(
            &b,
            Instant::now() + Duration::from_secs(5),
            |_| Attempt::Retry,
            || async { Ok(1) },
        )
        .await;
        assert!(matches!(result, Ok(1)));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_guarded_call_does_not_keep_the_probe() {
        let b = breaker(1, 500);
        b.record_failure();
        tokio::time::advance(Duration::from_millis(501)).await;
        let hung = tokio::time::timeout(
            Duration::from_millis(100),
            guarded(
                &b,
                Instant::now() + Duration::from_secs(5),
                |_: &&str| Attempt::Retry,
                std::future::pending::<Result<u32, &str>>,
            ),
        )
        .await;
        assert!(hung.is_err(), "the call was cancelled by the timeout");
        let result: Result<u32, GuardedError<&str>> = guarded(
            &b,
            Instant::now() + Duration::from_secs(5),
            |_| Attempt::Retry,
            || async { Ok(2) },
        )
        .await;
        assert!(
            matches!(result, Ok(2)),
            "the next call probed and succeeded"
        );
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_turns_false_once_the_circuit_stays_open_longer_than_the_open_duration() {
        let b = breaker(1, 1_000);
        assert!(b.is_ready());
        b.record_failure();
        assert!(b.is_ready(), "a blip does not flap readiness");
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(!b.is_ready(), "open for longer than the open duration");
        let probe = b.allow();
        assert!(!b.is_ready(), "half-open is not ready either");
        if let Ok(probe) = probe {
            probe.success();
        }
        assert!(b.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_retries_transient_failures_within_the_deadline() {
        let b = breaker(100, 1_000);
        let mut attempts = 0;
        let result: Result<u32, GuardedError<&str>> = guarded(
            &b,
            Instant::now() + Duration::from_secs(5),
            |_| Attempt::Retry,
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
            |_| Attempt::Retry,
            || async { Err("down") },
        )
        .await;
        assert!(matches!(result, Err(GuardedError::Failed("down"))));
        assert!(Instant::now() <= started + Duration::from_millis(200));

        let mut attempts = 0;
        let result: Result<(), GuardedError<&str>> = guarded(
            &b,
            started + Duration::from_secs(5),
            |_| Attempt::Answered,
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
            |_| Attempt::Retry,
            || async { Ok(()) },
        )
        .await;
        assert!(matches!(result, Err(GuardedError::CircuitOpen(_))));
    }
}
