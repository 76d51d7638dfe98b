//! The commands that move versions: `promote`, `release`, `rollback`, `approve`. Each is the JSON
//! merge patch (or object) the README documents, sent as the user, so the admission webhook and
//! policies judge it and their verdict is shown as is.

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions},
};
use serde::Serialize;
use serde_json::json;
use tooljet_operator::api::{
    APPROVED_GENERATION_ANNOTATION, AppVersion, ReleaseRecord, ToolJetApp, VerificationPhase,
};
use tooljet_operator::lifecycle::{Pipeline, ReleaseCheck};

use crate::{
    cluster::{Cluster, approval_resource},
    error::{Error, Result},
    output::{self, Format},
};

/// The field manager of every write.
pub const MANAGER: &str = "kubectl-tooljet";

/// What a lifecycle command did (or, with --dry-run, would do).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub action: &'static str,
    pub namespace: String,
    pub app: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    pub dry_run: bool,
    pub message: String,
}

fn params(dry_run: bool) -> PatchParams {
    PatchParams {
        dry_run,
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

/// Prints what a command did (its message, or the Outcome as JSON/YAML).
pub fn report(format: Format, outcome: &Outcome) -> Result<()> {
    output::print(format, outcome, |o| format!("{}\n", o.message))
}

/// The stage after `current` in `app`'s pipeline; errors say why there is none.
pub fn next_stage(app: &ToolJetApp, version: &AppVersion) -> Result<String> {
    let name = version.name_any();
    let pipeline = Pipeline::of(app);
    let current = &version.spec.environment;
    if !pipeline.contains(current) {
        return Err(Error::Usage(format!(
            "AppVersion {name} is in {current}, which is not a stage of app {}'s pipeline ({pipeline}); fix spec.environment or the pipeline",
            app.name_any()
        )));
    }
    pipeline.next(current).map(str::to_string).ok_or_else(|| {
        Error::Usage(format!(
            "AppVersion {name} is already in the last stage ({current}); release it with `kubectl tooljet release {name}`"
        ))
    })
}

pub async fn promote(
    cluster: &Cluster,
    name: &str,
    to: Option<String>,
    dry_run: bool,
) -> Result<Outcome> {
    let version = cluster.version(name).await?;
    let app = cluster.app(&version.spec.app).await?;
    let from = version.spec.environment.clone();
    let target = match to {
        Some(t) => t,
        None => next_stage(&app, &version)?,
    };
    if target == from {
        return Err(Error::Usage(format!(
            "AppVersion {name} is already in {from}"
        )));
    }
    // The resourceVersion makes it a promotion from the stage shown here, not from whatever
    // stage someone else moved the version to meanwhile. A conflict from any other write (the
    // operator's status updates bump the resourceVersion too) is retried after re-reading.
    let context = format!("promoting AppVersion {name} to {target}");
    let mut current = version;
    for attempt in 0.. {
        let patch = json!({
            "metadata": { "resourceVersion": current.resource_version() },
            "spec": { "environment": target },
        });
        match cluster
            .versions_lean()
            .patch(name, &params(dry_run), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => {
                current = cluster.version(name).await?;
                if current.spec.environment != from {
                    return Err(Error::Usage(format!(
                        "{context}: AppVersion {name} was moved to {} meanwhile; check `kubectl tooljet status {}`",
                        current.spec.environment,
                        app.name_any()
                    )));
                }
            }
            Err(e) => return Err(Error::kube(context, e)),
        }
    }
    let message = if dry_run {
        format!(
            "appversion/{name} can be promoted {from} -> {target} (server dry run: admission allowed it; nothing changed)"
        )
    } else {
        format!("appversion/{name} promoted {from} -> {target}")
    };
    Ok(Outcome {
        action: "promote",
        namespace: cluster.namespace.clone(),
        app: app.name_any(),
        version: name.into(),
        from: Some(from),
        to: Some(target),
        dry_run,
        message,
    })
}

/// Sets `app`'s release to `version` (release and rollback are the same patch).
///
/// With `seen`, the release the person was shown (the dashboard's confirmation pins it): if it
/// is no longer the release, nothing changes. Either way the patch carries the resourceVersion
/// read, so a release someone else sets meanwhile is never silently replaced.
async fn set_release(
    cluster: &Cluster,
    app: &ToolJetApp,
    version: &str,
    action: &'static str,
    dry_run: bool,
    seen: Option<Option<&str>>,
) -> Result<Outcome> {
    let name = app.name_any();
    let from = app.released().map(str::to_string);
    unchanged_since_seen(app, seen)?;
    let context = format!("setting the release of ToolJetApp {name} to {version}");
    let mut current = app.clone();
    for attempt in 0.. {
        let patch = json!({
            "metadata": { "resourceVersion": current.resource_version() },
            "spec": { "release": { "version": version } },
        });
        match cluster
            .apps()
            .patch(&name, &params(dry_run), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => break,
            // Any write bumps the resourceVersion (the operator's status updates too): retried
            // while the release is still the one read.
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => {
                current = cluster.app(&name).await?;
                unchanged_since_seen(&current, Some(from.as_deref()))?;
            }
            Err(e) => return Err(Error::kube(&context, e)),
        }
    }
    let was = from
        .as_deref()
        .map(|f| format!(" (was {f})"))
        .unwrap_or_default();
    let verb = if action == "rollback" {
        "rolled back to"
    } else {
        "released"
    };
    let message = if dry_run {
        format!(
            "tooljetapp/{name} can be {verb} {version}{was} (server dry run: admission allowed it; nothing changed)"
        )
    } else {
        format!("tooljetapp/{name} {verb} {version}{was}")
    };
    Ok(Outcome {
        action,
        namespace: cluster.namespace.clone(),
        app: name,
        version: version.into(),
        from,
        to: Some(version.into()),
        dry_run,
        message,
    })
}

/// Refuses when the app's release is no longer the one the person saw (`seen`).
fn unchanged_since_seen(app: &ToolJetApp, seen: Option<Option<&str>>) -> Result<()> {
    match seen {
        Some(seen) if seen != app.released() => Err(Error::Usage(format!(
            "the release of app {} was changed meanwhile (it is now {}); review it again",
            app.name_any(),
            app.released().unwrap_or("none")
        ))),
        _ => Ok(()),
    }
}

pub async fn release(
    cluster: &Cluster,
    version: &str,
    dry_run: bool,
    seen: Option<Option<&str>>,
) -> Result<Outcome> {
    let v = cluster.version(version).await?;
    let app = cluster.app(&v.spec.app).await?;
    unchanged_since_seen(&app, seen)?;
    if app.released() == Some(version) {
        return Err(Error::Usage(format!(
            "AppVersion {version} is already the release of app {}",
            app.name_any()
        )));
    }
    set_release(cluster, &app, version, "release", dry_run, seen).await
}

/// The app named, or the namespace's only app.
pub async fn resolve_app(cluster: &Cluster, app: Option<&str>) -> Result<ToolJetApp> {
    if let Some(name) = app {
        return cluster.app(name).await;
    }
    let mut apps = cluster.list_apps().await?;
    match apps.len() {
        1 => Ok(apps.remove(0)),
        0 => Err(Error::NotFound(format!(
            "no ToolJetApps in namespace {}",
            cluster.namespace
        ))),
        _ => Err(Error::Usage(format!(
            "namespace {} has {} apps ({}); name one",
            cluster.namespace,
            apps.len(),
            apps.iter()
                .map(|a| a.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The version to roll back to: the newest earlier release that is not the current one, is
/// still a version of the app in its last stage, and whose release did not fail verification (as
/// the operator's automatic rollback chooses). Pure.
pub fn rollback_target(app: &ToolJetApp, versions: &[AppVersion]) -> Result<String> {
    let current = app.released();
    let history = app
        .status
        .as_ref()
        .map(|s| s.release_history.as_slice())
        .unwrap_or_default();
    let pipeline = Pipeline::of(app);
    let releasable = |name: &str| {
        let stage = versions
            .iter()
            .find(|v| v.name_any() == name && v.spec.app == app.name_any())
            .map(|v| v.spec.environment.as_str());
        pipeline.release_check(stage) == ReleaseCheck::Releasable
    };
    let earlier: Vec<&ReleaseRecord> = history
        .iter()
        .rev()
        .filter(|r| Some(r.version.as_str()) != current && releasable(&r.version))
        .collect();
    earlier
        .iter()
        .find(|r| r.verification != Some(VerificationPhase::Failed))
        .map(|r| r.version.clone())
        .ok_or_else(|| nothing_to_roll_back_to(app, pipeline.last(), &earlier))
}

/// Why `rollback` has no target: no earlier release in the last stage, or only ones whose
/// release failed verification (named).
fn nothing_to_roll_back_to(app: &ToolJetApp, last: &str, failed: &[&ReleaseRecord]) -> Error {
    let mut names: Vec<&str> = Vec::new();
    for r in failed {
        if !names.contains(&r.version.as_str()) {
            names.push(&r.version);
        }
    }
    let why = if names.is_empty() {
        format!("no earlier release still in {last}")
    } else {
        format!(
            "no earlier release still in {last} that did not fail verification ({} failed when released)",
            names.join(", ")
        )
    };
    Error::Usage(format!(
        "app {} has {why} to roll back to; name one with --to VERSION",
        app.name_any()
    ))
}

pub async fn rollback(
    cluster: &Cluster,
    app: Option<&str>,
    to: Option<String>,
    dry_run: bool,
    seen: Option<Option<&str>>,
) -> Result<Outcome> {
    let app = resolve_app(cluster, app).await?;
    unchanged_since_seen(&app, seen)?;
    let target = match to {
        Some(t) => {
            cluster.version(&t).await?;
            t
        }
        None => rollback_target(&app, &cluster.list_versions(&cluster.namespace).await?)?,
    };
    if app.released() == Some(target.as_str()) {
        return Err(Error::Usage(format!(
            "{target} is already the release of app {}",
            app.name_any()
        )));
    }
    set_release(cluster, &app, &target, "rollback", dry_run, seen).await
}

/// Who the apiserver says the cluster's credentials are (a SelfSubjectReview): an error when it
/// does not accept them, `None` when it names nobody.
pub async fn identify(cluster: &Cluster) -> Result<Option<String>> {
    let api: Api<SelfSubjectReview> = Api::all(cluster.client.clone());
    let review: SelfSubjectReview = serde_json::from_value(json!({}))
        .map_err(|e| Error::Api(format!("building a SelfSubjectReview: {e}")))?;
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| Error::kube("asking the apiserver who you are", e))?;
    Ok(answer.status.and_then(|s| s.user_info?.username))
}

/// The requesting user's name, as the apiserver sees it (none if it cannot tell).
pub async fn whoami(cluster: &Cluster) -> Option<String> {
    identify(cluster).await.ok().flatten()
}

/// The Approval's name: `<version>-<stage>-<user>`, a DNS subdomain of at most 253 characters.
pub fn approval_name(version: &str, stage: &str, user: &str) -> String {
    let user: String = user
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let user = user.trim_matches('-');
    let name = format!("{version}-{stage}-{user}");
    let name: String = name.chars().take(253).collect();
    name.trim_end_matches(['-', '.']).to_string()
}

pub async fn approve(
    cluster: &Cluster,
    version: &str,
    stage: &str,
    comment: Option<String>,
    generation: Option<i64>,
) -> Result<Outcome> {
    let v = cluster.version(version).await?;
    let generation = generation.unwrap_or_else(|| v.metadata.generation.unwrap_or_default());
    let app = cluster.app(&v.spec.app).await?;
    if !Pipeline::of(&app).contains(stage) {
        return Err(Error::Usage(format!(
            "{stage} is not a stage of app {}'s pipeline {:?}",
            app.name_any(),
            app.spec.environments
        )));
    }
    // The mutating webhook ties the Approval to its version (ownerReference) and stamps the
    // approver; the name says who asked, so a second approval by the same person conflicts.
    let mut metadata = json!({ "labels": { "app.kubernetes.io/part-of": app.name_any() } });
    match whoami(cluster).await {
        Some(user) => metadata["name"] = json!(approval_name(version, stage, &user)),
        None => metadata["generateName"] = json!(format!("{version}-{stage}-")),
    }
    let mut spec = json!({ "version": version, "environment": stage, "generation": generation });
    if let Some(c) = comment {
        spec["comment"] = json!(c);
    }
    let ar = approval_resource();
    let body: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind, "metadata": metadata, "spec": spec,
    }))
    .map_err(|e| Error::Api(format!("building the Approval: {e}")))?;
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let api = cluster.approvals(&cluster.namespace);
    let mut replaced = None;
    let created = loop {
        match api.create(&pp, &body).await {
            Ok(o) => break o,
            Err(kube::Error::Api(s))
                if s.code == 404 && s.reason == "NotFound" && !s.message.contains(version) =>
            {
                return Err(Error::NotFound(
                    "this cluster does not serve Approvals (tooljet.io/v1alpha1 approvals); upgrade tooljet-operator's CRDs".into(),
                ));
            }
            Err(kube::Error::Api(s)) if s.code == 409 && replaced.is_none() => {
                replaced =
                    Some(replace_stale(&api, &body.name_any(), version, stage, generation).await?);
            }
            Err(e) => return Err(Error::kube(format!("approving {version} for {stage}"), e)),
        }
    };
    let replaced = replaced
        .map(|g| format!(" (it replaces your approval of generation {g}, which no longer counted)"))
        .unwrap_or_default();
    Ok(Outcome {
        action: "approve",
        namespace: cluster.namespace.clone(),
        app: app.name_any(),
        version: version.into(),
        from: None,
        to: Some(stage.into()),
        dry_run: false,
        message: format!(
            "approval/{} created: {version} (generation {generation}) approved for {stage}{replaced}",
            created.name_any()
        ),
    })
}

/// Your Approval `name` exists: of this generation, it stands (Approvals are immutable); of an
/// earlier one (the version was edited since), it no longer counts and is deleted so that the
/// new one can take its name. Returns the generation it had.
async fn replace_stale(
    api: &Api<DynamicObject>,
    name: &str,
    version: &str,
    stage: &str,
    generation: i64,
) -> Result<i64> {
    let context = format!("approving {version} for {stage}");
    let existing = api.get(name).await.map_err(|e| Error::kube(&context, e))?;
    let reviewed = existing
        .annotations()
        .get(APPROVED_GENERATION_ANNOTATION)
        .and_then(|g| g.parse::<i64>().ok())
        .or_else(|| existing.data["spec"]["generation"].as_i64());
    if reviewed == Some(generation) || reviewed.is_none() {
        return Err(Error::Usage(format!(
            "you have already approved {version} generation {generation} for {stage} (Approval {name}); Approvals are immutable"
        )));
    }
    let uid = existing.uid();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(Error::kube(&context, e)),
    }
    // Gone before its name is taken again (deletion may wait on the garbage collector).
    for _ in 0..50 {
        match api.get_opt(name).await {
            Ok(None) => return Ok(reviewed.unwrap_or_default()),
            Ok(Some(_)) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => return Err(Error::kube(&context, e)),
        }
    }
    Err(Error::Api(format!(
        "{context}: your earlier Approval {name} is still being deleted; try again in a moment"
    )))
}

#[cfg(test)]
mod tests {
    use tooljet_operator::api::AppVersionSpec;

    use super::*;

    fn app(release: Option<&str>, history: &[&str]) -> ToolJetApp {
        let verified: Vec<(&str, Option<&str>)> = history.iter().map(|v| (*v, None)).collect();
        app_verified(release, &verified)
    }

    /// An app whose release history holds each version with how its verification ended.
    fn app_verified(release: Option<&str>, history: &[(&str, Option<&str>)]) -> ToolJetApp {
        let records: Vec<_> = history
            .iter()
            .map(|(v, verification)| {
                json!({ "version": v, "at": "2026-01-01T00:00:00Z", "verification": verification })
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": "crm" },
            "spec": { "environments": ["dev", "qa", "prod"], "release": release.map(|v| json!({ "version": v })) },
            "status": { "releaseHistory": records },
        }))
        .unwrap()
    }

    fn version(name: &str, stage: &str) -> AppVersion {
        AppVersion::new(
            name,
            AppVersionSpec {
                app: "crm".into(),
                version_name: name.into(),
                description: None,
                environment: stage.into(),
                definition: None,
                requires: None,
            },
        )
    }

    #[test]
    fn promotion_goes_to_the_next_stage_of_the_apps_pipeline() {
        let a = app(None, &[]);
        assert_eq!(next_stage(&a, &version("v1", "dev")).unwrap(), "qa");
        assert_eq!(next_stage(&a, &version("v1", "qa")).unwrap(), "prod");
        let e = next_stage(&a, &version("v1", "prod")).unwrap_err();
        assert!(e.to_string().contains("kubectl tooljet release v1"), "{e}");
        assert!(next_stage(&a, &version("v1", "staging")).is_err());
    }

    #[test]
    fn rollback_goes_to_the_newest_earlier_release_still_in_the_last_stage() {
        let versions = [
            version("v1", "prod"),
            version("v2", "prod"),
            version("v3", "prod"),
        ];
        let a = app(Some("v3"), &["v1", "v2", "v3"]);
        assert_eq!(rollback_target(&a, &versions).unwrap(), "v2");
        // v2 deleted meanwhile: v1.
        assert_eq!(
            rollback_target(&a, &[version("v1", "prod"), version("v3", "prod")]).unwrap(),
            "v1"
        );
        // Nothing earlier.
        let a = app(Some("v1"), &["v1"]);
        assert!(
            rollback_target(&a, &versions)
                .unwrap_err()
                .to_string()
                .contains("--to")
        );
    }

    #[test]
    fn rollback_passes_over_releases_that_failed_verification() {
        let versions = [
            version("v1", "prod"),
            version("v2", "prod"),
            version("v3", "prod"),
        ];
        // v3 failed (and is the release); v2 failed too: back to v1.
        let a = app_verified(
            Some("v3"),
            &[
                ("v1", Some("Verified")),
                ("v2", Some("Failed")),
                ("v3", Some("Failed")),
            ],
        );
        assert_eq!(rollback_target(&a, &versions).unwrap(), "v1");
        // A release still being verified (no outcome yet) is a target.
        let a = app_verified(Some("v3"), &[("v1", None), ("v2", None), ("v3", None)]);
        assert_eq!(rollback_target(&a, &versions).unwrap(), "v2");
        // v1 was released again after it failed, and that one was verified: the newest record
        // of v1 counts.
        let a = app_verified(
            Some("v3"),
            &[
                ("v1", Some("Failed")),
                ("v2", Some("Failed")),
                ("v1", Some("Verified")),
                ("v3", None),
            ],
        );
        assert_eq!(rollback_target(&a, &versions).unwrap(), "v1");
        // Only failed ones left: the error names them and points to --to.
        let a = app_verified(
            Some("v3"),
            &[("v1", Some("Failed")), ("v2", Some("Failed")), ("v3", None)],
        );
        let e = rollback_target(&a, &versions).unwrap_err().to_string();
        assert_eq!(
            e,
            "app crm has no earlier release still in prod that did not fail verification (v2, v1 failed when \
             released) to roll back to; name one with --to VERSION"
        );
    }

    #[test]
    fn approval_names_are_predictable_object_names() {
        assert_eq!(
            approval_name("crm-v2", "staging", "alice"),
            "crm-v2-staging-alice"
        );
        assert_eq!(
            approval_name("crm-v2", "production", "system:serviceaccount:ci:Deployer"),
            "crm-v2-production-system-serviceaccount-ci-deployer"
        );
        assert_eq!(
            approval_name("v", "s", "bob@example.com"),
            "v-s-bob-example-com"
        );
    }
}
