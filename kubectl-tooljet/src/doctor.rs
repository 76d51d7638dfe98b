//! `doctor`: what a broken install looks like, checked one by one. Failed checks make the
//! command exit 5; warnings and informational rows do not.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingAdmissionPolicy,
            ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
        },
        apps::v1::Deployment,
        authorization::v1::SelfSubjectAccessReview,
        core::v1::{ConfigMap, Container, Secret},
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
    api::{
        AppVersion, DEFAULT_PIPELINE, GROUP, StageVerification, ToolJetApp, VERSION,
        VerificationPhase,
    },
    effective::{Effective, NameRules, Origin, SourceKind, container_env},
    lifecycle::Pipeline,
    materialize::workload_secret_name,
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
    checks.extend(workloads(cluster).await);
    checks.extend(verifications(cluster).await);
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

/// Every Deployment a rollout of the namespace's apps names or selects: the environment its ToolJet
/// container starts with, computed by Kubernetes' rules from the Deployment and the Secrets it
/// reads, judged against its workload Secret.
async fn workloads(cluster: &Cluster) -> Vec<Check> {
    let apps = match cluster.list_apps().await {
        Ok(apps) => apps,
        Err(e) => return vec![check("rollout workloads", State::Skip, e.to_string())],
    };
    let mut out = Vec::new();
    let found = rollout_workloads(cluster, &apps, &mut out).await;
    let rules = name_rules(cluster).await;
    for ((ns, name), workload) in found {
        out.push(workload_check(cluster, &ns, &name, &workload, rules).await);
    }
    out
}

/// The last verification of every stage of the namespace's apps that has rollout workloads.
async fn verifications(cluster: &Cluster) -> Vec<Check> {
    match cluster.list_apps().await {
        Ok(apps) => apps.iter().flat_map(verification_checks).collect(),
        Err(e) => vec![check("verifications", State::Skip, e.to_string())],
    }
}

/// The verdict on one app's verifications (pure): a Fail per stage whose workloads failed their
/// last verification, else one Ok row with each stage's phase; nothing when no stage has rollout
/// workloads.
fn verification_checks(app: &ToolJetApp) -> Vec<Check> {
    let verifications = app
        .status
        .as_ref()
        .map(|s| s.verifications.as_slice())
        .unwrap_or_default();
    let label = |stage: &str| {
        format!(
            "verification of {}/{} in {stage}",
            app.namespace().unwrap_or_default(),
            app.name_any()
        )
    };
    let failed: Vec<Check> = verifications
        .iter()
        .filter(|v| v.phase == VerificationPhase::Failed)
        .map(|v| {
            check(
                label(&v.environment),
                State::Fail,
                failed_verification(app, v),
            )
        })
        .collect();
    if !failed.is_empty() || verifications.is_empty() {
        return failed;
    }
    let phases: Vec<String> = verifications
        .iter()
        .map(|v| {
            format!(
                "{} {} {}",
                v.environment,
                output::phase(v.phase),
                v.progress
            )
        })
        .collect();
    vec![check(
        format!(
            "verifications of {}/{}",
            app.namespace().unwrap_or_default(),
            app.name_any()
        ),
        State::Ok,
        phases.join(", "),
    )]
}

/// What failed in a stage's verification, the fix (the workload to make available: the
/// verification passes once it is, and a new configuration or release starts a new one) and what
/// follows meanwhile.
fn failed_verification(app: &ToolJetApp, v: &StageVerification) -> String {
    let stage = &v.environment;
    format!(
        "{stage}'s workloads failed their last verification (after the {}): {}. Fix: {}; the verification \
         passes once {stage}'s workloads are available, and a new configuration or release starts a new \
         one{}",
        output::started_by(v.cause, v.version.as_deref()),
        v.message.trim_end_matches('.'),
        make_available(app, v),
        meanwhile(app, stage)
    )
}

