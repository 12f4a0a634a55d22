//! Checks that a reply belongs to the request that asked for it.
//!
//! The broker correlates replies through Redis by request id; a bug there would
//! hand one caller another caller's forecast, which a plain "got 200" load test
//! would never notice. So every reply's `requestId` (body and `X-Request-Id`
//! header), `city` and `location` are compared with what was sent. Pure
//! functions over bytes, so the logic is unit-tested without a server.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a request did not count as a success.
///
/// Kinds are coarse on purpose: they say which layer failed, which is what you
/// need to decide where to look next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Could not open a TCP connection (service down, refused, port exhaustion).
    Connect,
    /// No complete reply within `--timeout` on the client side.
    Timeout,
    /// The service answered with a non-2xx status (see the by-status breakdown).
    Status,
    /// A 2xx reply that belongs to a different request: crossed replies.
    Mismatch,
    /// A 2xx reply whose body is not the expected JSON.
    Decode,
    /// Any other transport failure, e.g. the connection was reset mid-reply.
    Io,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Status,
        ErrorKind::Mismatch,
        ErrorKind::Decode,
        ErrorKind::Io,
    ];

    /// Lower-case name used in the text and JSON reports.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Decode => "decode",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed request: its kind, the HTTP status if there was one, and a short
/// human-readable detail (kept only for a few samples in the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which layer failed.
    pub kind: ErrorKind,
    /// HTTP status for [`ErrorKind::Status`] failures.
    pub status: Option<u16>,
    /// What exactly went wrong.
    pub detail: String,
}

impl Failure {
    /// A failure without an HTTP status.
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            detail: detail.into(),
        }
    }
}

/// What was sent, to compare the reply against.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The `X-Request-Id` this request carried.
    pub request_id: &'a str,
    /// The city in the request body.
    pub city: &'a str,
    /// The location in the request body.
    pub location: &'a str,
}

/// The fields of a forecast reply that identify it; everything else is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply<'a> {
    #[serde(borrow)]
    request_id: Cow<'a, str>,
    #[serde(borrow)]
    city: Cow<'a, str>,
    #[serde(borrow)]
    location: Cow<'a, str>,
}

/// Checks a 2xx reply: body must decode, and the body's `requestId`, the
/// `X-Request-Id` header, `city` and `location` must all match what was sent.
pub fn verify_reply(
    expected: &Expected<'_>,
    header_id: Option<&str>,
    body: &[u8],
) -> Result<(), Failure> {
    let reply: Reply<'_> = serde_json::from_slice(body).map_err(|e| {
        Failure::new(
            ErrorKind::Decode,
            format!(
                "{}: reply body is not a forecast: {e} (body: {})",
                expected.request_id,
                snippet(body)
            ),
        )
    })?;
    let mut wrong = Vec::new();
    if reply.request_id != expected.request_id {
        wrong.push(format!("body requestId {:?}", reply.request_id));
    }
    match header_id {
        Some(h) if h == expected.request_id => {}
        Some(h) => wrong.push(format!("X-Request-Id header {h:?}")),
        None => wrong.push("no X-Request-Id header".to_owned()),
    }
    if reply.city != expected.city {
        wrong.push(format!("city {:?} (sent {:?})", reply.city, expected.city));
    }
    if reply.location != expected.location {
        wrong.push(format!(
            "location {:?} (sent {:?})",
            reply.location, expected.location
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorKind::Mismatch,
            format!(
                "{}: reply does not match request: {}",
                expected.request_id,
                wrong.join(", ")
            ),
        ))
    }
}

/// Builds the failure for a non-2xx reply, pulling `title`/`detail` out of an
/// `application/problem+json` body when there is one so the sample says *why*.
pub fn status_failure(request_id: &str, status: u16, body: &[u8]) -> Failure {
    #[derive(Deserialize)]
    struct Problem<'a> {
        #[serde(borrow, default)]
        title: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        detail: Option<Cow<'a, str>>,
    }
    let why = match serde_json::from_slice::<Problem<'_>>(body) {
        Ok(p) => match (p.title, p.detail) {
            (Some(t), Some(d)) => format!("{t}: {d}"),
            (Some(t), None) => t.into_owned(),
            (None, Some(d)) => d.into_owned(),
            (None, None) => snippet(body),
        },
        Err(_) => snippet(body),
    };
    Failure {
        kind: ErrorKind::Status,
        status: Some(status),
        detail: format!("{request_id}: HTTP {status}: {why}"),
    }
}

