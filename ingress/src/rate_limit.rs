//! Per-client token buckets (RATE_LIMIT, RATE_LIMIT_BURST) with bounded memory.
//!
//! The buckets are governor's GCRA (one 8-byte state per client, lock-free updates) in a
//! store that tracks at most RATE_LIMIT_MAX_KEYS clients: a client first seen while the store
//! is full shares one overflow bucket with every other such client, so a flood of fresh keys
//! (spoofed API keys, a botnet) costs bounded memory and cannot push out the clients already
//! tracked. A periodic sweep ([`ClientRateLimiter::evict_idle`]) forgets clients whose bucket
//! has refilled completely: forgetting them loses nothing, since a new bucket starts full.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};

use crate::client_key::ClientKey;

/// A sustained rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period (also the default burst).
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The RATE_LIMIT setting: off, or a rate per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitSetting {
    /// No rate limit (the default).
    Off,
    /// Each client may send this many requests per period, sustained.
    PerClient(Rate),
}

impl RateLimitSetting {
    /// Parses `off`, or `<n>/s`, `<n>/m`, `<n>/h` (also `sec`, `min`, `hour`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            return Ok(RateLimitSetting::Off);
        }
        let expected =
            || format!("expected `off` or a rate like `100/s`, `600/m`, `1000/h`; got `{value}`");
        let (count, unit) = value.split_once('/').ok_or_else(expected)?;
        let count = count
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .filter(|n| n.get() <= 1_000_000)
            .ok_or_else(|| format!("the count in `{value}` must be 1 to 1000000"))?;
        let per = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3_600),
            _ => return Err(expected()),
        };
        Ok(RateLimitSetting::PerClient(Rate { count, per }))
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let through; `remaining` more requests fit in the bucket now.
    Allowed {
        /// Whole requests left in the bucket after this one.
        remaining: u32,
        /// Until the bucket is full again.
        reset: Duration,
    },
    /// Over the limit.
    Limited {
        /// Until the next request would be let through.
        retry_after: Duration,
        /// Until the bucket is full again.
        reset: Duration,
    },
}

/// governor's DashMap store, capped at `max_keys` clients (see the module docs).
pub struct CappedStore {
    map: DashMapStateStore<ClientKey>,
    max_keys: usize,
    overflowed: Arc<AtomicU64>,
}

impl StateStore for CappedStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Checking and inserting are not one step, so concurrent new clients can overshoot
        // the cap by at most the number of request threads: still bounded.
        if self.map.contains_key(key) || self.map.len() < self.max_keys {
            self.map.measure_and_replace(key, f)
        } else {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            self.map.measure_and_replace(&ClientKey::Overflow, f)
        }
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One token bucket per client: `burst` requests at once, refilled at the configured rate.
pub struct ClientRateLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<ClientKey, CappedStore, C, StateInformationMiddleware>,
    burst: u32,
    interval: Duration,
    overflowed: Arc<AtomicU64>,
}

impl ClientRateLimiter<DefaultClock> {
    /// A limiter for `rate` with bursts of `burst` (default: the rate's count), tracking at
    /// most `max_keys` clients.
    pub fn new(rate: Rate, burst: Option<NonZeroU32>, max_keys: usize) -> Self {
        Self::with_clock(rate, burst, max_keys, DefaultClock::default())
    }
}

impl<C: Clock> ClientRateLimiter<C> {
    /// Like [`ClientRateLimiter::new`] on a given clock (tests use a fake one).
    pub fn with_clock(rate: Rate, burst: Option<NonZeroU32>, max_keys: usize, clock: C) -> Self {
        let burst = burst.unwrap_or(rate.count);
        // Invariant: count ≤ 1_000_000 (RateLimitSetting::parse), so the interval is ≥ 1 µs.
        let interval = (rate.per / rate.count.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(rate.count))
            .allow_burst(burst);
        let overflowed = Arc::new(AtomicU64::new(0));
        let store = CappedStore {
            map: DashMapStateStore::default(),
            max_keys: max_keys.max(1),
            overflowed: overflowed.clone(),
        };
        ClientRateLimiter {
            limiter: RateLimiter::new(quota, store, clock),
            burst: burst.get(),
            interval,
            overflowed,
        }
    }

