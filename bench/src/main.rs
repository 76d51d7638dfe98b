//! `cargo xtask bench`: the operator measured against the physical floor on the same machine, in
//! one run, on a fresh local control plane per scale.
//!
//! - Scale: N apps x 3 environments (EnvironmentConfigs with 10 constants and 2 data sources,
//!   2 AppVersions per app) applied in bulk with the operator stopped, then the time from its start
//!   until every materialised and resolved Secret is correct. Floor: the same number of Secret
//!   writes issued by a tight client loop with the same concurrency.
//! - Change latency: a config patched, and a referenced Secret rotated, `--changes` times each;
//!   the time until the materialised Secret shows it, seen by a watch.
//! - Idle writes: the operator restarted on the converged system; writes in the next minute.
//! - Memory: peak and steady RSS at N and at `--small`.
//! - Admission: `--admission` AppVersion patches with the webhook registered and without.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        core::v1::{Namespace, Secret},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, conditions, wait::await_condition, watcher},
};
use serde_json::{Value, json};
use testenv::{ControlPlane, Mode};
use tooljet_operator::{
    api::{self, EnvironmentConfigSpec},
    materialize::{self, SecretData},
    webhook::config as admission,
};

#[derive(Parser, Debug)]
struct Args {
    /// Apps at the large scale (x3 EnvironmentConfigs, x2 AppVersions).
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// Apps at the small scale (memory growth).
    #[arg(long, default_value_t = 100)]
    small: usize,
    /// Concurrency of the bulk writes, the floor and the operator's reconcilers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Changes per latency measurement.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Patches per admission measurement.
    #[arg(long, default_value_t = 500)]
    admission: usize,
    /// How long to count writes after a restart.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// The operator binary (release build).
    #[arg(long)]
    operator: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Rewrite the results section of this Markdown file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

const NS: &str = "bench";
const STAGES: [&str; 3] = ["development", "staging", "production"];

struct Cluster {
    cp: ControlPlane,
    client: Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cp.kill();
    }
}

impl Cluster {
    async fn start(dir: &Path) -> Result<Cluster> {
        // Attached: the control plane dies with this (main) thread whatever happens.
        let cp = ControlPlane::start(dir, Mode::Attached)?;
        let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig)?;
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.read_timeout = Some(Duration::from_secs(300));
        let client = Client::try_from(config)?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in api::crds() {
            let name = crd.name_any();
            crds.patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&crd),
            )
            .await?;
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(crds.clone(), &name, conditions::is_crd_established()),
            )
            .await??;
        }
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in [NS, "tooljet-system", "floor"] {
            let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
            namespaces.create(&PostParams::default(), &ns).await?;
        }
        Ok(Cluster { cp, client })
    }

    /// Write requests the apiserver has served, by "VERB resource/subresource".
    fn apiserver_writes(&self, resources: &[&str]) -> Result<BTreeMap<String, u64>> {
        self.apiserver_requests(&["POST", "PUT", "PATCH", "APPLY", "DELETE"], resources)
    }

    /// Requests the apiserver has served with these verbs, by "VERB resource/subresource".
    fn apiserver_requests(
        &self,
        verbs: &[&str],
        resources: &[&str],
    ) -> Result<BTreeMap<String, u64>> {
        let metrics = self.cp.kubectl(&["get", "--raw", "/metrics"])?;
        let label = |line: &str, name: &str| -> String {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let mut counts = BTreeMap::new();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
        {
            let (verb, resource, sub) = (
                label(line, "verb"),
                label(line, "resource"),
                label(line, "subresource"),
            );
            if !verbs.contains(&verb.as_str()) || !resources.contains(&resource.as_str()) {
                continue;
            }
            let value = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            let key = if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            };
            *counts.entry(key).or_insert(0) += value;
        }
        Ok(counts)
    }
}

