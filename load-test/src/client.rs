//! The HTTP side: one shared, pooled client, the health check, and sending one
//! verified forecast request.
//!
//! A single `reqwest::Client` is built per run and cloned (cheaply, it is an
//! `Arc`) into every worker, so connections are kept alive and reused; request
//! bodies are serialized once per city up front. Per request the tool allocates
//! only the id string and the reply buffer, which keeps the generator well away
//! from being the bottleneck on loopback.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};

use crate::cities::City;
use crate::config::Config;
use crate::verify::{ErrorKind, Expected, Failure, status_failure, verify_reply};

/// Request header carrying the caller-chosen id the broker must echo back.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Request header asking the service for a (shorter) deadline.
pub const REQUEST_TIMEOUT_HEADER: HeaderName = HeaderName::from_static("request-timeout");
/// Upper bound on the health check, so a hung service fails fast instead of
/// after the full `--timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the pre-flight `GET /healthz` failed; `main` turns it into exit code 2.
///
/// A dedicated type (rather than a string) lets callers tell "the service is
/// not there" apart from "the service misbehaved under load".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckError {
    /// Base URL that was checked.
    pub url: String,
    /// Short reason: `connection refused`, `HTTP 503 Service Unavailable`, ...
    pub reason: String,
    /// True when nothing answered at all (as opposed to an unhealthy answer).
    pub unreachable: bool,
}

impl fmt::Display for HealthCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unreachable {
            write!(
                f,
                "no service at {} (GET /healthz: {}) — start it with ./scripts/run",
                self.url, self.reason
            )
        } else {
            write!(
                f,
                "service at {} is not healthy (GET /healthz: {})",
                self.url, self.reason
            )
        }
    }
}

impl std::error::Error for HealthCheckError {}

/// Formats a deadline the way the service's `Request-Timeout` header expects
/// (`5s`, or `1500ms` when not a whole number of seconds).
pub fn request_timeout_value(timeout: Duration) -> String {
    if timeout.subsec_nanos() == 0 {
        format!("{}s", timeout.as_secs())
    } else {
        format!("{}ms", timeout.as_millis().max(1))
    }
}

