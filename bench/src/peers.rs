//! The peers a user would pick instead of the operator, in the same control plane as the main
//! point, at the same N, after the operator's phases (the operator stopped), each in a namespace
//! of its own that is deleted afterwards; each peer runs as a local process with the kubeconfig's
//! credentials, like the operator, and is stopped (SIGTERM) after its phase.
//!
//! - External Secrets Operator ([`external_secrets`]): the workload's 3N referenced Secrets are
//!   copied into its namespace, with a SecretStore of kind Kubernetes reading that namespace (a
//!   ServiceAccount's token from a TokenRequest, RBAC get/list/watch on its Secrets) and one
//!   ExternalSecret per EnvironmentConfig extracting its Secret's keys into a target Secret.
//!   Measured: from ESO's start until watches have seen every target Secret with the source's
//!   data (CPU per process, ESO's peak RSS sampled every 250 ms from `/proc/<pid>/status`), a
//!   steady window after that (ESO polls: every ExternalSecret is re-read every
//!   `refreshInterval`), then rotation latency: one source key patched, until the target shows it.
//! - Stakater Reloader ([`reloader`]): N Deployments (one per app, `envFrom` the app's
//!   development Secret, `reloader.stakater.com/auto: "true"`). There are no nodes, so pods stay
//!   Pending; measured: the time from a Secret change until the Deployment's `spec.template`
//!   changes (its generation increases), Reloader's CPU and peak RSS the same way.
//!
//! A peer that is not built, or whose phase fails, is reported with the reason; the benchmark
//! goes on.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::Deployment,
        authentication::v1::TokenRequest,
        core::v1::{Secret, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
    config::Kubeconfig,
    runtime::{WatchStreamExt, conditions, wait::await_condition, watcher},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use testenv::peers::Peer;

use crate::rss::Sampler;
use crate::{
    cluster::Cluster,
    cpu::{PhaseCpu, Process, Snapshot},
    latency::Summary,
    workload::Workload,
};

/// ESO's namespace: the source Secrets, the store, the ExternalSecrets and their targets.
pub const ESO_NS: &str = "peers-external-secrets";
/// Reloader's namespace: the Secrets and the Deployments.
pub const RELOADER_NS: &str = "peers-reloader";
/// The `refreshInterval` of every ExternalSecret. ESO has no watch on its sources: it re-reads
/// each ExternalSecret's source every interval. Its default (the CRD's) is 1h; 1 s is the
/// shortest sensible one (it makes rotation latency comparable at all, and is the polling cost).
pub const REFRESH_INTERVAL: &str = "1s";
pub const ESO_DEFAULT_REFRESH_INTERVAL: &str = "1h";
/// Reloader's fixed HTTP address (`/live`, `/metrics`): not configurable in v1.4.22.
const RELOADER_HTTP: &str = "127.0.0.1:9090";
const TIMEOUT: Duration = Duration::from_secs(1800);
/// One change until its effect is seen. ESO's cycle over every ExternalSecret is longer than
/// `refreshInterval`: 6 s at N=50 in a quick run, with the machine mostly idle, which fits its
/// client's 50 QPS (its default) at about 2 rate-limited requests per refresh; about 2 minutes at
/// N=1000 by the same count.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(600);
/// The rotation samples of a peer stop at `--changes` or after this long, whichever comes first
/// (ESO's rotations take one of its cycles each); the count taken is reported.
const ROTATION_BUDGET: Duration = Duration::from_secs(300);
/// The resources whose requests are counted in ESO's steady window.
const ESO_RESOURCES: [&str; 3] = ["secrets", "externalsecrets", "secretstores"];
const VERBS: [&str; 8] = [
    "GET", "LIST", "WATCH", "POST", "PUT", "PATCH", "APPLY", "DELETE",
];

/// What the caller gives: the sizes of the run, and the operator's figures at the same point,
/// to print side by side.
pub struct Options {
    /// Rotation samples per peer (`--changes`).
    pub changes: usize,
    /// The operator's `--concurrency`, given to ESO as `--concurrent`.
    pub concurrency: usize,
    /// The steady window after ESO converged (`--idle-seconds`).
    pub steady_seconds: u64,
    pub operator: OperatorFigures,
}

/// The operator's figures at the same point (from the main point's convergence and rotations).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct OperatorFigures {
    pub convergence_seconds: f64,
    pub cpu_seconds: f64,
    pub rss_peak_mib: f64,
    pub rotation: Summary,
    /// Rotation until the rollout's Deployment has a new pod template.
    #[serde(default)]
    pub restart: Option<Summary>,
}

