//! ToolJetApp: versions per stage, the release (and its history), and the rollout trigger that
//! restarts an environment's workloads when, and only when, its configuration changes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::Stream;
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::{
    APP_LABEL, Context, ENVIRONMENT_LABEL, Error, HASH_ANNOTATION, KIND_LABEL, MANAGER, Settings,
    apply_status, appversion, condition, envconfig, new_failure, publish, secrets::app_label_value,
    set_condition,
};
use crate::api::{
    AppVersion, EnvironmentVersions, RELEASED_AT_ANNOTATION, RELEASED_BY_ANNOTATION,
    RELEASED_VERSION_ANNOTATION, ReleaseRecord, RolloutTarget, ToolJetApp, ToolJetAppStatus,
};

/// How many releases a status keeps.
pub const RELEASE_HISTORY: usize = 20;

/// The controller and its triggers: its own kind, its versions, the stage configurations'
/// Secrets (rollout), and Deployments (metadata only) that a rollout may name or select.
pub fn controller(
    client: Client,
    settings: &Settings,
    (store, main): (
        Store<ToolJetApp>,
        impl Stream<Item = Result<ToolJetApp, watcher::Error>> + Send + 'static,
    ),
    managed: impl Stream<Item = Result<Secret, watcher::Error>> + Send + 'static,
) -> Controller<ToolJetApp> {
    let apps = store.clone();
    let apps_for_deployments = store.clone();
    Controller::for_stream(main, store)
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .watches(
            Api::<AppVersion>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            |v: AppVersion| {
                v.namespace()
                    .map(|ns| ObjectRef::new(&v.spec.app).within(&ns))
            },
        )
        .watches_stream(managed, move |secret: Secret| {
            apps_with_rollout_for_secret(&apps, &secret)
        })
        .watches_stream(
            watcher(
                Api::<PartialObjectMeta<Deployment>>::all(client),
                watcher::Config::default().any_semantic(),
            )
            .default_backoff()
            .touched_objects(),
            move |d: PartialObjectMeta<Deployment>| apps_rolling_out(&apps_for_deployments, &d),
        )
}

fn apps_with_rollout_for_secret(
    apps: &Store<ToolJetApp>,
    secret: &Secret,
) -> Vec<ObjectRef<ToolJetApp>> {
    let labels = secret.labels();
    if labels.get(KIND_LABEL).map(String::as_str) != Some(envconfig::SECRET_KIND) {
        return vec![];
    }
    let (Some(environment), app) = (labels.get(ENVIRONMENT_LABEL), labels.get(APP_LABEL)) else {
        return vec![];
    };
    apps.state()
        .into_iter()
        .filter(|a| {
            a.namespace() == secret.namespace()
                && app.is_none_or(|l| *l == app_label_value(&a.name_any()))
                && a.spec.rollout.iter().any(|r| &r.environment == environment)
        })
        .map(|a| ObjectRef::from(&*a))
        .collect()
}

fn apps_rolling_out(
    apps: &Store<ToolJetApp>,
    d: &PartialObjectMeta<Deployment>,
) -> Vec<ObjectRef<ToolJetApp>> {
    let name = d.name_any();
    apps.state()
        .into_iter()
        .filter(|a| {
            a.namespace() == d.namespace()
                && a.spec.rollout.iter().any(|r| {
                    r.deployments.contains(&name)
                        || r.selector.as_ref().is_some_and(|s| selects(s, d.labels()))
                })
        })
        .map(|a| ObjectRef::from(&*a))
        .collect()
}

/// Whether a label selector matches a label set.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expressions
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
    let last = app
        .spec
        .environments
        .last()
        .map(String::as_str)
        .unwrap_or_default();
    let wanted = &release.version;
    match versions.iter().find(|v| &v.name_any() == wanted) {
        None => Release::Invalid {
            reason: "ReleaseVersionNotFound",
            message: format!(
                "spec.release.version {wanted} is not an AppVersion of app {} in this namespace",
                app.name_any()
            ),
        },
        Some(v) if v.spec.environment != last => Release::Invalid {
            reason: "ReleaseVersionNotInLastStage",
            message: format!(
                "spec.release.version {wanted} is in {}, not in {last}; promote it to {last} first, or release a {last} version",
                v.spec.environment
            ),
        },
        Some(_) => Release::Valid(wanted.clone()),
    }
}

