//! The environment rules as pure functions: (operation, old, new, the app's pipeline and
//! versions, permission answers) -> allow or deny with a message that says what was tried, which
//! rule forbids it and what to do instead. No client, no clock (the caller passes `now`).

use std::collections::BTreeMap;

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use kube::ResourceExt;
use serde_json::Value;

use crate::api::{
    ANNOTATION_PREFIX, AppVersion, PROMOTED_AT_ANNOTATION, PROMOTED_BY_ANNOTATION,
    PROMOTED_FROM_ANNOTATION, RELEASED_AT_ANNOTATION, RELEASED_BY_ANNOTATION,
    RELEASED_VERSION_ANNOTATION, ToolJetApp,
};

/// The one `tooljet.io/` annotation users may set, guarded by RBAC (verb `unprotect` on
/// `tooljetapps`): `disabled` lets an app with versions past its first stage be deleted.
pub const DELETION_PROTECTION_ANNOTATION: &str = "tooljet.io/deletion-protection";

/// The denial for a request that lacks the object(s) its operation carries.
pub const MALFORMED: &str =
    "malformed admission request: the object or old object its operation needs is missing";

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// A version of the app, as the rules need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionFact {
    pub name: String,
    pub version_name: String,
    pub environment: String,
}

/// The app a request concerns: its pipeline and its versions (the version under review excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFact {
    pub name: String,
    pub environments: Vec<String>,
    pub versions: Vec<VersionFact>,
}

impl AppFact {
    fn first(&self) -> &str {
        self.environments
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn index(&self, stage: &str) -> Option<usize> {
        self.environments.iter().position(|s| s == stage)
    }

    fn pipeline(&self) -> String {
        self.environments.join(" -> ")
    }
}

/// What the handler looked up for the request.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The ToolJetApp (for an AppVersion: `spec.app`; for a ToolJetApp: itself, as stored).
    pub app: Option<AppFact>,
    /// The namespace is being deleted (its contents go with it, whatever their stage).
    pub namespace_terminating: bool,
    /// The SubjectAccessReview answer for the promotion or release the request makes.
    pub permitted: Option<bool>,
    /// The SubjectAccessReview answer for changing the deletion protection.
    pub may_unprotect: Option<bool>,
    /// For a promotion: what the target stage's configuration lacks of what the version needs.
    pub missing_in_target: Vec<String>,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

use Verdict::{Allow, Deny};

/// The promotion an AppVersion update makes, if any: (from, to).
pub fn promotion<'a>(old: &'a AppVersion, new: &'a AppVersion) -> Option<(&'a str, &'a str)> {
    (old.spec.environment != new.spec.environment)
        .then_some((old.spec.environment.as_str(), new.spec.environment.as_str()))
}

/// The release a ToolJetApp change makes, if any: the new `spec.release.version`.
pub fn release<'a>(old: Option<&'a ToolJetApp>, new: &'a ToolJetApp) -> Option<&'a str> {
    let before = old
        .and_then(|o| o.spec.release.as_ref())
        .map(|r| r.version.as_str());
    let after = new.spec.release.as_ref().map(|r| r.version.as_str());
    (after.is_some() && after != before)
        .then_some(after)
        .flatten()
}

fn reserved_annotations(obj: &impl ResourceExt) -> BTreeMap<&String, &String> {
    obj.annotations()
        .iter()
        .filter(|(k, _)| {
            k.starts_with(ANNOTATION_PREFIX) && k.as_str() != DELETION_PROTECTION_ANNOTATION
        })
        .collect()
}

/// Reserved annotations a user changed: every `tooljet.io/` key whose value differs from the
/// stored object, except those `stamped` by the mutating webhook for this request.
fn forged<'a>(
    old: Option<&'a impl ResourceExt>,
    new: &'a impl ResourceExt,
    stamped: &[&str],
) -> Vec<&'a String> {
    let before = old.map(reserved_annotations).unwrap_or_default();
    let after = reserved_annotations(new);
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !stamped.contains(&k.as_str()) && before.get(k) != after.get(k))
        .collect()
}

fn forged_message(kind: &str, name: &str, keys: &[&String]) -> String {
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    format!(
        "{kind} {name}: annotation {} is recorded by tooljet-operator's admission webhook and cannot be set or \
         changed by users; remove it from your change",
        keys.join(", ")
    )
}

