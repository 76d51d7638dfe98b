//! The CRDs against the real kube-apiserver: they install, the examples apply, `kubectl explain`
//! documents them, defaults apply, free-form JSON survives, and invalid input is rejected with a
//! message that names the field, with nothing stored.

mod support;

use std::path::Path;

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};

fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "ToolJetApp" => "tooljetapps",
        "AppVersion" => "appversions",
        "EnvironmentConfig" => "environmentconfigs",
        other => panic!("unknown kind {other}"),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tooljet.io", "v1alpha1", kind),
        plural,
    )
}

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &resource(kind))
}

fn manifest(ns: &str, kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "tooljet.io/v1alpha1",
        "kind": kind,
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    })
}

fn message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    }
}

/// Server-side apply, strict field validation: what `kubectl apply --server-side` does.
async fn apply(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, String> {
    api(client, ns, kind)
        .patch(
            name,
            &PatchParams::apply("tests").validation_strict(),
            &Patch::Apply(&manifest(ns, kind, name, spec)),
        )
        .await
        .map_err(message)
}

/// POST with strict field validation: what `kubectl create` and client-side `kubectl apply` do.
async fn create(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, String> {
    let url = format!(
        "/apis/tooljet.io/v1alpha1/namespaces/{ns}/{}?fieldValidation=Strict",
        resource(kind).plural
    );
    let body = serde_json::to_vec(&manifest(ns, kind, name, spec)).unwrap();
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    client
        .request::<DynamicObject>(request)
        .await
        .map_err(message)
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Create,
    ServerSideApply,
}

fn app_spec() -> Value {
    json!({ "displayName": "CRM", "environments": ["development", "staging", "production"] })
}

fn version_spec() -> Value {
    json!({ "app": "crm", "versionName": "v1", "environment": "development" })
}

fn config_spec() -> Value {
    json!({
        "environment": "development",
        "app": "crm",
        "dataSources": [{
            "name": "crm-db", "kind": "postgresql",
            "options": { "host": "db", "port": 5432 },
            "secretOptions": { "password": { "secretKeyRef": { "name": "db", "key": "password" } } },
        }],
        "constants": [
            { "name": "API_URL", "type": "Global", "value": "https://api" },
            { "name": "STRIPE_KEY", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "db", "key": "stripe" } } },
        ],
    })
}

/// Sets `pointer` (a JSON pointer into the spec) to `value`.
fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut spec
    } else {
        spec.pointer_mut(parent).unwrap()
    };
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("cannot set {pointer}"),
    }
    spec
}

fn without(mut spec: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut spec
    } else {
        spec.pointer_mut(parent).unwrap()
    };
    target.as_object_mut().unwrap().remove(key);
    spec
}

struct Invalid {
    via: Via,
    kind: &'static str,
    what: &'static str,
    spec: Value,
    /// Substrings the apiserver's message must contain: the field path and the rule.
    expect: &'static [&'static str],
}

