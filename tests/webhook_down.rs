//! Defence in depth, in its own test binary (it removes cluster-wide admission configuration):
//! with the webhook configuration deleted, the ValidatingAdmissionPolicy still forbids edits
//! outside development; with the webhook unreachable, every write it guards fails closed.

mod support;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::admission::{Workspace, denied, with_kind};
use tooljet_operator::webhook::config::{self, Endpoint};

#[tokio::test]
async fn forbidden_edits_fail_with_the_webhook_down() {
    let w = Workspace::new("down").await;
    let admin = w.admin.clone();
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
    let refusal = support::eventually(
        support::admission::WAIT,
        "the dead webhook in effect",
        || {
            let w = &w;
            async move {
                w.merge(
                    &w.admin,
                    "AppVersion",
                    "v-dev",
                    json!({ "spec": { "description": "allowed by the rules" } }),
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
                    json!({ "spec": { "description": "now allowed" } }),
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
    // Promotion (only spec.environment changes) is not the policy's business.
    w.promote(&admin, "v-stg", "production").await.unwrap();
}
