//! The validated run configuration.
//!
//! [`Config`] is what [`crate::run`] consumes. It is separate from the clap
//! definitions in [`crate::cli`] so that tests (including the lead's in-process
//! end-to-end test) can build one directly without going through argv parsing.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::cities::{City, default_cities};
use crate::profile::Profile;
use crate::schedule::DEFAULT_MAX_LATE_FRACTION;

/// Default base URL of the ingress service; matches the port `./scripts/run` uses.
pub const DEFAULT_URL: &str = "http://localhost:5009";
/// Default number of requests when neither `--duration` nor `--profile` is given.
pub const DEFAULT_COUNT: u64 = 100;
/// Default number of closed-loop workers (concurrent mode, profile base level).
pub const DEFAULT_CONCURRENCY: usize = 10;
/// Default per-request timeout; also sent to the service as `Request-Timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on requests in flight in rate mode, so a stalled service cannot
/// make the generator exhaust file descriptors.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1000;
/// Default spike height, as a multiple of `--concurrency`.
pub const DEFAULT_SPIKE_MULTIPLIER: usize = 10;
/// Upper bound on simultaneous users / requests in flight: each one may hold a
/// socket, and a typo like `--concurrency 10000000` should be a usage error,
/// not an out-of-memory crash.
pub const MAX_USERS: usize = 100_000;

/// How requests are issued.
///
/// The distinction matters for what the latency numbers mean: the closed-loop
/// modes measure service time under a fixed number of users, the open-loop rate
/// mode measures what users arriving at a fixed rate would experience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One request at a time; the simplest smoke test.
    Sequential,
    /// `--concurrency` closed-loop workers, each sending its next request as soon
    /// as the previous reply arrives.
    Concurrent,
    /// Open loop: requests are started on a fixed schedule (`--rate` per second)
    /// regardless of how fast replies come back.
    Rate,
}

/// When the run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests have been issued.
    Count(u64),
    /// After this much wall-clock time (requests in flight then are still awaited).
    Duration(Duration),
}

/// Everything a run needs, already validated.
///
/// Fields are public so callers can build one with struct-update syntax from
/// [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Base URL of the ingress service (no trailing path needed).
    pub url: String,
    /// How requests are issued.
    pub mode: Mode,
    /// When to stop; ignored when `profile` is set (profiles are time-driven).
    pub stop: Stop,
    /// Closed-loop workers (concurrent mode) or base level of a profile.
    pub concurrency: usize,
    /// Target requests per second in rate mode.
    pub rate: Option<f64>,
    /// Maximum requests in flight in rate mode.
    pub max_in_flight: usize,
    /// Per-request deadline, sent as `Request-Timeout` and enforced client-side.
    pub timeout: Duration,
    /// Staged concurrency profile (concurrent mode only).
    pub profile: Option<Profile>,
    /// Total profile duration; `None` means the profile's own default.
    pub profile_duration: Option<Duration>,
    /// Spike height as a multiple of `concurrency` (spike profile).
    pub spike_multiplier: usize,
    /// City/location pairs to cycle through.
    pub cities: Vec<City>,
    /// Run the same load for this long first and discard the results.
    pub warmup: Option<Duration>,
    /// Largest failure fraction that still counts as a pass.
    pub max_error_rate: f64,
    /// Rate mode: largest fraction of late sends the report accepts without
    /// warning that the generator fell behind (see [`crate::schedule::Lag::fell_behind`]).
    pub max_late_fraction: f64,
    /// Whether to draw the progress bar (callers decide based on TTY / `--json`).
    pub show_progress: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            mode: Mode::Concurrent,
            stop: Stop::Count(DEFAULT_COUNT),
            concurrency: DEFAULT_CONCURRENCY,
            rate: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            timeout: DEFAULT_TIMEOUT,
            profile: None,
            profile_duration: None,
            spike_multiplier: DEFAULT_SPIKE_MULTIPLIER,
            cities: default_cities(),
            warmup: None,
            max_error_rate: 0.0,
            max_late_fraction: DEFAULT_MAX_LATE_FRACTION,
            show_progress: false,
        }
    }
}

impl Config {
    /// Checks the combinations clap cannot express, so `run` never starts with a
    /// configuration that would divide by zero or silently ignore a flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| anyhow::anyhow!("invalid --url {:?}: {e}", self.url))?;
        if url.scheme() != "http" {
            anyhow::bail!(
                "invalid --url {:?}: only http:// is supported (the tool is built without TLS)",
                self.url
            );
        }
        if self.concurrency == 0 {
            anyhow::bail!("--concurrency must be at least 1");
        }
        if self.concurrency > MAX_USERS {
            anyhow::bail!("--concurrency must be at most {MAX_USERS}");
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_USERS {
            anyhow::bail!("--max-in-flight must be between 1 and {MAX_USERS}");
        }
        if self.timeout.is_zero() {
            anyhow::bail!("--timeout must be greater than zero");
        }
        match self.stop {
            Stop::Count(0) => anyhow::bail!("--count must be at least 1"),
            Stop::Duration(d) if d.is_zero() => {
                anyhow::bail!("--duration must be greater than zero")
            }
            _ => {}
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            anyhow::bail!("--max-error-rate must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.max_late_fraction) {
            anyhow::bail!("--max-late-fraction must be between 0 and 1 (e.g. 0.01 for 1%)");
        }
        if self.cities.is_empty() {
            anyhow::bail!("the city list is empty");
        }
        match self.mode {
            Mode::Rate => match self.rate {
                Some(r) if r.is_finite() && r > 0.0 => {}
                Some(_) => anyhow::bail!("--rate must be a positive number"),
                None => anyhow::bail!("--mode rate needs --rate <REQUESTS_PER_SECOND>"),
            },
            Mode::Sequential | Mode::Concurrent => {}
        }
        if let Some(p) = self.profile {
            if self.mode != Mode::Concurrent {
                anyhow::bail!(
                    "--profile {} ramps concurrency and only works with --mode concurrent",
                    p.name()
                );
            }
            if self.spike_multiplier == 0 {
                anyhow::bail!("--spike-multiplier must be at least 1");
            }
            if p == Profile::Spike
                && self.concurrency.saturating_mul(self.spike_multiplier) > MAX_USERS
            {
                anyhow::bail!(
                    "--concurrency x --spike-multiplier must be at most {MAX_USERS} users"
                );
            }
            if self.profile_duration.is_some_and(|d| d.is_zero()) {
                anyhow::bail!("--duration must be greater than zero");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn rate_mode_requires_rate() {
        let c = Config {
            mode: Mode::Rate,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--rate"), "{err}");
    }

    #[test]
    fn profile_requires_concurrent_mode() {
        let c = Config {
            mode: Mode::Sequential,
            profile: Some(Profile::Spike),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn rejects_https_and_garbage_urls() {
        for url in ["https://localhost:5009", "not a url", ""] {
            let c = Config {
                url: url.to_owned(),
                ..Config::default()
            };
            assert!(c.validate().is_err(), "{url} accepted");
        }
    }

    #[test]
    fn rejects_absurd_user_counts() {
        let c = Config {
            concurrency: MAX_USERS + 1,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            concurrency: 20_000,
            profile: Some(Profile::Spike),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn rejects_out_of_range_error_rate() {
        let c = Config {
            max_error_rate: 1.5,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            max_late_fraction: f64::NAN,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
