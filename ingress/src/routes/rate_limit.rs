//! The rate-limit layer on the API routes: one token per request from the client's bucket,
//! `RateLimit-*` headers on every answer, 429 + `Retry-After` past the limit.
//!
//! Header form: the three separate fields of draft-ietf-httpapi-ratelimit-headers (up to -06),
//! which most clients and gateways read: `RateLimit-Limit` (the bucket size, RATE_LIMIT_BURST),
//! `RateLimit-Remaining` (whole requests left now), `RateLimit-Reset` (seconds until the bucket
//! is full again). Seconds are rounded up, so waiting that long always suffices.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::http::{Problem, RequestId};
use tokio_util::sync::CancellationToken;

use crate::client_key::ClientKeys;
use crate::config::IngressConfig;
use crate::rate_limit::{ClientRateLimiter, Decision, Rate, RateLimitSetting};

/// How often clients whose bucket is full again are forgotten.
const EVICTION_INTERVAL: Duration = Duration::from_secs(10);

static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The limiter, how clients are told apart, and the wording of the 429.
pub struct RateLimiting {
    limiter: ClientRateLimiter,
    keys: ClientKeys,
    rate: Rate,
}

impl RateLimiting {
    /// The layer's state from the settings; `None` when RATE_LIMIT is off.
    pub fn from_config(config: &IngressConfig) -> Option<Arc<Self>> {
        let RateLimitSetting::PerClient(rate) = config.rate_limit else {
            return None;
        };
        let burst = config.rate_limit_burst.and_then(NonZeroU32::new);
        Some(Arc::new(RateLimiting {
            limiter: ClientRateLimiter::new(rate, burst, config.rate_limit_max_keys as usize),
            keys: ClientKeys::new(
                config.rate_limit_key_header.clone(),
                config.trusted_proxies.clone(),
            ),
            rate,
        }))
    }

    /// Forgets idle clients every [`EVICTION_INTERVAL`] until `stop`, publishes how many are
    /// tracked, and warns when the key cap made new clients share the overflow bucket.
    pub fn spawn_eviction(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut overflowed = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(EVICTION_INTERVAL) => {}
                }
                let tracked = this.limiter.evict_idle();
                metrics::gauge!("ingress_rate_limit_clients").set(tracked as f64);
                let now = this.limiter.overflowed();
                metrics::counter!("ingress_rate_limit_overflow_total").absolute(now);
                if now > overflowed {
                    tracing::warn!(
                        tracked,
                        requests = now - overflowed,
                        "rate limiter is full (RATE_LIMIT_MAX_KEYS): requests from new clients shared one bucket; raise RATE_LIMIT_MAX_KEYS if these are real clients"
                    );
                }
                overflowed = now;
            }
        })
    }

    fn headers(&self, remaining: u32, reset: Duration) -> [(HeaderName, HeaderValue); 3] {
        [
            (LIMIT.clone(), HeaderValue::from(self.limiter.burst())),
            (REMAINING.clone(), HeaderValue::from(remaining)),
            (RESET.clone(), HeaderValue::from(ceil_secs(reset))),
        ]
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Middleware: takes a token from the client's bucket or answers 429.
pub async fn limit_rate(
    State(limits): State<Arc<RateLimiting>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let key = limits.keys.key(request.headers(), peer);
    match limits.limiter.check(&key) {
        Decision::Allowed { remaining, reset } => {
            let mut response = next.run(request).await;
            extend(response.headers_mut(), limits.headers(remaining, reset));
            response
        }
        Decision::Limited { retry_after, reset } => {
            metrics::counter!("ingress_rejections_total", "reason" => "rate_limited").increment(1);
            let retry_secs = ceil_secs(retry_after).max(1);
            tracing::debug!(?key, retry_secs, "rate limited");
            let problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "this client (told apart by {}) is over the rate limit of {} with bursts of {}; retry after {retry_secs} s",
                    limits.keys.describe(),
                    limits.rate,
                    limits.limiter.burst()
                ),
            )
            .retry_after(retry_secs);
            let problem = match request.extensions().get::<RequestId>() {
                Some(id) => problem.with_request_id(id),
                None => problem,
            };
            let mut response = problem.into_response();
            extend(response.headers_mut(), limits.headers(0, reset));
            response
        }
    }
}

fn extend(headers: &mut HeaderMap, extra: [(HeaderName, HeaderValue); 3]) {
    for (name, value) in extra {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2_001)), 3);
    }
}
