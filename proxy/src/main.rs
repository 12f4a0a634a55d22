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
    let (runtime, log_format) = (config.runtime, config.log_format);
    shared::runtime::run_service("proxy", runtime, log_format, |shutdown| {
        proxy::run(config, shutdown)
    })
}
