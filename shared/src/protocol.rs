//! The wire format between ingress and proxy: one request entry on the request stream, one
//! reply entry on the caller's reply stream. docs/protocol.md is the prose version of this
//! file; a client in another language needs nothing else.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Protocol version written into every request entry. Version 2 added the per-attempt reply
/// `token`. Readers refuse (dead-letter) a version they do not know, so a future version can be
/// rolled out safely: upgrade the proxies first, then the ingresses.
pub const PROTOCOL_VERSION: &str = "2";

/// Request entry versions this build reads. Version 1 entries (written by older ingresses)
/// are served and answered without a token.
pub const SUPPORTED_VERSIONS: &[&str] = &["1", "2"];

/// Field names of a request entry.
pub mod request_fields {
    pub const VERSION: &str = "v";
    pub const REQUEST_ID: &str = "id";
    pub const REPLY_TO: &str = "reply_to";
    pub const DEADLINE_MS: &str = "deadline_ms";
    pub const OPERATION: &str = "op";
    pub const PAYLOAD: &str = "payload";
    pub const TRACEPARENT: &str = "traceparent";
    /// The attempt's reply token (version 2): echoed in the reply, so a reply completes only
    /// the attempt that caused it, never a later request that reuses the id.
    pub const TOKEN: &str = "token";
    /// Operation `http` only: the HTTP method, e.g. `GET`.
    pub const METHOD: &str = "method";
    /// Operation `http` only: the path and query for the upstream, e.g. `/orders/7?full=1`.
    pub const PATH: &str = "path";
    /// Operation `http` only: the request headers as a header block (see [`super::encode_headers`]).
    pub const HEADERS: &str = "headers";
}

/// Field names of a reply entry.
pub mod reply_fields {
    pub const REQUEST_ID: &str = "id";
    pub const STATUS: &str = "status";
    pub const PAYLOAD: &str = "payload";
    pub const ERROR_CODE: &str = "error_code";
    pub const ERROR: &str = "error";
    pub const PROXY: &str = "proxy";
    /// The request's reply token, echoed (absent when the request had none: version 1).
    pub const TOKEN: &str = "token";
    /// Operation `http`, status `ok` only: the upstream's HTTP status code.
    pub const HTTP_STATUS: &str = "http_status";
    /// Operation `http`, status `ok` only: the upstream's response headers as a header block.
    pub const HEADERS: &str = "headers";
}

/// The operations the proxy knows. Carried as a string so unknown ones can be answered with a
/// clear error instead of being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /WeatherForecast/city`: a forecast for one city.
    CityForecast,
    /// `GET /WeatherForecast`: the five-day sample.
    SampleForecast,
    /// Any HTTP request under a forwarded route: method, path, headers and body go to the
    /// proxy's upstream and its response comes back unchanged.
    Http,
}

impl Operation {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CityForecast => "weather.city",
            Operation::SampleForecast => "weather.sample",
            Operation::Http => "http",
        }
    }

    /// Parses the wire name; `None` for an operation this build does not know.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "weather.city" => Some(Operation::CityForecast),
            "weather.sample" => Some(Operation::SampleForecast),
            "http" => Some(Operation::Http),
            _ => None,
        }
    }
}

/// A request as written to the request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEntry {
    /// Correlation id; the reply carries it back.
    pub request_id: String,
    /// Opaque token of this attempt, unique per call of an ingress process (version 2); the
    /// reply echoes it. `None` for a version 1 entry.
    pub token: Option<String>,
    /// Reply stream of the ingress instance waiting for the answer.
    pub reply_to: String,
    /// Absolute deadline, unix milliseconds. Past it nobody waits any more.
    pub deadline_ms: u64,
    /// Operation name, see [`Operation`].
    pub operation: String,
    /// Payload of the operation: JSON for the weather operations, the raw request body
    /// (any bytes) for `http`.
    pub payload: Bytes,
    /// W3C trace context of the HTTP request, when the caller sent one.
    pub traceparent: Option<String>,
    /// Method, path and headers of an `http` request; `None` for other operations.
    pub http: Option<HttpRequestHead>,
}

/// What an `http` request entry carries beside its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequestHead {
    /// The method, e.g. `POST`.
    pub method: String,
    /// Path and query for the upstream, starting with `/`.
    pub path: String,
    /// End-to-end headers, in order; a name may repeat. Values are bytes: HTTP allows
    /// non-UTF-8 (obs-text) values and they must arrive unchanged.
    pub headers: Vec<(String, Bytes)>,
}