/// The workload for `apps` apps, and what the operator must produce from it.
struct Workload {
    secrets: Vec<Value>,
    apps: Vec<Value>,
    configs: Vec<Value>,
    versions: Vec<Value>,
    /// Materialised Secret name -> expected hash.
    expected: BTreeMap<String, String>,
    /// Resolved Secret name -> expected hash.
    expected_resolved: BTreeMap<String, String>,
    /// The data the operator writes, for the floor.
    outputs: Vec<BTreeMap<String, Vec<u8>>>,
}

fn workload(key: &materialize::HashKey, apps: usize) -> Result<Workload> {
    let mut w = Workload {
        secrets: vec![],
        apps: vec![],
        configs: vec![],
        versions: vec![],
        expected: BTreeMap::new(),
        expected_resolved: BTreeMap::new(),
        outputs: vec![],
    };
    for i in 0..apps {
        let app = format!("app-{i}");
        w.apps.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": app }, "spec": {} }));
        let mut by_stage = BTreeMap::new();
        for stage in STAGES {
            let creds = format!("creds-{i}-{stage}");
            let secret_values: BTreeMap<String, String> = [
                ("db-password", format!("pw-{i}-{stage}")),
                ("api-token", format!("tok-{i}-{stage}")),
                ("s0", format!("secret-0-{i}-{stage}")),
                ("s1", format!("secret-1-{i}-{stage}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            w.secrets.push(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": creds }, "stringData": secret_values }));
            let mut constants: Vec<Value> = (0..8)
                .map(|k| json!({ "name": format!("C{k}"), "type": "Global", "value": format!("value-{k}-{i}-{stage}") }))
                .collect();
            for k in 0..2 {
                constants.push(json!({ "name": format!("S{k}"), "type": "Secret", "valueFrom": { "secretKeyRef": { "name": creds, "key": format!("s{k}") } } }));
            }
            let spec = json!({
                "app": app, "environment": stage,
                "dataSources": [
                    { "name": "db", "kind": "postgresql", "options": { "host": format!("db-{i}.{stage}.internal"), "port": 5432, "database": "app" },
                      "secretOptions": { "password": { "secretKeyRef": { "name": creds, "key": "db-password" } } } },
                    { "name": "api", "kind": "restapi", "options": { "url": format!("https://api.{stage}.example/{i}") },
                      "secretOptions": { "token": { "secretKeyRef": { "name": creds, "key": "api-token" } } } },
                ],
                "constants": constants,
            });
            let typed: EnvironmentConfigSpec = serde_json::from_value(spec.clone())?;
            let data: SecretData = [(
                creds.clone(),
                secret_values
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect(),
            )]
            .into();
            let m = materialize::materialize(key, stage, &[&typed], &data)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            w.expected
                .insert(materialize::secret_name(Some(&app), stage), m.hash.clone());
            by_stage.insert(stage, m.data.clone());
            w.outputs.push(m.data);
            w.configs.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig", "metadata": { "name": format!("{app}-{stage}") }, "spec": spec }));
        }
        for v in 1..=2 {
            let name = format!("{app}-v{v}");
            w.versions.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": name },
                "spec": { "app": app, "versionName": format!("v{v}"), "environment": "development",
                          "definition": { "queries": [{ "url": "{{constants.C0}}/x", "auth": "{{secrets.S0}}" }] } } }));
            let resolved = materialize::merge_layers(key, &[&by_stage["development"]]);
            w.expected_resolved.insert(
                materialize::resolved_secret_name(&name),
                resolved.hash.clone(),
            );
            w.outputs.push(resolved.data);
        }
    }
    Ok(w)
}

