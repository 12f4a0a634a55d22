//! The handler interface: what a terminal does with one request. The consumer loop (reading,
//! deadlines, replies, acknowledgement, dead letters, reclaim) is the same for every handler;
//! only this step varies. Two ship with the proxy — the seed's weather demo
//! ([`crate::weather::Weather`]) and the HTTP forwarder ([`crate::forward::Forwarder`]) — and
//! a Rust user can embed their own by implementing [`Handler`] and passing it to
//! `Application::build_with_handler`.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use shared::protocol::{HttpResponseHead, RequestEntry};

/// A boxed future, so handlers stay object-safe without a macro crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request as a handler sees it.
pub struct Request<'a> {
    /// The decoded entry: id, operation, payload, and for `http` the method, path and headers.
    pub entry: &'a RequestEntry,
    /// How often the entry has been delivered, this time included: 1 on first delivery,
    /// more after a reclaim (the request may have reached the backend before).
    pub deliveries: u64,
    /// The caller's deadline. The consumer loop stops the handler there anyway (the caller has
    /// had its 504), so a handler need not enforce it, but may use it, e.g. as a timeout.
    pub deadline: tokio::time::Instant,
}

/// A handler's answer: the reply's payload and, for `http`, its status and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The reply body.
    pub payload: Bytes,
    /// Status and headers for an `http` reply; `None` for other operations.
    pub http: Option<HttpResponseHead>,
}

/// Why a handler gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// The request can never succeed (unknown operation, payload of the wrong shape): it goes
    /// to the dead-letter stream, and its caller is told at once.
    Invalid { code: &'static str, message: String },
    /// This attempt failed: an error reply (HTTP 502 at the ingress, or what the code maps to).
    Failed { code: &'static str, message: String },
}

/// What a terminal runs for each request. Implementations must be cheap to call concurrently
/// (one call per busy terminal) and must not panic on any input.
pub trait Handler: Send + Sync + 'static {
    /// Short name for logs and `/WeatherForecast/status`, e.g. `weather` or `forward`.
    fn name(&self) -> &'static str;

    /// Handles one request.
    fn handle<'a>(&'a self, request: Request<'a>) -> BoxFuture<'a, Result<Response, HandlerError>>;

    /// Whether the requests this handler serves may carry callers' data (headers such as
    /// `Authorization`, bodies with personal data). Then their dead letters hold that data too,
    /// and listing them (`GET /api/dead-letters`) needs the admin token like every change does.
    /// Yes unless a handler says otherwise: only the weather demo, whose entries are a city
    /// name, keeps that list open.
    fn private_payloads(&self) -> bool {
        true
    }
}