/// What an `http` reply carries beside its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponseHead {
    /// The upstream's status code (100..=999).
    pub status: u16,
    /// The upstream's end-to-end headers, in order.
    pub headers: Vec<(String, Bytes)>,
}

/// Encodes headers as a header block: one `name: value\r\n` line per header, the HTTP/1.1
/// layout, so any language can split it. Values cannot contain CR or LF (HTTP forbids them),
/// so the block is unambiguous; names are lower-cased tokens.
pub fn encode_headers(headers: &[(String, Bytes)]) -> Bytes {
    let mut block = Vec::with_capacity(headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum());
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value);
        block.extend_from_slice(b"\r\n");
    }
    Bytes::from(block)
}

/// Decodes a header block written by [`encode_headers`] (or by a worker in another language):
/// every line `name: value` ended by CRLF, the name a non-empty HTTP token; one optional space
/// after the colon is dropped.
pub fn decode_headers(block: &[u8]) -> Result<Vec<(String, Bytes)>, String> {
    let mut headers = Vec::new();
    let mut rest = block;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a header line does not end with CRLF")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("a header line has no colon")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
            return Err(format!(
                "`{}` is not a header name",
                String::from_utf8_lossy(name)
            ));
        }
        let mut value = &line[colon + 1..];
        if value.first() == Some(&b' ') {
            value = &value[1..];
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err("a header value contains CR, LF or NUL".into());
        }
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            Bytes::copy_from_slice(value),
        ));
    }
    Ok(headers)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `host` and
/// `content-length`, which each side sets itself: never passed on in either direction of an
/// `http` request, by the ingress or the proxy. Names are lower-case.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    ) || name.starts_with("proxy-")
}

/// The header names listed in `Connection` values (hop-by-hop too), lower-cased.
pub fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The fields of a stream entry by name, values as bytes (names that are not UTF-8 are
/// dropped: the protocol has none).
pub type Fields = HashMap<String, Bytes>;

/// Takes field `name` as UTF-8 text.
fn take_text(fields: &mut Fields, name: &'static str) -> Result<String, DecodeError> {
    let value = fields.remove(name).ok_or(DecodeError::Missing(name))?;
    String::from_utf8(value.to_vec()).map_err(|_| DecodeError::Invalid(name, "not UTF-8".into()))
}

/// Takes optional field `name` as UTF-8 text.
fn take_optional_text(
    fields: &mut Fields,
    name: &'static str,
) -> Result<Option<String>, DecodeError> {
    match fields.contains_key(name) {
        true => take_text(fields, name).map(Some),
        false => Ok(None),
    }
}

/// Why a stream entry could not be read as a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` is not valid: {1}")]
    Invalid(&'static str, String),
    #[error("protocol version `{0}` is not supported (this build reads versions 1 and 2)")]
    UnsupportedVersion(String),
}

impl DecodeError {
    /// Dead-letter reason for an entry that failed to decode.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            _ => "unreadable",
        }
    }
}

/// The served counter of a request stream: how many of its requests the proxies processed
/// and acknowledged (written by `shared/lua/reply_and_ack.lua`). Sampled over time while there
/// is a backlog it gives the proxies' real throughput, which admission control needs; the
/// group's `entries-read` would also count entries skipped because their deadline had passed.
pub fn served_counter(request_stream: &str) -> String {
    format!("{request_stream}:served")
}

/// A random 16-hex-digit prefix for the reply tokens of one process: drawn at start, so a
/// process restarted under the same instance id never issues a token its predecessor issued.
pub fn token_prefix() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    random[..16].to_string()
}

/// The request stream of a queue: `<queue>-requests` (the weather demo's queue `weather`
/// gives the seed's `weather-requests`).
pub fn queue_stream(queue: &str) -> String {
    format!("{queue}-requests")
}

