//! The environment boundary on every door, as the real kube-apiserver calls the webhook, with the
//! shipped ClusterRoles and impersonated users: stage configuration, Secret references (no
//! confused deputy), pipelines, rollouts and releases. Each door both ways: denied without the
//! verb, with a message the test asserts on and nothing changed; allowed with it.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use support::admission::{WAIT, Workspace, denied, msg};

const CANARY: &str = "canary-db-admin-password-4f1c";

/// New RBAC bindings take effect once the apiserver's informer has them: retry until allowed.
async fn until_allowed(what: &str, attempt: impl AsyncFn() -> Result<Value, String>) {
    support::eventually(WAIT, what, || async { attempt().await.ok().map(|_| ()) }).await;
}

async fn put_secret(w: &Workspace, name: &str, key: &str, value: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": name }, "stringData": { key: value },
    }))
    .unwrap();
    Api::<Secret>::namespaced(w.admin.clone(), &w.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

async fn secret_text(w: &Workspace, name: &str) -> String {
    Api::<Secret>::namespaced(w.admin.clone(), &w.ns)
        .get_opt(name)
        .await
        .unwrap()
        .map(|s| {
            s.data
                .unwrap_or_default()
                .values()
                .map(|v| String::from_utf8_lossy(&v.0).to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

async fn create_config(
    w: &Workspace,
    client: &Client,
    name: &str,
    spec: Value,
) -> Result<Value, String> {
    w.create(client, "EnvironmentConfig", name, spec)
        .await
        .map(|o| o.data)
}

#[tokio::test]
async fn a_developer_cannot_have_the_operator_read_a_secret_for_them() {
    let w = Workspace::new("deputy").await;
    put_secret(&w, "db-admin", "password", CANARY).await;
    let reference = json!({ "environment": "development",
        "dataSources": [{ "name": "pg", "kind": "postgresql", "options": { "host": "db" },
                          "secretOptions": { "password": { "secretKeyRef": { "name": "db-admin", "key": "password" } } } }] });

    denied(
        w.create(&w.alice, "EnvironmentConfig", "ws-dev", reference.clone())
            .await,
        "user alice may not reference Secret db-admin (key password) from EnvironmentConfig ws-dev: \
         spec.dataSources[pg].secretOptions.password.secretKeyRef makes the operator copy that value into the \
         stage's configuration, which needs verb get on resource secrets named db-admin (group core)",
    );
    // A Secret constant is a reference too.
    denied(
        w.create(&w.alice, "EnvironmentConfig", "ws-dev", json!({ "environment": "development",
            "constants": [{ "name": "DB", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "db-admin", "key": "password" } } }] }))
            .await,
        "spec.constants[DB].valueFrom.secretKeyRef makes the operator copy that value",
    );
    assert!(w.get("EnvironmentConfig", "ws-dev").await.is_none());
    assert!(
        !secret_text(&w, "tooljet.development")
            .await
            .contains(CANARY)
    );

    // Adding the reference to an existing config is the same door.
    create_config(
        &w,
        &w.alice,
        "ws-dev",
        json!({ "environment": "development" }),
    )
    .await
    .unwrap();
    denied(
        w.merge(
            &w.alice,
            "EnvironmentConfig",
            "ws-dev",
            json!({ "spec": reference.clone() }),
        )
        .await,
        "may not reference Secret db-admin (key password)",
    );

    // Whoever may read the Secret may reference it.
    w.grant(
        "alice",
        "alice-reads-db-admin",
        json!([{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["db-admin"] }]),
    )
    .await;
    until_allowed("alice may reference db-admin", async || {
        w.merge(
            &w.alice,
            "EnvironmentConfig",
            "ws-dev",
            json!({ "spec": reference.clone() }),
        )
        .await
        .map(|o| o.data)
    })
    .await;
    support::eventually(WAIT, "the referenced value materialised", || async {
        secret_text(&w, "tooljet.development")
            .await
            .contains(CANARY)
            .then_some(())
    })
    .await;
    // Neither the denials nor the materialisation leaked the value.
    let log = std::fs::read_to_string(support::shared_operator()).unwrap();
    assert!(log.contains("admission denied") && !log.contains(CANARY));
    let status = w.get("EnvironmentConfig", "ws-dev").await.unwrap().data["status"].to_string();
    assert!(!status.contains(CANARY));
}

#[tokio::test]
async fn a_developer_configures_development_and_nothing_past_it() {
    let w = Workspace::new("stagecfg").await;
    let alice = &w.alice;
    let before = w.get("EnvironmentConfig", "crm-production").await.unwrap();
    let prod_secret = secret_text(&w, "tooljet.production.crm").await;
    let needs = |verb: &str, name: &str, stage: &str| {
        format!(
            "user alice may not {verb} EnvironmentConfig {name}: configuring {stage} needs verb configure on \
             resource environments named {stage} (group tooljet.io) in namespace {}",
            w.ns
        )
    };

    // Create, change and delete in production: denied.
    denied(
        w.create(
            alice,
            "EnvironmentConfig",
            "ws-prod",
            json!({ "environment": "production",
            "constants": [{ "name": "API_URL", "type": "Global", "value": "https://evil" }] }),
        )
        .await,
        &needs("create", "ws-prod", "production"),
    );
    denied(
        w.merge(alice, "EnvironmentConfig", "crm-production",
            json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": "https://evil" }] } }))
            .await,
        &needs("change", "crm-production", "production"),
    );
    denied(
        w.api(alice, "EnvironmentConfig")
            .delete("crm-production", &DeleteParams::default())
            .await
            .map(|_| before.clone())
            .map_err(msg),
        &needs("delete", "crm-production", "production"),
    );
    denied(
        w.merge(alice, "EnvironmentConfig", "crm-staging",
            json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": "https://evil" }] } }))
            .await,
        &needs("change", "crm-staging", "staging"),
    );
    // Moving the development config into production needs production too.
    denied(
        w.merge(
            alice,
            "EnvironmentConfig",
            "crm-development",
            json!({ "spec": { "environment": "production", "app": "billing" } }),
        )
        .await,
        &needs("change", "crm-development", "production"),
    );
    // Making it owned by something alice may delete would let the garbage collector delete it.
    denied(
        w.merge(alice, "EnvironmentConfig", "crm-production",
            json!({ "metadata": { "ownerReferences": [{ "apiVersion": "v1", "kind": "ConfigMap", "name": "mine", "uid": "0b3e0f6a-0000-4000-8000-000000000000" }] } }))
            .await,
        &needs("change", "crm-production", "production"),
    );
    let after = w.get("EnvironmentConfig", "crm-production").await.unwrap();
    assert_eq!(after.data["spec"], before.data["spec"]);
    assert_eq!(secret_text(&w, "tooljet.production.crm").await, prod_secret);

    // Labels do not reach the stage: allowed.
    w.merge(
        alice,
        "EnvironmentConfig",
        "crm-production",
        json!({ "metadata": { "labels": { "team": "crm" } } }),
    )
    .await
    .unwrap();
    // Development is hers.
    w.merge(alice, "EnvironmentConfig", "crm-development",
        json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": "https://dev2" }] } }))
        .await
        .unwrap();
    w.create(
        alice,
        "EnvironmentConfig",
        "ws-dev",
        json!({ "environment": "development" }),
    )
    .await
    .unwrap();
    w.api(alice, "EnvironmentConfig")
        .delete("ws-dev", &DeleteParams::default())
        .await
        .unwrap();

    // An environment admin configures every stage.
    w.bind("erin", "tooljet-environment-admin").await;
    let erin = support::client_as("erin", &["environment-admins"]).await;
    until_allowed("erin configures production", async || {
        w.merge(&erin, "EnvironmentConfig", "crm-production",
            json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": "https://prod2" }] } }))
            .await
            .map(|o| o.data)
    })
    .await;
}

#[tokio::test]
async fn a_second_config_for_the_same_stage_is_refused_at_the_door() {
    let w = Workspace::new("rival").await;
    denied(
        w.create(
            &w.admin,
            "EnvironmentConfig",
            "crm-staging-2",
            json!({ "app": "crm", "environment": "staging",
            "constants": [{ "name": "API_URL", "type": "Global", "value": "https://rival" }] }),
        )
        .await,
        "EnvironmentConfig crm-staging-2 cannot configure app crm in staging: EnvironmentConfig crm-staging already \
         does (one per app or workspace and stage); edit crm-staging instead, or delete it first",
    );
    // Moving another config onto an occupied key is the same.
    w.create(
        &w.admin,
        "EnvironmentConfig",
        "billing-staging",
        json!({ "app": "billing", "environment": "staging" }),
    )
    .await
    .unwrap();
    denied(
        w.merge(
            &w.admin,
            "EnvironmentConfig",
            "billing-staging",
            json!({ "spec": { "app": "crm" } }),
        )
        .await,
        "EnvironmentConfig crm-staging already does",
    );
    // Workspace-wide and app-scoped configs of a stage are different keys.
    w.create(
        &w.admin,
        "EnvironmentConfig",
        "ws-staging",
        json!({ "environment": "staging" }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_release_manager_cannot_reshape_the_pipeline() {
    let w = Workspace::new("pipeline").await;
    let carol = &w.carol;
    let before = w.get("ToolJetApp", "crm").await.unwrap();
    // An app whose staging stage is empty: removing it would let a promoter skip it.
    w.create(&w.admin, "ToolJetApp", "billing", json!({}))
        .await
        .unwrap();
    let needs = |app: &str, what: &str| {
        format!(
            "user carol may not change {what} of ToolJetApp {app}: changing an app's pipeline, rollout or verification needs \
             verb configure on resource tooljetapps named {app} (group tooljet.io) in namespace {}",
            w.ns
        )
    };
    denied(
        w.merge(
            carol,
            "ToolJetApp",
            "billing",
            json!({ "spec": { "environments": ["development", "production"] } }),
        )
        .await,
        &needs("billing", "spec.environments"),
    );
    denied(
        w.merge(
            carol,
            "ToolJetApp",
            "billing",
            json!({ "spec": { "environments": ["production", "staging", "development"] } }),
        )
        .await,
        &needs("billing", "spec.environments"),
    );
    denied(
        w.merge(carol, "ToolJetApp", "crm",
            json!({ "spec": { "rollout": [{ "environment": "production", "deployments": ["web"] }] } }))
            .await,
        &needs("crm", "spec.rollout"),
    );
    // Switching automatic rollback on makes the operator release through closed windows: it is
    // configuring the app, as its rollout is.
    denied(
        w.merge(
            carol,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "verification": { "autoRollback": true } } }),
        )
        .await,
        &needs("crm", "spec.verification"),
    );
    assert_eq!(
        w.get("ToolJetApp", "crm").await.unwrap().data["spec"],
        before.data["spec"]
    );
    // An environment admin may; the rules about stages that hold versions still apply.
    w.bind("erin", "tooljet-environment-admin").await;
    let erin = support::client_as("erin", &["environment-admins"]).await;
    until_allowed("erin reshapes billing", async || {
        w.merge(
            &erin,
            "ToolJetApp",
            "billing",
            json!({ "spec": { "environments": ["development", "qa", "staging", "production"] } }),
        )
        .await
        .map(|o| o.data)
    })
    .await;
    denied(
        w.merge(
            &erin,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "environments": ["development", "production"] } }),
        )
        .await,
        "stage staging cannot be removed, it holds AppVersion v-stg",
    );
}

#[tokio::test]
async fn removing_a_release_needs_the_release_verb() {
    let w = Workspace::new("unrelease").await;
    w.merge(
        &w.carol,
        "ToolJetApp",
        "crm",
        json!({ "spec": { "release": { "version": "v-prod" } } }),
    )
    .await
    .unwrap();
    w.bind("dave", "tooljet-developer").await;
    w.grant(
        "dave",
        "dave-edits-apps",
        json!([{ "apiGroups": ["tooljet.io"], "resources": ["tooljetapps"], "verbs": ["get", "patch", "update"] }]),
    )
    .await;
    let dave = support::client_as("dave", &["developers"]).await;
    let refusal = support::eventually(WAIT, "dave's patch reaches the webhook", || async {
        w.merge(
            &dave,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": null } }),
        )
        .await
        .err()
        .filter(|m| m.contains("may not remove"))
    })
    .await;
    assert!(
        refusal.contains(&format!(
            "user dave may not remove the release of ToolJetApp crm: setting, changing or removing a release \
             needs verb release on resource environments named production (group tooljet.io) in namespace {}",
            w.ns
        )),
        "{refusal}"
    );
    assert_eq!(
        w.get("ToolJetApp", "crm").await.unwrap().data["spec"]["release"]["version"],
        "v-prod"
    );
    w.merge(
        &w.carol,
        "ToolJetApp",
        "crm",
        json!({ "spec": { "release": null } }),
    )
    .await
    .unwrap();
}

async fn deployment(w: &Workspace, name: &str, labels: Value) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "selector": { "matchLabels": { "app": name } },
                  "template": { "metadata": { "labels": { "app": name } },
                                "spec": { "containers": [{ "name": "c", "image": "tooljet/tooljet:ee-lts-latest" }] } } },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(w.admin.clone(), &w.ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rollout_reaches_only_deployments_the_requester_may_patch() {
    let w = Workspace::new("rollout").await;
    deployment(&w, "web", json!({ "tier": "production" })).await;
    deployment(&w, "worker", json!({ "tier": "production" })).await;
    deployment(&w, "payroll", json!({ "tier": "finance" })).await;
    w.bind("erin", "tooljet-environment-admin").await;
    let erin = support::client_as("erin", &["environment-admins"]).await;
    let rollout = |entries: Value| json!({ "spec": { "rollout": entries } });

    // Erin may configure the app but not patch Deployments.
    let refusal = support::eventually(WAIT, "erin's rollout reaches the webhook", || async {
        w.merge(
            &erin,
            "ToolJetApp",
            "crm",
            rollout(json!([{ "environment": "production", "deployments": ["payroll"] }])),
        )
        .await
        .err()
        .filter(|m| m.contains("may not name"))
    })
    .await;
    assert!(
        refusal.contains(
            "user erin may not name Deployment payroll in spec.rollout of ToolJetApp crm: the operator restarts it on \
             your behalf, which needs verb patch on resource deployments named payroll (group apps)"
        ),
        "{refusal}"
    );
    denied(
        w.merge(&erin, "ToolJetApp", "crm",
            rollout(json!([{ "environment": "production", "selector": { "matchLabels": { "tier": "production" } } }])))
            .await,
        "may not select Deployments by label in spec.rollout of ToolJetApp crm: a selector may select any Deployment \
         of the namespace, now or later, so it needs verb patch on every object of resource deployments (group apps)",
    );
    // Shapes refused for everyone.
    for (entries, expect) in [
        (
            json!([{ "environment": "production", "selector": {} }]),
            "spec.rollout entry for production: selector: an empty selector selects every Deployment",
        ),
        (
            json!([{ "environment": "production", "selector": { "matchExpressions": [{ "key": "tier", "operator": "exists" }] } }]),
            "has operator exists; use In, NotIn, Exists or DoesNotExist",
        ),
    ] {
        denied(
            w.merge(&w.admin, "ToolJetApp", "crm", rollout(entries))
                .await,
            expect,
        );
    }
    let untouched = Api::<Deployment>::namespaced(w.admin.clone(), &w.ns)
        .get("payroll")
        .await
        .unwrap();
    assert!(
        untouched
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .is_none(),
        "payroll was never stamped"
    );

    // With patch on web, erin may name web, and the operator stamps it.
    w.grant(
        "erin",
        "erin-patches-web",
        json!([{ "apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"], "resourceNames": ["web"] }]),
    )
    .await;
    until_allowed("erin names web", async || {
        w.merge(
            &erin,
            "ToolJetApp",
            "crm",
            rollout(json!([{ "environment": "production", "deployments": ["web"] }])),
        )
        .await
        .map(|o| o.data)
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), &w.ns);
    let stamped = |name: &'static str| {
        let deployments = deployments.clone();
        async move {
            deployments
                .get(name)
                .await
                .ok()
                .and_then(|d| d.spec?.template.metadata?.annotations)
                .is_some_and(|a| a.contains_key("tooljet.io/config-hash"))
        }
    };
    support::eventually(WAIT, "web stamped with production's hash", || async {
        stamped("web").await.then_some(())
    })
    .await;

    // Two selectors that are disjoint today; a Deployment created later matches both: it serves
    // both stages (one ToolJet server for several environments), each under its own names.
    w.merge(&w.admin, "ToolJetApp", "crm", rollout(json!([
        { "environment": "staging", "selector": { "matchLabels": { "ring": "canary" } } },
        { "environment": "production", "selector": { "matchLabels": { "tier": "production" } } },
    ])))
    .await
    .unwrap();
    deployment(
        &w,
        "late",
        json!({ "ring": "canary", "tier": "production" }),
    )
    .await;
    support::eventually(WAIT, "late stamped for both stages", || async {
        stamped("late").await.then_some(())
    })
    .await;
    assert!(stamped("worker").await, "the rest of the rollout goes on");
}

#[tokio::test]
async fn oversized_definitions_and_options_are_refused_with_the_bound() {
    let w = Workspace::new("sizes").await;
    let big = "x".repeat(1100 * 1024);
    denied(
        w.create(
            &w.alice,
            "AppVersion",
            "v-big",
            json!({ "app": "crm", "versionName": "big", "definition": { "blob": big } }),
        )
        .await,
        "AppVersion v-big: spec.definition is 1126411 bytes (at most 1048576)",
    );
    // A real app's shape just under the limit is stored, apiserver bookkeeping (managedFields)
    // included; its creator's next edit of the definition (their own edits in a row, which the
    // last-editor stamp alone would not send to the mutating webhook) is restamped.
    let max = tooljet_operator::webhook::limits::MAX_DEFINITION_BYTES;
    let near = testenv::definitions::realistic(max - 40 * 1024, 1);
    assert!(serde_json::to_vec(&near).unwrap().len() <= max);
    w.create(
        &w.alice,
        "AppVersion",
        "v-near",
        json!({ "app": "crm", "versionName": "near", "definition": near }),
    )
    .await
    .expect("a definition just under the limit is accepted");
    let mut edited = near.clone();
    edited["appV2"]["name"] = json!("edited {{constants.EDITED}}");
    let stored = w
        .merge(
            &w.alice,
            "AppVersion",
            "v-near",
            json!({ "spec": { "definition": edited } }),
        )
        .await
        .expect("edited by its creator");
    let references = stored.metadata.annotations.as_ref().unwrap()["tooljet.io/references"].clone();
    assert!(references.contains("EDITED"), "restamped: {references}");
    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({ "n": deep });
    }
    denied(
        w.merge(
            &w.alice,
            "AppVersion",
            "v-dev",
            json!({ "spec": { "definition": deep } }),
        )
        .await,
        "AppVersion v-dev: spec.definition nests 41 levels deep (at most 32)",
    );
    denied(
        w.create(&w.alice, "EnvironmentConfig", "ws-dev", json!({ "environment": "development",
            "dataSources": [{ "name": "api", "kind": "restapi", "options": { "headers": "h".repeat(20 * 1024) } }] }))
            .await,
        "EnvironmentConfig ws-dev: spec.dataSources[api].options is 20",
    );
}

#[tokio::test]
async fn owners_need_delete_and_never_reach_history_or_an_app_with_one() {
    let w = Workspace::new("owners").await;
    // dave may update versions and apps, not delete them.
    w.grant(
        "dave",
        "updaters",
        json!([{ "apiGroups": ["tooljet.io"], "resources": ["appversions", "tooljetapps"],
                 "verbs": ["get", "list", "watch", "update", "patch"] }]),
    )
    .await;
    let dave = support::client_as("dave", &[]).await;
    until_allowed("dave's role", || async {
        w.merge(
            &dave,
            "AppVersion",
            "v-dev",
            json!({ "metadata": { "labels": { "seen": "yes" } } }),
        )
        .await
        .map(|o| serde_json::to_value(o).unwrap())
    })
    .await;
    // A first-stage version: owners need delete on it (the garbage collector would delete it).
    denied(
        w.merge(
            &dave,
            "AppVersion",
            "v-dev",
            support::admission::gone_owner(),
        )
        .await,
        &format!(
            "user dave may not set or change metadata.ownerReferences of AppVersion v-dev: owners let the garbage \
             collector delete the object, so this needs verb delete on resource appversions named v-dev (group \
             tooljet.io) in namespace {}",
            w.ns
        ),
    );
    // A version past its first stage: never, even for an admin.
    denied(
        w.merge(
            &w.admin,
            "AppVersion",
            "v-stg",
            support::admission::gone_owner(),
        )
        .await,
        "AppVersion v-stg: metadata.ownerReferences cannot be set or changed: the garbage collector would delete \
         it once its owners are gone, and it is in staging",
    );
    // An app with versions past its first stage (the release manager patches apps): never. The
    // policy layer refuses first (carol may not delete apps); the webhook's reason is the stage.
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "crm",
            support::admission::gone_owner(),
        )
        .await,
        "may not set or change the ownerReferences or finalizers of ToolJetApp crm",
    );
    denied(
        w.merge(
            &w.admin,
            "ToolJetApp",
            "crm",
            support::admission::gone_owner(),
        )
        .await,
        "ToolJetApp crm: metadata.ownerReferences cannot be set or changed: the garbage collector would delete \
         it once its owners are gone, and it has versions past development",
    );
    // Nothing changed: both still there, without owners.
    for (kind, name) in [
        ("AppVersion", "v-dev"),
        ("AppVersion", "v-stg"),
        ("ToolJetApp", "crm"),
    ] {
        let obj = w
            .get(kind, name)
            .await
            .unwrap_or_else(|| panic!("{kind} {name} is gone"));
        assert!(obj.metadata.owner_references.unwrap_or_default().is_empty());
    }
    // The legitimate path: who may delete a first-stage version may give it an owner (the
    // garbage collector may then delete it, as its owner's deletion would).
    let owned = w
        .merge(
            &w.admin,
            "AppVersion",
            "v-dev",
            support::admission::gone_owner(),
        )
        .await
        .expect("an admin gives a first-stage version an owner");
    assert_eq!(owned.metadata.owner_references.unwrap().len(), 1);
}

