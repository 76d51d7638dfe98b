//! Release safety under faults: the operator killed in the middle of a release's verification,
//! and again right after its automatic rollback, resumes from the app's status and never rolls
//! back twice. Its own control plane (with simulated nodes) and its own operator processes,
//! started and killed by the test; no webhook (the operator's own records, not the webhook's
//! stamps, say which release was its rollback).
mod support;

use std::time::Duration;

use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    Operator,
    admission::ar,
    pods::{OwnNode, ROLL},
};

async fn create(api: &Api<DynamicObject>, kind: &str, name: &str, spec: Value) {
    let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
    api.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("creating {kind} {name}: {e}"));
}

async fn app(apps: &Api<DynamicObject>) -> Value {
    serde_json::to_value(apps.get("crm").await.unwrap()).unwrap()
}

async fn until_app<T>(
    apps: &Api<DynamicObject>,
    what: &str,
    check: impl Fn(&Value) -> Option<T>,
) -> T {
    let check = &check;
    support::eventually(ROLL, what, || async move { check(&app(apps).await) }).await
}

fn production(app: &Value) -> Option<&Value> {
    app["status"]["verifications"]
        .as_array()?
        .iter()
        .find(|v| v["environment"] == "production")
}

fn automatic_rollbacks(app: &Value) -> usize {
    app["status"]["releaseHistory"]
        .as_array()
        .map_or(0, |h| h.iter().filter(|r| r["automatic"] == true).count())
}

async fn release(apps: &Api<DynamicObject>, version: &str) {
    apps.patch(
        "crm",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "release": { "version": version } } })),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restarted_operator_resumes_the_verification_and_rolls_back_once() {
    testenv::shared_with_pods();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "release-faults").await;
    let node = OwnNode::new(&client, &ns).await;
    node.deployment(&client, &ns, "tooljet-production", "production")
        .await;
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar("ToolJetApp"));
    let versions: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar("AppVersion"));
    create(
        &apps,
        "ToolJetApp",
        "crm",
        json!({
            "rollout": [{ "environment": "production", "deployments": ["tooljet-production"] }],
            "verification": { "timeoutSeconds": 60, "autoRollback": true },
        }),
    )
    .await;
    // Without the webhook nothing keeps a version from being created in production.
    for v in ["v1", "v2"] {
        create(
            &versions,
            "AppVersion",
            v,
            json!({ "app": "crm", "versionName": v, "environment": "production" }),
        )
        .await;
    }

    let first = Operator::start("release-faults-1");
    release(&apps, "v1").await;
    until_app(&apps, "v1 verified", |a| {
        let v = production(a)?;
        (v["phase"] == "Verified" && v["version"] == "v1").then_some(())
    })
    .await;
    node.cordon(&client, true).await;
    release(&apps, "v2").await;
    until_app(&apps, "v2 being verified", |a| {
        let v = production(a)?;
        (v["phase"] == "Progressing" && v["version"] == "v2").then_some(())
    })
    .await;
    // Killed mid-verification; the progress deadline (10 s) passes while no operator runs.
    drop(first);
    tokio::time::sleep(Duration::from_secs(12)).await;

    let second = Operator::start("release-faults-2");
    until_app(&apps, "the automatic rollback recorded", |a| {
        (automatic_rollbacks(a) == 1).then_some(())
    })
    .await;
    // Killed again, right after its rollback.
    let second_log = second.log_text();
    drop(second);

    let third = Operator::start("release-faults-3");
    let back = until_app(&apps, "the rollback verified", |a| {
        let v = production(a)?;
        (v["phase"] == "Verified" && v["cause"] == "AutomaticRollback").then(|| v.clone())
    })
    .await;
    assert_eq!(back["version"], "v1", "{back}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = app(&apps).await;
    assert_eq!(a["spec"]["release"]["version"], "v1");
    let history: Vec<(&str, bool, &str)> = a["status"]["releaseHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["version"].as_str().unwrap(),
                h["automatic"] == true,
                h["verification"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("v1", false, "Verified"),
            ("v2", false, "Failed"),
            ("v1", true, "Verified"),
        ]
    );
    assert!(
        a["status"]["automaticRollback"].is_null(),
        "{}",
        a["status"]
    );
    // The operator logs each rollback it makes (`automatic rollback target=...`).
    let made = |log: &str| {
        log.lines()
            .filter(|l| l.contains("automatic rollback target="))
            .count()
    };
    assert_eq!(made(&second_log), 1, "{second_log}");
    // Made once, on the app as stored with its decision: no conflict to retry.
    assert!(
        !second_log.contains("(automatic rollback) failed"),
        "{second_log}"
    );
    assert_eq!(made(&third.log_text()), 0, "{}", third.log_text());
}
