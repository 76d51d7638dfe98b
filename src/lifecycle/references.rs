//! The `{{constants.X}}` and `{{secrets.X}}` references of an app definition: what the
//! controllers need of a version's definition, and what the webhook stamps on it.

use std::collections::BTreeSet;

use serde_json::Value;

use super::constants::is_constant_name;

/// The names an app definition references: what the controllers need of a version's
/// definition, and all they ever read of it. Computed once, at admission, from the request
/// ([`References::of`]), and recorded on the version as annotation
/// [`crate::api::REFERENCES_ANNOTATION`] ([`References::stamp`], read back with
/// [`References::stamped`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct References {
    /// `{{constants.NAME}}`: a Global constant of the stage.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub constants: BTreeSet<String>,
    /// `{{secrets.NAME}}`: a Secret constant of the stage.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secrets: BTreeSet<String>,
}

impl References {
    /// The references of `definition` (none without one).
    pub fn of(definition: Option<&Value>) -> References {
        let (constants, secrets) = definition.map(definition_references).unwrap_or_default();
        References { constants, secrets }
    }

    /// The annotation value: compact JSON, names sorted, so one definition has one stamp.
    pub fn stamp(&self) -> String {
        serde_json::to_string(self).expect("sets of strings serialise")
    }

    /// The references recorded on `v`; `None` when it carries no stamp (a version stored before
    /// the stamp existed, or written while the webhook was not installed) or a malformed one.
    pub fn stamped(v: &crate::api::AppVersion) -> Option<References> {
        let stamp = v
            .metadata
            .annotations
            .as_ref()?
            .get(crate::api::REFERENCES_ANNOTATION)?;
        serde_json::from_str(stamp).ok()
    }
}

/// The `{{constants.NAME}}` and `{{secrets.NAME}}` references in an app definition: every string
/// value is searched inside its `{{ ... }}` expressions.
pub fn definition_references(definition: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut constants = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let mut stack = vec![definition];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => scan_expressions(s, &mut constants, &mut secrets),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    (constants, secrets)
}

fn scan_expressions(text: &str, constants: &mut BTreeSet<String>, secrets: &mut BTreeSet<String>) {
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return;
        };
        let expr = &after[..close];
        for (prefix, into) in [("constants.", &mut *constants), ("secrets.", &mut *secrets)] {
            let mut from = 0;
            while let Some(pos) = expr[from..].find(prefix) {
                let start = from + pos;
                // `constants` as a name of its own, not the end of a longer identifier
                // (`myconstants`, `éconstants`) or a member (`globals.constants`).
                let whole_word = !expr[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '.');
                let name = identifier_at(&expr[start + prefix.len()..]);
                if whole_word && is_constant_name(name) {
                    into.insert(name.to_string());
                }
                from = start + prefix.len();
            }
        }
        rest = &after[close + 2..];
    }
}

/// The identifier `text` starts with (as JavaScript reads one, in the characters a ToolJet
/// constant name may hold, so a name that goes on in other characters is not one).
fn identifier_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(text.len());
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definition_references_are_found_inside_expressions_only() {
        let def = json!({
            "queries": [{ "url": "{{constants.API_URL}}/x", "headers": [["Authorization", "Bearer {{ secrets.STRIPE_KEY }}"]] }],
            "text": "constants.NOT_AN_EXPRESSION {{ globals.constants.NOPE + constants.B_2 }}",
            "broken": "{{constants.UNCLOSED",
            // Not references: a name ToolJet cannot have (a digit first, too long, other
            // characters), the end of a longer identifier, a member of something else.
            "not": "{{constants.1BAD}} {{ myconstants.X }} {{éconstants.Y}} {{$constants.Z}} {{secrets.ÉTÉ}}",
            "long": format!("{{{{constants.{}}}}}", "L".repeat(51)),
            "longest": format!("{{{{constants.{}}}}}", "L".repeat(50)),
        });
        let (constants, secrets) = definition_references(&def);
        assert_eq!(
            constants.into_iter().collect::<Vec<_>>(),
            ["API_URL", "B_2", &"L".repeat(50)]
        );
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), ["STRIPE_KEY"]);
    }

    #[test]
    fn references_are_stamped_as_sorted_compact_json_and_read_back() {
        let def = json!({ "pages": [{ "q": "{{secrets.Z}} {{constants.B}} {{constants.A}}" }], "x": "{{constants.A}}" });
        let refs = References::of(Some(&def));
        assert_eq!(refs.stamp(), r#"{"constants":["A","B"],"secrets":["Z"]}"#);
        assert_eq!(References::of(None).stamp(), "{}");
        assert_eq!(References::of(Some(&json!({}))), References::default());
        let mut v = crate::api::AppVersion::new(
            "v",
            crate::api::AppVersionSpec {
                app: "crm".into(),
                version_name: "v".into(),
                description: None,
                environment: "development".into(),
                definition: None,
                requires: None,
            },
        );
        assert_eq!(References::stamped(&v), None, "unstamped");
        for (stamp, read) in [
            (refs.stamp(), Some(refs.clone())),
            ("{}".to_string(), Some(References::default())),
            ("not json".to_string(), None),
            (r#"{"constants":["A"],"other":[]}"#.to_string(), None),
        ] {
            v.metadata.annotations = Some(
                [(crate::api::REFERENCES_ANNOTATION.to_string(), stamp)]
                    .into_iter()
                    .collect(),
            );
            assert_eq!(References::stamped(&v), read);
        }
    }
}
