//! The reconcilers and what they share: the context, errors, conditions and status writes.

pub mod app;
pub mod appversion;
pub mod envconfig;
pub mod notification;
pub mod policy;
pub mod secrets;
pub mod verify;

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use serde::Serialize;
use tracing::warn;

use crate::cache::{RefIndex, StatusEchoes};

use crate::{
    cache::{Echoes, Lookups, Readiness},
    leader::Leadership,
    materialize::HashKey,
    metrics::Metrics,
};

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "tooljet-operator";
use crate::api::{APP_LABEL, ENVIRONMENT_LABEL, HASH_ANNOTATION, KIND_LABEL};

/// Errors a reconcile can return: all transient (the API did not answer as hoped); permanent
/// problems with a spec are reported in its status, not returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API failed; `step` says which.
    #[error("{} failed: {source}", step.describe())]
    Kube {
        step: Step,
        #[source]
        source: kube::Error,
    },
    #[error("object has no namespace")]
    NoNamespace,
    /// A cached EnvironmentConfig's data sources and constants could not be read back (a defect:
    /// [`crate::cache::config::CachedConfig`] wrote them).
    #[error(transparent)]
    CachedSpec(#[from] crate::cache::config::UnreadableSpec),
    /// This replica is not (or no longer) the leader: nothing is written.
    #[error("not the leader")]
    NotLeader,
}

/// The controllers' names, as metrics label them.
pub const CONTROLLERS: [&str; 3] = [
    envconfig::CONTROLLER,
    appversion::CONTROLLER,
    app::CONTROLLER,
];

/// The API calls a reconcile makes: named in error messages and in the metric's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    ReadReferencedSecret,
    ReadSecret,
    CreateSecret,
    ApplySecret,
    RemoveForeignKeys,
    DeleteSecret,
    WriteStatus,
    ReadDeployment,
    ListDeployments,
    PatchDeployment,
    ReadVersion,
    RollBack,
    ReadNotification,
    ReadEndpointSecret,
    ReadConfig,
}

impl Step {
    /// The metric label (`reconcile_errors_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            Step::ReadReferencedSecret => "ReadReferencedSecret",
            Step::ReadSecret => "ReadSecret",
            Step::CreateSecret => "CreateSecret",
            Step::ApplySecret => "ApplySecret",
            Step::RemoveForeignKeys => "RemoveForeignKeys",
            Step::DeleteSecret => "DeleteSecret",
            Step::WriteStatus => "WriteStatus",
            Step::ReadDeployment => "ReadDeployment",
            Step::ListDeployments => "ListDeployments",
            Step::PatchDeployment => "PatchDeployment",
            Step::ReadVersion => "ReadVersion",
            Step::RollBack => "RollBack",
            Step::ReadNotification => "ReadNotification",
            Step::ReadEndpointSecret => "ReadEndpointSecret",
            Step::ReadConfig => "ReadConfig",
        }
    }

    /// The step in words, for log lines.
    pub fn describe(self) -> &'static str {
        match self {
            Step::ReadReferencedSecret => "reading a referenced Secret",
            Step::ReadSecret => "reading a materialised Secret",
            Step::CreateSecret => "creating a materialised Secret",
            Step::ApplySecret => "applying a materialised Secret",
            Step::RemoveForeignKeys => {
                "removing keys another writer added to a materialised Secret"
            }
            Step::DeleteSecret => "deleting a previous materialised Secret",
            Step::WriteStatus => "writing the status",
            Step::ReadDeployment => "reading a rollout Deployment",
            Step::ListDeployments => "listing the Deployments a rollout selects",
            Step::PatchDeployment => "stamping a rollout Deployment",
            Step::ReadVersion => "reading an AppVersion that carries no references stamp",
            Step::RollBack => "releasing the previous release again (automatic rollback)",
            Step::ReadNotification => "reading a Notification's delivery cursor",
            Step::ReadEndpointSecret => "reading the Secret that holds a Notification's URL",
            Step::ReadConfig => {
                "reading an EnvironmentConfig whose entries the cache does not keep"
            }
        }
    }
}

/// Names the step of a failed API call.
pub trait AtStep<T> {
    fn at(self, step: Step) -> Result<T, Error>;
}

impl<T> AtStep<T> for Result<T, kube::Error> {
    fn at(self, step: Step) -> Result<T, Error> {
        self.map_err(|source| Error::Kube { step, source })
    }
}

impl Error {
    /// A short label for metrics: the failed step.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { step, .. } => step.label(),
            Error::NoNamespace => "NoNamespace",
            Error::CachedSpec(_) => "CachedSpec",
            Error::NotLeader => "NotLeader",
        }
    }
}

/// What every reconciler gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// Materialised Secrets, full objects, label-selected: the only Secrets cached in full.
    pub managed_secrets: Store<crate::cache::secret::ManagedSecret>,
    /// Referenced Secret -> the EnvironmentConfigs that reference it.
    pub refs: Arc<RefIndex>,
    /// Whether every cache below has its initial list.
    pub readiness: Arc<Readiness>,
    /// The caches of the five tooljet.io kinds, and lookups by index over them.
    pub lookups: Lookups,
    pub metrics: Arc<Metrics>,
    pub leadership: Arc<Leadership>,
    /// The installation's content-hash key (every hash users can read is keyed with it).
    pub hash_key: Arc<HashKey>,
    /// The operator's own Secret writes, so their watch events do not wake their writer.
    pub echoes: Arc<Echoes>,
    /// The references of versions that carry no stamp, read from the API.
    pub unstamped: Arc<appversion::Unstamped>,
    /// Rollout workloads that several apps share.
    pub sharing: Arc<app::Sharing>,
    /// The apps' status as this process last wrote it (read-your-writes).
    pub written: Arc<app::Written>,
    /// Every status this process wrote, until the cache shows it ([`apply_status`]).
    pub statuses: Arc<crate::cache::StatusEchoes>,
    /// The HTTP(S) client of Notifications' deliveries.
    pub http: crate::notify::send::Sender,
    /// How the controllers' own watches are listed (as the caches are).
    pub lists: crate::cache::Lists,
}

