//! The ingress's HTTP surface: routes, middleware and the OpenAPI document.

pub mod forward;
pub mod health;
pub mod rate_limit;
pub mod weather;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use axum::{Router, middleware};
use shared::openapi::HttpContract;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use self::rate_limit::RateLimiting;
use crate::state::AppState;

/// The OpenAPI document served at /api-docs/openapi.json and rendered at /swagger.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ingress",
        description = "HTTP front door of the Redis Streams broker. Each request is written to the request stream, processed by a proxy, and answered with the proxy's reply. Every error is an application/problem+json body carrying the request id."
    ),
    paths(
        weather::city_forecast,
        weather::sample_forecast,
        shared::health::live,
        health::ready,
        health::healthz,
        shared::http::metrics_handler,
    ),
    tags(
        (name = "weather", description = "Forecasts, answered through the broker"),
        (name = "health", description = "Liveness and readiness"),
        (name = "operations", description = "Prometheus metrics"),
    ),
    modifiers(&RateLimitDocs, &HttpContract)
)]
pub struct ApiDoc;

/// Documents the 429 of the rate-limit layer on the API operations (the layer, not the
/// handlers, answers it, so it is added here rather than in each `#[utoipa::path]`).
struct RateLimitDocs;

impl utoipa::Modify for RateLimitDocs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description("Over the per-client rate limit (only when RATE_LIMIT is set); `Retry-After` says when to retry, `RateLimit-Limit`/`-Remaining`/`-Reset` describe the bucket")
            .content(
                shared::http::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/WeatherForecast") {
                continue;
            }
            for operation in [item.get.as_mut(), item.post.as_mut()]
                .into_iter()
                .flatten()
            {
                operation
                    .responses
                    .responses
                    .insert("429".into(), RefOr::T(response.clone()));
            }
        }
    }
}

/// Builds the router with its middleware; `max_body_bytes` bounds request bodies (413 above).
/// The state sits behind one `Arc` so each request clones a pointer, not every handle in it.
/// With `rate_limits`, the API routes (only they: never health, metrics or Swagger, which
/// probes and scrapers must always reach) get the per-client rate-limit layer.
/// `forwarded` routes take any method under their prefix (by whole segments: axum matches
/// `/api` and `/api/{*rest}`, never `/api-docs`, and prefers the longest static prefix).
pub fn router(
    state: AppState,
    max_body_bytes: usize,
    rate_limits: Option<Arc<RateLimiting>>,
    forwarded: Vec<Arc<forward::ForwardRoute>>,
) -> Router {
    let state = Arc::new(state);
    let mut api = Router::new()
        .route("/WeatherForecast/city", post(weather::city_forecast))
        .route("/WeatherForecast", get(weather::sample_forecast));
    for route in forwarded {
        let prefix = route.config.prefix.clone();
        let handler = {
            let state = state.clone();
            move |request: axum::extract::Request| {
                forward::handle(state.clone(), route.clone(), request)
            }
        };
        api = api
            .route(&prefix, any(handler.clone()))
            .route(&format!("{prefix}/"), any(handler.clone()))
            .route(&format!("{prefix}/{{*rest}}"), any(handler));
    }
    if let Some(limits) = rate_limits {
        api = api.route_layer(middleware::from_fn_with_state(
            limits,
            rate_limit::limit_rate,
        ));
    }
    Router::new()
        .merge(api)
        .route("/health/live", get(shared::health::live))
        .route("/health/ready", get(health::ready))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(shared::http::metrics_handler))
        .merge(SwaggerUi::new("/swagger").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(shared::http::not_found)
        .method_not_allowed_fallback(shared::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(shared::http::request_context))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_states_what_the_http_layer_enforces() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("JSON"); // invariant: test code; a failure here is the test failing
        assert_eq!(
            shared::openapi::contract_violations(&document),
            Vec::<String>::new()
        );
        let city = &document["paths"]["/WeatherForecast/city"]["post"];
        let sample = &document["paths"]["/WeatherForecast"]["get"];
        for operation in [city, sample] {
            let headers: Vec<_> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(headers, ["X-Request-Id", "Request-Timeout"]);
            for status in ["400", "409", "429", "503", "504"] {
                assert!(operation["responses"][status].is_object(), "{status}");
            }
        }
        for status in ["408", "413", "415"] {
            assert!(city["responses"][status].is_object(), "{status}");
        }
    }
}