/// The queue name rule: 1-64 characters of `[A-Za-z0-9._-]`, so the stream name is a tidy
/// Redis key and the queue a bounded metric label.
pub fn validate_queue_name(queue: &str) -> Result<(), String> {
    if queue.is_empty()
        || queue.len() > 64
        || !queue
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "`{queue}` is not a queue name: use 1 to 64 characters of letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// Longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id rule, shared by the ingress (for `X-Request-Id`) and the proxy (for entries
/// written by other clients): 1..=128 characters of `[A-Za-z0-9._:-]`, so an id is safe as a
/// Redis field, in logs and in an HTTP header.
pub fn validate_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
        return Err(format!(
            "a request id must be 1 to {MAX_REQUEST_ID_LEN} characters"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err("a request id may contain only letters, digits and . _ : -".into());
    }
    Ok(())
}

impl RequestEntry {
    /// The field/value pairs for XADD, in a stable order.
    pub fn to_fields(&self) -> Vec<(&'static str, Bytes)> {
        use request_fields::*;
        let version = if self.token.is_some() {
            PROTOCOL_VERSION
        } else {
            "1"
        };
        let text = |value: &str| Bytes::copy_from_slice(value.as_bytes());
        let mut fields = vec![
            (VERSION, Bytes::from_static(version.as_bytes())),
            (REQUEST_ID, text(&self.request_id)),
            (REPLY_TO, text(&self.reply_to)),
            (DEADLINE_MS, Bytes::from(self.deadline_ms.to_string())),
            (OPERATION, text(&self.operation)),
            (PAYLOAD, self.payload.clone()),
        ];
        if let Some(token) = &self.token {
            fields.push((TOKEN, text(token)));
        }
        if let Some(traceparent) = &self.traceparent {
            fields.push((TRACEPARENT, text(traceparent)));
        }
        if let Some(http) = &self.http {
            fields.push((METHOD, text(&http.method)));
            fields.push((PATH, text(&http.path)));
            fields.push((HEADERS, encode_headers(&http.headers)));
        }
        fields
    }

    /// Reads a request from the fields of a stream entry: checks the version first, then the
    /// fields that version requires, and the request id rule.
    pub fn from_fields(mut fields: Fields) -> Result<Self, DecodeError> {
        use request_fields::*;
        let version = fields
            .remove(VERSION)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let request_id = take_text(&mut fields, REQUEST_ID)?;
        validate_request_id(&request_id).map_err(|why| DecodeError::Invalid(REQUEST_ID, why))?;
        let token = if version == "1" {
            None
        } else {
            Some(take_text(&mut fields, TOKEN)?)
        };
        let reply_to = take_text(&mut fields, REPLY_TO)?;
        let deadline_ms = take_text(&mut fields, DEADLINE_MS)?
            .parse::<u64>()
            .map_err(|e| DecodeError::Invalid(DEADLINE_MS, e.to_string()))?;
        let operation = take_text(&mut fields, OPERATION)?;
        let payload = fields
            .remove(PAYLOAD)
            .ok_or(DecodeError::Missing(PAYLOAD))?;
        let traceparent = take_optional_text(&mut fields, TRACEPARENT)?;
        let http = if operation == Operation::Http.as_str() {
            let method = take_text(&mut fields, METHOD)?;
            if method.is_empty() || !method.bytes().all(is_token_byte) {
                return Err(DecodeError::Invalid(
                    METHOD,
                    format!("`{method}` is not an HTTP method"),
                ));
            }
            let path = take_text(&mut fields, PATH)?;
            if !path.starts_with('/') {
                return Err(DecodeError::Invalid(PATH, "must start with `/`".into()));
            }
            let block = fields.remove(HEADERS).unwrap_or_default();
            let headers =
                decode_headers(&block).map_err(|why| DecodeError::Invalid(HEADERS, why))?;
            Some(HttpRequestHead {
                method,
                path,
                headers,
            })
        } else {
            None
        };
        Ok(RequestEntry {
            request_id,
            token,
            reply_to,
            deadline_ms,
            operation,
            payload,
            traceparent,
            http,
        })
    }

    /// Time left until the deadline; zero when it has passed.
    pub fn time_left(&self, now: SystemTime) -> Duration {
        Duration::from_millis(self.deadline_ms.saturating_sub(unix_ms(now)))
    }
}

/// Outcome carried by a reply entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyStatus {
    /// The payload is the operation's JSON result.
    Ok,
    /// The proxy could not process the request; `code` is machine-readable, `message` for humans.
    Error { code: String, message: String },
}

/// A reply as written to a reply stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyEntry {
    /// The request's correlation id.
    pub request_id: String,
    /// The request's reply token, echoed; `None` for a version 1 request.
    pub token: Option<String>,
    /// Success or failure.
    pub status: ReplyStatus,
    /// The result on success (JSON for the weather operations, the upstream's body for
    /// `http`), empty on error.
    pub payload: Bytes,
    /// Consumer name of the proxy that answered, for tracing a reply back.
    pub proxy: String,
    /// Status and headers of an `http` reply with status `ok`; `None` otherwise.
    pub http: Option<HttpResponseHead>,
}

