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
    let runtime = config.runtime;
    runtime.run("ingress", async move {
        shared::telemetry::init_tracing(config.log_format);
        let _ = shared::telemetry::prometheus();
        let shutdown = shared::shutdown::on_signals();
        match ingress::run(config, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "ingress failed");
                eprintln!("ingress: {err:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
