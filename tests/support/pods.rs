//! Pods for release-safety tests: ToolJet Deployments on KWOK's simulated nodes, and a simulated
//! node of a test's own that it can cordon, so that a rollout never becomes available (its new
//! pods stay Pending and the deployment controller reports ProgressDeadlineExceeded, as it would
//! for pods that never become ready).

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Node};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Long enough for a rollout on a loaded 2-core machine, and for a 10 s progress deadline.
pub const ROLL: Duration = Duration::from_secs(120);

/// A simulated node only this test's pods run on: they select it and tolerate its taint, which
/// keeps every other pod off. Deleted on drop.
pub struct OwnNode {
    name: String,
}

impl OwnNode {
    pub async fn new(client: &Client, ns: &str) -> OwnNode {
        let name = format!("node-{ns}");
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
                "labels": { "kubernetes.io/hostname": name, "type": "kwok", "tooljet.io/test-node": name },
            },
            "spec": { "taints": [{ "key": "tooljet.io/test-node", "value": name, "effect": "NoSchedule" }] },
            "status": {
                "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
                "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            },
        }))
        .unwrap();
        let nodes = Api::<Node>::all(client.clone());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        // KWOK reports it Ready; the apiserver tainted it not-ready on creation
        // (TaintNodesByCondition) and no node lifecycle controller runs here to lift that: the
        // test does, as testenv does for the shared nodes, keeping its own taint.
        super::eventually(ROLL, &format!("node {name} Ready"), || {
            let nodes = nodes.clone();
            let name = name.clone();
            async move {
                let n = nodes.get(&name).await.ok()?;
                n.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
        nodes
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "taints": [
                    { "key": "tooljet.io/test-node", "value": name, "effect": "NoSchedule" },
                ] } })),
            )
            .await
            .unwrap();
        OwnNode { name }
    }

    /// Cordons (no new pod is scheduled) or uncordons the node.
    pub async fn cordon(&self, client: &Client, on: bool) {
        Api::<Node>::all(client.clone())
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "unschedulable": on } })),
            )
            .await
            .unwrap();
    }

    /// A ToolJet Deployment of `stage` whose pods run on this node (1 replica, a 10 s progress
    /// deadline, old pods kept until new ones are available).
    pub async fn deployment(&self, client: &Client, ns: &str, name: &str, stage: &str) {
        deployment(client, ns, name, stage, Some(&self.name)).await;
    }
}

impl Drop for OwnNode {
    fn drop(&mut self) {
        let _ = super::kubectl(&["delete", "node", &self.name, "--wait=false"]);
    }
}

/// A ToolJet Deployment of `stage` reading its workload Secret, on `node` when given (else on
/// the shared simulated nodes).
pub async fn deployment(client: &Client, ns: &str, name: &str, stage: &str, node: Option<&str>) {
    let mut pod = json!({
        "containers": [{
            "name": "tooljet",
            "image": "tooljet/tooljet:ee-lts-latest",
            "envFrom": [{ "secretRef": { "name": format!("tooljet-workload.{name}") } }],
        }],
    });
    if let Some(node) = node {
        pod["nodeSelector"] = json!({ "tooljet.io/test-node": node });
        pod["tolerations"] = json!([{ "key": "tooljet.io/test-node", "operator": "Exists", "effect": "NoSchedule" }]);
    }
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/name": "tooljet", "tooljet.io/environment": stage } },
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 10,
            "selector": { "matchLabels": { "app": name } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": pod },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("creating Deployment {name}: {e}"));
}