#[tokio::test]
async fn a_version_held_by_a_finalizer_while_being_deleted_cannot_be_promoted() {
    let w = Workspace::new("finalizer").await;
    // A developer holds a first-stage version with a finalizer of their own, then deletes it.
    w.merge(
        &w.alice,
        "AppVersion",
        "v-dev",
        json!({ "metadata": { "finalizers": ["example.com/hold"] } }),
    )
    .await
    .expect("a developer may hold a first-stage version");
    w.api(&w.alice, "AppVersion")
        .delete("v-dev", &DeleteParams::default())
        .await
        .expect("a developer may delete a first-stage version");
    let terminating = w.get("AppVersion", "v-dev").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // The promotion would carry it out of development into a stage where it is then deleted.
    denied(
        w.promote(&w.bob, "v-dev", "staging").await,
        "AppVersion v-dev is being deleted (metadata.deletionTimestamp is set; finalizers example.com/hold hold \
         it): a version being deleted cannot be promoted",
    );
    assert_eq!(
        w.get("AppVersion", "v-dev").await.unwrap().data["spec"]["environment"],
        "development"
    );
    // A developer cannot pin the production configuration with a finalizer (to keep its values
    // when an admin replaces it): a finalizer needs what deleting it needs.
    denied(
        w.merge(
            &w.alice,
            "EnvironmentConfig",
            "crm-production",
            json!({ "metadata": { "finalizers": ["example.com/hold"] } }),
        )
        .await,
        "user alice may not change EnvironmentConfig crm-production: configuring production needs verb configure",
    );
    // Releasing the finalizer lets the deletion finish, in development.
    w.merge(
        &w.alice,
        "AppVersion",
        "v-dev",
        json!({ "metadata": { "finalizers": null } }),
    )
    .await
    .expect("the developer releases their finalizer");
    support::eventually(WAIT, "v-dev deleted", || async {
        w.get("AppVersion", "v-dev").await.is_none().then_some(())
    })
    .await;
}

