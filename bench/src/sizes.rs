//! `--sizes`: memory and admission at the size of real ToolJet apps.
//!
//! On a fresh control plane, with the operator's admission webhooks and policies installed and
//! served by the operator under test: workloads of AppVersions whose definitions are a real ToolJet
//! export grown to a size ([`testenv::definitions`]), created one at a time through admission as
//! a user would. The operator's resident memory is sampled every 250 ms through every phase:
//! creation, a restart (kill, start, ready) and steady state. Each workload is measured beside
//! the same workload with 1 KiB definitions, on a control plane of its own.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    cluster::{Cluster, OPERATOR_NS},
    operator::{Operator, free_port},
    rss::Sampler,
    workload::Kind,
};

/// One workload: `apps` apps of `versions` versions each, definitions of `kib` KiB.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Shape {
    pub apps: usize,
    pub versions: usize,
    pub kib: usize,
}

/// What one workload measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SizeResult {
    pub shape: Shape,
    /// Client-side time of `create`, ms: (versions the app had before, p50, p99, max) per
    /// bracket of the app's version count.
    pub create_ms: Vec<(usize, f64, f64, f64)>,
    /// Where a create's time went, mean ms per create: the apiserver's whole request, each
    /// AppVersion webhook as the apiserver waited for it, and as the operator decided it.
    #[serde(default)]
    pub create_breakdown_ms: Vec<(String, f64)>,
    /// Peak RSS while the versions were created, MiB.
    pub creation_peak_mib: f64,
    /// Peak RSS from a restart's start until it was ready and quiet, MiB.
    pub restart_peak_mib: f64,
    /// Seconds from a restart's start until `/readyz` answered 200.
    pub restart_ready_seconds: f64,
    /// Writes the restarted operator made in the 20 s after it was ready.
    pub restart_writes: u64,
    /// RSS 20 s after the restart, MiB.
    pub steady_mib: f64,
}

/// The namespace of the workload.
const NS: &str = "sizes";

async fn start_with_webhook(
    bin: &Path,
    cluster: &Cluster,
    log: &Path,
    port: u16,
) -> Result<(Operator, String)> {
    let addr = format!("127.0.0.1:{port}");
    let operator = Operator::start(
        bin,
        cluster.kubeconfig(),
        16,
        &["--webhook-addr", &addr, "--webhook-host", "127.0.0.1"],
        log,
    )?;
    let health = operator.health.clone();
    Ok((operator, health))
}

