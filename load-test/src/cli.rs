//! Command-line flags (each also settable through a `LOAD_TEST_*` variable).
//!
//! This module only parses; turning flags into a [`Config`] (reading the cities
//! file, choosing count vs. duration) happens in [`Cli::into_config`] so the
//! same rules apply whether the run came from argv or the environment.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::cities::{default_cities, parse_cities_file};
use crate::config::{
    Config, DEFAULT_CONCURRENCY, DEFAULT_COUNT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_SPIKE_MULTIPLIER,
    DEFAULT_URL, Mode, Stop,
};
use crate::profile::Profile;
use crate::schedule::DEFAULT_MAX_LATE_FRACTION;

/// Load generator and smoke test for the weather broker.
///
/// Checks `GET /healthz`, then sends `POST /WeatherForecast/city` requests and
/// verifies that every reply belongs to the request that asked for it.
/// Exit code 0: error rate within --max-error-rate; 1: too many failures;
/// 2: bad usage or the service is not reachable/healthy.
#[derive(Debug, Parser)]
#[command(name = "load-test", version, about, long_about = None)]
pub struct Cli {
    /// Base URL of the ingress service.
    #[arg(long, env = "LOAD_TEST_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// sequential: one at a time; concurrent: closed-loop workers; rate: open loop at --rate.
    #[arg(long, env = "LOAD_TEST_MODE", value_enum, default_value_t = Mode::Concurrent)]
    pub mode: Mode,

    /// Total number of requests [default: 100]. Ignored when --duration or --profile is given.
    #[arg(long, env = "LOAD_TEST_COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Closed-loop workers in concurrent mode; the base level of a --profile.
    #[arg(long, env = "LOAD_TEST_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY,
          value_parser = parse_positive_usize)]
    pub concurrency: usize,

    /// Run for this long instead of --count (e.g. 30s, 2m). With --profile: total profile length.
    #[arg(long, env = "LOAD_TEST_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Requests per second in --mode rate (open loop: independent of reply speed).
    #[arg(long, env = "LOAD_TEST_RATE", value_parser = parse_rate,
          required_if_eq("mode", "rate"))]
    pub rate: Option<f64>,

    /// Most requests in flight at once in rate mode; beyond it sends are delayed (and counted late).
    #[arg(long, env = "LOAD_TEST_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT,
          value_parser = parse_positive_usize)]
    pub max_in_flight: usize,

    /// Per-request timeout; also sent to the service as the `Request-Timeout` header.
    #[arg(long, env = "LOAD_TEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Staged concurrency profile: load (ramp up/hold/down), spike (jump to N x and back), soak (steady).
    #[arg(long, env = "LOAD_TEST_PROFILE", value_enum)]
    pub profile: Option<Profile>,

    /// Height of the spike in --profile spike, as a multiple of --concurrency.
    #[arg(long, env = "LOAD_TEST_SPIKE_MULTIPLIER", default_value_t = DEFAULT_SPIKE_MULTIPLIER,
          value_parser = parse_positive_usize)]
    pub spike_multiplier: usize,

    /// File with one `city,location` per line (blank lines and `#` comments ignored) [default: 15 built-in pairs].
    #[arg(long, env = "LOAD_TEST_CITIES")]
    pub cities: Option<PathBuf>,

    /// Print the report as JSON on stdout instead of the text summary (also hides the progress bar).
    #[arg(long, env = "LOAD_TEST_JSON", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,

    /// Largest fraction of failed requests that still exits 0 (0 = any failure fails the run).
    #[arg(long, env = "LOAD_TEST_MAX_ERROR_RATE", default_value_t = 0.0,
          value_parser = parse_fraction)]
    pub max_error_rate: f64,

    /// Rate mode: warn that the generator fell behind only when more than this fraction of sends
    /// left over 5 ms late (or one send was over 1 s late); 0 = warn on any late send.
    #[arg(long, env = "LOAD_TEST_MAX_LATE_FRACTION", default_value_t = DEFAULT_MAX_LATE_FRACTION,
          value_parser = parse_fraction)]
    pub max_late_fraction: f64,

    /// Send load for this long first and leave those requests out of the report (e.g. 5s).
    #[arg(long, env = "LOAD_TEST_WARMUP", value_parser = parse_duration)]
    pub warmup: Option<Duration>,

    /// Never draw the progress bar (it is already hidden when stderr is not a terminal).
    #[arg(long, env = "LOAD_TEST_NO_PROGRESS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_progress: bool,
}

