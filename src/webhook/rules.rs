//! The environment rules as pure functions: (operation, old, new, the app's pipeline and
//! versions, permission answers) -> allow or deny with a message that says what was tried, which
//! rule forbids it and what to do instead. No client, no clock (the caller passes `now`).
//!
//! Every door to an environment is authorized the same way: the `needed_*` functions say which
//! [`Access`]es a request needs, the server asks the apiserver (a SubjectAccessReview per access,
//! on the requester) and puts the answers in [`Facts::granted`], and the `review_*` functions
//! judge. An access that was not asked counts as refused, so the rules fail closed.

use crate::lifecycle::{
    Move, Pipeline, ReleaseCheck,
    stamps::{self, stages_of},
};
use std::collections::{BTreeMap, BTreeSet};

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use kube::ResourceExt;
use serde_json::Value;

use crate::api::{
    ANNOTATION_PREFIX, AppVersion, CREATED_BY_ANNOTATION, EnvironmentConfig, EnvironmentConfigSpec,
    GROUP, LAST_EDITED_BY_ANNOTATION, OVERRIDDEN_AT_ANNOTATION, OVERRIDDEN_BY_ANNOTATION,
    OVERRIDDEN_REASON_ANNOTATION, OVERRIDE_REASON_ANNOTATION, PROMOTED_AT_ANNOTATION,
    PROMOTED_BY_ANNOTATION, PROMOTED_FROM_ANNOTATION, REFERENCES_ANNOTATION,
    RELEASED_AT_ANNOTATION, RELEASED_BY_ANNOTATION, RELEASED_VERSION_ANNOTATION, STAGES_ANNOTATION,
    ToolJetApp,
};
use crate::{
    api::{EDITORS_ANNOTATION, MAX_EDITORS},
    lifecycle::References,
};

/// The one `tooljet.io/` annotation users may set, guarded by RBAC (verb `unprotect` on
/// `tooljetapps`): `disabled` lets an app with versions past its first stage be deleted.
pub const DELETION_PROTECTION_ANNOTATION: &str = "tooljet.io/deletion-protection";

/// The denial for a request that lacks the object(s) its operation carries.
pub const MALFORMED: &str =
    "malformed admission request: the object or old object its operation needs is missing";

/// Verb on `environments` (name = stage): move a version into the stage.
pub const PROMOTE: &str = "promote";
/// Verb on `environments` (name = last stage): set, change or remove an app's release.
pub const RELEASE: &str = "release";
/// Verb on `environments` (name = stage): create, change or delete the stage's configuration;
/// and on `tooljetapps` (name = app): change an app's pipeline or rollout.
pub const CONFIGURE: &str = "configure";
/// Verb on `tooljetapps` (name = app): switch an app's deletion protection off.
pub const UNPROTECT: &str = "unprotect";
/// Verb on `environments` (name = stage): approve versions entering the stage (create or
/// delete an Approval).
pub const APPROVE: &str = "approve";
/// Verb on `environments` (name = stage): promote or release through a closed promotion window
/// (break-glass), with `tooljet.io/override-reason` in the same request.
pub const OVERRIDE: &str = "override";

/// Largest `spec.definition` of an AppVersion, serialized (bytes). ToolJet app exports are tens
/// to hundreds of KiB. The apiserver stores an object of at most about 1.5 MiB (etcd's default
/// request limit), which must also hold the rest of the version, its status and the apiserver's
/// `managedFields`; 1 MiB leaves that room. The operator never holds a stored definition (see
/// [`crate::lean::VersionSpecParts`]), so the limit bounds only what one request carries.
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
/// Largest [`REFERENCES_ANNOTATION`] stamp: the names a definition references, as JSON. Kubernetes
/// allows 256 KiB of annotations per object; thousands of distinct names fit in this.
pub const MAX_REFERENCES_BYTES: usize = 32 * 1024;
/// Deepest nesting of `spec.definition` and of data source `options`.
pub const MAX_JSON_DEPTH: usize = 32;
/// Largest `options` of one data source, serialized (bytes).
pub const MAX_OPTIONS_BYTES: usize = 16 * 1024;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// A permission the requester needs, asked of the apiserver as a SubjectAccessReview.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub verb: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    pub resource: &'static str,
    /// The object's name; `None`: every object of the resource in the namespace.
    pub name: Option<String>,
}

impl Access {
    /// `verb` on the virtual resource `environments` named `stage`.
    pub fn environment(verb: &'static str, stage: &str) -> Access {
        Access {
            verb,
            group: GROUP,
            resource: "environments",
            name: Some(stage.to_string()),
        }
    }

    /// `verb` on the ToolJetApp `name`.
    pub fn app(verb: &'static str, name: &str) -> Access {
        Access {
            verb,
            group: GROUP,
            resource: "tooljetapps",
            name: Some(name.to_string()),
        }
    }

    /// `update` on the PromotionPolicy `name`: what RBAC asks of editing it.
    pub fn edit_policy(name: &str) -> Access {
        Access {
            verb: "update",
            group: GROUP,
            resource: "promotionpolicies",
            name: Some(name.to_string()),
        }
    }

