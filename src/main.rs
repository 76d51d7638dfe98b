use clap::Parser;
use tooljet_operator::{
    controller::{self, Settings},
    telemetry::{self, LogFormat},
};
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
    /// How many objects of one kind are reconciled at once.
    #[arg(long, env = "TOOLJET_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// This replica's name, reported on Events (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "tooljet-operator")]
    instance: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log_level, args.log_format);
    let client = kube::Client::try_default().await?;
    let version = client.apiserver_version().await?;
    info!(apiserver = %version.git_version, "tooljet-operator starting");
    controller::run(
        client,
        Settings {
            concurrency: args.concurrency,
            instance: args.instance,
        },
    )
    .await?;
    info!("tooljet-operator stopped");
    Ok(())
}