/// First ~200 characters of a body, lossily decoded, for error samples.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("<empty>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT: Expected<'static> = Expected {
        request_id: "lt-abc-1",
        city: "São Paulo",
        location: "Paulista",
    };

    fn body(id: &str, city: &str, location: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "requestId": id, "city": city, "location": location,
            "forecastTime": "2026-11-21T22:00:00Z", "temperature": 12.3,
            "condition": "Sunny", "humidity": 55, "windSpeed": 10.2
        }))
        .unwrap()
    }

    #[test]
    fn matching_reply_passes() {
        let b = body("lt-abc-1", "São Paulo", "Paulista");
        assert_eq!(verify_reply(&SENT, Some("lt-abc-1"), &b), Ok(()));
    }

    #[test]
    fn escaped_unicode_still_matches() {
        let b = br#"{"requestId":"lt-abc-1","city":"S\u00e3o Paulo","location":"Paulista"}"#;
        assert_eq!(verify_reply(&SENT, Some("lt-abc-1"), b), Ok(()));
    }

    #[test]
    fn crossed_reply_is_a_mismatch() {
        let b = body("lt-abc-2", "Tokyo", "Shibuya");
        let f = verify_reply(&SENT, Some("lt-abc-2"), &b).unwrap_err();
        assert_eq!(f.kind, ErrorKind::Mismatch);
        assert!(
            f.detail.contains("body requestId \"lt-abc-2\""),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("X-Request-Id header"), "{}", f.detail);
        assert!(f.detail.contains("city \"Tokyo\""), "{}", f.detail);
        assert!(f.detail.contains("location \"Shibuya\""), "{}", f.detail);
    }

    #[test]
    fn each_field_is_checked_on_its_own() {
        let good = body("lt-abc-1", "São Paulo", "Paulista");
        assert_eq!(
            verify_reply(&SENT, Some("other"), &good).unwrap_err().kind,
            ErrorKind::Mismatch
        );
        assert_eq!(
            verify_reply(&SENT, None, &good).unwrap_err().kind,
            ErrorKind::Mismatch
        );
        let wrong_city = body("lt-abc-1", "Sao Paulo", "Paulista");
        assert_eq!(
            verify_reply(&SENT, Some("lt-abc-1"), &wrong_city)
                .unwrap_err()
                .kind,
            ErrorKind::Mismatch
        );
        let wrong_loc = body("lt-abc-1", "São Paulo", "Centro");
        assert_eq!(
            verify_reply(&SENT, Some("lt-abc-1"), &wrong_loc)
                .unwrap_err()
                .kind,
            ErrorKind::Mismatch
        );
    }

    #[test]
    fn undecodable_body_is_a_decode_error() {
        for b in [
            &b"not json"[..],
            b"",
            br#"{"requestId":"lt-abc-1"}"#,
            b"[1,2]",
        ] {
            let f = verify_reply(&SENT, Some("lt-abc-1"), b).unwrap_err();
            assert_eq!(f.kind, ErrorKind::Decode, "{b:?}");
        }
    }

    #[test]
    fn status_failure_uses_problem_details() {
        let b = br#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"draining","requestId":"x"}"#;
        let f = status_failure("lt-abc-1", 503, b);
        assert_eq!(f.kind, ErrorKind::Status);
        assert_eq!(f.status, Some(503));
        assert_eq!(
            f.detail,
            "lt-abc-1: HTTP 503: Service Unavailable: draining"
        );
        let f = status_failure("lt-abc-1", 502, b"upstream broke");
        assert_eq!(f.detail, "lt-abc-1: HTTP 502: upstream broke");
        let f = status_failure("lt-abc-1", 500, b"");
        assert_eq!(f.detail, "lt-abc-1: HTTP 500: <empty>");
    }

    #[test]
    fn long_bodies_are_truncated_in_details() {
        let long = vec![b'x'; 10_000];
        let f = verify_reply(&SENT, None, &long).unwrap_err();
        assert!(f.detail.len() < 400, "{}", f.detail.len());
        assert!(f.detail.ends_with("…)"));
    }
}
