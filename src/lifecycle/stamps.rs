//! Reading the `tooljet.io/*` stamps the admission webhook writes: the stages a version has been
//! in, who edited it, who made a promotion or a release and when, and a break-glass override
//! stamped with it. (Writing them is the webhook's: [`crate::webhook`].)

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{
    AppVersion, EDITORS_ANNOTATION, OVERRIDDEN_AT_ANNOTATION, OVERRIDDEN_BY_ANNOTATION,
    OVERRIDDEN_REASON_ANNOTATION, STAGES_ANNOTATION,
};

/// The stages `v` has been in, comma-separated, as stamped (`spec.environment` alone when it
/// carries no stamp).
pub fn stages_of(v: &AppVersion) -> String {
    v.annotations()
        .get(STAGES_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| v.spec.environment.clone())
}

/// The stages stamp after `v` moves to stage `to`: what the mutating webhook writes on a
/// promotion and the validating webhook expects.
pub fn stages_after(v: &AppVersion, to: &str) -> String {
    format!("{},{to}", stages_of(v))
}

/// The stages stamped in `annotations`, in order (none without the stamp). The last is the
/// stage the version is in.
pub fn stage_path(annotations: &BTreeMap<String, String>) -> Vec<&str> {
    annotations
        .get(STAGES_ANNOTATION)
        .map(|s| s.split(',').collect())
        .unwrap_or_default()
}

/// Everyone who edited `version` (the stamp's record; none without one).
pub fn editors_of(version: &AppVersion) -> Vec<String> {
    version
        .annotations()
        .get(EDITORS_ANNOTATION)
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_default()
}

/// A break-glass override stamped in the same request as a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override<'a> {
    pub by: Option<&'a str>,
    pub reason: &'a str,
}

/// The override stamped in the same request as the stamp `at_key` (its `overridden-at` equals
/// that stamp's time, so an older override never counts), with a reason that is not blank.
pub fn override_of<'a>(
    annotations: &'a BTreeMap<String, String>,
    at_key: &str,
) -> Option<Override<'a>> {
    let at = annotations.get(at_key)?;
    if annotations.get(OVERRIDDEN_AT_ANNOTATION) != Some(at) {
        return None;
    }
    let reason = annotations
        .get(OVERRIDDEN_REASON_ANNOTATION)
        .filter(|r| !r.trim().is_empty())?;
    Some(Override {
        by: annotations
            .get(OVERRIDDEN_BY_ANNOTATION)
            .map(String::as_str),
        reason,
    })
}

/// Who made a stamped move (a promotion or a release), when, and the override stamped with it,
/// as a history records them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// `None`: the stamp carries no time (or not one that parses).
    pub at: Option<Timestamp>,
    pub by: Option<String>,
    pub override_reason: Option<String>,
}

/// The move stamped as `at_key` (time) and `by_key` (who).
pub fn made(annotations: &BTreeMap<String, String>, at_key: &str, by_key: &str) -> Made {
    Made {
        at: annotations.get(at_key).and_then(|t| t.parse().ok()),
        by: annotations.get(by_key).cloned(),
        override_reason: override_of(annotations, at_key).map(|o| o.reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PROMOTED_AT_ANNOTATION, PROMOTED_BY_ANNOTATION};

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_override_counts_for_the_move_stamped_at_its_time_only() {
        let at = "2026-12-01T10:00:00Z";
        let a = annotations(&[
            (PROMOTED_AT_ANNOTATION, at),
            (PROMOTED_BY_ANNOTATION, "bob"),
            (OVERRIDDEN_AT_ANNOTATION, at),
            (OVERRIDDEN_BY_ANNOTATION, "bob"),
            (OVERRIDDEN_REASON_ANNOTATION, "hotfix INC-1"),
        ]);
        assert_eq!(
            override_of(&a, PROMOTED_AT_ANNOTATION),
            Some(Override {
                by: Some("bob"),
                reason: "hotfix INC-1"
            })
        );
        let m = made(&a, PROMOTED_AT_ANNOTATION, PROMOTED_BY_ANNOTATION);
        assert_eq!(m.by.as_deref(), Some("bob"));
        assert_eq!(m.at.map(|t| t.to_string()).as_deref(), Some(at));
        assert_eq!(m.override_reason.as_deref(), Some("hotfix INC-1"));

        let mut older = a.clone();
        older.insert(PROMOTED_AT_ANNOTATION.into(), "2026-12-02T10:00:00Z".into());
        assert_eq!(override_of(&older, PROMOTED_AT_ANNOTATION), None);
        let mut blank = a.clone();
        blank.insert(OVERRIDDEN_REASON_ANNOTATION.into(), " ".into());
        assert_eq!(override_of(&blank, PROMOTED_AT_ANNOTATION), None);
        assert_eq!(
            made(
                &BTreeMap::new(),
                PROMOTED_AT_ANNOTATION,
                PROMOTED_BY_ANNOTATION
            ),
            Made::default()
        );
    }
}
