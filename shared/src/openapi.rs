//! What both services' OpenAPI documents say about the shared HTTP layer, in one place, so the
//! documents state exactly what the code enforces (schemathesis fuzzes the services against
//! them, `scripts/fuzz-api`).
//!
//! [`HttpContract`] is a `utoipa::Modify` both documents apply last. It
//! - gives every `X-Request-Id` and `Request-Timeout` header parameter the exact rule the code
//!   checks ([`request_id_schema`], [`request_timeout_schema`]); a handler declares the header
//!   (so only operations that enforce it show it), the schema comes from here;
//! - adds 414 and 431, which hyper answers (with an empty body) before any route runs;
//! - gives every problem response an example of its own status and kind, instead of the
//!   `Problem` schema's one example for every status.

use serde_json::{Value, json};
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{OpenApi, Required, ResponseBuilder};

use crate::http::{MAX_REQUEST_ID_LEN, PROBLEM_JSON, REQUEST_ID_HEADER};

/// The request-id rule of [`crate::protocol::validate_request_id`] as a JSON Schema pattern;
/// the length (1 to [`MAX_REQUEST_ID_LEN`]) is in `minLength`/`maxLength`.
pub const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9._:-]+$";

/// Name of the header a client sets to shorten its deadline (ingress).
pub const REQUEST_TIMEOUT_HEADER: &str = "Request-Timeout";

/// The accepted `Request-Timeout` values: a whole number without leading zeros, at most ten
/// digits, then `ms`, `s` or nothing (seconds). [`parse_request_timeout`] accepts exactly these.
pub const REQUEST_TIMEOUT_PATTERN: &str = "^[1-9][0-9]{0,9}(ms|s)?$";

/// Parses a `Request-Timeout` value by [`REQUEST_TIMEOUT_PATTERN`]: `250ms`, `5s`, `5`.
/// Exactly the pattern and nothing more, so the document and the service agree on every value.
pub fn parse_request_timeout(value: &str) -> Result<std::time::Duration, String> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let bad = || {
        format!(
            "`{value}` is not a deadline: send a whole number of milliseconds or seconds without leading zeros, like `500ms` or `5s` (pattern {REQUEST_TIMEOUT_PATTERN})"
        )
    };
    if number.is_empty() || number.len() > 10 || number.starts_with('0') {
        return Err(bad());
    }
    let amount: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(amount)),
        "s" | "" => Ok(std::time::Duration::from_secs(amount)),
        _ => Err(bad()),
    }
}

/// The `X-Request-Id` header as a parameter of an operation whose handler extracts
/// [`crate::http::RequestId`] and so refuses a malformed id with 400: `params(RequestIdHeader)`.
/// [`HttpContract`] gives it its schema. Never constructed: it exists for its documentation.
#[derive(utoipa::IntoParams)]
#[into_params(names("X-Request-Id"), parameter_in = Header)]
pub struct RequestIdHeader(
    // One line: the comment is the parameter's description in the document.
    /// Correlation id, 1 to 128 of `A-Z a-z 0-9 . _ : -`; generated when absent; echoed in the `X-Request-Id` response header and in every problem's `requestId`. Another value is refused with 400 `invalid-request-id`.
    #[allow(dead_code)]
    String,
);

/// Schema of the `X-Request-Id` header: a string (never `null`) of 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn request_id_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_REQUEST_ID_LEN))
        .pattern(Some(REQUEST_ID_PATTERN))
        .examples([json!("order-42:try-1")])
        .into()
}

/// Schema of the `Request-Timeout` header, see [`REQUEST_TIMEOUT_PATTERN`].
pub fn request_timeout_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(REQUEST_TIMEOUT_PATTERN))
        .max_length(Some(12))
        .examples([json!("5s")])
        .into()
}

