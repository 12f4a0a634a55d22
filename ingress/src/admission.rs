//! Admission control: decide before writing to Redis whether a request can be taken.
//!
//! Refusing early with 503 + Retry-After is kinder than accepting a request that will sit in
//! the stream past its deadline: the client learns at once and can back off or go elsewhere.
//! Besides the fixed limits (requests in flight, backlog), admission knows how fast the
//! proxies drain the queue (measured by the sampler while there is a backlog) and refuses what
//! would wait longer than its own deadline, and it refuses everything while no proxy reads the
//! queue at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::broker::Queue;

/// Share of its deadline a request may be expected to wait before it is refused. Below 1 so
/// that the spread of processing times around the estimate leaves the served requests' tail
/// inside their deadline.
const WAIT_BUDGET: f64 = 0.8;

/// Longest `Retry-After` suggested when the queue is too long for the deadline.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a request was refused before reaching Redis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rejection {
    /// The instance is shutting down.
    Draining,
    /// This instance already awaits MAX_IN_FLIGHT replies.
    InFlightLimit,
    /// The request stream holds MAX_BACKLOG entries or more.
    BacklogLimit,
    /// At the measured drain rate the request would wait longer than its deadline allows.
    WaitExceedsDeadline {
        /// Entries estimated ahead of it (waiting and being processed).
        ahead: u64,
        /// Entries per second the proxies drain.
        rate: f64,
        /// Its expected wait.
        expected: Duration,
        /// When retrying makes sense.
        retry_after: Duration,
    },
    /// No proxy has read the request stream for this long.
    NoConsumers(Duration),
}

impl Rejection {
    /// Label for `ingress_rejections_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Draining => "draining",
            Rejection::InFlightLimit => "in_flight_limit",
            Rejection::BacklogLimit => "backlog_limit",
            Rejection::WaitExceedsDeadline { .. } => "wait_exceeds_deadline",
            Rejection::NoConsumers(_) => "no_consumers",
        }
    }
}

/// Tracks requests in flight and the shutdown state.
pub struct Admission {
    permits: Arc<Semaphore>,
    no_consumer_grace: Duration,
    draining: AtomicBool,
    in_flight: Arc<InFlight>,
}

#[derive(Default)]
struct InFlight {
    count: AtomicU64,
    idle: Notify,
}

/// Held while a request is in flight; dropping it frees the slot.
pub struct InFlightGuard {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<InFlight>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let left = self.in_flight.count.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("ingress_requests_in_flight").set(left as f64);
        if left == 0 {
            self.in_flight.idle.notify_waiters();
        }
    }
}

impl Admission {
    /// `max_in_flight` slots; refuse everything once no proxy has read a queue for
    /// `no_consumer_grace`.
    pub fn new(max_in_flight: u32, no_consumer_grace: Duration) -> Self {
        metrics::gauge!("ingress_requests_in_flight").set(0.0);
        metrics::gauge!("ingress_draining").set(0.0);
        Admission {
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            no_consumer_grace,
            draining: AtomicBool::new(false),
            in_flight: Arc::new(InFlight::default()),
        }
    }

    /// Takes a slot for a request to `queue` with `timeout` to go, or says why not; every
    /// refusal is counted by reason.
    pub fn admit(&self, queue: &Queue, timeout: Duration) -> Result<InFlightGuard, Rejection> {
        let result = self.try_admit(queue, timeout);
        if let Err(rejection) = result {
            metrics::counter!("ingress_rejections_total", "reason" => rejection.reason())
                .increment(1);
        }
        result
    }

