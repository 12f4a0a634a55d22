// mimalloc with bounded memory retention (why: shared::allocator).
shared::bounded_mimalloc!();

use ingress::IngressConfig;

fn main() -> std::process::ExitCode {
    let config: IngressConfig = shared::config::parse_or_exit("ingress");
    if config.print_redis_acl {
        return match config.redis_acl_rules() {
            Ok(rules) => {
                println!("{rules}");
                std::process::ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("ingress: {why}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // The runtime's flavour comes from the configuration (why: shared::runtime).
    let (runtime, log_format) = (config.runtime, config.log_format);
    shared::runtime::run_service("ingress", runtime, log_format, |shutdown| {
        ingress::run(config, shutdown)
    })
}
