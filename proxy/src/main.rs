// mimalloc with bounded memory retention (why: shared::allocator).
shared::bounded_mimalloc!();

use proxy::ProxyConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: ProxyConfig = shared::config::parse_or_exit("proxy");
    if config.print_redis_acl {
        println!("{}", config.redis_acl_rules());
        return std::process::ExitCode::SUCCESS;
    }
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
}
