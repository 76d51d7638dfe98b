//! ToolJetApp: versions per stage, the release (and its history), and the rollout trigger that
//! restarts an environment's workloads when, and only when, its configuration changes.

use crate::lifecycle::{Pipeline, ReleaseCheck, history, stamps};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, SubsecRound, Utc};
use futures::{Stream, StreamExt, channel::mpsc};
use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::secrets::{self, Synced};
use super::verify::{self, WorkloadState};
use super::{
    APP_LABEL, AtStep, Context, ENVIRONMENT_LABEL, Error, HASH_ANNOTATION, KIND_LABEL, MANAGER,
    Settings, Step, apply_status, condition, new_failure,
    policy::{apps_in, at_transition},
    publish, set_condition,
};
use crate::api::{
    AppVersion, AutomaticRollback, EnvironmentVersions, OVERRIDE_REASON_ANNOTATION,
    PromotionPolicy, RELEASE_ANNOTATION, RELEASED_AT_ANNOTATION, RELEASED_BY_ANNOTATION,
    RELEASED_VERSION_ANNOTATION, ReleaseRecord, RolloutStrategy, StageGate, StageVerification,
    ToolJetApp, ToolJetAppStatus, VerificationCause, VerificationPhase,
};
use crate::api::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, STAGE_SECRET_KIND, WORKLOAD_SECRET_KIND, conditions,
};
use crate::materialize::{Claim, Materialized, workload, workload_secret_name};
use crate::metrics::DeliveryKind;
use crate::{
    cache::{Controlled, Echoes, Lookups, ManagedSecret},
    cache::{Hubs, triggers},
    gate,
    lifecycle::names::app_label_value,
};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};

/// This controller's name in metrics and logs.
pub const CONTROLLER: &str = "tooljetapp";

/// How soon an automatic rollback the webhook or a policy refused is tried again (the refusal
/// may be transient, e.g. the webhook could not list the policies).
const REFUSED_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// How soon a pass that found the cache behind its own last status write tries again.
const CACHE_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(200);

/// The controller and its triggers: its own kind, its versions, the stage configurations'
/// Secrets (rollout), Deployments (metadata only) that a rollout may name or select, and the
/// PromotionPolicies of its namespace (its stage gates), and the apps sharing its workloads.
pub fn controller(ctx: &Context, settings: &Settings, hubs: &mut Hubs) -> Controller<ToolJetApp> {
    let (lookups, sharing, echoes) = (&ctx.lookups, &ctx.sharing, &ctx.echoes);
    let main = triggers::changes(hubs.apps.subscribe(), own_trigger);
    let deleted = triggers::deletions(hubs.apps.subscribe());
    let versions = triggers::changes(hubs.versions.subscribe(), version_trigger);
    let managed = triggers::all(hubs.managed.subscribe());
    let policies = triggers::changes(hubs.policies.subscribe(), triggers::generation);
    let (for_secrets, sharers) = ((lookups.clone(), echoes.clone()), sharing.clone());
    let (written, caught_up) = (ctx.written.clone(), ctx.written.clone());
    let for_deployments = lookups.clone();
    let for_policies = lookups.clone();
    Controller::for_shared_stream(main, lookups.apps.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .watches_shared_stream(versions, |v: Arc<AppVersion>| {
            v.namespace()
                .map(|ns| ObjectRef::new(&v.spec.app).within(&ns))
        })
        .reconcile_on(sharing.woken())
        // A deleted app has no reconcile: the apps it shared workloads with are woken instead
        // (through `woken`), and compute those workloads without it.
        .reconcile_on(crate::cache::triggers::mapped(
            deleted,
            move |app: Arc<ToolJetApp>| {
                let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
                written.forget(&ns, &name);
                sharers.record(&ns, &name, BTreeMap::new());
                Vec::<ObjectRef<ToolJetApp>>::new()
            },
        ))
        // A pass that found its app behind its own last status write goes on as soon as the
        // cache shows that write (rather than at its requeue).
        .reconcile_on(crate::cache::triggers::mapped(
            triggers::all(hubs.apps.subscribe()),
            move |app: Arc<ToolJetApp>| caught_up.caught_up(&app).then(|| ObjectRef::from(&*app)),
        ))
        .reconcile_on(crate::cache::triggers::mapped(
            managed,
            move |secret: Arc<ManagedSecret>| {
                apps_with_rollout_for_secret(&for_secrets.0, &for_secrets.1, &secret)
            },
        ))
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<Deployment>>::all(ctx.client.clone()),
                ctx.lists.of(watcher::Config::default().any_semantic()),
            )
            .default_backoff()
            .touched_objects(),
            move |d: PartialObjectMeta<Deployment>| apps_rolling_out(&for_deployments, &d),
        )
        // Whom a policy selected before its change is not known here: every app of the
        // namespace (policies change rarely; an app whose gates did not change writes nothing).
        .watches_shared_stream(policies, move |p: Arc<PromotionPolicy>| {
            apps_in(&for_policies, &p.namespace().unwrap_or_default())
                .iter()
                .map(|a| ObjectRef::from(&**a))
                .collect::<Vec<_>>()
        })
}

/// What of an app its own reconcile reacts to: its spec, its deletion, and its labels (which
/// PromotionPolicies select it).
fn own_trigger(app: &ToolJetApp) -> ((Option<i64>, bool), BTreeMap<String, String>) {
    (
        crate::cache::triggers::generation(app),
        app.labels().clone(),
    )
}

/// What of a version its app depends on: which app, which stage (the app's status lists versions
/// per stage), and whether it exists.
fn version_trigger(v: &AppVersion) -> (String, String) {
    (v.spec.app.clone(), v.spec.environment.clone())
}

fn apps_with_rollout_for_secret(
    lookups: &Lookups,
    echoes: &Echoes,
    secret: &ManagedSecret,
) -> Vec<ObjectRef<ToolJetApp>> {
    if secret.label(KIND_LABEL) == Some(WORKLOAD_SECRET_KIND) {
        // A workload Secret edited or deleted by someone else (the operator's own writes are
        // echoes; the apps sharing it are woken by [`Sharing`] when what it holds changes): the
        // apps that may roll its Deployment out put it back, those naming it and those with a
        // selector (its labels are not known here). Every app serving it is one of them.
        if echoes.is_echo(secret) {
            return vec![];
        }
        let Some((deployment, _)) = secret.controller() else {
            return vec![];
        };
        let ns = secret.namespace();
        return lookups
            .apps_with_rollout(ns)
            .iter()
            .filter(|a| {
                a.spec
                    .rollout
                    .iter()
                    .any(|t| t.selector.is_some() || t.deployments.iter().any(|d| d == deployment))
            })
            .map(|a| ObjectRef::from(&**a))
            .collect();
    }
    if secret.label(KIND_LABEL) != Some(STAGE_SECRET_KIND) {
        return vec![];
    }
    let (Some(environment), app) = (secret.label(ENVIRONMENT_LABEL), secret.label(APP_LABEL))
    else {
        return vec![];
    };
    lookups
        .apps_with_rollout(secret.namespace())
        .into_iter()
        .filter(|a| {
            app.is_none_or(|l| *l == app_label_value(&a.name_any()))
                && a.spec.rollout.iter().any(|r| r.environment == environment)
        })
        .map(|a| ObjectRef::from(&*a))
        .collect()
}

fn apps_rolling_out(
    lookups: &Lookups,
    d: &PartialObjectMeta<Deployment>,
) -> Vec<ObjectRef<ToolJetApp>> {
    let name = d.name_any();
    lookups
        .apps_with_rollout(&d.namespace().unwrap_or_default())
        .into_iter()
        .filter(|a| a.spec.rollout.iter().any(|r| r.takes(&name, d.labels())))
        .map(|a| ObjectRef::from(&*a))
        .collect()
}

/// The release live now, which the workloads carry: the spec's when valid; an invalid one leaves
/// the last one live.
fn live_release(app: &ToolJetApp, release: &Release) -> Option<String> {
    match release {
        Release::Valid(v) => Some(v.clone()),
        Release::Invalid { .. } => app.status.as_ref().and_then(|s| s.released_version.clone()),
        Release::None => None,
    }
}

/// The release as the spec asks it, checked against the versions.
#[derive(Debug, PartialEq)]
enum Release {
    None,
    Valid(String),
    Invalid {
        reason: &'static str,
        message: String,
    },
}

fn check_release(app: &ToolJetApp, versions: &[Arc<AppVersion>]) -> Release {
    let Some(release) = &app.spec.release else {
        return Release::None;
    };
    let pipeline = Pipeline::of(app);
    let last = pipeline.last();
    let wanted = &release.version;
    let stage = versions
        .iter()
        .find(|v| v.name_any() == *wanted)
        .map(|v| v.spec.environment.as_str());
    match pipeline.release_check(stage) {
        ReleaseCheck::NotAVersion => Release::Invalid {
            reason: "ReleaseVersionNotFound",
            message: format!(
                "spec.release.version {wanted} is not an AppVersion of app {} in this namespace",
                app.name_any()
            ),
        },
        ReleaseCheck::NotInLastStage { stage } => Release::Invalid {
            reason: "ReleaseVersionNotInLastStage",
            message: format!(
                "spec.release.version {wanted} is in {stage}, not in {last}; promote it to {last} first, or release a {last} version"
            ),
        },
        ReleaseCheck::Releasable => Release::Valid(wanted.clone()),
    }
}

