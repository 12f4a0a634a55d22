//! The proxy's HTTP surface: status and health, failure injection, dead-letter admin,
//! metrics, and its OpenAPI document.

pub mod admin_guard;
pub mod dead_letters;
pub mod faults;
pub mod status;

use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::{Router, middleware};
use fred::prelude::Client;
use shared::openapi::HttpContract;
use shared::resilience::CircuitBreaker;
use shared::streams::StreamStats;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use self::admin_guard::{AdminGuard, BearerSecurity};
use crate::consumer::TerminalStats;
use crate::dead_letter::DeadLetters;
use crate::faults::FailureInjection;

/// Shared by the proxy's handlers.
#[derive(Clone)]
pub struct ProxyState {
    /// Non-blocking client, for health checks.
    pub redis: Client,
    /// Latest request-stream sample.
    pub stream_stats: Arc<StreamStats>,
    /// The terminal pool's counters.
    pub terminals: Arc<TerminalStats>,
    /// Circuit breaker around Redis.
    pub breaker: Arc<CircuitBreaker>,
    /// Whether Redis refuses writes for lack of memory (readiness reports it).
    pub memory: Arc<shared::redis::MemoryState>,
    /// Failure injection settings.
    pub faults: Arc<FailureInjection>,
    /// The dead-letter stream.
    pub dead_letters: DeadLetters,
    /// What `/WeatherForecast/status` reports about the configuration.
    pub identity: Arc<status::Identity>,
}

/// The OpenAPI document served at /api-docs/openapi.json and rendered at /swagger.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "proxy",
        description = "Worker of the Redis Streams broker: reads requests through the consumer group with a bounded pool of terminals, replies on the caller's reply stream, then acknowledges. Admin endpoints inject failures and manage the dead-letter stream."
    ),
    paths(
        status::status,
        shared::health::live,
        status::ready,
        status::healthz,
        shared::http::metrics_handler,
        faults::get_config,
        faults::update_config,
        faults::reset_config,
        dead_letters::list,
        dead_letters::replay_one,
        dead_letters::replay_all,
        dead_letters::delete_one,
        dead_letters::purge,
    ),
    tags(
        (name = "weather", description = "Processing status"),
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Prometheus metrics"),
        (name = "failure injection", description = "Inject faults at run time (demos, chaos tests): all rates 0 at start; changing them needs the admin token, and FAULT_INJECTION=off refuses them"),
        (name = "dead letters", description = "Requests that could not be processed: list, replay, delete (replay and delete need the admin token; listing too on a proxy whose requests carry callers' data, e.g. a forwarding proxy)"),
    ),
    modifiers(&BearerSecurity, &EntryIdPattern, &HttpContract)
)]
pub struct ApiDoc;

/// Gives the `{id}` of the dead-letter routes the exact pattern of a stream entry id
/// ([`shared::streams::ENTRY_ID_PATTERN`]; too long to repeat in each `#[utoipa::path]`, which
/// takes only literals).
struct EntryIdPattern;

impl utoipa::Modify for EntryIdPattern {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/dead-letters/{id}") {
                continue;
            }
            for operation in [item.post.as_mut(), item.delete.as_mut()]
                .into_iter()
                .flatten()
            {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.name == "id" && matches!(parameter.parameter_in, ParameterIn::Path)
                    {
                        parameter.schema = Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .pattern(Some(shared::streams::ENTRY_ID_PATTERN))
                                .examples([serde_json::json!("1700000000000-0")])
                                .into(),
                        );
                    }
                }
            }
        }
    }
}

/// The OpenAPI document of a proxy; with `private_payloads` (see
/// [`crate::handler::Handler::private_payloads`]) listing dead letters is marked as needing the
/// admin token, as the router then enforces.
pub fn openapi(private_payloads: bool) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    if private_payloads {
        for (method, path) in admin_guard::READ_PROTECTED {
            admin_guard::mark_protected(&mut document, method, path);
        }
        // Again, for the answers just added (examples; it changes nothing it did before).
        utoipa::Modify::modify(&HttpContract, &mut document);
    }
    document
}

