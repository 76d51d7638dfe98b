//! Size guards: the largest definition, references stamp, data source options and JSON nesting
//! a request may carry, so one request cannot make the operator hold more than it bounds.

use serde_json::Value;

use super::vocabulary::*;
use crate::api::{AppVersion, REFERENCES_ANNOTATION};

use Verdict::Deny;

/// Largest `spec.definition` of an AppVersion, serialized (bytes). ToolJet app exports are tens
/// to hundreds of KiB. The apiserver stores an object of at most about 1.5 MiB (etcd's default
/// request limit), which must also hold the rest of the version, its status and the apiserver's
/// `managedFields`; 1 MiB leaves that room. The operator never holds a stored definition (see
/// [`crate::cache::lean::VersionSpecParts`]), so the limit bounds only what one request carries.
pub const MAX_DEFINITION_BYTES: usize = 1024 * 1024;
/// Largest [`REFERENCES_ANNOTATION`] stamp: the names a definition references, as JSON. Kubernetes
/// allows 256 KiB of annotations per object; thousands of distinct names fit in this.
pub const MAX_REFERENCES_BYTES: usize = 32 * 1024;
/// Deepest nesting of `spec.definition` and of data source `options`.
pub const MAX_JSON_DEPTH: usize = 32;
/// Largest `options` of one data source, serialized (bytes).
pub const MAX_OPTIONS_BYTES: usize = 16 * 1024;

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
pub(super) fn oversized(value: &Value, max_bytes: usize) -> Option<String> {
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

/// `references`: the stamp of the names `v`'s definition references.
pub(super) fn definition_too_large(
    name: &str,
    v: &AppVersion,
    references: &str,
) -> Option<Verdict> {
    let definition = v.spec.definition.as_ref()?;
    if let Some(problem) = oversized(definition, MAX_DEFINITION_BYTES) {
        return Some(Deny(format!(
            "AppVersion {name}: spec.definition {problem}; split the app or move large static content (images, \
             data) out of the definition"
        )));
    }
    (references.len() > MAX_REFERENCES_BYTES).then(|| {
        Deny(format!(
            "AppVersion {name}: spec.definition references so many distinct constants and secrets that their record \
             (annotation {REFERENCES_ANNOTATION}) would be {} bytes (at most {MAX_REFERENCES_BYTES}); reference fewer \
             names",
            references.len()
        ))
    })
}