#[instrument(skip_all, fields(kind = "ToolJetApp", namespace = app.namespace().unwrap_or_default(), name = app.name_any()))]
pub async fn reconcile(app: Arc<ToolJetApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    let ns = app.namespace().ok_or(Error::NoNamespace)?;
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = app.name_any();
    let versions: Vec<Arc<AppVersion>> = ctx
        .versions
        .state()
        .into_iter()
        .filter(|v| v.namespace().as_deref() == Some(ns.as_str()) && v.spec.app == name)
        .collect();
    let release = check_release(&app, &versions);

    let mut rollout_problems = vec![];
    for target in &app.spec.rollout {
        rollout_problems.extend(roll_out(&ctx, &app, &ns, target).await?);
    }

    let (status, record) = desired_status(&app, &versions, &release, &rollout_problems);
    apply_status(&ctx, "tooljetapp", &*app, app.status.as_ref(), &status).await?;

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
    if let Some(after) = new_failure(old, &status.conditions, "Ready") {
        warn!(reason = %after.reason, message = %after.message, "app not ready");
        publish(
            &ctx.recorder,
            &*app,
            EventType::Warning,
            &after.reason,
            "Release",
            after.message.clone(),
        )
        .await;
    }
    ctx.metrics.reconciled("tooljetapp", started.elapsed());
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// Stamps the stage's configuration hash on the pod template of each Deployment of `target`,
/// when it differs. Returns the names of Deployments that were named but not found.
async fn roll_out(
    ctx: &Context,
    app: &ToolJetApp,
    ns: &str,
    target: &RolloutTarget,
) -> Result<Vec<String>, Error> {
    let hash = appversion::resolve(
        &ctx.managed_secrets,
        ns,
        &app.name_any(),
        &target.environment,
    )
    .hash;
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let mut deployments = BTreeMap::new();
    let mut missing = vec![];
    for name in &target.deployments {
        match api.get_opt(name).await? {
            Some(d) => {
                deployments.insert(name.clone(), d);
            }
            None => missing.push(name.clone()),
        }
    }
    if let Some(selector) = &target.selector {
        let selector = selector_string(selector);
        for d in api.list(&ListParams::default().labels(&selector)).await? {
            deployments.insert(d.name_any(), d);
        }
    }
    for (name, d) in deployments {
        let current = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(HASH_ANNOTATION));
        if current == Some(&hash) {
            continue;
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
        .await?;
        ctx.metrics.wrote("tooljetapp", "deployment");
        info!(deployment = %name, environment = %target.environment, %hash, "rollout: configuration hash stamped");
        publish(
            &ctx.recorder,
            app,
            EventType::Normal,
            "RolloutTriggered",
            "Rollout",
            format!(
                "Deployment {name} restarts with the changed {} configuration",
                target.environment
            ),
        )
        .await;
    }
    Ok(missing
        .into_iter()
        .map(|m| format!("{}/{m}", target.environment))
        .collect())
}

/// A label selector in the `key=value,key in (a,b)` form list calls take.
fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// The status (pure), and the release to record if the released version changed.
fn desired_status(
    app: &ToolJetApp,
    versions: &[Arc<AppVersion>],
    release: &Release,
    rollout_missing: &[String],
) -> (ToolJetAppStatus, Option<ReleaseRecord>) {
    let mut status = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    status.observed_generation = generation;
    status.environments = app
        .spec
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
        .collect();

    let mut record = None;
    let ready = match release {
        Release::None => {
            status.released_version = None;
            condition(
                "Ready",
                true,
                "NoRelease",
                "no version is released yet",
                generation,
            )
        }
        Release::Valid(version) => {
            if status.released_version.as_ref() != Some(version) {
                let annotations = app.annotations();
                let stamped = annotations.get(RELEASED_VERSION_ANNOTATION) == Some(version);
                let at = stamped
                    .then(|| {
                        annotations
                            .get(RELEASED_AT_ANNOTATION)
                            .and_then(|t| t.parse::<Timestamp>().ok())
                    })
                    .flatten()
                    .unwrap_or_else(Timestamp::now);
                let r = ReleaseRecord {
                    version: version.clone(),
                    at: Time(at),
                    by: stamped
                        .then(|| annotations.get(RELEASED_BY_ANNOTATION).cloned())
                        .flatten(),
                    rollback: status.release_history.iter().any(|h| &h.version == version),
                };
                status.release_history.push(r.clone());
                let excess = status.release_history.len().saturating_sub(RELEASE_HISTORY);
                status.release_history.drain(..excess);
                status.released_version = Some(version.clone());
                record = Some(r);
            }
            condition(
                "Ready",
                true,
                "Released",
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
                "Ready",
                false,
                reason,
                format!("{message}{kept}"),
                generation,
            )
        }
    };
    let rollout = if rollout_missing.is_empty() {
        condition(
            "RolloutReady",
            true,
            "Synced",
            "every rollout workload carries its stage's configuration hash",
            generation,
        )
    } else {
        condition(
            "RolloutReady",
            false,
            "DeploymentNotFound",
            format!(
                "Deployments named in spec.rollout do not exist: {}",
                rollout_missing.join(", ")
            ),
            generation,
        )
    };
    set_condition(&mut status.conditions, ready);
    set_condition(&mut status.conditions, rollout);
    (status, record)
}

pub fn error_policy(app: Arc<ToolJetApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_action("tooljetapp", &*app, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppVersionSpec, Release as ReleaseSpec, ToolJetAppSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

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
        let (s, r) = desired_status(&a, &versions(), &check_release(&a, &versions()), &[]);
        assert_eq!(s.released_version.as_deref(), Some("v1"));
        assert!(!r.unwrap().rollback);
        a.status = Some(s);

        a.spec.release = Some(ReleaseSpec {
            version: "v2".into(),
        });
        let (s, r) = desired_status(&a, &versions(), &check_release(&a, &versions()), &[]);
        assert_eq!(r.unwrap().version, "v2");
        a.status = Some(s);

        a.spec.release = Some(ReleaseSpec {
            version: "v1".into(),
        });
        let (s, r) = desired_status(&a, &versions(), &check_release(&a, &versions()), &[]);
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
        let (s, r) = desired_status(&a, &versions(), &check_release(&a, &versions()), &[]);
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
        let (s, _) = desired_status(&a, &versions(), &Release::None, &[]);
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

    #[test]
    fn label_selectors_match_like_the_apiserver() {
        let labels = BTreeMap::from([
            ("app".to_string(), "tooljet".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]);
        let mut s = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "tooljet".into())])),
            match_expressions: None,
        };
        assert!(selects(&s, &labels));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "In".into(),
            values: Some(vec!["staging".into()]),
        }]);
        assert!(!selects(&s, &labels));
        assert_eq!(selector_string(&s), "app=tooljet,env in (staging)");
    }
}