/// Builds the proxy's router. The mutating admin routes sit in their own router behind one
/// route layer, [`admin_guard::require_admin`]; the read-only routes on the same paths (GET)
/// are registered on the open router, and `merge` joins the two method sets per path. With
/// `private_payloads`, listing dead letters goes behind the guard too
/// ([`admin_guard::READ_PROTECTED`]).
pub fn router(state: ProxyState, admin: Arc<AdminGuard>, private_payloads: bool) -> Router {
    let (open_reads, guarded_reads) = if private_payloads {
        (
            Router::new(),
            Router::new().route("/api/dead-letters", get(dead_letters::list)),
        )
    } else {
        (
            Router::new().route("/api/dead-letters", get(dead_letters::list_open)),
            Router::new(),
        )
    };
    let fault_admin = Router::new()
        .route("/api/config", post(faults::update_config))
        .route("/api/config/reset", post(faults::reset_config))
        .route_layer(middleware::from_fn_with_state(
            state.faults.clone(),
            faults::refuse_when_disabled,
        ));
    let admin_routes = guarded_reads
        .route("/api/dead-letters", delete(dead_letters::purge))
        .route("/api/dead-letters/replay", post(dead_letters::replay_all))
        .route("/api/dead-letters/{id}", delete(dead_letters::delete_one))
        .route(
            "/api/dead-letters/{id}/replay",
            post(dead_letters::replay_one),
        )
        .merge(fault_admin)
        .route_layer(middleware::from_fn_with_state(
            admin,
            admin_guard::require_admin,
        ));
    Router::new()
        .route("/WeatherForecast/status", get(status::status))
        .route("/health/live", get(shared::health::live))
        .route("/health/ready", get(status::ready))
        .route("/healthz", get(status::healthz))
        .route("/metrics", get(shared::http::metrics_handler))
        .route("/api/config", get(faults::get_config))
        .merge(open_reads)
        .merge(admin_routes)
        .merge(SwaggerUi::new("/swagger").url("/api-docs/openapi.json", openapi(private_payloads)))
        .fallback(shared::http::not_found)
        .method_not_allowed_fallback(shared::http::method_not_allowed)
        .layer(middleware::from_fn(shared::http::request_context))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_with_private_payloads_documents_the_token_on_the_dead_letter_list() {
        let open = serde_json::to_value(openapi(false)).expect("JSON"); // invariant: test code
        let private = serde_json::to_value(openapi(true)).expect("JSON"); // invariant: test code
        let list =
            |document: &serde_json::Value| document["paths"]["/api/dead-letters"]["get"].clone();
        assert!(list(&open)["security"].is_null());
        assert!(list(&open)["responses"]["401"].is_null());
        assert!(list(&private)["security"].is_array());
        assert!(list(&private)["responses"]["401"].is_object());
        assert!(list(&private)["responses"]["403"].is_object());
        assert_eq!(
            shared::openapi::contract_violations(&private),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_document_states_what_the_service_enforces() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("JSON"); // invariant: test code; a failure here is the test failing
        assert_eq!(
            shared::openapi::contract_violations(&document),
            Vec::<String>::new()
        );
        let count = &document["paths"]["/api/dead-letters"]["get"]["parameters"][0];
        assert_eq!(count["name"], "count");
        assert_eq!(count["in"], "query");
        assert_eq!(count["required"], false);
        assert_eq!(count["schema"]["minimum"], 1);
        assert_eq!(count["schema"]["maximum"], 1000);
        let id = &document["paths"]["/api/dead-letters/{id}"]["delete"]["parameters"][0];
        assert_eq!(id["schema"]["pattern"], shared::streams::ENTRY_ID_PATTERN);
        let update = &document["components"]["schemas"]["FaultConfigUpdate"]["properties"];
        assert_eq!(update["slowResponseDelayMs"]["maximum"], 600_000);
        for rate in [
            "processingErrorRate",
            "crashBeforeAckRate",
            "slowResponseRate",
            "responseTimeoutRate",
        ] {
            assert_eq!(update[rate]["minimum"], 0, "{rate}");
            assert_eq!(update[rate]["maximum"], 1, "{rate}");
        }
    }
}
