//! Two replicas with leader election: only the leader writes; kill it and the other takes over
//! within the lease duration and catches up on what changed meanwhile.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Namespace, Secret},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::admission::http_get;

async fn writes(health: &str) -> u64 {
    let (_, metrics) = http_get(health, "/metrics").await.unwrap_or_default();
    metrics
        .lines()
        .filter(|l| l.starts_with("tooljet_operator_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn the_follower_takes_over_when_the_leader_dies() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "tooljet-system" } })).unwrap(),
        )
        .await;
    let ns = support::namespace(&client, "leader").await;
    let health = [
        format!("127.0.0.1:{}", support::free_port()),
        format!("127.0.0.1:{}", support::free_port()),
    ];
    let mut replicas: Vec<Option<support::Operator>> = health
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Some(support::Operator::start_with(
                &format!("replica-{i}"),
                &[
                    "--no-webhook",
                    "--leader-elect",
                    "--namespace",
                    "tooljet-system",
                    "--health-addr",
                    h,
                    "--instance",
                    &format!("replica-{i}"),
                ],
            ))
        })
        .collect();

    let leases: Api<Lease> = Api::namespaced(client.clone(), "tooljet-system");
    let holder = support::eventually(Duration::from_secs(30), "a leader", || {
        let leases = leases.clone();
        async move {
            leases
                .get_opt("tooljet-operator")
                .await
                .ok()??
                .spec?
                .holder_identity
        }
    })
    .await;
    let leader: usize = holder.trim_start_matches("replica-").parse().unwrap();
    let follower = 1 - leader;

    let configs = |name: &str, value: &str| {
        json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig", "metadata": { "name": name },
                "spec": { "environment": name, "constants": [{ "name": "V", "type": "Global", "value": value }] } })
    };
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", "EnvironmentConfig"),
        "environmentconfigs",
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let apply = PatchParams::apply("test-user").force();
    api.patch("first", &apply, &Patch::Apply(configs("first", "1")))
        .await
        .unwrap();
    let wait_value = |name: &'static str, value: &'static str| {
        let secrets = secrets.clone();
        async move {
            support::eventually(
                Duration::from_secs(30),
                &format!("Secret tooljet.{name} = {value}"),
                || {
                    let secrets = secrets.clone();
                    async move {
                        let s = secrets.get_opt(&format!("tooljet.{name}")).await.ok()??;
                        (s.data?
                            .get(&format!("TOOLJET_GLOBAL_CONSTANTS__{name}__V"))?
                            .0
                            == value.as_bytes())
                        .then_some(())
                    }
                },
            )
            .await
        }
    };
    wait_value("first", "1").await;
    assert_eq!(
        writes(&health[follower]).await,
        0,
        "the follower writes nothing"
    );
    assert!(writes(&health[leader]).await > 0, "the leader wrote");

    // Kill the leader (no graceful release), then change things while nobody leads.
    replicas[leader].take();
    let killed = std::time::Instant::now();
    api.patch("first", &apply, &Patch::Apply(configs("first", "2")))
        .await
        .unwrap();
    api.patch("second", &apply, &Patch::Apply(configs("second", "1")))
        .await
        .unwrap();

    let new_holder = support::eventually(Duration::from_secs(40), "a new leader", || {
        let leases = leases.clone();
        let old = holder.clone();
        async move {
            leases
                .get_opt("tooljet-operator")
                .await
                .ok()??
                .spec?
                .holder_identity
                .filter(|h| *h != old)
        }
    })
    .await;
    assert_eq!(new_holder, format!("replica-{follower}"));
    wait_value("first", "2").await;
    wait_value("second", "1").await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(15 + 2 + 10),
        "takeover and catch-up within the lease duration (+ retry and margin): {took:?}"
    );
    assert!(writes(&health[follower]).await > 0, "the new leader writes");
    drop(replicas);
}
