//! AppVersion -> its resolved-config Secret: the merged data sources and constants of the stage
//! the version is in now (workspace-wide entries overridden by the app's). Promotion switches the
//! content to the target stage's values; a change of that stage's configuration follows.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::Stream;
use k8s_openapi::{
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, info, instrument, warn};

use super::{
    APP_LABEL, Context, ENVIRONMENT_LABEL, Error, KIND_LABEL, Settings, apply_status, condition,
    envconfig, new_failure, publish,
    secrets::{Change, app_label_value, create_secret, ensure_secret, managed_secret},
    set_condition,
};
use crate::{
    api::{
        AppVersion, AppVersionStatus, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PROMOTED_AT_ANNOTATION,
        PROMOTED_BY_ANNOTATION, PROMOTED_FROM_ANNOTATION, Promotion, ResolvedConfig, ToolJetApp,
    },
    materialize::{
        Materialized, merge_layers, missing_requirements, resolved_secret_name, secret_name,
    },
};

/// `tooljet.io/kind` of the resolved-config Secrets.
pub const SECRET_KIND: &str = "resolved-config";
/// How many promotions a status keeps.
pub const PROMOTION_HISTORY: usize = 20;

/// The controller and its triggers: its own kind, the ToolJetApps (release and pipeline changes),
/// and the materialised Secrets (its own resolved Secrets for drift; the stage configurations'
/// Secrets for config changes).
pub fn controller(
    client: Client,
    settings: &Settings,
    (store, main): (
        Store<AppVersion>,
        impl Stream<Item = Result<AppVersion, watcher::Error>> + Send + 'static,
    ),
    managed: impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static,
) -> Controller<AppVersion> {
    let versions = store.clone();
    let by_app = store.clone();
    Controller::for_stream(main, store)
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .watches_stream(managed, move |secret: Secret| {
            affected_by_secret(&versions, &secret)
        })
        .watches(
            Api::<ToolJetApp>::all(client),
            watcher::Config::default().any_semantic(),
            move |app: ToolJetApp| {
                let ns = app.namespace();
                let name = app.name_any();
                by_app
                    .state()
                    .into_iter()
                    .filter(|v| v.namespace() == ns && v.spec.app == name)
                    .map(|v| ObjectRef::from(&*v))
                    .collect::<Vec<_>>()
            },
        )
}

/// The versions a managed Secret matters to: its owner for a resolved-config Secret, every version
/// in that stage (of that app, for an app-scoped one) for a stage configuration.
fn affected_by_secret(versions: &Store<AppVersion>, secret: &Secret) -> Vec<ObjectRef<AppVersion>> {
    let ns = secret.namespace();
    let labels = secret.labels();
    match labels.get(KIND_LABEL).map(String::as_str) {
        Some(SECRET_KIND) => secret
            .owner_references()
            .iter()
            .filter(|o| o.kind == "AppVersion")
            .map(|o| ObjectRef::new(&o.name).within(ns.as_deref().unwrap_or_default()))
            .collect(),
        Some(envconfig::SECRET_KIND) => {
            let Some(environment) = labels.get(ENVIRONMENT_LABEL) else {
                return vec![];
            };
            let app = labels.get(APP_LABEL);
            versions
                .state()
                .into_iter()
                .filter(|v| {
                    v.namespace() == ns
                        && &v.spec.environment == environment
                        && app.is_none_or(|a| *a == app_label_value(&v.spec.app))
                })
                .map(|v| ObjectRef::from(&*v))
                .collect()
        }
        _ => vec![],
    }
}

/// The merged configuration of (app, environment) from the materialised stage Secrets, workspace
/// first. Reads only the cache.
pub fn resolve(managed: &Store<Secret>, ns: &str, app: &str, environment: &str) -> Materialized {
    let layers: Vec<BTreeMap<String, Vec<u8>>> = [
        secret_name(None, environment),
        secret_name(Some(app), environment),
    ]
    .iter()
    .filter_map(|name| managed.get(&ObjectRef::new(name).within(ns)))
    .map(|s| {
        s.data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    })
    .collect();
    merge_layers(&layers.iter().collect::<Vec<_>>())
}

/// Whether an EnvironmentConfig for (app or workspace, environment) exists, healthy, whose Secret
/// is not in the cache yet.
fn pending_materialization(ctx: &Context, ns: &str, app: &str, environment: &str) -> bool {
    ctx.configs.state().iter().any(|c| {
        c.namespace().as_deref() == Some(ns)
            && c.spec.environment == environment
            && c.spec.app.as_deref().is_none_or(|a| a == app)
            && c.metadata.deletion_timestamp.is_none()
            // Only configs that can materialise: a failing one must not hold the version back.
            && c.status.as_ref().is_none_or(|s| s.conditions.iter().all(|c| c.type_ != "Ready" || c.status == "True"))
            && ctx
                .managed_secrets
                .get(&ObjectRef::new(&secret_name(c.spec.app.as_deref(), environment)).within(ns))
                .is_none()
    })
}