/// How to make the failed workload available, naming it when the operator did.
fn make_available(app: &ToolJetApp, v: &StageVerification) -> String {
    let ns = app.namespace().unwrap_or_default();
    match &v.workload {
        Some(w) => format!(
            "make Deployment {w} available (see `kubectl -n {ns} rollout status deployment/{w}` and its pods' events)"
        ),
        None => format!("make {}'s rollout workloads available", v.environment),
    }
}

/// What a failed verification of `stage` holds up: promotions out of it, or, in the last stage,
/// nothing but the automatic rollback the operator may be making.
fn meanwhile(app: &ToolJetApp, stage: &str) -> String {
    if Pipeline::of(app).last() != stage {
        return format!("; until then no version is promoted out of {stage}");
    }
    app.status
        .as_ref()
        .and_then(|s| s.automatic_rollback.as_ref())
        .map(|r| format!("; the operator is rolling back from {} to {}", r.from, r.to))
        .unwrap_or_default()
}

/// A Deployment that rollouts name or select, and the apps' RolloutReady conflicts about it.
struct Workload {
    deployment: Deployment,
    conflicts: Vec<String>,
}

/// (namespace, Deployment) -> the workload, for every app with a rollout. A named Deployment that
/// is missing, and Deployments that cannot be read, are checks in `out`.
async fn rollout_workloads(
    cluster: &Cluster,
    apps: &[ToolJetApp],
    out: &mut Vec<Check>,
) -> BTreeMap<(String, String), Workload> {
    let mut found: BTreeMap<(String, String), Workload> = BTreeMap::new();
    for app in apps.iter().filter(|a| !a.spec.rollout.is_empty()) {
        let ns = app.namespace().unwrap_or_default();
        let conflict = rollout_conflict(app);
        for d in rollout_deployments(cluster, app, &ns, out).await {
            let name = d.name_any();
            let entry = found
                .entry((ns.clone(), name.clone()))
                .or_insert_with(|| Workload {
                    deployment: d,
                    conflicts: vec![],
                });
            // The app's conflicts name the Deployments they are about.
            if let Some(c) = conflict
                .as_ref()
                .filter(|c| c.contains(&format!("Deployment {name} serves")))
                && !entry.conflicts.contains(c)
            {
                entry.conflicts.push(c.clone());
            }
        }
    }
    found
}

/// The app's RolloutReady conflict, if it reports one, naming the app.
fn rollout_conflict(app: &ToolJetApp) -> Option<String> {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "RolloutReady"))
        .filter(|c| c.reason == "Conflict")
        .map(|c| format!("app {}: {}", app.name_any(), c.message))
}

/// The Deployments in namespace `ns` that `app`'s rollout names or selects, target by target. A
/// named Deployment that is missing, and Deployments that cannot be read, are checks in `out`
/// instead.
async fn rollout_deployments(
    cluster: &Cluster,
    app: &ToolJetApp,
    ns: &str,
    out: &mut Vec<Check>,
) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let mut named = Vec::new();
    for target in &app.spec.rollout {
        for name in &target.deployments {
            match api.get_opt(name).await {
                Ok(Some(d)) => named.push(d),
                Ok(None) => out.push(check(
                    format!("workload {ns}/{name}"),
                    State::Fail,
                    format!(
                        "named in the {} rollout of app {} but does not exist: create it or remove the name",
                        target.environment,
                        app.name_any()
                    ),
                )),
                Err(e) => {
                    let (state, detail) = unreadable("Deployments", e);
                    out.push(check(format!("workload {ns}/{name}"), state, detail));
                }
            }
        }
        if let Ok(Some(selector)) = target.parsed_selector() {
            match api
                .list(&ListParams::default().labels_from(&selector))
                .await
            {
                Ok(list) => named.extend(list.items),
                Err(e) => {
                    let (state, detail) = unreadable("Deployments", e);
                    out.push(check(format!("workloads of {ns}"), state, detail));
                }
            }
        }
    }
    named
}