impl Context {
    /// Waits until every cache has its initial list, so no reconcile acts on a partial view
    /// (which would write wrong status or Secrets right after a start). Immediate once ready.
    pub async fn wait_for_caches(&self) {
        self.readiness.wait().await;
    }

    /// Fencing: every write is preceded by this check.
    pub fn may_write(&self) -> Result<(), Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// The shared error policy: transient errors are retried; a follower waits for leadership
    /// (which reconciles everything again).
    pub fn error_action<K: Resource>(
        &self,
        controller: &'static str,
        obj: &K,
        error: &Error,
    ) -> kube::runtime::controller::Action {
        match error {
            Error::NotLeader => kube::runtime::controller::Action::await_change(),
            _ => {
                warn!(controller, namespace = obj.namespace().unwrap_or_default(), name = %obj.name_any(), %error, "reconcile failed; retrying");
                self.metrics.failed(controller, error.reason());
                kube::runtime::controller::Action::requeue(ERROR_REQUEUE)
            }
        }
    }
}

/// Settings of a running operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many objects of one kind are reconciled at once.
    pub concurrency: u16,
    /// Reported as the Events' reporting instance (the pod name in a cluster).
    pub instance: String,
    /// Notifications may deliver to loopback and link-local addresses (tests, a sidecar).
    pub allow_local_endpoints: bool,
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

/// The condition `type_` of `new` when it is not `True` and differs from the same condition in
/// `old`: a failure worth a Warning Event (once, not on every reconcile).
pub fn new_failure<'a>(
    old: Option<&[Condition]>,
    new: &'a [Condition],
    type_: &str,
) -> Option<&'a Condition> {
    let after = new.iter().find(|c| c.type_ == type_)?;
    let before = old.and_then(|o| o.iter().find(|c| c.type_ == type_));
    let changed = before.is_none_or(|b| {
        (&b.status, &b.reason, &b.message) != (&after.status, &after.reason, &after.message)
    });
    (after.status != "True" && changed).then_some(after)
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

/// Server-side applies `status` to `obj`'s status subresource, unless it is already `current`
/// (no write on a converged object). While the cache has not shown this process's last status
/// write over `obj`, that write stands for `current` ([`crate::cache::StatusEchoes`]). Returns
/// whether it wrote.
pub async fn apply_status<K, S>(
    ctx: &Context,
    controller: &'static str,
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
    // While the cache has not shown this process's last write over `obj`, that write, not the
    // cached status, is what the server holds. Without such a write (a converged object, every
    // pass after a start) nothing is serialised.
    let record = ctx.statuses.written_over(obj);
    if record.is_none() && current == Some(status) {
        return Ok(false);
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if record.is_some_and(|digest| digest == StatusEchoes::digest(&body)) {
        return Ok(false);
    }
    ctx.may_write()?;
    let ns = obj.namespace().ok_or(Error::NoNamespace)?;
    let request = status_apply_request::<K>(&ns, &obj.name_any(), &body)
        .map_err(kube::Error::BuildRequest)
        .at(Step::WriteStatus)?;
    // The answer is not read (an error answer still is an error).
    ctx.client
        .request_text(request)
        .await
        .at(Step::WriteStatus)?;
    ctx.statuses.record(obj, &body);
    ctx.metrics.wrote(controller, "status");
    Ok(true)
}

/// What the apiserver is asked to answer a status write with: the object's metadata only
/// (`PartialObjectMetadata`). Its handlers for PATCH and PUT convert the written object as they
/// do for GET, so it encodes no spec: without this, every status write of an AppVersion sent its
/// definition back (72 KiB on average at real ToolJet sizes) only for the operator to skip it.
/// Plain JSON is accepted as well, from a server that cannot convert.
pub const METADATA_ONLY: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

/// A server-side apply of `body` to the status of `K` `name`, forced, as the operator's field
/// manager, answered with the object's metadata only ([`METADATA_ONLY`]).
pub fn status_apply_request<K>(
    ns: &str,
    name: &str,
    body: &serde_json::Value,
) -> Result<http::Request<Vec<u8>>, kube::core::request::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    metadata_only_status_apply(K::url_path(&(), Some(ns)), name, MANAGER, body)
}

/// A forced server-side apply of `body` by `manager` to the status of `name` in the collection at
/// `url_path`, answered with the object's metadata only ([`METADATA_ONLY`]); for any kind,
/// typed or not (the benchmark's floor writes as the operator does).
pub fn metadata_only_status_apply(
    url_path: String,
    name: &str,
    manager: &str,
    body: &serde_json::Value,
) -> Result<http::Request<Vec<u8>>, kube::core::request::Error> {
    let mut request = kube::core::Request::new(url_path).patch_subresource(
        "status",
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )?;
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(METADATA_ONLY),
    );
    Ok(request)
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
/// Safety net for waiting states that events normally end (a missing Secret appears, a rival or
/// a clashing Secret goes). Converged objects are not requeued: events wake them.
pub const RECHECK: Duration = Duration::from_secs(300);
/// A version waiting for its stage's configuration to be materialised (whose Secret's creation
/// normally wakes it).
pub const PENDING_RECHECK: Duration = Duration::from_secs(60);
