//! The environment rules as pure functions: (operation, old, new, the app's pipeline and
//! versions, permission answers) -> allow or deny with a message that says what was tried, which
//! rule forbids it and what to do instead. No client, no clock (the caller passes `now`).
//!
//! Every door to an environment is authorized the same way: the `needed_*` functions say which
//! [`Access`]es a request needs, the server asks the apiserver (a SubjectAccessReview per access,
//! on the requester) and puts the answers in [`Facts::granted`], and the `review_*` functions
//! judge. An access that was not asked counts as refused, so the rules fail closed.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::Value;

use super::{limits::*, metadata::*, mutations::*, needs::*, vocabulary::*};
use crate::api::{
    AppVersion, CREATED_BY_ANNOTATION, EDITORS_ANNOTATION, EnvironmentConfig,
    EnvironmentConfigSpec, LAST_EDITED_BY_ANNOTATION, PROMOTED_AT_ANNOTATION,
    PROMOTED_BY_ANNOTATION, PROMOTED_FROM_ANNOTATION, REFERENCES_ANNOTATION,
    RELEASED_AT_ANNOTATION, RELEASED_BY_ANNOTATION, RELEASED_VERSION_ANNOTATION, STAGES_ANNOTATION,
    ToolJetApp,
};
use crate::lifecycle::{Move, Pipeline, References, ReleaseCheck, stamps};

use Verdict::{Allow, Deny};

/// The denial of `new`'s versionName when another version of the app holds it.
fn version_name_taken(name: &str, new: &AppVersion, app: &AppFact) -> Option<Verdict> {
    let versions = app
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.version_name.as_str()));
    let other =
        crate::lifecycle::names::version_name_holder(versions, &new.spec.version_name, name)?;
    Some(Deny(format!(
        "AppVersion {name}: versionName {} is already used by AppVersion {other} of app {}; choose another name",
        new.spec.version_name, app.name
    )))
}

/// The rules for an AppVersion request.
pub fn review_version(
    op: Op,
    old: Option<&AppVersion>,
    new: Option<&AppVersion>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(r) = Review::of(old, new, user, facts) else {
        return Deny(MALFORMED.into());
    };
    if op == Op::Delete && facts.namespace_terminating {
        return Allow;
    }
    let Some(app) = &facts.app else {
        let (name, ns) = (&r.name, &r.ns);
        return match op {
            // An orphan (its app was deleted, which only a first-stage-only app allows) may go.
            Op::Delete => Allow,
            _ => Deny(format!(
                "AppVersion {name} refers to ToolJetApp {}, which does not exist in namespace {ns}; create the app first",
                r.subject.spec.app
            )),
        };
    };
    match (op, old, new) {
        (Op::Create, _, Some(new)) => review_version_create(&r, new, app),
        (Op::Delete, Some(old), _) => review_version_delete(&r, old, app),
        (Op::Update, Some(old), Some(new)) => review_version_update(&r, old, new, app),
        _ => Deny(MALFORMED.into()),
    }
}

/// A new version: created in its app's first stage, under a versionName no other version of the
/// app holds, with a definition within bounds, owners and finalizers as
/// [`deletion_metadata_rule`] allows, and stamped by the mutating webhook.
fn review_version_create(r: &Review<AppVersion>, new: &AppVersion, app: &AppFact) -> Verdict {
    let name = &r.name;
    if let Some(verdict) = created_outside_first_stage(name, new, app) {
        return verdict;
    }
    if let Some(verdict) = version_name_taken(name, new, app) {
        return verdict;
    }
    let references = References::of(new.spec.definition.as_ref()).stamp();
    if let Some(verdict) = definition_too_large(name, new, &references) {
        return verdict;
    }
    if let Some(verdict) = deletion_metadata_rule(
        "AppVersion",
        "appversions",
        None::<&AppVersion>,
        Some(new),
        r.user,
        None,
        r.facts,
    ) {
        return verdict;
    }
    creation_stamps(name, new, r.user, &references)
}

/// Versions are created only in the app's first stage, and reach the others by promotion.
fn created_outside_first_stage(name: &str, new: &AppVersion, app: &AppFact) -> Option<Verdict> {
    let first = app.pipeline().first();
    (new.spec.environment != first).then(|| {
        Deny(format!(
            "AppVersion {name} cannot be created in {}: versions are created only in {first}, the first stage \
             of ToolJetApp {} ({}); create it in {first} and promote it",
            new.spec.environment,
            app.name,
            app.pipeline()
        ))
    })
}

/// A new version is stamped with its stage, its creator and the names its definition references
/// (`references`), and carries no other `tooljet.io/` annotation.
fn creation_stamps(name: &str, new: &AppVersion, user: &str, references: &str) -> Verdict {
    if new.annotations().get(STAGES_ANNOTATION) != Some(&new.spec.environment)
        || new
            .annotations()
            .get(CREATED_BY_ANNOTATION)
            .map(String::as_str)
            != Some(user)
    {
        return Deny(format!(
            "AppVersion {name} is not stamped with its stage and creator (annotations \
             {STAGES_ANNOTATION}, {CREATED_BY_ANNOTATION}); {NOT_STAMPED}"
        ));
    }
    if let Err(verdict) = references_stamped(name, None, new, Some(references)) {
        return verdict;
    }
    forgery_rule(
        "AppVersion",
        name,
        None::<&AppVersion>,
        new,
        &[
            STAGES_ANNOTATION,
            CREATED_BY_ANNOTATION,
            REFERENCES_ANNOTATION,
        ],
    )
    .unwrap_or(Allow)
}