#[instrument(skip_all, fields(kind = "ToolJetApp", namespace = app.namespace().unwrap_or_default(), name = app.name_any()))]
pub async fn reconcile(app: Arc<ToolJetApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _pass = ctx.metrics.reconcile(CONTROLLER);
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    let ns = app.namespace().ok_or(Error::NoNamespace)?;
    if ctx.written.behind(&app) {
        return Ok(Action::requeue(CACHE_CATCH_UP));
    }
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = app.name_any();
    let versions = ctx.lookups.versions_of(&ns, &name);
    let release = check_release(&app, &versions);

    let policies = ctx.lookups.policies_in(&ns);
    let now = gate::to_chrono(Timestamp::now());
    let (gates, next_transition) = stage_gates(&app, &policies, now);

    let live = live_release(&app, &release);
    let rollout = roll_out(&ctx, &app, &ns, live.as_deref()).await?;

    let (status, record) = desired_status(&app, &versions, &release, &rollout, gates, now);
    let wrote = apply_status(&ctx, CONTROLLER, &*app, app.status.as_ref(), &status).await?;
    if wrote {
        ctx.written.wrote(&app);
    }

    if let Some(record) = &record {
        report_release(&ctx, &app, &versions, record).await;
    }
    report_verifications(&ctx, &app, &status).await;
    report_failures(&ctx, &app, &status).await;
    if status.automatic_rollback.is_some() {
        // The rollback is made on the app as stored with its decision: after this pass's
        // status write, once the cache shows it (the patch carries the resourceVersion read).
        if wrote {
            return Ok(Action::requeue(CACHE_CATCH_UP));
        }
        if roll_back_if_failed(&ctx, &app, &status).await? == Rollback::Refused {
            return Ok(Action::requeue(REFUSED_RETRY));
        }
    }
    // A gate's window opening or closing changes the status by itself, and so does a
    // verification's timeout: wake at the first of them.
    let timeout = app.verification().timeout();
    let deadlines = status
        .verifications
        .iter()
        .filter_map(|v| verify::deadline(v, timeout));
    let wake = next_transition.into_iter().chain(deadlines).min();
    Ok(at_transition(wake, now))
}

/// The Event (and log line) of a new release or rollback.
async fn report_release(
    ctx: &Context,
    app: &ToolJetApp,
    versions: &[Arc<AppVersion>],
    record: &ReleaseRecord,
) {
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    let kind = match (record.automatic, record.rollback) {
        (true, _) => DeliveryKind::AutomaticRollback,
        (false, true) => DeliveryKind::Rollback,
        (false, false) => DeliveryKind::Release,
    };
    ctx.metrics.delivered(&ns, &name, kind);
    if record.automatic {
        ctx.metrics.automatic_rollback(&ns, &name);
    }
    // Lead time: from the version's creation to its (first) release.
    if !record.rollback
        && let Some(created) = versions
            .iter()
            .find(|v| v.name_any() == record.version)
            .and_then(|v| v.metadata.creation_timestamp.as_ref())
    {
        let seconds = (record.at.0.as_second() - created.0.as_second()).max(0);
        ctx.metrics.lead_time(&ns, &name, seconds as f64);
    }
    let by = record
        .by
        .as_deref()
        .map(|b| format!(" by {b}"))
        .unwrap_or_default();
    let (reason, verb) = match (record.automatic, record.rollback) {
        (true, _) => ("RolledBackAutomatically", "rolled back automatically to"),
        (false, true) => ("RolledBack", "rolled back to"),
        (false, false) => ("Released", "released"),
    };
    info!(version = %record.version, rollback = record.rollback, automatic = record.automatic, "release");
    ctx.metrics.releases.inc();
    let why = record
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    publish(
        &ctx.recorder,
        app,
        EventType::Normal,
        reason,
        "Release",
        format!("{verb} {}{by}{why}", record.version),
    )
    .await;
}

/// Read-your-writes for the apps' status. A pass woken a moment after the status write of the
/// pass before (a Deployment's status changes at once after its stamp) can find its app in the
/// cache as it was before that write, and would decide again what was decided (a release
/// recorded twice, a verification started over). Remembered per app: the resourceVersion the
/// last written status was computed from; while the cache still holds that version, the pass
/// waits for it to catch up instead: the cache's next version of the app wakes it
/// ([`Written::caught_up`]), and a short requeue stands in should that never come. A few dozen
/// bytes per app.
#[derive(Default)]
pub struct Written(std::sync::Mutex<HashMap<(String, String), Wrote>>);

/// Of an app's last status write: the resourceVersion it was computed from, and whether a pass
/// found the cache still there and waits for it to move on.
struct Wrote {
    read: String,
    waiting: bool,
}

impl Written {
    /// Whether the cache still shows `app` as it was before this process's last status write
    /// (the pass is then waiting for [`Written::caught_up`]).
    fn behind(&self, app: &ToolJetApp) -> bool {
        let key = (app.namespace().unwrap_or_default(), app.name_any());
        let mut written = self.0.lock().expect("not poisoned");
        match written.get_mut(&key) {
            Some(w) if app.resource_version().as_deref() == Some(w.read.as_str()) => {
                w.waiting = true;
                true
            }
            Some(_) => {
                written.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Whether a pass waits for the cache to show this process's last status write over `app`,
    /// and `app` (as cached now) shows it.
    fn caught_up(&self, app: &ToolJetApp) -> bool {
        let key = (app.namespace().unwrap_or_default(), app.name_any());
        let written = self.0.lock().expect("not poisoned");
        written.get(&key).is_some_and(|w| {
            w.waiting && app.resource_version().as_deref() != Some(w.read.as_str())
        })
    }

    /// Remembers that a status was written over `app` as read.
    fn wrote(&self, app: &ToolJetApp) {
        let key = (app.namespace().unwrap_or_default(), app.name_any());
        let read = app.resource_version().unwrap_or_default();
        self.0.lock().expect("not poisoned").insert(
            key,
            Wrote {
                read,
                waiting: false,
            },
        );
    }

    /// Forgets a deleted app.
    fn forget(&self, ns: &str, name: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .remove(&(ns.to_string(), name.to_string()));
    }
}

/// An Event for each stage whose verification ended in this pass: Normal when verified,
/// Warning when failed.
async fn report_verifications(ctx: &Context, app: &ToolJetApp, status: &ToolJetAppStatus) {
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    for v in &status.verifications {
        let before = app.verification_of(&v.environment);
        let ended = v.phase != VerificationPhase::Progressing
            && before.is_none_or(|b| b.phase != v.phase || b.started_at != v.started_at);
        if !ended {
            continue;
        }
        let about = format!(" ({})", v.about());
        let ok = v.phase == VerificationPhase::Verified;
        // A failed verification whose workloads came up later was counted when it failed.
        let recovered = before
            .is_some_and(|b| b.phase == VerificationPhase::Failed && b.started_at == v.started_at);
        if !recovered {
            ctx.metrics.verified(&ns, &name, &v.environment, ok);
        }
        if ok
            && v.cause == VerificationCause::AutomaticRollback
            && let Some(seconds) = time_to_restore(status, v)
        {
            ctx.metrics.restored(&ns, &name, seconds);
        }
        let (type_, reason) = if ok {
            (EventType::Normal, conditions::VERIFIED_REASON)
        } else {
            warn!(stage = %v.environment, message = %v.message, "verification failed");
            (EventType::Warning, conditions::VERIFICATION_FAILED)
        };
        publish(
            &ctx.recorder,
            app,
            type_,
            reason,
            "Verify",
            format!("{}{about}: {}", v.environment, v.message),
        )
        .await;
    }
}

/// Time to restore: from the release that failed verification to the moment the automatic
/// rollback that replaced it was verified (`v`).
fn time_to_restore(status: &ToolJetAppStatus, v: &StageVerification) -> Option<f64> {
    let history = &status.release_history;
    let at = history
        .iter()
        .rposition(|r| r.automatic && Some(&r.version) == v.version.as_ref())?;
    let failed = history.get(at.checked_sub(1)?)?;
    let restored = v.finished_at.as_ref()?;
    Some((restored.0.as_second() - failed.at.0.as_second()).max(0) as f64)
}

/// A Warning Event for each condition that newly failed (once, not on every pass).
async fn report_failures(ctx: &Context, app: &ToolJetApp, status: &ToolJetAppStatus) {
    let old = app.status.as_ref().map(|s| s.conditions.as_slice());
    for (condition, action, what) in [
        (conditions::READY, "Release", "app not ready"),
        (conditions::ROLLOUT_READY, "Rollout", "rollout not in sync"),
    ] {
        if let Some(after) = new_failure(old, &status.conditions, condition) {
            warn!(reason = %after.reason, message = %after.message, "{what}");
            publish(
                &ctx.recorder,
                app,
                EventType::Warning,
                &after.reason,
                action,
                after.message.clone(),
            )
            .await;
        }
    }
}

/// What became of an automatic rollback in a pass.
#[derive(Debug, PartialEq, Eq)]
enum Rollback {
    /// None to make.
    NotMade,
    Made,
    /// The webhook or a policy refused it (reported); tried again later.
    Refused,
}

/// Makes the automatic rollback the status records ([`automatic_rollback`]), if the release is
/// still the one that failed: one merge patch of `spec.release`, made only if the app is still
/// as read (its resourceVersion), judged by the webhook and the policies like a person's.
/// Through a closed window it carries the reason as a break-glass override. A refusal is
/// reported (Event and log) and tried again a minute later.
async fn roll_back_if_failed(
    ctx: &Context,
    app: &ToolJetApp,
    status: &ToolJetAppStatus,
) -> Result<Rollback, Error> {
    let Some(intent) = status
        .automatic_rollback
        .as_ref()
        .filter(|i| app.released() == Some(i.from.as_str()))
    else {
        return Ok(Rollback::NotMade);
    };
    let (target, reason) = (&intent.to, &intent.reason);
    let last = Pipeline::of(app).last();
    let closed = status
        .gates
        .iter()
        .any(|g| g.environment == last && !g.open);
    let mut annotations = serde_json::Map::new();
    if closed {
        annotations.insert(OVERRIDE_REASON_ANNOTATION.into(), json!(reason));
    }
    let patch = json!({
        "metadata": { "resourceVersion": app.resource_version(), "annotations": annotations },
        "spec": { "release": { "version": target } },
    });
    ctx.may_write()?;
    let ns = app.namespace().unwrap_or_default();
    let api: Api<ToolJetApp> = Api::namespaced(ctx.client.clone(), &ns);
    match api
        .patch(
            &app.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            ctx.metrics.wrote(CONTROLLER, "tooljetapp");
            warn!(%target, %reason, "automatic rollback");
            publish(
                &ctx.recorder,
                app,
                EventType::Warning,
                "AutomaticRollback",
                "Release",
                format!("{reason}; releasing {target} again"),
            )
            .await;
            Ok(Rollback::Made)
        }
        // Someone changed the app meanwhile: judged again on the next pass.
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Kube {
            step: Step::RollBack,
            source: kube::Error::Api(e),
        }),
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 400 || e.code == 422 => {
            warn!(%target, message = %e.message, "automatic rollback refused");
            publish(
                &ctx.recorder,
                app,
                EventType::Warning,
                "AutomaticRollbackRefused",
                "Release",
                format!("releasing {target} again was refused: {}", e.message),
            )
            .await;
            Ok(Rollback::Refused)
        }
        Err(e) => Err(Error::Kube {
            step: Step::RollBack,
            source: e,
        }),
    }
}

/// The gate on each stage of the app's pipeline that some policy guards (pure), in pipeline
/// order, and the earliest time one of them opens or closes.
fn stage_gates(
    app: &ToolJetApp,
    policies: &[Arc<PromotionPolicy>],
    now: DateTime<Utc>,
) -> (Vec<StageGate>, Option<DateTime<Utc>>) {
    let mut next: Option<DateTime<Utc>> = None;
    let gates = app
        .spec
        .environments
        .iter()
        .filter_map(|stage| gate::stage_gate_among(policies, app, stage))
        .map(|g| {
            let windows = g.windows_at(now);
            if let Some(t) = windows.next_open.or(windows.next_close) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
            StageGate {
                environment: g.stage,
                policies: g.policies,
                required_approvals: g.requirement.map_or(0, |r| r.required),
                open: windows.open,
                next_open: windows.next_open.map(gate::to_time),
                next_close: windows.next_close.map(gate::to_time),
                closed_by: windows.closed,
            }
        })
        .collect();
    (gates, next)
}

/// A workload's outcome (its Secret's hash, or its conflicts) and the apps it serves.
type Served = (String, BTreeSet<String>);

/// Workloads several apps share: what each one's Secret was last computed to be, and which apps
/// it served. Every app that shares a workload computes the same thing, from the same caches;
/// when the result changes (a new value, a conflict, an app joining or leaving), the other apps
/// sharing it are woken so that each reports it (a conflict is reported by both apps). Woken
/// only on a change, so two apps never wake each other in a loop.
pub struct Sharing {
    /// (namespace, Deployment) -> (outcome, the apps it serves).
    last: std::sync::Mutex<HashMap<(String, String), Served>>,
    wake: mpsc::UnboundedSender<ObjectRef<ToolJetApp>>,
    woken: std::sync::Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<ToolJetApp>>>>,
}

impl Default for Sharing {
    fn default() -> Sharing {
        let (wake, woken) = mpsc::unbounded();
        Sharing {
            last: Default::default(),
            wake,
            woken: std::sync::Mutex::new(Some(woken)),
        }
    }
}

impl Sharing {
    /// The apps to wake, as a stream for `Controller::reconcile_on` (once; empty after).
    fn woken(&self) -> impl Stream<Item = ObjectRef<ToolJetApp>> + Send + 'static {
        futures::stream::iter(self.woken.lock().expect("not poisoned").take()).flatten()
    }