impl ReplyEntry {
    /// The field/value pairs for XADD.
    pub fn to_fields(&self) -> Vec<(&'static str, Bytes)> {
        use reply_fields::*;
        let text = |value: &str| Bytes::copy_from_slice(value.as_bytes());
        let mut fields = vec![(REQUEST_ID, text(&self.request_id))];
        if let Some(token) = &self.token {
            fields.push((TOKEN, text(token)));
        }
        match &self.status {
            ReplyStatus::Ok => {
                fields.push((STATUS, Bytes::from_static(b"ok")));
                fields.push((PAYLOAD, self.payload.clone()));
                if let Some(http) = &self.http {
                    fields.push((HTTP_STATUS, Bytes::from(http.status.to_string())));
                    fields.push((HEADERS, encode_headers(&http.headers)));
                }
            }
            ReplyStatus::Error { code, message } => {
                fields.push((STATUS, Bytes::from_static(b"error")));
                fields.push((ERROR_CODE, text(code)));
                fields.push((ERROR, text(message)));
            }
        }
        fields.push((PROXY, text(&self.proxy)));
        fields
    }

    /// Reads a reply from the fields of a stream entry.
    pub fn from_fields(mut fields: Fields) -> Result<Self, DecodeError> {
        use reply_fields::*;
        let request_id = take_text(&mut fields, REQUEST_ID)?;
        let token = take_optional_text(&mut fields, TOKEN)?;
        let status = match take_text(&mut fields, STATUS)?.as_str() {
            "ok" => ReplyStatus::Ok,
            "error" => ReplyStatus::Error {
                code: take_optional_text(&mut fields, ERROR_CODE)?
                    .unwrap_or_else(|| "unknown".into()),
                message: take_optional_text(&mut fields, ERROR)?.unwrap_or_default(),
            },
            other => return Err(DecodeError::Invalid(STATUS, other.to_string())),
        };
        let http = match take_optional_text(&mut fields, HTTP_STATUS)? {
            Some(code) => {
                let status = code
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .ok_or_else(|| {
                        DecodeError::Invalid(HTTP_STATUS, format!("`{code}` is not an HTTP status"))
                    })?;
                let block = fields.remove(HEADERS).unwrap_or_default();
                let headers =
                    decode_headers(&block).map_err(|why| DecodeError::Invalid(HEADERS, why))?;
                Some(HttpResponseHead { status, headers })
            }
            None => None,
        };
        Ok(ReplyEntry {
            request_id,
            token,
            status,
            payload: fields.remove(PAYLOAD).unwrap_or_default(),
            proxy: take_optional_text(&mut fields, PROXY)?.unwrap_or_default(),
            http,
        })
    }
}

