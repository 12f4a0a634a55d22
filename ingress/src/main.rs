/// mimalloc instead of glibc malloc: malloc/free was ~23% of each service's CPU in the
/// profiles of docs/benchmarks.md, and glibc's arenas kept the ingress's RSS up after bursts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ingress::IngressConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
}
