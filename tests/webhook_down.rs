//! Defence in depth, in its own test binary (it removes cluster-wide admission configuration):
//! with the webhook configuration deleted, the ValidatingAdmissionPolicies still forbid edits
//! outside the first stage and demotion (for custom pipelines too), and promotion, release,
//! pipeline and configuration changes without their verbs; with the webhook unreachable, every
//! write it guards fails closed.

mod support;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::admission::{Workspace, denied, with_kind};
use tooljet_operator::webhook::config::{self, Endpoint};

#[tokio::test]
async fn forbidden_edits_fail_with_the_webhook_down() {
    let w = Workspace::new("down").await;
    let admin = w.admin.clone();
    // A custom pipeline, with a version in its middle stage, set up while the webhook is up.
    w.create(
        &admin,
        "ToolJetApp",
        "ops",
        json!({ "environments": ["dev", "qa", "prod"] }),
    )
    .await
    .unwrap();
    support::eventually(support::admission::WAIT, "the webhook sees app ops", || {
        let w = &w;
        async move {
            w.create(&w.admin, "AppVersion", "o1", json!({ "app": "ops", "versionName": "o1", "environment": "dev", "definition": {} }))
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    w.promote(&admin, "o1", "qa").await.unwrap();
    assert_eq!(
        w.get("AppVersion", "o1").await.unwrap().annotations()["tooljet.io/stages"],
        "dev,qa"
    );
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());

    // 1. Unreachable webhook: fail closed, even for changes the rules allow.
    let dead = Endpoint::Url(format!("https://127.0.0.1:{}", support::free_port()));
    let apply = PatchParams::apply("tests").force();
    validating
        .patch(
            config::CONFIGURATION_NAME,
            &apply,
            &Patch::Apply(&with_kind(
                &config::validating(&dead, None),
                "admissionregistration.k8s.io/v1",
                "ValidatingWebhookConfiguration",
            )),
        )
        .await
        .unwrap();
    // The apiserver picks the new configuration up from its informer: wait for it.
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let refusal = support::eventually(
        support::admission::WAIT,
        "the dead webhook in effect",
        || {
            let (w, attempt) = (&w, &attempt);
            async move {
                // A definition edit (the webhook judges its size, so it is called), different
                // each time: an unchanged definition would skip the webhook.
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                w.merge(
                    &w.admin,
                    "AppVersion",
                    "v-dev",
                    json!({ "spec": { "definition": { "pages": [format!("allowed by the rules {n}")] } } }),
                )
                .await
                .err()
            }
        },
    )
    .await;
    assert!(refusal.contains("failed calling webhook"), "{refusal}");

    // 2. No webhook configuration at all: the policy still holds.
    validating
        .delete(config::CONFIGURATION_NAME, &DeleteParams::default())
        .await
        .unwrap();
    mutating
        .delete(config::CONFIGURATION_NAME, &DeleteParams::default())
        .await
        .unwrap();
    support::eventually(
        support::admission::WAIT,
        "admission without the webhook",
        || {
            let w = &w;
            async move {
                w.merge(
                    &w.admin,
                    "AppVersion",
                    "v-dev",
                    // A definition edit calls the webhook (a description edit of a first-stage
                    // version would skip it and prove nothing).
                    json!({ "spec": { "definition": { "pages": ["now allowed"] } } }),
                )
                .await
                .ok()
                .map(|_| ())
            }
        },
    )
    .await;
    denied(
        w.merge(
            &admin,
            "AppVersion",
            "v-stg",
            json!({ "spec": { "definition": { "pages": [{ "name": "x" }] } } }),
        )
        .await,
        "ValidatingAdmissionPolicy 'tooljet-operator-stage-rules' with binding 'tooljet-operator-stage-rules' denied request: AppVersion v-stg is in staging: edits (spec.definition) are only allowed in development; create a new version in development",
    );
    denied(
        w.merge(
            &admin,
            "AppVersion",
            "v-prod",
            json!({ "spec": { "versionName": "renamed" } }),
        )
        .await,
        "AppVersion v-prod is in production: renames (spec.versionName) are only allowed in development",
    );
    denied(
        w.api(&admin, "AppVersion")
            .delete("v-prod", &DeleteParams::default())
            .await
            .map(|_| {
                kube::api::DynamicObject::new("deleted", &support::admission::ar("AppVersion"))
            })
            .map_err(support::admission::msg),
        "AppVersion v-prod is in production: deletion is only allowed in development",
    );
    denied(
        w.create(
            &admin,
            "AppVersion",
            "v-new",
            json!({ "app": "crm", "versionName": "new", "environment": "production" }),
        )
        .await,
        "AppVersion v-new cannot be created in production: versions are created only in development",
    );
    // A promotion is allowed by the policy when it records the stage (the mutating webhook is
    // gone: the promoter must write it) and the promoter holds the verb.
    w.merge(
        &admin,
        "AppVersion",
        "v-stg",
        json!({ "metadata": { "annotations": { "tooljet.io/stages": "development,staging,production" } }, "spec": { "environment": "production" } }),
    )
    .await
    .unwrap();

    // 3. The custom pipeline, judged by the version's recorded stages.
    let vap = "ValidatingAdmissionPolicy 'tooljet-operator-stage-rules' with binding 'tooljet-operator-stage-rules' denied request: ";
    denied(
        w.merge(
            &admin,
            "AppVersion",
            "o1",
            json!({ "spec": { "description": "in qa" } }),
        )
        .await,
        &format!(
            "{vap}AppVersion o1 is in qa: edits (spec.description) are only allowed in dev; create a new version in dev"
        ),
    );
    denied(
        w.promote(&admin, "o1", "dev").await,
        "AppVersion o1 cannot move back from qa to dev: promotion only moves forward (it has been in dev before)",
    );
    denied(
        w.merge(
            &admin,
            "AppVersion",
            "o1",
            json!({ "metadata": { "annotations": { "tooljet.io/stages": "qa" } } }),
        )
        .await,
        "annotation tooljet.io/stages is recorded by tooljet-operator and cannot be changed by users",
    );
    denied(
        w.api(&admin, "AppVersion")
            .delete("o1", &DeleteParams::default())
            .await
            .map(|_| {
                kube::api::DynamicObject::new("deleted", &support::admission::ar("AppVersion"))
            })
            .map_err(support::admission::msg),
        "AppVersion o1 is in qa: deletion is only allowed in dev",
    );
    denied(
        w.merge(&w.alice, "AppVersion", "o1",
            json!({ "metadata": { "annotations": { "tooljet.io/stages": "dev,qa,prod" } }, "spec": { "environment": "prod" } }))
            .await,
        &format!("user alice may not promote AppVersion o1 to prod: promoting into prod needs verb promote on resource environments named prod (group tooljet.io) in namespace {}", w.ns),
    );
    // 4. Releases, pipelines and configuration keep their verbs.
    // erin may edit apps (an environment admin) but not release.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "erin-env-admin" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tooljet-environment-admin" },
        "subjects": [{ "kind": "User", "name": "erin", "apiGroup": "rbac.authorization.k8s.io" }],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &w.ns)
        .create(&Default::default(), &binding)
        .await
        .unwrap();
    let erin = support::client_as("erin", &["environment-admins"]).await;
    let refusal = support::eventually(
        support::admission::WAIT,
        "erin's release reaches admission",
        || {
            let (w, erin) = (&w, &erin);
            async move {
                w.merge(
                    erin,
                    "ToolJetApp",
                    "ops",
                    json!({ "spec": { "release": { "version": "o1" } } }),
                )
                .await
                .err()
                .filter(|m| !m.contains("cannot patch resource"))
            }
        },
    )
    .await;
    assert!(
        refusal.contains("user erin may not release ToolJetApp ops: setting, changing or removing a release needs verb release on resource environments named prod"),
        "{refusal}"
    );
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "ops",
            json!({ "spec": { "environments": ["dev", "prod"] } }),
        )
        .await,
        "user carol may not change spec.environments of ToolJetApp ops: changing an app's pipeline, rollout or verification needs verb configure on resource tooljetapps named ops",
    );
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "ops",
            json!({ "spec": { "verification": { "autoRollback": true } } }),
        )
        .await,
        "user carol may not change spec.verification of ToolJetApp ops: changing an app's pipeline, rollout or verification needs verb configure on resource tooljetapps named ops",
    );
    denied(
        w.create(
            &w.alice,
            "EnvironmentConfig",
            "ops-prod",
            json!({ "app": "ops", "environment": "prod" }),
        )
        .await,
        "user alice may not create EnvironmentConfig ops-prod: configuring prod needs verb configure on resource environments named prod",
    );
    denied(
        w.merge(&w.alice, "EnvironmentConfig", "crm-production",
            json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": "https://evil" }] } }))
            .await,
        "user alice may not change EnvironmentConfig crm-production: configuring production needs verb configure",
    );
    denied(
        w.api(&w.alice, "EnvironmentConfig")
            .delete("crm-production", &DeleteParams::default())
            .await
            .map(|_| {
                kube::api::DynamicObject::new(
                    "deleted",
                    &support::admission::ar("EnvironmentConfig"),
                )
            })
            .map_err(support::admission::msg),
        "user alice may not delete EnvironmentConfig crm-production",
    );
    // Metadata that deletes or holds a deletion needs what deleting needs, with the webhook down
    // too: a finalizer on the production configuration, owners or a finalizer on a version past
    // its first stage.
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
    denied(
        w.merge(
            &admin,
            "AppVersion",
            "o1",
            json!({ "metadata": { "finalizers": ["example.com/hold"] } }),
        )
        .await,
        "may not add or remove finalizers of AppVersion o1: a finalizer holds the object's deletion",
    );
    denied(
        w.merge(&admin, "AppVersion", "o1", support::admission::gone_owner())
            .await,
        "AppVersion o1: metadata.ownerReferences cannot be set or changed: the garbage collector would delete it",
    );
    // And what the verbs allow stays allowed.
    w.create(
        &w.alice,
        "EnvironmentConfig",
        "ws-dev",
        json!({ "environment": "development" }),
    )
    .await
    .unwrap();
}