async fn apply_all(
    client: &Client,
    ns: &str,
    objects: &[Value],
    concurrency: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let apply = PatchParams::apply("bench").force();
    stream::iter(objects.iter().cloned())
        .map(|obj| {
            let client = client.clone();
            let apply = apply.clone();
            async move {
                let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
                    Some((g, v)) => (g.to_string(), v.to_string()),
                    None => (
                        String::new(),
                        obj["apiVersion"].as_str().unwrap().to_string(),
                    ),
                };
                let kind = obj["kind"].as_str().unwrap();
                let plural = match kind {
                    "Secret" => "secrets",
                    "ToolJetApp" => "tooljetapps",
                    "EnvironmentConfig" => "environmentconfigs",
                    "AppVersion" => "appversions",
                    other => bail!("unexpected kind {other}"),
                };
                let ar = kube::api::ApiResource::from_gvk_with_plural(
                    &kube::api::GroupVersionKind::gvk(&group, &version, kind),
                    plural,
                );
                let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, ns, &ar);
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                api.patch(&name, &apply, &Patch::Apply(&obj))
                    .await
                    .with_context(|| format!("applying {kind} {name}"))?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}

struct Operator {
    child: Child,
    health: String,
}

impl Operator {
    fn start(
        bin: &Path,
        kubeconfig: &Path,
        concurrency: usize,
        extra: &[&str],
        log: &Path,
    ) -> Result<Operator> {
        let health = format!("127.0.0.1:{}", free_port());
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args([
                "--health-addr",
                &health,
                "--concurrency",
                &concurrency.to_string(),
                "--namespace",
                "tooljet-system",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Operator { child, health })
    }

    fn rss_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(&self.health).await else {
            return String::new();
        };
        let _ = s
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.health).as_bytes())
            .await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Watches the managed Secrets until every expected one carries its expected hash. Samples the
/// operator's RSS meanwhile. Returns (time, peak RSS KiB).
async fn converge(
    client: &Client,
    expected: &BTreeMap<String, String>,
    operator: &Operator,
    started: Instant,
) -> Result<(Duration, u64)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut pending: BTreeMap<String, String> = expected.clone();
    let mut events = watcher(
        api,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=tooljet-operator"),
    )
    .applied_objects()
    .boxed();
    let mut peak = 0;
    let deadline = started + Duration::from_secs(1800);
    while !pending.is_empty() {
        peak = peak.max(operator.rss_kib("VmRSS:"));
        let next = tokio::time::timeout(Duration::from_millis(200), events.try_next()).await;
        if let Ok(event) = next
            && let Some(secret) = event?
        {
            let name = secret.name_any();
            if pending.get(&name) == secret.annotations().get("tooljet.io/config-hash") {
                pending.remove(&name);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} Secrets still not correct after 30 minutes",
                pending.len()
            );
        }
    }
    Ok((started.elapsed(), peak.max(operator.rss_kib("VmHWM:"))))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    json!({ "n": samples.len(), "p50_ms": percentile(&samples, 0.5), "p95_ms": percentile(&samples, 0.95), "p99_ms": percentile(&samples, 0.99) })
}

/// Time until the materialised Secret's `key` equals `value`, seen by a watch opened before the change.
async fn change_latency(
    client: &Client,
    secret: &str,
    key: &str,
    changes: usize,
    mut change: impl FnMut(usize) -> futures::future::BoxFuture<'static, Result<String>>,
) -> Result<Vec<Duration>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NS);
    let mut events = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={secret}")),
    )
    .applied_objects()
    .boxed();
    let mut samples = vec![];
    for k in 0..changes {
        let started = Instant::now();
        let value = change(k).await?;
        loop {
            let s: Secret = tokio::time::timeout(Duration::from_secs(30), events.try_next())
                .await??
                .context("watch ended")?;
            if s.data
                .as_ref()
                .and_then(|d| d.get(key))
                .is_some_and(|v| v.0 == value.as_bytes())
            {
                break;
            }
        }
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// p50/p99 (ms) of the server-side admission histogram between two scrapes.
fn histogram_quantiles(before: &str, after: &str, webhook: &str) -> Value {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter(|l| {
                l.starts_with("tooljet_operator_admission_duration_seconds_bucket{")
                    && l.contains(&format!("webhook=\"{webhook}\""))
            })
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let counts: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - b
                    .iter()
                    .find(|(l, _)| l == le)
                    .map(|(_, c)| *c)
                    .unwrap_or(0.0),
            )
        })
        .collect();
    let total = counts.last().map(|(_, c)| *c).unwrap_or(0.0);
    let quantile = |q: f64| {
        counts
            .iter()
            .find(|(_, c)| *c >= q * total)
            .map(|(le, _)| le * 1000.0)
            .unwrap_or(f64::NAN)
    };
    json!({ "n": total, "p50_ms_at_most": quantile(0.5), "p99_ms_at_most": quantile(0.99) })
}

