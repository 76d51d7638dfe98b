use clap::Parser;
use tooljet_operator::telemetry::{self, LogFormat};
use tracing::info;

/// Kubernetes operator for ToolJet's multi-environment lifecycle.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Log filter (e.g. `info`, `tooljet_operator=debug,kube=info`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log_level, args.log_format);
    let client = kube::Client::try_default().await?;
    let version = client.apiserver_version().await?;
    info!(apiserver = %version.git_version, "tooljet-operator started");
    tokio::signal::ctrl_c().await?;
    info!("shutting down");
    Ok(())
}