#[instrument(skip_all, fields(kind = "AppVersion", namespace = v.namespace().unwrap_or_default(), name = v.name_any()))]
pub async fn reconcile(v: Arc<AppVersion>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    let ns = v.namespace().ok_or(Error::NoNamespace)?;
    let name = v.name_any();
    if v.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let environment = v.spec.environment.as_str();
    let app = ctx.apps.get(&ObjectRef::new(&v.spec.app).within(&ns));
    // A configuration of this stage that exists but is not materialised yet (the operator just
    // started, or it was just created): wait for its Secret (which triggers this version) rather
    // than write a resolved config that is about to change.
    if pending_materialization(&ctx, &ns, &v.spec.app, environment) {
        debug!(
            environment,
            "waiting for the stage's configuration to be materialised"
        );
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let resolved = resolve(&ctx.managed_secrets, &ns, &v.spec.app, environment);
    let requires = v.spec.requires.clone().unwrap_or_default();
    let missing = missing_requirements(
        &requires.data_sources,
        &requires.constants,
        v.spec.definition.as_ref(),
        &resolved.data,
    );

    // The resolved Secret, unless a Secret of that name exists that the operator does not manage.
    let target = resolved_secret_name(&name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let desired = managed_secret(
        &*v,
        &target,
        SECRET_KIND,
        environment,
        Some(&v.spec.app),
        &resolved,
    );
    // Not in the cache: create it (one request); a 409 means one exists: read and judge it.
    let cached = ctx
        .managed_secrets
        .get(&ObjectRef::new(&target).within(&ns));
    let (existing, created) = match cached {
        Some(s) => (Some(s), false),
        None if create_secret(&ctx, "appversion", &secrets, &desired).await? => (None, true),
        None => (secrets.get_opt(&target).await?.map(Arc::new), false),
    };
    let taken = existing.as_ref().is_some_and(|s| {
        s.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE)
    });
    let change = if taken {
        None
    } else if created {
        Some(Change::Created)
    } else {
        ensure_secret(&ctx, "appversion", &secrets, existing.as_deref(), &desired).await?
    };
    match change {
        Some(c) => {
            info!(secret = %target, environment, hash = %resolved.hash, change = ?c, "resolved config written")
        }
        None => debug!(secret = %target, "resolved config is up to date"),
    }

    let (status, promotion) =
        desired_status(&v, app.as_deref(), &resolved, &missing, &target, taken);
    apply_status(&ctx, "appversion", &*v, v.status.as_ref(), &status).await?;
    report(&v, &ctx, &status, promotion.as_ref(), change).await;
    if promotion.is_some() {
        ctx.metrics.promotions.inc();
    }
    ctx.metrics.reconciled("appversion", started.elapsed());
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// The status for what was found (pure), and the promotion to record if the stage changed.
fn desired_status(
    v: &AppVersion,
    app: Option<&ToolJetApp>,
    resolved: &Materialized,
    missing: &[String],
    secret: &str,
    taken: bool,
) -> (AppVersionStatus, Option<Promotion>) {
    let mut status = v.status.clone().unwrap_or_default();
    let generation = v.metadata.generation;
    let environment = v.spec.environment.clone();
    status.observed_generation = generation;

    let mut promotion = None;
    if let Some(previous) = status.environment.clone().filter(|p| *p != environment) {
        let annotations = v.annotations();
        let stamped = annotations.get(PROMOTED_FROM_ANNOTATION) == Some(&previous);
        let at = stamped
            .then(|| {
                annotations
                    .get(PROMOTED_AT_ANNOTATION)
                    .and_then(|t| t.parse::<Timestamp>().ok())
            })
            .flatten()
            .unwrap_or_else(Timestamp::now);
        let record = Promotion {
            from: previous,
            to: environment.clone(),
            at: Time(at),
            by: stamped
                .then(|| annotations.get(PROMOTED_BY_ANNOTATION).cloned())
                .flatten(),
        };
        status.promotions.push(record.clone());
        let excess = status.promotions.len().saturating_sub(PROMOTION_HISTORY);
        status.promotions.drain(..excess);
        promotion = Some(record);
    }
    status.environment = Some(environment.clone());
    if !taken {
        status.resolved_config = Some(ResolvedConfig {
            secret_name: secret.to_string(),
            hash: resolved.hash.clone(),
            environment: environment.clone(),
        });
    }

    let config = if taken {
        condition(
            "ConfigResolved",
            false,
            "SecretExists",
            format!(
                "Secret {secret} already exists and is not managed by tooljet-operator; rename or delete it"
            ),
            generation,
        )
    } else if missing.is_empty() {
        condition(
            "ConfigResolved",
            true,
            "Resolved",
            format!(
                "{} constants and {} data sources of {environment} in Secret {secret}",
                resolved.constants, resolved.data_sources
            ),
            generation,
        )
    } else {
        condition(
            "ConfigResolved",
            false,
            "MissingRequirements",
            format!(
                "environment {environment} lacks {}; add them to an EnvironmentConfig for {environment}",
                missing.join(", ")
            ),
            generation,
        )
    };
    let released = app
        .and_then(|a| a.status.as_ref())
        .and_then(|s| s.released_version.as_deref())
        == Some(v.name_any().as_str());
    let released_condition = if released {
        condition(
            "Released",
            true,
            "Released",
            "this version is live for end users",
            generation,
        )
    } else {
        condition(
            "Released",
            false,
            "NotReleased",
            "another version (or none) is released",
            generation,
        )
    };
    let ready = ready_condition(v, app, &config, generation);
    set_condition(&mut status.conditions, config);
    set_condition(&mut status.conditions, released_condition);
    set_condition(&mut status.conditions, ready);
    (status, promotion)
}

fn ready_condition(
    v: &AppVersion,
    app: Option<&ToolJetApp>,
    config: &Condition,
    generation: Option<i64>,
) -> Condition {
    let Some(app) = app else {
        return condition(
            "Ready",
            false,
            "AppNotFound",
            format!(
                "ToolJetApp {} does not exist in this namespace; create it or fix spec.app",
                v.spec.app
            ),
            generation,
        );
    };
    if !app.spec.environments.contains(&v.spec.environment) {
        return condition(
            "Ready",
            false,
            "EnvironmentNotInPipeline",
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
            "Ready",
            false,
            &config.reason,
            config.message.clone(),
            generation,
        );
    }
    condition(
        "Ready",
        true,
        "Ready",
        format!("running with the {} configuration", v.spec.environment),
        generation,
    )
}

async fn report(
    v: &AppVersion,
    ctx: &Context,
    status: &AppVersionStatus,
    promotion: Option<&Promotion>,
    change: Option<Change>,
) {
    if let Some(p) = promotion {
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
    if let Some(change) = change {
        let environment = &v.spec.environment;
        let (reason, note) = match (change, promotion) {
            (Change::DriftReverted, _) => (
                "DriftReverted",
                "resolved-config Secret restored after an outside edit".to_string(),
            ),
            (_, Some(p)) => (
                "ConfigSwitched",
                format!(
                    "now running with the {} configuration (was {})",
                    p.to, p.from
                ),
            ),
            (Change::Created, None) => (
                "ConfigResolved",
                format!("resolved the {environment} configuration"),
            ),
            (Change::Updated, None) => (
                "ConfigUpdated",
                format!("the {environment} configuration changed"),
            ),
        };
        publish(&ctx.recorder, v, EventType::Normal, reason, "Resolve", note).await;
    }
    let old = v.status.as_ref().map(|s| s.conditions.as_slice());
    if let Some(after) = new_failure(old, &status.conditions, "ConfigResolved") {
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
    ctx.error_action("appversion", &*v, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppVersionSpec, ToolJetAppSpec, ToolJetAppStatus};
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
            },
        );
        a.status = Some(ToolJetAppStatus {
            released_version: released.map(String::from),
            ..Default::default()
        });
        a
    }

    fn empty() -> Materialized {
        merge_layers(&[])
    }

    fn reason<'a>(s: &'a AppVersionStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_stage_change_is_recorded_once_with_the_webhooks_stamp() {
        let mut v = version("development");
        let (status, promotion) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false);
        assert!(
            promotion.is_none(),
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
        let (status, promotion) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false);
        let p = promotion.unwrap();
        assert_eq!(
            (p.from.as_str(), p.to.as_str(), p.by.as_deref()),
            ("development", "staging", Some("alice"))
        );
        assert_eq!(p.at.0.to_string(), "2026-01-02T03:04:05Z");
        assert_eq!(status.promotions.len(), 1);
        v.status = Some(status);
        let (again, none) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false);
        assert!(none.is_none());
        assert_eq!(again.promotions.len(), 1);
    }

    #[test]
    fn an_unstamped_promotion_has_no_author() {
        let mut v = version("development");
        v.status = Some(desired_status(&v, Some(&app(None)), &empty(), &[], "s", false).0);
        v.spec.environment = "staging".into();
        v.metadata.annotations = Some(Map::from([(
            PROMOTED_FROM_ANNOTATION.to_string(),
            "qa".to_string(),
        )]));
        let (_, p) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false);
        assert_eq!(p.unwrap().by, None);
    }

    #[test]
    fn promotion_history_is_bounded() {
        let mut v = version("a0");
        v.status = Some(desired_status(&v, None, &empty(), &[], "s", false).0);
        for i in 1..=30 {
            v.spec.environment = format!("a{i}");
            v.status = Some(desired_status(&v, None, &empty(), &[], "s", false).0);
        }
        let promotions = &v.status.as_ref().unwrap().promotions;
        assert_eq!(promotions.len(), PROMOTION_HISTORY);
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

        let (s, _) = desired_status(&v, None, &empty(), &[], "s", false);
        assert_eq!(reason(&s, "Ready"), ("False", "AppNotFound"));
        let (s, _) = desired_status(&version("qa"), Some(&app(None)), &empty(), &[], "s", false);
        assert_eq!(reason(&s, "Ready"), ("False", "EnvironmentNotInPipeline"));
        let (s, _) = desired_status(&v, Some(&app(None)), &empty(), &[], "s", false);
        assert_eq!(reason(&s, "Ready"), ("True", "Ready"));
        assert_eq!(s.resolved_config.unwrap().environment, "staging");
    }
}
