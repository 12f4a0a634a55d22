//! The async runtime a service runs on, chosen by `WORKER_THREADS`.
//!
//! Why one thread by default: every request crosses several tasks inside a service (the HTTP
//! connection, fred's connection task, the reply reader or the consumer loop, a terminal, the
//! reply writer). On a single-threaded runtime each of those hand-offs is a queue push on the
//! same thread. On tokio's multi-threaded runtime many of them wake a parked worker thread
//! through the kernel (about four futex calls per request in each service), which is most of
//! what a request costs at low load. Measured with `scripts/bench-forward` on a 2-core machine
//! (docs/benchmarks.md, "Runtime"): one thread cut the latency the broker adds at c=1 by more
//! than a quarter (0.69 to 0.49 ms) and raised throughput at c=64 by half, because four
//! processes share the cores anyway.
//!
//! One thread uses at most one core. That matches the Kubernetes manifests (CPU limit 1, and
//! the HPA adds replicas); an instance that should use more cores on a larger host sets
//! `WORKER_THREADS` to that number and gets tokio's multi-threaded runtime.

use std::future::Future;
use std::process::ExitCode;

use clap::Args;

/// How many threads run the service's tasks.
#[derive(Debug, Clone, Copy, Args)]
pub struct RuntimeArgs {
    /// Threads that run the service's tasks. 1: a single-threaded runtime, the lowest latency
    /// and CPU per request, using at most one core (scale out with replicas). More: tokio's
    /// multi-threaded runtime with that many workers, for one instance on several cores.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
}

impl RuntimeArgs {
    /// Builds the runtime these settings describe.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(self.worker_threads.into());
            builder
        };
        builder.enable_all().build()
    }

    /// Runs `main` to completion on the runtime these settings describe: what a service's
    /// `main` does after parsing its configuration. A runtime that cannot start (e.g. no
    /// threads or file descriptors left) ends the process with a message saying so.
    pub fn run(&self, service: &str, main: impl Future<Output = ExitCode>) -> ExitCode {
        match self.build() {
            Ok(runtime) => runtime.block_on(main),
            Err(err) => {
                eprintln!(
                    "{service}: cannot start the async runtime with WORKER_THREADS={}: {err}; check the process's thread and open-file limits",
                    self.worker_threads
                );
                ExitCode::FAILURE
            }
        }
    }
}

/// What each service's `main` does once its configuration is parsed: starts the runtime
/// (`runtime`), logging and metrics, runs `serve` until a signal cancels its token, and turns a
/// failure into a logged error and a failing exit status.
pub fn run_service<Fut, E>(
    service: &'static str,
    runtime: RuntimeArgs,
    log_format: crate::config::LogFormat,
    serve: impl FnOnce(tokio_util::sync::CancellationToken) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    runtime.run(service, async move {
        crate::telemetry::init_tracing(log_format);
        let _ = crate::telemetry::prometheus();
        let shutdown = crate::shutdown::on_signals();
        match serve(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "{service} failed");
                eprintln!("{service}: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_is_a_current_thread_runtime_and_more_a_multi_threaded_one() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |worker_threads| {
            RuntimeArgs { worker_threads }
                .build()
                .map(|runtime| runtime.handle().runtime_flavor())
                .ok()
        };
        assert_eq!(flavor(1), Some(RuntimeFlavor::CurrentThread));
        assert_eq!(flavor(2), Some(RuntimeFlavor::MultiThread));
        let workers = RuntimeArgs { worker_threads: 3 }
            .build()
            .map(|runtime| runtime.metrics().num_workers())
            .ok();
        assert_eq!(workers, Some(3));
    }

    #[test]
    fn run_returns_what_main_returns() {
        let args = RuntimeArgs { worker_threads: 2 };
        let code = args.run("test", async {
            tokio::task::spawn(async { ExitCode::from(3) })
                .await
                .unwrap_or(ExitCode::FAILURE)
        });
        assert_eq!(code, ExitCode::from(3));
    }
}
