use ingress::IngressConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: IngressConfig = shared::config::parse_or_exit("ingress");
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
