//! The reconcilers and what they share: the context, errors, conditions and status writes.

pub mod envconfig;
mod refs;

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

use crate::api::{EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

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
    /// The EnvironmentConfig controller's cache.
    pub configs: Store<EnvironmentConfig>,
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

    let (managed_secrets, writer) = reflector::store();
    let managed_stream = reflector::reflector(
        writer,
        watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        )
        .default_backoff(),
    )
    .touched_objects();
    // Metadata only, and not the operator's own Secrets: enough to notice a rotation.
    let referenced_stream = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .touched_objects();

    let refs = Arc::new(RefIndex::default());
    let envconfigs = envconfig::controller(
        client.clone(),
        &settings,
        refs.clone(),
        managed_stream,
        referenced_stream,
    );
    let ctx = Arc::new(Context {
        client,
        recorder,
        managed_secrets,
        refs,
        configs: envconfigs.store(),
    });

    envconfigs
        .shutdown_on_signal()
        .run(envconfig::reconcile, envconfig::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
    Ok(())
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