    fn try_admit(&self, queue: &Queue, timeout: Duration) -> Result<InFlightGuard, Rejection> {
        if self.is_draining() {
            return Err(Rejection::Draining);
        }
        let stats = &queue.stats;
        let without = stats.without_consumers_for();
        if without >= self.no_consumer_grace {
            return Err(Rejection::NoConsumers(without));
        }
        // The exact limit is applied by Redis when the request is written; this estimate
        // spares Redis the writes that would be refused anyway.
        let length = stats.length_estimate();
        if length >= queue.max_backlog as f64 {
            return Err(Rejection::BacklogLimit);
        }
        if let Some(rejection) =
            expected_wait(stats.lag_estimate(), length, stats.drain_rate(), timeout)
        {
            return Err(rejection);
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Rejection::InFlightLimit)?;
        let now = self.in_flight.count.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("ingress_requests_in_flight").set(now as f64);
        Ok(InFlightGuard {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        })
    }

    /// How long `no-consumers` refusals wait for a proxy to appear.
    pub fn no_consumer_grace(&self) -> Duration {
        self.no_consumer_grace
    }

    /// Requests currently awaiting replies.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.count.load(Ordering::Acquire)
    }

    /// Stops admitting: readiness turns false and new requests get 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        metrics::gauge!("ingress_draining").set(1.0);
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.in_flight.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The refusal for a request that would wait past its deadline, if it would. `waiting` entries
/// wait for a terminal (the lag), `length` is waiting plus being processed; `rate` is the
/// entries per second the proxies drain while backlogged. With nothing waiting a terminal is
/// free and the request goes straight in. Otherwise it leaves the stream after everything
/// ahead of it, about `(length + 1) / rate` from now (the entries in terminals stand for its own
/// processing time: at saturation `terminals / rate` is the time one takes).
fn expected_wait(
    waiting: f64,
    length: f64,
    rate: Option<f64>,
    timeout: Duration,
) -> Option<Rejection> {
    let rate = rate?;
    if waiting < 1.0 {
        return None;
    }
    let budget = timeout.as_secs_f64() * WAIT_BUDGET;
    // A stalled group (rate 0) has an endless wait: refuse, retry later.
    let expected = if rate > 0.0 {
        (length + 1.0) / rate
    } else {
        f64::INFINITY
    };
    if expected <= budget {
        return None;
    }
    let retry_after = Duration::try_from_secs_f64((expected - budget).max(1.0))
        .unwrap_or(MAX_RETRY_AFTER)
        .min(MAX_RETRY_AFTER);
    Some(Rejection::WaitExceedsDeadline {
        ahead: length as u64,
        rate,
        expected: Duration::try_from_secs_f64(expected).unwrap_or(Duration::MAX),
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn without_a_measured_rate_or_a_backlog_everything_goes_in() {
        assert_eq!(expected_wait(500.0, 505.0, None, SECOND), None);
        assert_eq!(expected_wait(0.0, 5.0, Some(1.0), SECOND), None);
    }

    #[test]
    fn a_wait_within_the_budget_is_admitted() {
        // 10 ahead at 100/s: 0.11 s against 0.8 s of a 1 s deadline.
        assert_eq!(expected_wait(5.0, 10.0, Some(100.0), SECOND), None);
    }

    #[test]
    fn a_wait_past_the_deadline_is_refused_with_a_useful_retry_after() {
        // 300 ahead at 20/s: about 15 s against 30 s × 0.8 is fine; against 5 s it is not.
        assert_eq!(expected_wait(295.0, 300.0, Some(20.0), 30 * SECOND), None);
        let Some(Rejection::WaitExceedsDeadline {
            expected,
            retry_after,
            ahead,
            ..
        }) = expected_wait(295.0, 300.0, Some(20.0), 5 * SECOND)
        else {
            panic!("a 15 s wait exceeds a 5 s deadline");
        };
        assert_eq!(ahead, 300);
        assert!(
            (expected.as_secs_f64() - 15.05).abs() < 0.01,
            "{expected:?}"
        );
        assert_eq!(retry_after.as_secs(), 11);
    }

    #[test]
    fn a_stalled_group_refuses_and_caps_the_retry_after() {
        let Some(Rejection::WaitExceedsDeadline { retry_after, .. }) =
            expected_wait(3.0, 8.0, Some(0.0), SECOND)
        else {
            panic!("nothing drains");
        };
        assert_eq!(retry_after, MAX_RETRY_AFTER);
    }
}