/// The variable names the apiserver's Kubernetes version accepts (relaxed when unknown).
async fn name_rules(cluster: &Cluster) -> NameRules {
    match cluster.client.apiserver_version().await {
        Ok(info) => info
            .minor
            .trim_end_matches('+')
            .parse()
            .map(NameRules::for_minor)
            .unwrap_or(NameRules::Relaxed),
        Err(_) => NameRules::Relaxed,
    }
}

/// The check of one workload: its containers' environment, from the Secrets and ConfigMaps they
/// read, judged; Skip or Fail when one of those cannot be read.
async fn workload_check(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    workload: &Workload,
    rules: NameRules,
) -> Check {
    let containers = workload
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let label = format!("workload {ns}/{name}");
    let data = match read_sources(cluster, ns, name, &containers).await {
        Ok(data) => data,
        Err((state, detail)) => return check(label, state, detail),
    };
    let (state, detail) =
        judge_workload(name, &containers, &workload.conflicts, rules, |kind, n| {
            data.get(&(kind, n.to_string()))
        });
    check(label, state, detail)
}

/// The data of the Secrets and ConfigMaps a workload's containers read, by kind and name.
type SourceData = BTreeMap<(SourceKind, String), BTreeMap<String, Vec<u8>>>;

/// Every Secret and ConfigMap the containers read, and the workload Secret of `deployment`, as
/// the kubelet would find them (those that do not exist left out). Every one is read; when some
/// cannot be, the error is the last one's.
async fn read_sources(
    cluster: &Cluster,
    ns: &str,
    deployment: &str,
    containers: &[Container],
) -> Result<SourceData, (State, String)> {
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
    let mut data: SourceData = BTreeMap::new();
    let mut denied = None;
    let mut wanted: BTreeSet<(SourceKind, String)> = containers
        .iter()
        .flat_map(tooljet_operator::effective::sources)
        .map(|(kind, source)| (kind, source.to_string()))
        .collect();
    wanted.insert((SourceKind::Secret, workload_secret_name(deployment)));
    for (kind, source) in wanted {
        match read_source(&secrets, &config_maps, kind, &source).await {
            Ok(Some(values)) => {
                data.insert((kind, source), values);
            }
            Ok(None) => {}
            Err(e) => denied = Some(unreadable(&format!("{kind}s"), e)),
        }
    }
    match denied {
        Some(denied) => Err(denied),
        None => Ok(data),
    }
}

/// One Secret's or ConfigMap's data as the kubelet reads it into the environment; None when it
/// does not exist.
async fn read_source(
    secrets: &Api<Secret>,
    config_maps: &Api<ConfigMap>,
    kind: SourceKind,
    name: &str,
) -> kube::Result<Option<BTreeMap<String, Vec<u8>>>> {
    match kind {
        SourceKind::Secret => secrets.get_opt(name).await.map(|s| {
            s.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect::<BTreeMap<_, _>>()
            })
        }),
        // The kubelet reads a ConfigMap's `data` into the environment, not `binaryData`.
        SourceKind::ConfigMap => config_maps.get_opt(name).await.map(|c| {
            c.map(|c| {
                c.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect::<BTreeMap<_, _>>()
            })
        }),
    }
}

/// Whether ToolJet reads variable `name` as constants (either form: one per variable, or a JSON
/// object per environment).
fn is_tooljet_constant(name: &str) -> bool {
    name.starts_with("TOOLJET_GLOBAL_CONSTANTS") || name.starts_with("TOOLJET_SECRET_CONSTANTS")
}