/// A peer's measurement, or why there is none.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Measured<T> {
    Measured(T),
    /// Not built (see `testenv::peers`), or its phase failed: the error.
    NotMeasured {
        reason: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Peers {
    pub apps: usize,
    pub operator: OperatorFigures,
    pub external_secrets: Measured<ExternalSecrets>,
    pub reloader: Measured<Reloader>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExternalSecrets {
    pub version: String,
    /// The command line (flags) ESO ran with.
    pub flags: Vec<String>,
    pub refresh_interval: String,
    pub default_refresh_interval: String,
    /// ExternalSecrets (one per EnvironmentConfig), each syncing every key of one Secret.
    pub external_secrets: usize,
    /// From ESO's start until every target Secret holds its source's data.
    pub convergence_seconds: f64,
    pub convergence_cpu: PhaseCpu,
    /// The window after convergence (nothing changes; ESO polls).
    pub steady_cpu: PhaseCpu,
    /// Requests the apiserver served on Secrets, ExternalSecrets and SecretStores in that window
    /// (by `VERB resource[/subresource]`; the operator is stopped, the workload idle).
    pub steady_requests: BTreeMap<String, u64>,
    pub rotation: Summary,
    pub rotation_cpu: PhaseCpu,
    /// Sampled every 250 ms over the whole phase, and `VmHWM`.
    pub rss_peak_mib: f64,
    /// At the end of the steady window.
    pub rss_steady_mib: f64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reloader {
    pub version: String,
    pub flags: Vec<String>,
    /// The `github.com/openshift/api` it was built with (see `testenv::peers`).
    pub openshift_api: String,
    pub deployments: usize,
    /// From Reloader's start until its `/live` answers.
    pub ready_seconds: f64,
    pub startup_cpu: PhaseCpu,
    /// A Secret change until the Deployment's generation increases.
    pub rotation: Summary,
    pub rotation_cpu: PhaseCpu,
    pub rss_peak_mib: f64,
}

/// Measures both peers, one after the other.
pub async fn measure(cluster: &Cluster, w: &Workload, opts: &Options, dir: &Path) -> Peers {
    let external_secrets = match Peer::ExternalSecrets.require() {
        Err(e) => not_measured(e),
        Ok(bin) => {
            println!(
                "   peer: External Secrets Operator {} (refreshInterval {REFRESH_INTERVAL}) ...",
                Peer::ExternalSecrets.version()
            );
            match external_secrets(cluster, w, opts, &bin, dir).await {
                Ok(m) => {
                    println!(
                        "   ESO converged in {:.2}s (operator {:.2}s); RSS peak {:.0} MiB; rotation {:?}",
                        m.convergence_seconds,
                        opts.operator.convergence_seconds,
                        m.rss_peak_mib,
                        m.rotation
                    );
                    println!(
                        "   CPU s while ESO converged: {}",
                        m.convergence_cpu.describe()
                    );
                    Measured::Measured(m)
                }
                Err(e) => not_measured(e),
            }
        }
    };
    let reloader = match Peer::Reloader.require() {
        Err(e) => not_measured(e),
        Ok(bin) => {
            println!("   peer: Reloader {} ...", Peer::Reloader.version());
            match reloader(cluster, w, opts, &bin, dir).await {
                Ok(m) => {
                    println!(
                        "   Reloader ready in {:.2}s; RSS peak {:.0} MiB; Secret change -> Deployment template {:?}",
                        m.ready_seconds, m.rss_peak_mib, m.rotation
                    );
                    Measured::Measured(m)
                }
                Err(e) => not_measured(e),
            }
        }
    };
    Peers {
        apps: w.apps,
        operator: opts.operator.clone(),
        external_secrets,
        reloader,
    }
}

fn not_measured<T>(e: anyhow::Error) -> Measured<T> {
    let reason = format!("{e:#}");
    eprintln!("   warning: peer not measured: {reason}");
    Measured::NotMeasured { reason }
}

/// A peer as a local process with the kubeconfig, its log in a file.
struct PeerProcess {
    name: &'static str,
    child: Child,
    /// VmRSS every 250 ms, for the whole life of the process.
    sampler: Sampler,
    started: Instant,
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    crate::rss::status_kib(pid, field).unwrap_or(0)
}

impl PeerProcess {
    fn start(
        name: &'static str,
        bin: &Path,
        args: &[String],
        kubeconfig: &Path,
        log: &Path,
    ) -> Result<PeerProcess> {
        let file = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let sampler = Sampler::start();
        sampler.watch(name, child.id());
        Ok(PeerProcess {
            name,
            child,
            sampler,
            started: Instant::now(),
        })
    }

    fn process(&self) -> Process {
        Process {
            name: self.name.into(),
            pid: self.child.id(),
        }
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status} (see its log)", self.name);
        }
        Ok(())
    }

    fn rss_mib(&self) -> f64 {
        status_kib(self.child.id(), "VmRSS:") as f64 / 1024.0
    }

    /// The peak of the 250 ms samples and of `VmHWM`, in MiB.
    fn peak_mib(&self) -> f64 {
        let hwm = status_kib(self.child.id(), "VmHWM:") as f64 / 1024.0;
        self.sampler.peak_since(self.name, self.started).max(hwm)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        crate::operator::terminate(&mut self.child);
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn secret_store() -> ApiResource {
    resource("external-secrets.io", "v1", "SecretStore", "secretstores")
}

fn external_secret() -> ApiResource {
    resource(
        "external-secrets.io",
        "v1",
        "ExternalSecret",
        "externalsecrets",
    )
}

/// Server-side applies `objects` (of one resource) into `ns`, `concurrency` at once.
async fn apply(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    objects: &[Value],
    concurrency: usize,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let params = PatchParams::apply("bench").force();
    stream::iter(objects)
        .map(|o| {
            let (api, params) = (api.clone(), params.clone());
            async move {
                let name = o["metadata"]["name"].as_str().context("no name")?;
                api.patch(name, &params, &Patch::Apply(o))
                    .await
                    .with_context(|| format!("applying {} {name}", ar.kind))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// The workload's referenced Secrets (`creds-<i>-<stage>`), as the workload has them.
fn source_secrets(w: &Workload) -> Vec<Value> {
    w.secrets.clone()
}

/// A Secret's string data from the workload's manifest.
fn string_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    secret["stringData"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().unwrap_or_default().as_bytes().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn name_of(o: &Value) -> String {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Installs ESO's CRDs (every manifest of its `config/crds/bases`: its controllers watch the
/// cluster-scoped and generator kinds too) and waits until they are established.
async fn install_crds(client: &Client, dir: &Path) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = vec![];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(value)
                .with_context(|| format!("parsing {}", file.display()))?;
            let name = crd.name_any();
            crds.patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
    }
    for name in names {
        tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not established within 60 s"))??;
    }
    Ok(())
}

/// The apiserver's URL and CA (PEM) from the kubeconfig.
fn server_and_ca(kubeconfig: &Path) -> Result<(String, Vec<u8>)> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .context("the kubeconfig has no cluster")?;
    let server = cluster.server.context("the kubeconfig has no server")?;
    let ca = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => {
            let ByteString(pem) = serde_json::from_value(json!(data))?;
            pem
        }
        (None, Some(path)) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
        _ => bail!("the kubeconfig has no certificate authority"),
    };
    Ok((server, ca))
}

/// A ServiceAccount allowed to read the namespace's Secrets, and a token of it (TokenRequest)
/// in the Secret `eso-reader-token` (key `token`).
async fn reader_token(client: &Client, ns: &str) -> Result<()> {
    let pp = PostParams::default();
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "eso-reader" } }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&pp, &sa)
        .await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "eso-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"] }]
    }))?;
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&pp, &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "eso-reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "eso-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "eso-reader", "namespace": ns }]
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&pp, &binding)
        .await?;
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 86400 }
    }))?;
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request("eso-reader", &pp, &request)
        .await?
        .status
        .context("the TokenRequest has no status")?
        .token;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "eso-reader-token" },
        "stringData": { "token": token }
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&pp, &secret)
        .await?;
    Ok(())
}

