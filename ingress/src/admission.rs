//! Admission control: decide before writing to Redis whether a request can be taken.
//!
//! Refusing early with 503 + Retry-After is kinder than accepting a request that will sit in
//! the stream past its deadline: the client learns at once and can back off or go elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shared::streams::StreamStats;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Why a request was refused before reaching Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The instance is shutting down.
    Draining,
    /// This instance already awaits MAX_IN_FLIGHT replies.
    InFlightLimit,
    /// The request stream holds more than MAX_BACKLOG entries.
    BacklogLimit,
}

impl Rejection {
    /// Label for `ingress_rejections_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Draining => "draining",
            Rejection::InFlightLimit => "in_flight_limit",
            Rejection::BacklogLimit => "backlog_limit",
        }
    }
}

/// Tracks requests in flight and the shutdown state.
pub struct Admission {
    permits: Arc<Semaphore>,
    max_backlog: u64,
    stats: Arc<StreamStats>,
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
    /// `max_in_flight` slots; refuse when the sampled stream length exceeds `max_backlog`.
    pub fn new(max_in_flight: u32, max_backlog: u64, stats: Arc<StreamStats>) -> Self {
        metrics::gauge!("ingress_requests_in_flight").set(0.0);
        metrics::gauge!("ingress_draining").set(0.0);
        Admission {
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_backlog,
            stats,
            draining: AtomicBool::new(false),
            in_flight: Arc::new(InFlight::default()),
        }
    }

    /// Takes a slot or says why not; every refusal is counted by reason.
    pub fn admit(&self) -> Result<InFlightGuard, Rejection> {
        let result = self.try_admit();
        if let Err(rejection) = result {
            metrics::counter!("ingress_rejections_total", "reason" => rejection.reason())
                .increment(1);
        }
        result
    }

    fn try_admit(&self) -> Result<InFlightGuard, Rejection> {
        if self.is_draining() {
            return Err(Rejection::Draining);
        }
        if self.stats.length() > self.max_backlog {
            return Err(Rejection::BacklogLimit);
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