/// The rules for an AppVersion request.
pub fn review_version(
    op: Op,
    old: Option<&AppVersion>,
    new: Option<&AppVersion>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(subject) = new.or(old) else {
        return Deny(MALFORMED.into());
    };
    let name = subject.name_any();
    let ns = subject.namespace().unwrap_or_default();
    if op == Op::Delete && facts.namespace_terminating {
        return Allow;
    }
    let Some(app) = &facts.app else {
        return match op {
            // An orphan (its app was deleted, which only a first-stage-only app allows) may go.
            Op::Delete => Allow,
            _ => Deny(format!(
                "AppVersion {name} refers to ToolJetApp {}, which does not exist in namespace {ns}; create the app first",
                subject.spec.app
            )),
        };
    };
    let first = app.first();
    match op {
        Op::Create => {
            let Some(new) = new else {
                return Deny(MALFORMED.into());
            };
            if new.spec.environment != first {
                return Deny(format!(
                    "AppVersion {name} cannot be created in {}: versions are created only in {first}, the first stage \
                     of ToolJetApp {} ({}); create it in {first} and promote it",
                    new.spec.environment,
                    app.name,
                    app.pipeline()
                ));
            }
            if let Some(other) = app
                .versions
                .iter()
                .find(|v| v.version_name == new.spec.version_name && v.name != name)
            {
                return Deny(format!(
                    "AppVersion {name}: versionName {} is already used by AppVersion {} of app {}; choose another name",
                    new.spec.version_name, other.name, app.name
                ));
            }
            let keys = forged(None::<&AppVersion>, new, &[]);
            if !keys.is_empty() {
                return Deny(forged_message("AppVersion", &name, &keys));
            }
            Allow
        }
        Op::Delete => {
            let Some(old) = old else {
                return Deny(MALFORMED.into());
            };
            if old.spec.environment == first {
                Allow
            } else {
                Deny(format!(
                    "AppVersion {name} is in {}: deletion is only allowed in {first}; versions that left {first} are \
                     kept as the app's release and rollback history (deleting the namespace removes the whole workspace)",
                    old.spec.environment
                ))
            }
        }
        Op::Update => match (old, new) {
            (Some(old), Some(new)) => review_version_update(old, new, &name, user, app, facts),
            _ => Deny(MALFORMED.into()),
        },
    }
}

