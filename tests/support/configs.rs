//! A namespace's worth of EnvironmentConfigs, each referencing a Secret of its own: the backlog
//! the tests that count the operator's requests or connections start it on.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tooljet_operator::api::EnvironmentConfig;

/// Creates `count` production configs `app-<i>` in `ns` (as `test-user`, server-side apply):
/// one REST API data source whose `token` is key `token` of Secret `creds-<i>` (created first,
/// value `t-<i>`), and one Global constant `N` = `i`.
pub async fn referencing(client: &Client, ns: &str, count: usize) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let configs: Api<EnvironmentConfig> = Api::namespaced(client.clone(), ns);
    let apply = PatchParams::apply("test-user");
    for i in 0..count {
        let secret = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": format!("creds-{i}") }, "stringData": { "token": format!("t-{i}") } });
        secrets
            .patch(&format!("creds-{i}"), &apply, &Patch::Apply(&secret))
            .await
            .unwrap();
        let config = json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
            "metadata": { "name": format!("app-{i}") },
            "spec": {
                "app": format!("app-{i}"), "environment": "production",
                "dataSources": [{ "name": "api", "kind": "restapi", "options": { "url": "https://api" },
                                  "secretOptions": { "token": { "secretKeyRef": { "name": format!("creds-{i}"), "key": "token" } } } }],
                "constants": [{ "name": "N", "type": "Global", "value": i.to_string() }],
            },
        });
        configs
            .patch(&format!("app-{i}"), &apply, &Patch::Apply(&config))
            .await
            .unwrap();
    }
}

/// How many of `list` report Ready at their current generation.
pub fn ready(list: &[EnvironmentConfig]) -> usize {
    list.iter()
        .filter(|c| {
            c.status.as_ref().is_some_and(|s| {
                s.observed_generation == c.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count()
}