/// The verdict on one rollout workload (pure): Fail when no container takes in its workload
/// Secret, when a key of it is missing from or replaced in the container's environment, when a
/// source the container needs does not exist, or when the apps it serves disagree (`conflicts`);
/// Warn when a ToolJet constant reaches the container from elsewhere (a source the operator does
/// not manage). Names keys and sources, never values.
fn judge_workload<'a>(
    deployment: &str,
    containers: &[Container],
    conflicts: &[String],
    rules: NameRules,
    data: impl Fn(SourceKind, &str) -> Option<&'a BTreeMap<String, Vec<u8>>>,
) -> (State, String) {
    let secret = workload_secret_name(deployment);
    let Some(container) = containers.iter().find(|c| takes_in(c, &secret)) else {
        return (
            State::Fail,
            format!(
                "no container takes in Secret {secret}: add `envFrom: [{{secretRef: {{name: {secret}}}}}]` to the ToolJet container (and remove the tooljet.<env> Secrets from it)"
            ),
        );
    };
    let env = container_env(container, rules, &data);
    let mut fails = Vec::new();
    fails.extend(conflicts.iter().cloned());
    for blocked in &env.blocking {
        fails.push(format!(
            "container {} would not start: {blocked}",
            container.name
        ));
    }
    let expected = data(SourceKind::Secret, &secret);
    fails.extend(missing_workload_keys(container, &env, &secret, expected));
    fails.extend(replaced_workload_keys(&env, &secret));
    let warns = foreign_constants(&env, &secret);
    verdict(container, &env, &secret, fails, warns)
}

/// Whether the container takes in Secret `secret` (`envFrom`).
fn takes_in(container: &Container, secret: &str) -> bool {
    container
        .env_from
        .iter()
        .flatten()
        .any(|f| f.secret_ref.as_ref().is_some_and(|r| r.name == secret))
}

/// Whether a variable comes from `envFrom` of the workload Secret `secret`.
fn from_workload(origin: &Origin, secret: &str) -> bool {
    matches!(origin, Origin::EnvFrom { name, .. } if name == secret)
}

/// What is wrong with the keys of the workload Secret (`expected`, None when it does not exist):
/// that it does not exist yet, or the keys missing from the container's environment.
fn missing_workload_keys(
    container: &Container,
    env: &Effective,
    secret: &str,
    expected: Option<&BTreeMap<String, Vec<u8>>>,
) -> Option<String> {
    match expected {
        None => Some(format!(
            "Secret {secret} does not exist yet: see the RolloutReady condition of the apps that roll it out"
        )),
        Some(expected) => {
            // In key order (a BTreeMap's); a replaced key is still in the environment.
            let missing: Vec<&String> = expected
                .keys()
                .filter(|k| !env.vars.contains_key(*k))
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "missing from container {}: {} (a prefix on the envFrom entry, or names the cluster refuses)",
                    container.name,
                    missing.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                )
            })
        }
    }
}

/// Keys of the workload Secret that a definition from elsewhere replaces.
fn replaced_workload_keys(env: &Effective, secret: &str) -> Vec<String> {
    env.shadowed
        .iter()
        .filter(|s| from_workload(&s.lost, secret) && !from_workload(&s.by, secret))
        .map(|s| {
            format!(
                "{} from {secret} is replaced by {}{}: remove it there",
                s.name,
                s.by,
                if s.differs { " with another value" } else { "" }
            )
        })
        .collect()
}

/// ToolJet constants that reach the container from elsewhere than its workload Secret.
fn foreign_constants(env: &Effective, secret: &str) -> Vec<String> {
    env.vars
        .iter()
        .filter(|(name, var)| is_tooljet_constant(name) && !from_workload(&var.origin, secret))
        .map(|(name, var)| {
            format!(
                "{name} comes from {}, not from {secret}: move it into an EnvironmentConfig",
                var.origin
            )
        })
        .collect()
}

