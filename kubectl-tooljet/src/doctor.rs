//! `doctor`: what a broken install looks like, checked one by one. Failed checks make the
//! command exit 5; warnings and informational rows do not.

use k8s_openapi::{
    api::{
        admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
            ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
        },
        apps::v1::Deployment,
        authorization::v1::SelfSubjectAccessReview,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde::Serialize;
use serde_json::json;
use tooljet_operator::{
    api::{AppVersion, DEFAULT_PIPELINE, GROUP, VERSION},
    webhook::config,
};

use crate::{
    cluster::Cluster,
    error::{Error, Result},
    output::{self, Format},
};

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Warn,
    Fail,
    /// Could not be checked (e.g. no permission to read it).
    Skip,
    /// Not a health check: facts about the user (their verbs).
    Info,
}

#[derive(Serialize, Debug)]
pub struct Check {
    pub check: String,
    pub state: State,
    pub detail: String,
}

fn check(name: impl Into<String>, state: State, detail: impl Into<String>) -> Check {
    Check {
        check: name.into(),
        state,
        detail: detail.into(),
    }
}

pub async fn run(cluster: &Cluster, operator_namespace: &str, format: Format) -> Result<()> {
    let mut checks = Vec::new();
    checks.extend(crds(cluster).await);
    checks.extend(webhooks(cluster).await);
    checks.extend(policies(cluster).await);
    checks.push(webhook_answers(cluster).await);
    checks.push(deployment(cluster, operator_namespace).await);
    checks.extend(verbs(cluster).await);
    output::print(format, &checks, |checks| {
        output::table(
            &["check", "state", "detail"],
            checks.iter().map(|c| {
                let state = serde_json::to_value(c.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default();
                [c.check.clone(), state, c.detail.clone()]
            }),
        )
    })?;
    if checks.iter().any(|c| c.state == State::Fail) {
        return Err(Error::ChecksFailed);
    }
    Ok(())
}

fn unreadable(what: &str, e: kube::Error) -> (State, String) {
    match e {
        kube::Error::Api(s) if s.code == 403 => (
            State::Skip,
            format!("you may not read {what}: {}", s.message),
        ),
        e => (State::Fail, format!("reading {what}: {e}")),
    }
}

async fn crds(cluster: &Cluster) -> Vec<Check> {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut out = Vec::new();
    for expected in tooljet_operator::api::crds() {
        let name = expected.name_any();
        let label = format!("CRD {name}");
        let crd = match api.get_opt(&name).await {
            Ok(Some(crd)) => crd,
            Ok(None) => {
                out.push(check(
                    label,
                    State::Fail,
                    "not installed: kubectl apply -f crds/ (or install the Helm chart)",
                ));
                continue;
            }
            Err(e) => {
                let (state, detail) = unreadable("CustomResourceDefinitions", e);
                out.push(check(label, state, detail));
                continue;
            }
        };
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        let served = crd.spec.versions.iter().find(|v| v.name == VERSION);
        let (state, detail) = match served {
            _ if !established => (
                State::Fail,
                "not Established (the apiserver does not serve it yet)".to_string(),
            ),
            None => (
                State::Fail,
                format!("does not define {GROUP}/{VERSION}: upgrade the CRDs"),
            ),
            Some(v) if !v.served || !v.storage => (
                State::Fail,
                format!("{VERSION} is not served and stored: upgrade the CRDs"),
            ),
            Some(v) => {
                let wanted = expected
                    .spec
                    .versions
                    .iter()
                    .find(|w| w.name == VERSION)
                    .and_then(|w| w.schema.as_ref());
                if v.schema.as_ref().map(|s| serde_json::to_value(s).ok())
                    == wanted.map(|s| serde_json::to_value(s).ok())
                {
                    (
                        State::Ok,
                        format!("Established, serves {VERSION}, schema matches this plugin"),
                    )
                } else {
                    (
                        State::Warn,
                        format!(
                            "Established, serves {VERSION}; its schema differs from this plugin's (plugin and operator of different releases?)"
                        ),
                    )
                }
            }
        };
        out.push(check(label, state, detail));
    }
    out
}

/// Whether `ca` (PEM) holds at least one certificate valid now.
fn ca_bundle_state(ca: Option<&[u8]>) -> (State, String) {
    let Some(ca) = ca.filter(|c| !c.is_empty()) else {
        return (State::Fail, "no caBundle: the apiserver cannot trust the webhook (is the operator running? it sets the caBundle)".into());
    };
    let mut rest = ca;
    let mut seen = 0;
    while let Ok((remaining, pem)) = x509_parser::pem::parse_x509_pem(rest) {
        seen += 1;
        match pem.parse_x509() {
            Ok(cert) if cert.validity().is_valid() => {
                return (
                    State::Ok,
                    format!("caBundle valid until {}", cert.validity().not_after),
                );
            }
            Ok(cert) => {
                return (
                    State::Fail,
                    format!(
                        "caBundle certificate expired or not yet valid (valid {} to {})",
                        cert.validity().not_before,
                        cert.validity().not_after
                    ),
                );
            }
            Err(_) => {}
        }
        if remaining.len() == rest.len() {
            break;
        }
        rest = remaining;
    }
    (
        State::Fail,
        format!("caBundle holds no parsable certificate ({seen} PEM blocks)"),
    )
}

async fn webhooks(cluster: &Cluster) -> Vec<Check> {
    let name = config::CONFIGURATION_NAME;
    let mut out = Vec::new();
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(cluster.client.clone());
    match validating.get_opt(name).await {
        Ok(Some(c)) => {
            for w in c.webhooks.iter().flatten() {
                let (s, d) =
                    ca_bundle_state(w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()));
                let fail_closed = w.failure_policy.as_deref().is_none_or(|p| p == "Fail");
                let (s, d) = if fail_closed || s != State::Ok {
                    (s, d)
                } else {
                    (State::Warn, format!("{d}; failurePolicy is not Fail"))
                };
                out.push(check(format!("validating webhook {}", w.name), s, d));
            }
            if c.webhooks.as_ref().is_none_or(Vec::is_empty) {
                out.push(check(
                    "ValidatingWebhookConfiguration",
                    State::Fail,
                    format!("{name} has no webhooks"),
                ));
            }
        }
        Ok(None) => out.push(check(
            "ValidatingWebhookConfiguration",
            State::Fail,
            format!("{name} is missing: the stage rules are only held by the admission policies"),
        )),
        Err(e) => {
            let (s, d) = unreadable("ValidatingWebhookConfigurations", e);
            out.push(check("ValidatingWebhookConfiguration", s, d));
        }
    }
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    match mutating.get_opt(name).await {
        Ok(Some(c)) => {
            for w in c.webhooks.iter().flatten() {
                let (s, d) =
                    ca_bundle_state(w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()));
                out.push(check(format!("mutating webhook {}", w.name), s, d));
            }
        }
        Ok(None) => out.push(check(
            "MutatingWebhookConfiguration",
            State::Fail,
            format!(
                "{name} is missing: promotions and releases are not stamped with who made them"
            ),
        )),
        Err(e) => {
            let (s, d) = unreadable("MutatingWebhookConfigurations", e);
            out.push(check("MutatingWebhookConfiguration", s, d));
        }
    }
    out
}