fn eso_target(config: &str) -> String {
    format!("eso-{config}")
}

/// External Secrets Operator: see the module's documentation.
async fn external_secrets(
    cluster: &Cluster,
    w: &Workload,
    opts: &Options,
    bin: &Path,
    dir: &Path,
) -> Result<ExternalSecrets> {
    let client = cluster.client.clone();
    let ns = ESO_NS;
    cluster.create_namespace(ns).await?;
    let crds = Peer::ExternalSecrets
        .crds_dir()
        .context("ESO has a CRD directory")?;
    install_crds(&client, &crds).await?;
    let secrets = source_secrets(w);
    crate::workload::apply_all(&client, ns, secrets.iter().cloned(), opts.concurrency).await?;
    reader_token(&client, ns).await?;
    let (server, ca) = server_and_ca(cluster.kubeconfig())?;
    let store = json!({
        "apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
        "metadata": { "name": "kubernetes" },
        "spec": { "provider": { "kubernetes": {
            "remoteNamespace": ns,
            "server": { "url": server, "caBundle": ByteString(ca) },
            "auth": { "token": { "bearerToken": { "name": "eso-reader-token", "key": "token" } } },
        } } }
    });
    apply(&client, ns, &secret_store(), &[store], 1).await?;
    // One ExternalSecret per EnvironmentConfig (`app-<i>-<stage>`), extracting every key of the
    // Secret that EnvironmentConfig references (`creds-<i>-<stage>`) into `eso-app-<i>-<stage>`.
    let mut expected: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut externals = vec![];
    for (config, secret) in w.configs.iter().zip(&secrets) {
        let (config, source) = (name_of(config), name_of(secret));
        let creds = config.replacen("app-", "creds-", 1);
        if creds != source {
            bail!("EnvironmentConfig {config} does not reference Secret {source}");
        }
        let target = eso_target(&config);
        expected.insert(target.clone(), string_data(secret));
        externals.push(json!({
            "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "metadata": { "name": config },
            "spec": {
                "refreshInterval": REFRESH_INTERVAL,
                "secretStoreRef": { "name": "kubernetes", "kind": "SecretStore" },
                "target": { "name": target, "creationPolicy": "Owner" },
                "dataFrom": [{ "extract": { "key": source } }],
            }
        }));
    }
    apply(
        &client,
        ns,
        &external_secret(),
        &externals,
        opts.concurrency,
    )
    .await?;
    let count = externals.len();

    let metrics = format!("127.0.0.1:{}", crate::operator::free_port()?);
    let flags: Vec<String> = [
        "--enable-leader-election=false".to_string(),
        format!("--metrics-addr={metrics}"),
        format!("--concurrent={}", opts.concurrency),
        "--loglevel=warn".to_string(),
    ]
    .into();
    let mut processes = cluster.processes();
    let before = Snapshot::take(&processes);
    let started = Instant::now();
    let mut eso = PeerProcess::start(
        "external-secrets",
        bin,
        &flags,
        cluster.kubeconfig(),
        &dir.join("external-secrets.log"),
    )?;
    processes.push(eso.process());
    let converged = wait_targets(&client, ns, &expected, &mut eso).await;
    let convergence = started.elapsed();
    let convergence_cpu = Snapshot::take(&processes).since(&before);
    converged?;

    // Steady: nothing changes, ESO re-reads every source each interval.
    let requests_before = cluster.requests(&VERBS, &ESO_RESOURCES).await?;
    let before = Snapshot::take(&processes);
    tokio::time::sleep(Duration::from_secs(opts.steady_seconds)).await;
    let steady_cpu = Snapshot::take(&processes).since(&before);
    let steady_requests = crate::cluster::difference(
        &requests_before,
        &cluster.requests(&VERBS, &ESO_RESOURCES).await?,
    );
    let rss_steady_mib = eso.rss_mib();
    eso.alive()?;

    // Rotation: a key of app-0's development Secret, until its target shows it.
    let source = "creds-0-development";
    let target = eso_target("app-0-development");
    let sources: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut watch = watch_one::<Secret>(&client, ns, &target).await?;
    let before = Snapshot::take(&processes);
    let rotations_started = Instant::now();
    let mut samples = vec![];
    for k in 0..opts.changes {
        if rotations_started.elapsed() > ROTATION_BUDGET {
            break;
        }
        let value = format!("rotated-{k}");
        let t = Instant::now();
        sources
            .patch(
                source,
                &PatchParams::default(),
                &Patch::Merge(json!({ "stringData": { "s0": value } })),
            )
            .await?;
        loop {
            let s = next(&mut watch, &target).await?;
            if s.data
                .as_ref()
                .and_then(|d| d.get("s0"))
                .is_some_and(|v| v.0 == value.as_bytes())
            {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    let rotation_cpu = Snapshot::take(&processes).since(&before);
    let rss_peak_mib = eso.peak_mib();
    eso.alive()?;

    // Cleanup: the ExternalSecrets and the store go first, with ESO running (were the
    // namespace's Secrets deleted first, ESO would write their targets again); then ESO stops
    // and the namespace goes.
    for ar in [external_secret(), secret_store()] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        wait_empty(&api).await?;
    }
    eso.stop();
    cluster.delete_namespaces(&[ns], TIMEOUT).await?;
    Ok(ExternalSecrets {
        version: Peer::ExternalSecrets.version().into(),
        flags,
        refresh_interval: REFRESH_INTERVAL.into(),
        default_refresh_interval: ESO_DEFAULT_REFRESH_INTERVAL.into(),
        external_secrets: count,
        convergence_seconds: convergence.as_secs_f64(),
        convergence_cpu,
        steady_cpu,
        steady_requests,
        rotation: Summary::of(samples),
        rotation_cpu,
        rss_peak_mib,
        rss_steady_mib,
    })
}

/// Watches the namespace's Secrets until each of `expected` holds its data.
async fn wait_targets(
    client: &Client,
    ns: &str,
    expected: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    peer: &mut PeerProcess,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut events = watcher(api, watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut pending: std::collections::BTreeSet<&String> = expected.keys().collect();
    let started = Instant::now();
    while !pending.is_empty() {
        match tokio::time::timeout(Duration::from_millis(500), events.try_next()).await {
            Ok(event) => {
                let s = event?.context("the watch of the target Secrets ended")?;
                let name = s.name_any();
                if let Some(want) = expected.get(&name) {
                    let data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    if &data == want {
                        pending.remove(&name);
                    } else {
                        pending.insert(expected.get_key_value(&name).expect("expected").0);
                    }
                }
            }
            Err(_) => peer.alive()?,
        }
        if started.elapsed() > TIMEOUT {
            bail!(
                "{} of {} target Secrets not synced after {TIMEOUT:?}, e.g. {:?}",
                pending.len(),
                expected.len(),
                pending.iter().take(3).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

async fn wait_empty(api: &Api<DynamicObject>) -> Result<()> {
    let started = Instant::now();
    while !api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .items
        .is_empty()
    {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("objects not deleted within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

type Watch<K> = futures::stream::BoxStream<'static, Result<K, watcher::Error>>;

/// A watch of one object, established (its initial list seen) before the first change.
async fn watch_one<K>(client: &Client, ns: &str, name: &str) -> Result<Watch<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut watch = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();
    next(&mut watch, name).await?;
    Ok(watch)
}

async fn next<K>(watch: &mut Watch<K>, name: &str) -> Result<K> {
    tokio::time::timeout(SAMPLE_TIMEOUT, watch.try_next())
        .await
        .with_context(|| format!("no change of {name} within {SAMPLE_TIMEOUT:?}"))??
        .with_context(|| format!("the watch of {name} ended"))
}

/// Stakater Reloader: see the module's documentation.
async fn reloader(
    cluster: &Cluster,
    w: &Workload,
    opts: &Options,
    bin: &Path,
    dir: &Path,
) -> Result<Reloader> {
    if std::net::TcpListener::bind(RELOADER_HTTP).is_err() {
        bail!(
            "Reloader listens on {RELOADER_HTTP} (fixed in {RELOADER_VERSION}), which is in use",
            RELOADER_VERSION = Peer::Reloader.version()
        );
    }
    let client = cluster.client.clone();
    let ns = RELOADER_NS;
    cluster.create_namespace(ns).await?;
    crate::workload::apply_all(&client, ns, source_secrets(w).into_iter(), opts.concurrency)
        .await?;
    let deployments: Vec<Value> = (0..w.apps)
        .map(|i| {
            let app = format!("app-{i}");
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": app, "annotations": { "reloader.stakater.com/auto": "true" } },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": { "app": app } },
                    "template": {
                        "metadata": { "labels": { "app": app } },
                        "spec": { "containers": [{
                            "name": "tooljet", "image": "tooljet/tooljet:latest",
                            "envFrom": [{ "secretRef": { "name": format!("creds-{i}-development") } }],
                        }] }
                    }
                }
            })
        })
        .collect();
    apply(
        &client,
        ns,
        &ApiResource::erase::<Deployment>(&()),
        &deployments,
        opts.concurrency,
    )
    .await?;

    let flags: Vec<String> = vec![format!("--namespaces={ns}"), "--log-level=warning".into()];
    let mut processes = cluster.processes();
    let before = Snapshot::take(&processes);
    let started = Instant::now();
    let mut reloader = PeerProcess::start(
        "reloader",
        bin,
        &flags,
        cluster.kubeconfig(),
        &dir.join("reloader.log"),
    )?;
    processes.push(reloader.process());
    while !live().await {
        reloader.alive()?;
        if started.elapsed() > Duration::from_secs(120) {
            bail!("Reloader's /live on {RELOADER_HTTP} did not answer within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = started.elapsed();
    let startup_cpu = Snapshot::take(&processes).since(&before);

    // A Secret change until the Deployment's template changes (its generation increases). One
    // warm-up change first (not counted): Reloader ignores the objects its informers list at
    // start, and /live answers before they have.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut watch = watch_one::<Deployment>(&client, ns, "app-0").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut generation = deployments
        .get("app-0")
        .await?
        .metadata
        .generation
        .unwrap_or(0);
    let mut change = async |value: String, generation: i64| -> Result<(Duration, i64)> {
        let t = Instant::now();
        secrets
            .patch(
                "creds-0-development",
                &PatchParams::default(),
                &Patch::Merge(json!({ "stringData": { "s0": value } })),
            )
            .await?;
        loop {
            let d = next(&mut watch, "Deployment app-0").await?;
            let g = d.metadata.generation.unwrap_or(0);
            if g > generation {
                return Ok((t.elapsed(), g));
            }
        }
    };
    let mut warmed = false;
    for attempt in 0..10 {
        match change(format!("warm-up-{attempt}"), generation).await {
            Ok((_, g)) => {
                generation = g;
                warmed = true;
                break;
            }
            Err(e) => {
                reloader.alive()?;
                eprintln!("   Reloader warm-up change {attempt}: {e:#}");
            }
        }
    }
    if !warmed {
        bail!("Reloader did not update Deployment app-0 after 10 Secret changes");
    }
    let before = Snapshot::take(&processes);
    let rotations_started = Instant::now();
    let mut samples = vec![];
    for k in 0..opts.changes {
        if rotations_started.elapsed() > ROTATION_BUDGET {
            break;
        }
        let (took, g) = change(format!("rotated-{k}"), generation).await?;
        generation = g;
        samples.push(took);
    }
    let rotation_cpu = Snapshot::take(&processes).since(&before);
    let rss_peak_mib = reloader.peak_mib();
    reloader.alive()?;
    reloader.stop();
    cluster.delete_namespaces(&[ns], TIMEOUT).await?;
    Ok(Reloader {
        version: Peer::Reloader.version().into(),
        flags,
        openshift_api: testenv::peers::RELOADER_OPENSHIFT_API.into(),
        deployments: w.apps,
        ready_seconds: ready.as_secs_f64(),
        startup_cpu,
        rotation: Summary::of(samples),
        rotation_cpu,
        rss_peak_mib,
    })
}

/// Whether Reloader's `/live` answers `alive`.
async fn live() -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(RELOADER_HTTP).await else {
        return false;
    };
    let request = format!("GET /live HTTP/1.0\r\nHost: {RELOADER_HTTP}\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

fn latency(s: &Summary) -> String {
    format!(
        "{:.0} / {:.0} / {:.0} ms (n = {})",
        s.p50_ms, s.p95_ms, s.p99_ms, s.n
    )
}

fn process_cpu(cpu: &PhaseCpu, name: &str) -> f64 {
    cpu.seconds.get(name).copied().unwrap_or(0.0)
}

impl Peers {
    /// The table's rows (measure, result, target, verdict): the peers beside the operator at
    /// the same N. No targets: they are context.
    pub fn rows(&self) -> Vec<[String; 4]> {
        let n = self.apps;
        let op = &self.operator;
        let row = |measure: String, result: String| [measure, result, String::new(), String::new()];
        let mut rows = vec![];
        match &self.external_secrets {
            Measured::Measured(e) => {
                rows.push(row(
                    format!(
                        "peer ESO {}: sync {} Secrets, N={n} (refreshInterval {}; ESO's default {})",
                        e.version, e.external_secrets, e.refresh_interval, e.default_refresh_interval
                    ),
                    format!(
                        "{:.2} s, ESO CPU {:.1} s, RSS peak {:.0} MiB; operator: {:.2} s, CPU {:.1} s, RSS peak {:.0} MiB (also writes 2N resolved Secrets and 6N statuses)",
                        e.convergence_seconds,
                        process_cpu(&e.convergence_cpu, "external-secrets"),
                        e.rss_peak_mib,
                        op.convergence_seconds,
                        op.cpu_seconds,
                        op.rss_peak_mib
                    ),
                ));
                rows.push(row(
                    format!("CPU s while ESO synced, N={n}"),
                    e.convergence_cpu.describe(),
                ));
                rows.push(row(
                    format!(
                        "CPU s in {:.0} s of ESO steady (polling every {}), N={n}",
                        e.steady_cpu.wall_seconds, e.refresh_interval
                    ),
                    format!(
                        "{}; RSS {:.0} MiB; {:.0} requests/s ({})",
                        e.steady_cpu.describe(),
                        e.rss_steady_mib,
                        e.steady_requests.values().sum::<u64>() as f64
                            / e.steady_cpu.wall_seconds.max(f64::EPSILON),
                        e.steady_requests
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                rows.push(row(
                    "peer ESO: Secret rotation latency p50 / p95 / p99".into(),
                    format!(
                        "{} (refreshInterval {}); operator: {}",
                        latency(&e.rotation),
                        e.refresh_interval,
                        latency(&op.rotation)
                    ),
                ));
                rows.push(row(
                    format!("CPU s in {} ESO rotations", e.rotation.n),
                    e.rotation_cpu.describe(),
                ));
            }
            Measured::NotMeasured { reason } => {
                rows.push(row("peer ESO".into(), format!("not measured: {reason}")));
            }
        }
        match &self.reloader {
            Measured::Measured(r) => {
                rows.push(row(
                    format!(
                        "peer Reloader {}: {} Deployments, N={n}",
                        r.version, r.deployments
                    ),
                    format!(
                        "ready in {:.2} s, CPU {:.1} s to then, RSS peak {:.0} MiB",
                        r.ready_seconds,
                        process_cpu(&r.startup_cpu, "reloader"),
                        r.rss_peak_mib
                    ),
                ));
                rows.push(row(
                    "peer Reloader: Secret change -> Deployment template p50 / p95 / p99".into(),
                    format!(
                        "{}; operator (a referenced Secret's rotation -> its Secret -> the \
                         rollout's Deployment): {}",
                        latency(&r.rotation),
                        op.restart
                            .as_ref()
                            .map(latency)
                            .unwrap_or("not measured".into())
                    ),
                ));
                rows.push(row(
                    format!("CPU s in {} Reloader changes", r.rotation.n),
                    r.rotation_cpu.describe(),
                ));
            }
            Measured::NotMeasured { reason } => {
                rows.push(row(
                    "peer Reloader".into(),
                    format!("not measured: {reason}"),
                ));
            }
        }
        rows
    }
}
