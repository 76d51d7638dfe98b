//! Promotion policies as the real kube-apiserver enforces them through the webhook, with the
//! shipped ClusterRoles and impersonated users: required approvals with separation of duties,
//! revocation, promotion windows (deny open now, allow closed now) for promotions and releases,
//! break-glass override recorded in the histories, policies that the people they constrain
//! cannot lift, and revocations that count at once.

mod support;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{
    Client, ResourceExt,
    api::{DeleteParams, DynamicObject},
};
use serde_json::{Value, json};
use support::admission::{WAIT, Workspace, denied};

async fn user(name: &str) -> Client {
    support::client_as(name, &["tooljet-users"]).await
}

async fn approve(
    w: &Workspace,
    client: &Client,
    name: &str,
    version: &str,
    stage: &str,
) -> Result<DynamicObject, String> {
    // What the approver reviewed: the version as stored now.
    let generation = w
        .get("AppVersion", version)
        .await
        .and_then(|v| v.metadata.generation);
    w.create(
        client,
        "Approval",
        name,
        json!({ "version": version, "environment": stage, "generation": generation,
                "comment": "QA sign-off, ticket 123" }),
    )
    .await
}

/// Retries `attempt` until its denial mentions `expect` (the webhook's caches, and RBAC, catch
/// up within moments of a change); panics if it is allowed.
async fn until_denied(
    what: &str,
    expect: &str,
    attempt: impl AsyncFn() -> Result<DynamicObject, String>,
) -> String {
    support::eventually(WAIT, what, || async {
        match attempt().await {
            Ok(obj) => panic!(
                "{what}: allowed ({}), expected a denial mentioning {expect:?}",
                obj.name_any()
            ),
            Err(m) => m.contains(expect).then_some(m),
        }
    })
    .await
}

