//! What a request changes (a promotion, a release, a pipeline or rollout change) and the
//! [`Access`]es it therefore needs. The server asks the apiserver about each (a
//! SubjectAccessReview on the requester) and puts the answers in [`Facts::granted`]; an access
//! that was not asked counts as refused, so the reviews fail closed.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::{metadata::*, vocabulary::*};
use crate::api::{
    AppVersion, Approval, EnvironmentConfig, EnvironmentConfigSpec, PROMOTED_AT_ANNOTATION,
    PromotionPolicy, RELEASED_AT_ANNOTATION, ToolJetApp,
};
use crate::lifecycle::Pipeline;

/// The promotion an AppVersion update makes, if any: (from, to).
pub fn promotion<'a>(old: &'a AppVersion, new: &'a AppVersion) -> Option<(&'a str, &'a str)> {
    (old.spec.environment != new.spec.environment)
        .then_some((old.spec.environment.as_str(), new.spec.environment.as_str()))
}

/// The release a ToolJetApp change sets, if any: the new `spec.release.version`.
pub fn release<'a>(old: Option<&'a ToolJetApp>, new: &'a ToolJetApp) -> Option<&'a str> {
    let before = old.and_then(ToolJetApp::released);
    let after = new.released();
    (after.is_some() && after != before)
        .then_some(after)
        .flatten()
}

/// Whether a ToolJetApp change sets, changes or removes the release.
pub fn release_changed(old: Option<&ToolJetApp>, new: &ToolJetApp) -> bool {
    old.and_then(ToolJetApp::released) != new.released()
}

pub fn pipeline_changed(old: Option<&ToolJetApp>, new: &ToolJetApp) -> bool {
    old.is_some_and(|o| o.spec.environments != new.spec.environments)
}

pub fn rollout_changed(old: Option<&ToolJetApp>, new: &ToolJetApp) -> bool {
    old.map(|o| o.spec.rollout.as_slice()).unwrap_or_default() != new.spec.rollout.as_slice()
}

/// Whether the verification settings change (on create: whether any are set). Automatic
/// rollback makes the operator release, through closed windows: switching it is configuring the
/// app, as its rollout is.
pub fn verification_changed(old: Option<&ToolJetApp>, new: &ToolJetApp) -> bool {
    old.and_then(|o| o.spec.verification.as_ref()) != new.spec.verification.as_ref()
}

pub(super) fn protection_changed(old: Option<&ToolJetApp>, new: &ToolJetApp) -> bool {
    let before = old.and_then(|o| o.annotations().get(DELETION_PROTECTION_ANNOTATION));
    new.annotations().get(DELETION_PROTECTION_ANNOTATION) != before
}

/// What an AppVersion request needs: `promote` into the target stage for a promotion.
/// With a break-glass override in the same request, `override` too.
pub fn needed_for_version(
    old: Option<&AppVersion>,
    new: Option<&AppVersion>,
    user: &str,
) -> Vec<Access> {
    let mut needed = match (old, new) {
        (Some(old), Some(new)) => promotion(old, new)
            .map(|(_, to)| {
                let mut needed = vec![Access::environment(PROMOTE, to)];
                if overridden(new, PROMOTED_AT_ANNOTATION, user).is_some() {
                    needed.push(Access::environment(OVERRIDE, to));
                }
                needed
            })
            .unwrap_or_default(),
        _ => vec![],
    };
    if let Some(new) = new.filter(|_| deletion_metadata_changed(old, new)) {
        needed.push(Access::delete("appversions", &new.name_any()));
    }
    needed
}

/// What a ToolJetApp request needs: `release` on the last stage for any change of the release;
/// `configure` on the app for a change of its pipeline or rollout; `unprotect` for a change of
/// its deletion protection; `patch` on every Deployment a new rollout entry names (on every
/// Deployment of the namespace for a new selector, which may select Deployments created later).
pub fn needed_for_app(
    old: Option<&ToolJetApp>,
    new: Option<&ToolJetApp>,
    user: &str,
) -> Vec<Access> {
    let Some(new) = new else {
        return vec![];
    };
    let name = new.name_any();
    let mut needed = BTreeSet::new();
    if release_changed(old, new) {
        needed.insert(Access::environment(RELEASE, Pipeline::of(new).last()));
        if release(old, new).is_some() && overridden(new, RELEASED_AT_ANNOTATION, user).is_some() {
            needed.insert(Access::environment(OVERRIDE, Pipeline::of(new).last()));
        }
    }
    if pipeline_changed(old, new) || rollout_changed(old, new) || verification_changed(old, new) {
        needed.insert(Access::app(CONFIGURE, &name));
    }
    if protection_changed(old, new) {
        needed.insert(Access::app(UNPROTECT, &name));
    }
    needed.extend(needed_for_rollout(old, new));
    if deletion_metadata_changed(old, Some(new)) {
        needed.insert(Access::delete("tooljetapps", &name));
    }
    needed.into_iter().collect()
}

/// What a change of whom policies guard needs: what editing each of those policies needs (RBAC
/// `update` on it, and `configure` on every stage it lists).
pub fn needed_for_guards(guards_changed: &[(String, Vec<String>)]) -> Vec<Access> {
    let needed: BTreeSet<Access> = guards_changed
        .iter()
        .flat_map(|(policy, stages)| editing_policy(policy, stages))
        .collect();
    needed.into_iter().collect()
}

