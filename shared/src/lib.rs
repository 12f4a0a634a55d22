//! Everything the ingress and the proxy have in common.
//!
//! The two services talk only through Redis, so the wire format ([`protocol`]), the Redis
//! connection setup ([`redis`]), the consumer-group bookkeeping ([`streams`]) and the
//! operational plumbing (configuration pieces, telemetry, HTTP server and helpers, shutdown) live here once
//! instead of being written twice and drifting apart.

pub mod acl;
pub mod allocator;
pub mod batch;
pub mod config;
pub mod health;
pub mod http;
pub mod openapi;
pub mod protocol;
pub mod redis;
pub mod redis_problems;
pub mod resilience;
pub mod runtime;
pub mod scripts;
pub mod secrets;
pub mod server;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod weather;
