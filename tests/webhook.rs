//! The admission webhook as the real kube-apiserver calls it: an adversarial suite of forbidden
//! changes through every write path, each denied with a message the test asserts on and nothing
//! changed; and the allowed paths, allowed.

mod support;

use std::time::Duration;

use k8s_openapi::api::{core::v1::Namespace, rbac::v1::RoleBinding};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::admission::{WAIT, Workspace, ar, denied, env, http_get, msg};
use tooljet_operator::api::{
    AppVersion, LAST_EDITED_BY_ANNOTATION, PROMOTED_BY_ANNOTATION, RELEASED_BY_ANNOTATION,
    ToolJetApp,
};

/// The staging and production versions before a series of refused attempts: they must be
/// exactly so after it.
struct Before {
    stg: DynamicObject,
    prod: DynamicObject,
}

impl Before {
    async fn take(w: &Workspace) -> Before {
        Before {
            stg: w.get("AppVersion", "v-stg").await.unwrap(),
            prod: w.get("AppVersion", "v-prod").await.unwrap(),
        }
    }

    async fn assert_unchanged(&self, w: &Workspace) {
        let stg = w.get("AppVersion", "v-stg").await.unwrap();
        let prod = w.get("AppVersion", "v-prod").await.unwrap();
        assert_eq!(stg.data["spec"], self.stg.data["spec"]);
        assert_eq!(prod.data["spec"], self.prod.data["spec"]);
        assert_eq!(stg.annotations(), self.stg.annotations());
    }
}

/// Edits, renames and deletes outside the first stage through every write path (merge, JSON and
/// strategic patches, server-side apply, replace, delete, deletecollection, kubectl, the
/// operator's own identity): denied, with their message, nothing changed.
#[tokio::test]
async fn edits_outside_the_first_stage_are_denied_on_every_write_path() {
    let w = Workspace::new("edits").await;
    let admin = &w.admin;
    let versions = w.api(admin, "AppVersion");
    let before = Before::take(&w).await;
    let before_prod = before.prod.clone();
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
    assert_eq!(attempts, 10);
    before.assert_unchanged(&w).await;
}

/// Creation outside the first stage, skipping, demotion, moves to another app, forged stamps,
/// missing permissions, duplicate names, missing requirements: denied, nothing changed.
#[tokio::test]
async fn versions_are_created_first_and_move_one_stage_forward_with_the_verb_only() {
    let w = Workspace::new("versions").await;
    let (admin, alice, bob) = (&w.admin, &w.alice, &w.bob);
    let before = Before::take(&w).await;
    let mut attempts = 0;
    let mut check = |result: Result<DynamicObject, String>, expect: &str| {
        attempts += 1;
        denied(result, expect);
    };

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
        "AppVersion v-dev cannot be promoted to staging: staging lacks constant STRIPE_KEY; add what is not declared to an EnvironmentConfig for staging first",
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
    assert_eq!(attempts, 14);
    before.assert_unchanged(&w).await;
    assert!(
        w.get("AppVersion", "v-new").await.is_none()
            && w.get("AppVersion", "v-orphan").await.is_none()
    );
}

/// Releases of versions not in the last stage or of another app, releases without the verb,
/// deleting an app with history, removing or reordering stages that hold versions, forged release
/// stamps, switching deletion protection off without the verb: denied, nothing changed.
#[tokio::test]
async fn apps_keep_their_versions_and_releases_need_the_verb() {
    let w = Workspace::new("apps").await;
    let (admin, bob, carol) = (&w.admin, &w.bob, &w.carol);
    let before = Before::take(&w).await;
    let before_prod = before.prod.clone();
    let mut attempts = 0;
    let mut check = |result: Result<DynamicObject, String>, expect: &str| {
        attempts += 1;
        denied(result, expect);
    };

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

    assert_eq!(attempts, 9);
    before.assert_unchanged(&w).await;
    assert!(
        w.get("ToolJetApp", "crm").await.unwrap().data["spec"]
            .get("release")
            .is_none()
    );
}

