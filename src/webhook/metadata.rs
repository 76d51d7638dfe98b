//! Rules on metadata every kind shares: ownerReferences and finalizers (they decide and hold
//! deletions, so changing them needs what deleting needs), the `tooljet.io/*` stamps only the
//! webhook writes (a forged or altered stamp is refused), and a break-glass override.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::vocabulary::*;
use crate::api::{
    ANNOTATION_PREFIX, AppVersion, OVERRIDDEN_AT_ANNOTATION, OVERRIDDEN_BY_ANNOTATION,
    OVERRIDDEN_REASON_ANNOTATION, OVERRIDE_REASON_ANNOTATION, REFERENCES_ANNOTATION,
};
use crate::lifecycle::{References, stamps};

use Verdict::Deny;

/// Whether a create or update sets or changes `metadata.ownerReferences`. The garbage collector
/// deletes an object once every owner it names is gone (or never existed), so naming owners is a
/// deletion deferred: it needs what deleting needs (`owners_rule`).
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
/// needs (`finalizers_rule`).
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

pub(super) const OVERRIDE_STAMPS: [&str; 3] = [
    OVERRIDDEN_BY_ANNOTATION,
    OVERRIDDEN_AT_ANNOTATION,
    OVERRIDDEN_REASON_ANNOTATION,
];

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

/// The denial of reserved annotations a user changed ([`forged`]; `stamped`: those the mutating
/// webhook stamped for this request), if any.
pub(super) fn forgery_rule(
    kind: &str,
    name: &str,
    old: Option<&impl ResourceExt>,
    new: &impl ResourceExt,
    stamped: &[&str],
) -> Option<Verdict> {
    let keys = forged(old, new, stamped);
    (!keys.is_empty()).then(|| Deny(forged_message(kind, name, &keys)))
}

/// `tooljet.io/override-reason` left in an object: the mutating webhook consumes it on a
/// promotion or release, so it is set without one (or the mutating webhook did not run).
pub(super) fn reason_outside_request(
    kind: &str,
    name: &str,
    obj: &impl ResourceExt,
) -> Option<Verdict> {
    obj.annotations().contains_key(OVERRIDE_REASON_ANNOTATION).then(|| {
        Deny(format!(
            "{kind} {name}: annotation {OVERRIDE_REASON_ANNOTATION} only takes effect in the same request as a \
             promotion (spec.environment) or a release (spec.release); remove it, or set it in that request"
        ))
    })
}

/// Whether `new`'s references stamp is the one its definition gives: `Ok(true)` when it carries
/// that stamp (it is then one of the request's stamps, not a forgery), `Ok(false)` when it
/// carries the stamp stored with an unchanged definition (or, stored before the stamp existed,
/// none), and the denial otherwise. A stamp whose value differs from the definition's is refused
/// whoever sets it. `references`: the definition's stamp when the caller computed it already;
/// the definition is only read when the stamp is not carried over.
pub(super) fn references_stamped(
    name: &str,
    old: Option<&AppVersion>,
    new: &AppVersion,
    references: Option<&str>,
) -> Result<bool, Verdict> {
    let stamp = new.annotations().get(REFERENCES_ANNOTATION);
    // Carried over with the definition it was computed from: admitted when that definition was
    // (an earlier operator's scanner may have read an edge case differently), and no change of
    // this request.
    if old.is_some_and(|o| {
        o.spec.definition == new.spec.definition
            && o.annotations().get(REFERENCES_ANNOTATION) == stamp
    }) {
        return Ok(false);
    }
    let expected = match references {
        Some(r) => r.to_string(),
        None => References::of(new.spec.definition.as_ref()).stamp(),
    };
    if stamp == Some(&expected) {
        return Ok(true);
    }
    Err(Deny(format!(
        "AppVersion {name} is not stamped with the names its definition references (annotation \
         {REFERENCES_ANNOTATION}, {expected}); {NOT_STAMPED}"
    )))
}
