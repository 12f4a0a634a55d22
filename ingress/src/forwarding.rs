//! Forwarded routes: which path prefixes go, as any HTTP request, to which queue (`ROUTES`,
//! `ROUTES_FILE`). Each queue is its own request stream `<queue>-requests` and consumer group,
//! served by proxies started with `QUEUE=<queue>` and `UPSTREAM_URL`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use axum::http::Method;
use serde::Deserialize;

/// Paths the ingress serves itself; a forwarded prefix may neither equal, contain nor sit
/// under one of them, so a route can never hide the API, probes, metrics or Swagger.
const BUILT_IN: &[&str] = &[
    "/WeatherForecast",
    "/health",
    "/healthz",
    "/metrics",
    "/swagger",
    "/api-docs",
];

/// Longest route timeout accepted: a request's deadline must stay a sane instant.
const MAX_ROUTE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Default request body limit of a forwarded route.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// One forwarded route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Path prefix, matched by whole segments: `/api` takes `/api` and `/api/x`, never `/api-docs`.
    pub prefix: String,
    /// Queue name; requests go to the stream `<queue>-requests`.
    pub queue: String,
    /// Longest a request on this route waits (default: REQUEST_TIMEOUT); `Request-Timeout`
    /// may ask for less.
    pub timeout: Option<Duration>,
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Methods accepted (405 for others); `None`: any.
    pub methods: Option<Vec<Method>>,
    /// Whether the upstream gets the path without the prefix (`/api/orders` → `/orders`).
    pub strip_prefix: bool,
    /// Entries this queue's stream may hold before new requests get 503 (default:
    /// MAX_BACKLOG). With large bodies, Redis holds up to this many of them: size it with
    /// Redis's memory in mind.
    pub max_backlog: Option<u64>,
}

impl RouteConfig {
    /// The request stream of this route's queue.
    pub fn stream(&self) -> String {
        shared::protocol::queue_stream(&self.queue)
    }

    /// The path the upstream gets for `path` (which this route matched).
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix {
            return path.into();
        }
        match &path[self.prefix.len()..] {
            "" => "/".into(),
            rest => rest.into(),
        }
    }
}

/// What a routes file holds: `[[route]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    route: Vec<FileRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    queue: String,
    timeout: Option<String>,
    max_body_bytes: Option<usize>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    strip_prefix: bool,
    max_backlog: Option<u64>,
}

/// Parses `ROUTES`: comma-separated `PREFIX=QUEUE` pairs, e.g. `/api=orders,/reports=reports`.
pub fn parse_routes_env(value: &str) -> Result<Vec<RouteConfig>, String> {
    let mut routes = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((prefix, queue)) = pair.split_once('=') else {
            return Err(format!(
                "ROUTES: `{pair}` is not PREFIX=QUEUE; write e.g. `/api=orders,/reports=reports`"
            ));
        };
        routes.push(RouteConfig {
            prefix: prefix.trim().to_string(),
            queue: queue.trim().to_string(),
            timeout: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            methods: None,
            strip_prefix: false,
            max_backlog: None,
        });
    }
    Ok(routes)
}