    /// `delete` on the tooljet.io object `name` of `resource` (e.g. `appversions`).
    pub fn delete(resource: &'static str, name: &str) -> Access {
        Access {
            verb: "delete",
            group: GROUP,
            resource,
            name: Some(name.to_string()),
        }
    }

    /// Reading the Secret `name`.
    pub fn read_secret(name: &str) -> Access {
        Access {
            verb: "get",
            group: "",
            resource: "secrets",
            name: Some(name.to_string()),
        }
    }

    /// Patching the Deployment `name`, or every Deployment of the namespace.
    pub fn patch_deployment(name: Option<&str>) -> Access {
        Access {
            verb: "patch",
            group: "apps",
            resource: "deployments",
            name: name.map(str::to_string),
        }
    }

    /// `verb promote on resource environments named staging (group tooljet.io)`.
    pub fn describe(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match &self.name {
            Some(name) => format!(
                "verb {} on resource {} named {name} (group {group})",
                self.verb, self.resource
            ),
            None => format!(
                "verb {} on every object of resource {} (group {group})",
                self.verb, self.resource
            ),
        }
    }
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
    fn pipeline(&self) -> Pipeline<'_> {
        Pipeline::new(&self.environments)
    }
}

/// What the handler looked up for the request.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The ToolJetApp (for an AppVersion: `spec.app`; for a ToolJetApp: itself, as stored).
    pub app: Option<AppFact>,
    /// The namespace is being deleted (its contents go with it, whatever their stage).
    pub namespace_terminating: bool,
    /// The SubjectAccessReview answers for the accesses the request needs. Not asked: refused.
    pub granted: BTreeMap<Access, bool>,
    /// For a promotion: what the target stage's configuration lacks of what the version needs.
    pub missing_in_target: Vec<String>,
    /// For an EnvironmentConfig: another live config with the same (app-or-workspace, stage).
    pub rival: Option<String>,
    /// For a promotion or a release: the gate on the stage entered, when a PromotionPolicy
    /// guards it. For an Approval: the gate on the stage it approves entry to.
    pub gate: Option<super::gates::GateFacts>,
    /// For an Approval: the version it names, as stored.
    pub approved: Option<super::gates::ApprovedVersion>,
    /// For a ToolJetApp update that changes its labels or pipeline: the PromotionPolicies whose
    /// guard of it changes, each with the stages it lists ([`crate::gate::guards_changed`]).
    pub guards_changed: Vec<(String, Vec<String>)>,
}

