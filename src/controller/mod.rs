//! The reconcilers and what they share: the context, errors, conditions and status writes.

pub mod app;
pub mod appversion;
pub mod envconfig;
mod refs;
pub mod secrets;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use serde::Serialize;
use tracing::warn;

pub use refs::RefIndex;

use crate::api::{AppVersion, EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ToolJetApp};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "tooljet-operator";
/// Label that says which controller a managed Secret belongs to.
pub const KIND_LABEL: &str = "tooljet.io/kind";
pub const ENVIRONMENT_LABEL: &str = "tooljet.io/environment";
pub const APP_LABEL: &str = "tooljet.io/app";
/// Annotation with the content hash of a managed Secret.
pub const HASH_ANNOTATION: &str = "tooljet.io/config-hash";

/// Errors a reconcile can return: all transient (the API did not answer as hoped); permanent
/// problems with a spec are reported in its status, not returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

/// What every reconciler gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Materialised Secrets, full objects, label-selected: the only Secrets cached in full.
    pub managed_secrets: Store<Secret>,
    /// Referenced Secret -> the EnvironmentConfigs that reference it.
    pub refs: Arc<RefIndex>,
    /// Whether every cache below has its initial list.
    pub readiness: Arc<Readiness>,
    /// The controllers' caches.
    pub configs: Store<EnvironmentConfig>,
    pub versions: Store<AppVersion>,
    pub apps: Store<ToolJetApp>,
}

impl Context {
    /// Waits until every cache has its initial list, so no reconcile acts on a partial view
    /// (which would write wrong status or Secrets right after a start). Immediate once ready.
    pub async fn wait_for_caches(&self) {
        self.readiness.wait().await;
    }
}

/// Whether every cache has its initial list. kube's `Store::wait_until_ready` keeps a single
/// waker, so concurrent waiters (every reconcile, and kube's own applier) lose wake-ups; this gate
/// is fed by the watch streams themselves and any number of tasks may wait on it.
pub struct Readiness {
    pending: std::sync::Mutex<std::collections::BTreeSet<&'static str>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Readiness {
    pub fn new(caches: &[&'static str]) -> Arc<Readiness> {
        Arc::new(Readiness {
            pending: std::sync::Mutex::new(caches.iter().copied().collect()),
            ready: tokio::sync::watch::Sender::new(caches.is_empty()),
        })
    }

    /// Marks `cache` as listed.
    pub fn listed(&self, cache: &'static str) {
        let mut pending = self.pending.lock().expect("readiness lock");
        if pending.remove(cache) && pending.is_empty() {
            self.ready.send_replace(true);
            tracing::info!("caches synced");
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

/// A cached watch of `api`: the store, and the watch events after the store applied them. The
/// first complete list marks `name` ready.
pub fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    readiness: Arc<Readiness>,
    name: &'static str,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff()).inspect(
        move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                readiness.listed(name);
            }
        },
    );
    (store, stream)
}

/// Settings of a running operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many objects of one kind are reconciled at once.
    pub concurrency: u16,
    /// Reported as the Events' reporting instance (the pod name in a cluster).
    pub instance: String,
}

/// Runs every controller until SIGTERM / Ctrl-C.
pub async fn run(client: Client, settings: Settings) -> anyhow::Result<()> {
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(settings.instance.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);

    let readiness = Readiness::new(&[
        "managed Secrets",
        "EnvironmentConfigs",
        "AppVersions",
        "ToolJetApps",
    ]);
    let (managed_secrets, managed_events) = cached(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        readiness.clone(),
        "managed Secrets",
    );
    // Metadata only, and not the operator's own Secrets: enough to notice a rotation.
    let referenced_stream = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .touched_objects();
    let any = || watcher::Config::default().any_semantic();
    let (configs, config_events) = cached(
        Api::<EnvironmentConfig>::all(client.clone()),
        any(),
        readiness.clone(),
        "EnvironmentConfigs",
    );
    let (versions, version_events) = cached(
        Api::<AppVersion>::all(client.clone()),
        any(),
        readiness.clone(),
        "AppVersions",
    );
    let (apps, app_events) = cached(
        Api::<ToolJetApp>::all(client.clone()),
        any(),
        readiness.clone(),
        "ToolJetApps",
    );

    let refs = Arc::new(RefIndex::default());
    let (fan_out_task, [for_configs, for_versions, for_apps]) =
        fan_out(managed_events.touched_objects());
    let envconfigs = envconfig::controller(
        client.clone(),
        &settings,
        (configs.clone(), config_events.applied_objects()),
        refs.clone(),
        for_configs,
        referenced_stream,
    );
    let version_controller = appversion::controller(
        client.clone(),
        &settings,
        (versions.clone(), version_events.applied_objects()),
        for_versions,
    );
    let app_controller = app::controller(
        client.clone(),
        &settings,
        (apps.clone(), app_events.applied_objects()),
        for_apps,
    );
    let ctx = Arc::new(Context {
        client,
        recorder,
        managed_secrets,
        refs,
        readiness,
        configs,
        versions,
        apps,
    });

    tokio::spawn(fan_out_task);
    tokio::join!(
        envconfigs
            .shutdown_on_signal()
            .run(envconfig::reconcile, envconfig::error_policy, ctx.clone())
            .for_each(drain),
        version_controller
            .shutdown_on_signal()
            .run(appversion::reconcile, appversion::error_policy, ctx.clone())
            .for_each(drain),
        app_controller
            .shutdown_on_signal()
            .run(app::reconcile, app::error_policy, ctx)
            .for_each(drain),
    );
    Ok(())
}

/// Consumes a controller's result stream; reconcile errors are logged by the error policies.
async fn drain<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "controller stream");
    }
}

/// Feeds one watch stream to `N` consumers (each controller triggers on the managed Secrets; the
/// Secrets are watched and cached once). Watch errors are retried by the source's backoff and are
/// not forwarded.
fn fan_out<T: Clone + Send + 'static, const N: usize>(
    source: impl futures::Stream<Item = Result<T, watcher::Error>> + Send + 'static,
) -> (
    impl std::future::Future<Output = ()> + Send,
    [futures::channel::mpsc::Receiver<Result<T, watcher::Error>>; N],
) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..N)
        .map(|_| futures::channel::mpsc::channel(1024))
        .unzip();
    let task = async move {
        let mut senders = senders;
        let mut source = std::pin::pin!(source);
        while let Some(item) = source.next().await {
            match item {
                Ok(obj) => {
                    for tx in &mut senders {
                        let _ = futures::SinkExt::send(tx, Ok(obj.clone())).await;
                    }
                }
                Err(e) => warn!(error = %e, "watch of managed Secrets failed; retrying"),
            }
        }
    };
    let receivers: [_; N] = receivers
        .try_into()
        .unwrap_or_else(|_| unreachable!("N receivers"));
    (task, receivers)
}

/// `Ready`-style condition builder.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Puts `new` into `conditions`, keeping the old transition time when the status did not change.
/// Returns whether the condition's status, reason or message changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let changed =
                old.status != new.status || old.reason != new.reason || old.message != new.message;
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Server-side applies `status` to `obj`'s status subresource, unless it is already `current`.
pub async fn apply_status<K, S>(
    client: &Client,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(true)
}

/// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish Event");
    }
}

/// Requeue delay after a transient error.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(5);
/// Safety net for waiting states that events normally end (a missing Secret appears).
pub const RECHECK: Duration = Duration::from_secs(300);