/// The controller ownerReference's UID of Secret `name`, if any.
async fn secret_controller(w: &Workspace, name: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(w.admin.clone(), &w.ns)
        .get_opt(name)
        .await
        .unwrap()?;
    secret
        .metadata
        .owner_references?
        .into_iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid)
}

#[tokio::test]
async fn a_configuration_held_by_a_finalizer_hands_its_stage_over_to_its_replacement() {
    let w = Workspace::new("handover").await;
    let secret = "tooljet.production.crm";
    let old_uid = w
        .get("EnvironmentConfig", "crm-production")
        .await
        .unwrap()
        .metadata
        .uid;
    support::eventually(WAIT, "the production Secret materialised", || async {
        (secret_controller(&w, secret).await == old_uid).then_some(())
    })
    .await;
    // Someone who may delete it holds it with a finalizer; an admin replaces it to rotate a value.
    w.merge(
        &w.admin,
        "EnvironmentConfig",
        "crm-production",
        json!({ "metadata": { "finalizers": ["example.com/hold"] } }),
    )
    .await
    .unwrap();
    w.api(&w.admin, "EnvironmentConfig")
        .delete("crm-production", &DeleteParams::default())
        .await
        .unwrap();
    let replacement = w
        .create(
            &w.admin,
            "EnvironmentConfig",
            "crm-production-rotated",
            json!({ "app": "crm", "environment": "production",
                    "constants": [{ "name": "API_URL", "type": "Global", "value": "https://rotated" }] }),
        )
        .await
        .expect("a configuration being deleted is not a rival of its replacement");
    // The replacement takes the stage over while the old one is still held.
    support::eventually(
        WAIT,
        "the replacement controlling the stage Secret",
        || async {
            (secret_controller(&w, secret).await == replacement.metadata.uid
                && secret_text(&w, secret).await.contains("https://rotated"))
            .then_some(())
        },
    )
    .await;
    assert!(
        w.get("EnvironmentConfig", "crm-production").await.is_some(),
        "still held"
    );
    // Once the finalizer goes, the old one is gone and the Secret stays the replacement's.
    w.merge(
        &w.admin,
        "EnvironmentConfig",
        "crm-production",
        json!({ "metadata": { "finalizers": null } }),
    )
    .await
    .unwrap();
    support::eventually(WAIT, "the old configuration gone", || async {
        w.get("EnvironmentConfig", "crm-production")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        secret_controller(&w, secret).await,
        replacement.metadata.uid
    );
    assert!(secret_text(&w, secret).await.contains("https://rotated"));
}