impl Facts {
    /// Whether the requester holds `access`.
    pub fn may(&self, access: &Access) -> bool {
        self.granted.get(access) == Some(&true)
    }
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

use Verdict::{Allow, Deny};

/// The denial for a missing permission: who, what, the access it needs, and whom to ask.
pub(super) fn forbidden(
    user: &str,
    what: &str,
    needs: &str,
    access: &Access,
    ns: &str,
    ask: &str,
) -> Verdict {
    Deny(format!(
        "user {user} may not {what}: {needs} needs {} in namespace {ns}; {ask}",
        access.describe()
    ))
}

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

fn protection_changed(old: Option<&ToolJetApp>, new: &ToolJetApp) -> bool {
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

/// Whether a create or update sets or changes `metadata.ownerReferences`. The garbage collector
/// deletes an object once every owner it names is gone (or never existed), so naming owners is a
/// deletion deferred: it needs what deleting needs ([`owners_rule`]).
pub fn owners_changed(old: Option<&impl ResourceExt>, new: Option<&impl ResourceExt>) -> bool {
    new.is_some_and(|new| {
        old.map(|o| o.owner_references()).unwrap_or_default() != new.owner_references()
    })
}

/// Kubernetes' own finalizers, which the apiserver and the garbage collector set and clear while
/// deleting an object (a deletion already judged).
const SYSTEM_FINALIZERS: [&str; 2] = ["foregroundDeletion", "orphan"];

/// Whether an update adds or removes a finalizer other than Kubernetes' own. A finalizer holds
/// an object's deletion, so setting one is taking part in deleting it: it needs what deleting it
/// needs ([`finalizers_rule`]).
pub fn finalizers_changed(old: Option<&impl ResourceExt>, new: Option<&impl ResourceExt>) -> bool {
    let (Some(old), Some(new)) = (old, new) else {
        return false;
    };
    let own = |finalizers: &[String]| {
        let mut own: Vec<String> = finalizers
            .iter()
            .filter(|f| !SYSTEM_FINALIZERS.contains(&f.as_str()))
            .cloned()
            .collect();
        own.sort();
        own
    };
    own(old.finalizers()) != own(new.finalizers())
}

/// The rule on finalizers: adding or removing one needs `delete` on the object, and is refused
/// where deleting is (`undeletable`), except removing one from an object already being deleted
/// (that only lets a judged deletion finish).
fn finalizers_rule(
    kind: &str,
    resource: &'static str,
    old: &impl ResourceExt,
    new: &impl ResourceExt,
    user: &str,
    undeletable: Option<String>,
    facts: &Facts,
) -> Option<Verdict> {
    if !finalizers_changed(Some(old), Some(new)) {
        return None;
    }
    let name = new.name_any();
    let only_removes = new
        .finalizers()
        .iter()
        .all(|f| old.finalizers().contains(f));
    if let Some(why) =
        undeletable.filter(|_| !(only_removes && old.meta().deletion_timestamp.is_some()))
    {
        return Some(Deny(format!(
            "{kind} {name}: metadata.finalizers cannot be changed: a finalizer holds the object's deletion, and \
             {why}; remove the finalizer change from your request"
        )));
    }
    let access = Access::delete(resource, &name);
    (!facts.may(&access)).then(|| {
        forbidden(
            user,
            &format!("add or remove finalizers of {kind} {name}"),
            "a finalizer holds the object's deletion, so this",
            &access,
            &new.namespace().unwrap_or_default(),
            "ask someone who may delete it",
        )
    })
}

/// Whether a request changes the metadata that can delete an object or hold its deletion.
pub fn deletion_metadata_changed(
    old: Option<&impl ResourceExt>,
    new: Option<&impl ResourceExt>,
) -> bool {
    owners_changed(old, new) || finalizers_changed(old, new)
}

/// The rules on the metadata that can delete an object or hold its deletion: its owners
/// ([`owners_rule`]) and its finalizers ([`finalizers_rule`]).
pub(super) fn deletion_metadata_rule<K: ResourceExt>(
    kind: &str,
    resource: &'static str,
    old: Option<&K>,
    new: Option<&K>,
    user: &str,
    undeletable: Option<String>,
    facts: &Facts,
) -> Option<Verdict> {
    owners_rule(kind, resource, old, new, user, undeletable.clone(), facts)
        .or_else(|| finalizers_rule(kind, resource, old?, new?, user, undeletable, facts))
}

/// The rule on `metadata.ownerReferences` of a tooljet.io object: setting or changing them needs
/// `delete` on the object (RBAC alone lets anyone who may update it do so; the
/// OwnerReferencesPermissionEnforcement admission plugin that would check it is off by default),
/// and is refused outright where deleting is (`undeletable`: why the object may not be deleted).
fn owners_rule(
    kind: &str,
    resource: &'static str,
    old: Option<&impl ResourceExt>,
    new: Option<&impl ResourceExt>,
    user: &str,
    undeletable: Option<String>,
    facts: &Facts,
) -> Option<Verdict> {
    if !owners_changed(old, new) {
        return None;
    }
    let subject = new?;
    let name = subject.name_any();
    if let Some(why) = undeletable {
        return Some(Deny(format!(
            "{kind} {name}: metadata.ownerReferences cannot be set or changed: the garbage collector would delete \
             it once its owners are gone, and {why}; remove ownerReferences from your change"
        )));
    }
    let access = Access::delete(resource, &name);
    (!facts.may(&access)).then(|| {
        forbidden(
            user,
            &format!("set or change metadata.ownerReferences of {kind} {name}"),
            "owners let the garbage collector delete the object, so this",
            &access,
            &subject.namespace().unwrap_or_default(),
            "ask someone who may delete it",
        )
    })
}

/// The reason of a break-glass override the mutating webhook stamped for this request by `user`
/// ([`stamps::override_of`], made by `user`).
pub fn overridden<'a>(obj: &'a impl ResourceExt, at_key: &str, user: &str) -> Option<&'a str> {
    stamps::override_of(obj.annotations(), at_key)
        .filter(|o| o.by == Some(user))
        .map(|o| o.reason)
}

const OVERRIDE_STAMPS: [&str; 3] = [
    OVERRIDDEN_BY_ANNOTATION,
    OVERRIDDEN_AT_ANNOTATION,
    OVERRIDDEN_REASON_ANNOTATION,
];

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
    if pipeline_changed(old, new) || rollout_changed(old, new) {
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
fn editing_policy<'a>(policy: &str, stages: &'a [String]) -> impl Iterator<Item = Access> + 'a {
    std::iter::once(Access::edit_policy(policy))
        .chain(stages.iter().map(|s| Access::environment(CONFIGURE, s)))
}

