/// mimalloc instead of glibc malloc: malloc/free was ~23% of each service's CPU in the
/// profiles of docs/benchmarks.md, and glibc's arenas kept the ingress's RSS up after bursts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
