//! Configuration pieces used by both services.
//!
//! Every setting is a clap flag backed by an environment variable (operators script against
//! the variable names). Values are validated while parsing so that a bad setting stops the
//! process with one line naming it, before anything starts.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::secrets::{Secret, read_secret_file, redact_url};
use crate::tls::{self, CaCertificates, CertificateChain, PrivateKey};

/// Where Redis is, how to log in and talk TLS to it, and which stream/group carries the requests.
///
/// Files named here (CA, client certificate and key, password) are read and checked while the
/// settings are parsed: a missing or unreadable file stops the service at start with one line
/// naming the setting. `Debug` never prints the password (see [`crate::secrets`]).
#[derive(Clone, Args)]
pub struct RedisSettings {
    /// Redis URL: redis://host:port, rediss:// for TLS, redis://user@host:port for an ACL user
    /// (password from REDIS_PASSWORD_FILE), or redis://user:password@host:port.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// File holding the Redis password (one line). Used with the user named in REDIS_URL, or
    /// the default user when REDIS_URL names none. Keeps the password out of the environment.
    #[arg(long, env = "REDIS_PASSWORD_FILE", value_parser = PasswordFile::load)]
    pub redis_password_file: Option<PasswordFile>,

    /// PEM file of the CA(s) that signed the Redis server's certificate (rediss:// only).
    /// Replaces the system trust store for Redis connections.
    #[arg(long, env = "REDIS_TLS_CA_FILE", value_parser = CaCertificates::load)]
    pub redis_tls_ca_file: Option<CaCertificates>,

    /// PEM client certificate (chain) for servers that require one (`tls-auth-clients yes`).
    /// Needs REDIS_TLS_KEY_FILE.
    #[arg(long, env = "REDIS_TLS_CERT_FILE", value_parser = CertificateChain::load)]
    pub redis_tls_cert_file: Option<CertificateChain>,

    /// PEM private key of REDIS_TLS_CERT_FILE.
    #[arg(long, env = "REDIS_TLS_KEY_FILE", value_parser = PrivateKey::load)]
    pub redis_tls_key_file: Option<PrivateKey>,

    /// Stream the ingress writes requests to and the proxies read from.
    #[arg(long, env = "REQUEST_STREAM", default_value = "weather-requests", value_parser = parse_key)]
    pub request_stream: String,

    /// Consumer group the proxies read the request stream through.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "processing-group", value_parser = parse_key)]
    pub consumer_group: String,

    /// Longest wait for Redis's answer to one command. A healthy Redis answers in well under a
    /// millisecond; past this a command counts as failed for the circuit breaker (and a
    /// request write as unconfirmed).
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub redis_command_timeout: Duration,
}

impl RedisSettings {
    /// The fred client configuration these settings describe: the URL, the password from
    /// REDIS_PASSWORD_FILE, and the TLS configuration from the CA/certificate/key files.
    ///
    /// Called once while parsing (so conflicts stop the service at start) and again for each
    /// client. Errors name the setting to fix and never contain the password.
    pub fn client_config(&self) -> Result<fred::prelude::Config, String> {
        let tls_scheme = uses_tls(&self.redis_url);
        let mut config = parse_redis_url(&self.redis_url)?;
        if let Some(file) = &self.redis_password_file {
            if config.password.is_some() {
                return Err(format!(
                    "REDIS_PASSWORD_FILE is set but REDIS_URL ({}) has a password too; remove the password from REDIS_URL",
                    redact_url(&self.redis_url)
                ));
            }
            config.password = Some(file.secret.expose().to_string());
        }
        let identity = match (&self.redis_tls_cert_file, &self.redis_tls_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("REDIS_TLS_CERT_FILE is set but REDIS_TLS_KEY_FILE is not; set both for a client certificate".into());
            }
            (None, Some(_)) => {
                return Err("REDIS_TLS_KEY_FILE is set but REDIS_TLS_CERT_FILE is not; set both for a client certificate".into());
            }
        };
        if !tls_scheme {
            if let Some(setting) = [
                self.redis_tls_ca_file.as_ref().map(|_| "REDIS_TLS_CA_FILE"),
                identity.map(|_| "REDIS_TLS_CERT_FILE"),
            ]
            .into_iter()
            .flatten()
            .next()
            {
                return Err(format!(
                    "{setting} is set but REDIS_URL ({}) does not use TLS; use rediss:// to turn TLS on",
                    redact_url(&self.redis_url)
                ));
            }
            return Ok(config);
        }
        let rustls_config = tls::client_config(self.redis_tls_ca_file.as_ref(), identity)?;
        config.tls = Some(fred::types::config::TlsConfig {
            connector: fred::types::config::TlsConnector::from(rustls_config),
            hostnames: fred::types::config::TlsHostMapping::None,
        });
        Ok(config)
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_password_file", &self.redis_password_file)
            .field("redis_tls_ca_file", &self.redis_tls_ca_file)
            .field("redis_tls_cert_file", &self.redis_tls_cert_file)
            .field("redis_tls_key_file", &self.redis_tls_key_file)
            .field("request_stream", &self.request_stream)
            .field("consumer_group", &self.consumer_group)
            .finish()
    }
}