/// How long the client waits beyond the deadline it asked the service for.
///
/// The service answers 504 at its deadline; waiting a little longer lets that
/// answer arrive (and be reported as a 504) instead of racing it with a
/// client-side timeout.
pub fn client_grace(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Everything needed to send verified requests to one service.
#[derive(Debug, Clone)]
pub struct Target {
    client: reqwest::Client,
    base: String,
    health_url: reqwest::Url,
    forecast_url: reqwest::Url,
    timeout_header: HeaderValue,
    cities: Vec<City>,
    bodies: Vec<Bytes>,
}

impl Target {
    /// Builds the shared client and pre-serializes one body per city.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let base = config.url.trim_end_matches('/').to_owned();
        let health_url = reqwest::Url::parse(&format!("{base}/healthz"))?;
        let forecast_url = reqwest::Url::parse(&format!("{base}/WeatherForecast/city"))?;
        let timeout_header = HeaderValue::from_str(&request_timeout_value(config.timeout))?;
        let client = reqwest::Client::builder()
            // A proxy from the environment would distort every number.
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(config.timeout.min(HEALTH_TIMEOUT))
            .timeout(config.timeout.saturating_add(client_grace(config.timeout)))
            .user_agent(concat!("load-test/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let bodies = config
            .cities
            .iter()
            .map(|c| serde_json::to_vec(c).map(Bytes::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            client,
            base,
            health_url,
            forecast_url,
            timeout_header,
            cities: config.cities.clone(),
            bodies,
        })
    }

    /// `GET /healthz`; any 2xx passes.
    pub async fn health_check(&self) -> Result<(), HealthCheckError> {
        let fail = |reason: String, unreachable: bool| HealthCheckError {
            url: self.base.clone(),
            reason,
            unreachable,
        };
        let resp = self
            .client
            .get(self.health_url.clone())
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| fail(describe_transport_error(&e), true))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        // The body of an unhealthy answer usually says what is wrong; keep it short.
        let body = resp.bytes().await.unwrap_or_default();
        let reported = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
        let reason = match reported {
            Some(s) => format!("HTTP {status}, status {s:?}"),
            None => format!("HTTP {status}"),
        };
        Err(fail(reason, false))
    }

    /// Sends request number `n` with id `request_id` and verifies the reply.
    ///
    /// Cities are used round-robin by `n`, so consecutive requests in flight
    /// carry different bodies and a crossed reply shows up as a mismatch.
    pub async fn send(&self, request_id: &str, n: u64) -> Result<(), Failure> {
        let idx = (n % self.bodies.len().max(1) as u64) as usize;
        let (Some(body), Some(city)) = (self.bodies.get(idx), self.cities.get(idx)) else {
            return Err(Failure::new(ErrorKind::Io, "no cities configured"));
        };
        let id_value = HeaderValue::from_str(request_id).map_err(|e| {
            Failure::new(
                ErrorKind::Io,
                format!("{request_id:?}: invalid request id: {e}"),
            )
        })?;
        let resp = self
            .client
            .post(self.forecast_url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(REQUEST_ID_HEADER, id_value)
            .header(REQUEST_TIMEOUT_HEADER, self.timeout_header.clone())
            .body(body.clone())
            .send()
            .await
            .map_err(|e| transport_failure(request_id, &e))?;
        let status = resp.status();
        let header_id = resp
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_failure(request_id, &e))?;
        if !status.is_success() {
            return Err(status_failure(request_id, status.as_u16(), &bytes));
        }
        let expected = Expected {
            request_id,
            city: &city.city,
            location: &city.location,
        };
        verify_reply(&expected, header_id.as_deref(), &bytes)
    }
}

/// Classifies a transport error. Connect problems are checked first so that a
/// connect timeout counts as `connect` (the service is not accepting), while a
/// timeout on an established connection counts as `timeout`.
fn transport_failure(request_id: &str, err: &reqwest::Error) -> Failure {
    let kind = if err.is_connect() {
        ErrorKind::Connect
    } else if err.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Io
    };
    Failure::new(
        kind,
        format!("{request_id}: {}", describe_transport_error(err)),
    )
}

/// Short, human description of a transport error: the underlying OS error if
/// there is one (`connection refused`), otherwise the whole cause chain.
fn describe_transport_error(err: &reqwest::Error) -> String {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "timed out".to_owned(),
                _ => io.to_string(),
            };
        }
        source = e.source();
    }
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_header_format() {
        assert_eq!(request_timeout_value(Duration::from_secs(30)), "30s");
        assert_eq!(request_timeout_value(Duration::from_millis(1500)), "1500ms");
        assert_eq!(request_timeout_value(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn grace_is_bounded() {
        assert_eq!(
            client_grace(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        assert_eq!(
            client_grace(Duration::from_secs(5)),
            Duration::from_millis(500)
        );
        assert_eq!(
            client_grace(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn health_error_messages_are_one_clear_line() {
        let e = HealthCheckError {
            url: "http://localhost:5009".into(),
            reason: "connection refused".into(),
            unreachable: true,
        };
        assert_eq!(
            e.to_string(),
            "no service at http://localhost:5009 (GET /healthz: connection refused) — start it with ./scripts/run"
        );
        let e = HealthCheckError {
            unreachable: false,
            reason: "HTTP 503 Service Unavailable".into(),
            ..e
        };
        assert!(!e.to_string().contains('\n'));
        assert!(e.to_string().contains("not healthy"));
    }

    #[test]
    fn target_builds_urls_from_base_with_or_without_slash() {
        for url in ["http://127.0.0.1:5009", "http://127.0.0.1:5009/"] {
            let config = Config {
                url: url.into(),
                ..Config::default()
            };
            let t = Target::new(&config).unwrap();
            assert_eq!(
                t.forecast_url.as_str(),
                "http://127.0.0.1:5009/WeatherForecast/city"
            );
            assert_eq!(t.health_url.as_str(), "http://127.0.0.1:5009/healthz");
            assert_eq!(t.bodies.len(), 15);
            assert_eq!(
                &t.bodies[0][..],
                br#"{"city":"New York","location":"Downtown"}"#
            );
        }
    }
}