fn review_version_update(
    old: &AppVersion,
    new: &AppVersion,
    name: &str,
    user: &str,
    app: &AppFact,
    facts: &Facts,
) -> Verdict {
    let first = app.first();
    if old.spec.app != new.spec.app {
        return Deny(format!(
            "AppVersion {name}: spec.app is immutable (it is a version of {}); create a new AppVersion for {} instead",
            old.spec.app, new.spec.app
        ));
    }
    let edited: Vec<&str> = [
        ("definition", old.spec.definition != new.spec.definition),
        ("description", old.spec.description != new.spec.description),
        ("requires", old.spec.requires != new.spec.requires),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect();
    let renamed = old.spec.version_name != new.spec.version_name;

    if let Some((from, to)) = promotion(old, new) {
        if !edited.is_empty() || renamed {
            return Deny(format!(
                "AppVersion {name}: a promotion must change nothing but spec.environment (this one also changes {}); \
                 make the edits in {first} first, then promote",
                edited
                    .iter()
                    .copied()
                    .chain(renamed.then_some("versionName"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let (Some(i), Some(j)) = (app.index(from), app.index(to)) else {
            let unknown = if app.index(to).is_none() { to } else { from };
            return Deny(format!(
                "AppVersion {name} cannot move to {to}: {unknown} is not a stage of ToolJetApp {} ({})",
                app.name,
                app.pipeline()
            ));
        };
        if j < i {
            return Deny(format!(
                "AppVersion {name} cannot move back from {from} to {to}: promotion only moves forward ({}); create a \
                 new version in {first} instead",
                app.pipeline()
            ));
        }
        if j > i + 1 {
            let next = &app.environments[i + 1];
            return Deny(format!(
                "AppVersion {name} cannot move from {from} to {to}: promotion goes one stage at a time ({}); promote \
                 it to {next} first",
                app.pipeline()
            ));
        }
        if facts.permitted != Some(true) {
            return Deny(format!(
                "user {user} may not promote AppVersion {name} to {to}: promoting into {to} needs verb promote on \
                 resource environments named {to} (group tooljet.io) in namespace {}; ask an admin for a role that \
                 grants it (e.g. tooljet-promoter)",
                new.namespace().unwrap_or_default()
            ));
        }
        if !facts.missing_in_target.is_empty() {
            return Deny(format!(
                "AppVersion {name} cannot be promoted to {to}: {to} lacks {}; add them to an EnvironmentConfig for {to} \
                 first",
                facts.missing_in_target.join(", ")
            ));
        }
        let stamped = [
            PROMOTED_BY_ANNOTATION,
            PROMOTED_AT_ANNOTATION,
            PROMOTED_FROM_ANNOTATION,
        ];
        let annotations = new.annotations();
        let stamp_ok = annotations.get(PROMOTED_BY_ANNOTATION).map(String::as_str) == Some(user)
            && annotations
                .get(PROMOTED_FROM_ANNOTATION)
                .map(String::as_str)
                == Some(from)
            && annotations
                .get(PROMOTED_AT_ANNOTATION)
                .is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok());
        if !stamp_ok {
            return Deny(format!(
                "AppVersion {name}: the promotion is not stamped with who made it (tooljet-operator's mutating \
                 webhook did not run, or the stamp was altered); check that MutatingWebhookConfiguration \
                 tooljet-operator is installed"
            ));
        }
        let keys = forged(Some(old), new, &stamped);
        if !keys.is_empty() {
            return Deny(forged_message("AppVersion", name, &keys));
        }
        return Allow;
    }

    if old.spec.environment != first {
        if let Some(field) = edited.first() {
            return Deny(format!(
                "AppVersion {name} is in {}: edits (spec.{field}) are only allowed in {first}; create a new version in \
                 {first}",
                old.spec.environment
            ));
        }
        if renamed {
            return Deny(format!(
                "AppVersion {name} is in {}: renames (spec.versionName) are only allowed in {first}; create a new \
                 version in {first}",
                old.spec.environment
            ));
        }
    }
    if renamed
        && let Some(other) = app
            .versions
            .iter()
            .find(|v| v.version_name == new.spec.version_name && v.name != name)
    {
        return Deny(format!(
            "AppVersion {name}: versionName {} is already used by AppVersion {} of app {}; choose another name",
            new.spec.version_name, other.name, app.name
        ));
    }
    let keys = forged(Some(old), new, &[]);
    if !keys.is_empty() {
        return Deny(forged_message("AppVersion", name, &keys));
    }
    Allow
}

/// The rules for a ToolJetApp request. `facts.app` is the stored app with its versions.
pub fn review_app(
    op: Op,
    old: Option<&ToolJetApp>,
    new: Option<&ToolJetApp>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(subject) = new.or(old) else {
        return Deny(MALFORMED.into());
    };
    let name = subject.name_any();
    let versions = facts
        .app
        .as_ref()
        .map(|a| a.versions.as_slice())
        .unwrap_or_default();
    match op {
        Op::Delete => {
            if facts.namespace_terminating {
                return Allow;
            }
            let Some(old) = old else {
                return Deny(MALFORMED.into());
            };
            let first = old
                .spec
                .environments
                .first()
                .map(String::as_str)
                .unwrap_or_default();
            let advanced: Vec<String> = versions
                .iter()
                .filter(|v| v.environment != first)
                .map(|v| format!("{} in {}", v.name, v.environment))
                .collect();
            let unprotected = old
                .annotations()
                .get(DELETION_PROTECTION_ANNOTATION)
                .map(String::as_str)
                == Some("disabled");
            if advanced.is_empty() || unprotected {
                Allow
            } else {
                Deny(format!(
                    "ToolJetApp {name} has versions past {first} ({}): deleting it would lose its release history. \
                     To delete it anyway, have an admin with verb unprotect on tooljetapps (group tooljet.io) set \
                     annotation {DELETION_PROTECTION_ANNOTATION}=disabled first, or delete the namespace",
                    advanced.join(", ")
                ))
            }
        }
        Op::Create | Op::Update => {
            let Some(new) = new else {
                return Deny(MALFORMED.into());
            };
            if let Some(verdict) = review_pipeline_change(old, new, versions) {
                return verdict;
            }
            let before = old.and_then(|o| o.annotations().get(DELETION_PROTECTION_ANNOTATION));
            if new.annotations().get(DELETION_PROTECTION_ANNOTATION) != before
                && facts.may_unprotect != Some(true)
            {
                return Deny(format!(
                    "user {user} may not change annotation {DELETION_PROTECTION_ANNOTATION} of ToolJetApp {name}: it \
                     needs verb unprotect on resource tooljetapps named {name} (group tooljet.io); ask a cluster admin"
                ));
            }
            let mut stamped: Vec<&str> = vec![];
            if let Some(version) = release(old, new) {
                let last = new
                    .spec
                    .environments
                    .last()
                    .map(String::as_str)
                    .unwrap_or_default();
                match versions.iter().find(|v| v.name == version) {
                    None => {
                        return Deny(format!(
                            "ToolJetApp {name} cannot release {version}: it is not an AppVersion of app {name} in this \
                             namespace; release one of its {last} versions"
                        ));
                    }
                    Some(v) if v.environment != last => {
                        return Deny(format!(
                            "ToolJetApp {name} cannot release {version}: it is in {}, and only {last} versions can be \
                             released; promote it to {last} first",
                            v.environment
                        ));
                    }
                    Some(_) => {}
                }
                if facts.permitted != Some(true) {
                    return Deny(format!(
                        "user {user} may not release ToolJetApp {name}: releasing needs verb release on resource \
                         environments named {last} (group tooljet.io) in namespace {}; ask an admin for a role that \
                         grants it (e.g. tooljet-release-manager)",
                        new.namespace().unwrap_or_default()
                    ));
                }
                let annotations = new.annotations();
                let stamp_ok = annotations.get(RELEASED_BY_ANNOTATION).map(String::as_str)
                    == Some(user)
                    && annotations
                        .get(RELEASED_VERSION_ANNOTATION)
                        .map(String::as_str)
                        == Some(version)
                    && annotations
                        .get(RELEASED_AT_ANNOTATION)
                        .is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok());
                if !stamp_ok {
                    return Deny(format!(
                        "ToolJetApp {name}: the release is not stamped with who made it (tooljet-operator's mutating \
                         webhook did not run, or the stamp was altered); check that MutatingWebhookConfiguration \
                         tooljet-operator is installed"
                    ));
                }
                stamped = vec![
                    RELEASED_BY_ANNOTATION,
                    RELEASED_AT_ANNOTATION,
                    RELEASED_VERSION_ANNOTATION,
                ];
            }
            let keys = forged(old, new, &stamped);
            if !keys.is_empty() {
                return Deny(forged_message("ToolJetApp", &name, &keys));
            }
            Allow
        }
    }
}

/// A pipeline change must keep every stage that holds versions, in the same order and the same
/// role (first stage: editable; last stage: releasable).
fn review_pipeline_change(
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    versions: &[VersionFact],
) -> Option<Verdict> {
    let old = old?;
    let (before, after) = (&old.spec.environments, &new.spec.environments);
    if before == after {
        return None;
    }
    let name = new.name_any();
    let held: Vec<&String> = before
        .iter()
        .filter(|s| versions.iter().any(|v| &&v.environment == s))
        .collect();
    for stage in &held {
        if !after.contains(stage) {
            let names: Vec<&str> = versions
                .iter()
                .filter(|v| &&v.environment == stage)
                .map(|v| v.name.as_str())
                .collect();
            return Some(Deny(format!(
                "ToolJetApp {name}: stage {stage} cannot be removed, it holds AppVersion {}; promote them out of {stage} \
                 (or, in the first stage, delete them) before removing it",
                names.join(", ")
            )));
        }
        let role = |pipeline: &[String]| {
            let i = pipeline.iter().position(|s| s == *stage).expect("present");
            (i == 0, i + 1 == pipeline.len())
        };
        if role(before) != role(after) {
            return Some(Deny(format!(
                "ToolJetApp {name}: stage {stage} holds versions and would change its role (first stage: editable; \
                 last stage: releasable) from {} to {}; keep stages that hold versions where they are",
                before.join(" -> "),
                after.join(" -> ")
            )));
        }
    }
    let order = |pipeline: &[String]| -> Vec<String> {
        pipeline
            .iter()
            .filter(|s| held.contains(s))
            .cloned()
            .collect()
    };
    if order(before) != order(after) {
        return Some(Deny(format!(
            "ToolJetApp {name}: stages that hold versions cannot be reordered ({} -> {}); versions only move forward",
            before.join(" -> "),
            after.join(" -> ")
        )));
    }
    None
}

/// The JSON patch the mutating webhook returns: the stamp of who promoted or released, and when.
pub fn stamp(
    annotations: &BTreeMap<String, String>,
    has_annotations: bool,
    values: &[(&str, String)],
) -> Patch {
    let mut ops = vec![];
    if !has_annotations {
        let map: serde_json::Map<String, Value> = values
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: Value::Object(map),
        }));
        return Patch(ops);
    }
    for (key, value) in values {
        let path = PointerBuf::from_tokens(["metadata", "annotations", key]);
        let value = Value::String(value.clone());
        ops.push(if annotations.contains_key(*key) {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
    }
    Patch(ops)
}

/// The mutation for a request, if any.
pub fn mutation_for_version(
    old: &AppVersion,
    new: &AppVersion,
    user: &str,
    now: &str,
) -> Option<Patch> {
    let (from, _) = promotion(old, new)?;
    Some(stamp(
        new.annotations(),
        new.metadata.annotations.is_some(),
        &[
            (PROMOTED_BY_ANNOTATION, user.to_string()),
            (PROMOTED_AT_ANNOTATION, now.to_string()),
            (PROMOTED_FROM_ANNOTATION, from.to_string()),
        ],
    ))
}

pub fn mutation_for_app(
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    user: &str,
    now: &str,
) -> Option<Patch> {
    let version = release(old, new)?;
    Some(stamp(
        new.annotations(),
        new.metadata.annotations.is_some(),
        &[
            (RELEASED_BY_ANNOTATION, user.to_string()),
            (RELEASED_AT_ANNOTATION, now.to_string()),
            (RELEASED_VERSION_ANNOTATION, version.to_string()),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppVersionSpec, Release, Requirements, ToolJetAppSpec};
    use serde_json::json;

    const NOW: &str = "2026-11-27T12:00:00Z";
    const USER: &str = "alice";
    const PIPELINES: [&[&str]; 3] = [
        &["development", "staging", "production"],
        &["dev", "qa", "uat", "prod"],
        &["draft", "live"],
    ];

    fn version(env: &str) -> AppVersion {
        let mut v = AppVersion::new(
            "crm-v4",
            AppVersionSpec {
                app: "crm".into(),
                version_name: "v4".into(),
                description: Some("first".into()),
                environment: env.into(),
                definition: Some(json!({ "pages": [] })),
                requires: None,
            },
        );
        v.metadata.namespace = Some("acme".into());
        v
    }

    fn app_fact(pipeline: &[&str], versions: &[(&str, &str, &str)]) -> AppFact {
        AppFact {
            name: "crm".into(),
            environments: pipeline.iter().map(|s| s.to_string()).collect(),
            versions: versions
                .iter()
                .map(|(n, vn, e)| VersionFact {
                    name: n.to_string(),
                    version_name: vn.to_string(),
                    environment: e.to_string(),
                })
                .collect(),
        }
    }

    fn facts(pipeline: &[&str]) -> Facts {
        Facts {
            app: Some(app_fact(pipeline, &[])),
            permitted: Some(true),
            ..Default::default()
        }
    }

    /// Applies what the mutating webhook would to `new`, then reviews it.
    fn update(old: &AppVersion, new: &AppVersion, f: &Facts) -> Verdict {
        let mut new = new.clone();
        if let Some(patch) = mutation_for_version(old, &new, USER, NOW) {
            let mut doc = serde_json::to_value(&new).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            new = serde_json::from_value(doc).unwrap();
        }
        review_version(Op::Update, Some(old), Some(&new), USER, f)
    }

    fn denied_with(v: Verdict, needle: &str) {
        match v {
            Deny(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            Allow => panic!("allowed; expected a denial mentioning {needle:?}"),
        }
    }

    #[test]
    fn every_action_in_every_stage_of_every_pipeline() {
        for pipeline in PIPELINES {
            let f = facts(pipeline);
            let first = pipeline[0];
            for (i, stage) in pipeline.iter().enumerate() {
                let in_first = i == 0;
                let v = version(stage);
                let expect = |what: &str, verdict: Verdict, allowed: bool| {
                    assert_eq!(
                        verdict == Allow,
                        allowed,
                        "{what} in {stage} of {pipeline:?}: {verdict:?}"
                    );
                    if let Deny(m) = verdict {
                        assert!(
                            m.contains("crm-v4") || m.contains(USER),
                            "{what}: the message names the object: {m}"
                        );
                    }
                };

                expect(
                    "create",
                    review_version(Op::Create, None, Some(&v), USER, &f),
                    in_first,
                );

                let mut edited = v.clone();
                edited.spec.definition = Some(json!({ "pages": [{ "name": "new" }] }));
                let verdict = update(&v, &edited, &f);
                if !in_first {
                    denied_with(
                        verdict.clone(),
                        &format!(
                            "is in {stage}: edits (spec.definition) are only allowed in {first}; create a new version in {first}"
                        ),
                    );
                }
                expect("edit definition", verdict, in_first);

                let mut described = v.clone();
                described.spec.description = Some("changed".into());
                expect("edit description", update(&v, &described, &f), in_first);

                let mut required = v.clone();
                required.spec.requires = Some(Requirements {
                    data_sources: vec!["db".into()],
                    constants: vec![],
                });
                expect("edit requires", update(&v, &required, &f), in_first);

                let mut renamed = v.clone();
                renamed.spec.version_name = "v4-final".into();
                expect("rename", update(&v, &renamed, &f), in_first);

                expect(
                    "delete",
                    review_version(Op::Delete, Some(&v), None, USER, &f),
                    in_first,
                );
                let terminating = Facts {
                    namespace_terminating: true,
                    ..f.clone()
                };
                expect(
                    "delete in a terminating namespace",
                    review_version(Op::Delete, Some(&v), None, USER, &terminating),
                    true,
                );

                let mut labelled = v.clone();
                labelled.metadata.labels = Some([("team".to_string(), "crm".to_string())].into());
                labelled.metadata.annotations =
                    Some([("note".to_string(), "ok".to_string())].into());
                expect("metadata-only change", update(&v, &labelled, &f), true);

                let mut forged = v.clone();
                forged.metadata.annotations =
                    Some([(PROMOTED_BY_ANNOTATION.to_string(), "mallory".to_string())].into());
                expect("forged promoted-by", update(&v, &forged, &f), false);

                let mut moved = v.clone();
                moved.spec.app = "billing".into();
                expect("change spec.app", update(&v, &moved, &f), false);

                if let Some(next) = pipeline.get(i + 1) {
                    let mut promoted = v.clone();
                    promoted.spec.environment = next.to_string();
                    expect("promote to the next stage", update(&v, &promoted, &f), true);
                    let no_rbac = Facts {
                        permitted: Some(false),
                        ..f.clone()
                    };
                    denied_with(
                        update(&v, &promoted, &no_rbac),
                        &format!("needs verb promote on resource environments named {next}"),
                    );
                    let lacking = Facts {
                        missing_in_target: vec!["constant API_URL".into()],
                        ..f.clone()
                    };
                    denied_with(update(&v, &promoted, &lacking), "lacks constant API_URL");
                    let unstamped = review_version(Op::Update, Some(&v), Some(&promoted), USER, &f);
                    denied_with(unstamped, "not stamped");
                    let mut promoted_and_edited = promoted.clone();
                    promoted_and_edited.spec.description = Some("sneaky".into());
                    denied_with(
                        update(&v, &promoted_and_edited, &f),
                        "a promotion must change nothing but spec.environment",
                    );
                }
                if let Some(after_next) = pipeline.get(i + 2) {
                    let mut skipped = v.clone();
                    skipped.spec.environment = after_next.to_string();
                    denied_with(update(&v, &skipped, &f), "one stage at a time");
                }
                if i > 0 {
                    let mut demoted = v.clone();
                    demoted.spec.environment = pipeline[i - 1].to_string();
                    denied_with(update(&v, &demoted, &f), "only moves forward");
                }
                let mut outside = v.clone();
                outside.spec.environment = "nowhere".into();
                denied_with(
                    update(&v, &outside, &f),
                    "nowhere is not a stage of ToolJetApp crm",
                );
            }
        }
    }

    #[test]
    fn the_design_documents_denial_reads_as_written() {
        let v = version("staging");
        let mut edited = v.clone();
        edited.spec.definition = Some(json!({}));
        assert_eq!(
            update(&v, &edited, &facts(PIPELINES[0])),
            Deny("AppVersion crm-v4 is in staging: edits (spec.definition) are only allowed in development; create a new version in development".into())
        );
    }

    #[test]
    fn version_names_are_unique_per_app() {
        let mut f = facts(PIPELINES[0]);
        f.app = Some(app_fact(PIPELINES[0], &[("crm-v3", "v3", "production")]));
        let mut v = version("development");
        v.spec.version_name = "v3".into();
        denied_with(
            review_version(Op::Create, None, Some(&v), USER, &f),
            "versionName v3 is already used by AppVersion crm-v3",
        );
        let old = version("development");
        denied_with(update(&old, &v, &f), "already used");
    }

    #[test]
    fn a_version_of_a_missing_app_cannot_be_created_but_can_be_deleted() {
        let f = Facts::default();
        denied_with(
            review_version(Op::Create, None, Some(&version("development")), USER, &f),
            "does not exist",
        );
        assert_eq!(
            review_version(Op::Delete, Some(&version("production")), None, USER, &f),
            Allow
        );
    }

    fn app(pipeline: &[&str], release: Option<&str>) -> ToolJetApp {
        let mut a = ToolJetApp::new(
            "crm",
            ToolJetAppSpec {
                display_name: None,
                environments: pipeline.iter().map(|s| s.to_string()).collect(),
                release: release.map(|v| Release { version: v.into() }),
                rollout: vec![],
            },
        );
        a.metadata.namespace = Some("acme".into());
        a
    }

    fn app_update(old: &ToolJetApp, new: &ToolJetApp, f: &Facts) -> Verdict {
        let mut new = new.clone();
        if let Some(patch) = mutation_for_app(Some(old), &new, USER, NOW) {
            let mut doc = serde_json::to_value(&new).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            new = serde_json::from_value(doc).unwrap();
        }
        review_app(Op::Update, Some(old), Some(&new), USER, f)
    }

    fn app_facts(versions: &[(&str, &str, &str)]) -> Facts {
        Facts {
            app: Some(app_fact(PIPELINES[0], versions)),
            permitted: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn releases_need_a_last_stage_version_and_permission() {
        let f = app_facts(&[("crm-v1", "v1", "production"), ("crm-v2", "v2", "staging")]);
        let old = app(PIPELINES[0], None);
        assert_eq!(
            app_update(&old, &app(PIPELINES[0], Some("crm-v1")), &f),
            Allow
        );
        denied_with(
            app_update(&old, &app(PIPELINES[0], Some("crm-v2")), &f),
            "it is in staging, and only production versions can be released; promote it to production first",
        );
        denied_with(
            app_update(&old, &app(PIPELINES[0], Some("crm-v9")), &f),
            "not an AppVersion of app crm",
        );
        let no_rbac = Facts {
            permitted: Some(false),
            ..f.clone()
        };
        denied_with(
            app_update(&old, &app(PIPELINES[0], Some("crm-v1")), &no_rbac),
            "needs verb release on resource environments named production",
        );
        let unstamped = review_app(
            Op::Update,
            Some(&old),
            Some(&app(PIPELINES[0], Some("crm-v1"))),
            USER,
            &f,
        );
        denied_with(unstamped, "not stamped");
        // Unchanged release: no permission needed for other edits.
        let released = {
            let mut a = app(PIPELINES[0], Some("crm-v1"));
            let patch = mutation_for_app(Some(&old), &a, USER, NOW).unwrap();
            let mut doc = serde_json::to_value(&a).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            a = serde_json::from_value(doc).unwrap();
            a
        };
        let mut renamed = released.clone();
        renamed.spec.display_name = Some("CRM".into());
        assert_eq!(app_update(&released, &renamed, &no_rbac), Allow);
    }

    #[test]
    fn apps_with_advanced_versions_are_protected_from_deletion() {
        let a = app(PIPELINES[0], None);
        let f = app_facts(&[
            ("crm-v1", "v1", "production"),
            ("crm-v2", "v2", "development"),
        ]);
        denied_with(
            review_app(Op::Delete, Some(&a), None, USER, &f),
            "has versions past development (crm-v1 in production)",
        );
        assert_eq!(
            review_app(
                Op::Delete,
                Some(&a),
                None,
                USER,
                &app_facts(&[("crm-v2", "v2", "development")])
            ),
            Allow
        );
        let mut unprotected = a.clone();
        unprotected.metadata.annotations = Some(
            [(
                DELETION_PROTECTION_ANNOTATION.to_string(),
                "disabled".to_string(),
            )]
            .into(),
        );
        assert_eq!(
            review_app(Op::Delete, Some(&unprotected), None, USER, &f),
            Allow
        );
        let terminating = Facts {
            namespace_terminating: true,
            ..f.clone()
        };
        assert_eq!(
            review_app(Op::Delete, Some(&a), None, USER, &terminating),
            Allow
        );

        // Turning the protection off needs its own permission.
        denied_with(app_update(&a, &unprotected, &f), "needs verb unprotect");
        let may = Facts {
            may_unprotect: Some(true),
            ..f.clone()
        };
        assert_eq!(app_update(&a, &unprotected, &may), Allow);
    }

    #[test]
    fn pipeline_changes_keep_stages_that_hold_versions() {
        let f = app_facts(&[("crm-v1", "v1", "staging")]);
        let old = app(PIPELINES[0], None);
        let with = |stages: &[&str]| app(stages, None);
        assert_eq!(
            app_update(
                &old,
                &with(&["development", "qa", "staging", "production"]),
                &f
            ),
            Allow
        );
        denied_with(
            app_update(&old, &with(&["development", "production"]), &f),
            "stage staging cannot be removed, it holds AppVersion crm-v1",
        );
        denied_with(
            app_update(&old, &with(&["staging", "production"]), &f),
            "would change its role",
        );
        denied_with(
            app_update(&old, &with(&["development", "staging"]), &f),
            "would change its role",
        );
        let f2 = app_facts(&[("crm-v1", "v1", "staging"), ("crm-v2", "v2", "qa")]);
        let old2 = with(&["development", "qa", "staging", "production"]);
        denied_with(
            app_update(
                &old2,
                &with(&["development", "staging", "qa", "production"]),
                &f2,
            ),
            "cannot be reordered",
        );
        assert_eq!(
            app_update(
                &old,
                &with(&["development", "staging", "production"]),
                &app_facts(&[])
            ),
            Allow
        );
        assert_eq!(
            app_update(&old, &with(&["dev", "prod"]), &app_facts(&[])),
            Allow,
            "an empty pipeline may change freely"
        );
    }

    #[test]
    fn forged_release_stamps_are_denied() {
        let a = app(PIPELINES[0], None);
        let mut forged = a.clone();
        forged.metadata.annotations =
            Some([(RELEASED_BY_ANNOTATION.to_string(), "mallory".to_string())].into());
        denied_with(
            app_update(&a, &forged, &app_facts(&[])),
            "annotation tooljet.io/released-by is recorded by tooljet-operator",
        );
        denied_with(
            review_app(Op::Create, None, Some(&forged), USER, &app_facts(&[])),
            "cannot be set or changed by users",
        );
    }

    #[test]
    fn stamps_are_json_patches_that_apply_with_or_without_annotations() {
        let old = version("development");
        let mut new = version("staging");
        let patch = mutation_for_version(&old, &new, USER, NOW).unwrap();
        let mut doc = serde_json::to_value(&new).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["annotations"][PROMOTED_BY_ANNOTATION], USER);
        assert_eq!(
            doc["metadata"]["annotations"][PROMOTED_FROM_ANNOTATION],
            "development"
        );

        new.metadata.annotations = Some(
            [
                (PROMOTED_BY_ANNOTATION.to_string(), "mallory".to_string()),
                ("x/y".to_string(), "1".to_string()),
            ]
            .into(),
        );
        let patch = mutation_for_version(&old, &new, USER, NOW).unwrap();
        let mut doc = serde_json::to_value(&new).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc["metadata"]["annotations"][PROMOTED_BY_ANNOTATION], USER,
            "a user-set value is overwritten"
        );
        assert_eq!(doc["metadata"]["annotations"]["x/y"], "1");
        assert!(
            mutation_for_version(&old, &old, USER, NOW).is_none(),
            "no promotion, no patch"
        );
    }
}
