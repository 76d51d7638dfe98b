//! The operator as its Helm chart runs it: the chart rendered by the real helm
//! (`helm template`, default values but `webhook.url`, which points the webhook configurations at a
//! replica on 127.0.0.1 instead of the in-cluster Service), and of what it renders: the
//! ServiceAccount, its RBAC, the user roles, the webhook configurations with their match
//! conditions and the ValidatingAdmissionPolicies, applied to the local control plane; the
//! Deployment's container arguments and environment, which the replicas are started with; and a
//! kubeconfig holding a token of the chart's ServiceAccount, so the operator is judged by RBAC and
//! by priority-and-fairness as in a cluster (the admin's `system:masters` is exempt from both).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::Kubeconfig,
};
use serde_json::{Value, json};

use crate::cluster::{Cluster, OPERATOR_NS};

/// The release name: the chart's names (`tooljet-operator`, its Lease, its webhook
/// configurations) are then those the operator's defaults use.
pub const RELEASE: &str = "tooljet-operator";

/// The kinds applied from the rendered chart; the rest (the Deployment, Services, the
/// PodDisruptionBudget, NetworkPolicies) has no meaning for processes on this machine.
const APPLIED: [(&str, &str, &str, bool); 9] = [
    ("", "ServiceAccount", "serviceaccounts", true),
    (
        "rbac.authorization.k8s.io",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    ("rbac.authorization.k8s.io", "Role", "roles", true),
    (
        "rbac.authorization.k8s.io",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
    ),
];

/// What the chart says about running the operator.
#[derive(Clone, Debug)]
pub struct Chart {
    /// The container's arguments, as rendered.
    pub args: Vec<String>,
    /// The container's environment with literal values (`RUST_LOG`, `LOG_FORMAT`).
    pub env: Vec<(String, String)>,
    /// The memory limit the chart sets (`resources.limits.memory`).
    pub memory_limit: String,
    /// The webhook configurations as rendered (re-applied when the admission phase registers
    /// them again after a series without them).
    pub webhooks: Vec<Value>,
    /// The kubeconfig with the chart's ServiceAccount token.
    pub kubeconfig: PathBuf,
    /// The kinds applied and how many of each.
    pub applied: BTreeMap<String, usize>,
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tooljet-operator")
}

/// `helm template` of the chart with the webhook reached at `webhook_url`.
pub fn render(webhook_url: &str) -> Result<Vec<Value>> {
    let helm = testenv::binaries::Binary::Helm.require()?;
    let out = Command::new(helm)
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", OPERATOR_NS])
        .args(["--set", &format!("webhook.url={webhook_url}")])
        .output()
        .context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn resource_of(doc: &Value) -> Option<(ApiResource, bool)> {
    let kind = doc["kind"].as_str()?;
    let (group, _, plural, namespaced) = APPLIED.iter().find(|(_, k, _, _)| *k == kind)?;
    let version = doc["apiVersion"].as_str()?.rsplit('/').next()?;
    Some((
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural),
        *namespaced,
    ))
}

/// Server-side applies the rendered documents of the [`APPLIED`] kinds.
pub async fn apply(cluster: &Cluster, docs: &[Value]) -> Result<BTreeMap<String, usize>> {
    let mut applied = BTreeMap::new();
    let params = PatchParams::apply("bench").force();
    for doc in docs {
        let Some((resource, namespaced)) = resource_of(doc) else {
            continue;
        };
        let name = doc["metadata"]["name"]
            .as_str()
            .context("a rendered object without a name")?;
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(cluster.client.clone(), OPERATOR_NS, &resource)
        } else {
            Api::all_with(cluster.client.clone(), &resource)
        };
        api.patch(name, &params, &Patch::Apply(doc))
            .await
            .with_context(|| format!("applying the chart's {} {name}", resource.kind))?;
        *applied.entry(resource.kind.clone()).or_insert(0) += 1;
    }
    Ok(applied)
}

/// Renders the chart, applies its RBAC and admission objects, and writes a kubeconfig (into
/// `dir`) with a token of its ServiceAccount.
pub async fn install(cluster: &Cluster, webhook_url: &str, dir: &Path) -> Result<Chart> {
    let docs = render(webhook_url)?;
    let applied = apply(cluster, &docs).await?;
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == RELEASE)
        .context("the chart renders no operator Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = container["args"]
        .as_array()
        .context("the operator container has no args")?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let env = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    let memory_limit = container["resources"]["limits"]["memory"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    let account = pod["serviceAccountName"]
        .as_str()
        .context("the operator pod names no ServiceAccount")?;
    let webhooks = docs
        .iter()
        .filter(|d| {
            d["kind"]
                .as_str()
                .is_some_and(|k| k.ends_with("WebhookConfiguration"))
        })
        .cloned()
        .collect();
    let kubeconfig = dir.join("operator.kubeconfig");
    write_kubeconfig(cluster, account, &kubeconfig).await?;
    Ok(Chart {
        args,
        env,
        memory_limit,
        webhooks,
        kubeconfig,
        applied,
    })
}

/// The admin's kubeconfig with its user's credentials replaced by a token of `account`.
async fn write_kubeconfig(cluster: &Cluster, account: &str, path: &Path) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), OPERATOR_NS);
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "expirationSeconds": 86400 } }))?;
    let answer: TokenRequest = accounts
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token of ServiceAccount {account}"))?;
    let token = answer
        .status
        .context("a TokenRequest without status")?
        .token;
    let mut config = Kubeconfig::read_from(cluster.kubeconfig())?;
    for named in &mut config.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    std::fs::write(path, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// The chart's arguments for a replica on this machine: its ports on 127.0.0.1 instead of the
/// pod's 0.0.0.0, and 127.0.0.1 added to the self-provisioned certificate's names (the webhook
/// configurations reach it by that URL).
pub fn replica_args(chart: &Chart, health: &str, webhook: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = chart
        .args
        .iter()
        .map(|a| {
            if a.starts_with("--health-addr=") {
                format!("--health-addr={health}")
            } else if a.starts_with("--webhook-addr=") {
                format!("--webhook-addr={webhook}")
            } else {
                a.clone()
            }
        })
        .collect();
    args.push("--webhook-host=127.0.0.1".into());
    // `--flag=value` in `extra` replaces the chart's value of that flag.
    for e in extra {
        let flag = e.split('=').next().unwrap_or(e);
        args.retain(|a| a.split('=').next() != Some(flag));
        args.push(e.clone());
    }
    args
}

/// The Lease the chart's replicas elect their leader on.
pub fn lease_name(chart: &Chart) -> String {
    chart
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--lease-name=").map(String::from))
        .unwrap_or_else(|| RELEASE.into())
}