/// Fail with every finding when something fails, else Warn with the warnings, else Ok with the
/// number of constants the container reads.
fn verdict(
    container: &Container,
    env: &Effective,
    secret: &str,
    mut fails: Vec<String>,
    warns: Vec<String>,
) -> (State, String) {
    if !fails.is_empty() {
        fails.extend(warns);
        return (State::Fail, fails.join("; "));
    }
    if !warns.is_empty() {
        return (State::Warn, warns.join("; "));
    }
    (
        State::Ok,
        format!(
            "container {} reads {} constants, all from {secret}",
            container.name,
            env.vars.keys().filter(|k| is_tooljet_constant(k)).count()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tooljet_container(spec: serde_json::Value) -> k8s_openapi::api::core::v1::Container {
        let mut c = json!({ "name": "tooljet" });
        c.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    fn secret_data(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    const RELAXED: tooljet_operator::effective::NameRules =
        tooljet_operator::effective::NameRules::Relaxed;

    #[test]
    fn a_workload_is_judged_on_the_environment_its_container_gets() {
        use tooljet_operator::effective::SourceKind;
        let workload = secret_data(&[
            ("TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL", "warn"),
            (
                "TOOLJET_SECRET_CONSTANTS__production__DB_PASSWORD",
                "canary-doctor",
            ),
        ]);
        let old_stage = secret_data(&[
            ("TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL", "info"),
            ("datasources.json", "{}"),
        ]);
        let lookup = |kind: SourceKind, name: &str| match (kind, name) {
            (SourceKind::Secret, "tooljet-workload.web") => Some(&workload),
            (SourceKind::Secret, "tooljet.production") => Some(&old_stage),
            _ => None,
        };
        let good = tooljet_container(json!({
            "envFrom": [{"secretRef": {"name": "tooljet-workload.web"}}],
            "env": [{"name": "TOOLJET_HOST", "value": "https://x"}],
        }));
        let (state, detail) =
            judge_workload("web", std::slice::from_ref(&good), &[], RELAXED, lookup);
        assert_eq!(state, State::Ok, "{detail}");
        assert!(detail.contains("reads 2 constants"), "{detail}");

        // The old wiring after the workload Secret: its LOG_LEVEL wins, by order.
        let shadowed = tooljet_container(json!({
            "envFrom": [
                {"secretRef": {"name": "tooljet-workload.web"}},
                {"secretRef": {"name": "tooljet.production", "optional": true}},
            ],
        }));
        let (state, detail) = judge_workload("web", &[shadowed], &[], RELAXED, lookup);
        assert_eq!(state, State::Fail);
        assert!(
            detail.contains("TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL from tooljet-workload.web is replaced by envFrom[1] (Secret tooljet.production) with another value: remove it there"),
            "{detail}"
        );
        assert!(!detail.contains("canary-doctor") && !detail.contains("warn"));

        // A constant set by hand in env: foreign, and it replaces one.
        let by_hand = tooljet_container(json!({
            "envFrom": [{"secretRef": {"name": "tooljet-workload.web"}}],
            "env": [{"name": "TOOLJET_GLOBAL_CONSTANTS__production__EXTRA", "value": "x"}],
        }));
        let (state, detail) = judge_workload("web", &[by_hand], &[], RELAXED, lookup);
        assert_eq!(state, State::Warn);
        assert!(detail.contains("TOOLJET_GLOBAL_CONSTANTS__production__EXTRA comes from env[0]"));

        // Not taken in at all; a prefix hides every key; a conflict between apps.
        let (state, detail) =
            judge_workload("web", &[tooljet_container(json!({}))], &[], RELAXED, lookup);
        assert_eq!(state, State::Fail);
        assert!(detail.contains("no container takes in Secret tooljet-workload.web"));
        let prefixed = tooljet_container(json!({
            "envFrom": [{"secretRef": {"name": "tooljet-workload.web"}, "prefix": "X_"}],
        }));
        let (state, detail) = judge_workload("web", &[prefixed], &[], RELAXED, lookup);
        assert_eq!(state, State::Fail);
        assert!(
            detail.contains("missing from container tooljet"),
            "{detail}"
        );
        let (state, detail) = judge_workload(
            "web",
            &[good],
            &["app hr: constant X differs".into()],
            RELAXED,
            lookup,
        );
        assert_eq!(
            (state, detail.as_str()),
            (State::Fail, "app hr: constant X differs")
        );
    }

    fn app_with(verifications: serde_json::Value, rollback: serde_json::Value) -> ToolJetApp {
        serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
            "metadata": { "name": "crm", "namespace": "ws" },
            "spec": { "environments": ["development", "staging", "production"] },
            "status": { "verifications": verifications, "automaticRollback": rollback },
        }))
        .unwrap()
    }

    fn verification(
        stage: &str,
        cause: &str,
        phase: &str,
        workload: &str,
        message: &str,
    ) -> serde_json::Value {
        json!({ "environment": stage, "cause": cause, "version": "crm-v4", "phase": phase,
                "startedAt": "2026-01-05T09:00:00Z", "workload": workload, "progress": "0/1",
                "message": message })
    }

    #[test]
    fn a_stage_whose_verification_failed_fails_with_the_workload_and_the_fix() {
        let app = app_with(
            json!([
                verification(
                    "staging",
                    "Promotion",
                    "Failed",
                    "tooljet-staging",
                    "Deployment tooljet-staging: ProgressDeadlineExceeded: ReplicaSet \"tooljet-staging-7c9\" has timed out progressing."
                ),
                verification(
                    "production",
                    "Release",
                    "Progressing",
                    "web",
                    "waiting for Deployment web: 0 of 1 new pods available"
                ),
            ]),
            json!(null),
        );
        let checks = verification_checks(&app);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].check, "verification of ws/crm in staging");
        assert_eq!(checks[0].state, State::Fail);
        assert_eq!(
            checks[0].detail,
            "staging's workloads failed their last verification (after the promotion of crm-v4): Deployment \
             tooljet-staging: ProgressDeadlineExceeded: ReplicaSet \"tooljet-staging-7c9\" has timed out progressing. \
             Fix: make Deployment tooljet-staging available (see `kubectl -n ws rollout status \
             deployment/tooljet-staging` and its pods' events); the verification passes once staging's workloads \
             are available, and a new configuration or release starts a new one; until then no version is \
             promoted out of staging"
        );

        // The last stage, with the operator's rollback under way.
        let app = app_with(
            json!([verification(
                "production",
                "Release",
                "Failed",
                "web",
                "Deployment web: ProgressDeadlineExceeded: x"
            )]),
            json!({ "from": "crm-v4", "to": "crm-v3", "reason": "automatic rollback: ...", "at": "2026-01-05T09:10:00Z" }),
        );
        let checks = verification_checks(&app);
        assert!(
            checks[0]
                .detail
                .ends_with("starts a new one; the operator is rolling back from crm-v4 to crm-v3"),
            "{}",
            checks[0].detail
        );
    }

    #[test]
    fn verified_and_progressing_stages_pass_and_an_app_without_workloads_has_no_row() {
        let app = app_with(
            json!([
                verification(
                    "staging",
                    "Configuration",
                    "Verified",
                    "tooljet-staging",
                    "its workload is available (3 s after it started)"
                ),
                verification(
                    "production",
                    "Release",
                    "Progressing",
                    "web",
                    "waiting for Deployment web: 0 of 1 new pods available"
                ),
            ]),
            json!(null),
        );
        let checks = verification_checks(&app);
        assert_eq!(checks.len(), 1);
        assert_eq!(
            (
                checks[0].check.as_str(),
                checks[0].state,
                checks[0].detail.as_str()
            ),
            (
                "verifications of ws/crm",
                State::Ok,
                "staging Verified 0/1, production Progressing 0/1"
            )
        );
        assert!(verification_checks(&app_with(json!([]), json!(null))).is_empty());
    }

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
