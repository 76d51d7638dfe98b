//! Two replicas with leader election and one Notification: only the leader delivers, and after
//! the leader dies the new one delivers what happened meanwhile, nothing twice.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{admission::http_get, receiver::Receiver};

/// `tooljet_operator_notifications_total{event="Released",result="delivered"}` of a replica.
async fn delivered(health: &str) -> f64 {
    let (_, metrics) = http_get(health, "/metrics").await.unwrap_or_default();
    let series = "tooljet_operator_notifications_total{event=\"Released\",result=\"delivered\"} ";
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.parse().ok())
        .unwrap_or_default()
}

async fn apply(client: &Client, ns: &str, kind: &str, plural: &str, name: &str, spec: Value) {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tooljet.io", "v1alpha1", kind),
        plural,
    );
    let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch(
            name,
            &PatchParams::apply("test-user").force(),
            &Patch::Apply(body),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

/// A version of crm in production (no webhook here: created there directly).
async fn version_in_production(client: &Client, ns: &str, name: &str) {
    apply(
        client,
        ns,
        "AppVersion",
        "appversions",
        name,
        json!({ "app": "crm", "versionName": name, "environment": "production" }),
    )
    .await;
}

async fn release(client: &Client, ns: &str, version: &str) {
    apply(
        client,
        ns,
        "ToolJetApp",
        "tooljetapps",
        "crm",
        json!({ "release": { "version": version } }),
    )
    .await;
}

async fn holder(leases: &Api<Lease>, not: Option<&str>) -> String {
    support::eventually(Duration::from_secs(40), "a leader", || async move {
        leases
            .get_opt("tooljet-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
            .filter(|h| Some(h.as_str()) != not)
    })
    .await
}

#[tokio::test]
async fn only_the_leader_delivers_and_its_successor_resumes_from_the_cursor() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "tooljet-system" } })).unwrap(),
        )
        .await;
    let ns = support::namespace(&client, "notify-leader").await;
    let receiver = Receiver::start().await;
    let hook: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "hook" }, "stringData": { "url": receiver.url } }),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &hook)
        .await
        .unwrap();
    let health = [
        format!("127.0.0.1:{}", support::free_port()),
        format!("127.0.0.1:{}", support::free_port()),
    ];
    let mut replicas: Vec<Option<support::Operator>> = health
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = format!("replica-{i}");
            let args = [
                "--no-webhook",
                "--leader-elect",
                "--namespace",
                "tooljet-system",
                "--health-addr",
                h,
                "--instance",
                &name,
                // The receiver listens on loopback.
                "--notifications-allow-local-endpoints",
            ];
            Some(support::Operator::start_with(&name, &args))
        })
        .collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "tooljet-system");
    let first = holder(&leases, None).await;
    let leader: usize = first.trim_start_matches("replica-").parse().unwrap();
    let follower = 1 - leader;

    apply(&client, &ns, "ToolJetApp", "tooljetapps", "crm", json!({})).await;
    version_in_production(&client, &ns, "v1").await;
    version_in_production(&client, &ns, "v2").await;
    // What the operator records of the versions' arrival precedes the Notification.
    tokio::time::sleep(Duration::from_secs(3)).await;
    apply(
        &client,
        &ns,
        "Notification",
        "notifications",
        "team-chat",
        json!({ "events": ["Released"],
                "endpoint": { "format": "CloudEvents", "urlFrom": { "secretKeyRef": { "name": "hook", "key": "url" } } } }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    release(&client, &ns, "v1").await;
    receiver.until(1, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.got().len(), 1, "{:#?}", receiver.got());
    assert_eq!(delivered(&health[leader]).await, 1.0);
    assert_eq!(
        delivered(&health[follower]).await,
        0.0,
        "the follower sends nothing"
    );

    // The leader dies; a release happens while nobody leads; the new leader sends it, once.
    replicas[leader].take();
    release(&client, &ns, "v2").await;
    holder(&leases, Some(&first)).await;
    let got = receiver.until(2, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.got().len(),
        2,
        "nothing twice: {:#?}",
        receiver.got()
    );
    assert_ne!(got[0].key, got[1].key);
    assert_eq!(got[1].body["data"]["version"], "v2");
    assert_eq!(delivered(&health[follower]).await, 1.0);
    drop(replicas);
}