/// Waits until `GET /readyz` on `addr` answers 200.
async fn ready(addr: &str, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if http_status(addr, "/readyz").await == Some(200) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("the operator on {addr} was not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Measures `shape` on a fresh control plane under `dir`.
pub async fn measure(bin: &Path, shape: Shape, dir: &Path) -> Result<SizeResult> {
    let cluster = Cluster::start(dir, &[NS, OPERATOR_NS]).await?;
    let client = cluster.client.clone();
    let port = free_port()?;
    let (mut operator, health) =
        start_with_webhook(bin, &cluster, &dir.join("operator.log"), port).await?;
    ready(&health, Duration::from_secs(60)).await?;
    let endpoint =
        tooljet_operator::webhook::config::Endpoint::Url(format!("https://127.0.0.1:{port}"));
    tooljet_operator::webhook::config::install(&client, &endpoint, "bench").await?;
    let api = |kind: &str| -> Api<DynamicObject> {
        match kind {
            "ToolJetApp" => Kind::ToolJetApp.api(&client, NS),
            _ => Kind::AppVersion.api(&client, NS),
        }
    };
    // The webhook is in use once a create passes through it (the caBundle is set meanwhile).
    let app = |i: usize| -> Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
            "metadata": { "name": format!("app-{i}") }, "spec": {} }))?)
    };
    let started = Instant::now();
    while let Err(e) = api("ToolJetApp")
        .create(&PostParams::default(), &app(0)?)
        .await
    {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the webhook did not admit within 60 s: {e}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 1..shape.apps {
        api("ToolJetApp")
            .create(&PostParams::default(), &app(i)?)
            .await?;
    }
    let definitions: Vec<Value> = (0..3)
        .map(|seed| testenv::definitions::realistic(shape.kib * 1024, seed))
        .collect();

    let sampler = Sampler::start();
    sampler.watch("operator", operator.pid());
    let creating = Instant::now();
    // Versions are created app by app, as a team adds them; the time of each create is kept
    // by how many versions its app had.
    let mut by_count: Vec<Vec<f64>> = vec![vec![]; shape.versions];
    let (server_before, operator_before) = (cluster.metrics().await?, operator.metrics().await);
    let versions = api("AppVersion");
    for app in 0..shape.apps {
        for v in 0..shape.versions {
            let body: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                "metadata": { "name": format!("app-{app}-v{v}") },
                "spec": { "app": format!("app-{app}"), "versionName": format!("v{v}"),
                          "definition": definitions[(app + v) % definitions.len()] } }))?;
            let t = Instant::now();
            versions
                .create(&PostParams::default(), &body)
                .await
                .with_context(|| format!("creating AppVersion app-{app}-v{v}"))?;
            by_count[v].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    operator.wait_quiet().await;
    let creation_peak_mib = sampler.peak_since("operator", creating);
    let (server_after, operator_after) = (cluster.metrics().await?, operator.metrics().await);
    let mean = |scrape: &crate::prom::Scrape,
                before: &crate::prom::Scrape,
                base: &str,
                keep: &dyn Fn(&crate::prom::Labels) -> bool| {
        let d = |suffix: &str| {
            scrape.sum(&format!("{base}_{suffix}"), keep)
                - before.sum(&format!("{base}_{suffix}"), keep)
        };
        let count = d("count");
        (count > 0.0).then(|| d("sum") / count * 1000.0)
    };
    let is = |label: &'static str, value: &'static str| {
        move |l: &crate::prom::Labels| l.get(label).map(String::as_str) == Some(value)
    };
    let mut breakdown = vec![];
    let post = |l: &crate::prom::Labels| is("verb", "POST")(l) && is("resource", "appversions")(l);
    if let Some(ms) = mean(
        &server_after,
        &server_before,
        "apiserver_request_duration_seconds",
        &post,
    ) {
        breakdown.push(("apiserver POST appversions".to_string(), ms));
    }
    for webhook in [
        "appversions.mutate.tooljet.io",
        "appversions.validate.tooljet.io",
    ] {
        let keep = move |l: &crate::prom::Labels| {
            l.get("name").map(String::as_str) == Some(webhook) && is("operation", "CREATE")(l)
        };
        if let Some(ms) = mean(
            &server_after,
            &server_before,
            "apiserver_admission_webhook_admission_duration_seconds",
            &keep,
        ) {
            breakdown.push((format!("apiserver waiting for {webhook}"), ms));
        }
    }
    if let (Some(after), Some(before)) = (&operator_after, &operator_before) {
        for webhook in ["mutate", "validate"] {
            let keep = move |l: &crate::prom::Labels| {
                l.get("webhook").map(String::as_str) == Some(webhook)
            };
            if let Some(ms) = mean(
                after,
                before,
                "tooljet_operator_admission_duration_seconds",
                &keep,
            ) {
                breakdown.push((format!("operator deciding {webhook} (all kinds)"), ms));
            }
        }
    }
    // Windows of creates by how many versions their app already had: after 10, after 100, and
    // the last ones.
    let window = 20.min(shape.versions);
    let mut starts: Vec<usize> = [10, 100]
        .into_iter()
        .filter(|b| b + window <= shape.versions)
        .collect();
    starts.push(shape.versions - window);
    starts.dedup();
    let brackets = starts
        .into_iter()
        .map(|b| {
            let samples: Vec<f64> = by_count[b..b + window].iter().flatten().copied().collect();
            (
                b,
                percentile(&samples, 0.50),
                percentile(&samples, 0.99),
                percentile(&samples, 1.0),
            )
        })
        .collect();
    drop(sampler);

    // A restart: killed (as the OOM killer or a node loss would), started again.
    operator.stop();
    let (operator, health) =
        start_with_webhook(bin, &cluster, &dir.join("operator-restart.log"), port).await?;
    let sampler = Sampler::start();
    sampler.watch("operator", operator.pid());
    let started = Instant::now();
    ready(&health, Duration::from_secs(120)).await?;
    let restart_ready = started.elapsed();
    operator.wait_metrics(Duration::from_secs(30)).await?;
    let writes_before = writes(&operator).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let restart_writes = writes(&operator).await - writes_before;
    let restart_peak_mib = sampler.peak_since("operator", started);
    let steady_mib = operator.memory_kib("VmRSS:") as f64 / 1024.0;
    drop(sampler);
    Ok(SizeResult {
        shape,
        create_ms: brackets,
        create_breakdown_ms: breakdown,
        creation_peak_mib,
        restart_peak_mib,
        restart_ready_seconds: restart_ready.as_secs_f64(),
        restart_writes: restart_writes as u64,
        steady_mib,
    })
}

