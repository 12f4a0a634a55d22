//! `load-test` binary: parse flags, run, print the report, map it to an exit
//! code. All logic lives in the `load_test` library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use load_test::cli::Cli;
use load_test::{CancellationToken, EXIT_USAGE, exit_code, run_with_cancel};

/// mimalloc, as in the services: glibc malloc/free was ~11 % of the generator's CPU, and the
/// generator shares the machine with what it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let config = match cli.into_config(std::io::stderr().is_terminal()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("load-test: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load-test: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(interrupt_handler(cancel.clone()));
        match run_with_cancel(&config, cancel).await {
            Ok(report) => {
                let text = if json {
                    report.to_json() + "\n"
                } else {
                    report.to_text()
                };
                // A closed stdout (e.g. `| head`) must not turn into a panic.
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                ExitCode::from(exit_code(&report))
            }
            Err(e) => {
                eprintln!("load-test: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        }
    })
}

/// First Ctrl-C: stop sending and report what ran. Second: quit at once.
async fn interrupt_handler(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!("load-test: interrupted, writing the report (Ctrl-C again to quit now)");
    cancel.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}
