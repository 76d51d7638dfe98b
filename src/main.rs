use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use tooljet_operator::{
    controller::Settings,
    leader::{Leadership, LeaseSettings},
    operator::{self, Liveness, Options, WebhookOptions},
    policy::window::parse_duration,
    telemetry::{self, LogFormat},
    webhook::certs,
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
    /// This replica's name: the lease holder identity and the Events' reporting instance
    /// (the pod name in a cluster; hostname-pid otherwise).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// The operator's own namespace: its lease, webhook certificate Secret and content-hash key
    /// Secret live there (it must exist).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tooljet-system")]
    namespace: String,
    /// Where /metrics, /healthz and /readyz are served (plain HTTP).
    #[arg(long, env = "TOOLJET_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// Elect a leader among replicas with a Lease; only the leader reconciles.
    #[arg(long, env = "TOOLJET_LEADER_ELECT")]
    leader_elect: bool,
    /// Let Notifications deliver to loopback and link-local addresses (127.0.0.0/8, ::1,
    /// 169.254.0.0/16 with the cloud metadata service, fe80::/10), refused otherwise: whoever
    /// can write an endpoint's Secret would reach the operator's own pod or node.
    #[arg(long, env = "TOOLJET_NOTIFICATIONS_ALLOW_LOCAL_ENDPOINTS")]
    notifications_allow_local_endpoints: bool,
    /// The Lease's name.
    #[arg(long, default_value = "tooljet-operator")]
    lease_name: String,
    /// Liveness (`/healthz`) fails once the replica has been unready (caches not synced, webhook
    /// certificate not loaded) for longer than this (`90s`, `5m`), so that the kubelet restarts a
    /// replica that cannot become ready.
    #[arg(long, env = "TOOLJET_READY_DEADLINE", default_value = "5m", value_parser = parse_deadline)]
    ready_deadline: Duration,
    /// Do not serve the admission webhook.
    #[arg(long)]
    no_webhook: bool,
    /// Where the admission webhook listens (HTTPS).
    #[arg(long, env = "TOOLJET_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Serve the webhook with tls.crt/tls.key from this directory (cert-manager, a mounted
    /// Secret), reloaded when they change. Without it the operator provisions its own.
    #[arg(long, env = "TOOLJET_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// DNS names or IPs the self-provisioned certificate covers (repeatable). Default:
    /// tooljet-operator-webhook.<namespace>.svc.
    #[arg(long = "webhook-host")]
    webhook_hosts: Vec<String>,
    /// The Secret (in --namespace) holding the self-provisioned CA and certificate.
    #[arg(long, default_value = "tooljet-operator-webhook-tls")]
    webhook_secret: String,
    /// Validating/Mutating webhook configurations whose caBundle the operator keeps current.
    #[arg(long = "webhook-configuration", default_value = "tooljet-operator")]
    webhook_configurations: Vec<String>,
    /// How long the webhook reuses a SubjectAccessReview that allowed, for the same user and
    /// access (`0s`: ask every time; at most `1m`). A denial is never reused; a revoked grant
    /// keeps allowing for up to this long.
    #[arg(long, env = "TOOLJET_ACCESS_REVIEW_TTL", default_value = "5s", value_parser = parse_ttl)]
    access_review_ttl: Duration,
}

/// A Go-style duration (`90s`, `5m`).
fn parse_deadline(text: &str) -> Result<Duration, String> {
    parse_duration(text)?
        .to_std()
        .map_err(|e| format!("{text}: {e}"))
}

/// A Go-style duration from `0s` to `1m` (`5s`, `30s`): longer would keep a revoked grant
/// allowing for too long.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    if matches!(text.trim(), "0" | "0s" | "0m") {
        return Ok(Duration::ZERO);
    }
    let ttl = parse_deadline(text)?;
    if ttl > Duration::from_secs(60) {
        return Err(format!("{text}: at most 1m (0s: ask every time)"));
    }
    Ok(ttl)
}

/// jemalloc, not glibc's malloc: its size classes hold the caches' many small strings closer
/// (glibc's malloc takes 32 bytes for any of 1 to 24), and it returns freed memory on its own.
/// docs/benchmarks.md has the measurement that chose it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (`_RJEM_MALLOC_CONF` in the environment overrides them): one arena, as the
/// operator's memory is mostly long-lived caches that more arenas would only fragment; a
/// background thread that hands freed pages back to the system after a second, also while idle.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// jemalloc's own figures for `/metrics`: bytes in live allocations and in the resident pages it
/// maps, as of now (the epoch advanced first: jemalloc refreshes its statistics on demand).
fn heap() -> Option<tooljet_operator::metrics::Heap> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(tooljet_operator::metrics::Heap {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// A C string pointer jemalloc reads once at start-up.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points to a static, immutable string.
unsafe impl Sync for MallocConf {}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log_level, args.log_format);
    let client = tooljet_operator::apiclient::infer().await?;
    let version = client.apiserver_version().await?;
    let instance = args.instance.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    info!(apiserver = %version.git_version, %instance, "tooljet-operator starting");

    let webhook = (!args.no_webhook).then(|| WebhookOptions {
        addr: args.webhook_addr,
        certs: match &args.webhook_cert_dir {
            Some(dir) => certs::Source::Files { dir: dir.clone() },
            None => certs::Source::SelfManaged {
                namespace: args.namespace.clone(),
                secret: args.webhook_secret.clone(),
                hosts: if args.webhook_hosts.is_empty() {
                    vec![format!("tooljet-operator-webhook.{}.svc", args.namespace)]
                } else {
                    args.webhook_hosts.clone()
                },
                configurations: args.webhook_configurations.clone(),
            },
        },
        access_review_ttl: args.access_review_ttl,
    });
    let leadership = if args.leader_elect {
        Leadership::elect(
            client.clone(),
            LeaseSettings::new(&args.namespace, &args.lease_name, &instance),
        )
    } else {
        Leadership::always()
    };
    let options = Options {
        settings: Settings {
            concurrency: args.concurrency,
            instance,
            allow_local_endpoints: args.notifications_allow_local_endpoints,
        },
        namespace: args.namespace.clone(),
        health_addr: Some(args.health_addr),
        liveness: Liveness {
            ready_deadline: args.ready_deadline,
        },
        webhook,
        heap: Some(heap),
    };
    operator::run(client, options, leadership).await?;
    info!("tooljet-operator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_review_ttls_are_zero_to_a_minute() {
        assert_eq!(parse_ttl("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_ttl("5s"),
            Ok(tooljet_operator::webhook::access::DEFAULT_TTL)
        );
        assert_eq!(parse_ttl("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_ttl("61s").unwrap_err().contains("at most 1m"));
        assert!(parse_ttl("5").is_err());
        assert!(parse_ttl("-5s").is_err());
    }
}