/// Objects written a moment before a request that they should refuse: the webhook's cache may not
/// show them yet, and the request is still refused (these rules read the API). A version named
/// again right after its create, a second config for a stage right after the first, an app
/// deleted or cut short right after a promotion. Many apps at once, so a lagging view would show.
#[tokio::test]
async fn requests_are_judged_on_objects_written_a_moment_ago() {
    let w = Workspace::new("fresh").await;
    let admin = &w.admin;
    // An app and its first version back to back, as `kubectl apply -f` of one file sends them:
    // the version is judged against the app the API holds, not against a cache that may lag.
    for i in 0..APPS_AT_ONCE {
        let app = format!("together{i}");
        w.create(
            admin,
            "ToolJetApp",
            &app,
            json!({ "environments": ["development", "staging", "production"] }),
        )
        .await
        .unwrap();
        w.create(
            admin,
            "AppVersion",
            &format!("{app}-v1"),
            json!({ "app": app, "versionName": "v1" }),
        )
        .await
        .unwrap_or_else(|e| panic!("the first version of {app}, created right after it: {e}"));
    }
    let apps: Vec<String> = (0..APPS_AT_ONCE).map(|i| format!("fresh{i}")).collect();
    for app in &apps {
        w.create(
            admin,
            "ToolJetApp",
            app,
            json!({ "environments": ["development", "staging", "production"] }),
        )
        .await
        .unwrap();
    }
    w.await_app(apps.last().unwrap()).await;
    let w = &w;
    futures::future::join_all(apps.iter().map(|app| async move {
        let version = format!("{app}-v1");
        w.create(
            admin,
            "AppVersion",
            &version,
            json!({ "app": app, "versionName": "v1" }),
        )
        .await
        .unwrap();
        denied(
            w.create(
                admin,
                "AppVersion",
                &format!("{version}-again"),
                json!({ "app": app, "versionName": "v1" }),
            )
            .await,
            &format!("versionName v1 is already used by AppVersion {version} of app {app}"),
        );
        let config = json!({ "app": app, "environment": "staging",
            "constants": [{ "name": "API_URL", "type": "Global", "value": "https://staging" }] });
        w.create(
            admin,
            "EnvironmentConfig",
            &format!("{app}-staging"),
            config.clone(),
        )
        .await
        .unwrap();
        denied(
            w.create(
                admin,
                "EnvironmentConfig",
                &format!("{app}-staging-2"),
                config,
            )
            .await,
            &format!("EnvironmentConfig {app}-staging already does"),
        );
        // A secret option carried as a secret constant may not take a Global constant's name.
        denied(
            w.create(
                admin,
                "EnvironmentConfig",
                &format!("{app}-dev-clash"),
                json!({ "app": app, "environment": "development",
                    "dataSources": [{ "name": "crm-db", "kind": "postgresql",
                        "secretOptions": { "password": { "secretKeyRef": { "name": "creds", "key": "pg" } } } }],
                    "constants": [{ "name": "CRM_DB_PASSWORD", "type": "Global", "value": "visible" }] }),
            )
            .await,
            "spec.dataSources[crm-db].secretOptions.password is carried to ToolJet as secret constant CRM_DB_PASSWORD, the name of Global constant spec.constants[CRM_DB_PASSWORD]",
        );
        w.promote(admin, &version, "staging").await.unwrap();
        denied(
            w.api(admin, "ToolJetApp")
                .delete(app, &DeleteParams::default())
                .await
                .map(|_| DynamicObject::new(app, &ar("ToolJetApp")))
                .map_err(msg),
            &format!("ToolJetApp {app} has versions past development ({version} in staging)"),
        );
        w.promote(admin, &version, "production").await.unwrap();
        denied(
            w.merge(
                admin,
                "ToolJetApp",
                app,
                json!({ "spec": { "environments": ["development", "staging"] } }),
            )
            .await,
            &format!("stage production cannot be removed, it holds AppVersion {version}"),
        );
    }))
    .await;
    for app in &apps {
        assert!(
            w.get("ToolJetApp", app).await.is_some(),
            "{app} was deleted"
        );
    }
}

const APPS_AT_ONCE: usize = 20;

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

