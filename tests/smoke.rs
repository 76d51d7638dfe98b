//! The local control plane is a real Kubernetes API: objects round-trip, watches deliver updates,
//! owner references are garbage-collected.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

#[tokio::test]
async fn objects_round_trip_and_watches_see_updates() {
    let client = support::client().await;
    let ns = support::namespace(&client, "smoke").await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "db" },
        "stringData": { "password": "s3cret" },
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let read = secrets.get("db").await.unwrap();
    assert_eq!(read.data.unwrap()["password"].0, b"s3cret");

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "settings" },
        "data": { "mode": "one" },
    }))
    .unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();

    // Watch the ConfigMap, then change it: the update must arrive on the watch.
    let config = watcher::Config::default().fields("metadata.name=settings");
    let mut stream = watcher(maps.clone(), config).applied_objects().boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("initial watch event")
        .unwrap()
        .unwrap();
    assert_eq!(first.data.as_ref().unwrap()["mode"], "one");

    let mut changed = first.clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert("mode".into(), "two".into());
    maps.replace("settings", &PostParams::default(), &changed)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(cm) = stream.try_next().await.unwrap() {
            if cm.data.as_ref().unwrap()["mode"] == "two" {
                return cm;
            }
        }
        panic!("watch ended")
    })
    .await
    .expect("the update arrives on the watch within 10s");
    assert_eq!(seen.name_any(), "settings");
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let client = support::client().await;
    let ns = support::namespace(&client, "gc").await;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "owner" } })).unwrap(),
        )
        .await
        .unwrap();
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "owned",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.uid().unwrap(),
            }],
        },
    }))
    .unwrap();
    maps.create(&PostParams::default(), &owned).await.unwrap();
    maps.delete("owner", &DeleteParams::background())
        .await
        .unwrap();

    // kube-controller-manager's garbage collector removes the dependent.
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if maps.get_opt("owned").await.unwrap().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the garbage collector did not delete the dependent within 30s"
    );
}

#[test]
fn apiserver_reports_its_real_version() {
    let out = support::kubectl(&["version", "-o", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["serverVersion"]["gitVersion"],
        testenv::KUBERNETES_VERSION
    );
}
