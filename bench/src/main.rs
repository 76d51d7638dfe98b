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
mod chart;
mod cluster;
mod converge;
mod cpu;
mod floors;
mod idle;
mod latency;
mod operator;
mod peers;
mod prom;
mod replicas;
mod results;
mod rss;
mod sizes;
mod workload;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use k8s_openapi::jiff::Timestamp;
use kube::Client;

use crate::{
    chart::Chart,
    cluster::{Cluster, NS, OPERATOR_NS},
    cpu::Snapshot,
    floors::{CONTRACT_FLOOR_NS, Floor, SECRET_FLOOR_NS},
    replicas::Replicas,
    results::{
        Changes, Convergence, HeapMib, Repetition, Results, Role, ScalePoint, Spreads, StatusBytes,
    },
    rss::{Sampler, Spread},
    workload::{Definitions, Workload, apply_all},
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
    /// Repetitions of the floors and the convergence at the main and large points (each on a
    /// fresh control plane), and of each `--sizes` workload.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The floors' concurrencies swept in a point's first repetition; the fastest is kept and
    /// used by its other repetitions.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 32, 64])]
    floor_concurrency: Vec<usize>,
    /// Every AppVersion definition of this many KiB (the size sweep), instead of the realistic
    /// spread (median 40 KiB, one in 20 at 400 KiB).
    #[arg(long)]
    definition_kib: Option<usize>,
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
            && self.large.is_some_and(|l| l >= 5000)
            && self.repeat >= 3
            && self.definition_kib.is_none()
            && self.changes >= 300
            && self.admission >= 300
            && self.promotions >= 300
            && self.idle_seconds >= 60
    }

    fn repeat_for(&self, role: Role) -> usize {
        match role {
            Role::Small => 1,
            _ => self.repeat.max(1),
        }
    }

    fn definitions(&self) -> Definitions {
        match self.definition_kib {
            Some(kib) => Definitions::Uniform(kib),
            None => Definitions::Realistic,
        }
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

/// A fresh control plane with the chart installed and its two replicas running (no leader yet)
/// and the workload applied through admission.
struct Setup {
    cluster: Cluster,
    chart: Chart,
    replicas: Replicas,
    webhook_port: u16,
    w: Workload,
    /// The chart's ServiceAccount: what the floors write as.
    operator_client: Client,
    applied: Duration,
    /// Both replicas' RSS while the workload was created through admission (the standby serving
    /// it), by phase name.
    creation: BTreeMap<String, rss::PhaseRss>,
}

async fn setup(args: &Args, apps: usize, dir: &Path, sampler: &Sampler) -> Result<Setup> {
    std::fs::create_dir_all(dir)?;
    let cluster = Cluster::start(dir, &[NS, OPERATOR_NS]).await?;
    let client = cluster.client.clone();
    // The installation's hash key, made now (the operator then reads it), so that the expected
    // hashes can be computed before it starts.
    let key = tooljet_operator::controller::secrets::load_or_create_hash_key(&client, OPERATOR_NS)
        .await?;
    let w = Workload::new(&key, apps, args.definitions())?;
    let webhook_port = operator::free_port()?;
    let chart = chart::install(&cluster, &format!("https://127.0.0.1:{webhook_port}"), dir).await?;
    println!("   the chart's objects applied: {:?}", chart.applied);
    let bin = args.operator.as_deref().context("--operator is required")?;
    let replicas = Replicas::start(bin, &cluster, &chart, webhook_port, &[], dir, "0").await?;
    replicas.sampled_by(sampler);
    // Through admission, as people create them: the references and stage record are stamped.
    let started = Instant::now();
    apply_all(&client, NS, w.secrets.iter().cloned(), args.concurrency).await?;
    apply_all(&client, NS, w.tooljetapps.iter().cloned(), args.concurrency).await?;
    apply_all(&client, NS, w.configs.iter().cloned(), args.concurrency).await?;
    apply_all(
        &client,
        NS,
        (0..w.versions.len()).map(|k| w.version(k)),
        args.concurrency,
    )
    .await?;
    let applied = started.elapsed();
    let done = Instant::now();
    let (caching, serving) = (
        sampler.phase("operator", started, done),
        sampler.phase("standby", started, done),
    );
    println!(
        "   applied {} objects ({:.0} MiB of definitions) through admission in {:.1}s; RSS peak \
         {:.1} MiB (leader-to-be) / {:.1} MiB (standby, serving)",
        w.inputs_len(),
        w.definition_bytes as f64 / 1048576.0,
        applied.as_secs_f64(),
        caching.peak_mib,
        serving.peak_mib
    );
    let creation = BTreeMap::from([
        (
            "creation through admission (leader-to-be, caching)".to_string(),
            caching,
        ),
        (
            "creation through admission (standby, serving)".to_string(),
            serving,
        ),
    ]);
    let operator_client = cluster::client_from(&chart.kubeconfig, None).await?;
    Ok(Setup {
        cluster,
        chart,
        replicas,
        webhook_port,
        w,
        operator_client,
        applied,
        creation,
    })
}

impl Setup {
    /// Stops both replicas, waits 2 s.
    async fn stop_replicas(&mut self) {
        self.replicas.stop();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    /// Starts both replicas again (the old ones stopped) with the chart's arguments and `extra`
    /// (logs in `dir/<tag>`), sampled by `sampler`; returns once the new replica A leads.
    async fn start_replicas(
        &mut self,
        args: &Args,
        sampler: &Sampler,
        extra: &[String],
        dir: &Path,
        tag: &str,
    ) -> Result<()> {
        let bin = args.operator.as_deref().context("--operator is required")?;
        let logs = dir.join(tag);
        std::fs::create_dir_all(&logs)?;
        self.replicas = Replicas::start(
            bin,
            &self.cluster,
            &self.chart,
            self.webhook_port,
            extra,
            &logs,
            tag,
        )
        .await?;
        self.replicas.sampled_by(sampler);
        self.replicas.hand_over(&self.cluster).await?;
        Ok(())
    }
}

/// Both floors at `concurrency`, in namespaces of their own, deleted afterwards.
async fn floors_at(s: &Setup, concurrency: usize) -> Result<(Floor, Floor, BTreeMap<String, f64>)> {
    let (secrets_ns, contract_ns) = (
        format!("{SECRET_FLOOR_NS}-{concurrency}"),
        format!("{CONTRACT_FLOOR_NS}-{concurrency}"),
    );
    s.cluster.create_namespace(&secrets_ns).await?;
    s.cluster.create_namespace(&contract_ns).await?;
    let secret_floor = floors::secret_floor(
        &s.cluster,
        &s.operator_client,
        &secrets_ns,
        &s.w,
        concurrency,
    )
    .await?;
    let (contract_floor, bytes) = floors::contract_floor(
        &s.cluster,
        &s.operator_client,
        &contract_ns,
        &s.w,
        concurrency,
    )
    .await?;
    println!(
        "   floors at concurrency {concurrency}: Secret {} writes in {:.2}s; contract {} writes in {:.2}s",
        secret_floor.writes, secret_floor.seconds, contract_floor.writes, contract_floor.seconds
    );
    let deleted = s
        .cluster
        .delete_namespaces(&[&secrets_ns, &contract_ns], CONVERGENCE_TIMEOUT)
        .await?;
    let settled = s
        .cluster
        .settle(&floors::PROFILED, SETTLE_QUIET, SETTLE_TIMEOUT)
        .await?;
    println!(
        "   floors' namespaces deleted in {:.1}s; settled {:.1}s later",
        deleted.as_secs_f64(),
        settled.as_secs_f64()
    );
    Ok((secret_floor, contract_floor, bytes))
}

/// One repetition: the floors (at each of `concurrencies`, the fastest kept), then the
/// operator's convergence from the moment its leader is elected.
async fn repetition(
    s: &mut Setup,
    concurrencies: &[usize],
    sampler: &Sampler,
) -> Result<(Repetition, BTreeMap<String, f64>)> {
    let (mut best_secret, mut best_contract, mut bytes): (Option<Floor>, Option<Floor>, _) =
        (None, None, BTreeMap::new());
    for &c in concurrencies {
        let (sf, cf, b) = floors_at(s, c).await?;
        if best_secret.as_ref().is_none_or(|f| sf.seconds < f.seconds) {
            best_secret = Some(sf);
        }
        if best_contract
            .as_ref()
            .is_none_or(|f| cf.seconds < f.seconds)
        {
            best_contract = Some(cf);
            bytes = b;
        }
    }
    let (secret_floor, contract_floor) = (
        best_secret.context("no floor concurrency")?,
        best_contract.context("no floor concurrency")?,
    );

    let requests_before = s
        .cluster
        .requests(&floors::VERBS, &floors::PROFILED)
        .await?;
    let mut processes = s.cluster.processes();
    processes.extend(s.replicas.processes());
    let cpu_before = Snapshot::take(&processes);
    let (handed, acquired) = s.replicas.hand_over(&s.cluster).await?;
    let took =
        converge::converge(&s.cluster.client, NS, &s.w, acquired, CONVERGENCE_TIMEOUT).await?;
    let converged = Instant::now();
    let cpu = Snapshot::take(&processes).since(&cpu_before);
    let requests = cluster::difference(
        &requests_before,
        &s.cluster
            .requests(&floors::VERBS, &floors::PROFILED)
            .await?,
    );
    s.replicas.leader.wait_quiet().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady_kib = s.replicas.leader.memory_kib("VmRSS:");
    let heap_steady = s
        .replicas
        .leader
        .metrics()
        .await
        .as_ref()
        .and_then(HeapMib::of);
    let rss = sampler.phase("operator", acquired, converged);
    let standby_rss = sampler.phase("standby", acquired, converged);
    let seconds = took.as_secs_f64();
    println!(
        "   converged in {seconds:.2}s after the leader's election ({:.2}s after the hand-over; \
         {:.2}x the contract floor, {:.2}x the Secret floor); RSS peak {:.1} MiB, median {:.1}, \
         steady {:.1} ({})",
        converged.duration_since(handed).as_secs_f64(),
        seconds / contract_floor.seconds,
        seconds / secret_floor.seconds,
        rss.peak_mib,
        rss.median_mib,
        steady_kib as f64 / 1024.0,
        HeapMib::describe(heap_steady)
    );
    println!("   CPU s while converging: {}", cpu.describe());
    Ok((
        Repetition {
            convergence: Convergence {
                seconds,
                over_contract_floor: seconds / contract_floor.seconds,
                over_secret_floor: seconds / secret_floor.seconds,
                cpu,
                requests,
                rss_peak_mib: rss.peak_mib,
                rss_steady_mib: steady_kib as f64 / 1024.0,
                heap_steady,
            },
            from_hand_over_seconds: converged.duration_since(handed).as_secs_f64(),
            rss,
            standby_rss,
            apply_seconds: s.applied.as_secs_f64(),
            secret_floor,
            contract_floor,
        },
        bytes,
    ))
}

async fn run_point(
    args: &Args,
    role: Role,
    apps: usize,
    dir: &Path,
) -> Result<(ScalePoint, Option<Full>)> {
    println!(
        "== N = {apps} apps ({} EnvironmentConfigs, {} AppVersions, {} ToolJetApps), {} repetition(s)",
        apps * 3,
        apps * 2,
        apps,
        args.repeat_for(role)
    );
    let sampler = Sampler::start();
    let mut reps = vec![];
    let mut floor_bytes = BTreeMap::new();
    let mut concurrencies = args.floor_concurrency.clone();
    let repeat = args.repeat_for(role);
    let mut last = None;
    for r in 0..repeat {
        println!("-- repetition {} of {repeat}", r + 1);
        let mut s = setup(args, apps, &dir.join(format!("rep-{r}")), &sampler).await?;
        let (rep, bytes) = repetition(&mut s, &concurrencies, &sampler).await?;
        // The sweep runs once per point; the repetitions after it use its fastest concurrency.
        concurrencies = vec![rep.contract_floor.concurrency];
        floor_bytes = bytes;
        reps.push(rep);
        if r + 1 == repeat {
            last = Some(s);
        } else {
            s.replicas.stop();
        }
    }
    let mut s = last.context("no repetition")?;
    let operator_status_bytes = floors::status_bytes(&s.cluster.client, NS).await?;
    let median = |f: fn(&Repetition) -> f64| Spread::of(reps.iter().map(f));
    let spreads = Spreads {
        convergence_seconds: median(|r| r.convergence.seconds),
        over_contract_floor: median(|r| r.convergence.over_contract_floor),
        over_secret_floor: median(|r| r.convergence.over_secret_floor),
        contract_floor_seconds: median(|r| r.contract_floor.seconds),
        secret_floor_seconds: median(|r| r.secret_floor.seconds),
        rss_peak_mib: median(|r| r.rss.peak_mib),
        rss_median_mib: median(|r| r.rss.median_mib),
        rss_steady_mib: median(|r| r.convergence.rss_steady_mib),
        operator_cpu_seconds: median(|r| {
            r.convergence
                .cpu
                .seconds
                .get("operator")
                .copied()
                .unwrap_or(f64::NAN)
        }),
    };
    // The repetition whose convergence is the median one stands for the point in the details.
    let mut order: Vec<usize> = (0..reps.len()).collect();
    order.sort_by(|a, b| {
        reps[*a]
            .convergence
            .seconds
            .total_cmp(&reps[*b].convergence.seconds)
    });
    let mid = &reps[order[order.len() / 2]];
    let point = ScalePoint {
        role,
        apps,
        environment_configs: apps * 3,
        app_versions: apps * 2,
        tooljet_apps: apps,
        secrets: s.w.outputs.len(),
        managed_objects: s.w.managed_objects(),
        definition_bytes: s.w.definition_bytes,
        apply_seconds: mid.apply_seconds,
        secret_floor: mid.secret_floor.clone(),
        contract_floor: mid.contract_floor.clone(),
        convergence: mid.convergence.clone(),
        status_bytes: floor_bytes
            .into_iter()
            .map(|(kind, floor)| {
                let operator = operator_status_bytes.get(&kind).copied();
                (kind, StatusBytes { floor, operator })
            })
            .collect(),
        spreads: Some(spreads),
        repetitions: reps,
        memory_limit: s.chart.memory_limit.clone(),
        rss_phases: s.creation.clone(),
    };
    if role != Role::Main {
        s.replicas.stop();
        return Ok((point, None));
    }
    let mut point = point;
    let phase = |name: &str, from: Instant| {
        (
            name.to_string(),
            sampler.phase("operator", from, Instant::now()),
        )
    };

    let t = Instant::now();
    let config =
        latency::config_changes(&s.cluster, &s.replicas.leader, &s.w, args.changes).await?;
    point.rss_phases.extend([phase("config changes", t)]);
    println!(
        "   config change latency: {:?} (quiet timeouts {})",
        config.latency, config.quiet_timeouts
    );
    let t = Instant::now();
    let rotation = latency::rotations(&s.cluster, &s.replicas.leader, args.changes).await?;
    point.rss_phases.extend([phase("rotations", t)]);
    println!(
        "   Secret rotation latency: {:?} (quiet timeouts {})",
        rotation.latency, rotation.quiet_timeouts
    );

    let t = Instant::now();
    let restart =
        latency::rotations_to_restart(&s.cluster, &s.replicas.leader, args.changes).await?;
    point
        .rss_phases
        .extend([phase("rotations to a restart", t)]);
    println!(
        "   rotation to a workload restart: {:?} (quiet timeouts {})",
        restart.latency, restart.quiet_timeouts
    );

    // Idle after a restart of both replicas (a rolling update's end state).
    s.stop_replicas().await;
    let before = s
        .cluster
        .requests(&cluster::WRITE_VERBS, &idle::WRITTEN)
        .await?;
    let mut processes = s.cluster.processes();
    let cpu_before = Snapshot::take(&processes);
    let t = Instant::now();
    s.start_replicas(args, &sampler, &[], dir, "restart")
        .await?;
    let elapsed = t.elapsed();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds).saturating_sub(elapsed)).await;
    processes.extend(s.replicas.processes());
    let idle = idle::Idle::measured(
        &s.cluster,
        &s.replicas.leader,
        &before,
        &processes,
        &cpu_before,
        args.idle_seconds,
    )
    .await?;
    point.rss_phases.extend([phase("restart and idle", t)]);
    println!(
        "   idle {} s after a restart: {} writes {:?}, operator CPU {:.2} s ({})",
        idle.seconds,
        idle.writes,
        idle.writes_by_request,
        idle.operator_cpu_seconds,
        HeapMib::describe(idle.heap)
    );

    // Admission: the standby serves it, asking the apiserver on every access.
    s.stop_replicas().await;
    s.start_replicas(
        args,
        &sampler,
        &["--access-review-ttl=0s".to_string()],
        dir,
        "admission",
    )
    .await?;
    s.replicas.leader.wait_quiet().await;
    let people = admission::people(&s.cluster).await?;
    let t = Instant::now();
    let admission = admission::measure(
        &s.cluster,
        &s.replicas.leader,
        &s.replicas.standby,
        &s.chart.webhooks,
        &people,
        apps,
        args.admission,
        args.promotions,
    )
    .await?;
    point.rss_phases.extend([
        phase("admission (leader)", t),
        (
            "admission (standby, serving)".to_string(),
            sampler.phase("standby", t, Instant::now()),
        ),
    ]);
    println!(
        "   admission: validating calls on edits {}, added p50/p99 {:.2}/{:.2} ms, calls without {}",
        admission.validating_calls_on_edits,
        admission.added_p50_ms,
        admission.added_p99_ms,
        admission.calls_without
    );
    s.replicas.stop();
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
            restart: Some(restart.latency.clone()),
        };
        let opts = peers::Options {
            changes: args.changes,
            concurrency: args.concurrency,
            steady_seconds: args.idle_seconds,
            operator,
        };
        Some(peers::measure(&s.cluster, &s.w, &opts, dir).await)
    };
    Ok((
        point,
        Some(Full {
            changes: Changes {
                config,
                rotation,
                restart: Some(restart),
            },
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
    let mut dirs: Vec<(PathBuf, PathBuf)> = ["small", "main", "large"]
        .into_iter()
        .map(|p| (root.join(p), to.join(p)))
        .collect();
    while let Some((from, into)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&from) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let n = name.to_string_lossy();
                if n.starts_with("rep-") || n == "restart" || n == "admission" {
                    dirs.push((entry.path(), into.join(&name)));
                }
                continue;
            }
            if name.to_string_lossy().starts_with("replica") {
                let dir = into.clone();
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
    let mut results = Results {
        date: Timestamp::now().to_string().chars().take(10).collect(),
        machine: results::Machine::this(),
        concurrency: args.concurrency,
        reference: false,
        points: vec![],
        changes: None,
        idle: None,
        peers: None,
        admission: None,
        incomplete: None,
    };
    let outcome = measure_points(args, &root, &mut results).await;
    keep_operator_logs(&root, &args.out.with_file_name("logs"));
    let _ = std::fs::remove_dir_all(&root);
    match outcome {
        Ok(()) => {
            results.reference = args.is_reference();
            write_results(&args.out, &results)?;
            Ok(results)
        }
        Err(e) => {
            results.incomplete = Some(format!("{e:#}"));
            write_results(&args.out, &results)?;
            println!("\n{}", results.table());
            Err(e.context(format!(
                "the run stopped; the figures of the points before are in {}",
                args.out.display()
            )))
        }
    }
}

/// Runs the points in order into `results`, writing the file after each one, so that a point
/// that fails (the large one, where the control plane saturates first) loses only itself.
async fn measure_points(args: &Args, root: &Path, results: &mut Results) -> Result<()> {
    if args.small > 0 && args.small < args.apps {
        let (point, _) = run_point(args, Role::Small, args.small, &root.join("small"))
            .await
            .with_context(|| format!("the small point (N={})", args.small))?;
        results.points.push(point);
        write_results(&args.out, results)?;
    }
    let (main, full) = run_point(args, Role::Main, args.apps, &root.join("main"))
        .await
        .with_context(|| format!("the main point (N={})", args.apps))?;
    results.points.push(main);
    if let Some(full) = full {
        results.changes = Some(full.changes);
        results.idle = Some(full.idle);
        results.peers = full.peers;
        results.admission = Some(full.admission);
    }
    write_results(&args.out, results)?;
    if let Some(large) = args.large.filter(|l| *l > args.apps) {
        let (point, _) = run_point(args, Role::Large, large, &root.join("large"))
            .await
            .with_context(|| format!("the large point (N={large})"))?;
        results.points.push(point);
    }
    Ok(())
}

/// Writes `results` to `out` (its directory created).
fn write_results(out: &Path, results: &Results) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(results)?)
        .with_context(|| format!("writing {}", out.display()))
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
                "{} left as it is: not a run at the reference sizes (--apps >= 1000, --large >= \
                 5000, --repeat >= 3, realistic definitions, --changes, --admission, --promotions \
                 >= 300, --idle-seconds >= 60)",
                md.display()
            );
        }
    }
    Ok(())
}
