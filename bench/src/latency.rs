//! Change latency on the converged system: the time from a write until a watch on the
//! materialised Secret sees its effect. After each sample the benchmark waits until the operator
//! is quiet (its write and reconcile counters still for 200 ms), so that one change's trailing
//! writes (status, the versions' resolved Secrets, Events) never overlap the next change.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    cluster::{Cluster, NS},
    cpu::{PhaseCpu, Snapshot},
    operator::Operator,
    workload::{Kind, Workload},
};

/// Percentiles of a set of samples.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles.
    pub fn of(mut samples: Vec<Duration>) -> Summary {
        samples.sort();
        let at = |p: f64| {
            if samples.is_empty() {
                return f64::NAN;
            }
            let rank = ((samples.len() as f64) * p).ceil().max(1.0) as usize;
            samples[rank.min(samples.len()) - 1].as_secs_f64() * 1000.0
        };
        Summary {
            n: samples.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Samples taken with quiet spacing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Spaced {
    pub latency: Summary,
    /// Mean wait for quiet after a sample.
    pub mean_quiet_ms: f64,
    /// Samples after which the operator was not quiet within 15 s.
    pub quiet_timeouts: usize,
    pub cpu: PhaseCpu,
}

/// Spaced samples of one series, possibly taken in several blocks (alternating with another
/// series); summarised as one.
#[derive(Default)]
pub struct Series {
    samples: Vec<Duration>,
    quiet: Duration,
    timeouts: usize,
    cpu: PhaseCpu,
}

impl Series {
    /// Runs `sample(k)` for the next `n` values of `k` (counted over the whole series), waiting
    /// for the operator to be quiet before each.
    pub async fn take<F>(
        &mut self,
        cluster: &Cluster,
        operator: &Operator,
        n: usize,
        mut sample: F,
    ) -> Result<()>
    where
        F: FnMut(usize) -> BoxFuture<'static, Result<Duration>>,
    {
        let mut processes = cluster.processes();
        processes.push(operator.process());
        operator.wait_quiet().await;
        let before = Snapshot::take(&processes);
        for _ in 0..n {
            self.samples.push(sample(self.samples.len()).await?);
            let q = operator.wait_quiet().await;
            self.quiet += q.waited;
            self.timeouts += usize::from(q.timed_out);
        }
        self.cpu = self.cpu.plus(&Snapshot::take(&processes).since(&before));
        Ok(())
    }

    pub fn summary(self) -> Spaced {
        let n = self.samples.len();
        Spaced {
            latency: Summary::of(self.samples),
            mean_quiet_ms: self.quiet.as_secs_f64() * 1000.0 / n.max(1) as f64,
            quiet_timeouts: self.timeouts,
            cpu: self.cpu,
        }
    }
}

/// Runs `sample(k)` `n` times, waiting for the operator to be quiet before each.
pub async fn spaced<F>(
    cluster: &Cluster,
    operator: &Operator,
    n: usize,
    sample: F,
) -> Result<Spaced>
where
    F: FnMut(usize) -> BoxFuture<'static, Result<Duration>>,
{
    let mut series = Series::default();
    series.take(cluster, operator, n, sample).await?;
    Ok(series.summary())
}

/// Waits on `watch` until the Secret's `key` holds `value`.
async fn seen(
    watch: &mut (impl futures::Stream<Item = Result<Secret, watcher::Error>> + Unpin),
    key: &str,
    value: &str,
) -> Result<()> {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(30), watch.try_next())
            .await
            .context("the change did not reach the Secret within 30 s")??
            .context("the watch ended")?;
        if s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .is_some_and(|v| v.0 == value.as_bytes())
        {
            return Ok(());
        }
    }
}

/// A watch of one Secret of the workload's namespace (see [`watch_named`]).
async fn watch_secret(
    client: &Client,
    name: &str,
) -> Result<impl futures::Stream<Item = Result<Secret, watcher::Error>> + Unpin + Send + 'static> {
    watch_named(Api::namespaced(client.clone(), NS), name).await
}

/// A watch of the object `name`, established (its initial list seen) before the first change, so
/// that no sample includes setting it up.
async fn watch_named<K>(
    api: Api<K>,
    name: &str,
) -> Result<impl futures::Stream<Item = Result<K, watcher::Error>> + Unpin + Send + 'static>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut watch = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .applied_objects()
    .boxed();
    tokio::time::timeout(Duration::from_secs(30), watch.try_next())
        .await
        .with_context(|| format!("{name} was not listed within 30 s"))??
        .with_context(|| format!("the watch of {name} ended"))?;
    Ok(watch)
}

/// The materialised Secret of app-0 in development, and its config.
const TARGET: &str = "tooljet.development.app-0";
const CONFIG: &str = "app-0-development";
const CREDS: &str = "creds-0-development";

