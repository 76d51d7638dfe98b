//! AppVersion definitions of a real ToolJet app's shape and of any size, for tests and
//! benchmarks: a ToolJet export from the repository (`kubectl-tooljet/tests/fixtures/`) whose
//! components, queries and events are repeated, each copy with its own ids, until the definition
//! reaches the size asked for. The same arguments give the same definition.

use serde_json::Value;

/// The real ToolJet exports the definitions are grown from.
const EXPORTS: [&str; 3] = [
    include_str!(
        "../../kubectl-tooljet/tests/fixtures/business-intelligence-dashboard-postgresql.json"
    ),
    include_str!("../../kubectl-tooljet/tests/fixtures/ai-powered-code-explainer.json"),
    include_str!("../../kubectl-tooljet/tests/fixtures/base64-encoder-decoder.json"),
];

/// The parts of an `appV2` that grow with an app: one entry per component, query or event.
const GROWING: [&str; 3] = ["components", "dataQueries", "events"];

/// A definition (`{"appV2": {...}}`, an export's `app[0].definition`) of at least `bytes` bytes
/// serialized and at most one repeated entry more, grown from export number `seed` (modulo the
/// number of exports).
pub fn realistic(bytes: usize, seed: usize) -> Value {
    let export: Value =
        serde_json::from_str(EXPORTS[seed % EXPORTS.len()]).expect("fixtures are JSON");
    let mut definition = export["app"][0]["definition"].clone();
    let app = definition["appV2"]
        .as_object_mut()
        .expect("an appV2 export");
    let originals: Vec<(&str, Vec<Value>)> = GROWING
        .iter()
        .filter_map(|k| Some((*k, app.get(*k)?.as_array()?.clone())))
        .filter(|(_, items)| !items.is_empty())
        .collect();
    let mut size = serde_json::to_vec(&definition)
        .map(|b| b.len())
        .unwrap_or(0);
    let mut copy = 0usize;
    'grow: while size < bytes {
        copy += 1;
        for (key, items) in &originals {
            for item in items {
                let renamed = with_ids_suffixed(item, copy);
                size += serde_json::to_vec(&renamed)
                    .map(|b| b.len() + 1)
                    .unwrap_or(0);
                definition["appV2"][*key]
                    .as_array_mut()
                    .expect("an array")
                    .push(renamed);
                if size >= bytes {
                    break 'grow;
                }
            }
        }
    }
    definition
}

/// `value` with every `id`-like string field (`id`, `*Id`) suffixed with `-copy`.
fn with_ids_suffixed(value: &Value, copy: usize) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) if k == "id" || k.ends_with("Id") => {
                            Value::String(format!("{s}-{copy}"))
                        }
                        other => with_ids_suffixed(other, copy),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| with_ids_suffixed(i, copy)).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_has_the_size_asked_for_and_the_export_shape() {
        for (bytes, seed) in [(1024, 0), (40 * 1024, 1), (200 * 1024, 2), (1000 * 1024, 0)] {
            let d = realistic(bytes, seed);
            let size = serde_json::to_vec(&d).unwrap().len();
            assert!(size >= bytes, "{size} < {bytes}");
            assert!(size < bytes + 64 * 1024, "{size} much larger than {bytes}");
            assert!(d["appV2"]["components"].as_array().unwrap().len() >= 2);
            assert_eq!(d, realistic(bytes, seed), "deterministic");
        }
        let d = realistic(100 * 1024, 0);
        let ids: Vec<&str> = d["appV2"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
        assert_eq!(ids.len(), unique.len(), "every copy has its own ids");
    }
}
