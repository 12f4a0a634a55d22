// mimalloc with bounded memory retention (why: shared::allocator).
shared::bounded_mimalloc!();

use proxy::ProxyConfig;

fn main() -> std::process::ExitCode {
    let config: ProxyConfig = shared::config::parse_or_exit("proxy");
    if config.print_redis_acl {
        println!("{}", config.redis_acl_rules());
        return std::process::ExitCode::SUCCESS;
    }
    // The runtime's flavour comes from the configuration (why: shared::runtime).
    let runtime = config.runtime;
    runtime.run("proxy", async move {
        shared::telemetry::init_tracing(config.log_format);
        let _ = shared::telemetry::prometheus();
        let shutdown = shared::shutdown::on_signals();
        match proxy::run(config, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "proxy failed");
                eprintln!("proxy: {err:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