/// Deleting a version: only in its app's first stage; the versions that left it are the app's
/// release and rollback history.
fn review_version_delete(r: &Review<AppVersion>, old: &AppVersion, app: &AppFact) -> Verdict {
    let name = &r.name;
    let first = app.pipeline().first();
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

/// An update of a version: its app never changes, its owners and finalizers change only as
/// [`deletion_metadata_rule`] allows, and the rest is either a promotion ([`review_promotion`])
/// or an edit ([`review_edit`]).
fn review_version_update(
    r: &Review<AppVersion>,
    old: &AppVersion,
    new: &AppVersion,
    app: &AppFact,
) -> Verdict {
    if let Some(verdict) = app_changed(&r.name, old, new) {
        return verdict;
    }
    if let Some(verdict) = version_deletion_metadata(r, old, new, app) {
        return verdict;
    }
    let edits = SpecEdits::between(old, new);
    match promotion(old, new) {
        Some(step) => review_promotion(r, old, new, app, step, &edits),
        None => review_edit(r, old, new, app, &edits),
    }
}

/// spec.app is immutable: a version belongs to one app.
fn app_changed(name: &str, old: &AppVersion, new: &AppVersion) -> Option<Verdict> {
    (old.spec.app != new.spec.app).then(|| {
        Deny(format!(
            "AppVersion {name}: spec.app is immutable (it is a version of {}); create a new AppVersion for {} instead",
            old.spec.app, new.spec.app
        ))
    })
}

/// The owners and finalizers of a version ([`deletion_metadata_rule`]): one that left its app's
/// first stage is as undeletable through them as through a delete.
fn version_deletion_metadata(
    r: &Review<AppVersion>,
    old: &AppVersion,
    new: &AppVersion,
    app: &AppFact,
) -> Option<Verdict> {
    let first = app.pipeline().first();
    let undeletable = (old.spec.environment != first).then(|| {
        format!(
            "it is in {}: versions that left {first} are kept as the app's release and rollback history",
            old.spec.environment
        )
    });
    deletion_metadata_rule(
        "AppVersion",
        "appversions",
        Some(old),
        Some(new),
        r.user,
        undeletable,
        r.facts,
    )
}

/// What an update changes of a version's spec besides its stage.
struct SpecEdits {
    /// The edited fields among definition, description and requires, in that order.
    fields: Vec<&'static str>,
    /// Whether spec.versionName changes.
    renamed: bool,
}

impl SpecEdits {
    fn between(old: &AppVersion, new: &AppVersion) -> SpecEdits {
        let fields = [
            ("definition", old.spec.definition != new.spec.definition),
            ("description", old.spec.description != new.spec.description),
            ("requires", old.spec.requires != new.spec.requires),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect();
        SpecEdits {
            fields,
            renamed: old.spec.version_name != new.spec.version_name,
        }
    }
}

/// A promotion from `from` to `to`: of a version not being deleted, changing nothing but its
/// stage, one stage forward, by someone who may promote into the stage, into a stage configured
/// for what the version needs, through the stage's gate, and stamped by the mutating webhook.
fn review_promotion(
    r: &Review<AppVersion>,
    old: &AppVersion,
    new: &AppVersion,
    app: &AppFact,
    (from, to): (&str, &str),
    edits: &SpecEdits,
) -> Verdict {
    // The reason of a break-glass override stamped for this request, if any.
    let override_reason = overridden(new, PROMOTED_AT_ANNOTATION, r.user);
    promoting_while_deleted(&r.name, old, to, app)
        .or_else(|| promotion_with_edits(&r.name, edits, app))
        .or_else(|| illegal_step(&r.name, from, to, app))
        .or_else(|| promotion_not_permitted(r, to))
        .or_else(|| out_of_failing_stage(&r.name, from, to, app))
        .or_else(|| target_lacks_requirements(&r.name, to, r.facts))
        .or_else(|| promotion_gate(r, to, override_reason))
        .unwrap_or_else(|| promotion_stamps(&r.name, old, new, r.user, (from, to), override_reason))
}

/// A version being deleted cannot be promoted: it would be deleted in the stage it enters.
fn promoting_while_deleted(
    name: &str,
    old: &AppVersion,
    to: &str,
    app: &AppFact,
) -> Option<Verdict> {
    old.metadata.deletion_timestamp.is_some().then(|| {
        let first = app.pipeline().first();
        let holders = old.finalizers().join(", ");
        Deny(format!(
            "AppVersion {name} is being deleted (metadata.deletionTimestamp is set; finalizers {holders} hold it): \
             a version being deleted cannot be promoted, since it would be deleted in {to}; create a new \
             version in {first} and promote that one"
        ))
    })
}

/// No version leaves a stage whose workloads failed their last verification (a release, a
/// promotion into it or a configuration change that did not come up): what failed there would
/// go on to the next stage.
fn out_of_failing_stage(name: &str, from: &str, to: &str, app: &AppFact) -> Option<Verdict> {
    let failed = app.failed_stages.get(from)?;
    Some(Deny(format!(
        "AppVersion {name} cannot be promoted to {to}: {from}'s workloads failed their last verification \
         ({failed}); see ToolJetApp {}'s status.verifications. Fix the workloads (the verification passes once \
         they are available) and promote again",
        app.name
    )))
}

/// A promotion changes nothing but spec.environment.
fn promotion_with_edits(name: &str, edits: &SpecEdits, app: &AppFact) -> Option<Verdict> {
    if edits.fields.is_empty() && !edits.renamed {
        return None;
    }
    let first = app.pipeline().first();
    Some(Deny(format!(
        "AppVersion {name}: a promotion must change nothing but spec.environment (this one also changes {}); \
         make the edits in {first} first, then promote",
        edits
            .fields
            .iter()
            .copied()
            .chain(edits.renamed.then_some("versionName"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// A promotion moves one stage forward in the app's pipeline.
fn illegal_step(name: &str, from: &str, to: &str, app: &AppFact) -> Option<Verdict> {
    let first = app.pipeline().first();
    match app.pipeline().step(from, to) {
        Move::Forward => None,
        Move::Unknown { stage } => Some(Deny(format!(
            "AppVersion {name} cannot move to {to}: {stage} is not a stage of ToolJetApp {} ({})",
            app.name,
            app.pipeline()
        ))),
        Move::Backward => Some(Deny(format!(
            "AppVersion {name} cannot move back from {from} to {to}: promotion only moves forward ({}); \
             create a new version in {first} instead",
            app.pipeline()
        ))),
        Move::Skips { next } => Some(Deny(format!(
            "AppVersion {name} cannot move from {from} to {to}: promotion goes one stage at a time ({}); \
             promote it to {next} first",
            app.pipeline()
        ))),
    }
}

/// Promoting into `to` needs `promote` on the stage.
fn promotion_not_permitted(r: &Review<AppVersion>, to: &str) -> Option<Verdict> {
    let name = &r.name;
    let access = Access::environment(PROMOTE, to);
    (!r.facts.may(&access)).then(|| {
        forbidden(
            r.user,
            &format!("promote AppVersion {name} to {to}"),
            &format!("promoting into {to}"),
            &access,
            &r.ns,
            "ask an admin for a role that grants it (e.g. tooljet-promoter)",
        )
    })
}

/// The stage entered is configured for what the version needs (`facts.missing_in_target`).
fn target_lacks_requirements(name: &str, to: &str, facts: &Facts) -> Option<Verdict> {
    (!facts.missing_in_target.is_empty()).then(|| {
        Deny(format!(
            "AppVersion {name} cannot be promoted to {to}: {to} lacks {}; add what is not declared to an \
             EnvironmentConfig for {to} first",
            facts.missing_in_target.join(", ")
        ))
    })
}

/// The gate on entering `to` ([`super::gates::judge`]), approvals included.
fn promotion_gate(
    r: &Review<AppVersion>,
    to: &str,
    override_reason: Option<&str>,
) -> Option<Verdict> {
    let what = format!("AppVersion {} cannot be promoted to {to}", r.name);
    super::gates::judge(&what, to, true, override_reason, r.user, &r.ns, r.facts)
}

/// A promotion is stamped with who made it, when, from where, the stages the version has been in
/// (and the override, if any; the references when the stamp is renewed), and changes no other
/// `tooljet.io/` annotation.
fn promotion_stamps(
    name: &str,
    old: &AppVersion,
    new: &AppVersion,
    user: &str,
    (from, to): (&str, &str),
    override_reason: Option<&str>,
) -> Verdict {
    let mut stamped = vec![
        PROMOTED_BY_ANNOTATION,
        PROMOTED_AT_ANNOTATION,
        PROMOTED_FROM_ANNOTATION,
        STAGES_ANNOTATION,
    ];
    if override_reason.is_some() {
        stamped.extend(OVERRIDE_STAMPS);
    }
    match references_stamped(name, Some(old), new, None) {
        Ok(true) => stamped.push(REFERENCES_ANNOTATION),
        Ok(false) => {}
        Err(verdict) => return verdict,
    }
    let annotations = new.annotations();
    let stages = stamps::stages_after(old, to);
    let stamp_ok = annotations.get(PROMOTED_BY_ANNOTATION).map(String::as_str) == Some(user)
        && annotations
            .get(PROMOTED_FROM_ANNOTATION)
            .map(String::as_str)
            == Some(from)
        && annotations.get(STAGES_ANNOTATION) == Some(&stages)
        && annotations
            .get(PROMOTED_AT_ANNOTATION)
            .is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok());
    if !stamp_ok {
        return Deny(format!(
            "AppVersion {name}: the promotion is not stamped with who made it ({NOT_STAMPED})"
        ));
    }
    forgery_rule("AppVersion", name, Some(old), new, &stamped).unwrap_or(Allow)
}

/// An edit (an update that is not a promotion): spec fields and versionName change only in the
/// app's first stage, a new versionName is free, a new definition is within bounds, and the edit
/// is stamped.
fn review_edit(
    r: &Review<AppVersion>,
    old: &AppVersion,
    new: &AppVersion,
    app: &AppFact,
    edits: &SpecEdits,
) -> Verdict {
    let name = &r.name;
    if let Some(verdict) = edited_outside_first_stage(name, old, edits, app) {
        return verdict;
    }
    if edits.renamed
        && let Some(verdict) = version_name_taken(name, new, app)
    {
        return verdict;
    }
    // A new definition is read once, for its size and its stamp.
    let references = (old.spec.definition != new.spec.definition)
        .then(|| References::of(new.spec.definition.as_ref()).stamp());
    if let Some(references) = &references
        && let Some(verdict) = definition_too_large(name, new, references)
    {
        return verdict;
    }
    edit_stamps(name, old, new, r.user, references.as_deref())
}

/// Outside the app's first stage a version is not edited (spec.definition, description,
/// requires) nor renamed (spec.versionName).
fn edited_outside_first_stage(
    name: &str,
    old: &AppVersion,
    edits: &SpecEdits,
    app: &AppFact,
) -> Option<Verdict> {
    let first = app.pipeline().first();
    if old.spec.environment == first {
        return None;
    }
    if let Some(field) = edits.fields.first() {
        return Some(Deny(format!(
            "AppVersion {name} is in {}: edits (spec.{field}) are only allowed in {first}; create a new version in \
             {first}",
            old.spec.environment
        )));
    }
    edits.renamed.then(|| {
        Deny(format!(
            "AppVersion {name} is in {}: renames (spec.versionName) are only allowed in {first}; create a new \
             version in {first}",
            old.spec.environment
        ))
    })
}

/// An edit is stamped with the names a new definition references (`references`: their stamp,
/// when the definition changes) and, when it changes the spec, with its editor
/// ([`editor_stamps`]); it leaves no override reason and changes no other `tooljet.io/`
/// annotation.
fn edit_stamps(
    name: &str,
    old: &AppVersion,
    new: &AppVersion,
    user: &str,
    references: Option<&str>,
) -> Verdict {
    let mut stamped = vec![];
    match references_stamped(name, Some(old), new, references) {
        Ok(true) => stamped.push(REFERENCES_ANNOTATION),
        Ok(false) => {}
        Err(verdict) => return verdict,
    }
    if old.spec != new.spec {
        match editor_stamps(name, old, new, user) {
            Ok(keys) => stamped.extend(keys),
            Err(verdict) => return verdict,
        }
    }
    reason_outside_request("AppVersion", name, new)
        .or_else(|| forgery_rule("AppVersion", name, Some(old), new, &stamped))
        .unwrap_or(Allow)
}

/// A spec edit is stamped with its editor: the last editor, and the record of editors when it
/// grows. The stamps it carries, or the denial.
fn editor_stamps(
    name: &str,
    old: &AppVersion,
    new: &AppVersion,
    user: &str,
) -> Result<Vec<&'static str>, Verdict> {
    if new
        .annotations()
        .get(LAST_EDITED_BY_ANNOTATION)
        .map(String::as_str)
        != Some(user)
    {
        return Err(Deny(format!(
            "AppVersion {name}: the edit is not stamped with who made it (annotation \
             {LAST_EDITED_BY_ANNOTATION}); {NOT_STAMPED}"
        )));
    }
    let mut stamped = vec![LAST_EDITED_BY_ANNOTATION];
    match editors_after(old, user) {
        Err(full) => return Err(Deny(full)),
        Ok(None) => {}
        Ok(Some(editors)) => {
            if new.annotations().get(EDITORS_ANNOTATION) != Some(&editors) {
                return Err(Deny(format!(
                    "AppVersion {name}: the edit is not recorded among its editors (annotation \
                     {EDITORS_ANNOTATION}); {NOT_STAMPED}"
                )));
            }
            stamped.push(EDITORS_ANNOTATION);
        }
    }
    Ok(stamped)
}

/// The rules for a ToolJetApp request. `facts.app` is the stored app with its versions.
pub fn review_app(
    op: Op,
    old: Option<&ToolJetApp>,
    new: Option<&ToolJetApp>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(r) = Review::of(old, new, user, facts) else {
        return Deny(MALFORMED.into());
    };
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
            match old {
                Some(old) => review_app_delete(&r.name, old, versions),
                None => Deny(MALFORMED.into()),
            }
        }
        Op::Create | Op::Update => match new {
            Some(new) => review_app_change(&r, old, new, versions),
            None => Deny(MALFORMED.into()),
        },
    }
}

/// Deleting an app: refused while it has versions past its first stage (its release history),
/// unless its deletion protection was switched off.
fn review_app_delete(name: &str, old: &ToolJetApp, versions: &[VersionFact]) -> Verdict {
    let first = Pipeline::of(old).first();
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

/// A new or changed app, rule by rule: its owners and finalizers, the policies whose guard it
/// changes, who may change its pipeline and rollout, the pipeline change itself, the rollout, the
/// deletion protection, who may change the release, and the release itself with the stamps.
fn review_app_change(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    versions: &[VersionFact],
) -> Verdict {
    app_deletion_metadata(r, old, new, versions)
        .or_else(|| guard_change_not_permitted(r, old, new))
        .or_else(|| pipeline_or_rollout_change_not_permitted(r, old, new))
        .or_else(|| review_pipeline_change(old, new, versions))
        .or_else(|| review_rollout(old, new, r.user, r.facts))
        .or_else(|| protection_change_not_permitted(r, old, new))
        .or_else(|| release_change_not_permitted(r, old, new))
        .unwrap_or_else(|| review_release_and_stamps(r, old, new, versions))
}

/// The owners and finalizers of an app ([`deletion_metadata_rule`]).
fn app_deletion_metadata(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    versions: &[VersionFact],
) -> Option<Verdict> {
    // An app that has a release, or versions past its first stage, is as undeletable
    // through its owners as through a delete (its protection annotation aside: that
    // guards a deliberate delete, not a deferred one).
    let first = Pipeline::of(old.unwrap_or(new)).first();
    let released = old.and_then(|o| o.released()).or(new.released());
    let advanced = versions.iter().find(|v| v.environment != first);
    let undeletable = match (released, advanced) {
        (Some(v), _) => Some(format!("it releases {v}")),
        (None, Some(v)) => Some(format!(
            "it has versions past {first} ({} in {})",
            v.name, v.environment
        )),
        (None, None) => None,
    };
    deletion_metadata_rule(
        "ToolJetApp",
        "tooljetapps",
        old,
        Some(new),
        r.user,
        undeletable,
        r.facts,
    )
}

/// A change of labels or stages that changes whether a PromotionPolicy guards the app
/// (`facts.guards_changed`) is an edit of that policy, and needs what editing it needs.
fn guard_change_not_permitted(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
) -> Option<Verdict> {
    let name = &r.name;
    for (policy, stages) in &r.facts.guards_changed {
        let what = if pipeline_changed(old, new) {
            "change the labels or spec.environments"
        } else {
            "change the labels"
        };
        for access in editing_policy(policy, stages) {
            if !r.facts.may(&access) {
                return Some(forbidden(
                    r.user,
                    &format!("{what} of ToolJetApp {name}"),
                    &format!(
                        "it changes whether PromotionPolicy {policy} (guarding {}) guards the app, which is \
                         editing that policy: it",
                        stages.join(", ")
                    ),
                    &access,
                    &r.ns,
                    "ask someone who may edit the policy (e.g. tooljet-admin), or change the policy's \
                     appSelector or environments instead",
                ));
            }
        }
    }
    None
}

/// Changing an app's pipeline (spec.environments) or rollout needs `configure` on the app.
fn pipeline_or_rollout_change_not_permitted(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
) -> Option<Verdict> {
    let changes: Vec<&str> = [
        ("spec.environments", pipeline_changed(old, new)),
        ("spec.rollout", rollout_changed(old, new)),
        ("spec.verification", verification_changed(old, new)),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect();
    if changes.is_empty() {
        return None;
    }
    let name = &r.name;
    let access = Access::app(CONFIGURE, name);
    (!r.facts.may(&access)).then(|| {
        forbidden(
            r.user,
            &format!("change {} of ToolJetApp {name}", changes.join(" and ")),
            "changing an app's pipeline, rollout or verification",
            &access,
            &r.ns,
            "ask an admin for a role that grants it (e.g. tooljet-environment-admin)",
        )
    })
}

/// Changing the deletion protection annotation needs `unprotect` on the app.
fn protection_change_not_permitted(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
) -> Option<Verdict> {
    let (name, user) = (&r.name, r.user);
    (protection_changed(old, new) && !r.facts.may(&Access::app(UNPROTECT, name))).then(|| {
        Deny(format!(
            "user {user} may not change annotation {DELETION_PROTECTION_ANNOTATION} of ToolJetApp {name}: it \
             needs verb unprotect on resource tooljetapps named {name} (group tooljet.io); ask a cluster admin"
        ))
    })
}

/// Setting, changing or removing the release needs `release` on the app's last stage.
fn release_change_not_permitted(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
) -> Option<Verdict> {
    let name = &r.name;
    let release_access = Access::environment(RELEASE, Pipeline::of(new).last());
    (release_changed(old, new) && !r.facts.may(&release_access)).then(|| {
        let what = match new.released() {
            Some(_) => format!("release ToolJetApp {name}"),
            None => format!("remove the release of ToolJetApp {name}"),
        };
        forbidden(
            r.user,
            &what,
            "setting, changing or removing a release",
            &release_access,
            &r.ns,
            "ask an admin for a role that grants it (e.g. tooljet-release-manager)",
        )
    })
}

/// The release the change sets, if any ([`review_release`]), then the stamps: no override reason
/// left outside a release, and no other `tooljet.io/` annotation changed.
fn review_release_and_stamps(
    r: &Review<ToolJetApp>,
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    versions: &[VersionFact],
) -> Verdict {
    let stamped = match release(old, new) {
        Some(version) => match review_release(r, new, version, versions) {
            Ok(stamped) => stamped,
            Err(verdict) => return verdict,
        },
        None => vec![],
    };
    reason_outside_request("ToolJetApp", &r.name, new)
        .or_else(|| forgery_rule("ToolJetApp", &r.name, old, new, &stamped))
        .unwrap_or(Allow)
}

/// Setting or changing the release to `version` (a release or a rollback): a version of the app
/// in its last stage, stamped with who released it, through the last stage's gate. The stamps
/// the request carries, or the denial.
fn review_release(
    r: &Review<ToolJetApp>,
    new: &ToolJetApp,
    version: &str,
    versions: &[VersionFact],
) -> Result<Vec<&'static str>, Verdict> {
    let (name, user) = (&r.name, r.user);
    let last = Pipeline::of(new).last();
    if let Some(verdict) = unreleasable(name, new, version, versions) {
        return Err(verdict);
    }
    let annotations = new.annotations();
    let stamp_ok = annotations.get(RELEASED_BY_ANNOTATION).map(String::as_str) == Some(user)
        && annotations
            .get(RELEASED_VERSION_ANNOTATION)
            .map(String::as_str)
            == Some(version)
        && annotations
            .get(RELEASED_AT_ANNOTATION)
            .is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok());
    if !stamp_ok {
        return Err(Deny(format!(
            "ToolJetApp {name}: the release is not stamped with who made it ({NOT_STAMPED})"
        )));
    }
    let mut stamped = vec![
        RELEASED_BY_ANNOTATION,
        RELEASED_AT_ANNOTATION,
        RELEASED_VERSION_ANNOTATION,
    ];
    // Setting or changing the release (a release or a rollback) passes the gate of the
    // last stage; removing it does not release anything.
    let override_reason = overridden(new, RELEASED_AT_ANNOTATION, user);
    let what = format!("ToolJetApp {name} cannot release {version}");
    if let Some(verdict) =
        super::gates::judge(&what, last, false, override_reason, user, &r.ns, r.facts)
    {
        return Err(verdict);
    }
    if override_reason.is_some() {
        stamped.extend(OVERRIDE_STAMPS);
    }
    Ok(stamped)
}

/// Only a version of the app in its last stage can be released.
fn unreleasable(
    name: &str,
    new: &ToolJetApp,
    version: &str,
    versions: &[VersionFact],
) -> Option<Verdict> {
    let last = Pipeline::of(new).last();
    let stage = versions
        .iter()
        .find(|v| v.name == version)
        .map(|v| v.environment.as_str());
    match Pipeline::of(new).release_check(stage) {
        ReleaseCheck::NotAVersion => Some(Deny(format!(
            "ToolJetApp {name} cannot release {version}: it is not an AppVersion of app {name} in this \
             namespace; release one of its {last} versions"
        ))),
        ReleaseCheck::NotInLastStage { stage } => Some(Deny(format!(
            "ToolJetApp {name} cannot release {version}: it is in {stage}, and only {last} versions can be \
             released; promote it to {last} first"
        ))),
        ReleaseCheck::Releasable => None,
    }
}

/// A changed rollout of `new`: every selector well-formed and not empty, and every Deployment it
/// newly names or selects patchable by the requester (the operator patches them on the user's
/// behalf).
fn review_rollout(
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    user: &str,
    facts: &Facts,
) -> Option<Verdict> {
    if !rollout_changed(old, new) {
        return None;
    }
    let name = new.name_any();
    let ns = new.namespace().unwrap_or_default();
    if let Err(problem) = rollout_selectors(new) {
        return Some(Deny(format!("ToolJetApp {name}: spec.rollout {problem}")));
    }
    for access in needed_for_rollout(old, new) {
        if facts.may(&access) {
            continue;
        }
        let what = match &access.name {
            Some(d) => format!("name Deployment {d} in spec.rollout of ToolJetApp {name}"),
            None => format!("select Deployments by label in spec.rollout of ToolJetApp {name}"),
        };
        let needs = match &access.name {
            Some(_) => "the operator restarts it on your behalf, which".to_string(),
            None => "a selector may select any Deployment of the namespace, now or later, so it"
                .to_string(),
        };
        return Some(forbidden(
            user,
            &what,
            &needs,
            &access,
            &ns,
            "name only Deployments you may patch, or ask an admin to set up the rollout",
        ));
    }
    None
}

/// Every selector of the rollout well-formed and not empty. One Deployment may be in several
/// entries: its workload Secret holds every stage it serves, each under its own variable names.
fn rollout_selectors(app: &ToolJetApp) -> Result<(), String> {
    for target in &app.spec.rollout {
        target
            .parsed_selector()
            .map_err(|problem| format!("entry for {}: selector: {problem}", target.environment))?;
    }
    Ok(())
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

/// The rules for an EnvironmentConfig request: `configure` on its stage(s), `get` on the Secrets
/// it newly references (the operator reads them on the requester's behalf), one config per
/// (app-or-workspace, stage), and bounded data source options.
pub fn review_config(
    op: Op,
    old: Option<&EnvironmentConfig>,
    new: Option<&EnvironmentConfig>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(r) = Review::of(old, new, user, facts) else {
        return Deny(MALFORMED.into());
    };
    if op == Op::Delete && facts.namespace_terminating {
        return Allow;
    }
    let Some((verb, stages)) = configured_stages(op, old, new) else {
        return Deny(MALFORMED.into());
    };
    if let Some(verdict) = configuring_not_permitted(&r, verb, stages) {
        return verdict;
    }
    if let Some(verdict) = deletion_metadata_rule(
        "EnvironmentConfig",
        "environmentconfigs",
        old,
        new,
        user,
        None,
        facts,
    ) {
        return verdict;
    }
    let Some(new) = new else {
        return Allow;
    };
    rival_config(&r, new)
        .or_else(|| secret_reads_not_permitted(&r, old, new))
        .or_else(|| {
            option_constant_clash(&new.spec)
                .map(|problem| Deny(format!("EnvironmentConfig {}: {problem}", r.name)))
        })
        .or_else(|| oversized_options(&r.name, op, old, new))
        .unwrap_or(Allow)
}

/// What a request does to a stage's configuration ("create", "change" or "delete") and the
/// stages whose configuration it changes (none for an update that changes no configuration);
/// `None` when the request lacks the object(s) its operation carries.
fn configured_stages<'a>(
    op: Op,
    old: Option<&'a EnvironmentConfig>,
    new: Option<&'a EnvironmentConfig>,
) -> Option<(&'static str, Vec<&'a str>)> {
    match (op, old, new) {
        (Op::Create, _, Some(new)) => Some(("create", vec![new.spec.environment.as_str()])),
        (Op::Update, Some(old), Some(new)) if config_changed(old, new) => Some((
            "change",
            if old.spec.environment == new.spec.environment {
                vec![new.spec.environment.as_str()]
            } else {
                vec![old.spec.environment.as_str(), new.spec.environment.as_str()]
            },
        )),
        (Op::Update, Some(_), Some(_)) => Some(("change", vec![])),
        (Op::Delete, Some(old), _) => Some(("delete", vec![old.spec.environment.as_str()])),
        _ => None,
    }
}

/// Configuring a stage (`verb`: creating, changing or deleting its configuration) needs
/// `configure` on the stage.
fn configuring_not_permitted(
    r: &Review<EnvironmentConfig>,
    verb: &str,
    stages: Vec<&str>,
) -> Option<Verdict> {
    let name = &r.name;
    for stage in stages {
        let access = Access::environment(CONFIGURE, stage);
        if !r.facts.may(&access) {
            return Some(forbidden(
                r.user,
                &format!("{verb} EnvironmentConfig {name}"),
                &format!("configuring {stage}"),
                &access,
                &r.ns,
                "ask an admin for a role that grants it (tooljet-developer may configure development; \
                 tooljet-environment-admin every stage)",
            ));
        }
    }
    None
}

/// One config per (app-or-workspace, stage): `facts.rival` already configures it.
fn rival_config(r: &Review<EnvironmentConfig>, new: &EnvironmentConfig) -> Option<Verdict> {
    let rival = r.facts.rival.as_ref()?;
    let name = &r.name;
    let scope = new
        .spec
        .app
        .as_deref()
        .map(|a| format!("app {a}"))
        .unwrap_or_else(|| "the workspace".into());
    Some(Deny(format!(
        "EnvironmentConfig {name} cannot configure {scope} in {}: EnvironmentConfig {rival} already does (one \
         per app or workspace and stage); edit {rival} instead, or delete it first",
        new.spec.environment
    )))
}

/// Referencing a Secret key the config did not reference before needs `get` on the Secret: the
/// operator copies the value on the requester's behalf.
fn secret_reads_not_permitted(
    r: &Review<EnvironmentConfig>,
    old: Option<&EnvironmentConfig>,
    new: &EnvironmentConfig,
) -> Option<Verdict> {
    let name = &r.name;
    for ((secret, key), path) in new_references(old, new) {
        let access = Access::read_secret(&secret);
        if !r.facts.may(&access) {
            return Some(forbidden(
                r.user,
                &format!("reference Secret {secret} (key {key}) from EnvironmentConfig {name}"),
                &format!(
                    "{path} makes the operator copy that value into the stage's configuration, which"
                ),
                &access,
                &r.ns,
                "reference a Secret you may read, or ask whoever manages that Secret to add the reference",
            ));
        }
    }
    None
}

/// The options of each data source within bounds, judged when the data sources are new or
/// change.
fn oversized_options(
    name: &str,
    op: Op,
    old: Option<&EnvironmentConfig>,
    new: &EnvironmentConfig,
) -> Option<Verdict> {
    if op == Op::Update && old.is_some_and(|o| o.spec.data_sources == new.spec.data_sources) {
        return None;
    }
    for ds in &new.spec.data_sources {
        let options = Value::Object(ds.options.clone().into_iter().collect());
        if let Some(problem) = oversized(&options, MAX_OPTIONS_BYTES) {
            return Some(Deny(format!(
                "EnvironmentConfig {name}: spec.dataSources[{}].options {problem}; keep options to connection \
                 settings",
                ds.name
            )));
        }
    }
    None
}

/// A secret option whose secret constant ([`crate::lifecycle::constants::option_constant`]) would be
/// another entry's of the same config: a Global constant of that name, a Secret constant or
/// another secret option of that name reading another Secret key (pure). The same key is one
/// value, so it may share the name.
fn option_constant_clash(spec: &EnvironmentConfigSpec) -> Option<String> {
    let mut names: BTreeMap<String, (String, &crate::api::SecretKeySelector)> = BTreeMap::new();
    for c in &spec.constants {
        if let Some(from) = &c.value_from {
            names.insert(
                c.name.clone(),
                (format!("spec.constants[{}]", c.name), &from.secret_key_ref),
            );
        }
    }
    for ds in &spec.data_sources {
        for (option, src) in &ds.secret_options {
            let constant = crate::lifecycle::constants::option_constant(&ds.name, option);
            let path = format!("spec.dataSources[{}].secretOptions.{option}", ds.name);
            if let Some(global) = spec
                .constants
                .iter()
                .find(|c| c.value_from.is_none() && c.name == constant)
            {
                return Some(format!(
                    "{path} is carried to ToolJet as secret constant {constant}, the name of Global constant \
                     spec.constants[{}]; rename the constant or the data source",
                    global.name
                ));
            }
            match names.get(&constant) {
                Some((other, r)) if *r != &src.secret_key_ref => {
                    return Some(format!(
                        "{path} is carried to ToolJet as secret constant {constant}, as {other} is, from another \
                         Secret key; one name has one value: rename one of them, or read the same key"
                    ));
                }
                Some(_) => {}
                None => {
                    names.insert(constant, (path, &src.secret_key_ref));
                }
            }
        }
    }
    None
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
            failed_stages: Default::default(),
        }
    }

    /// Every promotion and release of `pipeline`, and configuring the app, granted.
    fn grants(pipeline: &[&str]) -> BTreeMap<Access, bool> {
        let mut granted: BTreeMap<Access, bool> = pipeline
            .iter()
            .map(|s| (Access::environment(PROMOTE, s), true))
            .collect();
        granted.insert(
            Access::environment(RELEASE, pipeline[pipeline.len() - 1]),
            true,
        );
        granted.insert(Access::app(CONFIGURE, "crm"), true);
        granted
    }

    fn facts(pipeline: &[&str]) -> Facts {
        Facts {
            app: Some(app_fact(pipeline, &[])),
            granted: grants(pipeline),
            ..Default::default()
        }
    }

    fn refusing(f: &Facts, access: Access) -> Facts {
        let mut f = f.clone();
        f.granted.insert(access, false);
        f
    }

    /// `v` with `patch` applied, as the apiserver applies a mutating webhook's answer.
    fn patched(v: &AppVersion, patch: &json_patch::Patch) -> AppVersion {
        let mut doc = serde_json::to_value(v).unwrap();
        json_patch::patch(&mut doc, patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    /// A new version as the mutating webhook stamps it.
    fn stamped_new(v: &AppVersion) -> AppVersion {
        patched(v, &mutation_for_new_version(v, USER))
    }

    /// `new` as the mutating webhook stamps it over `old` (unchanged when it stamps nothing).
    fn stamped_update(old: &AppVersion, new: &AppVersion) -> AppVersion {
        match mutation_for_version(old, new, USER, NOW) {
            Some(patch) => patched(new, &patch),
            None => new.clone(),
        }
    }

    /// Applies the mutating webhook's stamp to a new version, then reviews its creation.
    fn create(v: &AppVersion, f: &Facts) -> Verdict {
        review_version(Op::Create, None, Some(&stamped_new(v)), USER, f)
    }

    /// Applies what the mutating webhook would to `new`, then reviews it.
    fn update(old: &AppVersion, new: &AppVersion, f: &Facts) -> Verdict {
        review_version(
            Op::Update,
            Some(old),
            Some(&stamped_update(old, new)),
            USER,
            f,
        )
    }

    fn denied_with(v: Verdict, needle: &str) {
        match v {
            Deny(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            Allow => panic!("allowed; expected a denial mentioning {needle:?}"),
        }
    }

    #[test]
    fn no_version_leaves_a_stage_whose_verification_failed() {
        let pipeline = ["development", "staging", "production"];
        let mut f = facts(&pipeline);
        let failure = "Deployment tooljet-staging: ProgressDeadlineExceeded: ReplicaSet \"x\" has timed out progressing.";
        f.app
            .as_mut()
            .unwrap()
            .failed_stages
            .insert("staging".into(), failure.into());
        let old = version("staging");
        let mut new = old.clone();
        new.spec.environment = "production".into();
        denied_with(
            update(&old, &new, &f),
            "AppVersion crm-v4 cannot be promoted to production: staging's workloads failed their last verification (Deployment tooljet-staging: ProgressDeadlineExceeded",
        );
        // Another stage's failure does not hold it, and nor does its own once it passes.
        let dev = version("development");
        let mut to_staging = dev.clone();
        to_staging.spec.environment = "staging".into();
        assert_eq!(update(&dev, &to_staging, &f), Allow);
        f.app.as_mut().unwrap().failed_stages.clear();
        assert_eq!(update(&old, &new, &f), Allow);
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

                expect("create", create(&v, &f), in_first);
                if in_first {
                    denied_with(
                        review_version(Op::Create, None, Some(&v), USER, &f),
                        "is not stamped",
                    );
                }

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
                    let no_rbac = refusing(&f, Access::environment(PROMOTE, next));
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
            create(&v, &f),
            "versionName v3 is already used by AppVersion crm-v3",
        );
        let old = version("development");
        denied_with(update(&old, &v, &f), "already used");
    }

    #[test]
    fn a_version_of_a_missing_app_cannot_be_created_but_can_be_deleted() {
        let f = Facts::default();
        denied_with(create(&version("development"), &f), "does not exist");
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
                verification: None,
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
            granted: grants(PIPELINES[0]),
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
        let no_rbac = refusing(&f, Access::environment(RELEASE, "production"));
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
        let mut may = f.clone();
        may.granted.insert(Access::app(UNPROTECT, "crm"), true);
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

    fn rollout_app(rollout: serde_json::Value) -> ToolJetApp {
        let mut a = app(PIPELINES[0], None);
        a.spec.rollout = serde_json::from_value(rollout).unwrap();
        a
    }

    #[test]
    fn removing_a_release_needs_the_release_verb() {
        let f = app_facts(&[("crm-v1", "v1", "production")]);
        let released = {
            let old = app(PIPELINES[0], None);
            let mut a = app(PIPELINES[0], Some("crm-v1"));
            let patch = mutation_for_app(Some(&old), &a, USER, NOW).unwrap();
            let mut doc = serde_json::to_value(&a).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            a = serde_json::from_value(doc).unwrap();
            a
        };
        let mut unreleased = released.clone();
        unreleased.spec.release = None;
        assert_eq!(
            needed_for_app(Some(&released), Some(&unreleased), USER),
            [Access::environment(RELEASE, "production")]
        );
        let no_rbac = refusing(&f, Access::environment(RELEASE, "production"));
        denied_with(
            review_app(
                Op::Update,
                Some(&released),
                Some(&unreleased),
                USER,
                &no_rbac,
            ),
            "user alice may not remove the release of ToolJetApp crm: setting, changing or removing a release needs \
             verb release on resource environments named production",
        );
        assert_eq!(
            review_app(Op::Update, Some(&released), Some(&unreleased), USER, &f),
            Allow
        );
    }

    #[test]
    fn pipeline_and_rollout_changes_need_configure_on_the_app() {
        let f = app_facts(&[]);
        let no_rbac = refusing(&f, Access::app(CONFIGURE, "crm"));
        let old = app(PIPELINES[0], None);
        let shorter = app(&["development", "production"], None);
        assert_eq!(
            needed_for_app(Some(&old), Some(&shorter), USER),
            [Access::app(CONFIGURE, "crm")]
        );
        denied_with(
            app_update(&old, &shorter, &no_rbac),
            "user alice may not change spec.environments of ToolJetApp crm: changing an app's pipeline, rollout or verification \
             needs verb configure on resource tooljetapps named crm (group tooljet.io) in namespace acme",
        );
        assert_eq!(app_update(&old, &shorter, &f), Allow);

        let rolled = rollout_app(json!([{ "environment": "production", "deployments": ["web"] }]));
        denied_with(
            app_update(&old, &rolled, &no_rbac),
            "may not change spec.rollout",
        );
        denied_with(
            app_update(&old, &rolled, &f),
            "may not name Deployment web in spec.rollout of ToolJetApp crm: the operator restarts it on your \
             behalf, which needs verb patch on resource deployments named web (group apps)",
        );
        let mut may_patch = f.clone();
        may_patch
            .granted
            .insert(Access::patch_deployment(Some("web")), true);
        assert_eq!(app_update(&old, &rolled, &may_patch), Allow);
        // Unchanged rollout, other edits: nothing more is asked.
        let mut renamed = rolled.clone();
        renamed.spec.display_name = Some("CRM".into());
        assert!(needed_for_app(Some(&rolled), Some(&renamed), USER).is_empty());
        assert_eq!(app_update(&rolled, &renamed, &app_facts(&[])), Allow);
    }

    #[test]
    fn a_rollout_selector_needs_patch_on_every_deployment_and_a_sound_shape() {
        let f = app_facts(&[]);
        let old = app(PIPELINES[0], None);
        let selecting = rollout_app(
            json!([{ "environment": "staging", "selector": { "matchLabels": { "tier": "staging" } } }]),
        );
        assert_eq!(
            needed_for_app(Some(&old), Some(&selecting), USER),
            [
                Access::app(CONFIGURE, "crm"),
                Access::patch_deployment(None)
            ]
        );
        denied_with(
            app_update(&old, &selecting, &f),
            "may not select Deployments by label in spec.rollout of ToolJetApp crm: a selector may select any \
             Deployment of the namespace, now or later, so it needs verb patch on every object of resource deployments",
        );
        let mut may = f.clone();
        may.granted.insert(Access::patch_deployment(None), true);
        assert_eq!(app_update(&old, &selecting, &may), Allow);

        for (selector, problem) in [
            (json!({}), "an empty selector selects every Deployment"),
            (
                json!({ "matchExpressions": [{ "key": "tier", "operator": "exists" }] }),
                "has operator exists; use In, NotIn, Exists or DoesNotExist",
            ),
            (
                json!({ "matchExpressions": [{ "key": "tier", "operator": "In", "values": [] }] }),
                "needs at least one value",
            ),
        ] {
            let bad = rollout_app(json!([{ "environment": "staging", "selector": selector }]));
            let verdict = app_update(&old, &bad, &may);
            denied_with(
                verdict.clone(),
                "ToolJetApp crm: spec.rollout entry for staging: selector: ",
            );
            denied_with(verdict, problem);
        }

        // One ToolJet instance for every stage: a Deployment in two entries is allowed.
        let twice = rollout_app(json!([
            { "environment": "staging", "deployments": ["web"] },
            { "environment": "production", "deployments": ["web"] },
        ]));
        let mut with_web = may.clone();
        with_web
            .granted
            .insert(Access::patch_deployment(Some("web")), true);
        assert_eq!(app_update(&old, &twice, &with_web), Allow);
    }

    #[test]
    fn a_secret_options_constant_may_not_take_another_entrys_name() {
        let spec = |constants: serde_json::Value| -> EnvironmentConfigSpec {
            serde_json::from_value(json!({
                "environment": "staging",
                "dataSources": [
                    { "name": "crm-db", "kind": "postgresql",
                      "secretOptions": { "password": { "secretKeyRef": { "name": "creds", "key": "pg" } } } },
                ],
                "constants": constants,
            }))
            .unwrap()
        };
        assert_eq!(option_constant_clash(&spec(json!([]))), None);
        // The same Secret key under the same name: one value.
        let same = json!([{ "name": "CRM_DB_PASSWORD", "type": "Secret",
                             "valueFrom": { "secretKeyRef": { "name": "creds", "key": "pg" } } }]);
        assert_eq!(option_constant_clash(&spec(same)), None);
        let other = json!([{ "name": "CRM_DB_PASSWORD", "type": "Secret",
                              "valueFrom": { "secretKeyRef": { "name": "creds", "key": "other" } } }]);
        assert!(
            option_constant_clash(&spec(other))
                .unwrap()
                .starts_with("spec.dataSources[crm-db].secretOptions.password is carried to ToolJet as secret constant CRM_DB_PASSWORD, as spec.constants[CRM_DB_PASSWORD] is, from another Secret key")
        );
        let global = json!([{ "name": "CRM_DB_PASSWORD", "type": "Global", "value": "x" }]);
        assert!(
            option_constant_clash(&spec(global))
                .unwrap()
                .contains("the name of Global constant spec.constants[CRM_DB_PASSWORD]")
        );
    }

    fn config(env: &str, spec: serde_json::Value) -> EnvironmentConfig {
        let mut spec = spec;
        spec["environment"] = json!(env);
        let mut c = EnvironmentConfig::new("crm-cfg", serde_json::from_value(spec).unwrap());
        c.metadata.namespace = Some("acme".into());
        c
    }

    fn config_facts(stages: &[&str], secrets: &[&str]) -> Facts {
        let mut granted: BTreeMap<Access, bool> = stages
            .iter()
            .map(|s| (Access::environment(CONFIGURE, s), true))
            .collect();
        granted.extend(secrets.iter().map(|s| (Access::read_secret(s), true)));
        Facts {
            granted,
            ..Default::default()
        }
    }

    #[test]
    fn configuring_a_stage_needs_configure_on_it_and_moving_needs_both() {
        let dev = config("development", json!({ "app": "crm" }));
        let prod = config("production", json!({ "app": "crm" }));
        let developer = config_facts(&["development"], &[]);
        assert_eq!(
            review_config(Op::Create, None, Some(&dev), USER, &developer),
            Allow
        );
        for (op, old, new, verb) in [
            (Op::Create, None, Some(&prod), "create"),
            (Op::Delete, Some(&prod), None, "delete"),
        ] {
            denied_with(
                review_config(op, old, new, USER, &developer),
                &format!(
                    "user alice may not {verb} EnvironmentConfig crm-cfg: configuring production needs verb \
                     configure on resource environments named production (group tooljet.io) in namespace acme"
                ),
            );
        }
        let mut edited = prod.clone();
        edited.spec.constants =
            serde_json::from_value(json!([{ "name": "A", "type": "Global", "value": "1" }]))
                .unwrap();
        denied_with(
            review_config(Op::Update, Some(&prod), Some(&edited), USER, &developer),
            "may not change EnvironmentConfig crm-cfg: configuring production",
        );
        // Moving to another stage needs both.
        assert_eq!(
            needed_for_config(Op::Update, Some(&dev), Some(&prod)),
            [
                Access::environment(CONFIGURE, "development"),
                Access::environment(CONFIGURE, "production")
            ]
        );
        denied_with(
            review_config(Op::Update, Some(&dev), Some(&prod), USER, &developer),
            "configuring production",
        );
        denied_with(
            review_config(
                Op::Update,
                Some(&dev),
                Some(&prod),
                USER,
                &config_facts(&["production"], &[]),
            ),
            "configuring development",
        );
        // Labels do not reach the stage; owner references do (their deletion deletes it).
        let mut labelled = prod.clone();
        labelled.metadata.labels = Some([("team".to_string(), "crm".to_string())].into());
        assert!(needed_for_config(Op::Update, Some(&prod), Some(&labelled)).is_empty());
        assert_eq!(
            review_config(Op::Update, Some(&prod), Some(&labelled), USER, &developer),
            Allow
        );
        let mut owned = prod.clone();
        owned.metadata.owner_references = Some(vec![Default::default()]);
        denied_with(
            review_config(Op::Update, Some(&prod), Some(&owned), USER, &developer),
            "configuring production",
        );
        // The namespace's deletion takes every config with it.
        let terminating = Facts {
            namespace_terminating: true,
            ..Default::default()
        };
        assert_eq!(
            review_config(Op::Delete, Some(&prod), None, USER, &terminating),
            Allow
        );
    }

    #[test]
    fn a_new_secret_reference_needs_read_access_to_that_secret() {
        let referencing = config(
            "development",
            json!({ "app": "crm",
                    "dataSources": [{ "name": "pg", "kind": "postgresql",
                                      "secretOptions": { "password": { "secretKeyRef": { "name": "db-admin", "key": "password" } } } }],
                    "constants": [{ "name": "K", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "stripe", "key": "k" } } }] }),
        );
        assert_eq!(
            needed_for_config(Op::Create, None, Some(&referencing)),
            [
                Access::environment(CONFIGURE, "development"),
                Access::read_secret("db-admin"),
                Access::read_secret("stripe")
            ]
        );
        denied_with(
            review_config(
                Op::Create,
                None,
                Some(&referencing),
                USER,
                &config_facts(&["development"], &["stripe"]),
            ),
            "user alice may not reference Secret db-admin (key password) from EnvironmentConfig crm-cfg: \
             spec.dataSources[pg].secretOptions.password.secretKeyRef makes the operator copy that value into the \
             stage's configuration, which needs verb get on resource secrets named db-admin (group core)",
        );
        let all = config_facts(&["development"], &["stripe", "db-admin"]);
        assert_eq!(
            review_config(Op::Create, None, Some(&referencing), USER, &all),
            Allow
        );
        // Existing references are not asked again; a new key of the same Secret is.
        let mut other_key = referencing.clone();
        other_key.spec.constants[0]
            .value_from
            .as_mut()
            .unwrap()
            .secret_key_ref
            .key = "k2".into();
        assert_eq!(
            needed_for_config(Op::Update, Some(&referencing), Some(&other_key)),
            [
                Access::environment(CONFIGURE, "development"),
                Access::read_secret("stripe")
            ]
        );
        denied_with(
            review_config(
                Op::Update,
                Some(&referencing),
                Some(&other_key),
                USER,
                &config_facts(&["development"], &[]),
            ),
            "may not reference Secret stripe (key k2)",
        );
    }

    #[test]
    fn a_rival_config_for_the_same_stage_is_refused() {
        let dev = config("development", json!({ "app": "crm" }));
        let mut f = config_facts(&["development"], &[]);
        f.rival = Some("crm-dev".into());
        denied_with(
            review_config(Op::Create, None, Some(&dev), USER, &f),
            "EnvironmentConfig crm-cfg cannot configure app crm in development: EnvironmentConfig crm-dev already \
             does",
        );
        let workspace = config("development", json!({}));
        denied_with(
            review_config(Op::Create, None, Some(&workspace), USER, &f),
            "cannot configure the workspace in development",
        );
    }

    #[test]
    fn a_version_carries_the_references_of_its_definition_and_nobody_can_forge_them() {
        let f = facts(PIPELINES[0]);
        let mut v = version("development");
        v.spec.definition = Some(json!({ "q": "{{constants.API_URL}} {{secrets.TOKEN}}" }));
        let new = stamped_new(&v);
        assert_eq!(
            new.annotations()
                .get(REFERENCES_ANNOTATION)
                .map(String::as_str),
            Some(r#"{"constants":["API_URL"],"secrets":["TOKEN"]}"#)
        );
        assert_eq!(
            review_version(Op::Create, None, Some(&new), USER, &f),
            Allow
        );
        // A create that claims other references (or none) is refused.
        let mut forged = new.clone();
        forged
            .annotations_mut()
            .insert(REFERENCES_ANNOTATION.into(), "{}".into());
        denied_with(
            review_version(Op::Create, None, Some(&forged), USER, &f),
            "is not stamped with the names its definition references (annotation tooljet.io/references",
        );
        forged.annotations_mut().remove(REFERENCES_ANNOTATION);
        denied_with(
            review_version(Op::Create, None, Some(&forged), USER, &f),
            "tooljet.io/references",
        );
        // An edit of the definition is restamped by the mutating webhook, by any editor.
        let mut edited = new.clone();
        edited.spec.definition = Some(json!({ "q": "{{constants.OTHER}}" }));
        let restamped = patched(
            &edited,
            &mutation_for_version(&new, &edited, USER, NOW).unwrap(),
        );
        assert_eq!(
            restamped
                .annotations()
                .get(REFERENCES_ANNOTATION)
                .map(String::as_str),
            Some(r#"{"constants":["OTHER"]}"#)
        );
        assert_eq!(
            review_version(Op::Update, Some(&new), Some(&restamped), USER, &f),
            Allow
        );
        // ... and an edit that keeps the old stamp (the mutating webhook did not run) is refused.
        denied_with(
            review_version(Op::Update, Some(&new), Some(&edited), USER, &f),
            "tooljet.io/references",
        );
        // A metadata-only change of the stamp is refused unless it is the true one.
        let mut relabelled = new.clone();
        relabelled.annotations_mut().insert(
            REFERENCES_ANNOTATION.into(),
            r#"{"constants":["API_URL"]}"#.into(),
        );
        denied_with(
            review_version(Op::Update, Some(&new), Some(&relabelled), USER, &f),
            "tooljet.io/references",
        );
        // A version stored before the stamp existed may stay unstamped while its definition
        // does not change, and is stamped by its next promotion.
        let mut legacy = new.clone();
        legacy.annotations_mut().remove(REFERENCES_ANNOTATION);
        // Their own edits in a row: the mutating webhook is not called.
        legacy
            .annotations_mut()
            .insert(LAST_EDITED_BY_ANNOTATION.into(), USER.into());
        let mut described = legacy.clone();
        described.spec.description = Some("edited".into());
        assert_eq!(
            review_version(Op::Update, Some(&legacy), Some(&described), USER, &f),
            Allow
        );
        let patch = mutation_for_version(&legacy, &described, USER, NOW).unwrap();
        assert!(
            serde_json::to_string(&patch)
                .unwrap()
                .contains("tooljet.io~1references")
        );
        // A stamp an earlier operator's scanner wrote (it counted `constants.1BAD`, which is no
        // constant name) is kept while the definition stays as stamped, and restamped by the
        // next mutation; a stamp changed to it is still refused.
        let mut earlier = legacy.clone();
        earlier.spec.definition = Some(json!({ "q": "{{constants.API_URL}} {{constants.1BAD}}" }));
        earlier.annotations_mut().insert(
            REFERENCES_ANNOTATION.into(),
            r#"{"constants":["1BAD","API_URL"]}"#.into(),
        );
        let mut described = earlier.clone();
        described.spec.description = Some("edited again".into());
        assert_eq!(
            review_version(Op::Update, Some(&earlier), Some(&described), USER, &f),
            Allow
        );
        let restamped = patched(
            &described,
            &mutation_for_version(&earlier, &described, USER, NOW).unwrap(),
        );
        assert_eq!(
            restamped
                .annotations()
                .get(REFERENCES_ANNOTATION)
                .map(String::as_str),
            Some(r#"{"constants":["API_URL"]}"#)
        );
        let mut unstamped_before = earlier.clone();
        unstamped_before
            .annotations_mut()
            .remove(REFERENCES_ANNOTATION);
        denied_with(
            review_version(
                Op::Update,
                Some(&unstamped_before),
                Some(&earlier),
                USER,
                &f,
            ),
            "tooljet.io/references",
        );
    }

    fn owned<K: ResourceExt>(mut obj: K) -> K {
        obj.meta_mut().owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "gone".into(),
                uid: "00000000-0000-0000-0000-000000000001".into(),
                ..Default::default()
            },
        ]);
        obj
    }

    #[test]
    fn owners_need_delete_and_never_reach_history_or_a_released_app() {
        let f = facts(PIPELINES[0]);
        let may_delete = |f: &Facts, resource: &'static str, name: &str| {
            let mut f = f.clone();
            f.granted.insert(Access::delete(resource, name), true);
            f
        };
        // A first-stage version: with delete on it, yes; without, refused naming the verb.
        let dev = version("development");
        let owned_dev = owned(dev.clone());
        let needed = needed_for_version(Some(&dev), Some(&owned_dev), USER);
        assert_eq!(needed, [Access::delete("appversions", "crm-v4")]);
        denied_with(
            update(&dev, &owned_dev, &f),
            "may not set or change metadata.ownerReferences of AppVersion crm-v4: owners let the garbage \
             collector delete the object, so this needs verb delete on resource appversions named crm-v4",
        );
        assert_eq!(
            update(&dev, &owned_dev, &may_delete(&f, "appversions", "crm-v4")),
            Allow
        );
        // Removing them again is a change too.
        denied_with(update(&owned_dev, &dev, &f), "verb delete");
        // A version past its first stage: never, whoever asks.
        let staged = version("staging");
        denied_with(
            update(
                &staged,
                &owned(staged.clone()),
                &may_delete(&f, "appversions", "crm-v4"),
            ),
            "it is in staging: versions that left development are kept",
        );
        // An app that releases a version, or has versions past its first stage: never.
        let released = app(PIPELINES[0], Some("v1"));
        let f_app = may_delete(
            &app_facts(&[("v1", "v1", "production")]),
            "tooljetapps",
            "crm",
        );
        denied_with(
            app_update(&released, &owned(released.clone()), &f_app),
            "ToolJetApp crm: metadata.ownerReferences cannot be set or changed: the garbage collector would \
             delete it once its owners are gone, and it releases v1",
        );
        let unreleased = app(PIPELINES[0], None);
        denied_with(
            app_update(&unreleased, &owned(unreleased.clone()), &f_app),
            "it has versions past development (v1 in production)",
        );
        let fresh = may_delete(
            &app_facts(&[("v0", "v0", "development")]),
            "tooljetapps",
            "crm",
        );
        assert_eq!(
            app_update(&unreleased, &owned(unreleased.clone()), &fresh),
            Allow
        );
        let without = app_facts(&[("v0", "v0", "development")]);
        denied_with(
            app_update(&unreleased, &owned(unreleased.clone()), &without),
            "needs verb delete on resource tooljetapps named crm",
        );
    }

    #[test]
    fn finalizers_need_what_deleting_needs() {
        let f = facts(PIPELINES[0]);
        let with = |mut v: AppVersion, finalizers: &[&str]| {
            v.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
            v
        };
        let dev = version("development");
        let held = with(dev.clone(), &["example.com/hold"]);
        denied_with(
            update(&dev, &held, &f),
            "may not add or remove finalizers of AppVersion crm-v4: a finalizer holds the object's deletion, so \
             this needs verb delete on resource appversions named crm-v4",
        );
        let mut may = f.clone();
        may.granted
            .insert(Access::delete("appversions", "crm-v4"), true);
        assert_eq!(update(&dev, &held, &may), Allow);
        // Kubernetes' own finalizers are the garbage collector's business.
        assert_eq!(
            update(&dev, &with(dev.clone(), &["foregroundDeletion"]), &f),
            Allow
        );
        // Past the first stage: never added, and removed only from a version being deleted.
        let staged = version("staging");
        denied_with(
            update(&staged, &with(staged.clone(), &["example.com/hold"]), &may),
            "AppVersion crm-v4: metadata.finalizers cannot be changed: a finalizer holds the object's deletion, \
             and it is in staging",
        );
        let mut going = with(staged.clone(), &["example.com/hold"]);
        going.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(NOW.parse().unwrap()),
        );
        let mut released = going.clone();
        released.metadata.finalizers = None;
        assert_eq!(update(&going, &released, &may), Allow);
        // A configuration: configure on its stage, as deleting it needs.
        let prod = config("production", json!({ "app": "crm" }));
        let mut pinned = prod.clone();
        pinned.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        denied_with(
            review_config(
                Op::Update,
                Some(&prod),
                Some(&pinned),
                USER,
                &config_facts(&["development"], &[]),
            ),
            "may not change EnvironmentConfig crm-cfg: configuring production",
        );
    }

    #[test]
    fn a_version_being_deleted_cannot_be_promoted() {
        let f = facts(PIPELINES[0]);
        let mut old = version("development");
        old.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(NOW.parse().unwrap()),
        );
        old.metadata.finalizers = Some(vec!["example.com/hold".into()]);
        let mut new = old.clone();
        new.spec.environment = "staging".into();
        denied_with(
            update(&old, &new, &f),
            "AppVersion crm-v4 is being deleted (metadata.deletionTimestamp is set; finalizers example.com/hold \
             hold it): a version being deleted cannot be promoted",
        );
    }

    #[test]
    fn oversized_free_form_json_is_refused_with_the_bound() {
        let mut deep = json!(1);
        for _ in 0..MAX_JSON_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(json_depth(&deep), MAX_JSON_DEPTH + 1);
        let f = facts(PIPELINES[0]);
        let mut v = version("development");
        v.spec.definition = Some(json!({ "pages": deep }));
        denied_with(
            create(&v, &f),
            &format!(
                "spec.definition nests {} levels deep (at most {MAX_JSON_DEPTH})",
                MAX_JSON_DEPTH + 2
            ),
        );
        v.spec.definition = Some(json!({ "blob": "x".repeat(MAX_DEFINITION_BYTES) }));
        let bound = format!("bytes (at most {MAX_DEFINITION_BYTES})");
        denied_with(create(&v, &f), &bound);
        let old = version("development");
        denied_with(update(&old, &v, &f), &bound);
        // As large as allowed: accepted.
        v.spec.definition = Some(json!({ "blob": "x".repeat(MAX_DEFINITION_BYTES - 20) }));
        assert_eq!(create(&v, &f), Allow);
        // More distinct references than their record holds.
        let names: Vec<String> = (0..2000)
            .map(|i| format!("{{{{constants.CONSTANT_NUMBER_{i}}}}}"))
            .collect();
        v.spec.definition = Some(json!({ "q": names.join(" ") }));
        denied_with(
            create(&v, &f),
            &format!("(at most {MAX_REFERENCES_BYTES}); reference fewer names"),
        );

        let big = config(
            "development",
            json!({ "dataSources": [{ "name": "api", "kind": "restapi", "options": { "headers": "x".repeat(MAX_OPTIONS_BYTES) } }] }),
        );
        denied_with(
            review_config(
                Op::Create,
                None,
                Some(&big),
                USER,
                &config_facts(&["development"], &[]),
            ),
            "spec.dataSources[api].options is",
        );
    }

    #[test]
    fn versions_carry_the_stages_they_have_been_in() {
        let created = stamped_new(&version("development"));
        assert_eq!(stamps::stages_of(&created), "development");
        let mut promoted = created.clone();
        promoted.spec.environment = "staging".into();
        let patch = mutation_for_version(&created, &promoted, USER, NOW).unwrap();
        let promoted = patched(&promoted, &patch);
        assert_eq!(stamps::stages_of(&promoted), "development,staging");
        // Users cannot rewrite the record.
        let mut forged = promoted.clone();
        forged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(STAGES_ANNOTATION.into(), "staging".into());
        let mut f = facts(PIPELINES[0]);
        f.app = Some(app_fact(PIPELINES[0], &[]));
        denied_with(
            update(&promoted, &forged, &f),
            "annotation tooljet.io/stages is recorded by tooljet-operator",
        );
    }
}