/// Milliseconds since the unix epoch (0 for a clock before 1970).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_map(fields: Vec<(&'static str, Bytes)>) -> Fields {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn text_map(fields: Vec<(&'static str, &str)>) -> Fields {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }

    #[test]
    fn request_round_trips_through_fields() {
        let request = RequestEntry {
            request_id: "abc".into(),
            token: Some("5f3a9c1e2b7d4a60-1f".into()),
            reply_to: "weather-responses:i1".into(),
            deadline_ms: 1_700_000_000_000,
            operation: Operation::CityForecast.as_str().into(),
            payload: r#"{"city":"Paris"}"#.into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            http: None,
        };
        assert_eq!(
            RequestEntry::from_fields(to_map(request.to_fields())),
            Ok(request)
        );
    }

    #[test]
    fn request_without_deadline_is_rejected_with_the_field_name() {
        let mut fields = text_map(vec![("v", "1"), ("id", "x"), ("reply_to", "r")]);
        fields.insert("deadline_ms".into(), Bytes::from_static(b"soon"));
        let err = RequestEntry::from_fields(fields).unwrap_err();
        assert!(
            matches!(err, DecodeError::Invalid("deadline_ms", _)),
            "{err}"
        );
    }

    #[test]
    fn error_reply_round_trips() {
        let reply = ReplyEntry {
            request_id: "abc".into(),
            token: Some("t-1".into()),
            status: ReplyStatus::Error {
                code: "invalid_request".into(),
                message: "city is required".into(),
            },
            payload: Bytes::new(),
            proxy: "p1".into(),
            http: None,
        };
        assert_eq!(
            ReplyEntry::from_fields(to_map(reply.to_fields())),
            Ok(reply)
        );
    }

    #[test]
    fn deadline_in_the_past_leaves_no_time() {
        let request = RequestEntry {
            request_id: "a".into(),
            token: None,
            reply_to: "r".into(),
            deadline_ms: 1_000,
            operation: "weather.city".into(),
            payload: Bytes::from_static(b"{}"),
            traceparent: None,
            http: None,
        };
        assert_eq!(request.time_left(SystemTime::now()), Duration::ZERO);
    }

    fn v1_request() -> Fields {
        text_map(vec![
            ("v", "1"),
            ("id", "old-1"),
            ("reply_to", "r"),
            ("deadline_ms", "1700000000000"),
            ("op", "weather.sample"),
            ("payload", "{}"),
        ])
    }

    #[test]
    fn version_1_entries_are_still_read_without_a_token() {
        let request = RequestEntry::from_fields(v1_request());
        assert!(request.is_ok_and(|r| r.token.is_none()));
    }

    #[test]
    fn unknown_missing_or_empty_versions_are_refused() {
        for version in [Some("3"), Some(""), None] {
            let mut fields = v1_request();
            match version {
                Some(v) => fields.insert("v".into(), Bytes::copy_from_slice(v.as_bytes())),
                None => fields.remove("v"),
            };
            let err = RequestEntry::from_fields(fields).unwrap_err();
            assert_eq!(err.reason(), "unsupported_version", "{version:?}: {err}");
        }
    }

    #[test]
    fn version_2_requires_a_token() {
        let mut fields = v1_request();
        fields.insert("v".into(), Bytes::from_static(b"2"));
        assert_eq!(
            RequestEntry::from_fields(fields),
            Err(DecodeError::Missing("token"))
        );
    }

    #[test]
    fn ids_the_ingress_would_refuse_are_refused() {
        for id in ["has space", &"a".repeat(200), ""] {
            let mut fields = v1_request();
            fields.insert("id".into(), Bytes::copy_from_slice(id.as_bytes()));
            let err = RequestEntry::from_fields(fields).unwrap_err();
            assert!(matches!(err, DecodeError::Invalid("id", _)), "{id}: {err}");
        }
    }

    fn http_request() -> RequestEntry {
        RequestEntry {
            request_id: "h-1".into(),
            token: Some("t-1".into()),
            reply_to: "r".into(),
            deadline_ms: 1_700_000_000_000,
            operation: Operation::Http.as_str().into(),
            payload: Bytes::from_static(&[0, 159, 146, 150, 255, b'\r', b'\n']),
            traceparent: None,
            http: Some(HttpRequestHead {
                method: "PATCH".into(),
                path: "/orders/7?x=1&y=%C3%A9".into(),
                headers: vec![
                    ("accept".into(), Bytes::from_static(b"a/b")),
                    ("x-multi".into(), Bytes::from_static(b"one")),
                    ("x-multi".into(), Bytes::from_static(b"two")),
                    ("x-latin".into(), Bytes::from_static(&[b'c', 0xe9])),
                    ("x-empty".into(), Bytes::new()),
                ],
            }),
        }
    }

    #[test]
    fn http_requests_round_trip_with_binary_bodies_and_repeated_headers() {
        let request = http_request();
        assert_eq!(
            RequestEntry::from_fields(to_map(request.to_fields())),
            Ok(request)
        );
    }

    #[test]
    fn http_replies_round_trip_with_status_and_headers() {
        let reply = ReplyEntry {
            request_id: "h-1".into(),
            token: Some("t-1".into()),
            status: ReplyStatus::Ok,
            payload: Bytes::from_static(&[1, 2, 3, 0]),
            proxy: "p".into(),
            http: Some(HttpResponseHead {
                status: 404,
                headers: vec![("set-cookie".into(), Bytes::from_static(b"a=1"))],
            }),
        };
        assert_eq!(
            ReplyEntry::from_fields(to_map(reply.to_fields())),
            Ok(reply)
        );
    }

    #[test]
    fn malformed_http_heads_are_refused_with_the_field_name() {
        for (field, value) in [
            ("method", "GE T"),
            ("path", "orders"),
            ("headers", "no-colon\r\n"),
            ("headers", "bad name: x\r\n"),
            ("headers", "a: b"),
        ] {
            let mut fields = to_map(http_request().to_fields());
            fields.insert(field.into(), Bytes::copy_from_slice(value.as_bytes()));
            let err = RequestEntry::from_fields(fields).unwrap_err();
            assert!(
                matches!(err, DecodeError::Invalid(f, _) if f == field),
                "{field}={value:?}: {err}"
            );
        }
    }
}