/// `patch` on every Deployment a rollout newly names, and on every Deployment of the namespace
/// for a new selector (it may select Deployments created later).
fn needed_for_rollout(old: Option<&ToolJetApp>, new: &ToolJetApp) -> BTreeSet<Access> {
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
fn new_references(
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
fn config_changed(old: &EnvironmentConfig, new: &EnvironmentConfig) -> bool {
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

/// How deep a JSON value nests (a scalar: 1). Iterative: a hostile document cannot overflow
/// the stack.
pub fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

/// A free-form JSON value beyond the documented bounds: the problem, for a denial.
fn oversized(value: &Value, max_bytes: usize) -> Option<String> {
    let depth = json_depth(value);
    if depth > MAX_JSON_DEPTH {
        return Some(format!(
            "nests {depth} levels deep (at most {MAX_JSON_DEPTH})"
        ));
    }
    let bytes = serde_json::to_vec(value)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    (bytes > max_bytes).then(|| format!("is {bytes} bytes (at most {max_bytes})"))
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
pub(super) fn forged<'a>(
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

pub(super) fn forged_message(kind: &str, name: &str, keys: &[&String]) -> String {
    let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
    format!(
        "{kind} {name}: annotation {} is recorded by tooljet-operator's admission webhook and cannot be set or \
         changed by users; remove it from your change",
        keys.join(", ")
    )
}

pub(super) const NOT_STAMPED: &str = "tooljet-operator's mutating webhook did not run, or the stamp was altered; check that \
     MutatingWebhookConfiguration tooljet-operator is installed";

fn definition_too_large(name: &str, v: &AppVersion) -> Option<Verdict> {
    let definition = v.spec.definition.as_ref()?;
    if let Some(problem) = oversized(definition, MAX_DEFINITION_BYTES) {
        return Some(Deny(format!(
            "AppVersion {name}: spec.definition {problem}; split the app or move large static content (images, \
             data) out of the definition"
        )));
    }
    let stamp = References::of(Some(definition)).stamp();
    (stamp.len() > MAX_REFERENCES_BYTES).then(|| {
        Deny(format!(
            "AppVersion {name}: spec.definition references so many distinct constants and secrets that their record \
             (annotation {REFERENCES_ANNOTATION}) would be {} bytes (at most {MAX_REFERENCES_BYTES}); reference fewer \
             names",
            stamp.len()
        ))
    })
}

/// Whether `new`'s references stamp is the one its definition gives: `Ok(true)` when it carries
/// that stamp (it is then one of the request's stamps, not a forgery), `Ok(false)` when it carries
/// none and may (an update that leaves the definition as stored, of a version stored before the
/// stamp existed), and the denial otherwise. A stamp whose value differs from the definition's is
/// refused whoever sets it.
fn references_stamped(
    name: &str,
    old: Option<&AppVersion>,
    new: &AppVersion,
) -> Result<bool, Verdict> {
    let expected = References::of(new.spec.definition.as_ref()).stamp();
    let stored = old.and_then(|o| {
        (o.spec.definition == new.spec.definition)
            .then(|| o.annotations().get(REFERENCES_ANNOTATION))
            .flatten()
    });
    match new.annotations().get(REFERENCES_ANNOTATION) {
        Some(stamp) if *stamp == expected => Ok(true),
        // Carried over with the definition it was computed from: admitted when that definition
        // was (an earlier operator's scanner may have read an edge case differently), and no
        // change of this request.
        Some(stamp) if stored == Some(stamp) => Ok(false),
        None if old.is_some_and(|o| {
            o.spec.definition == new.spec.definition
                && !o.annotations().contains_key(REFERENCES_ANNOTATION)
        }) =>
        {
            Ok(false)
        }
        _ => Err(Deny(format!(
            "AppVersion {name} is not stamped with the names its definition references (annotation \
             {REFERENCES_ANNOTATION}, {expected}); {NOT_STAMPED}"
        ))),
    }
}

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
    let first = app.pipeline().first();
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
            if let Some(verdict) = version_name_taken(&name, new, app) {
                return verdict;
            }
            if let Some(verdict) = definition_too_large(&name, new) {
                return verdict;
            }
            if let Some(verdict) = deletion_metadata_rule(
                "AppVersion",
                "appversions",
                None::<&AppVersion>,
                Some(new),
                user,
                None,
                facts,
            ) {
                return verdict;
            }
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
            if let Err(verdict) = references_stamped(&name, None, new) {
                return verdict;
            }
            let keys = forged(
                None::<&AppVersion>,
                new,
                &[
                    STAGES_ANNOTATION,
                    CREATED_BY_ANNOTATION,
                    REFERENCES_ANNOTATION,
                ],
            );
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
    let first = app.pipeline().first();
    if old.spec.app != new.spec.app {
        return Deny(format!(
            "AppVersion {name}: spec.app is immutable (it is a version of {}); create a new AppVersion for {} instead",
            old.spec.app, new.spec.app
        ));
    }
    let undeletable = (old.spec.environment != first).then(|| {
        format!(
            "it is in {}: versions that left {first} are kept as the app's release and rollback history",
            old.spec.environment
        )
    });
    if let Some(verdict) = deletion_metadata_rule(
        "AppVersion",
        "appversions",
        Some(old),
        Some(new),
        user,
        undeletable,
        facts,
    ) {
        return verdict;
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
        if old.metadata.deletion_timestamp.is_some() {
            let holders = old.finalizers().join(", ");
            return Deny(format!(
                "AppVersion {name} is being deleted (metadata.deletionTimestamp is set; finalizers {holders} hold it): \
                 a version being deleted cannot be promoted, since it would be deleted in {to}; create a new \
                 version in {first} and promote that one"
            ));
        }
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
        match app.pipeline().step(from, to) {
            Move::Forward => {}
            Move::Unknown { stage } => {
                return Deny(format!(
                    "AppVersion {name} cannot move to {to}: {stage} is not a stage of ToolJetApp {} ({})",
                    app.name,
                    app.pipeline()
                ));
            }
            Move::Backward => {
                return Deny(format!(
                    "AppVersion {name} cannot move back from {from} to {to}: promotion only moves forward ({}); \
                     create a new version in {first} instead",
                    app.pipeline()
                ));
            }
            Move::Skips { next } => {
                return Deny(format!(
                    "AppVersion {name} cannot move from {from} to {to}: promotion goes one stage at a time ({}); \
                     promote it to {next} first",
                    app.pipeline()
                ));
            }
        }
        let access = Access::environment(PROMOTE, to);
        if !facts.may(&access) {
            return forbidden(
                user,
                &format!("promote AppVersion {name} to {to}"),
                &format!("promoting into {to}"),
                &access,
                &new.namespace().unwrap_or_default(),
                "ask an admin for a role that grants it (e.g. tooljet-promoter)",
            );
        }
        if !facts.missing_in_target.is_empty() {
            return Deny(format!(
                "AppVersion {name} cannot be promoted to {to}: {to} lacks {}; add what is not declared to an \
                 EnvironmentConfig for {to} first",
                facts.missing_in_target.join(", ")
            ));
        }
        let ns = new.namespace().unwrap_or_default();
        let override_reason = overridden(new, PROMOTED_AT_ANNOTATION, user);
        let what = format!("AppVersion {name} cannot be promoted to {to}");
        if let Some(verdict) =
            super::gates::judge(&what, to, true, override_reason, user, &ns, facts)
        {
            return verdict;
        }
        let mut stamped = vec![
            PROMOTED_BY_ANNOTATION,
            PROMOTED_AT_ANNOTATION,
            PROMOTED_FROM_ANNOTATION,
            STAGES_ANNOTATION,
        ];
        if override_reason.is_some() {
            stamped.extend(OVERRIDE_STAMPS);
        }
        match references_stamped(name, Some(old), new) {
            Ok(true) => stamped.push(REFERENCES_ANNOTATION),
            Ok(false) => {}
            Err(verdict) => return verdict,
        }
        let annotations = new.annotations();
        let stages = format!("{},{to}", stages_of(old));
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
    if renamed && let Some(verdict) = version_name_taken(name, new, app) {
        return verdict;
    }
    if old.spec.definition != new.spec.definition
        && let Some(verdict) = definition_too_large(name, new)
    {
        return verdict;
    }
    let mut stamped = vec![];
    match references_stamped(name, Some(old), new) {
        Ok(true) => stamped.push(REFERENCES_ANNOTATION),
        Ok(false) => {}
        Err(verdict) => return verdict,
    }
    if old.spec != new.spec {
        if new
            .annotations()
            .get(LAST_EDITED_BY_ANNOTATION)
            .map(String::as_str)
            != Some(user)
        {
            return Deny(format!(
                "AppVersion {name}: the edit is not stamped with who made it (annotation \
                 {LAST_EDITED_BY_ANNOTATION}); {NOT_STAMPED}"
            ));
        }
        stamped.push(LAST_EDITED_BY_ANNOTATION);
        match editors_after(old, user) {
            Err(full) => return Deny(full),
            Ok(None) => {}
            Ok(Some(editors)) => {
                if new.annotations().get(EDITORS_ANNOTATION) != Some(&editors) {
                    return Deny(format!(
                        "AppVersion {name}: the edit is not recorded among its editors (annotation \
                         {EDITORS_ANNOTATION}); {NOT_STAMPED}"
                    ));
                }
                stamped.push(EDITORS_ANNOTATION);
            }
        }
    }
    if let Some(verdict) = reason_outside_request("AppVersion", name, new) {
        return verdict;
    }
    let keys = forged(Some(old), new, &stamped);
    if !keys.is_empty() {
        return Deny(forged_message("AppVersion", name, &keys));
    }
    Allow
}

/// `tooljet.io/override-reason` left in an object: the mutating webhook consumes it on a
/// promotion or release, so it is set without one (or the mutating webhook did not run).
fn reason_outside_request(kind: &str, name: &str, obj: &impl ResourceExt) -> Option<Verdict> {
    obj.annotations().contains_key(OVERRIDE_REASON_ANNOTATION).then(|| {
        Deny(format!(
            "{kind} {name}: annotation {OVERRIDE_REASON_ANNOTATION} only takes effect in the same request as a \
             promotion (spec.environment) or a release (spec.release); remove it, or set it in that request"
        ))
    })
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
    let ns = subject.namespace().unwrap_or_default();
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
        Op::Create | Op::Update => {
            let Some(new) = new else {
                return Deny(MALFORMED.into());
            };
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
            if let Some(verdict) = deletion_metadata_rule(
                "ToolJetApp",
                "tooljetapps",
                old,
                Some(new),
                user,
                undeletable,
                facts,
            ) {
                return verdict;
            }
            for (policy, stages) in &facts.guards_changed {
                let what = if pipeline_changed(old, new) {
                    "change the labels or spec.environments"
                } else {
                    "change the labels"
                };
                for access in editing_policy(policy, stages) {
                    if !facts.may(&access) {
                        return forbidden(
                            user,
                            &format!("{what} of ToolJetApp {name}"),
                            &format!(
                                "it changes whether PromotionPolicy {policy} (guarding {}) guards the app, which is \
                                 editing that policy: it",
                                stages.join(", ")
                            ),
                            &access,
                            &ns,
                            "ask someone who may edit the policy (e.g. tooljet-admin), or change the policy's \
                             appSelector or environments instead",
                        );
                    }
                }
            }
            let changes: Vec<&str> = [
                ("spec.environments", pipeline_changed(old, new)),
                ("spec.rollout", rollout_changed(old, new)),
            ]
            .into_iter()
            .filter_map(|(field, changed)| changed.then_some(field))
            .collect();
            if !changes.is_empty() {
                let access = Access::app(CONFIGURE, &name);
                if !facts.may(&access) {
                    return forbidden(
                        user,
                        &format!("change {} of ToolJetApp {name}", changes.join(" and ")),
                        "changing an app's pipeline or rollout",
                        &access,
                        &ns,
                        "ask an admin for a role that grants it (e.g. tooljet-environment-admin)",
                    );
                }
            }
            if let Some(verdict) = review_pipeline_change(old, new, versions) {
                return verdict;
            }
            if rollout_changed(old, new)
                && let Some(verdict) = review_rollout(old, new, user, facts)
            {
                return verdict;
            }
            if protection_changed(old, new) && !facts.may(&Access::app(UNPROTECT, &name)) {
                return Deny(format!(
                    "user {user} may not change annotation {DELETION_PROTECTION_ANNOTATION} of ToolJetApp {name}: it \
                     needs verb unprotect on resource tooljetapps named {name} (group tooljet.io); ask a cluster admin"
                ));
            }
            let last = Pipeline::of(new).last();
            let release_access = Access::environment(RELEASE, last);
            if release_changed(old, new) && !facts.may(&release_access) {
                let what = match new.released() {
                    Some(_) => format!("release ToolJetApp {name}"),
                    None => format!("remove the release of ToolJetApp {name}"),
                };
                return forbidden(
                    user,
                    &what,
                    "setting, changing or removing a release",
                    &release_access,
                    &ns,
                    "ask an admin for a role that grants it (e.g. tooljet-release-manager)",
                );
            }
            let mut stamped: Vec<&str> = vec![];
            if let Some(version) = release(old, new) {
                let stage_of = |wanted: &str| {
                    versions
                        .iter()
                        .find(|v| v.name == wanted)
                        .map(|v| v.environment.as_str())
                };
                match Pipeline::of(new).release_check(version, stage_of) {
                    ReleaseCheck::NotAVersion => {
                        return Deny(format!(
                            "ToolJetApp {name} cannot release {version}: it is not an AppVersion of app {name} in this \
                             namespace; release one of its {last} versions"
                        ));
                    }
                    ReleaseCheck::NotInLastStage { stage } => {
                        return Deny(format!(
                            "ToolJetApp {name} cannot release {version}: it is in {stage}, and only {last} versions can be \
                             released; promote it to {last} first"
                        ));
                    }
                    ReleaseCheck::Releasable => {}
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
                        "ToolJetApp {name}: the release is not stamped with who made it ({NOT_STAMPED})"
                    ));
                }
                stamped = vec![
                    RELEASED_BY_ANNOTATION,
                    RELEASED_AT_ANNOTATION,
                    RELEASED_VERSION_ANNOTATION,
                ];
            }
            // Setting or changing the release (a release or a rollback) passes the gate of the
            // last stage; removing it does not release anything.
            if let Some(version) = release(old, new) {
                let override_reason = overridden(new, RELEASED_AT_ANNOTATION, user);
                let what = format!("ToolJetApp {name} cannot release {version}");
                if let Some(verdict) =
                    super::gates::judge(&what, last, false, override_reason, user, &ns, facts)
                {
                    return verdict;
                }
                if override_reason.is_some() {
                    stamped.extend(OVERRIDE_STAMPS);
                }
            }
            if let Some(verdict) = reason_outside_request("ToolJetApp", &name, new) {
                return verdict;
            }
            let keys = forged(old, new, &stamped);
            if !keys.is_empty() {
                return Deny(forged_message("ToolJetApp", &name, &keys));
            }
            Allow
        }
    }
}

/// The rollout of `new`: every selector well-formed and not empty, and every Deployment it newly
/// names or selects patchable by the requester (the operator patches them on the user's behalf).
fn review_rollout(
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    user: &str,
    facts: &Facts,
) -> Option<Verdict> {
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
pub fn rollout_selectors(app: &ToolJetApp) -> Result<(), String> {
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
    let Some(subject) = new.or(old) else {
        return Deny(MALFORMED.into());
    };
    let name = subject.name_any();
    let ns = subject.namespace().unwrap_or_default();
    if op == Op::Delete && facts.namespace_terminating {
        return Allow;
    }
    let (verb, stages): (&str, Vec<&str>) = match (op, old, new) {
        (Op::Create, _, Some(new)) => ("create", vec![new.spec.environment.as_str()]),
        (Op::Update, Some(old), Some(new)) if config_changed(old, new) => (
            "change",
            if old.spec.environment == new.spec.environment {
                vec![new.spec.environment.as_str()]
            } else {
                vec![old.spec.environment.as_str(), new.spec.environment.as_str()]
            },
        ),
        (Op::Update, Some(_), Some(_)) => ("change", vec![]),
        (Op::Delete, Some(old), _) => ("delete", vec![old.spec.environment.as_str()]),
        _ => return Deny(MALFORMED.into()),
    };
    for stage in stages {
        let access = Access::environment(CONFIGURE, stage);
        if !facts.may(&access) {
            return forbidden(
                user,
                &format!("{verb} EnvironmentConfig {name}"),
                &format!("configuring {stage}"),
                &access,
                &ns,
                "ask an admin for a role that grants it (tooljet-developer may configure development; \
                 tooljet-environment-admin every stage)",
            );
        }
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
    if let Some(rival) = &facts.rival {
        let scope = new
            .spec
            .app
            .as_deref()
            .map(|a| format!("app {a}"))
            .unwrap_or_else(|| "the workspace".into());
        return Deny(format!(
            "EnvironmentConfig {name} cannot configure {scope} in {}: EnvironmentConfig {rival} already does (one \
             per app or workspace and stage); edit {rival} instead, or delete it first",
            new.spec.environment
        ));
    }
    for ((secret, key), path) in new_references(old, new) {
        let access = Access::read_secret(&secret);
        if !facts.may(&access) {
            return forbidden(
                user,
                &format!("reference Secret {secret} (key {key}) from EnvironmentConfig {name}"),
                &format!(
                    "{path} makes the operator copy that value into the stage's configuration, which"
                ),
                &access,
                &ns,
                "reference a Secret you may read, or ask whoever manages that Secret to add the reference",
            );
        }
    }
    if let Some(problem) = option_constant_clash(&new.spec) {
        return Deny(format!("EnvironmentConfig {name}: {problem}"));
    }
    if op == Op::Update && old.is_some_and(|o| o.spec.data_sources == new.spec.data_sources) {
        return Allow;
    }
    for ds in &new.spec.data_sources {
        let options = Value::Object(ds.options.clone().into_iter().collect());
        if let Some(problem) = oversized(&options, MAX_OPTIONS_BYTES) {
            return Deny(format!(
                "EnvironmentConfig {name}: spec.dataSources[{}].options {problem}; keep options to connection \
                 settings",
                ds.name
            ));
        }
    }
    Allow
}

/// A secret option whose secret constant ([`crate::lifecycle::constants::option_constant`]) would be
/// another entry's of the same config: a Global constant of that name, a Secret constant or
/// another secret option of that name reading another Secret key (pure). The same key is one
/// value, so it may share the name.
pub fn option_constant_clash(spec: &EnvironmentConfigSpec) -> Option<String> {
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

/// The JSON patch the mutating webhook returns: `set` these annotations, `remove` those.
pub fn stamp(
    annotations: &BTreeMap<String, String>,
    has_annotations: bool,
    set: &[(&str, String)],
    remove: &[&str],
) -> Patch {
    let mut ops = vec![];
    if !has_annotations {
        let map: serde_json::Map<String, Value> = set
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
            .collect();
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: Value::Object(map),
        }));
        return Patch(ops);
    }
    for (key, value) in set {
        let path = PointerBuf::from_tokens(["metadata", "annotations", key]);
        let value = Value::String(value.clone());
        ops.push(if annotations.contains_key(*key) {
            PatchOperation::Replace(ReplaceOperation { path, value })
        } else {
            PatchOperation::Add(AddOperation { path, value })
        });
    }
    for key in remove {
        if annotations.contains_key(*key) {
            ops.push(PatchOperation::Remove(json_patch::RemoveOperation {
                path: PointerBuf::from_tokens(["metadata", "annotations", key]),
            }));
        }
    }
    Patch(ops)
}

/// A break-glass reason in the request becomes the `overridden-` stamps (who, when: the same
/// `now` as the promotion's or release's stamp) and is removed, so it never outlives the request.
fn consume_override(obj: &impl ResourceExt, user: &str, now: &str) -> Vec<(&'static str, String)> {
    match obj.annotations().get(OVERRIDE_REASON_ANNOTATION) {
        Some(reason) if !reason.trim().is_empty() => vec![
            (OVERRIDDEN_BY_ANNOTATION, user.to_string()),
            (OVERRIDDEN_AT_ANNOTATION, now.to_string()),
            (OVERRIDDEN_REASON_ANNOTATION, reason.clone()),
        ],
        _ => vec![],
    }
}

/// The stamp of a new version: the stage it starts in and who created it.
pub fn mutation_for_new_version(new: &AppVersion, user: &str) -> Patch {
    stamp(
        new.annotations(),
        new.metadata.annotations.is_some(),
        &[
            (STAGES_ANNOTATION, new.spec.environment.clone()),
            (CREATED_BY_ANNOTATION, user.to_string()),
            (
                REFERENCES_ANNOTATION,
                References::of(new.spec.definition.as_ref()).stamp(),
            ),
        ],
        &[],
    )
}

/// The editors record after `user` edits `old`'s spec: unchanged when `user` is recorded already
/// (in the record, or as its last editor on a version stored before the record existed),
/// otherwise with `user` appended. `Err`: the record is full.
fn editors_after(old: &AppVersion, user: &str) -> Result<Option<String>, String> {
    let mut editors = stamps::editors_of(old);
    let last = old.annotations().get(LAST_EDITED_BY_ANNOTATION);
    if editors.iter().any(|e| e == user) || last.map(String::as_str) == Some(user) {
        return Ok(None);
    }
    if editors.len() >= MAX_EDITORS {
        return Err(format!(
            "AppVersion {} has been edited by {MAX_EDITORS} people, the most its record ({EDITORS_ANNOTATION}) keeps; \
             create a new version",
            old.name_any()
        ));
    }
    editors.push(user.to_string());
    Ok(Some(
        serde_json::to_string(&editors).expect("strings serialise"),
    ))
}

/// The references stamp `new` needs, when it does not carry it already.
fn references_restamp(new: &AppVersion) -> Option<(&'static str, String)> {
    let expected = References::of(new.spec.definition.as_ref()).stamp();
    (new.annotations().get(REFERENCES_ANNOTATION) != Some(&expected))
        .then_some((REFERENCES_ANNOTATION, expected))
}

/// The stamp of a promotion (who, when, from where, the stages the version has been in, and a
/// break-glass override), or of an edit (who edited last).
pub fn mutation_for_version(
    old: &AppVersion,
    new: &AppVersion,
    user: &str,
    now: &str,
) -> Option<Patch> {
    let Some((from, to)) = promotion(old, new) else {
        return (old.spec != new.spec).then(|| {
            let mut set = vec![(LAST_EDITED_BY_ANNOTATION, user.to_string())];
            // A full record is left as it is: the validating webhook refuses the edit.
            if let Ok(Some(editors)) = editors_after(old, user) {
                set.push((EDITORS_ANNOTATION, editors));
            }
            set.extend(references_restamp(new));
            stamp(
                new.annotations(),
                new.metadata.annotations.is_some(),
                &set,
                &[],
            )
        });
    };
    let mut set = vec![
        (PROMOTED_BY_ANNOTATION, user.to_string()),
        (PROMOTED_AT_ANNOTATION, now.to_string()),
        (PROMOTED_FROM_ANNOTATION, from.to_string()),
        (STAGES_ANNOTATION, format!("{},{to}", stages_of(old))),
    ];
    set.extend(references_restamp(new));
    set.extend(consume_override(new, user, now));
    Some(stamp(
        new.annotations(),
        new.metadata.annotations.is_some(),
        &set,
        &[OVERRIDE_REASON_ANNOTATION],
    ))
}

/// The stamp of a release (who, when, which version, and a break-glass override).
pub fn mutation_for_app(
    old: Option<&ToolJetApp>,
    new: &ToolJetApp,
    user: &str,
    now: &str,
) -> Option<Patch> {
    let version = release(old, new)?;
    let mut set = vec![
        (RELEASED_BY_ANNOTATION, user.to_string()),
        (RELEASED_AT_ANNOTATION, now.to_string()),
        (RELEASED_VERSION_ANNOTATION, version.to_string()),
    ];
    set.extend(consume_override(new, user, now));
    Some(stamp(
        new.annotations(),
        new.metadata.annotations.is_some(),
        &set,
        &[OVERRIDE_REASON_ANNOTATION],
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

    /// Applies the mutating webhook's stamp to a new version, then reviews its creation.
    fn create(v: &AppVersion, f: &Facts) -> Verdict {
        let mut doc = serde_json::to_value(v).unwrap();
        json_patch::patch(&mut doc, &mutation_for_new_version(v, USER)).unwrap();
        let v: AppVersion = serde_json::from_value(doc).unwrap();
        review_version(Op::Create, None, Some(&v), USER, f)
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
            "user alice may not change spec.environments of ToolJetApp crm: changing an app's pipeline or rollout \
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
        let stamped = |v: &AppVersion| {
            let mut doc = serde_json::to_value(v).unwrap();
            json_patch::patch(&mut doc, &mutation_for_new_version(v, USER)).unwrap();
            serde_json::from_value::<AppVersion>(doc).unwrap()
        };
        let new = stamped(&v);
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
        let mut doc = serde_json::to_value(&edited).unwrap();
        json_patch::patch(
            &mut doc,
            &mutation_for_version(&new, &edited, USER, NOW).unwrap(),
        )
        .unwrap();
        let restamped: AppVersion = serde_json::from_value(doc).unwrap();
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
        let v = version("development");
        let mut doc = serde_json::to_value(&v).unwrap();
        json_patch::patch(&mut doc, &mutation_for_new_version(&v, USER)).unwrap();
        let created: AppVersion = serde_json::from_value(doc).unwrap();
        assert_eq!(stages_of(&created), "development");
        let mut promoted = created.clone();
        promoted.spec.environment = "staging".into();
        let patch = mutation_for_version(&created, &promoted, USER, NOW).unwrap();
        let mut doc = serde_json::to_value(&promoted).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let promoted: AppVersion = serde_json::from_value(doc).unwrap();
        assert_eq!(stages_of(&promoted), "development,staging");
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
