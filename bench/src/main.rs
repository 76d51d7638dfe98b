//! `cargo xtask bench`: the operator, as a black box (its release binary, its flags, its
//! `/metrics`), measured against floors on the same machine, each scale point on a fresh local
//! control plane.
//!
//! Per scale point ([`run_point`]): the workload is applied with the operator stopped; the Secret
//! floor and the contract floor are measured back to back in namespaces of their own, which are
//! then deleted ([`floors`]); the operator starts and the clock runs until every Secret and
//! status is what it must be ([`converge`]). At `--apps` (the main point) also: change latency
//! ([`latency`]), idle after a restart ([`idle`]) and admission cost ([`admission`]). CPU seconds
//! per process and phase come from `/proc` ([`cpu`]). The typed [`results::Results`] are written
//! as JSON and as the table of `docs/benchmarks.md`.

mod admission;
mod cluster;
mod converge;
mod cpu;
mod floors;
mod idle;
mod latency;
mod operator;
mod peers;
mod prom;
mod results;
mod sizes;
mod workload;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use k8s_openapi::jiff::Timestamp;

use crate::{
    cluster::{Cluster, NS, OPERATOR_NS},
    cpu::Snapshot,
    floors::{CONTRACT_FLOOR_NS, SECRET_FLOOR_NS},
    operator::Operator,
    results::{Changes, Convergence, Results, Role, ScalePoint, StatusBytes},
    workload::{Workload, apply_all},
};

#[derive(Parser, Debug)]
struct Args {
    /// Apps at the main scale point (x3 EnvironmentConfigs, x2 AppVersions); every phase runs there.
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// Apps at a smaller point (floors, convergence, memory); 0 skips it.
    #[arg(long, default_value_t = 100)]
    small: usize,
    /// Apps at a larger point (floors, convergence, memory), e.g. 5000; opt-in.
    #[arg(long)]
    large: Option<usize>,
    /// Concurrency of the bulk writes, the floors and the operator's reconcilers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Samples per change-latency measurement (config change, Secret rotation).
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// First-stage edits per admission measurement (with and without the webhooks).
    #[arg(long, default_value_t = 300)]
    admission: usize,
    /// Promotions in the admission measurement.
    #[arg(long, default_value_t = 300)]
    promotions: usize,
    /// The idle window after a restart.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// The operator binary (release build).
    #[arg(long, required_unless_present = "from")]
    operator: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Rewrite the results section of this Markdown file; only a run at the reference sizes
    /// (the defaults, or larger) does.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Measure nothing: print (and write into --markdown) the table of these results.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Measure only memory and admission at real ToolJet app sizes (one app of 400 versions of
    /// 200 KiB, 100 apps of 20 versions of 40 KiB, each beside its 1 KiB twin), `--repeat` times.
    #[arg(long)]
    sizes: bool,
    /// Repetitions of each `--sizes` workload.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Measure the peers (External Secrets Operator, Reloader) at the main point, after the
    /// operator's phases (the default; `cargo xtask bench` builds them first).
    #[arg(long, conflicts_with = "no_peers")]
    peers: bool,
    /// Leave the peers out.
    #[arg(long)]
    no_peers: bool,
}

impl Args {
    /// Whether this run's sizes are the reference ones (those of the targets).
    fn is_reference(&self) -> bool {
        self.apps >= 1000
            && self.changes >= 300
            && self.admission >= 300
            && self.promotions >= 300
            && self.idle_seconds >= 60
    }
}

/// What only the main point measures.
struct Full {
    changes: Changes,
    idle: idle::Idle,
    admission: admission::Admission,
    peers: Option<peers::Peers>,
}

const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(1800);
/// The floors' cleanup is over when the apiserver has served no request on the profiled
/// resources for this long ([`cluster::Cluster::settle`]).
const SETTLE_QUIET: Duration = Duration::from_secs(3);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

fn start_operator(args: &Args, cluster: &Cluster, extra: &[&str], log: &Path) -> Result<Operator> {
    let bin = args.operator.as_deref().context("--operator is required")?;
    Operator::start(bin, cluster.kubeconfig(), args.concurrency, extra, log)
}

