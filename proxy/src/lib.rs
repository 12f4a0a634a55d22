//! The proxy: reads requests from the Redis stream through the consumer group with a bounded
//! pool of terminals, processes them, writes the reply and acknowledges.
//!
//! Request path, one file per hop: [`consumer`] (XREADGROUP, terminals) → a [`handler`]
//! ([`weather`], the demo, or [`forward`], the HTTP forwarder) → [`reply`] (XADD reply, then
//! XACK + XDEL). Recovery: [`reclaim`] (entries of
//! dead proxies), [`dead_letter`] (poison entries), [`faults`] (failure injection).

pub mod admin_token;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod faults;
pub mod forward;
pub mod handler;
pub mod metrics;
pub mod reclaim;
pub mod reply;
pub mod routes;
pub mod startup;
pub mod weather;

pub use config::ProxyConfig;
pub use startup::{Application, run};
