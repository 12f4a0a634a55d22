//! The wire format between ingress and proxy: one request entry on the request stream, one
//! reply entry on the caller's reply stream. docs/protocol.md is the prose version of this
//! file; a client in another language needs nothing else.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

/// The operations the proxy knows. Carried as a string so unknown ones can be answered with a
/// clear error instead of being dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /WeatherForecast/city`: a forecast for one city.
    CityForecast,
    /// `GET /WeatherForecast`: the five-day sample.
    SampleForecast,
}

impl Operation {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CityForecast => "weather.city",
            Operation::SampleForecast => "weather.sample",
        }
    }

    /// Parses the wire name; `None` for an operation this build does not know.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "weather.city" => Some(Operation::CityForecast),
            "weather.sample" => Some(Operation::SampleForecast),
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
    /// JSON payload of the operation.
    pub payload: String,
    /// W3C trace context of the HTTP request, when the caller sent one.
    pub traceparent: Option<String>,
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
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        use request_fields::*;
        let version = if self.token.is_some() {
            PROTOCOL_VERSION
        } else {
            "1"
        };
        let mut fields = vec![
            (VERSION, version.to_string()),
            (REQUEST_ID, self.request_id.clone()),
            (REPLY_TO, self.reply_to.clone()),
            (DEADLINE_MS, self.deadline_ms.to_string()),
            (OPERATION, self.operation.clone()),
            (PAYLOAD, self.payload.clone()),
        ];
        if let Some(token) = &self.token {
            fields.push((TOKEN, token.clone()));
        }
        if let Some(traceparent) = &self.traceparent {
            fields.push((TRACEPARENT, traceparent.clone()));
        }
        fields
    }

    /// Reads a request from the fields of a stream entry: checks the version first, then the
    /// fields that version requires, and the request id rule.
    pub fn from_fields(mut fields: HashMap<String, String>) -> Result<Self, DecodeError> {
        use request_fields::*;
        let version = fields.remove(VERSION).unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let mut take = |name: &'static str| fields.remove(name).ok_or(DecodeError::Missing(name));
        let request_id = take(REQUEST_ID)?;
        validate_request_id(&request_id).map_err(|why| DecodeError::Invalid(REQUEST_ID, why))?;
        let token = if version == "1" {
            None
        } else {
            Some(take(TOKEN)?)
        };
        let reply_to = take(REPLY_TO)?;
        let deadline_ms = take(DEADLINE_MS)?
            .parse::<u64>()
            .map_err(|e| DecodeError::Invalid(DEADLINE_MS, e.to_string()))?;
        let operation = take(OPERATION)?;
        let payload = take(PAYLOAD)?;
        let traceparent = fields.remove(TRACEPARENT);
        Ok(RequestEntry {
            request_id,
            token,
            reply_to,
            deadline_ms,
            operation,
            payload,
            traceparent,
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
    /// JSON result on success, empty on error.
    pub payload: String,
    /// Consumer name of the proxy that answered, for tracing a reply back.
    pub proxy: String,
}

impl ReplyEntry {
    /// The field/value pairs for XADD.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        use reply_fields::*;
        let mut fields = vec![(REQUEST_ID, self.request_id.clone())];
        if let Some(token) = &self.token {
            fields.push((TOKEN, token.clone()));
        }
        match &self.status {
            ReplyStatus::Ok => {
                fields.push((STATUS, "ok".into()));
                fields.push((PAYLOAD, self.payload.clone()));
            }
            ReplyStatus::Error { code, message } => {
                fields.push((STATUS, "error".into()));
                fields.push((ERROR_CODE, code.clone()));
                fields.push((ERROR, message.clone()));
            }
        }
        fields.push((PROXY, self.proxy.clone()));
        fields
    }

    /// Reads a reply from the fields of a stream entry.
    pub fn from_fields(mut fields: HashMap<String, String>) -> Result<Self, DecodeError> {
        use reply_fields::*;
        let request_id = fields
            .remove(REQUEST_ID)
            .ok_or(DecodeError::Missing(REQUEST_ID))?;
        let token = fields.remove(TOKEN);
        let status = match fields.remove(STATUS).as_deref() {
            Some("ok") => ReplyStatus::Ok,
            Some("error") => ReplyStatus::Error {
                code: fields
                    .remove(ERROR_CODE)
                    .unwrap_or_else(|| "unknown".into()),
                message: fields.remove(ERROR).unwrap_or_default(),
            },
            Some(other) => return Err(DecodeError::Invalid(STATUS, other.to_string())),
            None => return Err(DecodeError::Missing(STATUS)),
        };
        Ok(ReplyEntry {
            request_id,
            token,
            status,
            payload: fields.remove(PAYLOAD).unwrap_or_default(),
            proxy: fields.remove(PROXY).unwrap_or_default(),
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

    fn to_map(fields: Vec<(&'static str, String)>) -> HashMap<String, String> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
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
        };
        assert_eq!(
            RequestEntry::from_fields(to_map(request.to_fields())),
            Ok(request)
        );
    }

    #[test]
    fn request_without_deadline_is_rejected_with_the_field_name() {
        let mut fields = to_map(vec![
            ("v", "1".into()),
            ("id", "x".into()),
            ("reply_to", "r".into()),
        ]);
        fields.insert("deadline_ms".into(), "soon".into());
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
            payload: String::new(),
            proxy: "p1".into(),
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
            payload: "{}".into(),
            traceparent: None,
        };
        assert_eq!(request.time_left(SystemTime::now()), Duration::ZERO);
    }

    fn v1_request() -> HashMap<String, String> {
        to_map(vec![
            ("v", "1".into()),
            ("id", "old-1".into()),
            ("reply_to", "r".into()),
            ("deadline_ms", "1700000000000".into()),
            ("op", "weather.sample".into()),
            ("payload", "{}".into()),
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
                Some(v) => fields.insert("v".into(), v.into()),
                None => fields.remove("v"),
            };
            let err = RequestEntry::from_fields(fields).unwrap_err();
            assert_eq!(err.reason(), "unsupported_version", "{version:?}: {err}");
        }
    }

    #[test]
    fn version_2_requires_a_token() {
        let mut fields = v1_request();
        fields.insert("v".into(), "2".into());
        assert_eq!(
            RequestEntry::from_fields(fields),
            Err(DecodeError::Missing("token"))
        );
    }

    #[test]
    fn ids_the_ingress_would_refuse_are_refused() {
        for id in ["has space", &"a".repeat(200), ""] {
            let mut fields = v1_request();
            fields.insert("id".into(), id.into());
            let err = RequestEntry::from_fields(fields).unwrap_err();
            assert!(matches!(err, DecodeError::Invalid("id", _)), "{id}: {err}");
        }
    }
}