/// The Redis password read from REDIS_PASSWORD_FILE. `Debug` shows only the path.
#[derive(Clone)]
pub struct PasswordFile {
    path: PathBuf,
    secret: Secret,
}

impl PasswordFile {
    /// Reads the password file at `path` (a clap value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let path = PathBuf::from(path);
        let secret = read_secret_file(&path)?;
        Ok(PasswordFile { path, secret })
    }
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordFile({})", self.path.display())
    }
}

/// Whether the URL's scheme asks for TLS (`rediss`, `valkeys`, and their `-cluster` and
/// `-sentinel` forms), the same test fred applies.
fn uses_tls(url: &str) -> bool {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme)
        .unwrap_or("");
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// The URL with `rediss`/`valkeys` turned into `redis`/`valkey` (the rest unchanged).
fn plain_twin(url: &str) -> String {
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let Some(rest) = url.strip_prefix(tls) {
            return format!("{plain}{rest}");
        }
    }
    url.to_string()
}

/// Thresholds of the circuit breaker around Redis.
#[derive(Debug, Clone, Args)]
pub struct BreakerArgs {
    /// Consecutive failed Redis calls that open the circuit (calls then fail at once with 503).
    #[arg(long, env = "BREAKER_FAILURE_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failure_threshold: u32,

    /// How long the circuit stays open before one probe call is let through. A reconnect
    /// closes it at once.
    #[arg(long, env = "BREAKER_OPEN_DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub breaker_open_duration: Duration,
}

impl BreakerArgs {
    /// The settings for [`crate::resilience::CircuitBreaker`].
    pub fn settings(&self) -> crate::resilience::BreakerSettings {
        crate::resilience::BreakerSettings {
            failure_threshold: self.breaker_failure_threshold,
            open_duration: self.breaker_open_duration,
        }
    }
}

/// Limits of the HTTP server against slow, silent and too many clients (see
/// [`crate::server`]): without them a few hundred such clients hold every file descriptor.
#[derive(Debug, Clone, Args)]
pub struct HttpServerArgs {
    /// Longest a client may take to send a request's headers, counted from connecting (or from
    /// the first byte of a later request on a kept-alive connection); then it is disconnected.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub http_header_read_timeout: Duration,

    /// Longest a client may take to send a request body after its headers; then it gets 408
    /// and is disconnected.
    #[arg(long, env = "HTTP_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub http_body_read_timeout: Duration,

    /// How long a kept-alive connection may sit idle between requests (or leave a response
    /// untaken) before it is closed. Keep it above the idle timeout of a load balancer in front.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub http_idle_timeout: Duration,

    /// Client connections open at once; further ones wait in the listen backlog until one
    /// closes. Keep it well below the open-files limit (`ulimit -n`).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

impl HttpServerArgs {
    /// The settings for [`crate::server::serve`].
    pub fn settings(&self) -> crate::server::ServerSettings {
        crate::server::ServerSettings {
            header_read_timeout: self.http_header_read_timeout,
            body_read_timeout: self.http_body_read_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.max_connections as usize,
        }
    }
}

/// How the service writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A default name for this process, unique among running ones: `<hostname>-<pid>-<random>`.
/// In Kubernetes the hostname is the pod name, which makes the name easy to trace back.
pub fn unique_process_name(fallback_host: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback_host.to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// Parses a duration such as `30s`, `250ms` or `2m`; a bare number means seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("expected a duration like 30s, 500ms or 2m ({e})"))
}

/// Like [`parse_duration`] but rejects zero, for timeouts that must allow some time.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(duration)
}

/// Checks that the URL is one fred can connect with, so a typo fails at start-up, not later.
/// The message shows the URL without its password.
///
/// A TLS URL is parsed as its plain twin: fred would otherwise load the system trust store (and
/// fail where there is none) for a TLS configuration that [`RedisSettings::client_config`]
/// replaces anyway.
pub(crate) fn parse_redis_url(value: &str) -> Result<fred::prelude::Config, String> {
    fred::prelude::Config::from_url(&plain_twin(value)).map_err(|e| {
        format!(
            "REDIS_URL ({}) is not a Redis URL ({}); expected redis://[user[:password]@]host:port or rediss://…",
            redact_url(value),
            e.details()
        )
    })
}

/// Stream and group names: non-empty, printable, no spaces (they are used as Redis keys).
fn parse_key(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(value.to_string())
}

/// Checks that involve more than one setting or a file's contents together (clap checks each
/// setting alone). The message names the setting to fix.
pub trait CheckSettings {
    /// `Err(one line naming the setting)` when the settings cannot work together.
    fn check_settings(&self) -> Result<(), String>;
}