/// A constant of one EnvironmentConfig changed (server-side apply of its spec), `n` times.
pub async fn config_changes(
    cluster: &Cluster,
    operator: &Operator,
    w: &Workload,
    n: usize,
) -> Result<Spaced> {
    let client = cluster.client.clone();
    let spec = w
        .configs
        .iter()
        .find(|c| c["metadata"]["name"] == CONFIG)
        .map(|c| c["spec"].clone())
        .context("the workload has no app-0-development")?;
    let configs = Kind::EnvironmentConfig.api(&client, NS);
    let watch = std::sync::Arc::new(tokio::sync::Mutex::new(
        watch_secret(&client, TARGET).await?,
    ));
    spaced(cluster, operator, n, move |k| {
        let (configs, watch, mut spec) = (configs.clone(), watch.clone(), spec.clone());
        Box::pin(async move {
            let value = format!("changed-{k}");
            spec["constants"][0]["value"] = json!(value);
            let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig", "metadata": { "name": CONFIG }, "spec": spec });
            let mut watch = watch.lock().await;
            let started = Instant::now();
            configs
                .patch(CONFIG, &PatchParams::apply("bench").force(), &Patch::Apply(&body))
                .await?;
            seen(&mut *watch, "TOOLJET_GLOBAL_CONSTANTS__development__C0", &value).await?;
            Ok(started.elapsed())
        })
    })
    .await
}

/// A key of a referenced Secret rotated (merge patch of that key), `n` times.
pub async fn rotations(cluster: &Cluster, operator: &Operator, n: usize) -> Result<Spaced> {
    let client = cluster.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let watch = std::sync::Arc::new(tokio::sync::Mutex::new(
        watch_secret(&client, TARGET).await?,
    ));
    spaced(cluster, operator, n, move |k| {
        let (secrets, watch) = (secrets.clone(), watch.clone());
        Box::pin(async move {
            let value = format!("rotated-{k}");
            let mut watch = watch.lock().await;
            let started = Instant::now();
            secrets
                .patch(
                    CREDS,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "stringData": { "s0": value } })),
                )
                .await?;
            seen(
                &mut *watch,
                "TOOLJET_SECRET_CONSTANTS__development__S0",
                &value,
            )
            .await?;
            Ok(started.elapsed())
        })
    })
    .await
}

/// The Deployment app-0's rollout names for development.
const WORKLOAD: &str = "tooljet-app-0-development";

/// A key of a referenced Secret rotated, `n` times, each until the Deployment that app-0's
/// `spec.rollout` names for development has a new pod template (the operator stamped the new
/// content hash on it: what restarts the workload). The Deployment (one replica, `envFrom` the
/// materialised Secret) and the rollout are set up first, by the admin; there are no nodes, so
/// its pods stay Pending, as the peers' are.
pub async fn rotations_to_restart(
    cluster: &Cluster,
    operator: &Operator,
    n: usize,
) -> Result<Spaced> {
    use k8s_openapi::api::apps::v1::Deployment;
    let client = cluster.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": WORKLOAD },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": WORKLOAD } },
                  "template": { "metadata": { "labels": { "app": WORKLOAD } },
                                "spec": { "containers": [{ "name": "tooljet", "image": "tooljet/tooljet:ee-lts-latest",
                                    "envFrom": [{ "secretRef": { "name": TARGET } }] }] } } },
    }))?;
    deployments
        .patch(
            WORKLOAD,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&deployment),
        )
        .await?;
    Kind::ToolJetApp
        .api(&client, NS)
        .patch(
            "app-0",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "rollout": [
                { "environment": "development", "deployments": [WORKLOAD] } ] } })),
        )
        .await
        .context("naming the Deployment in app-0's spec.rollout")?;
    let generation = async || -> Result<i64> {
        Ok(deployments
            .get(WORKLOAD)
            .await?
            .metadata
            .generation
            .unwrap_or(0))
    };
    // The rollout's first stamp.
    let started = Instant::now();
    while generation().await? < 2 {
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the operator did not stamp Deployment {WORKLOAD} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watch = std::sync::Arc::new(tokio::sync::Mutex::new(
        watch_named(deployments.clone(), WORKLOAD).await?,
    ));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    spaced(cluster, operator, n, move |k| {
        let (secrets, watch, deployments) = (secrets.clone(), watch.clone(), deployments.clone());
        Box::pin(async move {
            let before = deployments
                .get(WORKLOAD)
                .await?
                .metadata
                .generation
                .unwrap_or(0);
            let mut watch = watch.lock().await;
            let started = Instant::now();
            secrets
                .patch(
                    CREDS,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "stringData": { "s1": format!("restart-{k}") } })),
                )
                .await?;
            loop {
                let d = tokio::time::timeout(Duration::from_secs(30), watch.try_next())
                    .await
                    .context("the Deployment was not restarted within 30 s")??
                    .context("the watch ended")?;
                if d.metadata.generation.unwrap_or(0) > before {
                    return Ok(started.elapsed());
                }
            }
        })
    })
    .await
}
