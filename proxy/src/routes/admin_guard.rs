//! The guard in front of the mutating admin endpoints: one middleware, applied as a route
//! layer to exactly the routes in [`PROTECTED`], and the OpenAPI changes that show it in
//! Swagger UI (the bearer scheme, the Authorize button, 401/403 on those operations).
//!
//! Read-only routes (status, health, metrics, GET /api/config, Swagger) stay open: they change
//! nothing and monitoring must not need a secret. Listing dead letters is open too, except on a
//! proxy whose handler carries callers' data ([`crate::handler::Handler::private_payloads`],
//! e.g. the forwarder: headers and bodies of real requests): there it is behind the guard as
//! well ([`READ_PROTECTED`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::http::{PROBLEM_JSON, Problem, RequestId};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, PathItem, Ref, RefOr, ResponseBuilder};

use crate::admin_token::AdminToken;

/// Name of the security scheme in the OpenAPI document.
pub const SCHEME: &str = "bearer";

/// The endpoints behind the guard, as (method, OpenAPI path). The router applies the guard to
/// the same routes (see `routes::router`); a test checks that both agree.
pub const PROTECTED: &[(&str, &str)] = &[
    ("post", "/api/config"),
    ("post", "/api/config/reset"),
    ("post", "/api/dead-letters/replay"),
    ("post", "/api/dead-letters/{id}/replay"),
    ("delete", "/api/dead-letters/{id}"),
    ("delete", "/api/dead-letters"),
];

/// The read-only endpoints that go behind the guard on a proxy with private payloads.
pub const READ_PROTECTED: &[(&str, &str)] = &[("get", "/api/dead-letters")];

/// What the guard compares against: the configured token, or none (admin endpoints off).
#[derive(Debug, Clone)]
pub struct AdminGuard {
    token: Option<AdminToken>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token is configured: the admin endpoints are off (403).
    NotConfigured,
    /// No `Authorization: Bearer` header (401).
    Missing,
    /// A bearer token that is not the configured one, or another scheme (401).
    Invalid,
}

impl AdminGuard {
    /// A guard for `token`; `None` refuses every request with 403.
    pub fn new(token: Option<AdminToken>) -> Arc<Self> {
        Arc::new(AdminGuard { token })
    }

    /// Checks the `Authorization` header.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            return Err(Refusal::NotConfigured);
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Refusal::Missing);
        };
        let bytes = value.as_bytes();
        // RFC 9110: the scheme name is case-insensitive.
        let presented = match bytes.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => return Err(Refusal::Invalid),
        };
        if token.matches(presented) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }
}

impl Refusal {
    /// The problem response, with `WWW-Authenticate` on a 401 (RFC 6750 §3).
    fn into_response(self, request_id: Option<&RequestId>) -> Response {
        let (status, kind, title, detail, challenge) = match self {
            Refusal::NotConfigured => (
                StatusCode::FORBIDDEN,
                "admin-disabled",
                "Admin API not enabled",
                "this proxy has no admin token, so its admin endpoints are off; start it with ADMIN_TOKEN_FILE (or ADMIN_TOKEN) set to a secret token and send `Authorization: Bearer <token>` (docs/security.md)",
                None,
            ),
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                "this endpoint needs the proxy's admin token; send `Authorization: Bearer <admin token>` (in Swagger UI: the Authorize button)",
                Some(r#"Bearer realm="proxy-admin""#),
            ),
            Refusal::Invalid => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Invalid credentials",
                "the Authorization header is not `Bearer <token>` with this proxy's admin token; check the token (ADMIN_TOKEN_FILE) and send it again",
                Some(r#"Bearer realm="proxy-admin", error="invalid_token""#),
            ),
        };
        let problem = Problem::new(status, kind, title, detail);
        let problem = match request_id {
            Some(id) => problem.with_request_id(id),
            None => problem,
        };
        let mut response = problem.into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// Middleware: lets the request through only with the admin token; logs every decision
/// (never the token) so changes to a running proxy leave an audit trail.
pub async fn require_admin(
    State(guard): State<Arc<AdminGuard>>,
    request: Request,
    next: Next,
) -> Response {
    // The request's span (shared::http::request_context) already carries method and route.
    match guard.check(request.headers()) {
        Ok(()) => {
            tracing::info!("admin request authorized");
            next.run(request).await
        }
        Err(refusal) => {
            tracing::warn!(?refusal, "admin request refused");
            refusal.into_response(request.extensions().get::<RequestId>())
        }
    }
}

/// Adds the bearer scheme to the OpenAPI document and marks every [`PROTECTED`] operation with
/// it plus its 401/403 responses. Done here, in one place, rather than in each handler's
/// `#[utoipa::path]`, so the document cannot drift from the list the guard protects.
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The proxy's admin token (ADMIN_TOKEN_FILE / ADMIN_TOKEN). Required by the endpoints that change the proxy; `scripts/run` prints one.",
                    ))
                    .build(),
            ),
        );
        for (method, path) in PROTECTED {
            mark_protected(openapi, method, path);
        }
    }
}