/// Retries `attempt` until it is allowed.
async fn until_allowed(what: &str, attempt: impl AsyncFn() -> Result<DynamicObject, String>) {
    let mut last = String::new();
    let result = tokio::time::timeout(WAIT, async {
        loop {
            match attempt().await {
                Ok(_) => return,
                Err(m) => last = m,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(result.is_ok(), "{what}: still denied: {last}");
}

/// Waits until ToolJetApp crm's status lists `policy` on production: the webhook judges the
/// policies from the operator's cache, which the controller read to write that status, so a
/// promotion made after this is judged with the policy.
async fn in_force(w: &Workspace, policy: &str) {
    in_force_on(w, "crm", "production", policy).await;
}

/// [`in_force`] for ToolJetApp `app` and stage `stage`.
async fn in_force_on(w: &Workspace, app: &str, stage: &str, policy: &str) {
    support::eventually(
        WAIT,
        &format!("PromotionPolicy {policy} in force on {app}/{stage}"),
        || async {
            let app = w.get("ToolJetApp", app).await?;
            app.data["status"]["gates"]
                .as_array()?
                .iter()
                .any(|g| {
                    g["environment"] == stage
                        && g["policies"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|n| n == policy))
                })
                .then_some(())
        },
    )
    .await;
}

fn annotation(obj: &DynamicObject, key: &str) -> Option<String> {
    obj.annotations().get(key).cloned()
}

/// A version `name` created by alice (the developer) and promoted to staging by bob.
async fn version_in_staging(w: &Workspace, name: &str) {
    w.create(
        &w.alice,
        "AppVersion",
        name,
        json!({ "app": "crm", "versionName": name, "definition": { "pages": [] } }),
    )
    .await
    .unwrap();
    w.promote(&w.bob, name, "staging").await.unwrap();
}

#[tokio::test]
async fn two_distinct_approvals_gate_a_promotion_with_separation_of_duties() {
    let w = Workspace::new("policy-approvals").await;
    for approver in ["alice", "dave", "erin"] {
        w.bind(approver, "tooljet-approver").await;
    }
    let (dave, erin, bob_promoter) = (user("dave").await, user("erin").await, w.bob.clone());
    version_in_staging(&w, "v-new").await;
    let created = w.get("AppVersion", "v-new").await.unwrap();
    assert_eq!(
        annotation(&created, "tooljet.io/created-by").as_deref(),
        Some("alice")
    );

    w.create(
        &w.admin,
        "PromotionPolicy",
        "prod-gate",
        json!({ "environments": ["production"], "approvals": { "required": 2, "separationOfDuties": true } }),
    )
    .await
    .unwrap();
    in_force(&w, "prod-gate").await;
    let m = until_denied("promotion without approvals", "0 of 2", || {
        w.promote(&bob_promoter, "v-new", "production")
    })
    .await;
    assert!(m.contains("PromotionPolicy prod-gate"), "{m}");

    // The creator may not approve her own version; nobody approves without the verb; an
    // approval is for the stage right after the version's.
    denied(
        approve(&w, &w.alice, "by-alice", "v-new", "production").await,
        "alice created AppVersion v-new",
    );
    denied(
        approve(&w, &bob_promoter, "by-bob", "v-new", "production").await,
        "forbidden",
    );
    denied(
        approve(&w, &dave, "early", "v-new", "staging").await,
        "approve it for production",
    );

    // One approver twice counts once.
    let first = approve(&w, &dave, "by-dave", "v-new", "production")
        .await
        .unwrap();
    assert_eq!(
        annotation(&first, "tooljet.io/approved-by").as_deref(),
        Some("dave")
    );
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("AppVersion", "v-new")
    );
    assert_eq!(owner.uid, created.uid().unwrap());
    approve(&w, &dave, "by-dave-again", "v-new", "production")
        .await
        .unwrap();
    until_denied("promotion with one approver", "1 of 2", || {
        w.promote(&bob_promoter, "v-new", "production")
    })
    .await;

    // Approvals are immutable; forging the approver is refused.
    denied(
        w.merge(
            &w.admin,
            "Approval",
            "by-dave",
            json!({ "spec": { "comment": "changed" } }),
        )
        .await,
        "immutable",
    );
    denied(
        w.merge(
            &w.admin,
            "Approval",
            "by-dave",
            json!({ "metadata": { "annotations": { "tooljet.io/approved-by": "erin" } } }),
        )
        .await,
        "tooljet.io/approved-by",
    );

    // Two distinct approvers: the promotion passes.
    approve(&w, &erin, "by-erin", "v-new", "production")
        .await
        .unwrap();
    // Revoking one (dave's two objects) counts him out again.
    for name in ["by-dave", "by-dave-again"] {
        w.api(&dave, "Approval")
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    until_denied("promotion after a revocation", "1 of 2", || {
        w.promote(&bob_promoter, "v-new", "production")
    })
    .await;
    approve(&w, &dave, "by-dave-3", "v-new", "production")
        .await
        .unwrap();
    until_allowed("promotion with two approvers", || {
        w.promote(&bob_promoter, "v-new", "production")
    })
    .await;
    let promoted = w.get("AppVersion", "v-new").await.unwrap();
    assert_eq!(
        promoted.data["spec"]["environment"],
        json!("production"),
        "promoted"
    );
}

/// An approval revoked a moment before a promotion no longer counts: the webhook reads a gated
/// promotion's Approvals from the API, not from its cache, which may lag under load. Twenty
/// versions at once, each approved, revoked and promoted in a row, while a configuration changes.
#[tokio::test]
async fn approvals_revoked_a_moment_ago_no_longer_count() {
    let w = Workspace::new("policy-fresh").await;
    w.bind("dave", "tooljet-approver").await;
    let dave = user("dave").await;
    let versions: Vec<String> = (0..20).map(|i| format!("v-fresh-{i}")).collect();
    for v in &versions {
        version_in_staging(&w, v).await;
    }
    w.create(
        &w.admin,
        "PromotionPolicy",
        "prod-gate",
        json!({ "environments": ["production"], "approvals": { "required": 1 } }),
    )
    .await
    .unwrap();
    in_force(&w, "prod-gate").await;
    let (w, dave) = (&w, &dave);
    let flows = futures::future::join_all(versions.iter().map(|v| async move {
        let approval = format!("{v}-by-dave");
        approve(w, dave, &approval, v, "production").await.unwrap();
        w.api(dave, "Approval")
            .delete(&approval, &DeleteParams::default())
            .await
            .unwrap();
        denied(w.promote(&w.bob, v, "production").await, "0 of 1");
    }));
    // Meanwhile the operator is kept busy with other work, as it may be when such requests come.
    let busy = futures::future::join_all((0..40).map(|i| async move {
        w.merge(
            &w.admin,
            "EnvironmentConfig",
            "crm-development",
            json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": format!("https://dev-{i}") }] } }),
        )
        .await
        .ok();
    }));
    futures::future::join(flows, busy).await;
    for v in &versions {
        let stored = w.get("AppVersion", v).await.unwrap();
        assert_eq!(stored.data["spec"]["environment"], json!("staging"), "{v}");
    }
}

#[tokio::test]
async fn a_deny_window_open_now_refuses_promotions_and_releases_until_an_override() {
    let w = Workspace::new("policy-freeze").await;
    w.bind("olivia", "tooljet-admin").await;
    let olivia = user("olivia").await;
    // Active at every minute for two hours: closed now, whenever the test runs.
    w.create(
        &w.admin,
        "PromotionPolicy",
        "freeze",
        json!({ "environments": ["production"],
                "windows": [{ "kind": "Deny", "schedule": "* * * * *", "duration": "2h", "description": "release freeze" }] }),
    )
    .await
    .unwrap();
    in_force(&w, "freeze").await;
    let m = until_denied("promotion in a freeze", "release freeze", || {
        w.promote(&w.bob, "v-stg", "production")
    })
    .await;
    assert!(m.contains("tooljet.io/override-reason"), "{m}");
    // Releases and rollbacks of the last stage too.
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": "v-prod" } } }),
        )
        .await,
        "release freeze",
    );

    // A reason without the verb override is refused; a reason outside a promotion too.
    let with_reason = |reason: &str| {
        json!({ "metadata": { "annotations": { "tooljet.io/override-reason": reason } },
                "spec": { "environment": "production" } })
    };
    denied(
        w.merge(&w.bob, "AppVersion", "v-stg", with_reason("hotfix"))
            .await,
        "verb override on resource environments named production",
    );
    denied(
        w.merge(
            &olivia,
            "AppVersion",
            "v-dev",
            json!({ "metadata": { "annotations": { "tooljet.io/override-reason": "x" } } }),
        )
        .await,
        "only takes effect in the same request",
    );

    // Break-glass by an admin: passes, the reason is consumed into the stamps and the history.
    let promoted = w
        .merge(
            &olivia,
            "AppVersion",
            "v-stg",
            with_reason("INC-42 security hotfix"),
        )
        .await
        .unwrap();
    assert_eq!(annotation(&promoted, "tooljet.io/override-reason"), None);
    assert_eq!(
        annotation(&promoted, "tooljet.io/overridden-reason").as_deref(),
        Some("INC-42 security hotfix")
    );
    assert_eq!(
        annotation(&promoted, "tooljet.io/overridden-by").as_deref(),
        Some("olivia")
    );
    support::eventually(
        WAIT,
        "the promotion history records the override",
        || async {
            let v = w.get("AppVersion", "v-stg").await?;
            let last = v.data["status"]["promotions"].as_array()?.last()?.clone();
            (last["overrideReason"] == json!("INC-42 security hotfix")
                && last["by"] == json!("olivia"))
            .then_some(())
        },
    )
    .await;

    let released = w
        .merge(
            &olivia,
            "ToolJetApp",
            "crm",
            json!({ "metadata": { "annotations": { "tooljet.io/override-reason": "INC-42 rollout" } },
                    "spec": { "release": { "version": "v-stg" } } }),
        )
        .await
        .unwrap();
    assert_eq!(
        annotation(&released, "tooljet.io/overridden-reason").as_deref(),
        Some("INC-42 rollout")
    );
    support::eventually(WAIT, "the release history records the override", || async {
        let app = w.get("ToolJetApp", "crm").await?;
        let last = app.data["status"]["releaseHistory"]
            .as_array()?
            .last()?
            .clone();
        (last["version"] == json!("v-stg") && last["overrideReason"] == json!("INC-42 rollout"))
            .then_some(())
    })
    .await;

    // The next promotion without a reason is judged by the window again: a used reason never
    // carries over.
    version_in_staging(&w, "v-next").await;
    denied(
        w.promote(&olivia, "v-next", "production").await,
        "release freeze",
    );
}

#[tokio::test]
async fn an_allow_window_closed_now_refuses_and_an_unguarded_app_passes() {
    let w = Workspace::new("policy-allow").await;
    // Opens for one hour, twelve hours from now: closed for the next eleven.
    let hour = (Timestamp::now()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .hour()
        + 12)
        % 24;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "business-hours",
        json!({ "environments": ["production"], "appSelector": { "matchLabels": { "tier": "critical" } },
                "windows": [{ "kind": "Allow", "schedule": format!("0 {hour} * * *"), "duration": "1h", "timeZone": "UTC" }] }),
    )
    .await
    .unwrap();
    // Not selected yet: promotions pass.
    version_in_staging(&w, "v-a").await;
    until_allowed("promotion of an unselected app", || {
        w.promote(&w.bob, "v-a", "production")
    })
    .await;
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "metadata": { "labels": { "tier": "critical" } } }),
    )
    .await
    .unwrap();
    in_force(&w, "business-hours").await;
    let m = until_denied("promotion outside the allow window", "Allow", || {
        w.promote(&w.bob, "v-stg", "production")
    })
    .await;
    assert!(m.contains("business-hours"), "{m}");
}