fn invalid_manifests() -> Vec<Invalid> {
    let long_stages: Vec<String> = (0..11).map(|i| format!("s{i}")).collect();
    vec![
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "one-stage pipeline",
            spec: with(app_spec(), "/environments", json!(["production"])),
            expect: &["spec.environments", "at least 2 items"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "eleven-stage pipeline",
            spec: with(app_spec(), "/environments", json!(long_stages)),
            expect: &["spec.environments", "at most 10 items"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "duplicate stage",
            spec: with(
                app_spec(),
                "/environments",
                json!(["development", "qa", "qa", "production"]),
            ),
            expect: &["spec.environments", "stage names must be unique"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "stage not a DNS label",
            spec: with(
                app_spec(),
                "/environments",
                json!(["development", "Staging"]),
            ),
            expect: &["spec.environments", "must be a DNS label"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "stage name too long",
            spec: with(
                app_spec(),
                "/environments",
                json!(["development", "s".repeat(64)]),
            ),
            expect: &["spec.environments[1]", "Too long"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "rollout for a stage outside the pipeline",
            spec: with(
                app_spec(),
                "/rollout",
                json!([{ "environment": "qa", "deployments": ["tj"] }]),
            ),
            expect: &["spec.rollout", "must name a stage of spec.environments"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "rollout naming no workload",
            spec: with(
                app_spec(),
                "/rollout",
                json!([{ "environment": "staging" }]),
            ),
            expect: &[
                "spec.rollout[0]",
                "name the workloads with deployments, selector or both",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "rollout listing a stage twice",
            spec: with(
                app_spec(),
                "/rollout",
                json!([{ "environment": "staging", "deployments": ["a"] }, { "environment": "staging", "deployments": ["b"] }]),
            ),
            expect: &["spec.rollout[1]", "Duplicate value"],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "release of an invalid version name",
            spec: with(app_spec(), "/release", json!({ "version": "CRM V4" })),
            expect: &[
                "spec.release.version",
                "must be the metadata.name of an AppVersion",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "ToolJetApp",
            what: "unknown field",
            spec: with(app_spec(), "/pipeline", json!(["a", "b"])),
            expect: &["spec.pipeline", "unknown field"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "missing app",
            spec: without(version_spec(), "/app"),
            expect: &["spec.app", "Required value"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "app not an object name",
            spec: with(version_spec(), "/app", json!("CRM App")),
            expect: &["spec.app", "must be the metadata.name of a ToolJetApp"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "missing versionName",
            spec: without(version_spec(), "/versionName"),
            expect: &["spec.versionName", "Required value"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "versionName over 25 characters",
            spec: with(version_spec(), "/versionName", json!("v".repeat(26))),
            expect: &["spec.versionName", "Too long", "25"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "blank versionName",
            spec: with(version_spec(), "/versionName", json!("   ")),
            expect: &["spec.versionName", "must not be blank"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "environment not a stage name",
            spec: with(version_spec(), "/environment", json!("Prod!")),
            expect: &["spec.environment", "must be a stage name"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "definition not an object",
            spec: with(version_spec(), "/definition", json!("pages: []")),
            expect: &["spec.definition", "must be of type object"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "required constant with an invalid name",
            spec: with(
                version_spec(),
                "/requires",
                json!({ "constants": ["1BAD-NAME"] }),
            ),
            expect: &["spec.requires.constants", "must be a constant name"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "required data source listed twice",
            spec: with(
                version_spec(),
                "/requires",
                json!({ "dataSources": ["db", "db"] }),
            ),
            expect: &["spec.requires.dataSources[1]", "Duplicate value"],
        },
        Invalid {
            via: Via::Create,
            kind: "AppVersion",
            what: "description over 1000 characters",
            spec: with(version_spec(), "/description", json!("d".repeat(1001))),
            expect: &["spec.description", "Too long"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "missing environment",
            spec: without(config_spec(), "/environment"),
            expect: &["spec.environment", "Required value"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "constant name with a dash",
            spec: with(config_spec(), "/constants/0/name", json!("API-URL")),
            expect: &["spec.constants[0].name", "must be letters, digits and '_'"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "constant name over 50 characters",
            spec: with(config_spec(), "/constants/0/name", json!("A".repeat(51))),
            expect: &["spec.constants[0].name", "Too long"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "Global constant without a value",
            spec: with(
                config_spec(),
                "/constants/0",
                json!({ "name": "API_URL", "type": "Global" }),
            ),
            expect: &[
                "spec.constants[0]",
                "a Global constant takes its value in value",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "Global constant with an empty value",
            spec: with(config_spec(), "/constants/0/value", json!("")),
            expect: &["spec.constants[0].value", "at least 1 chars long"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "Global constant over 10000 characters",
            spec: with(
                config_spec(),
                "/constants/0/value",
                json!("x".repeat(10001)),
            ),
            expect: &["spec.constants[0].value", "Too long"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "Secret constant with an inline value",
            spec: with(
                config_spec(),
                "/constants/1",
                json!({ "name": "STRIPE_KEY", "type": "Secret", "value": "sk_live_inline" }),
            ),
            expect: &[
                "spec.constants[1]",
                "a Secret constant must not have an inline value",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "Secret constant with both value and valueFrom",
            spec: with(config_spec(), "/constants/1/value", json!("sk_live_inline")),
            expect: &["spec.constants[1]", "must not have an inline value"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "unknown constant type",
            spec: with(config_spec(), "/constants/0/type", json!("Plain")),
            expect: &[
                "spec.constants[0].type",
                "Unsupported value",
                "\"Global\", \"Secret\"",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "constant defined twice",
            spec: with(
                config_spec(),
                "/constants/1",
                json!({ "name": "API_URL", "type": "Global", "value": "x" }),
            ),
            expect: &["spec.constants[1]", "Duplicate value"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "secret option given inline",
            spec: with(
                config_spec(),
                "/dataSources/0/secretOptions/password",
                json!("hunter2"),
            ),
            expect: &[
                "spec.dataSources[0].secretOptions.password",
                "must be of type object",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "secret option as a value field",
            spec: with(
                config_spec(),
                "/dataSources/0/secretOptions/password",
                json!({ "value": "hunter2" }),
            ),
            expect: &["unknown field \"spec.dataSources[0].secretOptions.password.value\""],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "secretKeyRef naming an invalid Secret",
            spec: with(
                config_spec(),
                "/dataSources/0/secretOptions/password/secretKeyRef/name",
                json!("My_Secret"),
            ),
            expect: &[
                "spec.dataSources[0].secretOptions[password].secretKeyRef.name",
                "must be the name of a Secret",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "secretKeyRef without a key",
            spec: with(
                config_spec(),
                "/constants/1/valueFrom/secretKeyRef",
                json!({ "name": "db" }),
            ),
            expect: &[
                "spec.constants[1].valueFrom.secretKeyRef.key",
                "Required value",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "data source kind in capitals",
            spec: with(config_spec(), "/dataSources/0/kind", json!("PostgreSQL")),
            expect: &[
                "spec.dataSources[0].kind",
                "must be a ToolJet data source kind in lowercase",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "data source defined twice",
            spec: with(
                config_spec(),
                "/dataSources",
                json!([{ "name": "db", "kind": "postgresql" }, { "name": "db", "kind": "mysql" }]),
            ),
            expect: &["spec.dataSources[1]", "Duplicate value"],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "data source name with a space",
            spec: with(config_spec(), "/dataSources/0/name", json!("crm db")),
            expect: &["spec.dataSources[0].name", "must be letters, digits"],
        },
        Invalid {
            via: Via::ServerSideApply,
            kind: "EnvironmentConfig",
            what: "constant defined twice (server-side apply)",
            spec: with(
                config_spec(),
                "/constants/1",
                json!({ "name": "API_URL", "type": "Global", "value": "x" }),
            ),
            expect: &[
                ".spec.constants",
                "duplicate entries for key [name=\"API_URL\"]",
            ],
        },
        Invalid {
            via: Via::ServerSideApply,
            kind: "EnvironmentConfig",
            what: "secret option given inline (server-side apply)",
            spec: with(
                config_spec(),
                "/dataSources/0/secretOptions/password",
                json!("hunter2"),
            ),
            expect: &[
                ".spec.dataSources[name=\"crm-db\"].secretOptions.password",
                "expected map",
            ],
        },
        Invalid {
            via: Via::ServerSideApply,
            kind: "ToolJetApp",
            what: "unknown field (server-side apply)",
            spec: with(app_spec(), "/pipeline", json!(["a", "b"])),
            expect: &[".spec.pipeline", "field not declared in schema"],
        },
        Invalid {
            via: Via::ServerSideApply,
            kind: "AppVersion",
            what: "blank versionName (server-side apply)",
            spec: with(version_spec(), "/versionName", json!(" ")),
            expect: &["spec.versionName", "must not be blank"],
        },
        Invalid {
            via: Via::ServerSideApply,
            kind: "EnvironmentConfig",
            what: "Secret constant with an inline value (server-side apply)",
            spec: with(
                config_spec(),
                "/constants/1",
                json!({ "name": "STRIPE_KEY", "type": "Secret", "value": "sk_live_inline" }),
            ),
            expect: &[
                "spec.constants[1]",
                "a Secret constant must not have an inline value",
            ],
        },
        Invalid {
            via: Via::Create,
            kind: "EnvironmentConfig",
            what: "app not an object name",
            spec: with(config_spec(), "/app", json!("CRM")),
            expect: &["spec.app", "must be the metadata.name of a ToolJetApp"],
        },
    ]
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_field_and_fix_and_nothing_is_stored() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "invalid").await;

    let cases = invalid_manifests();
    assert!(cases.len() >= 25);
    let mut failures = vec![];
    for (i, case) in cases.iter().enumerate() {
        let name = format!("case-{i}");
        let result = match case.via {
            Via::Create => create(&client, &ns, case.kind, &name, case.spec.clone()).await,
            Via::ServerSideApply => apply(&client, &ns, case.kind, &name, case.spec.clone()).await,
        };
        match result {
            Ok(_) => failures.push(format!(
                "{} ({}, {:?}): accepted",
                case.what, case.kind, case.via
            )),
            Err(message) => {
                let missing: Vec<_> = case
                    .expect
                    .iter()
                    .filter(|e| !message.contains(*e))
                    .collect();
                if !missing.is_empty() {
                    failures.push(format!(
                        "{} ({}): message lacks {missing:?}: {message}",
                        case.what, case.kind
                    ));
                }
            }
        }
        let stored = api(&client, &ns, case.kind).get_opt(&name).await.unwrap();
        if stored.is_some() {
            failures.push(format!(
                "{} ({}): the object was stored",
                case.what, case.kind
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_valid_baselines_are_accepted_and_defaults_apply() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "valid").await;

    apply(&client, &ns, "ToolJetApp", "crm", app_spec())
        .await
        .unwrap();
    apply(&client, &ns, "AppVersion", "crm-v1", version_spec())
        .await
        .unwrap();
    apply(&client, &ns, "EnvironmentConfig", "crm-dev", config_spec())
        .await
        .unwrap();

    let app = apply(&client, &ns, "ToolJetApp", "defaults", json!({}))
        .await
        .unwrap();
    assert_eq!(
        app.data["spec"]["environments"],
        json!(["development", "staging", "production"])
    );
    let version = apply(
        &client,
        &ns,
        "AppVersion",
        "defaults",
        without(version_spec(), "/environment"),
    )
    .await
    .unwrap();
    assert_eq!(version.data["spec"]["environment"], "development");
    let custom = apply(
        &client,
        &ns,
        "ToolJetApp",
        "custom",
        json!({ "environments": ["dev", "qa", "uat", "prod"] }),
    )
    .await
    .unwrap();
    assert_eq!(
        custom.data["spec"]["environments"],
        json!(["dev", "qa", "uat", "prod"])
    );
}

#[tokio::test]
async fn immutable_fields_cannot_change_and_the_stored_object_is_kept() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "immutable").await;

    apply(&client, &ns, "AppVersion", "crm-v1", version_spec())
        .await
        .unwrap();
    let err = apply(
        &client,
        &ns,
        "AppVersion",
        "crm-v1",
        with(version_spec(), "/app", json!("billing")),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("spec.app") && err.contains("spec.app is immutable"),
        "{err}"
    );
    let stored = api(&client, &ns, "AppVersion").get("crm-v1").await.unwrap();
    assert_eq!(stored.data["spec"]["app"], "crm");

    apply(&client, &ns, "EnvironmentConfig", "crm-dev", config_spec())
        .await
        .unwrap();
    let retyped = with(
        config_spec(),
        "/constants/0",
        json!({ "name": "API_URL", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "db", "key": "url" } } }),
    );
    let err = apply(&client, &ns, "EnvironmentConfig", "crm-dev", retyped)
        .await
        .unwrap_err();
    assert!(
        err.contains("spec.constants[0].type") && err.contains("type is immutable"),
        "{err}"
    );
    let stored = api(&client, &ns, "EnvironmentConfig")
        .get("crm-dev")
        .await
        .unwrap();
    assert_eq!(stored.data["spec"]["constants"][0]["type"], "Global");
    assert_eq!(stored.data["spec"]["constants"][0]["value"], "https://api");
}

#[tokio::test]
async fn free_form_json_survives_the_apiserver_unpruned() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "roundtrip").await;

    let definition = json!({
        "pages": [{ "name": "Home", "components": [{ "type": "Table", "properties": { "rows": 10, "striped": true, "data": "{{queries.q.data}}" } }] }],
        "queries": [{ "name": "q", "dataSource": "db", "options": { "query": "select 1", "nested": { "deep": [1, 2.5, "three", false, { "x": {} }] } } }],
        "globalSettings": { "theme": { "mode": "dark" } },
    });
    let spec = with(version_spec(), "/definition", definition.clone());
    apply(&client, &ns, "AppVersion", "crm-v1", spec)
        .await
        .unwrap();
    let stored = api(&client, &ns, "AppVersion").get("crm-v1").await.unwrap();
    assert_eq!(stored.data["spec"]["definition"], definition);

    let options = json!({ "host": "db", "port": 5432, "ssl_enabled": true, "headers": [["X-Env", "dev"]], "tuning": { "pool": 5 } });
    let spec = with(config_spec(), "/dataSources/0/options", options.clone());
    apply(&client, &ns, "EnvironmentConfig", "crm-dev", spec)
        .await
        .unwrap();
    let stored = api(&client, &ns, "EnvironmentConfig")
        .get("crm-dev")
        .await
        .unwrap();
    assert_eq!(stored.data["spec"]["dataSources"][0]["options"], options);
}

#[tokio::test]
async fn examples_apply_and_kubectl_explains_and_lists_them() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    support::kubectl(&[
        "apply",
        "-f",
        &examples.join("namespace.yaml").display().to_string(),
    ])
    .unwrap();
    // The manifests (examples/sales-dashboard holds a ToolJet export, imported with the plugin,
    // and a merge patch: not manifests), and the export's credentials.
    support::kubectl(&["apply", "-f", &examples.display().to_string()]).unwrap();
    support::kubectl(&[
        "apply",
        "-f",
        &examples
            .join("sales-dashboard/credentials.yaml")
            .display()
            .to_string(),
    ])
    .unwrap();

    let listed = support::kubectl(&["get", "tooljet", "-n", "acme-workspace"]).unwrap();
    for name in [
        "tooljetapp.tooljet.io/crm",
        "appversion.tooljet.io/crm-v1",
        "appversion.tooljet.io/crm-v2",
        "environmentconfig.tooljet.io/crm-production",
    ] {
        assert!(
            listed.contains(name),
            "`kubectl get tooljet` lacks {name}:\n{listed}"
        );
    }
    let versions = support::kubectl(&["get", "tjv", "-n", "acme-workspace"]).unwrap();
    let header: Vec<&str> = versions
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "APP", "VERSION", "ENVIRONMENT", "READY", "AGE"]
    );
    let configs = support::kubectl(&["get", "tjenv", "-n", "acme-workspace"]).unwrap();
    assert!(
        configs.lines().next().unwrap().contains("DATA SOURCES"),
        "{configs}"
    );

    let explained = support::kubectl(&["explain", "appversion.spec"]).unwrap();
    for text in [
        "Name of the ToolJetApp",
        "Display name of the version",
        "The app definition",
        "versionName",
    ] {
        assert!(
            explained.contains(text),
            "`kubectl explain appversion.spec` lacks {text:?}:\n{explained}"
        );
    }
    let explained =
        support::kubectl(&["explain", "environmentconfig.spec.constants.valueFrom"]).unwrap();
    assert!(explained.contains("secretKeyRef"), "{explained}");
}

/// The operator writes statuses asking for the object's metadata only in the answer: the real
/// apiserver applies the status and sends back no spec (an AppVersion's definition stays home).
#[tokio::test]
async fn a_status_write_is_answered_with_metadata_only() {
    use tooljet_operator::{api::AppVersion, controller::status_apply_request};
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "status-answer").await;
    let definition =
        json!({ "pages": [{ "name": "Home", "components": [{ "text": "x".repeat(20_000) }] }] });
    let spec = with(version_spec(), "/definition", definition.clone());
    apply(&client, &ns, "AppVersion", "crm-v1", spec)
        .await
        .unwrap();

    let body = json!({
        "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
        "status": { "environment": "development", "observedGeneration": 1 },
    });
    let request = status_apply_request::<AppVersion>(&ns, "crm-v1", &body).unwrap();
    let answer: Value = client.request(request).await.unwrap();
    assert_eq!(answer["kind"], "PartialObjectMetadata", "{answer:#}");
    assert_eq!(answer["metadata"]["name"], "crm-v1");
    assert!(answer.get("spec").is_none() && answer.get("status").is_none());
    assert!(
        answer.to_string().len() < 5_000,
        "the answer carries more than metadata: {} bytes",
        answer.to_string().len()
    );

    let stored = api(&client, &ns, "AppVersion").get("crm-v1").await.unwrap();
    assert_eq!(
        stored.data["status"]["observedGeneration"], 1,
        "the status was written"
    );
    assert_eq!(stored.data["spec"]["definition"], definition);
}
