//! The admission webhook as the real kube-apiserver calls it: an adversarial suite of forbidden
//! changes through every write path, each denied with a message the test asserts on and nothing
//! changed; and the allowed paths, allowed.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::admission::{WAIT, Workspace, denied, env, http_get, msg};
use tooljet_operator::api::{
    AppVersion, PROMOTED_BY_ANNOTATION, RELEASED_BY_ANNOTATION, ToolJetApp,
};

/// Every forbidden change through every write path: denied, with its message, nothing changed.
#[tokio::test]
async fn adversarial_changes_are_denied_with_a_useful_message() {
    let w = Workspace::new("adversarial").await;
    let (admin, alice, bob, carol) = (&w.admin, &w.alice, &w.bob, &w.carol);
    let versions = w.api(admin, "AppVersion");
    let before_stg = w.get("AppVersion", "v-stg").await.unwrap();
    let before_prod = w.get("AppVersion", "v-prod").await.unwrap();
    let before_stg_annotations = before_stg.annotations().clone();
    let mut attempts = 0;
    let mut check = |result: Result<DynamicObject, String>, expect: &str| {
        attempts += 1;
        denied(result, expect);
    };

    // 1. merge patch of the definition in staging
    check(
        w.merge(
            admin,
            "AppVersion",
            "v-stg",
            json!({ "spec": { "definition": { "pages": [{ "name": "x" }] } } }),
        )
        .await,
        "AppVersion v-stg is in staging: edits (spec.definition) are only allowed in development; create a new version in development",
    );
    // 2. JSON patch of the description in production
    let json_patch: json_patch::Patch = serde_json::from_value(
        json!([{ "op": "replace", "path": "/spec/description", "value": "changed" }]),
    )
    .unwrap();
    check(
        versions
            .patch(
                "v-prod",
                &PatchParams::default(),
                &Patch::Json::<()>(json_patch),
            )
            .await
            .map_err(msg),
        "edits (spec.description) are only allowed in development",
    );
    // 3. JSON patch removing a field
    let remove: json_patch::Patch =
        serde_json::from_value(json!([{ "op": "remove", "path": "/spec/description" }])).unwrap();
    check(
        versions
            .patch("v-stg", &PatchParams::default(), &Patch::Json::<()>(remove))
            .await
            .map_err(msg),
        "edits (spec.description)",
    );
    // 4. strategic merge patch: not even supported for custom resources
    let smp = http::Request::patch(format!(
        "/apis/tooljet.io/v1alpha1/namespaces/{}/appversions/v-stg",
        w.ns
    ))
    .header("content-type", "application/strategic-merge-patch+json")
    .body(serde_json::to_vec(&json!({ "spec": { "description": "smp" } })).unwrap())
    .unwrap();
    check(
        admin.request::<DynamicObject>(smp).await.map_err(msg),
        "accepted media types include: application/json-patch+json, application/merge-patch+json",
    );
    // 5. server-side apply of requires
    let ssa = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": "v-stg" },
                      "spec": { "app": "crm", "versionName": "v-stg", "requires": { "constants": ["API_URL"] } } });
    check(
        versions
            .patch(
                "v-stg",
                &PatchParams::apply("mallory").force(),
                &Patch::Apply(&ssa),
            )
            .await
            .map_err(msg),
        "edits (spec.",
    );
    // 6. full update (replace) renaming in staging. A replace carries the resourceVersion it
    // read; the operator's status writes can bump it in between (409): read again and retry.
    let mut replace_result = Err(String::new());
    for _ in 0..10 {
        let mut replaced = w.get("AppVersion", "v-stg").await.unwrap();
        replaced.data["spec"]["versionName"] = json!("renamed");
        replace_result = versions
            .replace("v-stg", &PostParams::default(), &replaced)
            .await
            .map_err(msg);
        if !replace_result
            .as_ref()
            .is_err_and(|e| e.contains("the object has been modified"))
        {
            break;
        }
    }
    check(
        replace_result,
        "AppVersion v-stg is in staging: renames (spec.versionName) are only allowed in development",
    );
    // 7. delete in production
    check(
        versions
            .delete("v-prod", &DeleteParams::default())
            .await
            .map(|_| before_prod.clone())
            .map_err(msg),
        "is in production: deletion is only allowed in development",
    );
    // 8. deletecollection (the apiserver sends one DELETE review per object)
    for name in ["v-stg", "v-prod"] {
        w.merge(
            admin,
            "AppVersion",
            name,
            json!({ "metadata": { "labels": { "tier": "advanced" } } }),
        )
        .await
        .unwrap();
    }
    check(
        versions
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("tier=advanced"),
            )
            .await
            .map(|_| before_prod.clone())
            .map_err(msg),
        "deletion is only allowed in development",
    );
    // 9. create straight into staging
    check(
        w.create(
            admin,
            "AppVersion",
            "v-new",
            json!({ "app": "crm", "versionName": "v-new", "environment": "staging" }),
        )
        .await,
        "AppVersion v-new cannot be created in staging: versions are created only in development",
    );
    // 10. skip a stage
    check(
        w.promote(admin, "v-dev", "production").await,
        "promotion goes one stage at a time (development -> staging -> production); promote it to staging first",
    );
    // 11. demote
    check(
        w.promote(admin, "v-stg", "development").await,
        "cannot move back from staging to development: promotion only moves forward",
    );
    // 12. move a version to another app
    check(
        w.merge(
            admin,
            "AppVersion",
            "v-dev",
            json!({ "spec": { "app": "billing" } }),
        )
        .await,
        "spec.app is immutable",
    );
    // 13. forge the promotion stamp
    check(
        w.merge(
            admin,
            "AppVersion",
            "v-stg",
            json!({ "metadata": { "annotations": { PROMOTED_BY_ANNOTATION: "mallory" } } }),
        )
        .await,
        "annotation tooljet.io/promoted-by is recorded by tooljet-operator's admission webhook and cannot be set or changed by users",
    );
    // 14. promote without RBAC
    check(
        w.promote(alice, "v-dev", "staging").await,
        "user alice may not promote AppVersion v-dev to staging: promoting into staging needs verb promote on resource environments named staging",
    );
    // 15. release a staging version
    check(
        w.merge(
            carol,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": "v-stg" } } }),
        )
        .await,
        "ToolJetApp crm cannot release v-stg: it is in staging, and only production versions can be released; promote it to production first",
    );
    // 16. delete an app with production versions
    check(
        w.api(admin, "ToolJetApp")
            .delete("crm", &DeleteParams::default())
            .await
            .map(|_| before_prod.clone())
            .map_err(msg),
        "ToolJetApp crm has versions past development",
    );
    // 17. promote and edit at once
    check(
        w.merge(
            bob,
            "AppVersion",
            "v-dev",
            json!({ "spec": { "environment": "staging", "description": "sneaky" } }),
        )
        .await,
        "a promotion must change nothing but spec.environment",
    );
    // 18. rename to a name another version uses
    check(
        w.merge(
            admin,
            "AppVersion",
            "v-dev",
            json!({ "spec": { "versionName": "v-prod" } }),
        )
        .await,
        "versionName v-prod is already used by AppVersion v-prod",
    );
    // 19. create with a name another version uses
    check(
        w.create(
            alice,
            "AppVersion",
            "v-dup",
            json!({ "app": "crm", "versionName": "v-stg" }),
        )
        .await,
        "already used by AppVersion v-stg",
    );
    // 20. create a version of an app that does not exist
    check(
        w.create(
            alice,
            "AppVersion",
            "v-orphan",
            json!({ "app": "ghost", "versionName": "x" }),
        )
        .await,
        "refers to ToolJetApp ghost, which does not exist",
    );
    // 21. remove a stage that holds versions
    check(
        w.merge(
            admin,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "environments": ["development", "production"] } }),
        )
        .await,
        "stage staging cannot be removed, it holds AppVersion v-stg",
    );
    // 22. reorder stages that hold versions
    check(
        w.merge(
            admin,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "environments": ["development", "production", "staging"] } }),
        )
        .await,
        "ToolJetApp crm: stage",
    );
    // 23. release without RBAC
    check(
        w.merge(
            bob,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": "v-prod" } } }),
        )
        .await,
        "forbidden",
    );
    // 24. forge the release stamp
    check(
        w.merge(
            admin,
            "ToolJetApp",
            "crm",
            json!({ "metadata": { "annotations": { RELEASED_BY_ANNOTATION: "mallory" } } }),
        )
        .await,
        "annotation tooljet.io/released-by is recorded by tooljet-operator",
    );
    // 25. switch off deletion protection without the unprotect permission
    check(w.merge(carol, "ToolJetApp", "crm", json!({ "metadata": { "annotations": { "tooljet.io/deletion-protection": "disabled" } } })).await,
        "user carol may not change annotation tooljet.io/deletion-protection");
    // 26. promote into a stage lacking what the version requires
    w.merge(
        admin,
        "AppVersion",
        "v-dev",
        json!({ "spec": { "requires": { "constants": ["STRIPE_KEY"] } } }),
    )
    .await
    .unwrap();
    check(
        w.promote(bob, "v-dev", "staging").await,
        "AppVersion v-dev cannot be promoted to staging: staging lacks constant STRIPE_KEY; add them to an EnvironmentConfig for staging first",
    );
    w.merge(
        admin,
        "AppVersion",
        "v-dev",
        json!({ "spec": { "requires": null } }),
    )
    .await
    .unwrap();
    // 27. create a version carrying a forged stamp
    let forged = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
        "metadata": { "name": "v-forged2", "annotations": { PROMOTED_BY_ANNOTATION: "mallory" } }, "spec": { "app": "crm", "versionName": "forged2" } });
    check(
        w.api(alice, "AppVersion")
            .create(
                &PostParams::default(),
                &serde_json::from_value(forged).unwrap(),
            )
            .await
            .map_err(msg),
        "cannot be set or changed by users",
    );
    // 28. promote to a stage outside the pipeline
    check(
        w.promote(admin, "v-dev", "qa").await,
        "qa is not a stage of ToolJetApp crm (development -> staging -> production)",
    );
    // 29. move past the last stage
    check(
        w.promote(admin, "v-prod", "archive").await,
        "archive is not a stage of ToolJetApp crm",
    );
    // 30. release a version that does not exist
    check(
        w.merge(
            admin,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": "v-none" } } }),
        )
        .await,
        "v-none: it is not an AppVersion of app crm",
    );
    // 31. client-side kubectl apply of an edit in production
    let manifest = std::env::temp_dir().join(format!("v-prod-{}.json", std::process::id()));
    std::fs::write(&manifest, serde_json::to_vec(&json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
        "metadata": { "name": "v-prod", "namespace": w.ns }, "spec": { "app": "crm", "versionName": "v-prod", "environment": "production", "description": "kubectl edit" } })).unwrap()).unwrap();
    let out = support::kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    check(
        out.map(|_| before_prod.clone()).map_err(|e| e.to_string()),
        "is in production: edits (spec.description) are only allowed in development",
    );
    // 32. the operator's own service account is held to the same rules
    check(
        w.merge(
            &w.operator,
            "AppVersion",
            "v-stg",
            json!({ "spec": { "description": "by the operator" } }),
        )
        .await,
        "forbidden",
    );
    // 33. release another app's version
    w.create(admin, "ToolJetApp", "billing", json!({}))
        .await
        .unwrap();
    check(
        w.merge(
            admin,
            "ToolJetApp",
            "billing",
            json!({ "spec": { "release": { "version": "v-prod" } } }),
        )
        .await,
        "v-prod: it is not an AppVersion of app billing",
    );

    assert!(attempts >= 30, "{attempts} attempts");
    // Nothing changed.
    let after_stg = w.get("AppVersion", "v-stg").await.unwrap();
    let after_prod = w.get("AppVersion", "v-prod").await.unwrap();
    assert_eq!(after_stg.data["spec"], before_stg.data["spec"]);
    assert_eq!(after_prod.data["spec"], before_prod.data["spec"]);
    assert_eq!(after_stg.annotations(), &before_stg_annotations);
    assert!(
        w.get("ToolJetApp", "crm").await.unwrap().data["spec"]
            .get("release")
            .is_none()
    );
    assert!(
        w.get("AppVersion", "v-new").await.is_none()
            && w.get("AppVersion", "v-orphan").await.is_none()
    );
}

