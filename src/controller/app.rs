//! ToolJetApp: versions per stage, the release (and its history), and the rollout trigger that
//! restarts an environment's workloads when, and only when, its configuration changes.

use crate::lifecycle::{Pipeline, ReleaseCheck, history, stamps};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
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
use super::{
    APP_LABEL, AtStep, Context, ENVIRONMENT_LABEL, Error, HASH_ANNOTATION, KIND_LABEL, MANAGER,
    Settings, Step, apply_status, condition, new_failure,
    policy::{apps_in, at_transition},
    publish, set_condition,
};
use crate::api::{
    AppVersion, EnvironmentVersions, PromotionPolicy, RELEASED_AT_ANNOTATION,
    RELEASED_BY_ANNOTATION, RELEASED_VERSION_ANNOTATION, ReleaseRecord, StageGate, ToolJetApp,
    ToolJetAppStatus,
};
use crate::api::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, STAGE_SECRET_KIND, WORKLOAD_SECRET_KIND, conditions,
};
use crate::materialize::{Claim, Materialized, workload, workload_secret_name};
use crate::{
    cache::{Controlled, Echoes, Lookups, ManagedSecret},
    cache::{Hubs, triggers},
    gate,
    lifecycle::names::app_label_value,
};
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};

/// This controller's name in metrics and logs.
pub const CONTROLLER: &str = "tooljetapp";

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
                sharers.record(
                    &app.namespace().unwrap_or_default(),
                    &app.name_any(),
                    BTreeMap::new(),
                );
                Vec::<ObjectRef<ToolJetApp>>::new()
            },
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
                watcher::Config::default().any_semantic(),
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
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = app.name_any();
    let versions = ctx.lookups.versions_of(&ns, &name);
    let release = check_release(&app, &versions);

    let policies = ctx.lookups.policies_in(&ns);
    let now = gate::to_chrono(Timestamp::now());
    let (gates, next_transition) = stage_gates(&app, &policies, now);

    let rollout_problems = roll_out(&ctx, &app, &ns).await?;

    let (status, record) = desired_status(&app, &versions, &release, &rollout_problems, gates);
    apply_status(&ctx, CONTROLLER, &*app, app.status.as_ref(), &status).await?;

    if let Some(record) = record {
        let by = record
            .by
            .as_deref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default();
        let (reason, verb) = if record.rollback {
            ("RolledBack", "rolled back to")
        } else {
            ("Released", "released")
        };
        info!(version = %record.version, rollback = record.rollback, "release");
        ctx.metrics.releases.inc();
        publish(
            &ctx.recorder,
            &*app,
            EventType::Normal,
            reason,
            "Release",
            format!("{verb} {}{by}", record.version),
        )
        .await;
    }
    let old = app.status.as_ref().map(|s| s.conditions.as_slice());
    for (condition, action, what) in [
        (conditions::READY, "Release", "app not ready"),
        (conditions::ROLLOUT_READY, "Rollout", "rollout not in sync"),
    ] {
        if let Some(after) = new_failure(old, &status.conditions, condition) {
            warn!(reason = %after.reason, message = %after.message, "{what}");
            publish(
                &ctx.recorder,
                &*app,
                EventType::Warning,
                &after.reason,
                action,
                after.message.clone(),
            )
            .await;
        }
    }
    // A gate's window opening or closing changes the status by itself: wake then.
    Ok(at_transition(next_transition, now))
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