/// The `q` quantile of `samples` (nearest rank); 0 without samples.
fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn http_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

async fn writes(operator: &Operator) -> f64 {
    operator
        .metrics()
        .await
        .map(|m| m.sum("tooljet_operator_writes_total", |_| true))
        .unwrap_or(0.0)
}

/// The workloads of `--sizes`, each beside its 1 KiB twin.
pub fn shapes() -> Vec<(Shape, Shape)> {
    let twin = |s: Shape| (s, Shape { kib: 1, ..s });
    vec![
        twin(Shape {
            apps: 1,
            versions: 400,
            kib: 200,
        }),
        twin(Shape {
            apps: 100,
            versions: 20,
            kib: 40,
        }),
    ]
}

/// The table of `--sizes`.
pub fn table(results: &[SizeResult]) -> String {
    let mut out = String::from(
        "| workload | create p50/p99/max ms by versions already in the app | a create's mean ms | creation peak MiB | restart peak MiB | ready after restart s | writes after restart | steady MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let creates: Vec<String> = r
            .create_ms
            .iter()
            .map(|(n, p50, p99, max)| format!("{n}: {p50:.1}/{p99:.1}/{max:.1}"))
            .collect();
        let breakdown: Vec<String> = r
            .create_breakdown_ms
            .iter()
            .map(|(what, ms)| format!("{what} {ms:.1}"))
            .collect();
        out.push_str(&format!(
            "| {} app(s) x {} versions of {} KiB | {} | {} | {:.1} | {:.1} | {:.2} | {} | {:.1} |\n",
            r.shape.apps,
            r.shape.versions,
            r.shape.kib,
            creates.join("; "),
            breakdown.join("; "),
            r.creation_peak_mib,
            r.restart_peak_mib,
            r.restart_ready_seconds,
            r.restart_writes,
            r.steady_mib
        ));
    }
    out
}

/// Median and range of `values`, as `median (min-max)`.
fn spread(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.as_slice() {
        [] => "-".into(),
        [one] => format!("{one:.1}"),
        _ => format!("{:.1} ({:.1}-{:.1})", v[v.len() / 2], v[0], v[v.len() - 1]),
    }
}

/// Per workload, over its repetitions: medians with their range.
pub fn summary(results: &[SizeResult]) -> String {
    let mut out = String::from(
        "| workload | runs | create p50 ms | create p99 ms | creation peak MiB | restart peak MiB | ready after restart s | writes after restart | steady MiB |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut shapes: Vec<(usize, usize, usize)> = vec![];
    for r in results {
        let key = (r.shape.apps, r.shape.versions, r.shape.kib);
        if !shapes.contains(&key) {
            shapes.push(key);
        }
    }
    for (apps, versions, kib) in shapes {
        let runs: Vec<&SizeResult> = results
            .iter()
            .filter(|r| (r.shape.apps, r.shape.versions, r.shape.kib) == (apps, versions, kib))
            .collect();
        let of =
            |f: &dyn Fn(&SizeResult) -> f64| spread(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        // Every window's creates, per run: the worst window's p50 and p99.
        let worst = |i: usize| {
            move |r: &SizeResult| {
                r.create_ms
                    .iter()
                    .map(|w| if i == 0 { w.1 } else { w.2 })
                    .fold(0.0, f64::max)
            }
        };
        out.push_str(&format!(
            "| {apps} app(s) x {versions} versions of {kib} KiB | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            runs.len(),
            of(&worst(0)),
            of(&worst(1)),
            of(&|r| r.creation_peak_mib),
            of(&|r| r.restart_peak_mib),
            of(&|r| r.restart_ready_seconds),
            of(&|r| r.restart_writes as f64),
            of(&|r| r.steady_mib),
        ));
    }
    out
}