async fn policies(cluster: &Cluster) -> Vec<Check> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(cluster.client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(cluster.client.clone());
    let mut out = Vec::new();
    for (policy, binding) in config::policies() {
        let name = policy.name_any();
        let label = format!("admission policy {name}");
        let state = match (
            policies.get_opt(&name).await,
            bindings.get_opt(&binding.name_any()).await,
        ) {
            (Ok(Some(_)), Ok(Some(b)))
                if b.spec.as_ref().and_then(|s| s.policy_name.as_deref())
                    == Some(name.as_str()) =>
            {
                let actions = b
                    .spec
                    .and_then(|s| s.validation_actions)
                    .unwrap_or_default();
                if actions.iter().any(|a| a == "Deny") {
                    (State::Ok, format!("bound by {} (Deny)", binding.name_any()))
                } else {
                    (
                        State::Warn,
                        format!(
                            "bound by {} without the Deny action ({actions:?})",
                            binding.name_any()
                        ),
                    )
                }
            }
            (Ok(Some(_)), Ok(_)) => (
                State::Fail,
                format!(
                    "not bound: binding {} is missing or names another policy",
                    binding.name_any()
                ),
            ),
            (Ok(None), _) => (
                State::Fail,
                "missing: the second layer of the stage rules is not installed".into(),
            ),
            (Err(e), _) | (_, Err(e)) => unreadable("ValidatingAdmissionPolicies", e),
        };
        out.push(check(label, state.0, state.1));
    }
    out
}