impl Cli {
    /// Resolves defaults that depend on other flags and reads the cities file.
    ///
    /// `stderr_is_tty` is passed in (rather than probed here) so the decision is
    /// testable.
    pub fn into_config(self, stderr_is_tty: bool) -> anyhow::Result<Config> {
        let cities = match &self.cities {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --cities file {}", path.display()))?;
                parse_cities_file(&path.display().to_string(), &text)?
            }
            None => default_cities(),
        };
        let stop = match self.duration {
            Some(d) => Stop::Duration(d),
            None => Stop::Count(self.count.unwrap_or(DEFAULT_COUNT)),
        };
        let config = Config {
            url: self.url,
            mode: self.mode,
            stop,
            concurrency: self.concurrency,
            rate: self.rate,
            max_in_flight: self.max_in_flight,
            timeout: self.timeout,
            profile: self.profile,
            profile_duration: self.duration,
            spike_multiplier: self.spike_multiplier,
            cities,
            warmup: self.warmup,
            max_error_rate: self.max_error_rate,
            max_late_fraction: self.max_late_fraction,
            show_progress: stderr_is_tty && !self.json && !self.no_progress,
        };
        config.validate()?;
        Ok(config)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (examples: 30s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

fn parse_positive_usize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !r.is_finite() || r <= 0.0 {
        return Err("must be a positive number of requests per second".to_owned());
    }
    Ok(r)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&f) {
        return Err("must be a fraction between 0 and 1 (e.g. 0.01 for 1%)".to_owned());
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("load-test").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).unwrap().into_config(true).unwrap();
        assert_eq!(config.url, DEFAULT_URL);
        assert_eq!(config.mode, Mode::Concurrent);
        assert_eq!(config.stop, Stop::Count(100));
        assert_eq!(config.concurrency, 10);
        assert_eq!(config.timeout, Duration::from_secs(30));
        assert_eq!(config.cities.len(), 15);
        assert_eq!(config.max_error_rate, 0.0);
        assert_eq!(config.max_late_fraction, 0.01);
        assert!(config.show_progress);
    }

    #[test]
    fn duration_replaces_count() {
        let config = parse(&["--count", "5", "--duration", "2s"])
            .unwrap()
            .into_config(false)
            .unwrap();
        assert_eq!(config.stop, Stop::Duration(Duration::from_secs(2)));
    }

    #[test]
    fn json_hides_progress() {
        let config = parse(&["--json"]).unwrap().into_config(true).unwrap();
        assert!(!config.show_progress);
    }

    #[test]
    fn rate_mode_without_rate_is_a_usage_error() {
        assert!(parse(&["--mode", "rate"]).is_err());
        assert!(parse(&["--mode", "rate", "--rate", "2000"]).is_ok());
    }

    #[test]
    fn bad_values_are_rejected_by_clap() {
        for args in [
            &["--count", "0"][..],
            &["--concurrency", "0"],
            &["--duration", "soon"],
            &["--rate", "-1"],
            &["--max-error-rate", "2"],
            &["--max-late-fraction", "1.5"],
            &["--mode", "fast"],
            &["--profile", "burst"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn missing_cities_file_is_an_error() {
        let err = parse(&["--cities", "/nonexistent/cities.txt"])
            .unwrap()
            .into_config(false)
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/cities.txt"));
    }
}