async fn timed_patches(client: &Client, name: &str, n: usize, tag: &str) -> Result<Vec<Duration>> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", "AppVersion"),
        "appversions",
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let mut samples = vec![];
    for k in 0..n {
        let started = Instant::now();
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "description": format!("{tag} {k}") } })),
        )
        .await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

async fn scenario(args: &Args, apps: usize, full: bool, dir: &Path) -> Result<Value> {
    println!(
        "== N = {apps} apps ({} EnvironmentConfigs, {} AppVersions)",
        apps * 3,
        apps * 2
    );
    let cluster = Cluster::start(dir).await?;
    let client = cluster.client.clone();
    // The installation's hash key, made now (the operator then reads it), so that the expected
    // hashes can be computed before it starts.
    let key =
        tooljet_operator::controller::secrets::load_or_create_hash_key(&client, "tooljet-system")
            .await?;
    let w = workload(&key, apps)?;
    let objects: Vec<Value> = w
        .secrets
        .iter()
        .chain(&w.apps)
        .chain(&w.configs)
        .chain(&w.versions)
        .cloned()
        .collect();
    let applied = apply_all(&client, NS, &objects, args.concurrency).await?;
    println!(
        "   applied {} objects in {:.1}s",
        objects.len(),
        applied.as_secs_f64()
    );

    let mut all_expected = w.expected.clone();
    all_expected.extend(w.expected_resolved.clone());
    let log = dir.join("operator.log");
    let profiled = [
        "secrets",
        "environmentconfigs",
        "appversions",
        "tooljetapps",
        "events",
    ];
    let verbs = ["GET", "POST", "PUT", "PATCH", "APPLY", "DELETE"];
    let requests_before = cluster.apiserver_requests(&verbs, &profiled)?;
    let started = Instant::now();
    let mut operator = Operator::start(
        &args.operator,
        &cluster.cp.kubeconfig,
        args.concurrency,
        &["--no-webhook"],
        &log,
    )?;
    let (took, peak_kib) = converge(&client, &all_expected, &operator, started).await?;
    let requests_after = cluster.apiserver_requests(&verbs, &profiled)?;
    let converge_requests: BTreeMap<&String, u64> = requests_after
        .iter()
        .map(|(k, v)| (k, v - requests_before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady_kib = operator.rss_kib("VmRSS:");
    println!(
        "   converged {} Secrets in {:.1}s; RSS peak {} MiB, steady {} MiB",
        all_expected.len(),
        took.as_secs_f64(),
        peak_kib / 1024,
        steady_kib / 1024
    );
    let mut result = json!({
        "apps": apps, "environment_configs": apps * 3, "app_versions": apps * 2, "secrets_materialized": all_expected.len(),
        "apply_seconds": applied.as_secs_f64(), "converge_seconds": took.as_secs_f64(),
        "rss_peak_mib": peak_kib as f64 / 1024.0, "rss_steady_mib": steady_kib as f64 / 1024.0,
        "converge_requests": converge_requests,
    });
    println!("   requests while converging: {converge_requests:?}");
    if !full {
        operator.stop();
        return Ok(result);
    }

    // The floor: the same Secret writes from a tight loop, same concurrency.
    let floor_objects: Vec<Value> = w
        .outputs
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let data: BTreeMap<&String, ByteString> = data.iter().map(|(k, v)| (k, ByteString(v.clone()))).collect();
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": format!("floor-{i}") }, "data": data })
        })
        .collect();
    let floor = apply_all(&client, "floor", &floor_objects, args.concurrency).await?;
    println!(
        "   floor: {} Secret writes in {:.1}s; operator/floor = {:.2}",
        floor_objects.len(),
        floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64()
    );
    result["floor_seconds"] = json!(floor.as_secs_f64());
    result["converge_over_floor"] = json!(took.as_secs_f64() / floor.as_secs_f64());

    // Change latency: config patches, then Secret rotations.
    let configs_ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", "EnvironmentConfig"),
        "environmentconfigs",
    );
    let configs: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &configs_ar);
    let spec0 = w.configs[0]["spec"].clone();
    let patch_samples = change_latency(&client, "tooljet.development.app-0", "TOOLJET_GLOBAL_CONSTANTS__development__C0", args.changes, |k| {
        let configs = configs.clone();
        let mut spec = spec0.clone();
        Box::pin(async move {
            let value = format!("changed-{k}");
            spec["constants"][0]["value"] = json!(value);
            let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig", "metadata": { "name": "app-0-development" }, "spec": spec });
            configs.patch("app-0-development", &PatchParams::apply("bench").force(), &Patch::Apply(&body)).await?;
            Ok(value)
        })
    })
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let rotation_samples = change_latency(&client, "tooljet.development.app-0", "TOOLJET_SECRET_CONSTANTS__development__S0", args.changes, |k| {
        let secrets = secrets.clone();
        Box::pin(async move {
            let value = format!("rotated-{k}");
            let body = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "creds-0-development" }, "stringData": { "s0": value } });
            secrets.patch("creds-0-development", &PatchParams::apply("bench").force(), &Patch::Apply(&body)).await?;
            Ok(value)
        })
    })
    .await?;
    result["config_change_latency"] = summary(patch_samples);
    result["secret_rotation_latency"] = summary(rotation_samples);
    println!(
        "   change latency: config {}, rotation {}",
        result["config_change_latency"], result["secret_rotation_latency"]
    );

    // Let the changes settle (the versions of app-0 follow its config) before the restart.
    let env_secret = secrets.get("tooljet.development.app-0").await?;
    let data: BTreeMap<String, Vec<u8>> = env_secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let settled: BTreeMap<String, String> = ["app-0-v1", "app-0-v2"]
        .iter()
        .map(|v| {
            (
                materialize::resolved_secret_name(v),
                materialize::merge_layers(&key, &[&data]).hash,
            )
        })
        .collect();
    converge(&client, &settled, &operator, Instant::now()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Idle writes after a restart on the converged system.
    operator.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = [
        "secrets",
        "environmentconfigs",
        "appversions",
        "tooljetapps",
        "events",
        "deployments",
    ];
    let before = cluster.apiserver_writes(&written)?;
    let mut operator = Operator::start(
        &args.operator,
        &cluster.cp.kubeconfig,
        args.concurrency,
        &["--no-webhook"],
        &dir.join("operator-restart.log"),
    )?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let after = cluster.apiserver_writes(&written)?;
    let delta: BTreeMap<&String, u64> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let total: u64 = delta.values().sum();
    result["idle_writes_after_restart"] = json!(total);
    result["idle_writes_by_request"] = json!(delta);
    result["idle_seconds"] = json!(args.idle_seconds);
    println!(
        "   idle writes in {}s after a restart: {total} {delta:?}",
        args.idle_seconds
    );
    operator.stop();

    // Admission: the same patches with the webhook and without.
    let port = free_port();
    let operator = Operator::start(
        &args.operator,
        &cluster.cp.kubeconfig,
        args.concurrency,
        &[
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-host",
            "127.0.0.1",
        ],
        &dir.join("operator-webhook.log"),
    )?;
    let endpoint = admission::Endpoint::Url(format!("https://127.0.0.1:{port}"));
    let apply = PatchParams::apply("bench").force();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    validating
        .patch(
            admission::CONFIGURATION_NAME,
            &apply,
            &Patch::Apply(admission_json(
                &admission::validating(&endpoint, None),
                "ValidatingWebhookConfiguration",
            )),
        )
        .await?;
    mutating
        .patch(
            admission::CONFIGURATION_NAME,
            &apply,
            &Patch::Apply(admission_json(
                &admission::mutating(&endpoint, None),
                "MutatingWebhookConfiguration",
            )),
        )
        .await?;
    let ready = Instant::now();
    loop {
        let v = validating.get(admission::CONFIGURATION_NAME).await?;
        if v.webhooks
            .iter()
            .flatten()
            .all(|w| w.client_config.ca_bundle.is_some())
            && timed_patches(&client, "app-0-v1", 1, "warm").await.is_ok()
        {
            break;
        }
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("the webhook did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    timed_patches(&client, "app-0-v1", 20, "warmup").await?;
    let metrics_before = operator.metrics().await;
    let with = timed_patches(&client, "app-0-v1", args.admission, "with").await?;
    let metrics_after = operator.metrics().await;
    validating
        .delete(admission::CONFIGURATION_NAME, &DeleteParams::default())
        .await?;
    mutating
        .delete(admission::CONFIGURATION_NAME, &DeleteParams::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    timed_patches(&client, "app-1-v1", 20, "warmup").await?;
    let without = timed_patches(&client, "app-1-v1", args.admission, "without").await?;
    let (with, without) = (summary(with), summary(without));
    result["admission_with_webhook"] = with.clone();
    result["admission_without_webhook"] = without.clone();
    result["admission_added_p50_ms"] =
        json!(with["p50_ms"].as_f64().unwrap() - without["p50_ms"].as_f64().unwrap());
    result["admission_added_p99_ms"] =
        json!(with["p99_ms"].as_f64().unwrap() - without["p99_ms"].as_f64().unwrap());
    result["admission_p99_ratio"] =
        json!(with["p99_ms"].as_f64().unwrap() / without["p99_ms"].as_f64().unwrap());
    result["admission_server_side"] =
        histogram_quantiles(&metrics_before, &metrics_after, "validate");
    println!(
        "   admission: with {with}, without {without}, server-side {}",
        result["admission_server_side"]
    );
    drop(operator);
    Ok(result)
}

/// A typed admissionregistration object with its apiVersion and kind.
fn admission_json<T: serde::Serialize>(obj: &T, kind: &str) -> Value {
    let mut v = serde_json::to_value(obj).expect("serializes");
    v["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    v["kind"] = kind.into();
    v
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    json!({ "cpu": cpu, "cores": cores, "memory_gib": (mem as f64 / 1024.0 / 1024.0).round(), "kubernetes": testenv::KUBERNETES_VERSION })
}

fn table(r: &Value) -> String {
    let s = &r["small"];
    let l = &r["large"];
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    let per_object = |a: &Value, b: &Value| {
        let (ra, rb) = (
            a["rss_steady_mib"].as_f64().unwrap_or(0.0),
            b["rss_steady_mib"].as_f64().unwrap_or(0.0),
        );
        let (na, nb) = (
            a["apps"].as_f64().unwrap_or(1.0) * 10.0,
            b["apps"].as_f64().unwrap_or(1.0) * 10.0,
        );
        format!("{:.0}", (rb - ra) * 1024.0 * 1024.0 / (nb - na))
    };
    let mut t = String::new();
    t += "| measure | result | target |\n|---|---|---|\n";
    t += &format!(
        "| convergence, N={} ({} Secrets) | {} s (floor {} s) | |\n",
        l["apps"],
        l["secrets_materialized"],
        f(&l["converge_seconds"]),
        f(&l["floor_seconds"])
    );
    t += &format!(
        "| convergence / floor | {}x | <= 1.3x |\n",
        f(&l["converge_over_floor"])
    );
    t += &format!(
        "| config change latency p50 / p95 / p99 | {} / {} / {} ms | p99 < 100 ms |\n",
        f(&l["config_change_latency"]["p50_ms"]),
        f(&l["config_change_latency"]["p95_ms"]),
        f(&l["config_change_latency"]["p99_ms"])
    );
    t += &format!(
        "| Secret rotation latency p50 / p95 / p99 | {} / {} / {} ms | p99 < 100 ms |\n",
        f(&l["secret_rotation_latency"]["p50_ms"]),
        f(&l["secret_rotation_latency"]["p95_ms"]),
        f(&l["secret_rotation_latency"]["p99_ms"])
    );
    t += &format!(
        "| writes in {} s after a restart (converged) | {} | 0 |\n",
        l["idle_seconds"], l["idle_writes_after_restart"]
    );
    t += &format!(
        "| RSS peak / steady, N={} | {} / {} MiB | < 64 MiB |\n",
        l["apps"],
        f(&l["rss_peak_mib"]),
        f(&l["rss_steady_mib"])
    );
    t += &format!(
        "| RSS peak / steady, N={} | {} / {} MiB | |\n",
        s["apps"],
        f(&s["rss_peak_mib"]),
        f(&s["rss_steady_mib"])
    );
    t += &format!(
        "| steady RSS per managed object (N={} -> {}) | {} bytes | |\n",
        s["apps"],
        l["apps"],
        per_object(s, l)
    );
    t += &format!(
        "| AppVersion patch p50 / p99 with webhook | {} / {} ms | |\n",
        f(&l["admission_with_webhook"]["p50_ms"]),
        f(&l["admission_with_webhook"]["p99_ms"])
    );
    t += &format!(
        "| AppVersion patch p50 / p99 without webhook | {} / {} ms | |\n",
        f(&l["admission_without_webhook"]["p50_ms"]),
        f(&l["admission_without_webhook"]["p99_ms"])
    );
    t += &format!(
        "| webhook added p50 / p99 (ratio p99) | {} / {} ms ({}x) | p99 < 3 ms |\n",
        f(&l["admission_added_p50_ms"]),
        f(&l["admission_added_p99_ms"]),
        f(&l["admission_p99_ratio"])
    );
    t += &format!(
        "| server-side decision p50 / p99 (histogram bucket bound) | <= {} / <= {} ms | |\n",
        f(&l["admission_server_side"]["p50_ms_at_most"]),
        f(&l["admission_server_side"]["p99_ms_at_most"])
    );
    t
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let root = std::env::temp_dir().join(format!("tooljet-bench-{}", std::process::id()));
    let small = scenario(&args, args.small, false, &root.join("small")).await?;
    let large = scenario(&args, args.apps, true, &root.join("large")).await?;
    let results = Arc::new(
        json!({ "machine": machine(), "concurrency": args.concurrency, "small": small, "large": large }),
    );
    let text = table(&results);
    println!("\n{text}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&*results)?)?;
    println!("results written to {}", args.out.display());
    if let Some(md) = &args.markdown {
        let doc = std::fs::read_to_string(md).unwrap_or_default();
        let (begin, end) = ("<!-- results:begin -->", "<!-- results:end -->");
        if let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) {
            let m = &results["machine"];
            let block = format!(
                "{begin}\nMeasured {} on {} ({} cores, {} GiB), Kubernetes {}, concurrency {}.\n\n{text}{end}",
                std::process::Command::new("date")
                    .arg("-u")
                    .arg("+%Y-%m-%d")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default(),
                m["cpu"].as_str().unwrap_or("?"),
                m["cores"],
                m["memory_gib"],
                m["kubernetes"].as_str().unwrap_or("?"),
                args.concurrency
            );
            std::fs::write(
                md,
                format!("{}{}{}", &doc[..a], block, &doc[b + end.len()..]),
            )?;
            println!("updated {}", md.display());
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