/// Marks one operation of `openapi` as needing the bearer token, with its 401/403 answers.
/// [`BearerSecurity`] does it for every [`PROTECTED`] operation; the proxy's router does it
/// for [`READ_PROTECTED`] when its handler has private payloads.
pub fn mark_protected(openapi: &mut OpenApi, method: &str, path: &str) {
    let Some(item) = openapi.paths.paths.get_mut(path) else {
        return;
    };
    let Some(operation) = operation_mut(item, method) else {
        return;
    };
    operation.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
    let responses = &mut operation.responses.responses;
    responses.insert(
        "401".into(),
        problem_response(
            "No `Authorization: Bearer` header, or not the admin token (`WWW-Authenticate: Bearer`)",
        ),
    );
    let forbidden = if path.starts_with("/api/config") {
        "No admin token is configured (ADMIN_TOKEN_FILE), or failure injection is off (FAULT_INJECTION=off)"
    } else {
        "No admin token is configured on this proxy (ADMIN_TOKEN_FILE)"
    };
    responses.insert("403".into(), problem_response(forbidden));
}

fn operation_mut<'a>(
    item: &'a mut PathItem,
    method: &str,
) -> Option<&'a mut utoipa::openapi::path::Operation> {
    match method {
        "get" => item.get.as_mut(),
        "post" => item.post.as_mut(),
        "delete" => item.delete.as_mut(),
        "put" => item.put.as_mut(),
        "patch" => item.patch.as_mut(),
        _ => None,
    }
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("header"), // invariant: test code; a failure here is the test failing
            );
        }
        headers
    }

    #[test]
    fn the_guard_wants_the_configured_bearer_token() {
        let token = AdminToken::new("0123456789abcdef0123").expect("token"); // invariant: test code; a failure here is the test failing
        let guard = AdminGuard::new(Some(token));
        assert_eq!(
            guard.check(&headers(Some("Bearer 0123456789abcdef0123"))),
            Ok(())
        );
        assert_eq!(
            guard.check(&headers(Some("bearer 0123456789abcdef0123"))),
            Ok(())
        );
        assert_eq!(guard.check(&headers(None)), Err(Refusal::Missing));
        for wrong in [
            "Bearer 0123456789abcdef0124",
            "Bearer ",
            "Basic 0123456789abcdef0123",
            "0123456789abcdef0123",
            "Bearer",
        ] {
            assert_eq!(
                guard.check(&headers(Some(wrong))),
                Err(Refusal::Invalid),
                "{wrong}"
            );
        }
        let off = AdminGuard::new(None);
        assert_eq!(
            off.check(&headers(Some("Bearer 0123456789abcdef0123"))),
            Err(Refusal::NotConfigured)
        );
    }

    #[test]
    fn a_401_carries_a_bearer_challenge_and_a_problem_body() {
        let response = Refusal::Invalid.into_response(Some(&RequestId("r1".into())));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or_default();
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        let forbidden = Refusal::NotConfigured.into_response(None);
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(!forbidden.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