#[tokio::test]
async fn the_people_a_policy_constrains_cannot_lift_it() {
    let w = Workspace::new("policy-edit").await;
    // alice may write PromotionPolicies as far as RBAC goes, but configures only development.
    w.grant(
        "alice",
        "policy-writer",
        json!([{ "apiGroups": ["tooljet.io"], "resources": ["promotionpolicies"],
                 "verbs": ["get", "list", "create", "update", "patch", "delete"] }]),
    )
    .await;
    let gate = |stages: Value| json!({ "environments": stages, "approvals": { "required": 1 } });

    let m = until_denied(
        "alice creating a production policy",
        "verb configure",
        || {
            w.create(
                &w.alice,
                "PromotionPolicy",
                "mine",
                gate(json!(["production"])),
            )
        },
    )
    .await;
    assert!(m.contains("named production"), "{m}");
    until_allowed("alice guarding her own stage", || {
        w.create(
            &w.alice,
            "PromotionPolicy",
            "dev-gate",
            gate(json!(["development"])),
        )
    })
    .await;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "prod-gate",
        gate(json!(["production"])),
    )
    .await
    .unwrap();
    denied(
        w.merge(
            &w.alice,
            "PromotionPolicy",
            "prod-gate",
            json!({ "spec": { "environments": ["development"] } }),
        )
        .await,
        "named production",
    );
    let deleted = w
        .api(&w.alice, "PromotionPolicy")
        .delete("prod-gate", &DeleteParams::default())
        .await;
    let message = match deleted {
        Ok(_) => panic!("alice deleted a production policy"),
        Err(e) => support::admission::msg(e),
    };
    assert!(message.contains("named production"), "{message}");
    assert!(w.get("PromotionPolicy", "prod-gate").await.is_some());

    // A window that does not parse is refused with its field.
    let m = w
        .create(
            &w.admin,
            "PromotionPolicy",
            "bad",
            json!({ "environments": ["production"],
                    "windows": [{ "kind": "Deny", "schedule": "0 25 * * *", "duration": "1h" }] }),
        )
        .await
        .unwrap_err();
    assert!(m.contains("spec.windows[0].schedule"), "{m}");
    let m = w
        .create(
            &w.admin,
            "PromotionPolicy",
            "bad-zone",
            json!({ "environments": ["production"],
                    "windows": [{ "kind": "Deny", "schedule": "0 18 * * 5", "duration": "62h", "timeZone": "Mars/Olympus" }] }),
        )
        .await
        .unwrap_err();
    assert!(m.contains("spec.windows[0].timeZone"), "{m}");
}