#[tokio::test]
async fn allowed_paths_are_allowed_and_stamped() {
    let w = Workspace::new("allowed").await;
    let (alice, bob, carol) = (&w.alice, &w.bob, &w.carol);

    // Edits, renames and deletion in development.
    w.merge(alice, "AppVersion", "v-dev", json!({ "spec": { "definition": { "pages": [{ "name": "new" }] }, "description": "edited" } })).await.unwrap();
    w.merge(
        alice,
        "AppVersion",
        "v-dev",
        json!({ "spec": { "versionName": "v-dev-2" } }),
    )
    .await
    .unwrap();
    w.create(
        alice,
        "AppVersion",
        "v-scratch",
        json!({ "app": "crm", "versionName": "scratch" }),
    )
    .await
    .unwrap();
    w.api(alice, "AppVersion")
        .delete("v-scratch", &DeleteParams::default())
        .await
        .unwrap();
    // Metadata-only changes in production.
    w.merge(
        alice,
        "AppVersion",
        "v-prod",
        json!({ "metadata": { "labels": { "team": "crm" }, "annotations": { "note": "ok" } } }),
    )
    .await
    .unwrap();

    // Promotion with RBAC is stamped with the promoter.
    let promoted = w.promote(bob, "v-dev", "staging").await.unwrap();
    assert_eq!(
        promoted
            .annotations()
            .get(PROMOTED_BY_ANNOTATION)
            .map(String::as_str),
        Some("bob")
    );
    let versions: Api<AppVersion> = Api::namespaced(w.admin.clone(), &w.ns);
    support::eventually(WAIT, "the promotion recorded with its author", || {
        let versions = versions.clone();
        async move {
            let v = versions.get("v-dev").await.ok()?;
            let p = v.status?.promotions.into_iter().last()?;
            (p.to == "staging" && p.by.as_deref() == Some("bob")).then_some(())
        }
    })
    .await;

    // Release with RBAC, stamped with the release manager and recorded in the history.
    let released = w
        .merge(
            carol,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": "v-prod" } } }),
        )
        .await
        .unwrap();
    assert_eq!(
        released
            .annotations()
            .get(RELEASED_BY_ANNOTATION)
            .map(String::as_str),
        Some("carol")
    );
    let apps: Api<ToolJetApp> = Api::namespaced(w.admin.clone(), &w.ns);
    support::eventually(WAIT, "the release recorded with its author", || {
        let apps = apps.clone();
        async move {
            let a = apps.get("crm").await.ok()?;
            let r = a.status?.release_history.into_iter().last()?;
            (r.version == "v-prod" && r.by.as_deref() == Some("carol")).then_some(())
        }
    })
    .await;

    // Adding a stage between others keeps every version where it is.
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "spec": { "environments": ["development", "qa", "staging", "production"] } }),
    )
    .await
    .unwrap();

    // Deleting the whole namespace (a deliberate admin action) still removes everything.
    Api::<Namespace>::all(w.admin.clone())
        .delete(&w.ns, &DeleteParams::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(w.admin.clone());
    let ns = w.ns.clone();
    support::eventually(
        Duration::from_secs(90),
        "the namespace and its production versions deleted",
        || {
            let (namespaces, ns) = (namespaces.clone(), ns.clone());
            async move {
                namespaces
                    .get_opt(&ns)
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_webhook_reports_its_decisions_in_metrics() {
    let env = env().await;
    let w = Workspace::new("metrics").await;
    let _ = w.promote(&w.alice, "v-dev", "staging").await;
    let (code, body) = http_get(&env.health, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("tooljet_operator_admission_requests_total{"),
        "{body}"
    );
    assert!(body.contains("result=\"denied\""));
    assert!(body.contains("tooljet_operator_admission_duration_seconds_bucket"));
    assert!(body.contains("tooljet_operator_reconciles_total"));
}