    /// Records what `app`'s reconcile found of the workloads it rolls out (`seen`: Deployment ->
    /// outcome and the apps it serves) and wakes the other apps of any workload whose outcome or
    /// apps changed, or that `app` no longer rolls out.
    fn record(&self, ns: &str, app: &str, seen: BTreeMap<String, Served>) {
        let mut wake: BTreeSet<String> = BTreeSet::new();
        let mut last = self.last.lock().expect("not poisoned");
        for (deployment, (outcome, apps)) in &seen {
            let key = (ns.to_string(), deployment.clone());
            let changed = match last.get(&key) {
                Some((o, a)) if o == outcome && a == apps => None,
                Some((_, a)) => Some(a.clone()),
                None => Some(BTreeSet::new()),
            };
            if let Some(before) = changed {
                wake.extend(before.into_iter().chain(apps.iter().cloned()));
                if apps.len() > 1 {
                    last.insert(key, (outcome.clone(), apps.clone()));
                } else {
                    last.remove(&key);
                }
            }
        }
        // Workloads this app left: the others re-compute them without it.
        last.retain(|(n, deployment), (_, apps)| {
            if n != ns || seen.contains_key(deployment) || !apps.contains(app) {
                return true;
            }
            wake.extend(apps.iter().cloned());
            false
        });
        drop(last);
        wake.remove(app);
        for other in wake {
            let _ = self.wake.unbounded_send(ObjectRef::new(&other).within(ns));
        }
    }
}

/// What keeps a rollout from being in sync.
#[derive(Debug, Default, PartialEq)]
struct RolloutProblems {
    /// `stage/name` of Deployments named but not found.
    missing: Vec<String>,
    /// Why some Deployments were left alone: a malformed selector, or a workload Secret's name
    /// taken by a Secret that is not the operator's.
    invalid: Vec<String>,
    /// Workloads serving apps that give one constant different values ([`workload`]): their
    /// configuration stays as it was until the apps agree.
    conflicts: Vec<String>,
}

/// The (app, stage) pairs whose configuration the Deployment `name` (with `labels`) takes in:
/// every rollout entry of every app of `apps` that names or selects it (pure). `app` stands for
/// its cached copy in `apps` (it may be newer). Sorted, unique.
pub fn claims_on(
    app: &ToolJetApp,
    apps: &[Arc<ToolJetApp>],
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let this = app.name_any();
    let others = apps.iter().map(|a| &**a).filter(|a| a.name_any() != this);
    let mut claims: Vec<(String, String)> = std::iter::once(app)
        .chain(others)
        .flat_map(|a| {
            a.spec
                .rollout
                .iter()
                .filter(|t| t.takes(name, labels))
                .map(move |t| (a.name_any(), t.environment.clone()))
        })
        .collect();
    claims.sort();
    claims.dedup();
    claims
}

