//! The wire format between ingress and proxy: one request entry on the request stream, one
//! reply entry on the caller's reply stream. docs/protocol.md is the prose version of this
//! file; a client in another language needs nothing else.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Protocol version written into every entry, so a future change can be detected by readers.
pub const PROTOCOL_VERSION: &str = "1";

/// Field names of a request entry.
pub mod request_fields {
    pub const VERSION: &str = "v";
    pub const REQUEST_ID: &str = "id";
    pub const REPLY_TO: &str = "reply_to";
    pub const DEADLINE_MS: &str = "deadline_ms";
    pub const OPERATION: &str = "op";
    pub const PAYLOAD: &str = "payload";
    pub const TRACEPARENT: &str = "traceparent";
}

/// Field names of a reply entry.
pub mod reply_fields {
    pub const REQUEST_ID: &str = "id";
    pub const STATUS: &str = "status";
    pub const PAYLOAD: &str = "payload";
    pub const ERROR_CODE: &str = "error_code";
    pub const ERROR: &str = "error";
    pub const PROXY: &str = "proxy";
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
}

impl RequestEntry {
    /// The field/value pairs for XADD, in a stable order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        use request_fields::*;
        let mut fields = vec![
            (VERSION, PROTOCOL_VERSION.to_string()),
            (REQUEST_ID, self.request_id.clone()),
            (REPLY_TO, self.reply_to.clone()),
            (DEADLINE_MS, self.deadline_ms.to_string()),
            (OPERATION, self.operation.clone()),
            (PAYLOAD, self.payload.clone()),
        ];
        if let Some(traceparent) = &self.traceparent {
            fields.push((TRACEPARENT, traceparent.clone()));
        }
        fields
    }

    /// Reads a request from the fields of a stream entry.
    pub fn from_fields(mut fields: HashMap<String, String>) -> Result<Self, DecodeError> {
        use request_fields::*;
        let mut take = |name: &'static str| fields.remove(name).ok_or(DecodeError::Missing(name));
        let request_id = take(REQUEST_ID)?;
        let reply_to = take(REPLY_TO)?;
        let deadline_ms = take(DEADLINE_MS)?
            .parse::<u64>()
            .map_err(|e| DecodeError::Invalid(DEADLINE_MS, e.to_string()))?;
        let operation = take(OPERATION)?;
        let payload = take(PAYLOAD)?;
        let traceparent = fields.remove(TRACEPARENT);
        Ok(RequestEntry {
            request_id,
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
        let mut fields = to_map(vec![("id", "x".into()), ("reply_to", "r".into())]);
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
            reply_to: "r".into(),
            deadline_ms: 1_000,
            operation: "weather.city".into(),
            payload: "{}".into(),
            traceparent: None,
        };
        assert_eq!(request.time_left(SystemTime::now()), Duration::ZERO);
    }
}