/// For each Deployment the app's rollout names or selects: its workload Secret
/// (`tooljet-workload.<deployment>`) holds the constants of every (app, stage) that claims it,
/// across apps ([`workload`]), and its pod template carries that Secret's hash, so it restarts
/// when, and only when, what it reads changes. A Deployment may serve several stages (one ToolJet
/// instance for every environment) and several apps (one instance per environment).
///
/// Gather (the Deployments), decide per Deployment ([`plan_workload`], pure but for the cached
/// stage configurations), apply ([`apply_workload`]), and record what each workload served.
async fn roll_out(ctx: &Context, app: &ToolJetApp, ns: &str) -> Result<RolloutProblems, Error> {
    let mut problems = RolloutProblems::default();
    if app.spec.rollout.is_empty() {
        // Workloads it shared with other apps, if any, are theirs now.
        ctx.sharing.record(ns, &app.name_any(), BTreeMap::new());
        return Ok(problems);
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let deployments = rollout_deployments(&api, app, &mut problems).await?;
    let apps = ctx.lookups.apps_with_rollout(ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut seen: BTreeMap<String, Served> = BTreeMap::new();
    // Each (app, stage) configuration is merged once, however many Deployments take it in.
    let mut merged: BTreeMap<(String, String), Materialized> = BTreeMap::new();
    for (name, d) in &deployments {
        let plan = plan_workload(ctx, app, &apps, ns, (name, d), &mut merged);
        seen.insert(name.clone(), (plan.fingerprint, plan.served));
        match plan.secret {
            Ok(m) => {
                apply_workload(
                    ctx,
                    app,
                    (&api, &secrets),
                    d,
                    &plan.serves,
                    m,
                    &mut problems,
                )
                .await?
            }
            Err(conflict) => problems.conflicts.push(conflict),
        }
    }
    ctx.sharing.record(ns, &app.name_any(), seen);
    Ok(problems)
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
) -> WorkloadPlan {
    let claims = claims_on(app, apps, name, d.labels());
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
    }
}

/// Writes the Deployment's workload Secret (unless another object holds its name: reported
/// invalid) and, when its hash changed, stamps the hash on the pod template, which restarts it.
async fn apply_workload(
    ctx: &Context,
    app: &ToolJetApp,
    (api, secrets): (&Api<Deployment>, &Api<Secret>),
    d: &Deployment,
    serves: &str,
    m: Materialized,
    problems: &mut RolloutProblems,
) -> Result<(), Error> {
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
        return Ok(());
    }
    let hash = m.hash;
    let current = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(HASH_ANNOTATION));
    if current == Some(&hash) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": { "template": { "metadata": { "annotations": { HASH_ANNOTATION: hash } } } },
    });
    ctx.may_write()?;
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .at(Step::PatchDeployment)?;
    ctx.metrics.wrote(CONTROLLER, "deployment");
    info!(deployment = %name, %serves, %hash, "rollout: configuration hash stamped");
    publish(
        &ctx.recorder,
        app,
        EventType::Normal,
        "RolloutTriggered",
        "Rollout",
        format!("Deployment {name} restarts with the changed configuration of {serves}"),
    )
    .await;
    Ok(())
}

/// The status (pure), and the release to record if the released version changed.
fn desired_status(
    app: &ToolJetApp,
    versions: &[Arc<AppVersion>],
    release: &Release,
    rollout: &RolloutProblems,
    gates: Vec<StageGate>,
) -> (ToolJetAppStatus, Option<ReleaseRecord>) {
    let mut status = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    status.observed_generation = generation;
    status.gates = gates;
    status.environments = versions_per_stage(app, versions);
    let (ready, record) = release_condition(app, release, &mut status);
    set_condition(&mut status.conditions, ready);
    set_condition(
        &mut status.conditions,
        rollout_condition(rollout, generation),
    );
    (status, record)
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
    ReleaseRecord {
        version: version.to_string(),
        at: Time(made.at.unwrap_or_else(Timestamp::now)),
        by: made.by,
        override_reason: made.override_reason,
        rollback: status.release_history.iter().any(|h| h.version == version),
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
            },
        );
        a.metadata.generation = Some(2);
        a
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
            &RolloutProblems::default(),
            vec![],
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
            &RolloutProblems::default(),
            vec![],
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
            &RolloutProblems::default(),
            vec![],
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
            &RolloutProblems::default(),
            vec![],
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
            &RolloutProblems::default(),
            vec![],
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
            &RolloutProblems::default(),
            gates,
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
            let (s, _) = desired_status(&a, &versions(), &Release::None, problems, vec![]);
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