/// The Secret a rollout workload takes in, holding `m`: named for the Deployment, controlled by
/// it (it goes when the Deployment goes; `blockOwnerDeletion` is not set, which would need
/// permission on the Deployment's finalizers).
fn workload_secret(d: &Deployment, m: &Materialized) -> Secret {
    let mut owner = d
        .controller_owner_ref(&())
        .expect("a stored Deployment has a uid");
    owner.block_owner_deletion = None;
    secrets::holding(
        ObjectMeta {
            name: Some(workload_secret_name(&d.name_any())),
            namespace: d.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                (KIND_LABEL.to_string(), WORKLOAD_SECRET_KIND.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_string(),
                m.hash.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        m,
    )
}

/// What the rollout found and did: its problems, and for each stage of the app that has rollout
/// workloads, where each stands and what they are to carry.
#[derive(Debug, Default)]
struct Rollout {
    problems: RolloutProblems,
    stages: BTreeMap<String, StageWorkloads>,
}

/// One stage's rollout workloads after this pass.
#[derive(Debug, Default, PartialEq)]
struct StageWorkloads {
    /// By name, each as its Deployment reports it (one waiting its turn is Waiting).
    workloads: Vec<(String, WorkloadState)>,
    /// A digest of what they are to carry (configuration hashes and release).
    revision: String,
}

/// For each Deployment the app's rollout names or selects: its workload Secret
/// (`tooljet-workload.<deployment>`) holds the constants of every (app, stage) that claims it,
/// across apps ([`workload`]), and its pod template carries that Secret's hash and the releases
/// of the apps whose last stage it serves ([`RELEASE_ANNOTATION`]), so it restarts when, and
/// only when, what it reads or what is released changes. A Deployment may serve several stages
/// (one ToolJet instance for every environment) and several apps (one instance per environment).
/// In a stage whose rollout restarts one at a time, a Deployment is changed only while no other
/// Deployment of that stage is rolling out.
///
/// Gather (the Deployments), decide per Deployment ([`plan_workload`], pure but for the cached
/// stage configurations), apply ([`apply_workload`]), and record what each workload served.
async fn roll_out(
    ctx: &Context,
    app: &ToolJetApp,
    ns: &str,
    live: Option<&str>,
) -> Result<Rollout, Error> {
    let mut rollout = Rollout::default();
    if app.spec.rollout.is_empty() {
        // Workloads it shared with other apps, if any, are theirs now.
        ctx.sharing.record(ns, &app.name_any(), BTreeMap::new());
        return Ok(rollout);
    }
    let problems = &mut rollout.problems;
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let deployments = rollout_deployments(&api, app, problems).await?;
    let apps = ctx.lookups.apps_with_rollout(ns);
    let mut releases = Releases {
        this: app,
        live,
        apps: &apps,
        lookups: &ctx.lookups,
        known: BTreeMap::new(),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut seen: BTreeMap<String, Served> = BTreeMap::new();
    // Each (app, stage) configuration is merged once, however many Deployments take it in.
    let mut merged: BTreeMap<(String, String), Materialized> = BTreeMap::new();
    let members = stage_members(app, &deployments);
    let mut states: BTreeMap<String, WorkloadState> = deployments
        .iter()
        .map(|(name, d)| (name.clone(), verify::workload_state(d)))
        .collect();
    let mut restarting: BTreeSet<String> = states
        .iter()
        .filter(|(_, s)| **s != WorkloadState::Available)
        .map(|(name, _)| name.clone())
        .collect();
    let mut desired: BTreeMap<String, String> = BTreeMap::new();
    for (name, d) in &deployments {
        let plan = plan_workload(ctx, app, &apps, ns, (name, d), &mut merged, &mut releases);
        seen.insert(name.clone(), (plan.fingerprint.clone(), plan.served));
        let release = plan.release;
        desired.insert(
            name.clone(),
            format!(
                "{}|{}",
                plan.fingerprint,
                release.as_deref().unwrap_or_default()
            ),
        );
        let m = match plan.secret {
            Ok(m) => m,
            Err(conflict) => {
                problems.conflicts.push(conflict);
                continue;
            }
        };
        if template_differs(d, &m.hash, release.as_deref())
            && let Some(first) = turn_of_another(app, &members, &restarting, name)
        {
            states.insert(name.clone(), WorkloadState::Queued(first));
            continue;
        }
        let target = (&api, &secrets);
        if let Some(stamped) =
            apply_workload(ctx, app, target, d, &plan.serves, (m, release), problems).await?
        {
            states.insert(name.clone(), verify::workload_state(&stamped));
            restarting.insert(name.clone());
        }
    }
    ctx.sharing.record(ns, &app.name_any(), seen);
    rollout.stages = stage_workloads(members, &states, &desired);
    Ok(rollout)
}

/// Each stage's workloads after this pass, with the digest of what they are to carry (`desired`,
/// by Deployment); stages without any left out.
fn stage_workloads(
    members: BTreeMap<String, Vec<String>>,
    states: &BTreeMap<String, WorkloadState>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, StageWorkloads> {
    members
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(stage, names)| {
            let workloads = names
                .iter()
                .map(|n| (n.clone(), states[n].clone()))
                .collect();
            let revision = revision_of(names.iter().map(|n| (n.as_str(), desired[n].as_str())));
            (
                stage,
                StageWorkloads {
                    workloads,
                    revision,
                },
            )
        })
        .collect()
}

/// For each stage of the app's rollout, the Deployments found that it takes, by name.
fn stage_members(
    app: &ToolJetApp,
    deployments: &BTreeMap<String, Deployment>,
) -> BTreeMap<String, Vec<String>> {
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for target in &app.spec.rollout {
        let names = members.entry(target.environment.clone()).or_default();
        for (name, d) in deployments {
            if target.takes(name, d.labels()) && !names.contains(name) {
                names.push(name.clone());
            }
        }
        names.sort();
    }
    members
}

/// In a stage of `name` that restarts one at a time, another Deployment still rolling out (or
/// changed in this pass), whose turn it is: `name` waits for it.
fn turn_of_another(
    app: &ToolJetApp,
    members: &BTreeMap<String, Vec<String>>,
    restarting: &BTreeSet<String>,
    name: &str,
) -> Option<String> {
    // One already rolling out (or failing) is not held back: changing it restarts nothing that
    // is up, and a change may be what fixes it (two failing ones would otherwise wait for each
    // other for ever).
    if restarting.contains(name) {
        return None;
    }
    app.spec
        .rollout
        .iter()
        .filter(|t| t.strategy == RolloutStrategy::OneAtATime)
        .filter_map(|t| members.get(&t.environment))
        .filter(|names| names.iter().any(|n| n == name))
        .flat_map(|names| names.iter())
        .find(|n| n.as_str() != name && restarting.contains(n.as_str()))
        .cloned()
}

/// A short digest of what a stage's workloads are to carry (pure).
fn revision_of<'a>(desired: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, what) in desired {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(what.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The live release of the apps whose last stage a workload of this pass serves, worked out once
/// each and only for them: `this` app's is this pass's; each other one's as its own reconcile
/// computes it ([`live_release`]), so that two apps sharing a workload never stamp each other's
/// release back and forth while one's status is on its way.
struct Releases<'a> {
    this: &'a ToolJetApp,
    live: Option<&'a str>,
    apps: &'a [Arc<ToolJetApp>],
    lookups: &'a Lookups,
    /// App name -> its live release, once worked out.
    known: BTreeMap<String, Option<String>>,
}

impl Releases<'_> {
    /// `app=version` when `stage` is the last stage of app `name` and it has a live release.
    fn stamp(&mut self, name: &str, stage: &str) -> Option<String> {
        let is_this = name == self.this.name_any();
        let app = if is_this {
            self.this
        } else {
            self.apps.iter().find(|a| a.name_any() == name)?
        };
        if Pipeline::of(app).last() != stage {
            return None;
        }
        let (live, lookups) = (self.live, self.lookups);
        let version = self.known.entry(name.to_string()).or_insert_with(|| {
            if is_this {
                return live.map(str::to_string);
            }
            let versions = lookups.versions_of(&app.namespace().unwrap_or_default(), name);
            live_release(app, &check_release(app, &versions))
        });
        version.as_ref().map(|v| format!("{name}={v}"))
    }
}

/// Whether the Deployment's pod template lacks the configuration hash or the release annotation
/// it should carry.
fn template_differs(d: &Deployment, hash: &str, release: Option<&str>) -> bool {
    let annotations = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    get(HASH_ANNOTATION) != Some(hash) || get(RELEASE_ANNOTATION) != release
}

/// The Deployments the app's rollout names (those not found are reported missing) or selects (a
/// malformed selector is reported invalid), by name.
async fn rollout_deployments(
    api: &Api<Deployment>,
    app: &ToolJetApp,
    problems: &mut RolloutProblems,
) -> Result<BTreeMap<String, Deployment>, Error> {
    let mut deployments: BTreeMap<String, Deployment> = BTreeMap::new();
    for target in &app.spec.rollout {
        let stage = target.environment.as_str();
        for name in &target.deployments {
            if deployments.contains_key(name) {
                continue;
            }
            match api.get_opt(name).await.at(Step::ReadDeployment)? {
                Some(d) => {
                    deployments.insert(name.clone(), d);
                }
                None => problems.missing.push(format!("{stage}/{name}")),
            }
        }
        match target.parsed_selector() {
            Ok(Some(selector)) => {
                for d in api
                    .list(&ListParams::default().labels_from(&selector))
                    .await
                    .at(Step::ListDeployments)?
                {
                    deployments.insert(d.name_any(), d);
                }
            }
            Ok(None) => {}
            Err(problem) => problems
                .invalid
                .push(format!("the selector of the {stage} entry: {problem}")),
        }
    }
    Ok(deployments)
}

/// What one workload should hold: the configuration of every (app, stage) that claims it.
struct WorkloadPlan {
    /// The apps it serves, and what its Secret was computed to be (for [`Sharing`]).
    served: BTreeSet<String>,
    fingerprint: String,
    /// `app/stage, ...`, for messages.
    serves: String,
    /// Its Secret's content, or why there is none (apps that disagree on a value).
    secret: Result<Materialized, String>,
    /// Its [`RELEASE_ANNOTATION`]: the releases of the apps whose last stage it serves.
    release: Option<String>,
}

/// Decides what the Deployment `name` should hold, from the cached stage configurations of every
/// (app, stage) that claims it, merging each (app, stage) once into `merged`.
fn plan_workload(
    ctx: &Context,
    app: &ToolJetApp,
    apps: &[Arc<ToolJetApp>],
    ns: &str,
    (name, d): (&str, &Deployment),
    merged: &mut BTreeMap<(String, String), Materialized>,
    releases: &mut Releases,
) -> WorkloadPlan {
    let claims = claims_on(app, apps, name, d.labels());
    let released: Vec<String> = claims
        .iter()
        .filter_map(|(a, stage)| releases.stamp(a, stage))
        .collect();
    let release = (!released.is_empty()).then(|| released.join(","));
    for (a, stage) in &claims {
        merged.entry((a.clone(), stage.clone())).or_insert_with(|| {
            crate::cache::stage::resolve(
                &ctx.hash_key,
                &ctx.managed_secrets,
                &ctx.lookups.configs,
                ns,
                a,
                stage,
            )
        });
    }
    let inputs: Vec<Claim> = claims
        .iter()
        .map(|(a, stage)| Claim {
            app: a,
            stage,
            config: &merged[&(a.clone(), stage.clone())].data,
        })
        .collect();
    let served: BTreeSet<String> = claims.iter().map(|(a, _)| a.clone()).collect();
    let serves = claims
        .iter()
        .map(|(a, s)| format!("{a}/{s}"))
        .collect::<Vec<_>>()
        .join(", ");
    let outcome = workload(&ctx.hash_key, &inputs);
    let fingerprint = match &outcome {
        Ok(m) => m.hash.clone(),
        Err(clashes) => format!("{clashes:?}"),
    };
    let secret = outcome.map_err(|clashes| {
        format!(
            "Deployment {name} serves {}: {}; one ToolJet server has one value per environment and name, so \
             give the apps the same value (or move it to the workspace-wide EnvironmentConfig) or run them \
             on separate Deployments; its configuration is left as it was",
            serves,
            clashes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    });
    WorkloadPlan {
        served,
        fingerprint,
        serves,
        secret,
        release,
    }
}

/// Writes the Deployment's workload Secret (unless another object holds its name: reported
/// invalid) and, when its hash or release changed, stamps both on the pod template, which
/// restarts it. `(m, release)`: what it is to carry. The Deployment as stamped, when it was.
async fn apply_workload(
    ctx: &Context,
    app: &ToolJetApp,
    (api, secrets): (&Api<Deployment>, &Api<Secret>),
    d: &Deployment,
    serves: &str,
    (m, release): (Materialized, Option<String>),
    problems: &mut RolloutProblems,
) -> Result<Option<Deployment>, Error> {
    let name = d.name_any();
    let desired = workload_secret(d, &m);
    let owner_uid = d.metadata.uid.as_deref();
    // A Deployment deleted and created again (kubectl replace --force, a reinstall) finds
    // the workload Secret of its predecessor, still controlled by the old UID until the
    // garbage collector runs (or for good after an orphaning delete): it is taken over.
    let replaced = |existing: &ManagedSecret| {
        existing.label(KIND_LABEL) == Some(WORKLOAD_SECRET_KIND)
            && existing
                .controller()
                .is_none_or(|(owner, _)| owner == name.as_str())
    };
    if secrets::sync(ctx, CONTROLLER, secrets, owner_uid, replaced, &desired).await?
        == Synced::Taken
    {
        problems.invalid.push(format!(
            "Secret {} exists and is not Deployment {name}'s workload Secret (it is not labelled as one, or \
             another object controls it); delete or rename it",
            desired.name_any()
        ));
        return Ok(None);
    }
    let hash = m.hash;
    if !template_differs(d, &hash, release.as_deref()) {
        return Ok(None);
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert(HASH_ANNOTATION.into(), json!(hash));
    if let Some(release) = &release {
        annotations.insert(RELEASE_ANNOTATION.into(), json!(release));
    }
    // Server-side apply: a release left out is removed (this manager set it).
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": { "template": { "metadata": { "annotations": annotations } } },
    });
    ctx.may_write()?;
    let stamped = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .at(Step::PatchDeployment)?;
    ctx.metrics.wrote(CONTROLLER, "deployment");
    let release = release.unwrap_or_default();
    info!(deployment = %name, %serves, %hash, %release, "rollout: configuration hash and release stamped");
    publish(
        &ctx.recorder,
        app,
        EventType::Normal,
        "RolloutTriggered",
        "Rollout",
        format!("Deployment {name} restarts with the changed configuration or release of {serves}"),
    )
    .await;
    Ok(Some(stamped))
}

/// The status (pure), and the release to record if the released version changed.
fn desired_status(
    app: &ToolJetApp,
    versions: &[Arc<AppVersion>],
    release: &Release,
    rollout: &Rollout,
    gates: Vec<StageGate>,
    now: DateTime<Utc>,
) -> (ToolJetAppStatus, Option<ReleaseRecord>) {
    let mut status = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    status.observed_generation = generation;
    status.gates = gates;
    let before = std::mem::take(&mut status.environments);
    status.environments = versions_per_stage(app, versions);
    let (ready, record) = release_condition(app, release, &mut status);
    // An automatic rollback is recorded with the release it made; one overtaken by another
    // release is dropped.
    if status
        .automatic_rollback
        .as_ref()
        .is_some_and(|i| record.is_some() || app.released() != Some(i.from.as_str()))
    {
        status.automatic_rollback = None;
    }
    status.verifications = verifications(app, &before, &status, record.as_ref(), rollout, now);
    record_outcome(app, &mut status);
    set_condition(&mut status.conditions, ready);
    set_condition(
        &mut status.conditions,
        rollout_condition(&rollout.problems, generation),
    );
    let rollback = automatic_rollback(app, &status, versions, now);
    match &rollback {
        Ok(Some(intent)) => {
            let same = |i: &AutomaticRollback| i.from == intent.from && i.to == intent.to;
            if !status.automatic_rollback.as_ref().is_some_and(same) {
                status.automatic_rollback = Some(intent.clone());
            }
        }
        // No longer decided (the release recovered, or automatic rollback was switched off)
        // before it was made: it is not made.
        _ => status.automatic_rollback = None,
    }
    set_condition(
        &mut status.conditions,
        verified_condition(app, &status.verifications, &rollback, generation),
    );
    (status, record)
}

/// Each stage's verification after this pass, for the stages with rollout workloads (pure).
fn verifications(
    app: &ToolJetApp,
    before: &[EnvironmentVersions],
    status: &ToolJetAppStatus,
    record: Option<&ReleaseRecord>,
    rollout: &Rollout,
    now: DateTime<Utc>,
) -> Vec<StageVerification> {
    let timeout = app.verification().timeout();
    app.spec
        .environments
        .iter()
        .filter_map(|stage| {
            let workloads = rollout.stages.get(stage)?;
            let previous = app.verification_of(stage);
            let entered = newly_in(stage, before, &status.environments);
            let start = start_of(app, stage, entered, record, previous, &workloads.revision);
            let mut v = verify::advance(stage, previous, start, &workloads.workloads, timeout, now);
            v.revision = workloads.revision.clone();
            Some(v)
        })
        .collect()
}

/// A version in `stage` now that was not before this pass (promoted into it), if any.
fn newly_in<'a>(
    stage: &str,
    before: &[EnvironmentVersions],
    after: &'a [EnvironmentVersions],
) -> Option<&'a str> {
    // A stage not listed before (the app's first status) had no promotion seen into it.
    let was = before.iter().find(|e| e.name == stage)?;
    after
        .iter()
        .find(|e| e.name == stage)?
        .versions
        .iter()
        .find(|v| !was.versions.contains(v))
        .map(String::as_str)
}

