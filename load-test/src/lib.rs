//! Load generator and end-to-end smoke test for the weather request/response
//! broker (`ingress` on :5009, `proxy` worker behind Redis Streams).
//!
//! The binary is a thin wrapper around [`run`]; keeping the logic in a library
//! lets an end-to-end test drive the real stack in-process and assert on the
//! [`Report`] instead of scraping stdout. Every request carries a unique
//! `X-Request-Id` and its reply is verified to belong to it, so the tool checks
//! that the broker never crosses replies, not just that it answers.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use load_test::{Config, Stop};
//! let report = load_test::run(&Config {
//!     url: "http://127.0.0.1:5009".into(),
//!     stop: Stop::Count(500),
//!     ..Config::default()
//! })
//! .await?;
//! assert!(report.passed, "{}", report.to_text());
//! assert_eq!(report.failures_by_kind["mismatch"], 0);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod cities;
pub mod cli;
pub mod client;
pub mod config;
pub mod profile;
pub mod progress;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stage_report;
pub mod stats;
pub mod verify;

pub use cities::City;
pub use client::HealthCheckError;
pub use config::{Config, Mode, Stop};
pub use profile::Profile;
pub use report::{EXIT_FAILED, EXIT_PASS, EXIT_USAGE, Report, exit_code};
pub use runner::{run, run_with_cancel};
pub use stage_report::StageReport;
pub use tokio_util::sync::CancellationToken;