async fn run_point(
    args: &Args,
    role: Role,
    apps: usize,
    dir: &Path,
) -> Result<(ScalePoint, Option<Full>)> {
    println!(
        "== N = {apps} apps ({} EnvironmentConfigs, {} AppVersions, {} ToolJetApps)",
        apps * 3,
        apps * 2,
        apps
    );
    let cluster =
        Cluster::start(dir, &[NS, OPERATOR_NS, SECRET_FLOOR_NS, CONTRACT_FLOOR_NS]).await?;
    let client = cluster.client.clone();
    // The installation's hash key, made now (the operator then reads it), so that the expected
    // hashes can be computed before it starts.
    let key = tooljet_operator::controller::secrets::load_or_create_hash_key(&client, OPERATOR_NS)
        .await?;
    let w = Workload::new(&key, apps)?;
    let inputs = w.inputs();
    let applied = apply_all(&client, NS, &inputs, args.concurrency).await?;
    println!(
        "   applied {} objects in {:.1}s",
        inputs.len(),
        applied.as_secs_f64()
    );

    // The floors, back to back, with the operator stopped.
    let secret_floor = floors::secret_floor(&cluster, &w, args.concurrency).await?;
    let (contract_floor, floor_status_bytes) =
        floors::contract_floor(&cluster, &w, args.concurrency).await?;
    println!(
        "   Secret floor: {} writes in {:.2}s; contract floor: {} writes in {:.2}s",
        secret_floor.writes, secret_floor.seconds, contract_floor.writes, contract_floor.seconds
    );
    let profiled = [
        "secrets",
        "environmentconfigs",
        "appversions",
        "tooljetapps",
        "events",
    ];
    let deleted = cluster
        .delete_namespaces(&[SECRET_FLOOR_NS, CONTRACT_FLOOR_NS], CONVERGENCE_TIMEOUT)
        .await?;
    let settled = cluster
        .settle(&profiled, SETTLE_QUIET, SETTLE_TIMEOUT)
        .await?;
    let cleanup = deleted + settled;
    println!(
        "   floors' namespaces deleted in {:.1}s; the control plane settled {:.1}s later",
        deleted.as_secs_f64(),
        settled.as_secs_f64()
    );

    // Convergence.
    let verbs = [
        "GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE",
    ];
    let requests_before = cluster.requests(&verbs, &profiled).await?;
    let mut processes = cluster.processes();
    let cpu_before = Snapshot::take(&processes);
    let started = Instant::now();
    let mut operator =
        start_operator(args, &cluster, &["--no-webhook"], &dir.join("operator.log"))?;
    let (took, peak_kib) =
        converge::converge(&client, NS, &w, &operator, started, CONVERGENCE_TIMEOUT).await?;
    processes.push(operator.process());
    let cpu = Snapshot::take(&processes).since(&cpu_before);
    let requests = cluster::difference(
        &requests_before,
        &cluster.requests(&verbs, &profiled).await?,
    );
    operator.wait_metrics(Duration::from_secs(30)).await?;
    operator.wait_quiet().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady_kib = operator.memory_kib("VmRSS:");
    let operator_status_bytes = floors::status_bytes(&client, NS).await?;
    println!(
        "   converged in {:.2}s ({:.2}x the contract floor, {:.2}x the Secret floor); RSS peak {} MiB, steady {} MiB",
        took.as_secs_f64(),
        took.as_secs_f64() / contract_floor.seconds,
        took.as_secs_f64() / secret_floor.seconds,
        peak_kib / 1024,
        steady_kib / 1024
    );
    println!("   CPU s while converging: {}", cpu.describe());
    println!("   requests while converging: {requests:?}");
    let point = ScalePoint {
        role,
        apps,
        environment_configs: apps * 3,
        app_versions: apps * 2,
        tooljet_apps: apps,
        secrets: w.outputs.len(),
        managed_objects: w.managed_objects(),
        apply_seconds: applied.as_secs_f64(),
        floor_cleanup_seconds: cleanup.as_secs_f64(),
        convergence: Convergence {
            seconds: took.as_secs_f64(),
            over_contract_floor: took.as_secs_f64() / contract_floor.seconds,
            over_secret_floor: took.as_secs_f64() / secret_floor.seconds,
            cpu,
            requests,
            rss_peak_mib: peak_kib as f64 / 1024.0,
            rss_steady_mib: steady_kib as f64 / 1024.0,
        },
        status_bytes: floor_status_bytes
            .into_iter()
            .map(|(kind, floor)| {
                let operator = operator_status_bytes.get(&kind).copied();
                (kind, StatusBytes { floor, operator })
            })
            .collect(),
        secret_floor,
        contract_floor,
    };
    if role != Role::Main {
        operator.stop();
        return Ok((point, None));
    }

    let config = latency::config_changes(&cluster, &operator, &w, args.changes).await?;
    println!(
        "   config change latency: {:?} (quiet timeouts {})",
        config.latency, config.quiet_timeouts
    );
    let rotation = latency::rotations(&cluster, &operator, args.changes).await?;
    println!(
        "   Secret rotation latency: {:?} (quiet timeouts {})",
        rotation.latency, rotation.quiet_timeouts
    );

    operator.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle, mut operator) = idle::after_restart(
        &cluster,
        |log| start_operator(args, &cluster, &["--no-webhook"], log),
        args.idle_seconds,
        &dir.join("operator-restart.log"),
    )
    .await?;
    println!(
        "   idle {} s after a restart: {} writes {:?}, operator CPU {:.2} s",
        idle.seconds, idle.writes, idle.writes_by_request, idle.operator_cpu_seconds
    );
    operator.stop();

    let port = operator::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let operator = start_operator(
        args,
        &cluster,
        &["--webhook-addr", &addr, "--webhook-host", "127.0.0.1"],
        &dir.join("operator-webhook.log"),
    )?;
    operator.wait_metrics(Duration::from_secs(60)).await?;
    let admission = admission::measure(
        &cluster,
        &operator,
        port,
        apps,
        args.admission,
        args.promotions,
    )
    .await?;
    println!(
        "   admission: validating calls on edits {}, added p50/p99 {:.2}/{:.2} ms, calls without {}",
        admission.validating_calls_on_edits,
        admission.added_p50_ms,
        admission.added_p99_ms,
        admission.calls_without
    );
    drop(operator);
    let peers = if args.no_peers {
        None
    } else {
        let operator = peers::OperatorFigures {
            convergence_seconds: point.convergence.seconds,
            cpu_seconds: point
                .convergence
                .cpu
                .seconds
                .get("operator")
                .copied()
                .unwrap_or(0.0),
            rss_peak_mib: point.convergence.rss_peak_mib,
            rotation: rotation.latency.clone(),
        };
        let opts = peers::Options {
            changes: args.changes,
            concurrency: args.concurrency,
            steady_seconds: args.idle_seconds,
            operator,
        };
        Some(peers::measure(&cluster, &w, &opts, dir).await)
    };
    Ok((
        point,
        Some(Full {
            changes: Changes { config, rotation },
            idle,
            admission,
            peers,
        }),
    ))
}

