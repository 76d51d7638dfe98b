//! AppVersion -> its resolved-config Secret: the merged data sources and constants of the stage
//! the version is in now (workspace-wide entries overridden by the app's). Promotion switches the
//! content to the target stage's values; a change of that stage's configuration follows.
//!
//! A stage Secret (`tooljet.<env>`, `tooljet.<env>.<app>`) is used as configuration only when a
//! live EnvironmentConfig of that very key controls it by UID: anyone who may create Secrets can
//! create one of that name carrying the managed-by label, and must not thereby configure a stage
//! (the operator would be their confused deputy).

use crate::api::{VerificationCause, VerificationPhase};
use crate::lifecycle::{Pipeline, history, stamps};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{PENDING_RECHECK, RECHECK};
use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::ObjectRef,
    },
};
use tracing::{debug, info, instrument, warn};

use super::{
    APP_LABEL, AtStep, Context, ENVIRONMENT_LABEL, Error, KIND_LABEL, Settings, Step, apply_status,
    condition, new_failure, publish,
    secrets::{SecretWrite, Synced, managed_secret, sync},
    set_condition,
};
use crate::{
    api::{
        AppVersion, AppVersionStatus, Approval, PROMOTED_AT_ANNOTATION, PROMOTED_BY_ANNOTATION,
        PROMOTED_FROM_ANNOTATION, Promotion, PromotionPolicy, RESOLVED_SECRET_KIND, ResolvedConfig,
        STAGE_SECRET_KIND, StageApprovals, ToolJetApp, conditions,
    },
    cache::{
        CachedConfig, Lookups, ManagedSecret, controlled_by,
        secret::OwnerKind,
        stage::{explain_missing, resolve, unmaterialisable},
    },
    cache::{Hubs, triggers},
    gate,
    lifecycle::References,
    materialize::{Materialized, Missing, missing_requirements, resolved_secret_name, secret_name},
    policy::Tally,
};

/// This controller's name in metrics and logs.
pub const CONTROLLER: &str = "appversion";