/// The problem example for a status, by the kind the services answer most often with it.
pub fn problem_example(status: u16) -> Option<Value> {
    let (kind, title, detail) = match status {
        400 => (
            "validation",
            "Invalid request",
            "`city` is required and must not be blank",
        ),
        401 => (
            "unauthorized",
            "Authentication required",
            "this endpoint needs the proxy's admin token; send `Authorization: Bearer <admin token>` (in Swagger UI: the Authorize button)",
        ),
        403 => (
            "admin-disabled",
            "Admin API not enabled",
            "this proxy has no admin token, so its admin endpoints are off; start it with ADMIN_TOKEN_FILE (or ADMIN_TOKEN) set to a secret token and send `Authorization: Bearer <token>` (docs/security.md)",
        ),
        404 => (
            "not-found",
            "No such dead letter",
            "there is no dead letter `1700000000000-0`; GET /api/dead-letters lists them",
        ),
        408 => (
            "body-timeout",
            "Request body too slow",
            "the request body did not arrive within 30 s (HTTP_BODY_READ_TIMEOUT); send the whole body right after the headers",
        ),
        409 => (
            "duplicate-request-id",
            "Request id already in flight",
            "a request with X-Request-Id `order-42:try-1` is still awaiting its reply; use a unique id per request",
        ),
        413 => (
            "payload-too-large",
            "Body too large",
            "the body is over the size limit; send a smaller body",
        ),
        415 => (
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        429 => (
            "rate-limited",
            "Too many requests",
            "this client (told apart by its address) is over the rate limit of 100/s with bursts of 200; retry after 1 s",
        ),
        502 => (
            "proxy-error",
            "The proxy could not process the request",
            "processing_error: simulated processing failure",
        ),
        503 => (
            "overloaded",
            "Too many requests in flight",
            "this instance awaits as many replies as MAX_IN_FLIGHT allows; retry after the indicated delay",
        ),
        504 => (
            "timeout",
            "No reply before the deadline",
            "no proxy replied within 30000 ms; the request was queued and may still be processed later; the proxies may be down or behind (see /healthz streamLength)",
        ),
        _ => return None,
    };
    Some(json!({
        "type": format!("urn:problem:broker:{kind}"),
        "title": title,
        "status": status,
        "detail": detail,
        "requestId": "6f1c2a9e-3d0b-4a53-9c1e-5b8f0e2d7a41",
    }))
}

/// The 400 example of an operation without a body: its 400 is a malformed header or parameter.
fn invalid_request_id_example() -> Value {
    json!({
        "type": "urn:problem:broker:invalid-request-id",
        "title": "Invalid X-Request-Id",
        "status": 400,
        "detail": "X-Request-Id: a request id may contain only letters, digits and . _ : -; send 1 to 128 such characters, or leave the header out and use the generated `requestId`",
        "requestId": "6f1c2a9e-3d0b-4a53-9c1e-5b8f0e2d7a41",
    })
}

/// The `utoipa::Modify` both documents apply last; see the module documentation.
pub struct HttpContract;

impl utoipa::Modify for HttpContract {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.options.as_mut(),
                item.head.as_mut(),
                item.patch.as_mut(),
                item.trace.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                fix_headers(operation);
                add_http_layer_responses(operation);
                add_problem_examples(operation);
            }
        }
    }
}

fn fix_headers(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if !matches!(parameter.parameter_in, ParameterIn::Header) {
            continue;
        }
        let schema = if parameter
            .name
            .eq_ignore_ascii_case(REQUEST_ID_HEADER.as_str())
        {
            request_id_schema()
        } else if parameter.name.eq_ignore_ascii_case(REQUEST_TIMEOUT_HEADER) {
            request_timeout_schema()
        } else {
            continue;
        };
        set_optional_string(parameter, schema);
    }
}

fn set_optional_string(parameter: &mut Parameter, schema: Schema) {
    parameter.schema = Some(schema.into());
    parameter.required = Required::False;
}