/// Whether the operator's webhook answers: a server-side dry-run create of a version of an app
/// that does not exist, which the webhook must refuse.
async fn webhook_answers(cluster: &Cluster) -> Check {
    let label = "operator webhook answers";
    let probe: AppVersion = match serde_json::from_value(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "AppVersion",
        "metadata": { "name": "kubectl-tooljet-doctor-probe" },
        "spec": { "app": "kubectl-tooljet-doctor-no-such-app", "versionName": "probe", "environment": DEFAULT_PIPELINE[0] },
    })) {
        Ok(p) => p,
        Err(e) => return check(label, State::Fail, format!("building the probe: {e}")),
    };
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match cluster.versions().create(&dry, &probe).await {
        Err(kube::Error::Api(s)) if s.message.contains("does not exist") => check(
            label,
            State::Ok,
            format!(
                "the webhook refused a probe for a missing app in namespace {}, as it should",
                cluster.namespace
            ),
        ),
        Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => check(
            label,
            State::Fail,
            format!("the apiserver cannot reach the operator: {}", s.message),
        ),
        Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("cannot create") => check(
            label,
            State::Skip,
            format!(
                "you may not create AppVersions in {} (the probe is a dry run)",
                cluster.namespace
            ),
        ),
        Err(kube::Error::Api(s)) if s.code == 404 => check(
            label,
            State::Fail,
            "AppVersions are not served (CRDs missing)",
        ),
        Err(e) => check(label, State::Fail, format!("probe failed: {e}")),
        Ok(_) => check(
            label,
            State::Fail,
            "the probe (a version of a missing app) was allowed: the validating webhook is not judging AppVersions",
        ),
    }
}

async fn deployment(cluster: &Cluster, namespace: &str) -> Check {
    let label = format!("operator Deployment ({namespace})");
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), namespace);
    let lp = ListParams::default().labels("app.kubernetes.io/name=tooljet-operator");
    match api.list(&lp).await {
        Ok(list) if list.items.is_empty() => check(
            label,
            State::Skip,
            "no Deployment labelled app.kubernetes.io/name=tooljet-operator (an operator run outside the cluster is judged by the webhook probe)",
        ),
        Ok(list) => {
            let d = &list.items[0];
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let state = if ready == 0 {
                State::Fail
            } else if ready < want {
                State::Warn
            } else {
                State::Ok
            };
            check(
                label,
                state,
                format!("{}: {ready}/{want} replicas ready", d.name_any()),
            )
        }
        Err(e) => {
            let (s, d) = unreadable("Deployments", e);
            check(label, s, d)
        }
    }
}

/// The user's own verbs on the stages of the namespace's apps (`auth can-i`).
async fn verbs(cluster: &Cluster) -> Vec<Check> {
    // Pipeline order, each stage once.
    let mut stages: Vec<String> = Vec::new();
    if let Ok(apps) = cluster.apps().list(&ListParams::default()).await {
        for stage in apps.items.iter().flat_map(|a| a.spec.environments.iter()) {
            if !stages.contains(stage) {
                stages.push(stage.clone());
            }
        }
    }
    if stages.is_empty() {
        stages.extend(DEFAULT_PIPELINE.iter().map(|s| s.to_string()));
    }
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let mut out = Vec::new();
    for verb in ["promote", "release", "configure", "approve"] {
        let mut allowed = Vec::new();
        for stage in &stages {
            let review: SelfSubjectAccessReview = match serde_json::from_value(json!({
                "spec": { "resourceAttributes": {
                    "namespace": cluster.namespace, "group": GROUP, "resource": "environments",
                    "name": stage, "verb": verb,
                } }
            })) {
                Ok(r) => r,
                Err(_) => continue,
            };
            match api.create(&PostParams::default(), &review).await {
                Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {
                    allowed.push(stage.clone())
                }
                Ok(_) => {}
                Err(e) => {
                    out.push(check(
                        format!("you may {verb}"),
                        State::Skip,
                        format!("cannot ask the apiserver: {e}"),
                    ));
                    break;
                }
            }
        }
        let detail = if allowed.is_empty() {
            "no stage".to_string()
        } else {
            allowed.join(", ")
        };
        out.push(check(
            format!("you may {verb} (in {})", cluster.namespace),
            State::Info,
            detail,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_garbage_ca_bundle_fails() {
        assert_eq!(ca_bundle_state(None).0, State::Fail);
        assert_eq!(ca_bundle_state(Some(b"")).0, State::Fail);
        assert_eq!(ca_bundle_state(Some(b"not a certificate")).0, State::Fail);
    }

    #[test]
    fn a_current_certificate_passes() {
        let bundle = tooljet_operator::webhook::certs::generate(&["127.0.0.1".into()]).unwrap();
        let (state, detail) = ca_bundle_state(Some(bundle.ca.as_bytes()));
        assert_eq!(state, State::Ok, "{detail}");
    }
}