/// Labels and stage names decide which policies guard an app: changing them so that a policy's
/// guard changes is editing that policy, and a release is judged on the labels before and after.
#[tokio::test]
async fn labels_and_stage_names_cannot_lift_a_policy() {
    let w = Workspace::new("policy-labels").await;
    w.bind("erin", "tooljet-environment-admin").await;
    let erin = user("erin").await;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "critical-freeze",
        json!({ "environments": ["production"], "appSelector": { "matchLabels": { "tier": "critical" } },
                "windows": [{ "kind": "Deny", "schedule": "* * * * *", "duration": "2h", "description": "release freeze" }] }),
    )
    .await
    .unwrap();
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "metadata": { "labels": { "tier": "critical" } } }),
    )
    .await
    .unwrap();
    in_force(&w, "critical-freeze").await;

    // The release manager drops the label: that lifts the policy, which they may not edit.
    let needs_policy = |user: &str, what: &str| {
        format!(
            "user {user} may not {what} of ToolJetApp crm: it changes whether PromotionPolicy critical-freeze \
             (guarding production) guards the app, which is editing that policy: it needs verb update on resource \
             promotionpolicies named critical-freeze (group tooljet.io) in namespace {}",
            w.ns
        )
    };
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "crm",
            json!({ "metadata": { "labels": { "tier": null } } }),
        )
        .await,
        &needs_policy("carol", "change the labels"),
    );
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "crm",
            json!({ "metadata": { "labels": { "tier": null } }, "spec": { "release": { "version": "v-prod" } } }),
        )
        .await,
        &needs_policy("carol", "change the labels"),
    );
    // Even someone who may edit the policy cannot release through the freeze by dropping the
    // label in the same request: the gate is judged on the labels as stored too.
    denied(
        w.merge(
            &w.admin,
            "ToolJetApp",
            "crm",
            json!({ "metadata": { "labels": { "tier": null } }, "spec": { "release": { "version": "v-prod" } } }),
        )
        .await,
        "ToolJetApp crm cannot release v-prod: production is closed",
    );
    let app = w.get("ToolJetApp", "crm").await.unwrap();
    assert_eq!(
        app.labels().get("tier").map(String::as_str),
        Some("critical")
    );
    assert!(
        app.data["spec"]["release"].is_null(),
        "{:?}",
        app.data["spec"]
    );
    // Who may edit the policy may relabel the app (the legitimate path).
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "metadata": { "labels": { "tier": null } } }),
    )
    .await
    .expect("an admin relabels the app");

    // Renaming an empty guarded stage lifts a policy on it: the environment admin, who may
    // change pipelines but not policies, may not.
    w.create(
        &w.admin,
        "PromotionPolicy",
        "all-production",
        json!({ "environments": ["production"], "approvals": { "required": 1 } }),
    )
    .await
    .unwrap();
    w.create(&w.admin, "ToolJetApp", "billing", json!({}))
        .await
        .unwrap();
    in_force_on(&w, "billing", "production", "all-production").await;
    let renamed = json!({ "spec": { "environments": ["development", "staging", "prod"] } });
    let m = support::eventually(WAIT, "erin's rename refused for the policy", || async {
        match w
            .merge(&erin, "ToolJetApp", "billing", renamed.clone())
            .await
        {
            Ok(_) => panic!("erin renamed a guarded stage"),
            Err(m) => m.contains("PromotionPolicy all-production").then_some(m),
        }
    })
    .await;
    assert!(
        m.contains(
            "user erin may not change the labels or spec.environments of ToolJetApp billing: it changes whether \
             PromotionPolicy all-production (guarding production) guards the app"
        ),
        "{m}"
    );
    w.merge(&w.admin, "ToolJetApp", "billing", renamed)
        .await
        .expect("an admin, who may edit the policy, renames the stage");
}