/// 414 and 431: hyper refuses a request line over 64 KiB and a head with too many or too large
/// header fields before routing, with an empty body.
fn add_http_layer_responses(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    for (status, description) in [
        (
            "414",
            "URI too long (over 64 KiB): answered by the HTTP layer, with an empty body",
        ),
        (
            "431",
            "Request header fields too large (over 100 fields or too many bytes): answered by the HTTP layer, with an empty body",
        ),
    ] {
        responses
            .entry(status.to_string())
            .or_insert_with(|| ResponseBuilder::new().description(description).into());
    }
}

fn add_problem_examples(operation: &mut Operation) {
    let has_body = operation.request_body.is_some();
    for (status, response) in operation.responses.responses.iter_mut() {
        let utoipa::openapi::RefOr::T(response) = response else {
            continue;
        };
        let Some(content) = response.content.get_mut(PROBLEM_JSON) else {
            continue;
        };
        let example = if status == "400" && !has_body {
            Some(invalid_request_id_example())
        } else {
            status.parse().ok().and_then(problem_example)
        };
        let Some(example) = example else {
            continue;
        };
        content.example = Some(example);
    }
}

/// What [`HttpContract`] guarantees, checked on a finished document (as JSON): each service's
/// tests call it on its own document. Returns one line per violation.
pub fn contract_violations(document: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let Some(paths) = document["paths"].as_object() else {
        return vec!["the document has no paths".into()];
    };
    for (path, item) in paths {
        let Some(operations) = item.as_object() else {
            continue;
        };
        for (method, operation) in operations {
            let at = format!("{} {path}", method.to_uppercase());
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap_or_default();
                let schema = &parameter["schema"];
                if schema["type"].is_array() {
                    found.push(format!("{at}: parameter {name} may be null"));
                }
                let expected = if name.eq_ignore_ascii_case(REQUEST_ID_HEADER.as_str()) {
                    Some(REQUEST_ID_PATTERN)
                } else if name.eq_ignore_ascii_case(REQUEST_TIMEOUT_HEADER) {
                    Some(REQUEST_TIMEOUT_PATTERN)
                } else {
                    None
                };
                if let Some(pattern) = expected
                    && (schema["type"] != "string" || schema["pattern"] != pattern)
                {
                    found.push(format!("{at}: {name} is not a string of pattern {pattern}"));
                }
            }
            let responses = &operation["responses"];
            for status in ["414", "431"] {
                if !responses[status].is_object() {
                    found.push(format!("{at}: {status} is not documented"));
                }
            }
            for (status, response) in responses.as_object().into_iter().flatten() {
                let problem = &response["content"][PROBLEM_JSON];
                if problem.is_null() {
                    continue;
                }
                if problem["example"]["status"].as_u64().map(|s| s.to_string())
                    != Some(status.clone())
                {
                    found.push(format!(
                        "{at}: the {status} problem has no example of its own"
                    ));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn request_timeout_accepts_exactly_the_pattern() {
        let ok = |value: &str| parse_request_timeout(value).ok();
        assert_eq!(ok("5s"), Some(Duration::from_secs(5)));
        assert_eq!(ok("5"), Some(Duration::from_secs(5)));
        assert_eq!(ok("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(ok("9999999999s"), Some(Duration::from_secs(9_999_999_999)));
        for bad in [
            "",
            "0",
            "0s",
            "05s",
            "s",
            "ms",
            "5m",
            "5 s",
            " 5s",
            "5s ",
            "5sec",
            "1h",
            "-5s",
            "99999999999",
            "5S",
            "５s",
        ] {
            assert!(parse_request_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_documented_problem_status_has_its_own_example() {
        for status in [400, 401, 403, 404, 408, 409, 413, 415, 429, 502, 503, 504] {
            let example = problem_example(status).expect("an example"); // invariant: test code; a failure here is the test failing
            assert_eq!(example["status"], status);
        }
    }
}
