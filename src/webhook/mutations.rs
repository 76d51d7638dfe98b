//! The mutating webhook's stamps, as JSON patches: who created a version and the stages it has
//! been in, who edited, promoted or released it and when, a consumed break-glass override, the
//! references a definition uses, and who approved which generation.

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation, jsonptr::PointerBuf};
use kube::ResourceExt;
use serde_json::Value;

use super::{needs::*, vocabulary::*};
use crate::api::{
    APPROVED_AT_ANNOTATION, APPROVED_BY_ANNOTATION, APPROVED_GENERATION_ANNOTATION, AppVersion,
    Approval, CREATED_BY_ANNOTATION, EDITORS_ANNOTATION, LAST_EDITED_BY_ANNOTATION, MAX_EDITORS,
    OVERRIDDEN_AT_ANNOTATION, OVERRIDDEN_BY_ANNOTATION, OVERRIDDEN_REASON_ANNOTATION,
    OVERRIDE_REASON_ANNOTATION, PROMOTED_AT_ANNOTATION, PROMOTED_BY_ANNOTATION,
    PROMOTED_FROM_ANNOTATION, REFERENCES_ANNOTATION, RELEASED_AT_ANNOTATION,
    RELEASED_BY_ANNOTATION, RELEASED_VERSION_ANNOTATION, STAGES_ANNOTATION, ToolJetApp,
};
use crate::lifecycle::{References, stamps};

/// The JSON patch the mutating webhook returns for `obj`: `set` these annotations, `remove` those.
pub fn stamp(obj: &impl ResourceExt, set: &[(&str, String)], remove: &[&str]) -> Patch {
    let annotations = obj.annotations();
    let has_annotations = obj.meta().annotations.is_some();
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
        new,
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
pub(super) fn editors_after(old: &AppVersion, user: &str) -> Result<Option<String>, String> {
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
            stamp(new, &set, &[])
        });
    };
    let mut set = vec![
        (PROMOTED_BY_ANNOTATION, user.to_string()),
        (PROMOTED_AT_ANNOTATION, now.to_string()),
        (PROMOTED_FROM_ANNOTATION, from.to_string()),
        (STAGES_ANNOTATION, stamps::stages_after(old, to)),
    ];
    set.extend(references_restamp(new));
    set.extend(consume_override(new, user, now));
    Some(stamp(new, &set, &[OVERRIDE_REASON_ANNOTATION]))
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
    Some(stamp(new, &set, &[OVERRIDE_REASON_ANNOTATION]))
}

/// The stamp of a new Approval: who approved, when, the version's generation approved, and an
/// owner reference to the version (so it goes with it, and never counts for another version
/// of the same name).
pub fn mutation_for_approval(
    new: &Approval,
    version: &ApprovedVersion,
    user: &str,
    now: &str,
) -> json_patch::Patch {
    let mut patch = stamp(
        new,
        &[
            (APPROVED_BY_ANNOTATION, user.to_string()),
            (APPROVED_AT_ANNOTATION, now.to_string()),
            // What the approver says they reviewed, never the version's generation now: the
            // validating webhook refuses the two differing.
            (
                APPROVED_GENERATION_ANNOTATION,
                new.spec.generation.unwrap_or_default().to_string(),
            ),
        ],
        &[],
    );
    let owner = serde_json::json!({
        "apiVersion": format!("{}/{}", crate::api::GROUP, crate::api::VERSION),
        "kind": "AppVersion",
        "name": version.name,
        "uid": version.uid,
    });
    let already = new.owner_references().iter().any(|o| o.uid == version.uid);
    if !already {
        let (path, value) = if new.metadata.owner_references.is_some() {
            (
                PointerBuf::from_tokens(["metadata", "ownerReferences", "-"]),
                owner,
            )
        } else {
            (
                PointerBuf::from_tokens(["metadata", "ownerReferences"]),
                serde_json::Value::Array(vec![owner]),
            )
        };
        patch
            .0
            .push(PatchOperation::Add(AddOperation { path, value }));
    }
    patch
}