/// An approval names the generation its approver reviewed: an edit made before it is created
/// is never approved unseen, and the approver is told what to look at.
#[tokio::test]
async fn an_approval_is_pinned_to_the_generation_reviewed() {
    let w = Workspace::new("policy-pinned").await;
    w.bind("dave", "tooljet-approver").await;
    let dave = user("dave").await;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "reviewed",
        json!({ "environments": ["staging"], "approvals": { "required": 1 } }),
    )
    .await
    .unwrap();
    in_force_on(&w, "crm", "staging", "reviewed").await;
    w.create(
        &w.alice,
        "AppVersion",
        "v-edit",
        json!({ "app": "crm", "versionName": "v-edit", "definition": { "pages": [] } }),
    )
    .await
    .unwrap();
    // dave reviews generation 1 ...
    let reviewed = w
        .get("AppVersion", "v-edit")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    // ... and alice edits it before his approval is created.
    w.merge(
        &w.alice,
        "AppVersion",
        "v-edit",
        json!({ "spec": { "definition": { "pages": [{ "name": "unseen" }] } } }),
    )
    .await
    .unwrap();
    let body = json!({ "version": "v-edit", "environment": "staging", "generation": reviewed });
    let m = support::eventually(
        WAIT,
        "dave's stale approval refused for its generation",
        || async {
            match w.create(&dave, "Approval", "by-dave", body.clone()).await {
                Ok(_) => panic!("an approval of generation {reviewed} was admitted after an edit"),
                Err(m) => m.contains("generation").then_some(m),
            }
        },
    )
    .await;
    assert!(
        m.contains(&format!(
            "Approval by-dave: it approves generation {reviewed} of AppVersion v-edit, which is at generation {} \
             now, last edited by alice; review what changed and approve generation {}",
            reviewed + 1,
            reviewed + 1
        )),
        "{m}"
    );
    // Without a generation: refused, never filled in.
    denied(
        w.create(
            &dave,
            "Approval",
            "by-dave",
            json!({ "version": "v-edit", "environment": "staging" }),
        )
        .await,
        "spec.generation is required",
    );
    // Naming what is stored now: admitted and stamped with it.
    let approved = w
        .create(
            &dave,
            "Approval",
            "by-dave",
            json!({ "version": "v-edit", "environment": "staging", "generation": reviewed + 1 }),
        )
        .await
        .expect("an approval of the current generation");
    assert_eq!(
        annotation(&approved, "tooljet.io/approved-generation"),
        Some((reviewed + 1).to_string())
    );
    // An edit a moment ago, and at once an approval of what it stored: judged on the version as
    // stored, not on a cache that may not have seen the edit yet, so admitted the first time.
    for round in 2..6 {
        w.merge(
            &w.alice,
            "AppVersion",
            "v-edit",
            json!({ "spec": { "definition": { "pages": [{ "name": format!("edit {round}") }] } } }),
        )
        .await
        .unwrap();
        let generation = reviewed + round;
        w.create(
            &dave,
            "Approval",
            &format!("by-dave-{round}"),
            json!({ "version": "v-edit", "environment": "staging", "generation": generation }),
        )
        .await
        .unwrap_or_else(|e| panic!("generation {generation}, approved right after its edit: {e}"));
    }
}

