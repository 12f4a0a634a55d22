//! `/api/dead-letters`: list, replay and delete requests that could not be processed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shared::http::{ApiPath, ApiQuery, Problem, RequestId};
use utoipa::{IntoParams, ToSchema};

use shared::openapi::RequestIdHeader;

use super::ProxyState;
use crate::dead_letter::{DeadLetter, EntryId, is_invalid_id};

/// Most dead letters one call lists or replays.
const MAX_BATCH: u64 = 1_000;

/// Paging of the list and batch size of replay-all.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// How many at most (1 to 1000, default 100); another value is refused with 400.
    // Documented as a plain integer: `Option` would make it `["integer", "null"]`, and `null`
    // is no value a query string can carry.
    #[param(value_type = u64, required = false, minimum = 1, maximum = 1000, default = 100)]
    pub count: Option<u64>,
}

impl Limit {
    fn get(&self, request_id: &RequestId) -> Result<u64, Problem> {
        match self.count.unwrap_or(100) {
            count @ 1..=MAX_BATCH => Ok(count),
            other => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "validation",
                "Invalid count",
                format!("`count` must be between 1 and {MAX_BATCH}, got {other}"),
            )
            .with_request_id(request_id)),
        }
    }
}

/// Result of a replay.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// How many dead letters went back to the request stream.
    pub replayed: u64,
}

/// The problem for a failed Redis call: 400 when Redis rejected the id (a second line of defence
/// behind [`parse_id`]), 503 otherwise.
fn redis_problem(err: fred::error::Error, request_id: &RequestId) -> Problem {
    if is_invalid_id(&err) {
        return Problem::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "Invalid dead-letter id",
            format!("Redis rejected the id ({err}); use an id from GET /api/dead-letters"),
        )
        .with_request_id(request_id);
    }
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "redis-unavailable",
        "Redis unavailable",
        format!("the dead-letter stream could not be read or changed ({err}); retry shortly"),
    )
    .retry_after(2)
    .with_request_id(request_id)
}

/// Dead-letter ids are stream entry ids, `<u64>-<u64>` like `1700000000000-0`.
fn parse_id(id: &str, request_id: &RequestId) -> Result<EntryId, Problem> {
    id.parse().map_err(|err| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "validation",
            "Invalid dead-letter id",
            format!("{err}; GET /api/dead-letters lists the ids"),
        )
        .with_request_id(request_id)
    })
}

fn not_found(id: EntryId, request_id: &RequestId) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such dead letter",
        format!("there is no dead letter `{id}`; GET /api/dead-letters lists them"),
    )
    .with_request_id(request_id)
}

/// Dead letters, oldest first.
#[utoipa::path(get, path = "/api/dead-letters", tag = "dead letters", params(Limit, RequestIdHeader), responses(
    (status = 200, description = "Dead letters", body = [DeadLetter]),
    (status = 400, description = "Invalid count or X-Request-Id", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn list(
    State(state): State<ProxyState>,
    request_id: RequestId,
    ApiQuery(limit): ApiQuery<Limit>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    let count = limit.get(&request_id)?;
    state
        .dead_letters
        .list(count)
        .await
        .map(Json)
        .map_err(|err| redis_problem(err, &request_id))
}

/// The list as served without the admin token (a proxy whose own handler has no private
/// payloads, i.e. the weather demo): payloads only of weather entries. An `http` entry still
/// lands here when a proxy without UPSTREAM_URL is pointed at a forwarded queue, and its body
/// is a caller's data.
pub async fn list_open(
    state: State<ProxyState>,
    request_id: RequestId,
    limit: ApiQuery<Limit>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    let Json(mut letters) = list(state, request_id, limit).await?;
    for letter in &mut letters {
        if !is_weather(letter.operation.as_deref()) {
            letter.payload = None;
        }
    }
    Ok(Json(letters))
}

fn is_weather(operation: Option<&str>) -> bool {
    use shared::protocol::Operation;
    matches!(
        operation.and_then(Operation::parse),
        Some(Operation::CityForecast | Operation::SampleForecast)
    )
}

/// Puts one dead letter back on the request stream, with a fresh 30 s deadline. Atomic: of
/// several concurrent replays of one id exactly one gets 200, the others 404.
#[utoipa::path(post, path = "/api/dead-letters/{id}/replay", tag = "dead letters",
    params(
        ("id" = String, Path, description = "Dead-letter id from the list: a stream entry id `<milliseconds>-<sequence>`, both whole numbers of at most 18446744073709551615, like `1700000000000-0`"),
        RequestIdHeader,
    ),
    responses(
        (status = 200, description = "Replayed", body = Replayed),
        (status = 400, description = "Malformed id or X-Request-Id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_one(
    State(state): State<ProxyState>,
    request_id: RequestId,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Replayed>, Problem> {
    let entry_id = parse_id(&id, &request_id)?;
    match state.dead_letters.replay(entry_id).await {
        Ok(Some(_)) => Ok(Json(Replayed { replayed: 1 })),
        Ok(None) => Err(not_found(entry_id, &request_id)),
        Err(err) => Err(redis_problem(err, &request_id)),
    }
}

/// Puts up to `count` dead letters (oldest first) back on the request stream. Only those present
/// when the call starts: one that fails again during the call is not replayed a second time.
#[utoipa::path(post, path = "/api/dead-letters/replay", tag = "dead letters", params(Limit, RequestIdHeader), responses(
    (status = 200, description = "Replayed", body = Replayed),
    (status = 400, description = "Invalid count or X-Request-Id", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn replay_all(
    State(state): State<ProxyState>,
    request_id: RequestId,
    ApiQuery(limit): ApiQuery<Limit>,
) -> Result<Json<Replayed>, Problem> {
    let count = limit.get(&request_id)?;
    state
        .dead_letters
        .replay_all(count)
        .await
        .map(|replayed| Json(Replayed { replayed }))
        .map_err(|err| redis_problem(err, &request_id))
}

/// Deletes one dead letter.
#[utoipa::path(delete, path = "/api/dead-letters/{id}", tag = "dead letters",
    params(
        ("id" = String, Path, description = "Dead-letter id from the list: a stream entry id `<milliseconds>-<sequence>`, both whole numbers of at most 18446744073709551615, like `1700000000000-0`"),
        RequestIdHeader,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or X-Request-Id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_one(
    State(state): State<ProxyState>,
    request_id: RequestId,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, Problem> {
    let entry_id = parse_id(&id, &request_id)?;
    match state.dead_letters.delete(entry_id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(not_found(entry_id, &request_id)),
        Err(err) => Err(redis_problem(err, &request_id)),
    }
}

/// Deletes every dead letter.
#[utoipa::path(delete, path = "/api/dead-letters", tag = "dead letters", params(RequestIdHeader), responses(
    (status = 204, description = "All deleted"),
    (status = 400, description = "Malformed X-Request-Id", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Redis unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn purge(
    State(state): State<ProxyState>,
    request_id: RequestId,
) -> Result<Response, Problem> {
    state
        .dead_letters
        .purge()
        .await
        .map(|_| StatusCode::NO_CONTENT.into_response())
        .map_err(|err| redis_problem(err, &request_id))
}