/// The operator's count of access checks answered `answer` (`allowed`, `denied`, `remembered`).
async fn access_reviews(answer: &str) -> u64 {
    let series = format!("tooljet_operator_access_reviews_total{{answer=\"{answer}\"");
    support::faults::counter(&env().await.health, &series).await
}

/// A SubjectAccessReview that allowed is reused for the same user and access for
/// `--access-review-ttl` (5 s by default); a denial never is. So a new grant counts at once, and a
/// revoked one stops counting within the TTL. The door is a Secret reference (`get` on the
/// Secret), which only the webhook checks: promotions, releases, configuration and approvals are
/// also checked by the ValidatingAdmissionPolicies with the apiserver's own authorizer, which
/// refuse a revoked grant before the webhook is called. The creates are dry runs: judged, never
/// stored.
#[tokio::test]
async fn an_allowing_access_review_is_reused_briefly_and_a_denial_never() {
    let w = Workspace::new("access-ttl").await;
    let erin = support::client_as("erin", &[]).await;
    w.bind("erin", "tooljet-developer").await;
    let api = w.api(&erin, "EnvironmentConfig");
    let reference = || {
        let api = api.clone();
        async move {
            let config = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
                "metadata": { "name": "erin-dev" },
                "spec": { "environment": "development", "constants": [{ "name": "DB", "type": "Secret",
                          "valueFrom": { "secretKeyRef": { "name": "erin-db", "key": "password" } } }] } });
            let dry = PostParams {
                dry_run: true,
                ..Default::default()
            };
            api.create(&dry, &serde_json::from_value(config).unwrap())
                .await
                .map_err(msg)
        }
    };
    const REFUSED: &str = "user erin may not reference Secret erin-db (key password)";

    // Without the grant: denied, and asked again every time.
    let asked = access_reviews("denied").await;
    for _ in 0..3 {
        denied(reference().await, REFUSED);
    }
    assert!(access_reviews("denied").await >= asked + 3);

    // Granted: allowed as soon as the apiserver's authorizer sees the binding (no denial was
    // kept); the next requests within the TTL reuse the answer.
    w.grant(
        "erin",
        "erin-reads-db",
        json!([{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["erin-db"] }]),
    )
    .await;
    support::eventually(WAIT, "the new grant allows", || async {
        reference().await.ok().map(|_| ())
    })
    .await;
    let reused = access_reviews("remembered").await;
    reference().await.unwrap();
    reference().await.unwrap();
    assert!(access_reviews("remembered").await >= reused + 2);

    // Revoked: denied again once the reused answer is older than the TTL (5 s), not forever.
    Api::<RoleBinding>::namespaced(w.clone_admin(), &w.ns)
        .delete("erin-reads-db", &DeleteParams::default())
        .await
        .unwrap();
    let revoked = std::time::Instant::now();
    support::eventually(
        Duration::from_secs(15),
        "the revoked grant no longer allows",
        || async { reference().await.err().map(|_| ()) },
    )
    .await;
    println!("denied {:?} after the revocation", revoked.elapsed());
    denied(reference().await, REFUSED);
    assert!(w.get("EnvironmentConfig", "erin-dev").await.is_none());
}

const VALIDATING: &str = "appversions.validate.tooljet.io";
const MUTATING: &str = "appversions.mutate.tooljet.io";