/// Whether a new verification of `stage` starts in this pass, and why (pure): a release or
/// rollback (the last stage); a version promoted into it (only into a verified stage: one under
/// way verifies it too, and a failed one stays failed); or a change of what its workloads are to carry (a configuration
/// change; while a release is being verified, it goes on as that release's, from now).
fn start_of(
    app: &ToolJetApp,
    stage: &str,
    entered: Option<&str>,
    record: Option<&ReleaseRecord>,
    previous: Option<&StageVerification>,
    revision: &str,
) -> Option<verify::Start> {
    let pipeline = Pipeline::of(app);
    if stage == pipeline.last()
        && let Some(r) = record
    {
        let cause = if r.automatic {
            VerificationCause::AutomaticRollback
        } else if r.rollback {
            VerificationCause::Rollback
        } else {
            VerificationCause::Release
        };
        return Some(verify::Start {
            cause,
            version: Some(r.version.clone()),
        });
    }
    let under_way = previous.filter(|p| p.phase == VerificationPhase::Progressing);
    // A promotion changes no workload: it is verified by the verification under way, and a
    // stage that failed stays failed (until its workloads are available, or a change) rather
    // than being judged again from the start, which would let versions out meanwhile.
    let settled = previous.is_none_or(|p| p.phase == VerificationPhase::Verified);
    if let Some(version) = entered.filter(|_| stage != pipeline.first())
        && settled
    {
        return Some(verify::Start {
            cause: VerificationCause::Promotion,
            version: Some(version.to_string()),
        });
    }
    if previous.is_some_and(|p| p.revision == revision) {
        return None;
    }
    Some(match under_way {
        Some(p) => verify::Start {
            cause: p.cause,
            version: p.version.clone(),
        },
        None => verify::Start {
            cause: VerificationCause::Configuration,
            version: None,
        },
    })
}

/// Whether a verification was started by a release or rollback.
fn verifies_a_release(v: &StageVerification) -> bool {
    matches!(
        v.cause,
        VerificationCause::Release
            | VerificationCause::Rollback
            | VerificationCause::AutomaticRollback
    )
}

/// A release's verification outcome, once known, in its history record (the newest of that
/// version).
fn record_outcome(app: &ToolJetApp, status: &mut ToolJetAppStatus) {
    let last = Pipeline::of(app).last();
    let Some(v) = status
        .verifications
        .iter()
        .find(|v| v.environment == last && verifies_a_release(v))
    else {
        return;
    };
    if v.phase == VerificationPhase::Progressing {
        return;
    }
    if let Some(r) = status
        .release_history
        .iter_mut()
        .rev()
        .find(|r| Some(&r.version) == v.version.as_ref())
    {
        r.verification = Some(v.phase);
    }
}

/// What the operator does about a release that failed verification (pure): `Ok(Some(rollback))`
/// releases an earlier release again (the newest that did not fail and is still in the last
/// stage); `Ok(None)`: nothing to do (no failed release, automatic rollback off, the release
/// changed since, or a rollback that failed: the operator never rolls back its own rollback);
/// `Err(why)`: it should, and cannot.
fn automatic_rollback(
    app: &ToolJetApp,
    status: &ToolJetAppStatus,
    versions: &[Arc<AppVersion>],
    now: DateTime<Utc>,
) -> Result<Option<AutomaticRollback>, String> {
    let last = Pipeline::of(app).last();
    let Some(failed) = status.verifications.iter().find(|v| {
        v.environment == last
            && v.phase == VerificationPhase::Failed
            && matches!(
                v.cause,
                VerificationCause::Release | VerificationCause::Rollback
            )
    }) else {
        return Ok(None);
    };
    let Some(failing) = failed.version.as_deref() else {
        return Ok(None);
    };
    if !app.verification().auto_rollback || app.released() != Some(failing) {
        return Ok(None);
    }
    let in_last = |name: &str| {
        versions
            .iter()
            .any(|v| v.name_any() == name && v.spec.environment == last)
    };
    // Each version judged by its newest release: one whose last release failed is no target.
    let mut seen = BTreeSet::new();
    let target = status
        .release_history
        .iter()
        .rev()
        .filter(|r| seen.insert(r.version.as_str()))
        .find(|r| {
            r.version != failing
                && r.verification != Some(VerificationPhase::Failed)
                && in_last(&r.version)
        });
    match target {
        Some(r) => Ok(Some(AutomaticRollback {
            from: failing.to_string(),
            to: r.version.clone(),
            reason: format!(
                "automatic rollback: the release of {failing} failed verification ({})",
                failed.message
            ),
            at: gate::to_time(now.trunc_subsecs(0)),
        })),
        None => Err(format!(
            "there is no earlier release of a {last} version that did not fail verification to go back to; \
             release one by hand"
        )),
    }
}

/// The Verified condition: a failed stage first (with what the operator does about it), then
/// one under way, else every stage verified (or none has workloads).
fn verified_condition(
    app: &ToolJetApp,
    vs: &[StageVerification],
    rollback: &Result<Option<AutomaticRollback>, String>,
    generation: Option<i64>,
) -> Condition {
    if let Some(f) = vs.iter().find(|v| v.phase == VerificationPhase::Failed) {
        let releasing = f.environment == Pipeline::of(app).last() && verifies_a_release(f);
        let what = match (f.cause, rollback) {
            _ if !releasing => String::new(),
            (VerificationCause::AutomaticRollback, _) => {
                "; this was an automatic rollback, which is not rolled back again: fix the workloads or release \
                 another version"
                    .to_string()
            }
            (_, Ok(Some(r))) => format!("; rolling back to {} automatically", r.to),
            (_, Err(why)) => format!("; no automatic rollback: {why}"),
            (_, Ok(None)) => String::new(),
        };
        // A configuration change names no version: the stage says it.
        let about = f
            .version
            .as_ref()
            .map(|_| format!(" ({})", f.about()))
            .unwrap_or_default();
        return condition(
            conditions::VERIFIED,
            false,
            conditions::VERIFICATION_FAILED,
            format!("{}{about}: {}{what}", f.environment, f.message),
            generation,
        );
    }
    if let Some(p) = vs
        .iter()
        .find(|v| v.phase == VerificationPhase::Progressing)
    {
        let mut c = condition(
            conditions::VERIFIED,
            false,
            conditions::PROGRESSING,
            format!("{} ({}): {}", p.environment, p.progress, p.message),
            generation,
        );
        c.status = "Unknown".into();
        return c;
    }
    if vs.is_empty() {
        return condition(
            conditions::VERIFIED,
            true,
            conditions::NO_WORKLOADS,
            "no stage has rollout workloads to verify",
            generation,
        );
    }
    condition(
        conditions::VERIFIED,
        true,
        conditions::VERIFIED_REASON,
        "every stage with rollout workloads passed its last verification",
        generation,
    )
}

