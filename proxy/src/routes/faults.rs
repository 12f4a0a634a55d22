//! `/api/config`: failure injection at run time.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared::http::{ApiJson, Problem, RequestId};
use shared::openapi::RequestIdHeader;

use super::ProxyState;
use crate::faults::{FailureInjection, FaultConfig, FaultConfigUpdate};

/// Route layer on the changing failure-injection endpoints: with FAULT_INJECTION=off they
/// answer 403 and say why, instead of pretending to accept rates that are never drawn.
pub async fn refuse_when_disabled(
    State(faults): State<Arc<FailureInjection>>,
    request: Request,
    next: Next,
) -> Response {
    if faults.is_enabled() {
        return next.run(request).await;
    }
    let problem = Problem::new(
        StatusCode::FORBIDDEN,
        "fault-injection-disabled",
        "Failure injection disabled",
        "this proxy runs with FAULT_INJECTION=off, so no fault can be injected; failure injection is for demos and tests (restart with FAULT_INJECTION=on there)",
    );
    match request.extensions().get::<RequestId>() {
        Some(id) => problem.with_request_id(id),
        None => problem,
    }
    .into_response()
}

/// The current failure-injection settings.
#[utoipa::path(get, path = "/api/config", tag = "failure injection", params(RequestIdHeader), responses(
    (status = 200, description = "Current settings", body = FaultConfig),
    (status = 400, description = "Malformed X-Request-Id", body = Problem, content_type = "application/problem+json"),
))]
pub async fn get_config(
    State(state): State<ProxyState>,
    // Refuses a malformed X-Request-Id with 400, as every API route does.
    _request_id: RequestId,
) -> Json<FaultConfig> {
    Json(state.faults.get())
}

/// Changes some failure-injection rates (fields left out keep their value).
#[utoipa::path(post, path = "/api/config", tag = "failure injection",
    params(RequestIdHeader),
    request_body(content = FaultConfigUpdate, content_type = "application/json"),
    responses(
        (status = 200, description = "The settings now in force", body = FaultConfig),
        (status = 400, description = "A rate outside [0, 1], rates that would add up to more than 1, `slowResponseDelayMs` above 600000, an unknown field, malformed JSON or a malformed X-Request-Id", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within HTTP_BODY_READ_TIMEOUT after the headers", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 2 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_config(
    State(state): State<ProxyState>,
    request_id: RequestId,
    ApiJson(update): ApiJson<FaultConfigUpdate>,
) -> Result<Json<FaultConfig>, Problem> {
    state.faults.update(update).map(Json).map_err(|detail| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "Invalid failure-injection settings",
            detail,
        )
        .with_request_id(&request_id)
    })
}

/// Turns every injected fault off.
#[utoipa::path(post, path = "/api/config/reset", tag = "failure injection", params(RequestIdHeader), responses(
    (status = 200, description = "All rates back to 0", body = FaultConfig),
    (status = 400, description = "Malformed X-Request-Id", body = Problem, content_type = "application/problem+json"),
))]
pub async fn reset_config(
    State(state): State<ProxyState>,
    // Refuses a malformed X-Request-Id with 400, as every API route does.
    _request_id: RequestId,
) -> Json<FaultConfig> {
    Json(state.faults.reset())
}