/// Reads a routes file (TOML, see docs/forwarding.md).
pub fn read_routes_file(path: &Path) -> Result<Vec<RouteConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("ROUTES_FILE {}: cannot read it: {e}", path.display()))?;
    let file: RoutesFile =
        toml::from_str(&text).map_err(|e| format!("ROUTES_FILE {}: {e}", path.display()))?;
    file.route
        .into_iter()
        .map(|route| {
            let timeout = route
                .timeout
                .map(|t| {
                    humantime::parse_duration(&t)
                        .ok()
                        .filter(|d| !d.is_zero() && *d <= MAX_ROUTE_TIMEOUT)
                        .ok_or_else(|| {
                            format!(
                                "ROUTES_FILE {}: route {}: timeout `{t}` is not a duration like `10s` of at most 1 day",
                                path.display(),
                                route.prefix
                            )
                        })
                })
                .transpose()?;
            let methods = route
                .methods
                .map(|names| {
                    names
                        .iter()
                        .map(|name| {
                            Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                                format!(
                                    "ROUTES_FILE {}: route {}: `{name}` is not an HTTP method",
                                    path.display(),
                                    route.prefix
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            Ok(RouteConfig {
                prefix: route.prefix,
                queue: route.queue,
                timeout,
                max_body_bytes: route.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
                methods,
                strip_prefix: route.strip_prefix,
                max_backlog: route.max_backlog,
            })
        })
        .collect()
}

/// Checks a set of routes: prefixes well-formed, unique and clear of the built-in paths,
/// queue names valid.
pub fn validate(routes: &[RouteConfig]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for route in routes {
        let prefix = route.prefix.as_str();
        if !prefix.starts_with('/')
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.contains("//")
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
            || prefix
                .split('/')
                .any(|segment| segment == "." || segment == "..")
        {
            return Err(format!(
                "route prefix `{prefix}` is not valid: write a path like `/api` or `/v1/orders` (letters, digits, - _ . ~; no trailing `/`)"
            ));
        }
        if !seen.insert(prefix) {
            return Err(format!("route prefix `{prefix}` is configured twice"));
        }
        for built_in in BUILT_IN {
            if segment_prefix(prefix, built_in) || segment_prefix(built_in, prefix) {
                return Err(format!(
                    "route prefix `{prefix}` overlaps the ingress's own `{built_in}`; choose another prefix"
                ));
            }
        }
        shared::protocol::validate_queue_name(&route.queue)
            .map_err(|why| format!("route `{prefix}`: {why}"))?;
        if route.max_backlog == Some(0) {
            return Err(format!("route `{prefix}`: max_backlog must be at least 1"));
        }
        if route.max_body_bytes == 0 {
            return Err(format!(
                "route `{prefix}`: max_body_bytes must be at least 1"
            ));
        }
    }
    Ok(())
}

/// Whether `path` is `prefix` or under it by whole segments.
pub fn segment_prefix(prefix: &str, path: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_env_is_parsed_and_checked() {
        let routes = parse_routes_env("/api=orders, /reports=reports").unwrap_or_default();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].stream(), "orders-requests");
        assert!(validate(&routes).is_ok());
        assert!(parse_routes_env("/api").is_err());
        for bad in [
            "/=x",
            "api=x",
            "/api/=x",
            "/a//b=x",
            "/api=bad queue",
            "/metrics=x",
            "/health/x=x",
            "/api=a,/api=b",
            "/a/../b=x",
            "/WeatherForecast=x",
        ] {
            let routes = parse_routes_env(bad).unwrap_or_default();
            assert!(routes.is_empty() || validate(&routes).is_err(), "{bad}");
        }
        assert!(
            validate(&parse_routes_env("/api-v2=x,/healthcheck=y").unwrap_or_default()).is_ok()
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(segment_prefix("/api", "/api"));
        assert!(segment_prefix("/api", "/api/x"));
        assert!(!segment_prefix("/api", "/api-docs"));
        assert!(!segment_prefix("/api", "/ap"));
    }

    #[test]
    fn stripping_keeps_a_leading_slash() {
        let mut route = parse_routes_env("/api=x").unwrap_or_default().remove(0);
        assert_eq!(route.upstream_path("/api/a"), "/api/a");
        route.strip_prefix = true;
        assert_eq!(route.upstream_path("/api/a"), "/a");
        assert_eq!(route.upstream_path("/api"), "/");
    }

    #[test]
    fn routes_files_are_read_with_their_settings() {
        let dir = std::env::temp_dir().join(format!("routes-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("routes.toml");
        let _ = std::fs::write(
            &path,
            "[[route]]\nprefix = \"/api\"\nqueue = \"orders\"\ntimeout = \"5s\"\nmax_body_bytes = 10\nmethods = [\"get\", \"POST\"]\nstrip_prefix = true\nmax_backlog = 50\n",
        );
        let routes = read_routes_file(&path).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].timeout, Some(Duration::from_secs(5)));
        assert_eq!(routes[0].methods, Some(vec![Method::GET, Method::POST]));
        assert!(routes[0].strip_prefix);
        assert_eq!(routes[0].max_backlog, Some(50));
    }
}