/// The versions in each stage of the pipeline, by name.
fn versions_per_stage(app: &ToolJetApp, versions: &[Arc<AppVersion>]) -> Vec<EnvironmentVersions> {
    app.spec
        .environments
        .iter()
        .map(|stage| {
            let mut names: Vec<String> = versions
                .iter()
                .filter(|v| &v.spec.environment == stage)
                .map(|v| v.name_any())
                .collect();
            names.sort();
            EnvironmentVersions {
                name: stage.clone(),
                versions: names,
            }
        })
        .collect()
}

/// The Ready condition, from the release; a newly released version is recorded in `status`
/// (released version and history) and returned as the release to announce.
fn release_condition(
    app: &ToolJetApp,
    release: &Release,
    status: &mut ToolJetAppStatus,
) -> (Condition, Option<ReleaseRecord>) {
    let generation = app.metadata.generation;
    let mut record = None;
    let ready = match release {
        Release::None => {
            status.released_version = None;
            condition(
                conditions::READY,
                true,
                conditions::NO_RELEASE,
                "no version is released yet",
                generation,
            )
        }
        Release::Valid(version) => {
            if status.released_version.as_ref() != Some(version) {
                let r = release_record(app, version, status);
                history::record(&mut status.release_history, r.clone());
                status.released_version = Some(version.clone());
                record = Some(r);
            }
            condition(
                conditions::READY,
                true,
                conditions::RELEASED_REASON,
                format!("{version} is live for end users"),
                generation,
            )
        }
        Release::Invalid { reason, message } => {
            let kept = status
                .released_version
                .as_ref()
                .map(|v| format!("; {v} stays released"))
                .unwrap_or_default();
            condition(
                conditions::READY,
                false,
                reason,
                format!("{message}{kept}"),
                generation,
            )
        }
    };
    (ready, record)
}

/// The history record of releasing `version` now: who and when from the webhook's stamps when
/// they describe this release, and whether it was released before (a rollback).
fn release_record(app: &ToolJetApp, version: &str, status: &ToolJetAppStatus) -> ReleaseRecord {
    let annotations = app.annotations();
    // The stamps describe the release of the version they name only.
    let made = if annotations
        .get(RELEASED_VERSION_ANNOTATION)
        .map(String::as_str)
        == Some(version)
    {
        stamps::made(annotations, RELEASED_AT_ANNOTATION, RELEASED_BY_ANNOTATION)
    } else {
        stamps::Made::default()
    };
    // The operator's automatic rollback: recorded in the status before it was made.
    let automatic = status
        .automatic_rollback
        .as_ref()
        .filter(|i| i.to == version);
    ReleaseRecord {
        version: version.to_string(),
        at: Time(made.at.unwrap_or_else(Timestamp::now)),
        by: made.by,
        override_reason: made.override_reason,
        rollback: status.release_history.iter().any(|h| h.version == version),
        automatic: automatic.is_some(),
        reason: automatic.map(|i| i.reason.clone()),
        verification: None,
    }
}

/// The RolloutReady condition: the first kind of problem, in order of what to fix first.
fn rollout_condition(rollout: &RolloutProblems, generation: Option<i64>) -> Condition {
    if !rollout.conflicts.is_empty() {
        condition(
            conditions::ROLLOUT_READY,
            false,
            conditions::CONFLICT,
            rollout.conflicts.join("; "),
            generation,
        )
    } else if !rollout.invalid.is_empty() {
        condition(
            conditions::ROLLOUT_READY,
            false,
            conditions::INVALID_ROLLOUT,
            format!(
                "spec.rollout: {}; those Deployments are left alone",
                rollout.invalid.join("; ")
            ),
            generation,
        )
    } else if !rollout.missing.is_empty() {
        condition(
            conditions::ROLLOUT_READY,
            false,
            conditions::DEPLOYMENT_NOT_FOUND,
            format!(
                "Deployments named in spec.rollout do not exist: {}",
                rollout.missing.join(", ")
            ),
            generation,
        )
    } else {
        condition(
            conditions::ROLLOUT_READY,
            true,
            conditions::SYNCED,
            "every rollout workload's Secret holds what it serves, and its pod template that Secret's hash",
            generation,
        )
    }
}