/// With separation of duties, everyone who edited a version is kept from approving it, not only
/// its creator and last editor: a co-author cannot approve after the creator's one-word edit.
#[tokio::test]
async fn a_co_author_cannot_approve_under_separation_of_duties() {
    let w = Workspace::new("policy-coauthor").await;
    w.bind("bob", "tooljet-approver").await;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "four-eyes",
        json!({ "environments": ["staging"], "approvals": { "required": 1, "separationOfDuties": true } }),
    )
    .await
    .unwrap();
    in_force_on(&w, "crm", "staging", "four-eyes").await;
    w.create(
        &w.alice,
        "AppVersion",
        "v-co",
        json!({ "app": "crm", "versionName": "v-co", "definition": { "pages": [] } }),
    )
    .await
    .unwrap();
    // bob adds a query to a new URL, alice makes a one-word edit after him.
    w.merge(
        &w.bob,
        "AppVersion",
        "v-co",
        json!({ "spec": { "definition": { "pages": [], "queries": [{ "url": "https://elsewhere.example" }] } } }),
    )
    .await
    .unwrap();
    let edited = w
        .merge(
            &w.alice,
            "AppVersion",
            "v-co",
            json!({ "spec": { "description": "typo" } }),
        )
        .await
        .unwrap();
    assert_eq!(
        annotation(&edited, "tooljet.io/edited-by").as_deref(),
        Some(r#"["bob","alice"]"#)
    );
    assert_eq!(
        annotation(&edited, "tooljet.io/last-edited-by").as_deref(),
        Some("alice")
    );
    // bob is no longer the last editor, but he edited it: he may not approve.
    let m = support::eventually(WAIT, "bob's approval refused as a co-author", || async {
        match approve(&w, &w.bob, "by-bob", "v-co", "staging").await {
            Ok(_) => panic!("a co-author's approval was admitted"),
            Err(m) => m.contains("four-eyes").then_some(m),
        }
    })
    .await;
    assert!(
        m.contains("Approval by-bob: user bob edited AppVersion v-co and may not approve it: PromotionPolicy four-eyes requires separation of duties"),
        "{m}"
    );
    // Forging the record is refused.
    denied(
        w.merge(
            &w.alice,
            "AppVersion",
            "v-co",
            json!({ "metadata": { "annotations": { "tooljet.io/edited-by": "[\"alice\"]" } } }),
        )
        .await,
        "tooljet.io/edited-by",
    );
}