    /// Takes one token from `key`'s bucket if it has one.
    pub fn check(&self, key: &ClientKey) -> Decision {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision::Allowed {
                    remaining,
                    reset: self.interval * self.burst.saturating_sub(remaining),
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.limiter.clock().now());
                Decision::Limited {
                    retry_after,
                    reset: retry_after + self.interval * self.burst.saturating_sub(1),
                }
            }
        }
    }

    /// Forgets every client whose bucket is full again (it would start full anyway); returns
    /// how many clients are still tracked.
    pub fn evict_idle(&self) -> usize {
        let before = self.limiter.len();
        self.limiter.retain_recent();
        let after = self.limiter.len();
        if after < before / 2 {
            self.limiter.shrink_to_fit();
        }
        after
    }

    /// Clients tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    /// Requests so far that were counted against the shared overflow bucket.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The bucket size (RateLimit-Limit).
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn per_minute(count: u32) -> Rate {
        Rate {
            count: NonZeroU32::new(count).expect("non-zero"), // invariant: test code; a failure here is the test failing
            per: Duration::from_secs(60),
        }
    }

    fn ip(last: u8) -> ClientKey {
        ClientKey::Ip(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn settings_parse() {
        assert_eq!(RateLimitSetting::parse("off"), Ok(RateLimitSetting::Off));
        let Ok(RateLimitSetting::PerClient(rate)) = RateLimitSetting::parse("100/s") else {
            panic!("100/s parses");
        };
        assert_eq!((rate.count.get(), rate.per), (100, Duration::from_secs(1)));
        assert_eq!(rate.to_string(), "100/s");
        assert!(matches!(
            RateLimitSetting::parse("6/min"),
            Ok(RateLimitSetting::PerClient(Rate { per, .. })) if per == Duration::from_secs(60)
        ));
        for bad in ["", "100", "0/s", "ten/s", "100/day", "2000000/s"] {
            assert!(RateLimitSetting::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_drains_the_bucket_then_requests_are_limited_per_client() {
        let clock = FakeRelativeClock::default();
        let limiter =
            ClientRateLimiter::with_clock(per_minute(1), NonZeroU32::new(3), 100, clock.clone());
        let remaining: Vec<Decision> = (0..3).map(|_| limiter.check(&ip(1))).collect();
        assert_eq!(
            remaining
                .iter()
                .map(|d| match d {
                    Decision::Allowed { remaining, .. } => *remaining,
                    Decision::Limited { .. } => 99,
                })
                .collect::<Vec<_>>(),
            vec![2, 1, 0]
        );
        let Decision::Limited { retry_after, reset } = limiter.check(&ip(1)) else {
            panic!("the 4th request in a minute is limited");
        };
        assert_eq!(retry_after, Duration::from_secs(60));
        assert_eq!(reset, Duration::from_secs(180));
        assert!(
            matches!(
                limiter.check(&ip(2)),
                Decision::Allowed { remaining: 2, .. }
            ),
            "another client has its own bucket"
        );
        clock.advance(Duration::from_secs(60));
        assert!(matches!(
            limiter.check(&ip(1)),
            Decision::Allowed { remaining: 0, .. }
        ));
    }

    #[test]
    fn idle_clients_are_evicted_once_their_bucket_is_full_again() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            count: NonZeroU32::new(10).expect("non-zero"), // invariant: test code; a failure here is the test failing
            per: Duration::from_secs(1),
        };
        let limiter = ClientRateLimiter::with_clock(rate, NonZeroU32::new(5), 100, clock.clone());
        for client in 0..50 {
            limiter.check(&ip(client));
        }
        assert_eq!(limiter.tracked_keys(), 50);
        // Each took one token, back after 100 ms; client 0 takes two more at 50 ms. governor
        // forgets a bucket one interval after it is full again (then it is surely full).
        clock.advance(Duration::from_millis(50));
        limiter.check(&ip(0));
        limiter.check(&ip(0));
        assert_eq!(limiter.evict_idle(), 50, "nobody is full yet");
        clock.advance(Duration::from_millis(150));
        assert_eq!(limiter.evict_idle(), 1, "only the busy client is left");
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.evict_idle(), 0);
    }

    #[test]
    fn past_the_key_cap_new_clients_share_one_overflow_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter =
            ClientRateLimiter::with_clock(per_minute(1), NonZeroU32::new(2), 3, clock.clone());
        for client in 0..3 {
            assert!(matches!(
                limiter.check(&ip(client)),
                Decision::Allowed { .. }
            ));
        }
        assert_eq!(limiter.tracked_keys(), 3);
        // Two unseen clients share the overflow bucket (burst 2); a third is limited.
        assert!(matches!(limiter.check(&ip(10)), Decision::Allowed { .. }));
        assert!(matches!(limiter.check(&ip(11)), Decision::Allowed { .. }));
        assert!(matches!(limiter.check(&ip(12)), Decision::Limited { .. }));
        assert_eq!(limiter.overflowed(), 3);
        assert_eq!(
            limiter.tracked_keys(),
            4,
            "the cap plus the overflow bucket"
        );
        // Tracked clients keep their own buckets.
        assert!(matches!(
            limiter.check(&ip(0)),
            Decision::Allowed { remaining: 0, .. }
        ));
    }
}