pub fn error_policy(app: Arc<ToolJetApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_action(CONTROLLER, &*app, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppVersionSpec, Release as ReleaseSpec, RolloutTarget, ToolJetAppSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use kube::core::SelectorExt;

    fn app(release: Option<&str>) -> ToolJetApp {
        let mut a = ToolJetApp::new(
            "crm",
            ToolJetAppSpec {
                display_name: None,
                environments: crate::api::default_pipeline(),
                release: release.map(|v| ReleaseSpec { version: v.into() }),
                rollout: vec![],
                verification: None,
            },
        );
        a.metadata.generation = Some(2);
        a
    }

    #[test]
    fn only_a_pass_that_found_its_app_behind_is_woken_when_the_cache_catches_up() {
        let at = |rv: &str| {
            let mut a = app(None);
            a.metadata.namespace = Some("team".into());
            a.metadata.resource_version = Some(rv.into());
            a
        };
        let written = Written::default();
        written.wrote(&at("10"));
        assert!(
            !written.caught_up(&at("11")),
            "no pass waits: the write's own event wakes nothing"
        );
        assert!(!written.behind(&at("11")), "the cache shows the write");

        written.wrote(&at("11"));
        assert!(written.behind(&at("11")), "a pass ahead of the cache waits");
        assert!(!written.caught_up(&at("11")), "the cache has not moved");
        assert!(written.caught_up(&at("12")), "the write's event wakes it");
        assert!(!written.behind(&at("12")));
        assert!(!written.caught_up(&at("13")), "the record is spent");
    }

    fn version(name: &str, env: &str) -> Arc<AppVersion> {
        Arc::new(AppVersion::new(
            name,
            AppVersionSpec {
                app: "crm".into(),
                version_name: name.into(),
                description: None,
                environment: env.into(),
                definition: None,
                requires: None,
            },
        ))
    }

    fn versions() -> Vec<Arc<AppVersion>> {
        vec![
            version("v1", "production"),
            version("v2", "production"),
            version("v3", "staging"),
            version("v4", "development"),
        ]
    }

    fn secs(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    const OPERATOR: &str = "system:serviceaccount:tooljet-system:tooljet-operator";

    /// The production stage's one workload, in `state`, carrying `revision`.
    fn production(state: WorkloadState, revision: &str) -> Rollout {
        Rollout {
            problems: RolloutProblems::default(),
            stages: BTreeMap::from([(
                "production".to_string(),
                StageWorkloads {
                    workloads: vec![("web".into(), state)],
                    revision: revision.into(),
                },
            )]),
        }
    }

    /// One pass: the status `a` gets with its production workload in `state` at `t`.
    fn pass(
        a: &mut ToolJetApp,
        state: WorkloadState,
        revision: &str,
        t: i64,
    ) -> Option<ReleaseRecord> {
        let (s, r) = desired_status(
            a,
            &versions(),
            &check_release(a, &versions()),
            &production(state, revision),
            vec![],
            secs(t),
        );
        a.status = Some(s);
        r
    }

    fn release_by(a: &mut ToolJetApp, version: &str, by: &str) {
        a.spec.release = Some(ReleaseSpec {
            version: version.into(),
        });
        let annotations = a.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(RELEASED_VERSION_ANNOTATION.into(), version.into());
        annotations.insert(RELEASED_BY_ANNOTATION.into(), by.into());
    }

    fn verified(a: &ToolJetApp) -> (String, String, String) {
        let c = a
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Verified")
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn stuck() -> WorkloadState {
        WorkloadState::Failed {
            why: "ProgressDeadlineExceeded: ReplicaSet \"web-2\" has timed out progressing.".into(),
            since: None,
        }
    }

    /// An app that rolls back automatically, with v1 released and verified.
    fn rolling_back_with_v1_verified() -> ToolJetApp {
        let mut a = app(None);
        a.spec.verification = Some(crate::api::Verification {
            timeout_seconds: 60,
            auto_rollback: true,
        });
        release_by(&mut a, "v1", "carol");
        pass(&mut a, WorkloadState::Available, "r1", 0);
        a
    }

    #[test]
    fn a_failed_release_is_rolled_back_once_and_recorded_as_automatic() {
        let mut a = rolling_back_with_v1_verified();
        assert_eq!(verified(&a).0, "True");

        release_by(&mut a, "v2", "carol");
        let r = pass(
            &mut a,
            WorkloadState::Waiting("0 of 1 new pods available".into()),
            "r2",
            10,
        );
        assert!(!r.unwrap().automatic);
        let v = a.verification_of("production").unwrap().clone();
        assert_eq!(
            (v.cause, v.phase, v.version.as_deref()),
            (
                VerificationCause::Release,
                VerificationPhase::Progressing,
                Some("v2")
            )
        );
        assert_eq!(verified(&a).0, "Unknown");
        // The same pass again (a restart): nothing starts over.
        pass(
            &mut a,
            WorkloadState::Waiting("0 of 1 new pods available".into()),
            "r2",
            20,
        );
        assert_eq!(
            a.verification_of("production").unwrap().started_at,
            v.started_at
        );

        pass(&mut a, stuck(), "r2", 30);
        let (status, reason, message) = verified(&a);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "VerificationFailed")
        );
        assert!(
            message.contains("rolling back to v1 automatically"),
            "{message}"
        );
        let status = a.status.clone().unwrap();
        assert_eq!(
            status.release_history.last().unwrap().verification,
            Some(VerificationPhase::Failed)
        );
        let decision = automatic_rollback(&a, &status, &versions(), secs(30));
        let Ok(Some(rollback)) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!((rollback.from.as_str(), rollback.to.as_str()), ("v2", "v1"));
        assert!(
            rollback
                .reason
                .contains("the release of v2 failed verification"),
            "{rollback:?}"
        );
        // Recorded before it is made, so that the release it makes is known for automatic.
        assert_eq!(status.automatic_rollback, Some(rollback));

        // The operator's own release of v1: automatic, with the reason.
        release_by(&mut a, "v1", OPERATOR);
        let r = pass(
            &mut a,
            WorkloadState::Waiting("0 of 1 new pods available".into()),
            "r1",
            40,
        )
        .unwrap();
        assert!(r.automatic && r.rollback, "{r:?}");
        assert!(
            r.reason
                .as_deref()
                .unwrap()
                .contains("the release of v2 failed verification")
        );
        assert_eq!(
            a.verification_of("production").unwrap().cause,
            VerificationCause::AutomaticRollback
        );
        // Nothing more to do while it is verified, and after.
        let status = a.status.clone().unwrap();
        assert_eq!(
            automatic_rollback(&a, &status, &versions(), secs(0)),
            Ok(None)
        );
        pass(&mut a, WorkloadState::Available, "r1", 45);
        let history: Vec<(&str, bool, Option<VerificationPhase>)> = a
            .status
            .as_ref()
            .unwrap()
            .release_history
            .iter()
            .map(|h| (h.version.as_str(), h.automatic, h.verification))
            .collect();
        assert_eq!(
            history,
            [
                ("v1", false, Some(VerificationPhase::Verified)),
                ("v2", false, Some(VerificationPhase::Failed)),
                ("v1", true, Some(VerificationPhase::Verified)),
            ]
        );
        assert_eq!(verified(&a).0, "True");
    }

    #[test]
    fn a_rollback_decided_but_not_made_is_dropped_when_the_release_recovers() {
        let mut a = rolling_back_with_v1_verified();
        release_by(&mut a, "v2", "carol");
        pass(&mut a, stuck(), "r2", 10);
        assert!(a.status.as_ref().unwrap().automatic_rollback.is_some());
        // v2's pods came up after all before the rollback was made.
        pass(&mut a, WorkloadState::Available, "r2", 20);
        let status = a.status.as_ref().unwrap();
        assert_eq!(status.automatic_rollback, None);
        assert_eq!(verified(&a).0, "True");
    }

    #[test]
    fn a_rollback_goes_only_to_a_version_whose_newest_release_did_not_fail() {
        let mut a = rolling_back_with_v1_verified();
        release_by(&mut a, "v2", "carol");
        pass(&mut a, stuck(), "r2", 10);
        release_by(&mut a, "v1", OPERATOR);
        pass(&mut a, stuck(), "r1", 20);
        // v1's newest release (the automatic one) failed too; a person releases v2 again, and
        // it fails: v1's older, verified release does not make v1 a target.
        release_by(&mut a, "v2", "carol");
        pass(&mut a, stuck(), "r2", 30);
        let status = a.status.clone().unwrap();
        let decision = automatic_rollback(&a, &status, &versions(), secs(30));
        assert!(decision.is_err(), "{decision:?}");
        assert!(
            verified(&a).2.contains("no automatic rollback"),
            "{:?}",
            verified(&a)
        );
    }

    #[test]
    fn a_rollback_that_fails_is_not_rolled_back_again_and_without_opt_in_nothing_is() {
        let mut a = rolling_back_with_v1_verified();
        release_by(&mut a, "v2", "carol");
        pass(&mut a, stuck(), "r2", 10);
        release_by(&mut a, "v1", OPERATOR);
        pass(&mut a, stuck(), "r1", 20);
        let status = a.status.clone().unwrap();
        assert_eq!(
            automatic_rollback(&a, &status, &versions(), secs(0)),
            Ok(None)
        );
        assert!(
            verified(&a).2.contains("not rolled back again"),
            "{:?}",
            verified(&a)
        );

        let mut b = app(None);
        release_by(&mut b, "v1", "carol");
        pass(&mut b, WorkloadState::Available, "r1", 0);
        release_by(&mut b, "v2", "carol");
        pass(&mut b, stuck(), "r2", 10);
        let status = b.status.clone().unwrap();
        assert_eq!(
            automatic_rollback(&b, &status, &versions(), secs(0)),
            Ok(None)
        );
        let (status, _, message) = verified(&b);
        assert_eq!(status, "False");
        assert!(!message.contains("rolling back"), "{message}");
    }

    #[test]
    fn a_promotion_starts_a_verification_unless_one_is_under_way() {
        let mut a = app(None);
        pass(&mut a, WorkloadState::Available, "r1", 0);
        let mut more = versions();
        more.push(version("v5", "production"));
        let (s, _) = desired_status(
            &a,
            &more,
            &Release::None,
            &production(WorkloadState::Available, "r1"),
            vec![],
            secs(10),
        );
        let v = &s.verifications[0];
        assert_eq!(
            (v.cause, v.version.as_deref(), v.phase),
            (
                VerificationCause::Promotion,
                Some("v5"),
                VerificationPhase::Verified
            )
        );
        // While a configuration change is being verified, a promotion does not restart it.
        pass(
            &mut a,
            WorkloadState::Waiting("1 old pods not yet replaced".into()),
            "r2",
            20,
        );
        let (s, _) = desired_status(
            &a,
            &more,
            &Release::None,
            &production(
                WorkloadState::Waiting("1 old pods not yet replaced".into()),
                "r2",
            ),
            vec![],
            secs(30),
        );
        assert_eq!(s.verifications[0].cause, VerificationCause::Configuration);
        assert_eq!(s.verifications[0].started_at, gate::to_time(secs(20)));
    }

    #[test]
    fn a_promotion_into_a_failed_stage_leaves_it_failed() {
        let mut a = app(None);
        pass(&mut a, stuck(), "r1", 0);
        let mut more = versions();
        more.push(version("v5", "production"));
        let (s, _) = desired_status(
            &a,
            &more,
            &Release::None,
            &production(stuck(), "r1"),
            vec![],
            secs(10),
        );
        let v = &s.verifications[0];
        assert_eq!(
            (v.cause, v.phase, v.started_at.clone()),
            (
                VerificationCause::Configuration,
                VerificationPhase::Failed,
                gate::to_time(secs(0))
            )
        );
    }

    #[test]
    fn one_at_a_time_waits_for_every_other_workload_of_the_stage() {
        let mut a = app(None);
        a.spec.rollout = vec![RolloutTarget {
            environment: "production".into(),
            deployments: vec!["a".into(), "b".into(), "c".into()],
            selector: None,
            strategy: RolloutStrategy::OneAtATime,
        }];
        let members = BTreeMap::from([(
            "production".to_string(),
            vec!["a".to_string(), "b".to_string(), "c".to_string()],
        )]);
        let restarting = BTreeSet::from(["a".to_string()]);
        assert_eq!(
            turn_of_another(&a, &members, &restarting, "b"),
            Some("a".into())
        );
        // Two failing: neither waits for the other (a change may be what fixes them).
        let both = BTreeSet::from(["a".to_string(), "b".to_string()]);
        assert_eq!(turn_of_another(&a, &members, &both, "a"), None);
        assert_eq!(turn_of_another(&a, &members, &both, "b"), None);
        assert_eq!(turn_of_another(&a, &members, &both, "c"), Some("a".into()));
        // A workload never waits for itself (a failing one can be fixed by a new change).
        assert_eq!(turn_of_another(&a, &members, &restarting, "a"), None);
        assert_eq!(turn_of_another(&a, &members, &BTreeSet::new(), "b"), None);
        a.spec.rollout[0].strategy = RolloutStrategy::AllAtOnce;
        assert_eq!(turn_of_another(&a, &members, &restarting, "b"), None);
    }

    #[test]
    fn releases_must_name_a_version_in_the_last_stage() {
        assert_eq!(check_release(&app(None), &versions()), Release::None);
        assert_eq!(
            check_release(&app(Some("v2")), &versions()),
            Release::Valid("v2".into())
        );
        let Release::Invalid { reason, message } = check_release(&app(Some("v3")), &versions())
        else {
            panic!()
        };
        assert_eq!(reason, "ReleaseVersionNotInLastStage");
        assert!(
            message.contains("promote it to production first"),
            "{message}"
        );
        let Release::Invalid { reason, .. } = check_release(&app(Some("v9")), &versions()) else {
            panic!()
        };
        assert_eq!(reason, "ReleaseVersionNotFound");
    }

    #[test]
    fn release_history_records_releases_and_rollbacks_and_keeps_the_last_good_release() {
        let mut a = app(Some("v1"));
        let (s, r) = desired_status(
            &a,
            &versions(),
            &check_release(&a, &versions()),
            &Rollout::default(),
            vec![],
            secs(0),
        );
        assert_eq!(s.released_version.as_deref(), Some("v1"));
        assert!(!r.unwrap().rollback);
        a.status = Some(s);

        a.spec.release = Some(ReleaseSpec {
            version: "v2".into(),
        });
        let (s, r) = desired_status(
            &a,
            &versions(),
            &check_release(&a, &versions()),
            &Rollout::default(),
            vec![],
            secs(0),
        );
        assert_eq!(r.unwrap().version, "v2");
        a.status = Some(s);

        a.spec.release = Some(ReleaseSpec {
            version: "v1".into(),
        });
        let (s, r) = desired_status(
            &a,
            &versions(),
            &check_release(&a, &versions()),
            &Rollout::default(),
            vec![],
            secs(0),
        );
        assert!(
            r.unwrap().rollback,
            "releasing an earlier version is a rollback"
        );
        assert_eq!(
            s.release_history
                .iter()
                .map(|h| h.version.as_str())
                .collect::<Vec<_>>(),
            ["v1", "v2", "v1"]
        );
        a.status = Some(s);

        a.spec.release = Some(ReleaseSpec {
            version: "v3".into(),
        });
        let (s, r) = desired_status(
            &a,
            &versions(),
            &check_release(&a, &versions()),
            &Rollout::default(),
            vec![],
            secs(0),
        );
        assert!(r.is_none());
        assert_eq!(
            s.released_version.as_deref(),
            Some("v1"),
            "the previous release stays in effect"
        );
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ReleaseVersionNotInLastStage")
        );
        assert!(ready.message.contains("v1 stays released"));
    }

    #[test]
    fn versions_are_listed_per_stage_in_pipeline_order() {
        let a = app(None);
        let (s, _) = desired_status(
            &a,
            &versions(),
            &Release::None,
            &Rollout::default(),
            vec![],
            secs(0),
        );
        let listed: Vec<(&str, Vec<&str>)> = s
            .environments
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.versions.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("development", vec!["v4"]),
                ("staging", vec!["v3"]),
                ("production", vec!["v1", "v2"])
            ]
        );
    }

    fn guard(
        name: &str,
        stages: &[&str],
        required: Option<u32>,
        deny: Option<(&str, &str)>,
        tier: Option<&str>,
    ) -> Arc<PromotionPolicy> {
        let mut p = PromotionPolicy::new(
            name,
            crate::api::PromotionPolicySpec {
                app_selector: tier.map(|t| LabelSelector {
                    match_labels: Some(BTreeMap::from([("tier".into(), t.into())])),
                    match_expressions: None,
                }),
                environments: stages.iter().map(|s| s.to_string()).collect(),
                approvals: required.map(|required| crate::api::ApprovalRequirement {
                    required,
                    separation_of_duties: true,
                }),
                windows: deny
                    .map(|(schedule, duration)| crate::api::PromotionWindow {
                        kind: crate::api::WindowKind::Deny,
                        schedule: schedule.into(),
                        duration: duration.into(),
                        time_zone: None,
                        description: Some("freeze".into()),
                    })
                    .into_iter()
                    .collect(),
            },
        );
        p.metadata.namespace = Some("ns".into());
        Arc::new(p)
    }

    fn at(h: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 3, 4, h, 0, 0).unwrap()
    }

    #[test]
    fn guarded_stages_report_their_combined_gate_in_pipeline_order() {
        let mut a = app(None);
        a.metadata.namespace = Some("ns".into());
        let policies = [
            guard("two-approvals", &["production"], Some(2), None, None),
            guard(
                "one-approval",
                &["production", "staging"],
                Some(1),
                None,
                None,
            ),
            guard(
                "freeze",
                &["production"],
                None,
                Some(("0 9 * * *", "2h")),
                None,
            ),
            guard(
                "other-tier",
                &["development"],
                Some(3),
                None,
                Some("critical"),
            ),
        ];
        let (gates, next) = stage_gates(&a, &policies, at(10));
        let summary: Vec<(&str, Vec<&str>, u32, bool)> = gates
            .iter()
            .map(|g| {
                (
                    g.environment.as_str(),
                    g.policies.iter().map(String::as_str).collect(),
                    g.required_approvals,
                    g.open,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("staging", vec!["one-approval"], 1, true),
                (
                    "production",
                    vec!["freeze", "one-approval", "two-approvals"],
                    2,
                    false
                ),
            ],
            "the highest requirement, every window; an unselected app is not guarded"
        );
        let production = &gates[1];
        assert_eq!(production.next_open, Some(gate::to_time(at(11))));
        assert!(
            production
                .closed_by
                .as_deref()
                .is_some_and(|c| c.contains("freeze of PromotionPolicy freeze")),
            "{:?}",
            production.closed_by
        );
        assert_eq!(gates[0].closed_by, None);
        assert_eq!(next, Some(at(11)), "the app wakes when production opens");

        let (s, _) = desired_status(
            &a,
            &versions(),
            &Release::None,
            &Rollout::default(),
            gates,
            secs(0),
        );
        assert_eq!(s.gates.len(), 2);
    }

    #[test]
    fn an_app_no_policy_guards_has_no_gates_and_no_requeue() {
        let a = app(None);
        let (gates, next) = stage_gates(&a, &[], at(10));
        assert!(gates.is_empty());
        assert_eq!(next, None);
    }

    #[test]
    fn rollout_problems_set_the_rollout_condition() {
        let a = app(None);
        let condition_for = |problems: &RolloutProblems| {
            let rollout = Rollout {
                problems: RolloutProblems {
                    missing: problems.missing.clone(),
                    invalid: problems.invalid.clone(),
                    conflicts: problems.conflicts.clone(),
                },
                stages: BTreeMap::new(),
            };
            let (s, _) = desired_status(&a, &versions(), &Release::None, &rollout, vec![], secs(0));
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "RolloutReady")
                .unwrap()
        };
        let c = condition_for(&RolloutProblems {
            invalid: vec!["the selector of the staging entry: bad".into()],
            ..Default::default()
        });
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidRollout")
        );
        assert!(c.message.contains("the selector of the staging entry: bad"));
        // A conflict outranks the rest: the workload keeps its old configuration.
        let c = condition_for(&RolloutProblems {
            invalid: vec!["x".into()],
            missing: vec!["staging/web".into()],
            conflicts: vec!["Deployment web serves crm/production, hr/production: ...".into()],
        });
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Conflict")
        );
        let c = condition_for(&RolloutProblems::default());
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Synced"));
    }

    #[tokio::test]
    async fn sharing_wakes_the_other_apps_only_when_a_shared_workload_changes() {
        use futures::StreamExt;
        let sharing = Sharing::default();
        let mut woken = sharing.woken();
        let apps = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let seen = |outcome: &str, names: &[&str]| {
            BTreeMap::from([("tooljet".to_string(), (outcome.to_string(), apps(names)))])
        };
        let next = |w: &mut (dyn Stream<Item = ObjectRef<ToolJetApp>> + Unpin)| {
            futures::FutureExt::now_or_never(w.next())
                .flatten()
                .map(|r| r.name)
        };
        let mut woken = Box::pin(&mut woken);
        // hr joins crm's workload: crm is woken; crm then finds the same: nobody is.
        sharing.record("ns", "hr", seen("conflict", &["crm", "hr"]));
        assert_eq!(next(&mut woken), Some("crm".to_string()));
        sharing.record("ns", "crm", seen("conflict", &["crm", "hr"]));
        assert_eq!(next(&mut woken), None);
        // The outcome changes: the other app is woken, once.
        sharing.record("ns", "crm", seen("h2", &["crm", "hr"]));
        assert_eq!(next(&mut woken), Some("hr".to_string()));
        sharing.record("ns", "hr", seen("h2", &["crm", "hr"]));
        assert_eq!(next(&mut woken), None);
        // hr leaves: crm re-computes the workload alone.
        sharing.record("ns", "hr", BTreeMap::new());
        assert_eq!(next(&mut woken), Some("crm".to_string()));
        sharing.record("ns", "crm", seen("h3", &["crm"]));
        assert_eq!(next(&mut woken), None);
    }

    #[test]
    fn claims_on_a_workload_come_from_every_app_and_stage_that_names_or_selects_it() {
        let with_rollout = |name: &str, rollout: serde_json::Value| {
            let mut a = app(None);
            a.metadata.name = Some(name.into());
            a.spec.rollout = serde_json::from_value(rollout).unwrap();
            a
        };
        let crm = with_rollout(
            "crm",
            serde_json::json!([
                {"environment": "staging", "deployments": ["tooljet"]},
                {"environment": "production", "deployments": ["tooljet"]},
            ]),
        );
        let hr = with_rollout(
            "hr",
            serde_json::json!([
                {"environment": "production", "selector": {"matchLabels": {"tier": "prod"}}},
                {"environment": "staging", "deployments": ["other"]},
            ]),
        );
        let mut stale_crm = crm.clone();
        stale_crm.spec.rollout.clear();
        let labels = BTreeMap::from([("tier".to_string(), "prod".to_string())]);
        let apps = vec![Arc::new(stale_crm), Arc::new(hr)];
        assert_eq!(
            claims_on(&crm, &apps, "tooljet", &labels),
            vec![
                ("crm".to_string(), "production".to_string()),
                ("crm".to_string(), "staging".to_string()),
                ("hr".to_string(), "production".to_string()),
            ]
        );
        assert_eq!(
            claims_on(&crm, &apps, "tooljet", &BTreeMap::new()),
            vec![
                ("crm".to_string(), "production".to_string()),
                ("crm".to_string(), "staging".to_string()),
            ]
        );
    }

    #[test]
    fn rollout_selectors_match_and_query_alike() {
        let labels = BTreeMap::from([
            ("app".to_string(), "tooljet".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]);
        let target = |selector: LabelSelector| RolloutTarget {
            environment: "production".into(),
            deployments: vec![],
            selector: Some(selector),
            strategy: RolloutStrategy::AllAtOnce,
        };
        let mut s = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "tooljet".into())])),
            match_expressions: None,
        };
        let parsed = target(s.clone()).parsed_selector().unwrap().unwrap();
        assert!(parsed.matches(&labels));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "In".into(),
            values: Some(vec!["staging".into()]),
        }]);
        let parsed = target(s.clone()).parsed_selector().unwrap().unwrap();
        assert!(!parsed.matches(&labels));
        assert_eq!(parsed.to_string(), "app=tooljet,env in (staging)");

        for (operator, values, problem) in [
            ("exists", None, "use In, NotIn, Exists or DoesNotExist"),
            ("In", None, "needs at least one value"),
            ("In", Some(vec![]), "needs at least one value"),
            ("Exists", Some(vec!["x".to_string()]), "takes no values"),
        ] {
            let bad = LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "env".into(),
                    operator: operator.into(),
                    values,
                }]),
            };
            let err = target(bad).parsed_selector().unwrap_err();
            assert!(err.contains(problem), "{operator}: {err}");
        }
        let err = target(LabelSelector::default())
            .parsed_selector()
            .unwrap_err();
        assert!(err.contains("selects every Deployment"), "{err}");
    }
}
