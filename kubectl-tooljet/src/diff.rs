//! `diff STAGE_A STAGE_B [--app APP]`: which data sources and constants exist in one stage and
//! not the other, and which differ — by name and content hash, never by value.
//!
//! Without `--app` the workspace-wide configurations are compared; with it, what the app's
//! versions get in each stage (workspace-wide entries overridden by the app's, as the operator
//! merges them). An entry's hash covers its configuration (kind, plain options, Secret
//! references; a constant's type and value or reference), not the values inside referenced
//! Secrets, which the plugin never reads.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tooljet_operator::api::EnvironmentConfig;

use crate::{
    cluster::Cluster,
    error::{Error, Result},
    output::{self, Format},
};

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Diff {
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub stages: [String; 2],
    pub entries: Vec<DiffEntry>,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiffEntry {
    /// dataSource or constant.
    pub kind: &'static str,
    pub name: String,
    /// same, differs, onlyIn<A>... : `same`, `differs`, `missingInA`, `missingInB`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_a: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_b: Option<String>,
}

/// The effective entries of `stage` for `app` (None: workspace-wide only): (kind, name) -> hash.
pub fn effective(
    configs: &[EnvironmentConfig],
    stage: &str,
    app: Option<&str>,
) -> BTreeMap<(&'static str, String), String> {
    let mut out = BTreeMap::new();
    // Workspace-wide first, so the app's entries override them.
    let scoped = |c: &&EnvironmentConfig| c.spec.environment == stage;
    let layers = configs
        .iter()
        .filter(scoped)
        .filter(|c| c.spec.app.is_none())
        .chain(
            configs
                .iter()
                .filter(scoped)
                .filter(|c| app.is_some() && c.spec.app.as_deref() == app),
        );
    for c in layers {
        for ds in &c.spec.data_sources {
            out.insert(
                ("dataSource", ds.name.clone()),
                hash(&serde_json::json!({
                    "kind": ds.kind, "options": ds.options, "secretOptions": ds.secret_options,
                })),
            );
        }
        for k in &c.spec.constants {
            out.insert(
                ("constant", k.name.clone()),
                hash(&serde_json::json!({
                    "type": k.type_, "value": k.value, "valueFrom": k.value_from,
                })),
            );
        }
    }
    out
}

fn hash(v: &serde_json::Value) -> String {
    // serde_json maps are sorted: the encoding is canonical.
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The comparison. Pure.
pub fn diff(
    namespace: &str,
    configs: &[EnvironmentConfig],
    a: &str,
    b: &str,
    app: Option<&str>,
) -> Diff {
    let left = effective(configs, a, app);
    let right = effective(configs, b, app);
    let mut keys: Vec<_> = left.keys().chain(right.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    let entries = keys
        .into_iter()
        .map(|key| {
            let (ha, hb) = (left.get(&key).cloned(), right.get(&key).cloned());
            let state = match (&ha, &hb) {
                (Some(x), Some(y)) if x == y => "same",
                (Some(_), Some(_)) => "differs",
                (None, _) => "missingInA",
                (_, None) => "missingInB",
            };
            DiffEntry {
                kind: key.0,
                name: key.1,
                state,
                hash_a: ha,
                hash_b: hb,
            }
        })
        .collect();
    Diff {
        namespace: namespace.into(),
        app: app.map(str::to_string),
        stages: [a.into(), b.into()],
        entries,
    }
}

pub async fn run(
    cluster: &Cluster,
    a: &str,
    b: &str,
    app: Option<&str>,
    format: Format,
) -> Result<()> {
    if let Some(app) = app {
        cluster.app(app).await?;
    }
    let configs = cluster.list_configs(&cluster.namespace).await?;
    for stage in [a, b] {
        if !configs.iter().any(|c| c.spec.environment == stage) {
            return Err(Error::NotFound(format!(
                "no EnvironmentConfig configures stage {stage} in namespace {}",
                cluster.namespace
            )));
        }
    }
    let d = diff(&cluster.namespace, &configs, a, b, app);
    output::print(format, &d, |d| {
        let label = |s: &str| match s {
            "missingInA" => format!("only in {}", d.stages[1]),
            "missingInB" => format!("only in {}", d.stages[0]),
            other => other.to_string(),
        };
        output::table(
            &["kind", "name", "state", &d.stages[0], &d.stages[1]],
            d.entries.iter().map(|e| {
                [
                    e.kind.to_string(),
                    e.name.clone(),
                    label(e.state),
                    e.hash_a.clone().unwrap_or_else(|| "-".into()),
                    e.hash_b.clone().unwrap_or_else(|| "-".into()),
                ]
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(stage: &str, app: Option<&str>, spec: serde_json::Value) -> EnvironmentConfig {
        let mut spec = spec;
        spec["environment"] = json!(stage);
        if let Some(a) = app {
            spec["app"] = json!(a);
        }
        serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
            "metadata": { "name": format!("{stage}-{}", app.unwrap_or("ws")) }, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn entries_are_compared_by_name_and_hash_and_values_never_show() {
        let configs = [
            config(
                "staging",
                None,
                json!({ "constants": [{ "name": "API_URL", "type": "Global", "value": "https://staging-canary-1" }] }),
            ),
            config(
                "production",
                None,
                json!({ "constants": [{ "name": "API_URL", "type": "Global", "value": "https://prod-canary-2" }] }),
            ),
            config(
                "staging",
                Some("crm"),
                json!({ "dataSources": [{ "name": "db", "kind": "postgresql", "options": { "host": "a" } }],
                                                "constants": [{ "name": "ONLY_STG", "type": "Global", "value": "x" }] }),
            ),
            config(
                "production",
                Some("crm"),
                json!({ "dataSources": [{ "name": "db", "kind": "postgresql", "options": { "host": "a" } }],
                                                   "constants": [{ "name": "API_URL", "type": "Global", "value": "https://staging-canary-1" }] }),
            ),
        ];
        let d = diff("ns", &configs, "staging", "production", Some("crm"));
        let states: Vec<_> = d
            .entries
            .iter()
            .map(|e| (e.kind, e.name.as_str(), e.state))
            .collect();
        assert_eq!(
            states,
            [
                ("constant", "API_URL", "same"),
                ("constant", "ONLY_STG", "missingInB"),
                ("dataSource", "db", "same")
            ],
            "the app's API_URL in production overrides the workspace's and equals staging's"
        );
        let workspace = diff("ns", &configs, "staging", "production", None);
        assert_eq!(workspace.entries.len(), 1);
        assert_eq!(workspace.entries[0].state, "differs");
        let text = serde_json::to_string(&workspace).unwrap();
        assert!(!text.contains("canary"), "no value in the output: {text}");
    }
}
