//! The proxy: reads requests from the Redis stream through the consumer group with a bounded
//! pool of terminals, processes them, writes the reply and acknowledges.
//!
//! Request path, one file per hop: [`consumer`] (XREADGROUP, terminals) → [`processor`]
//! (the work) → [`reply`] (XADD reply, then XACK + XDEL). Recovery: [`reclaim`] (entries of
//! dead proxies), [`dead_letter`] (poison entries), [`faults`] (failure injection).

pub mod admin_token;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod faults;
pub mod metrics;
pub mod processor;
pub mod reclaim;
pub mod reply;
pub mod routes;
pub mod startup;

pub use config::ProxyConfig;
pub use startup::{Application, run};
