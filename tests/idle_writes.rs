//! A restart of the operator on a converged namespace with 100 EnvironmentConfigs writes nothing:
//! in particular the restarted operator hashes with the same installation key (read from its
//! Secret, not generated anew), so no content hash changes. Nor does it read a referenced Secret:
//! each materialised Secret proves what it was made from (`tooljet.io/inputs`). What changed while
//! it was down (an edited Secret, a rotation) is still found and acted on. Its own test binary,
//! so its control plane sees no other writer while it counts.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use tooljet_operator::api::EnvironmentConfig;

const CONFIGS: usize = 100;
const WRITTEN: [&str; 7] = [
    "secrets",
    "environmentconfigs",
    "events",
    "tooljetapps",
    "appversions",
    "promotionpolicies",
    "approvals",
];

#[tokio::test]
async fn restarting_on_a_converged_namespace_issues_no_writes() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "idle").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let configs: Api<EnvironmentConfig> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply("test-user");

    support::configs::referencing(&client, &ns, CONFIGS).await;

    // One of each other kind with a status: an app with a version, and a policy guarding its
    // production with approvals and a window (statuses that depend on the clock).
    let dynamic = |kind: &str| {
        Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            &ns,
            &support::admission::ar(kind),
        )
    };
    for (kind, name, spec) in [
        ("ToolJetApp", "app-0", json!({})),
        (
            "AppVersion",
            "app-0-v1",
            json!({ "app": "app-0", "versionName": "v1" }),
        ),
        (
            "PromotionPolicy",
            "gate",
            json!({ "environments": ["production"], "approvals": { "required": 2 },
                    "windows": [{ "kind": "Deny", "schedule": "0 0 24 12 *", "duration": "192h" }] }),
        ),
    ] {
        let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
        dynamic(kind)
            .patch(name, &apply, &Patch::Apply(&body))
            .await
            .unwrap();
    }
    let statuses = [
        dynamic("ToolJetApp"),
        dynamic("AppVersion"),
        dynamic("PromotionPolicy"),
    ];

    let mut first = support::Operator::start("converge");
    support::eventually(
        Duration::from_secs(60),
        "the app, version and policy have a current status",
        || {
            let statuses = statuses.clone();
            async move {
                for api in &statuses {
                    for o in api.list(&ListParams::default()).await.ok()? {
                        let observed = o.data["status"]["observedGeneration"].as_i64();
                        (observed.is_some() && observed == o.metadata.generation).then_some(())?;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let configs_for_wait = configs.clone();
    support::eventually(Duration::from_secs(120), "all 100 configs Ready", || {
        let configs = configs_for_wait.clone();
        async move {
            let list = configs.list(&ListParams::default()).await.unwrap();
            let ready = support::configs::ready(&list.items);
            (ready == CONFIGS).then_some(())
        }
    })
    .await;
    // Let the last status writes' watch events settle, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.stop();
    let hashes =
        |list: kube::core::ObjectList<EnvironmentConfig>| -> Vec<(String, Option<String>)> {
            list.iter()
                .map(|c| (c.name_any(), c.status.as_ref().and_then(|s| s.hash.clone())))
                .collect()
        };
    let hashes_before = hashes(configs.list(&ListParams::default()).await.unwrap());
    assert!(hashes_before.iter().all(|(_, h)| h.is_some()));

    let before = support::apiserver_writes(&WRITTEN);
    assert!(
        before >= 2 * CONFIGS as u64,
        "the write counter works: {before} writes so far"
    );
    let health = format!("127.0.0.1:{}", support::free_port());
    let mut second =
        support::Operator::start_with("restart", &["--no-webhook", "--health-addr", &health]);
    // Every config is reconciled once after the restart (the debug line is per reconcile).
    support::eventually(
        Duration::from_secs(120),
        "the restarted operator reconciles all 100 configs",
        || {
            let log = second.log_text();
            async move {
                (log.matches("materialised Secret is up to date").count() >= CONFIGS).then_some(())
            }
        },
    )
    .await;
    // And give it a moment to do anything else it might want to do.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = support::apiserver_writes(&WRITTEN);
    assert_eq!(
        after - before,
        0,
        "the restarted operator wrote {} times to {WRITTEN:?}",
        after - before
    );
    assert_eq!(
        hashes(configs.list(&ListParams::default()).await.unwrap()),
        hashes_before,
        "the content hashes are stable across a restart"
    );
    assert_eq!(
        support::faults::counter(&health, "tooljet_operator_referenced_secret_reads_total").await,
        0,
        "the restarted operator read referenced Secrets although none changed"
    );
    second.stop();

    // While it is down: someone edits app-0's materialised Secret (keeping every annotation), and
    // creds-1 is rotated.
    let materialised = |i: usize| format!("tooljet.production.app-{i}");
    let before_edit = secrets.get(&materialised(0)).await.unwrap();
    let planted = json!({ "data": { "TOOLJET_GLOBAL_CONSTANTS__production__N": "cGxhbnRlZA==" } });
    secrets
        .patch(
            &materialised(0),
            &PatchParams::default(),
            &Patch::Merge(&planted),
        )
        .await
        .unwrap();
    let rotated = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "creds-1" }, "stringData": { "token": "rotated-while-down" } });
    secrets
        .patch("creds-1", &apply, &Patch::Apply(&rotated))
        .await
        .unwrap();

    let health = format!("127.0.0.1:{}", support::free_port());
    let _third =
        support::Operator::start_with("after-edits", &["--no-webhook", "--health-addr", &health]);
    let secrets_for_wait = secrets.clone();
    support::eventually(
        Duration::from_secs(60),
        "the edit is reverted and the rotation materialised",
        || {
            let secrets = secrets_for_wait.clone();
            let (edited, rotated) = (materialised(0), materialised(1));
            let original = before_edit.data.clone();
            async move {
                let restored = secrets.get(&edited).await.ok()?.data == original;
                let data = secrets.get(&rotated).await.ok()?.data?;
                // The rotated token is a data source's secret option: a secret constant.
                let picked_up = data
                    .values()
                    .any(|v| String::from_utf8_lossy(&v.0).contains("rotated-while-down"));
                (restored && picked_up).then_some(())
            }
        },
    )
    .await;
    // Exactly the Secrets of the two configs whose inputs changed were read, once each.
    assert_eq!(
        support::faults::counter(&health, "tooljet_operator_referenced_secret_reads_total").await,
        2
    );
}