/// Copies the operator's logs (`RUST_LOG=warn`: its warnings and errors) of every point from the
/// run's scratch directory to `to/<point>/`, replacing those of an earlier run.
fn keep_operator_logs(root: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    for point in ["small", "main", "large"] {
        let Ok(entries) = std::fs::read_dir(root.join(point)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("operator") {
                let dir = to.join(point);
                let copied = std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::copy(entry.path(), dir.join(&name)));
                if let Err(e) = copied {
                    eprintln!("could not keep {}: {e}", entry.path().display());
                }
            }
        }
    }
}

async fn measure(args: &Args) -> Result<Results> {
    let root = std::env::temp_dir().join(format!("tooljet-bench-{}", std::process::id()));
    let mut points = vec![];
    if args.small > 0 && args.small < args.apps {
        points.push(
            run_point(args, Role::Small, args.small, &root.join("small"))
                .await?
                .0,
        );
    }
    let (main, full) = run_point(args, Role::Main, args.apps, &root.join("main")).await?;
    points.push(main);
    if let Some(large) = args.large.filter(|l| *l > args.apps) {
        points.push(
            run_point(args, Role::Large, large, &root.join("large"))
                .await?
                .0,
        );
    }
    keep_operator_logs(&root, &args.out.with_file_name("logs"));
    let _ = std::fs::remove_dir_all(&root);
    Ok(Results {
        date: Timestamp::now().to_string().chars().take(10).collect(),
        machine: results::Machine::this(),
        concurrency: args.concurrency,
        reference: args.is_reference(),
        points,
        changes: full.as_ref().map(|f| f.changes.clone()),
        idle: full.as_ref().map(|f| f.idle.clone()),
        peers: full.as_ref().and_then(|f| f.peers.clone()),
        admission: full.map(|f| f.admission),
    })
}

/// `--sizes`: each workload and its 1 KiB twin, alternating, `--repeat` times.
async fn measure_sizes(args: &Args) -> Result<()> {
    let bin = args.operator.as_deref().context("--operator is required")?;
    let root = std::env::temp_dir().join(format!("tooljet-bench-sizes-{}", std::process::id()));
    let mut results = vec![];
    for round in 0..args.repeat {
        for (shape, twin) in sizes::shapes() {
            for s in [shape, twin] {
                let dir = root.join(format!("{round}-{}x{}x{}", s.apps, s.versions, s.kib));
                let r = sizes::measure(bin, s, &dir).await?;
                println!("{}", sizes::table(std::slice::from_ref(&r)));
                results.push(r);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    let out = args.out.with_file_name("sizes.json");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!(
        "\n{}\n{}\nresults written to {}",
        sizes::table(&results),
        sizes::summary(&results),
        out.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.sizes {
        return measure_sizes(&args).await;
    }
    let results = match &args.from {
        Some(from) => serde_json::from_str(
            &std::fs::read_to_string(from)
                .with_context(|| format!("reading {}", from.display()))?,
        )?,
        None => {
            let results = measure(&args).await?;
            if let Some(parent) = args.out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
            println!("results written to {}", args.out.display());
            results
        }
    };
    println!("\n{}", results.table());
    if let Some(md) = &args.markdown {
        if results.reference {
            results.write_markdown(md)?;
            println!("updated {}", md.display());
        } else {
            println!(
                "{} left as it is: not a run at the reference sizes (--apps >= 1000, --changes, \
                 --admission, --promotions >= 300, --idle-seconds >= 60)",
                md.display()
            );
        }
    }
    Ok(())
}