impl CheckSettings for RedisSettings {
    fn check_settings(&self) -> Result<(), String> {
        self.client_config().map(|_| ())
    }
}

/// Parses argv/env into `T` and runs its [`CheckSettings`], printing a one-line error naming
/// the setting and exiting with status 2 on bad configuration (help and version still print
/// normally).
pub fn parse_or_exit<T: clap::Parser + CheckSettings>(service: &str) -> T {
    let config = match T::try_parse() {
        Ok(config) => config,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                err.exit();
            }
            let rendered = err.to_string();
            let first_line = rendered
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("invalid configuration")
                .trim_start_matches("error: ");
            exit_invalid(service, first_line);
        }
    };
    if let Err(message) = config.check_settings() {
        exit_invalid(service, &message);
    }
    config
}

fn exit_invalid(service: &str, message: &str) -> ! {
    let one_line = message.replace(['\n', '\r'], " ");
    eprintln!("{service}: invalid configuration: {one_line}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn redis_urls_are_checked() {
        assert!(parse_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(parse_redis_url("redis://user:secret@redis:6380/0").is_ok());
        assert!(parse_redis_url("rediss://user@redis:6380/0").is_ok());
        assert!(parse_redis_url("not a url").is_err());
        let err = parse_redis_url("redis://user:s3cret@redis:port").unwrap_err();
        assert!(
            err.contains("REDIS_URL") && !err.contains("s3cret"),
            "{err}"
        );
    }

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            redis_url: url.into(),
            redis_password_file: None,
            redis_tls_ca_file: None,
            redis_tls_cert_file: None,
            redis_tls_key_file: None,
            request_stream: "s".into(),
            consumer_group: "g".into(),
            redis_command_timeout: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn tls_schemes_are_recognised_and_parsed_as_their_plain_twins() {
        assert!(uses_tls("rediss://h:1") && uses_tls("rediss-sentinel://h:1"));
        assert!(uses_tls("valkeys://h:1") && !uses_tls("redis://h:1"));
        assert_eq!(plain_twin("rediss-cluster://h:1"), "redis-cluster://h:1");
        assert_eq!(plain_twin("valkeys://h:1"), "valkey://h:1");
        assert_eq!(plain_twin("redis://h:1"), "redis://h:1");
        let config = settings("rediss://127.0.0.1:6380").client_config();
        assert!(config.is_ok_and(|c| c.tls.is_some()));
        let config = settings("redis://127.0.0.1:6380").client_config();
        assert!(config.is_ok_and(|c| c.tls.is_none()));
    }

    #[test]
    fn a_password_file_fills_in_the_password_and_refuses_a_second_one() {
        let dir = tempfile::tempdir().expect("temp dir"); // invariant: test code; a failure here is the test failing
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write"); // invariant: test code; a failure here is the test failing
        let file = PasswordFile::load(path.to_str().expect("utf-8 path")).expect("load"); // invariant: test code; a failure here is the test failing
        let mut with_user = settings("redis://ingress@redis:6379");
        with_user.redis_password_file = Some(file.clone());
        let config = with_user.client_config().expect("config"); // invariant: test code; a failure here is the test failing
        assert_eq!(config.username.as_deref(), Some("ingress"));
        assert_eq!(config.password.as_deref(), Some("s3cret"));
        assert!(!format!("{with_user:?}").contains("s3cret"));

        let mut twice = settings("redis://ingress:other@redis:6379");
        twice.redis_password_file = Some(file);
        let err = twice.client_config().unwrap_err();
        assert!(err.starts_with("REDIS_PASSWORD_FILE"), "{err}");
        assert!(!err.contains("other") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn the_debug_form_hides_the_url_password() {
        let shown = format!("{:?}", settings("redis://u:s3cret@redis:6379"));
        assert!(
            !shown.contains("s3cret") && shown.contains("redis:6379"),
            "{shown}"
        );
    }

    #[derive(clap::Parser)]
    struct HttpOnly {
        #[command(flatten)]
        http: HttpServerArgs,
    }

    #[test]
    fn http_server_defaults_match_the_server_defaults() {
        use clap::Parser;
        let parsed = HttpOnly::try_parse_from(["test"]).expect("defaults parse"); // invariant: test code; a failure here is the test failing
        assert_eq!(
            parsed.http.settings(),
            crate::server::ServerSettings::default()
        );
        assert!(HttpOnly::try_parse_from(["test", "--max-connections", "0"]).is_err());
        assert!(HttpOnly::try_parse_from(["test", "--http-idle-timeout", "0s"]).is_err());
    }

    #[test]
    fn keys_reject_blank_and_spaces() {
        assert!(parse_key("weather-requests").is_ok());
        assert!(parse_key("").is_err());
        assert!(parse_key("a b").is_err());
    }
}