/// The controller and its triggers: its own kind, the ToolJetApps (release, pipeline and label
/// changes), the materialised Secrets (its own resolved Secrets for drift; the stage
/// configurations' Secrets for config changes), the EnvironmentConfigs deleted or (un)able to be
/// materialised (`config_trigger`), the Approvals (of the version they name) and the
/// PromotionPolicies (of the versions of their namespace: the approvals a next stage requires).
pub fn controller(ctx: &Context, settings: &Settings, hubs: &mut Hubs) -> Controller<AppVersion> {
    let (lookups, echoes) = (&ctx.lookups, ctx.echoes.clone());
    let main = triggers::changes(hubs.versions.subscribe(), triggers::generation);
    let managed = triggers::all(hubs.managed.subscribe());
    let configs = triggers::changes(hubs.configs.subscribe(), config_trigger);
    let apps = triggers::changes(hubs.apps.subscribe(), app_trigger);
    let approvals = triggers::changes(hubs.approvals.subscribe(), triggers::generation);
    let policies = triggers::changes(hubs.policies.subscribe(), triggers::generation);
    let for_secrets = lookups.clone();
    let by_config = lookups.clone();
    let by_app = lookups.clone();
    let by_policy = lookups.clone();
    Controller::for_shared_stream(main, lookups.versions.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .reconcile_on(crate::cache::triggers::mapped(
            managed,
            move |secret: Arc<ManagedSecret>| {
                // A version's own resolved Secret, as its last write left it: nothing to do. (A
                // stage Secret's change always matters to the versions in that stage.)
                let own = secret.label(KIND_LABEL) == Some(RESOLVED_SECRET_KIND);
                if own && echoes.is_echo(&*secret) {
                    return vec![];
                }
                affected_by_secret(&for_secrets, &secret)
            },
        ))
        .watches_shared_stream(apps, move |app: Arc<ToolJetApp>| {
            by_app
                .versions_of(&app.namespace().unwrap_or_default(), &app.name_any())
                .iter()
                .map(|v| ObjectRef::from(&**v))
                .collect::<Vec<_>>()
        })
        // A deleted configuration no longer counts, whether or not its Secret is gone yet (the
        // garbage collector's pace, or a deletion only a relist revealed): its stage re-resolves.
        // One that becomes unmaterialisable, or stops being so, changes what the versions of its
        // stage say is missing ([`crate::cache::stage::explain_missing`]).
        .watches_shared_stream(configs, move |c: Arc<CachedConfig>| {
            let ns = c.namespace().unwrap_or_default();
            let environment = c.spec.environment.as_str();
            match c.spec.app.as_deref() {
                Some(app) => by_config.versions_of_app_in(&ns, app, environment),
                None => by_config.versions_in(&ns, environment),
            }
            .iter()
            .map(|v| ObjectRef::from(&**v))
            .collect::<Vec<_>>()
        })
        .watches_shared_stream(approvals, |a: Arc<Approval>| {
            a.namespace()
                .map(|ns| ObjectRef::new(&a.spec.version).within(&ns))
        })
        // Whom a policy selected before its change is not known here: the versions of every
        // app of the namespace (policies change rarely; an unchanged status is not written).
        .watches_shared_stream(policies, move |p: Arc<PromotionPolicy>| {
            let ns = p.namespace().unwrap_or_default();
            super::policy::apps_in(&by_policy, &ns)
                .iter()
                .flat_map(|a| by_policy.versions_of(&ns, &a.name_any()))
                .map(|v| ObjectRef::from(&*v))
                .collect::<Vec<_>>()
        })
}

/// What of a configuration its stage's versions depend on besides its Secret: why it cannot be
/// materialised, if it cannot.
fn config_trigger(c: &CachedConfig) -> Option<String> {
    unmaterialisable(c).map(str::to_string)
}

/// What of an app its versions depend on: its pipeline (which stage is next), its released
/// version (a version's `Released` condition), its labels (which PromotionPolicies guard its
/// stages), its stages' verifications (a version's `Verified` condition and promotion record:
/// which one, and its phase; not its progress, which would wake every version of a stage at
/// each pod), and whether it exists.
fn app_trigger(app: &ToolJetApp) -> AppTrigger {
    let verifications = app
        .status
        .iter()
        .flat_map(|s| &s.verifications)
        .map(|v| {
            (
                v.environment.clone(),
                format!("{:?}/{:?}", v.cause, v.phase),
                v.version.clone(),
                v.started_at.0.as_second(),
            )
        })
        .collect();
    (
        app.spec.environments.clone(),
        app.status.as_ref().and_then(|s| s.released_version.clone()),
        app.labels().clone(),
        verifications,
    )
}

/// See [`app_trigger`].
type AppTrigger = (
    Vec<String>,
    Option<String>,
    std::collections::BTreeMap<String, String>,
    Vec<(String, String, Option<String>, i64)>,
);

/// The versions a managed Secret matters to: its owner for a resolved-config Secret, every version
/// in that stage (of that app, for an app-scoped one) for a stage configuration, and the version
/// whose resolved-config name it holds (so that a clashing Secret's deletion, or its garbage
/// collection, lets that version write its own at once). Triggers only: what is read or written
/// is decided by ownership in the reconcile.
fn affected_by_secret(lookups: &Lookups, secret: &ManagedSecret) -> Vec<ObjectRef<AppVersion>> {
    let ns = secret.namespace();
    let mut by_name: Vec<ObjectRef<AppVersion>> = secret
        .name()
        .strip_prefix("tooljet-version.")
        .map(|version| ObjectRef::new(version).within(ns))
        .into_iter()
        .collect();
    let by_role = match secret.label(KIND_LABEL) {
        Some(RESOLVED_SECRET_KIND) => secret
            .owners()
            .iter()
            .filter(|o| o.kind == Some(OwnerKind::AppVersion))
            .map(|o| ObjectRef::new(&o.name).within(ns))
            .collect(),
        Some(STAGE_SECRET_KIND) => {
            let Some(environment) = secret.label(ENVIRONMENT_LABEL) else {
                return vec![];
            };
            // An app's stage: that app's versions there (an index lookup, not a scan of the
            // stage); the workspace's: every version in the stage.
            let versions = match secret.label(APP_LABEL) {
                Some(app) => lookups.versions_of_app_in(ns, app, environment),
                None => lookups.versions_in(ns, environment),
            };
            versions.iter().map(|v| ObjectRef::from(&**v)).collect()
        }
        _ => vec![],
    };
    by_name.extend(by_role);
    by_name
}

/// Whether an EnvironmentConfig for (app or workspace, environment) exists, healthy, whose Secret
/// is not in the cache yet (or not yet as one it controls).
fn pending_materialization(ctx: &Context, ns: &str, app: &str, environment: &str) -> bool {
    let configs = [None, Some(app)]
        .into_iter()
        .flat_map(|scope| ctx.lookups.configs_for(ns, scope, environment));
    configs.into_iter().any(|c| {
        // Only configs that can materialise: a failing one must not hold the version back.
        c.status.as_ref().is_none_or(|s| {
            s.conditions
                .iter()
                .all(|c| c.type_ != conditions::READY || c.status == "True")
        }) && ctx
            .managed_secrets
            .get(&ObjectRef::new(&secret_name(c.spec.app.as_deref(), environment)).within(ns))
            .is_none_or(|s| !controlled_by(&*s, c.metadata.uid.as_deref()))
    })
}

#[instrument(skip_all, fields(kind = "AppVersion", namespace = v.namespace().unwrap_or_default(), name = v.name_any()))]
pub async fn reconcile(v: Arc<AppVersion>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _pass = ctx.metrics.reconcile(CONTROLLER);
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    let ns = v.namespace().ok_or(Error::NoNamespace)?;
    if v.metadata.deletion_timestamp.is_some() {
        ctx.unstamped
            .forget(v.metadata.uid.as_deref().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let references = match References::stamped(&v) {
        Some(stamped) => Arc::new(stamped),
        None => ctx.unstamped.references(&ctx.client, &v, &ns).await?,
    };
    // Gather (caches only).
    let Some(found) = gather(&v, &ctx, &ns, references) else {
        debug!(
            environment = %v.spec.environment,
            "waiting for the stage's configuration to be materialised"
        );
        return Ok(Action::requeue(PENDING_RECHECK));
    };
    // Decide (pure).
    let plan = decide(&v, &found);
    // Apply: the resolved Secret, unless a Secret of that name exists that this version does not
    // control (by UID, whatever its labels), which is never adopted or overwritten.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = v.metadata.uid.as_deref();
    let synced = sync(&ctx, CONTROLLER, &secrets, uid, |_| false, &plan.secret).await?;
    let taken = synced == Synced::Taken;
    let change = match synced {
        Synced::Ours(change) => change,
        Synced::Taken => None,
    };
    match change {
        Some(c) => {
            info!(secret = %plan.target, environment = %v.spec.environment, hash = %found.published.hash, change = ?c, "resolved config written")
        }
        None => debug!(secret = %plan.target, "resolved config is up to date"),
    }
    // Report; a name declared by a config that cannot be materialised is told as such.
    let missing = explain_missing(
        &ctx.lookups,
        &ns,
        &v.spec.app,
        &v.spec.environment,
        plan.missing,
    );
    let (status, promotions) = desired_status(
        &v,
        found.app.as_deref(),
        &found.published,
        &missing,
        &plan.target,
        taken,
        found.approvals.as_ref(),
    );
    apply_status(&ctx, CONTROLLER, &*v, v.status.as_ref(), &status).await?;
    report(&v, &ctx, &status, &promotions, change).await;
    for (stage, seconds) in time_in_stages(&v, &promotions) {
        ctx.metrics.promotions.inc();
        if let Some(seconds) = seconds {
            ctx.metrics.stage_time(&ns, &v.spec.app, &stage, seconds);
        }
    }
    Ok(if taken {
        // Waiting for the clashing Secret to go; its deletion normally wakes this version.
        Action::requeue(RECHECK)
    } else {
        Action::await_change()
    })
}

/// For each promotion just recorded: the stage it left, and how long the version was in it (from
/// its promotion into it, or its creation for the first stage), when known.
fn time_in_stages(v: &AppVersion, promotions: &[Promotion]) -> Vec<(String, Option<f64>)> {
    let history = v
        .status
        .as_ref()
        .map(|s| s.promotions.as_slice())
        .unwrap_or_default();
    let mut entered: Option<Timestamp> = None;
    promotions
        .iter()
        .map(|p| {
            let since = entered
                .or_else(|| {
                    history
                        .iter()
                        .rev()
                        .find(|h| h.to == p.from)
                        .map(|h| h.at.0)
                })
                .or_else(|| v.metadata.creation_timestamp.as_ref().map(|t| t.0));
            entered = Some(p.at.0);
            let seconds = since.map(|t| (p.at.0.as_second() - t.as_second()).max(0) as f64);
            (p.from.clone(), seconds)
        })
        .collect()
}

/// What a version's reconcile reads: its app, its stage's merged configuration, and its
/// approvals for the next stage when a policy requires some there.
struct Found {
    app: Option<Arc<ToolJetApp>>,
    /// What the version's definition references.
    references: Arc<References>,
    /// The stage's configuration merged (workspace, then app): the constants, and the data
    /// source document with the data sources' names only.
    resolved: Materialized,
    /// What the version's resolved Secret holds: the constants of `resolved`.
    published: Materialized,
    approvals: Option<Tally>,
}

/// Reads the caches. `None` while a configuration of the version's stage exists but is not
/// materialised yet (the operator just started, or it was just created): its Secret's creation
/// wakes the version, which then resolves once rather than twice.
fn gather(v: &AppVersion, ctx: &Context, ns: &str, references: Arc<References>) -> Option<Found> {
    let environment = v.spec.environment.as_str();
    if pending_materialization(ctx, ns, &v.spec.app, environment) {
        return None;
    }
    let app = ctx
        .lookups
        .apps
        .get(&ObjectRef::new(&v.spec.app).within(ns));
    // Counted as a promotion would count them, less the promoter (not known before it promotes).
    let approvals = app.as_deref().and_then(|a| {
        let next = Pipeline::of(a).next(environment)?;
        gate::stage_gate(&ctx.lookups, a, next)?.tally(&ctx.lookups, v, None)
    });
    let resolved = resolve(
        &ctx.hash_key,
        &ctx.managed_secrets,
        &ctx.lookups.configs,
        ns,
        &v.spec.app,
        environment,
    );
    Some(Found {
        app,
        references,
        approvals,
        published: resolved.constants_only(&ctx.hash_key),
        resolved,
    })
}

/// The references of versions that carry no [`crate::api::REFERENCES_ANNOTATION`] (stored before
/// the stamp existed, or written while the webhook was not installed): the cache never holds a
/// definition, so such a version is read from the API, one at a time, once per generation (its
/// definition changes only with its generation), and only its references are kept, by UID. The
/// mutating webhook stamps it on its next promotion or edit.
#[derive(Default)]
pub struct Unstamped(Mutex<HashMap<String, (i64, Arc<References>)>>);

impl Unstamped {
    async fn references(
        &self,
        client: &kube::Client,
        v: &AppVersion,
        ns: &str,
    ) -> Result<Arc<References>, Error> {
        let uid = v.metadata.uid.clone().unwrap_or_default();
        let generation = v.metadata.generation.unwrap_or_default();
        if let Some((seen, references)) = self.0.lock().expect("unstamped lock").get(&uid)
            && *seen == generation
        {
            return Ok(references.clone());
        }
        let stored = Api::<AppVersion>::namespaced(client.clone(), ns)
            .get_opt(&v.name_any())
            .await
            .at(Step::ReadVersion)?;
        let references = Arc::new(match &stored {
            // The version as read now may be newer than the cached one; a stamp there counts.
            Some(s) => {
                References::stamped(s).unwrap_or_else(|| References::of(s.spec.definition.as_ref()))
            }
            None => References::default(),
        });
        let stored_generation = stored
            .as_ref()
            .and_then(|s| s.metadata.generation)
            .unwrap_or(generation);
        let mut known = self.0.lock().expect("unstamped lock");
        known.insert(uid, (stored_generation, references.clone()));
        Ok(references)
    }

    /// Forgets a deleted version.
    pub fn forget(&self, uid: &str) {
        self.0.lock().expect("unstamped lock").remove(uid);
    }
}

/// The stage after `stage` in `app`'s pipeline.
/// The status form of a tally: `1/2`, the approvers that count.
fn stage_approvals(tally: &Tally) -> StageApprovals {
    StageApprovals {
        environment: tally.environment.clone(),
        required: tally.required,
        approvers: tally.approvers.clone(),
        summary: format!("{}/{}", tally.counted(), tally.required),
    }
}

/// What the version should have: its resolved Secret, and what its stage lacks.
struct Plan {
    target: String,
    secret: Secret,
    missing: Vec<Missing>,
}

fn decide(v: &AppVersion, found: &Found) -> Plan {
    let requires = v.spec.requires.clone().unwrap_or_default();
    let missing = missing_requirements(
        &requires.data_sources,
        &requires.constants,
        &found.references,
        &found.resolved.data,
    );

    let target = resolved_secret_name(&v.name_any());
    let secret = managed_secret(
        v,
        &target,
        RESOLVED_SECRET_KIND,
        &v.spec.environment,
        Some(&v.spec.app),
        &found.published,
    );
    Plan {
        target,
        secret,
        missing,
    }
}

/// The status for what was found (pure), and the promotions to record if the stage changed.
fn desired_status(
    v: &AppVersion,
    app: Option<&ToolJetApp>,
    resolved: &Materialized,
    missing: &[String],
    secret: &str,
    taken: bool,
    approvals: Option<&Tally>,
) -> (AppVersionStatus, Vec<Promotion>) {
    let mut status = v.status.clone().unwrap_or_default();
    let generation = v.metadata.generation;
    let environment = v.spec.environment.clone();
    status.observed_generation = generation;
    status.approvals = approvals.map(stage_approvals);
    let promotions = record_promotions(v, app, &mut status);
    status.environment = Some(environment.clone());
    if !taken {
        status.resolved_config = Some(ResolvedConfig {
            secret_name: secret.to_string(),
            hash: resolved.hash.clone(),
            environment,
        });
    }
    record_verification(v, app, &mut status);
    let config = config_condition(v, resolved, missing, secret, taken);
    let released = released_condition(v, app);
    let verified = verified_condition(v, app);
    let ready = ready_condition(v, app, &config, generation);
    set_condition(&mut status.conditions, config);
    set_condition(&mut status.conditions, released);
    set_condition(&mut status.conditions, verified);
    set_condition(&mut status.conditions, ready);
    (status, promotions)
}

/// The outcome of the verification its promotion into its stage started, once known, in that
/// promotion's record.
fn record_verification(v: &AppVersion, app: Option<&ToolJetApp>, status: &mut AppVersionStatus) {
    let stage = &v.spec.environment;
    let Some(check) = app.and_then(|a| a.verification_of(stage)) else {
        return;
    };
    if check.cause != VerificationCause::Promotion
        || check.phase == VerificationPhase::Progressing
        || check.version.as_deref() != Some(v.name_any().as_str())
    {
        return;
    }
    if let Some(p) = status.promotions.last_mut().filter(|p| &p.to == stage) {
        p.verification = Some(check.phase);
    }
}

/// Verified: how the last verification of its stage's workloads went. A version in a stage
/// whose verification failed is not promoted out of it (the webhook refuses).
fn verified_condition(v: &AppVersion, app: Option<&ToolJetApp>) -> Condition {
    let generation = v.metadata.generation;
    let stage = &v.spec.environment;
    let Some(check) = app.and_then(|a| a.verification_of(stage)) else {
        return condition(
            conditions::VERIFIED,
            true,
            conditions::NO_WORKLOADS,
            format!("{stage} has no rollout workloads to verify"),
            generation,
        );
    };
    let about = check.about();
    match check.phase {
        VerificationPhase::Verified => condition(
            conditions::VERIFIED,
            true,
            conditions::VERIFIED_REASON,
            format!(
                "{stage}'s workloads passed their last verification ({about}): {}",
                check.message
            ),
            generation,
        ),
        VerificationPhase::Progressing => {
            // Not the progress: it changes at each pod (the app's status has it).
            let mut c = condition(
                conditions::VERIFIED,
                false,
                conditions::PROGRESSING,
                format!(
                    "{stage}'s workloads are being verified ({about}); the app's status.verifications says how far"
                ),
                generation,
            );
            c.status = "Unknown".into();
            c
        }
        VerificationPhase::Failed => condition(
            conditions::VERIFIED,
            false,
            conditions::VERIFICATION_FAILED,
            format!(
                "{stage}'s workloads failed their last verification ({about}): {}; no version is promoted out of \
                 {stage} until they pass",
                check.message
            ),
            generation,
        ),
    }
}

/// Records in `status` every step from the stage it last recorded to the version's stage, and
/// returns them (to announce).
fn record_promotions(
    v: &AppVersion,
    app: Option<&ToolJetApp>,
    status: &mut AppVersionStatus,
) -> Vec<Promotion> {
    let environment = v.spec.environment.as_str();
    let annotations = v.annotations();
    let stamped_path = stamps::stage_path(annotations);
    let pipeline = app
        .map(|a| a.spec.environments.as_slice())
        .unwrap_or_default();
    let steps = stage_steps(
        status.environment.as_deref(),
        environment,
        &stamped_path,
        pipeline,
    );
    let mut promotions = vec![];
    for (from, to) in steps {
        // The webhook's stamps describe the latest promotion only: the step into the current
        // stage from the stamped stage. Steps before it (missed while the operator was away)
        // have no known author; their time is when they were recorded.
        let stamped = to == environment && annotations.get(PROMOTED_FROM_ANNOTATION) == Some(&from);
        let made = if stamped {
            stamps::made(annotations, PROMOTED_AT_ANNOTATION, PROMOTED_BY_ANNOTATION)
        } else {
            Default::default()
        };
        let record = Promotion {
            from,
            to,
            at: Time(made.at.unwrap_or_else(Timestamp::now)),
            by: made.by,
            override_reason: made.override_reason,
            verification: None,
        };
        // A pass that read the version before its last status write showed finds the stamped
        // step again: recorded once.
        if status
            .promotions
            .last()
            .is_some_and(|l| l.from == record.from && l.to == record.to && l.at == record.at)
        {
            continue;
        }
        history::record(&mut status.promotions, record.clone());
        promotions.push(record);
    }
    promotions
}

/// ConfigResolved: the resolved Secret's name taken by another object, what the stage lacks, or
/// what it holds.
fn config_condition(
    v: &AppVersion,
    resolved: &Materialized,
    missing: &[String],
    secret: &str,
    taken: bool,
) -> Condition {
    let generation = v.metadata.generation;
    let environment = &v.spec.environment;
    if taken {
        condition(
            conditions::CONFIG_RESOLVED,
            false,
            conditions::SECRET_EXISTS,
            format!(
                "Secret {secret} already exists and is not owned by this AppVersion (whatever its labels \
                 say); the operator never adopts or overwrites it: delete or rename Secret {secret}"
            ),
            generation,
        )
    } else if missing.is_empty() {
        condition(
            conditions::CONFIG_RESOLVED,
            true,
            conditions::RESOLVED,
            format!(
                "{} constants of {environment} in Secret {secret}; {} data sources configured",
                resolved.constants, resolved.data_sources
            ),
            generation,
        )
    } else {
        condition(
            conditions::CONFIG_RESOLVED,
            false,
            conditions::MISSING_REQUIREMENTS,
            format!(
                "environment {environment} lacks {}; add what is not declared to an EnvironmentConfig for {environment}",
                missing.join(", ")
            ),
            generation,
        )
    }
}

/// Released: whether the app's released version is this one.
fn released_condition(v: &AppVersion, app: Option<&ToolJetApp>) -> Condition {
    let generation = v.metadata.generation;
    let released = app
        .and_then(|a| a.status.as_ref())
        .and_then(|s| s.released_version.as_deref())
        == Some(v.name_any().as_str());
    if released {
        condition(
            conditions::RELEASED,
            true,
            conditions::RELEASED_REASON,
            "this version is live for end users",
            generation,
        )
    } else {
        condition(
            conditions::RELEASED,
            false,
            conditions::NOT_RELEASED,
            "another version (or none) is released",
            generation,
        )
    }
}

/// The promotions to record when a version is seen in `current` after `previous` (`None`: never
/// seen before): one step per stage entered, so that a version promoted twice between two
/// reconciles, or promoted before its first one (the operator was down or behind), shows every
/// step rather than a jump or nothing. The path is the webhook's stamp of the stages the version
/// has been in (`tooljet.io/stages`); without a stamp, the app's pipeline, and only from a stage
/// seen before (a version first seen outside its first stage may have been created there).
/// Anything else (a move backwards, a stage off the path) is recorded as the one step it looks
/// like.
fn stage_steps(
    previous: Option<&str>,
    current: &str,
    stamped: &[&str],
    pipeline: &[String],
) -> Vec<(String, String)> {
    if previous == Some(current) {
        return vec![];
    }
    let stamped_ok = stamped.last() == Some(&current);
    let path: Vec<&str> = if stamped_ok {
        stamped.to_vec()
    } else if previous.is_some() {
        pipeline.iter().map(String::as_str).collect()
    } else {
        vec![]
    };
    let to = path.iter().rposition(|s| *s == current);
    let from = match previous {
        Some(p) => to.and_then(|to| path[..to].iter().rposition(|s| *s == p)),
        None => Some(0),
    };
    match (from, to) {
        (Some(from), Some(to)) => path[from..=to]
            .windows(2)
            .map(|w| (w[0].to_string(), w[1].to_string()))
            .collect(),
        _ => previous
            .map(|p| vec![(p.to_string(), current.to_string())])
            .unwrap_or_default(),
    }
}

fn ready_condition(
    v: &AppVersion,
    app: Option<&ToolJetApp>,
    config: &Condition,
    generation: Option<i64>,
) -> Condition {
    let Some(app) = app else {
        return condition(
            conditions::READY,
            false,
            conditions::APP_NOT_FOUND,
            format!(
                "ToolJetApp {} does not exist in this namespace; create it or fix spec.app",
                v.spec.app
            ),
            generation,
        );
    };
    if !app.spec.environments.contains(&v.spec.environment) {
        return condition(
            conditions::READY,
            false,
            conditions::ENVIRONMENT_NOT_IN_PIPELINE,
            format!(
                "environment {} is not a stage of ToolJetApp {} ({})",
                v.spec.environment,
                app.name_any(),
                app.spec.environments.join(" -> ")
            ),
            generation,
        );
    }
    if config.status != "True" {
        return condition(
            conditions::READY,
            false,
            &config.reason,
            config.message.clone(),
            generation,
        );
    }
    condition(
        conditions::READY,
        true,
        conditions::READY_REASON,
        format!("running with the {} configuration", v.spec.environment),
        generation,
    )
}

async fn report(
    v: &AppVersion,
    ctx: &Context,
    status: &AppVersionStatus,
    promotions: &[Promotion],
    change: Option<SecretWrite>,
) {
    for p in promotions {
        let by =
            p.by.as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default();
        publish(
            &ctx.recorder,
            v,
            EventType::Normal,
            "Promoted",
            "Promote",
            format!("promoted from {} to {}{by}", p.from, p.to),
        )
        .await;
    }
    // Routine writes (the first resolution, a stage's config changing, the switch a promotion
    // makes) publish nothing: the promotion's Event and the status say it. Outside edits do.
    if change == Some(SecretWrite::DriftReverted) {
        publish(
            &ctx.recorder,
            v,
            EventType::Normal,
            "DriftReverted",
            "Resolve",
            "resolved-config Secret restored after an outside edit".to_string(),
        )
        .await;
    }
    let old = v.status.as_ref().map(|s| s.conditions.as_slice());
    if let Some(after) = new_failure(old, &status.conditions, conditions::CONFIG_RESOLVED) {
        warn!(reason = %after.reason, message = %after.message, "version configuration incomplete");
        publish(
            &ctx.recorder,
            v,
            EventType::Warning,
            &after.reason,
            "Resolve",
            after.message.clone(),
        )
        .await;
    }
}

pub fn error_policy(v: Arc<AppVersion>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_action(CONTROLLER, &*v, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppVersionSpec, EnvironmentConfig, ToolJetAppSpec, ToolJetAppStatus};
    use crate::cache::ownership::is_stage_config;
    use crate::materialize::{HashKey, merge_layers};
    use kube::Resource;
    use kube::runtime::reflector::Store;
    use std::collections::BTreeMap as Map;

    fn version(env: &str) -> AppVersion {
        let mut v = AppVersion::new(
            "crm-v4",
            AppVersionSpec {
                app: "crm".into(),
                version_name: "v4".into(),
                description: None,
                environment: env.into(),
                definition: None,
                requires: None,
            },
        );
        v.metadata.namespace = Some("ns".into());
        v.metadata.generation = Some(1);
        v
    }

    fn app(released: Option<&str>) -> ToolJetApp {
        let mut a = ToolJetApp::new(
            "crm",
            ToolJetAppSpec {
                display_name: None,
                environments: crate::api::default_pipeline(),
                release: None,
                rollout: vec![],
                verification: None,
            },
        );
        a.status = Some(ToolJetAppStatus {
            released_version: released.map(String::from),
            ..Default::default()
        });
        a
    }

    fn empty() -> Materialized {
        merge_layers(&key(), &[])
    }

    fn key() -> HashKey {
        HashKey::new(&[4; HashKey::LEN]).unwrap()
    }

    fn reason<'a>(s: &'a AppVersionStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_stage_change_is_recorded_once_with_the_webhooks_stamp() {
        let mut v = version("development");
        let (status, promotion) =
            desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None);
        assert!(
            promotion.is_empty(),
            "the first observation is not a promotion"
        );
        v.status = Some(status);

        v.spec.environment = "staging".into();
        v.metadata.annotations = Some(Map::from([
            (
                PROMOTED_FROM_ANNOTATION.to_string(),
                "development".to_string(),
            ),
            (PROMOTED_BY_ANNOTATION.to_string(), "alice".to_string()),
            (
                PROMOTED_AT_ANNOTATION.to_string(),
                "2026-01-02T03:04:05Z".to_string(),
            ),
        ]));
        let (status, promotion) =
            desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None);
        let [p] = promotion.as_slice() else {
            panic!("one promotion: {promotion:?}")
        };
        assert_eq!(
            (p.from.as_str(), p.to.as_str(), p.by.as_deref()),
            ("development", "staging", Some("alice"))
        );
        assert_eq!(p.at.0.to_string(), "2026-01-02T03:04:05Z");
        assert_eq!(status.promotions.len(), 1);
        v.status = Some(status);
        let (again, none) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None);
        assert!(none.is_empty());
        assert_eq!(again.promotions.len(), 1);
    }

    #[test]
    fn an_unstamped_promotion_has_no_author() {
        let mut v = version("development");
        v.status = Some(desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None).0);
        v.spec.environment = "staging".into();
        v.metadata.annotations = Some(Map::from([(
            PROMOTED_FROM_ANNOTATION.to_string(),
            "qa".to_string(),
        )]));
        let (_, p) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None);
        assert_eq!(p[0].by, None);
    }

    fn steps(previous: Option<&str>, current: &str, stamped: &[&str]) -> Vec<(String, String)> {
        let pipeline: Vec<String> = ["development", "staging", "production"]
            .map(String::from)
            .to_vec();
        stage_steps(previous, current, stamped, &pipeline)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn every_stage_entered_is_one_step_even_when_seen_late() {
        let all = ["development", "staging", "production"];
        let both = pairs(&[("development", "staging"), ("staging", "production")]);
        // Promoted twice between two reconciles: both steps, by the stamp or by the pipeline.
        assert_eq!(steps(Some("development"), "production", &all), both);
        assert_eq!(steps(Some("development"), "production", &[]), both);
        // Promoted before the first reconcile: the stamp says it came from development.
        assert_eq!(steps(None, "production", &all), both);
        assert_eq!(
            steps(None, "staging", &all[..2]),
            pairs(&[("development", "staging")])
        );
        // First seen outside the first stage without a stamp, or created there: no promotion.
        assert_eq!(steps(None, "production", &[]), vec![]);
        assert_eq!(steps(None, "production", &["production"]), vec![]);
        assert_eq!(steps(None, "development", &all[..1]), vec![]);
        // Unchanged, or a move the path does not explain: as it looks.
        assert_eq!(steps(Some("staging"), "staging", &all), vec![]);
        assert_eq!(
            steps(Some("production"), "staging", &[]),
            pairs(&[("production", "staging")])
        );
    }

    #[test]
    fn promotion_history_is_bounded() {
        let mut v = version("a0");
        v.status = Some(desired_status(&v, None, &empty(), &[], "s", false, None).0);
        for i in 1..=30 {
            v.spec.environment = format!("a{i}");
            v.status = Some(desired_status(&v, None, &empty(), &[], "s", false, None).0);
        }
        let promotions = &v.status.as_ref().unwrap().promotions;
        assert_eq!(promotions.len(), history::KEPT);
        assert_eq!(promotions.last().unwrap().to, "a30");
    }

    #[test]
    fn conditions_explain_what_is_missing() {
        let v = version("staging");
        let (s, _) = desired_status(
            &v,
            Some(&app(Some("crm-v4"))),
            &empty(),
            &["constant API_URL".into()],
            "s",
            false,
            None,
        );
        assert_eq!(
            reason(&s, "ConfigResolved"),
            ("False", "MissingRequirements")
        );
        assert!(s.conditions.iter().any(|c| {
            c.message
                .contains("environment staging lacks constant API_URL")
        }));
        assert_eq!(reason(&s, "Ready"), ("False", "MissingRequirements"));
        assert_eq!(reason(&s, "Released"), ("True", "Released"));

        let (s, _) = desired_status(&v, None, &empty(), &[], "s", false, None);
        assert_eq!(reason(&s, "Ready"), ("False", "AppNotFound"));
        let (s, _) = desired_status(
            &version("qa"),
            Some(&app(None)),
            &empty(),
            &[],
            "s",
            false,
            None,
        );
        assert_eq!(reason(&s, "Ready"), ("False", "EnvironmentNotInPipeline"));
        let (s, _) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None);
        assert_eq!(reason(&s, "Ready"), ("True", "Ready"));
        assert_eq!(s.resolved_config.unwrap().environment, "staging");
    }

    #[test]
    fn the_next_stages_approvals_are_summarised() {
        let v = version("staging");
        let tally = Tally {
            version: "crm-v4".into(),
            environment: "production".into(),
            required: 2,
            approvers: vec!["dave".into()],
            ignored: vec![],
        };
        let (s, _) = desired_status(
            &v,
            Some(&app(None)),
            &empty(),
            &[],
            "s",
            false,
            Some(&tally),
        );
        assert_eq!(
            s.approvals,
            Some(StageApprovals {
                environment: "production".into(),
                required: 2,
                approvers: vec!["dave".into()],
                summary: "1/2".into(),
            })
        );
        let (s, _) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false, None);
        assert_eq!(
            s.approvals, None,
            "no guarded next stage: no approvals shown"
        );
        let a = app(None);
        assert_eq!(Pipeline::of(&a).next("staging"), Some("production"));
        assert_eq!(Pipeline::of(&a).next("production"), None);
        assert_eq!(Pipeline::of(&a).next("qa"), None);
    }

    fn stage_config(name: &str, uid: &str, app: Option<&str>, env: &str) -> CachedConfig {
        let mut cfg = EnvironmentConfig::new(
            name,
            crate::api::EnvironmentConfigSpec {
                environment: env.into(),
                app: app.map(String::from),
                data_sources: vec![],
                constants: vec![],
            },
        );
        cfg.metadata.namespace = Some("ns".into());
        cfg.metadata.uid = Some(uid.into());
        cfg.into()
    }

    /// A labelled stage Secret named for (app, env) holding constant `C` = `value`, controlled by
    /// `owner` when given.
    fn stage_secret(
        app: Option<&str>,
        env: &str,
        value: &str,
        owner: Option<&CachedConfig>,
    ) -> Secret {
        let scope = stage_config("x", "x", app, env);
        let mut secret = managed_secret(
            &scope,
            &secret_name(app, env),
            STAGE_SECRET_KIND,
            env,
            app,
            &merge_layers(
                &key(),
                &[&Map::from([(
                    format!("TOOLJET_GLOBAL_CONSTANTS__{env}__C"),
                    value.as_bytes().to_vec(),
                )])],
            ),
        );
        secret.metadata.owner_references =
            owner.map(|o| vec![o.controller_owner_ref(&()).unwrap()]);
        secret
    }

    fn stores(
        secrets: &[Secret],
        configs: &[&CachedConfig],
    ) -> (Store<ManagedSecret>, Store<CachedConfig>) {
        let (secret_store, mut w) = kube::runtime::reflector::store();
        for s in secrets {
            w.apply_watcher_event(&kube::runtime::watcher::Event::Apply(ManagedSecret::from(
                s.clone(),
            )));
        }
        let (config_store, mut w) = kube::runtime::reflector::store();
        for c in configs {
            w.apply_watcher_event(&kube::runtime::watcher::Event::Apply((*c).clone()));
        }
        (secret_store, config_store)
    }

    fn constant(m: &Materialized) -> Option<&str> {
        m.data
            .get("TOOLJET_GLOBAL_CONSTANTS__staging__C")
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn a_stage_secret_controlled_by_its_live_config_is_a_layer() {
        let ws = stage_config("ws-staging", "u-ws", None, "staging");
        let app = stage_config("crm-staging", "u-app", Some("crm"), "staging");
        let (secrets, configs) = stores(
            &[
                stage_secret(None, "staging", "from-workspace", Some(&ws)),
                stage_secret(Some("crm"), "staging", "from-app", Some(&app)),
            ],
            &[&ws, &app],
        );
        let m = resolve(&key(), &secrets, &configs, "ns", "crm", "staging");
        assert_eq!(constant(&m), Some("from-app"));
        let m = resolve(&key(), &secrets, &configs, "ns", "other-app", "staging");
        assert_eq!(constant(&m), Some("from-workspace"));
    }

    #[test]
    fn a_labelled_secret_of_a_stage_name_without_an_owner_is_never_a_layer() {
        let (secrets, configs) = stores(&[stage_secret(None, "staging", "canary", None)], &[]);
        let m = resolve(&key(), &secrets, &configs, "ns", "crm", "staging");
        assert_eq!(constant(&m), None);
        assert_eq!(m, merge_layers(&key(), &[]));
    }

    #[test]
    fn an_owner_reference_to_a_config_of_another_key_is_not_enough() {
        // A forged reference to the app's config on the workspace Secret's name.
        let app = stage_config("crm-staging", "u-app", Some("crm"), "staging");
        let prod = stage_config("ws-prod", "u-prod", None, "production");
        let forged = stage_secret(None, "staging", "canary", Some(&app));
        let (secrets, configs) = stores(std::slice::from_ref(&forged), &[&app, &prod]);
        assert_eq!(
            constant(&resolve(&key(), &secrets, &configs, "ns", "crm", "staging")),
            None
        );
        assert!(!is_stage_config(&forged, Some(&app), "ns", None, "staging"));
        assert!(!is_stage_config(
            &forged,
            Some(&prod),
            "ns",
            None,
            "staging"
        ));
    }

    #[test]
    fn a_reference_to_a_deleted_or_recreated_config_is_not_enough() {
        let old = stage_config("ws-staging", "u-old", None, "staging");
        let secret = stage_secret(None, "staging", "stale", Some(&old));
        assert!(
            !is_stage_config(&secret, None, "ns", None, "staging"),
            "no such config"
        );
        let recreated = stage_config("ws-staging", "u-new", None, "staging");
        assert!(
            !is_stage_config(&secret, Some(&recreated), "ns", None, "staging"),
            "same name, another uid"
        );
        let mut deleting = old.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert!(!is_stage_config(
            &secret,
            Some(&deleting),
            "ns",
            None,
            "staging"
        ));
        assert!(is_stage_config(&secret, Some(&old), "ns", None, "staging"));
        assert!(
            !is_stage_config(&secret, Some(&old), "other-ns", None, "staging"),
            "another namespace"
        );
    }

    #[test]
    fn a_resolved_secret_is_taken_unless_the_version_controls_it() {
        let mut v = version("development");
        v.metadata.uid = Some("v-uid".into());
        let mine = managed_secret(
            &v,
            "tooljet-version.crm-v4",
            RESOLVED_SECRET_KIND,
            "development",
            Some("crm"),
            &empty(),
        );
        assert!(controlled_by(&mine, v.metadata.uid.as_deref()));
        let mut labelled_only = mine.clone();
        labelled_only.metadata.owner_references = None;
        assert!(!controlled_by(&labelled_only, v.metadata.uid.as_deref()));
        let (s, _) = desired_status(
            &v,
            Some(&app(None)),
            &empty(),
            &[],
            "tooljet-version.crm-v4",
            true,
            None,
        );
        assert_eq!(reason(&s, "ConfigResolved"), ("False", "SecretExists"));
        assert!(s.conditions.iter().any(|c| {
            c.message.contains("not owned by this AppVersion")
                && c.message
                    .contains("delete or rename Secret tooljet-version.crm-v4")
        }));
        assert!(
            s.resolved_config.is_none(),
            "no hash of content that is not ours"
        );
    }

    #[test]
    fn a_secret_holding_a_versions_resolved_name_triggers_that_version() {
        let versions = Lookups::of(&[], &[], &[]);
        let mut foreign = stage_secret(None, "staging", "x", None);
        foreign.metadata.name = Some(resolved_secret_name("crm-v4"));
        foreign.metadata.labels = Some(Map::from([(
            crate::api::MANAGED_BY_LABEL.to_string(),
            crate::api::MANAGED_BY_VALUE.to_string(),
        )]));
        assert_eq!(
            affected_by_secret(&versions, &ManagedSecret::from(foreign)),
            vec![ObjectRef::new("crm-v4").within("ns")]
        );
    }
}
