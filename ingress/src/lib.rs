//! The ingress: an HTTP API that writes each request into a Redis stream read by a consumer
//! group and answers with the correlated reply from its own reply stream.
//!
//! Request path, one file per hop: [`routes::weather`] or [`routes::forward`] (HTTP handler)
//! → [`admission`] →
//! [`broker`] (XADD + wait) → … proxy … → [`replies`] (XREAD on the reply stream, hand-over
//! to the waiter).

pub mod admission;
pub mod broker;
pub mod client_key;
pub mod config;
pub mod error;
pub mod forwarding;
pub mod metrics;
pub mod rate_limit;
pub mod replies;
pub mod routes;
pub mod startup;
pub mod state;

pub use config::IngressConfig;
pub use startup::{Application, run};