/// The apiserver's count of calls to `webhook` for AppVersion updates (summed over
/// `rejected`/`type`; the count is recorded before the request is answered).
fn version_update_calls(webhook: &str) -> u64 {
    let metrics = support::kubectl(&["get", "--raw", "/metrics"]).expect("apiserver metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_admission_webhook_admission_duration_seconds_count{"))
        .filter(|l| {
            l.contains(&format!("name=\"{webhook}\"")) && l.contains("operation=\"UPDATE\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The count is global, the other tests of this binary write AppVersions concurrently, and the
/// apiserver admits a write again when it retries it on a conflict (the operator's status writes):
/// runs `writes` in up to 10 windows until one shows exactly `expected` calls. All of these only
/// add calls, so fewer than `expected` fails at once, and `expected` is only seen when the writes
/// made at most that many.
async fn calls_during<F, Fut>(webhook: &str, expected: u64, what: &str, mut writes: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut windows = vec![];
    for attempt in 0..10 {
        let before = version_update_calls(webhook);
        writes(attempt).await;
        let calls = version_update_calls(webhook) - before;
        assert!(
            calls >= expected,
            "{what}: {calls} webhook calls, expected {expected}"
        );
        windows.push(calls);
        if calls == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: never exactly {expected} webhook calls (windows: {windows:?})");
}

/// A stamped first-stage version's edits of what the rules do not judge there (description,
/// requires, labels, other annotations) never call the validating webhook; what they judge still
/// does, and the policy still holds outside the first stage.
#[tokio::test]
async fn first_stage_edits_the_rules_cannot_refuse_skip_the_webhook() {
    let w = Workspace::new("skip").await;
    let alice = &w.alice;
    assert_eq!(
        w.get("AppVersion", "v-dev").await.unwrap().annotations()["tooljet.io/stages"],
        "development"
    );

    calls_during(
        VALIDATING,
        0,
        "20 description edits and free metadata edits",
        |attempt| {
            let w = &w;
            async move {
                for i in 0..20 {
                    w.merge(
                        &w.alice,
                        "AppVersion",
                        "v-dev",
                        json!({ "spec": { "description": format!("edit {attempt}.{i}") } }),
                    )
                    .await
                    .unwrap();
                }
                for patch in [
                    json!({ "spec": { "requires": { "constants": [format!("C{attempt}")] } } }),
                    json!({ "metadata": { "labels": { "team": format!("t{attempt}") } } }),
                    json!({ "metadata": { "annotations": { "note": format!("n{attempt}") } } }),
                ] {
                    w.merge(&w.alice, "AppVersion", "v-dev", patch)
                        .await
                        .unwrap();
                }
            }
        },
    )
    .await;

    calls_during(VALIDATING, 2, "a definition edit and a rename", |attempt| {
        let w = &w;
        async move {
            w.merge(
                &w.alice,
                "AppVersion",
                "v-dev",
                json!({ "spec": { "definition": { "pages": [{ "name": format!("p{attempt}") }] } } }),
            )
            .await
            .unwrap();
            // Past the operator's status write for the edit (fewer conflict retries).
            tokio::time::sleep(Duration::from_millis(500)).await;
            w.merge(
                &w.alice,
                "AppVersion",
                "v-dev",
                json!({ "spec": { "versionName": format!("v-dev-{attempt}") } }),
            )
            .await
            .unwrap();
        }
    })
    .await;

    // Outside the first stage the webhook is called, but the policy (which sees every request,
    // before the webhooks) refuses first.
    denied(
        w.merge(
            alice,
            "AppVersion",
            "v-stg",
            json!({ "spec": { "description": "in staging" } }),
        )
        .await,
        "ValidatingAdmissionPolicy 'tooljet-operator-stage-rules' with binding 'tooljet-operator-stage-rules' \
         denied request: AppVersion v-stg is in staging: edits (spec.description) are only allowed in development",
    );
    // A reserved annotation in the first stage: the webhook is called and refuses the forgery.
    denied(
        w.merge(
            alice,
            "AppVersion",
            "v-dev",
            json!({ "metadata": { "annotations": { PROMOTED_BY_ANNOTATION: "mallory" } } }),
        )
        .await,
        "annotation tooljet.io/promoted-by is recorded by tooljet-operator's admission webhook",
    );
}

/// The mutating webhook stamps the last editor of a version; it is called only when that stamp
/// would change: a developer's edits in a row call it once, another editor's edit is stamped,
/// and so is the first developer's next edit.
#[tokio::test]
async fn edits_in_a_row_by_the_last_editor_skip_the_mutating_webhook() {
    async fn describe(w: &Workspace, client: &Client, text: String) {
        w.merge(
            client,
            "AppVersion",
            "v-dev",
            json!({ "spec": { "description": text } }),
        )
        .await
        .unwrap();
    }
    let w = Workspace::new("restamp").await;
    let last_editor = || async {
        w.get("AppVersion", "v-dev")
            .await
            .unwrap()
            .annotations()
            .get(LAST_EDITED_BY_ANNOTATION)
            .cloned()
    };
    describe(&w, &w.alice, "first".into()).await;
    assert_eq!(last_editor().await.as_deref(), Some("alice"));
    calls_during(MUTATING, 0, "20 edits by the last editor", |attempt| {
        let w = &w;
        async move {
            for i in 0..20 {
                describe(w, &w.alice, format!("edit {attempt}.{i}")).await;
            }
        }
    })
    .await;
    assert_eq!(last_editor().await.as_deref(), Some("alice"));
    describe(&w, &w.admin, "the admin's".into()).await;
    let admin = last_editor().await;
    assert!(
        admin.as_deref().is_some_and(|a| a != "alice"),
        "stamped {admin:?}"
    );
    describe(&w, &w.alice, "alice again".into()).await;
    assert_eq!(last_editor().await.as_deref(), Some("alice"));
}

/// What the probe policy answers when the webhook would be called.
const CALLED: &str = "the webhook would be called";

/// A probe of a webhook's matchConditions as the apiserver evaluates them: a look-alike resource
/// `kind` (plural `<kind>s`, lowercase, in its own group, any spec) stores each case, then a
/// ValidatingAdmissionPolicy with the very same matchConditions, for `operations`, refuses
/// whatever the webhook would be called for. Each case is `[name, stored annotations (null:
/// none), stored spec, merge patch, whether it is called]`. Returns the resource and the cases
/// answered otherwise (an error, which would apply failurePolicy Fail, is never the expected
/// answer).
async fn probe_condition(
    kind: &str,
    condition: Vec<k8s_openapi::api::admissionregistration::v1::MatchCondition>,
    operations: &[&str],
    cases: &serde_json::Value,
) -> (Api<DynamicObject>, Vec<String>) {
    use k8s_openapi::{
        api::admissionregistration::v1::{
            ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
        },
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    };
    use kube::api::{ApiResource, GroupVersionKind};

    let admin = support::client().await;
    let plural = format!("{}s", kind.to_lowercase());
    let group = "probe.tooljet.io";
    let crd_name = format!("{plural}.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": { "name": crd_name },
        "spec": { "group": group, "scope": "Namespaced",
            "names": { "plural": plural, "singular": kind.to_lowercase(), "kind": kind },
            "versions": [{ "name": "v1", "served": true, "storage": true, "schema": { "openAPIV3Schema": {
                "type": "object",
                "properties": { "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } } } }] }
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = kube::runtime::wait::await_condition(
        crds,
        &crd_name,
        kube::runtime::conditions::is_crd_established(),
    );
    tokio::time::timeout(WAIT, established)
        .await
        .unwrap()
        .unwrap();
    let ns = support::namespace(&admin, &plural).await;
    let shapes: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &ns,
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), &plural),
    );
    let cases = cases.as_array().unwrap();
    // Stored before the probe policy exists (it refuses every CREATE).
    for c in cases {
        let (name, annotations, spec) = (c[0].as_str().unwrap(), &c[1], &c[2]);
        shapes
            .create(
                &PostParams::default(),
                &shape(kind, name, annotations.clone(), spec.clone()),
            )
            .await
            .unwrap();
    }
    let sentinel = shape(kind, "sentinel", serde_json::Value::Null, json!({}));
    shapes
        .create(&PostParams::default(), &sentinel)
        .await
        .unwrap();

    let policy_name = format!("{plural}-probe");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": { "name": policy_name },
        "spec": { "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{ "apiGroups": [group], "apiVersions": ["*"],
                "operations": operations, "resources": [plural] }] },
            "matchConditions": condition,
            "validations": [{ "expression": "false", "message": CALLED }] }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": { "name": policy_name },
        "spec": { "policyName": policy_name, "validationActions": ["Deny"] }
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(admin.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The apiserver picks the policy up from its informer: a sentinel with no annotations is
    // called by both webhooks' conditions on a spec change.
    support::eventually(WAIT, "the probe policy in effect", || {
        let shapes = shapes.clone();
        async move {
            let patch =
                json!({ "spec": { "description": format!("{:?}", std::time::Instant::now()) } });
            shapes
                .patch("sentinel", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .err()
                .map(msg)
                .filter(|m| m.contains(CALLED))
        }
    })
    .await;

    let mut wrong = vec![];
    for c in cases {
        let (name, patch, called) = (c[0].as_str().unwrap(), &c[3], c[4] == true);
        let result = shapes
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| "allowed")
            .map_err(msg);
        match (result, called) {
            (Ok(_), false) => {}
            (Err(m), true) if m.contains(CALLED) => {}
            (outcome, _) => wrong.push(format!(
                "{name}: expected {}, got {outcome:?}",
                if called { "a call" } else { "no call" }
            )),
        }
    }
    (shapes, wrong)
}

/// A probe object of the look-alike `kind`.
fn shape(
    kind: &str,
    name: &str,
    annotations: serde_json::Value,
    spec: serde_json::Value,
) -> DynamicObject {
    let mut metadata = json!({ "name": name });
    if !annotations.is_null() {
        metadata["annotations"] = annotations;
    }
    serde_json::from_value::<DynamicObject>(json!({ "apiVersion": "probe.tooljet.io/v1",
        "kind": kind, "metadata": metadata, "spec": spec }))
    .unwrap()
}

/// The validating webhook's matchCondition, evaluated by the apiserver on every shape a stored
/// version can have: the expected answer, never an error (which applies failurePolicy Fail).
/// AppVersions here are always stamped, so a look-alike resource carries the shapes (unstamped,
/// no annotations, no definition, ...).
#[tokio::test]
async fn the_skip_condition_answers_every_version_shape_without_error() {
    use tooljet_operator::webhook::config::{self, Endpoint};

    let condition = config::validating(&Endpoint::Url("https://unused".into()), None)
        .webhooks
        .unwrap()
        .remove(0)
        .match_conditions
        .unwrap();
    let stamped = json!({ "tooljet.io/stages": "development" });
    let spec = json!({ "app": "crm", "versionName": "v1", "environment": "development", "definition": { "pages": [] } });
    let bare = json!({ "app": "crm", "versionName": "v1", "environment": "development" });
    let described = json!({ "spec": { "description": "edited" } });
    let staging = json!({ "app": "crm", "versionName": "v1", "environment": "staging" });
    let null_definition = json!({ "app": "crm", "versionName": "v1", "environment": "development", "definition": null });
    let two_reserved =
        json!({ "tooljet.io/stages": "development", "tooljet.io/promoted-by": "bob" });
    let cases = json!([
        ["stamped-description", stamped, spec, described, false],
        ["stamped-requires", stamped, spec, { "spec": { "requires": { "constants": ["A"] } } }, false],
        ["stamped-labels-and-notes", stamped, spec,
            { "metadata": { "labels": { "team": "crm" }, "annotations": { "note": "x" } } }, false],
        ["no-definition-either-side", stamped, bare, described, false],
        ["null-definition-both-sides", stamped, null_definition, described, false],
        ["no-annotations", null, spec, described, true],
        ["annotations-without-stamp", { "note": "x" }, spec, described, true],
        ["empty-stamp", { "tooljet.io/stages": "" }, spec, described, true],
        ["stamp-past-first-stage", { "tooljet.io/stages": "development,staging" }, staging, described, true],
        ["no-environment", stamped, { "app": "crm", "versionName": "v1" }, described, true],
        ["definition-added", stamped, bare, { "spec": { "definition": {} } }, true],
        ["definition-removed", stamped, spec, { "spec": { "definition": null } }, true],
        ["definition-changed", stamped, spec, { "spec": { "definition": { "pages": [1] } } }, true],
        ["renamed", stamped, spec, { "spec": { "versionName": "v2" } }, true],
        ["app-changed", stamped, spec, { "spec": { "app": "billing" } }, true],
        ["promoted", stamped, spec, { "spec": { "environment": "staging" } }, true],
        ["reserved-annotation-added", stamped, spec,
            { "metadata": { "annotations": { "tooljet.io/promoted-by": "mallory" } } }, true],
        ["stamp-changed", stamped, spec,
            { "metadata": { "annotations": { "tooljet.io/stages": "development,x" } } }, true],
        ["reserved-annotation-removed", two_reserved, spec,
            { "metadata": { "annotations": { "tooljet.io/promoted-by": null } } }, true],
        ["all-annotations-removed", stamped, spec, { "metadata": { "annotations": null } }, true],
    ]);
    let (shapes, wrong) = probe_condition(
        "VersionShape",
        condition,
        &["CREATE", "UPDATE", "DELETE"],
        &cases,
    )
    .await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every CREATE and DELETE is called.
    denied(
        shapes
            .create(
                &PostParams::default(),
                &shape("VersionShape", "new", stamped.clone(), spec.clone()),
            )
            .await
            .map_err(msg),
        CALLED,
    );
    denied(
        shapes
            .delete("stamped-description", &DeleteParams::default())
            .await
            .map(|_| {
                shape(
                    "VersionShape",
                    "deleted",
                    serde_json::Value::Null,
                    json!({}),
                )
            })
            .map_err(msg),
        CALLED,
    );
}

/// The mutating webhook's matchCondition for versions, evaluated by the apiserver on every shape
/// a stored version can have: it is skipped only for a spec edit that is not a promotion by the
/// user its last-edited-by annotation already names; never an error.
#[tokio::test]
async fn the_stamp_condition_answers_every_version_shape_without_error() {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    use tooljet_operator::webhook::config::{self, Endpoint};

    let condition = config::mutating(&Endpoint::Url("https://unused".into()), None)
        .webhooks
        .unwrap()
        .into_iter()
        .find(|w| w.name == "appversions.mutate.tooljet.io")
        .and_then(|w| w.match_conditions)
        .unwrap();
    // The probe's requests are the admin's: the stamp of the last editor names them.
    let me = Api::<SelfSubjectReview>::all(support::client().await)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap()
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap();
    let mine = json!({ "tooljet.io/last-edited-by": me });
    let theirs = json!({ "tooljet.io/last-edited-by": "alice" });
    let spec = json!({ "app": "crm", "versionName": "v1", "environment": "development" });
    let unplaced = json!({ "app": "crm", "versionName": "v1" });
    let described = json!({ "spec": { "description": "edited" } });
    let cases = json!([
        ["my-edit", mine, spec, described, false],
        ["my-edit-without-environment", mine, unplaced, described, false],
        ["my-metadata-edit", mine, spec, { "metadata": { "labels": { "team": "crm" } } }, false],
        ["their-metadata-edit", theirs, spec, { "metadata": { "labels": { "team": "crm" } } }, false],
        ["stamp-already-set-to-me", theirs, spec,
            { "metadata": { "annotations": { "tooljet.io/last-edited-by": me } },
              "spec": { "description": "edited" } }, false],
        ["their-edit", theirs, spec, described, true],
        ["no-annotations", null, spec, described, true],
        ["annotations-without-editor", { "note": "x" }, spec, described, true],
        ["my-promotion", mine, spec, { "spec": { "environment": "staging" } }, true],
        ["environment-removed", mine, spec, { "spec": { "environment": null } }, true],
        ["environment-added", mine, unplaced, { "spec": { "environment": "development" } }, true],
        ["editor-removed", mine, spec,
            { "metadata": { "annotations": { "tooljet.io/last-edited-by": null } },
              "spec": { "description": "edited" } }, true],
        ["all-annotations-removed", mine, spec,
            { "metadata": { "annotations": null }, "spec": { "description": "edited" } }, true],
        ["editor-forged", mine, spec,
            { "metadata": { "annotations": { "tooljet.io/last-edited-by": "alice" } },
              "spec": { "description": "edited" } }, true],
    ]);
    let (shapes, wrong) =
        probe_condition("StampShape", condition, &["CREATE", "UPDATE"], &cases).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every CREATE is stamped.
    denied(
        shapes
            .create(
                &PostParams::default(),
                &shape("StampShape", "new", mine.clone(), spec.clone()),
            )
            .await
            .map_err(msg),
        CALLED,
    );
}
