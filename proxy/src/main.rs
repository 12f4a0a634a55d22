use proxy::ProxyConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config: ProxyConfig = shared::config::parse_or_exit("proxy");
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