/// What editing PromotionPolicy `policy`, which lists `stages`, needs: RBAC `update` on it first,
/// then `configure` on each stage.
pub(super) fn editing_policy<'a>(
    policy: &str,
    stages: &'a [String],
) -> impl Iterator<Item = Access> + 'a {
    std::iter::once(Access::edit_policy(policy))
        .chain(stages.iter().map(|s| Access::environment(CONFIGURE, s)))
}

/// `patch` on every Deployment a rollout newly names, and on every Deployment of the namespace
/// for a new selector (it may select Deployments created later).
pub(super) fn needed_for_rollout(old: Option<&ToolJetApp>, new: &ToolJetApp) -> BTreeSet<Access> {
    let mut needed = BTreeSet::new();
    let before = old.map(|o| o.spec.rollout.as_slice()).unwrap_or_default();
    let named_before: BTreeSet<&String> = before.iter().flat_map(|t| &t.deployments).collect();
    for target in &new.spec.rollout {
        for d in &target.deployments {
            if !named_before.contains(d) {
                needed.insert(Access::patch_deployment(Some(d)));
            }
        }
        if target.selector.is_some()
            && !before
                .iter()
                .any(|b| b.environment == target.environment && b.selector == target.selector)
        {
            needed.insert(Access::patch_deployment(None));
        }
    }
    needed
}

/// Every Secret reference of a config: (Secret, key) -> where in the spec it is.
pub fn secret_references(spec: &EnvironmentConfigSpec) -> BTreeMap<(String, String), String> {
    let mut refs = BTreeMap::new();
    for ds in &spec.data_sources {
        for (option, source) in &ds.secret_options {
            let r = &source.secret_key_ref;
            refs.entry((r.name.clone(), r.key.clone()))
                .or_insert_with(|| {
                    format!(
                        "spec.dataSources[{}].secretOptions.{option}.secretKeyRef",
                        ds.name
                    )
                });
        }
    }
    for c in &spec.constants {
        if let Some(source) = &c.value_from {
            let r = &source.secret_key_ref;
            refs.entry((r.name.clone(), r.key.clone()))
                .or_insert_with(|| format!("spec.constants[{}].valueFrom.secretKeyRef", c.name));
        }
    }
    refs
}

/// References of `new` that `old` does not have (all of them for a new config).
pub(super) fn new_references(
    old: Option<&EnvironmentConfig>,
    new: &EnvironmentConfig,
) -> Vec<((String, String), String)> {
    let before = old.map(|o| secret_references(&o.spec)).unwrap_or_default();
    secret_references(&new.spec)
        .into_iter()
        .filter(|(r, _)| !before.contains_key(r))
        .collect()
}

/// Whether an update reaches the stage's configuration: its spec, or its owner references (an
/// owner's deletion would have the garbage collector delete it).
pub(super) fn config_changed(old: &EnvironmentConfig, new: &EnvironmentConfig) -> bool {
    old.spec != new.spec || deletion_metadata_changed(Some(old), Some(new))
}

/// What an EnvironmentConfig request needs: `configure` on its stage (on both stages when it
/// moves), and `get` on every Secret a new or changed reference names.
pub fn needed_for_config(
    op: Op,
    old: Option<&EnvironmentConfig>,
    new: Option<&EnvironmentConfig>,
) -> Vec<Access> {
    let mut needed = BTreeSet::new();
    match (op, old, new) {
        (Op::Create, _, Some(new)) => {
            needed.insert(Access::environment(CONFIGURE, &new.spec.environment));
        }
        (Op::Update, Some(old), Some(new)) if config_changed(old, new) => {
            needed.insert(Access::environment(CONFIGURE, &old.spec.environment));
            needed.insert(Access::environment(CONFIGURE, &new.spec.environment));
        }
        (Op::Delete, Some(old), _) => {
            needed.insert(Access::environment(CONFIGURE, &old.spec.environment));
        }
        _ => {}
    }
    if op != Op::Delete
        && let Some(new) = new
    {
        for ((secret, _), _) in new_references(old, new) {
            needed.insert(Access::read_secret(&secret));
        }
        if deletion_metadata_changed(old, Some(new)) {
            needed.insert(Access::delete("environmentconfigs", &new.name_any()));
        }
    }
    needed.into_iter().collect()
}

/// What an Approval request needs: `approve` on the stage, to create one or to revoke one.
pub fn needed_for_approval(old: Option<&Approval>, new: Option<&Approval>) -> Vec<Access> {
    match (old, new) {
        (None, Some(new)) => vec![Access::environment(APPROVE, &new.spec.environment)],
        (Some(old), None) => vec![Access::environment(APPROVE, &old.spec.environment)],
        _ => vec![],
    }
}

/// The stages a policy change concerns: those it guards before and after.
pub(super) fn guarded(old: Option<&PromotionPolicy>, new: Option<&PromotionPolicy>) -> Vec<String> {
    let mut stages: Vec<String> = old
        .into_iter()
        .chain(new)
        .flat_map(|p| p.spec.environments.iter().cloned())
        .collect();
    stages.sort();
    stages.dedup();
    stages
}

/// What a PromotionPolicy request needs: `configure` on every stage it guards, before and
/// after, so the people it constrains cannot lift it.
pub fn needed_for_policy(
    op: Op,
    old: Option<&PromotionPolicy>,
    new: Option<&PromotionPolicy>,
) -> Vec<Access> {
    if op == Op::Update && old.map(|o| &o.spec) == new.map(|n| &n.spec) {
        return vec![];
    }
    guarded(old, new)
        .iter()
        .map(|s| Access::environment(CONFIGURE, s))
        .collect()
}
