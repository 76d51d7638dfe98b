//! Release safety, from the outside: ToolJet Deployments on KWOK's simulated nodes, the operator
//! with its admission webhook, and people acting under their own roles. A test that needs a
//! rollout that never becomes available gives its Deployments a simulated node of its own and
//! cordons it: the new pods stay Pending, and the deployment controller reports
//! ProgressDeadlineExceeded, as it would for pods that never become ready.
mod support;

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, events::v1::Event};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::admission::{Workspace, denied};
use support::pods::{OwnNode, ROLL, deployment};

/// App crm as stored, as JSON.
async fn stored_app(w: &Workspace) -> Value {
    serde_json::to_value(w.get("ToolJetApp", "crm").await.unwrap()).unwrap()
}

/// The last verification of `stage` in app crm's status.
fn verification<'a>(app: &'a Value, stage: &str) -> Option<&'a Value> {
    app["status"]["verifications"]
        .as_array()?
        .iter()
        .find(|v| v["environment"] == stage)
}

/// Waits until app crm's status satisfies `check`, which gives the value to return.
async fn until_app<T>(w: &Workspace, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let check = &check;
    support::eventually(ROLL, what, || async move { check(&stored_app(w).await) }).await
}

/// Waits until `stage`'s verification is in `phase` (for `version`, when given).
async fn until_verified(w: &Workspace, stage: &str, phase: &str, version: Option<&str>) -> Value {
    until_app(
        w,
        &format!("{stage}'s verification {phase} ({version:?})"),
        |a| {
            let v = verification(a, stage)?;
            (v["phase"] == phase && version.is_none_or(|version| v["version"] == version))
                .then(|| v.clone())
        },
    )
    .await
}

fn condition<'a>(obj: &'a Value, type_: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// The reasons of the Events about app crm.
async fn event_reasons(w: &Workspace) -> Vec<String> {
    Api::<Event>::namespaced(w.admin.clone(), &w.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("crm"))
        .filter_map(|e| e.reason)
        .collect()
}

/// A version of crm created by the admin and promoted to production.
async fn version_in_production(w: &Workspace, name: &str) {
    w.create(
        &w.admin,
        "AppVersion",
        name,
        json!({ "app": "crm", "versionName": name, "description": "d", "definition": { "pages": [] } }),
    )
    .await
    .unwrap();
    for stage in ["staging", "production"] {
        w.promote(&w.admin, name, stage).await.unwrap();
    }
}

async fn release(w: &Workspace, version: &str) {
    w.merge(
        &w.carol,
        "ToolJetApp",
        "crm",
        json!({ "spec": { "release": { "version": version } } }),
    )
    .await
    .unwrap_or_else(|e| panic!("carol releasing {version}: {e}"));
}

/// A change of staging's configuration (its workloads restart).
async fn set_staging_api_url(w: &Workspace, url: &str) {
    w.merge(
        &w.admin,
        "EnvironmentConfig",
        "crm-staging",
        json!({ "spec": { "constants": [{ "name": "API_URL", "type": "Global", "value": url }] } }),
    )
    .await
    .unwrap();
}

/// The pod-template annotation that carries the release to the workload.
async fn release_stamp(w: &Workspace, deployment: &str) -> Option<String> {
    let d = Api::<Deployment>::namespaced(w.admin.clone(), &w.ns)
        .get(deployment)
        .await
        .unwrap();
    d.spec?
        .template
        .metadata?
        .annotations?
        .get("tooljet.io/release")
        .cloned()
}

/// The operator's /metrics text.
async fn metrics() -> String {
    let env = support::admission::env().await;
    support::admission::http_get(&env.health, "/metrics")
        .await
        .expect("/metrics answers")
        .1
}

#[tokio::test]
async fn a_release_whose_pods_never_become_available_is_rolled_back_automatically() {
    testenv::shared_with_pods();
    let w = Workspace::new("release-safety").await;
    let node = OwnNode::new(&w.admin, &w.ns).await;
    node.deployment(&w.admin, &w.ns, "tooljet-production", "production")
        .await;
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "spec": {
            "rollout": [{ "environment": "production", "deployments": ["tooljet-production"] }],
            "verification": { "timeoutSeconds": 120, "autoRollback": true },
        } }),
    )
    .await
    .unwrap();
    release(&w, "v-prod").await;
    let first = until_verified(&w, "production", "Verified", Some("v-prod")).await;
    assert_eq!(first["cause"], "Release", "{first}");
    assert_eq!(
        release_stamp(&w, "tooljet-production").await.as_deref(),
        Some("crm=v-prod"),
        "a release reaches the last stage's workloads"
    );

    version_in_production(&w, "v2").await;
    // From now on no new pod of this test starts: v2's never become available.
    node.cordon(&w.admin, true).await;
    release(&w, "v2").await;
    // A freeze of production starts while v2 is being verified: the rollback passes it (it
    // restores what users had), and says so.
    w.create(
        &w.admin,
        "PromotionPolicy",
        "freeze",
        json!({ "environments": ["production"],
                "windows": [{ "kind": "Deny", "schedule": "* * * * *", "duration": "1h", "description": "release freeze" }] }),
    )
    .await
    .unwrap();

    let app = until_app(&w, "the automatic rollback to v-prod", |a| {
        let last = a["status"]["releaseHistory"].as_array()?.last()?;
        (last["automatic"] == true).then(|| a.clone())
    })
    .await;
    assert_eq!(app["spec"]["release"]["version"], "v-prod");
    let history: Vec<(String, bool, Value)> = app["status"]["releaseHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["version"].as_str().unwrap().to_string(),
                h["automatic"] == true,
                h["verification"].clone(),
            )
        })
        .collect();
    assert_eq!(
        history[..2],
        [
            ("v-prod".to_string(), false, json!("Verified")),
            ("v2".to_string(), false, json!("Failed")),
        ],
        "{history:?}"
    );
    assert_eq!(history[2].0, "v-prod");
    let last = &app["status"]["releaseHistory"][2];
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("the release of v2 failed verification")
            && reason.contains("Deployment tooljet-production"),
        "{reason}"
    );
    assert!(last["rollback"] == true, "{last}");
    assert!(
        last["overrideReason"].as_str().is_some_and(
            |r| r.starts_with("automatic rollback: the release of v2 failed verification")
        ),
        "the rollback passed the freeze as a break-glass override: {last}"
    );
    // People are still held by the freeze.
    denied(
        w.merge(
            &w.carol,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": "v2" } } }),
        )
        .await,
        "production is closed by Deny window",
    );

    // The rollback goes back to the ReplicaSet that never went away, and is verified.
    let back = until_verified(&w, "production", "Verified", Some("v-prod")).await;
    assert_eq!(back["cause"], "AutomaticRollback", "{back}");
    let app = until_app(&w, "Verified True again", |a| {
        (condition(a, "Verified")["status"] == "True").then(|| a.clone())
    })
    .await;
    assert_eq!(
        app["status"]["releaseHistory"][2]["verification"],
        "Verified"
    );
    assert_eq!(
        release_stamp(&w, "tooljet-production").await.as_deref(),
        Some("crm=v-prod")
    );
    let reasons = event_reasons(&w).await;
    for reason in [
        "VerificationFailed",
        "AutomaticRollback",
        "RolledBackAutomatically",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} among {reasons:?}"
        );
    }
    // Still v-prod a while later: a rollback is made once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = stored_app(&w).await;
    assert_eq!(app["spec"]["release"]["version"], "v-prod");
    assert_eq!(app["status"]["releaseHistory"].as_array().unwrap().len(), 3);

    let text = metrics().await;
    let ns = &w.ns;
    let notes: Vec<String> = Api::<Event>::namespaced(w.admin.clone(), &w.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref().is_some_and(|r| r.starts_with("Verif")))
        .map(|e| format!("{:?}: {:?} x{:?}", e.reason, e.note, e.deprecated_count))
        .collect();
    for series in [
        format!("tooljet_operator_automatic_rollbacks_total{{namespace=\"{ns}\",app=\"crm\"}} 1"),
        format!(
            "tooljet_operator_verifications_total{{namespace=\"{ns}\",app=\"crm\",environment=\"production\",result=\"failed\"}} 1"
        ),
        format!(
            "tooljet_operator_deliveries_total{{namespace=\"{ns}\",app=\"crm\",kind=\"automatic_rollback\"}} 1"
        ),
        format!(
            "tooljet_operator_time_to_restore_seconds_count{{namespace=\"{ns}\",app=\"crm\"}} 1"
        ),
        format!("tooljet_operator_lead_time_seconds_count{{namespace=\"{ns}\",app=\"crm\"}} 2"),
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "no line {series:?} in /metrics; the verification Events: {notes:#?}; the namespace's lines:\n{}",
            text.lines()
                .filter(|l| l.contains(ns.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test]
async fn without_automatic_rollback_a_failed_release_is_reported_and_a_failing_stage_lets_no_version_out()
 {
    testenv::shared_with_pods();
    let w = Workspace::new("stage-verify").await;
    let node = OwnNode::new(&w.admin, &w.ns).await;
    for stage in ["staging", "production"] {
        node.deployment(&w.admin, &w.ns, &format!("tooljet-{stage}"), stage)
            .await;
    }
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "spec": { "rollout": [
            { "environment": "staging", "deployments": ["tooljet-staging"] },
            { "environment": "production", "deployments": ["tooljet-production"] },
        ] } }),
    )
    .await
    .unwrap();
    release(&w, "v-prod").await;
    until_verified(&w, "production", "Verified", Some("v-prod")).await;
    until_verified(&w, "staging", "Verified", None).await;
    version_in_production(&w, "v2").await;
    node.cordon(&w.admin, true).await;

    // A release that fails, with automatic rollback off: reported, and left as it is.
    release(&w, "v2").await;
    let failed = until_verified(&w, "production", "Failed", Some("v2")).await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("Deployment tooljet-production"),
        "{failed}"
    );
    let app = until_app(&w, "Verified False", |a| {
        (condition(a, "Verified")["reason"] == "VerificationFailed").then(|| a.clone())
    })
    .await;
    let message = condition(&app, "Verified")["message"].as_str().unwrap();
    assert!(
        message.starts_with("production (Release of v2): Deployment tooljet-production"),
        "{message}"
    );
    assert!(!message.contains("rolling back"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = stored_app(&w).await;
    assert_eq!(app["spec"]["release"]["version"], "v2", "left as it is");
    assert_eq!(
        app["status"]["releaseHistory"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["verification"],
        "Failed"
    );

    // A configuration change of staging whose pods never come up: no version leaves staging.
    set_staging_api_url(&w, "https://staging-2").await;
    let failed = until_verified(&w, "staging", "Failed", None).await;
    assert_eq!(failed["cause"], "Configuration", "{failed}");
    support::eventually(ROLL, "v-stg's Verified condition False", || async {
        let v = serde_json::to_value(w.get("AppVersion", "v-stg").await.unwrap()).unwrap();
        (condition(&v, "Verified")["reason"] == "VerificationFailed").then_some(())
    })
    .await;
    let refusal =
        "cannot be promoted to production: staging's workloads failed their last verification";
    // The webhook judges from the app's status as its cache has it: the refusal comes once the
    // cache has the failure (at once, nearly always).
    support::eventually(ROLL, "the promotion refused", || async {
        w.promote(&w.bob, "v-stg", "production")
            .await
            .err()
            .filter(|e| e.contains(refusal))
    })
    .await;
    let dry = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let dry_run = w
        .api(&w.bob, "AppVersion")
        .patch(
            "v-stg",
            &dry,
            &Patch::Merge(json!({ "spec": { "environment": "production" } })),
        )
        .await
        .map_err(support::admission::msg);
    denied(dry_run, refusal);

    // The node takes pods again: staging's new pods come up, the stage passes, and v-stg moves on.
    node.cordon(&w.admin, false).await;
    let recovered = until_verified(&w, "staging", "Verified", None).await;
    assert!(
        recovered["message"]
            .as_str()
            .unwrap()
            .contains("it had failed"),
        "{recovered}"
    );
    support::eventually(ROLL, "v-stg promoted", || async {
        w.promote(&w.bob, "v-stg", "production").await.ok()
    })
    .await;
}

/// Whether Deployment `d` is rolling out: its latest template not yet seen, or its pods not
/// all new and available.
fn rolling(d: &Deployment) -> bool {
    let status = d.status.clone().unwrap_or_default();
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0)
        || status.updated_replicas.unwrap_or(0) < wanted
        || status.replicas.unwrap_or(0) > status.updated_replicas.unwrap_or(0)
        || status.available_replicas.unwrap_or(0) < status.updated_replicas.unwrap_or(0)
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("tooljet.io/config-hash")
        .cloned()
}

#[tokio::test]
async fn one_workload_at_a_time_never_restarts_two_together() {
    testenv::shared_with_pods();
    let w = Workspace::new("one-at-a-time").await;
    let names = ["tooljet-a", "tooljet-b", "tooljet-c"];
    for name in names {
        deployment(&w.admin, &w.ns, name, "staging", None).await;
    }
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "spec": { "rollout": [
            { "environment": "staging", "deployments": names, "strategy": "OneAtATime" },
        ] } }),
    )
    .await
    .unwrap();
    let verified = until_verified(&w, "staging", "Verified", None).await;
    assert_eq!(verified["progress"], "3/3", "{verified}");
    let deployments: Api<Deployment> = Api::namespaced(w.admin.clone(), &w.ns);
    let before: Vec<Option<String>> = {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        list.items.iter().map(config_hash).collect()
    };

    set_staging_api_url(&w, "https://staging-3").await;
    // Sample every Deployment until all three carry the new configuration and are rolled out:
    // at no sample may two of them with the new configuration be rolling out together.
    let deadline = tokio::time::Instant::now() + ROLL;
    let mut waited_its_turn = false;
    loop {
        let list = deployments.list(&ListParams::default()).await.unwrap();
        let changed: Vec<&Deployment> = list
            .items
            .iter()
            .filter(|d| !before.contains(&config_hash(d)))
            .collect();
        let restarting: Vec<String> = changed
            .iter()
            .filter(|d| rolling(d))
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert!(restarting.len() <= 1, "restarting together: {restarting:?}");
        if let Some(v) = verification(&stored_app(&w).await, "staging") {
            waited_its_turn |= v["message"]
                .as_str()
                .is_some_and(|m| m.contains("queued, one at a time: "));
        }
        if changed.len() == names.len() && restarting.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all rolled out: {} changed, restarting {restarting:?}",
            changed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = until_verified(&w, "staging", "Verified", None).await;
    assert_eq!(
        (done["cause"].as_str(), done["progress"].as_str()),
        (Some("Configuration"), Some("3/3"))
    );
    assert!(
        waited_its_turn,
        "the stage's status showed the workloads queued one at a time"
    );
}
