//! Pods, on a control plane with kube-scheduler and KWOK's simulated nodes (nothing is executed:
//! KWOK plays the kubelet, so pods reach Running and Ready and Deployments roll out through
//! ReplicaSets):
//! - the chart end to end: the image built and pushed to a loopback registry, `helm install`
//!   with it, the operator's pods Running on the simulated nodes, `helm upgrade` rolling them,
//!   `helm uninstall` leaving only the CRDs;
//! - the rollout feature on the examples: a stage's ToolJet pods restart (a new ReplicaSet) when
//!   that stage's configuration changes, and no other stage's do.

mod support;

use std::{
    collections::BTreeMap,
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::admission::WAIT;
use testenv::image;
use tooljet_operator::webhook::config;

const NS: &str = "tooljet-system";
const RELEASE: &str = "tooljet-operator";
const ROLL: Duration = Duration::from_secs(120);

/// The chart installs fail-closed webhooks whose Service has no reachable pod (simulated pods
/// run nothing): the two tests of this binary take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn helm(args: &[&str]) -> String {
    let shared = testenv::shared_with_pods();
    let out = Command::new(testenv::Binary::Helm.require().unwrap())
        .env("KUBECONFIG", &shared.kubeconfig)
        .env("HELM_CACHE_HOME", shared.dir.join("helm-cache"))
        .env("HELM_CONFIG_HOME", shared.dir.join("helm-config"))
        .env("HELM_DATA_HOME", shared.dir.join("helm-data"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&support::kubectl(&all).unwrap()).unwrap()
}

/// Polls `check` every 500 ms until it gives a value, or panics after `timeout` with `what`.
async fn until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pods matching `selector` in `ns`, when there are exactly `n`, all Running and Ready on
/// simulated nodes.
fn running_pods(ns: &str, selector: &str, n: usize) -> Option<Vec<Value>> {
    let pods = kubectl_json(&["get", "pods", "--namespace", ns, "-l", selector]);
    let pods = pods["items"].as_array()?.clone();
    let live: Vec<Value> = pods
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ok = live.len() == n
        && live.iter().all(|p| {
            p["status"]["phase"] == "Running"
                && p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("kwok-node-"))
                && p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        });
    ok.then_some(live)
}

/// The names of the ReplicaSets of Deployment `name` (by owner reference).
fn replica_sets(ns: &str, deployment: &str) -> BTreeSet<String> {
    let sets = kubectl_json(&["get", "replicasets", "--namespace", ns]);
    sets["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| {
                    o.iter()
                        .any(|o| o["kind"] == "Deployment" && o["name"] == deployment)
                })
        })
        .map(|rs| rs["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn rolled_out(ns: &str, deployment: &str) {
    support::kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{deployment}"),
        "--namespace",
        ns,
        "--timeout=120s",
    ])
    .unwrap_or_else(|e| panic!("{deployment} did not roll out: {e}"));
}

#[tokio::test]
async fn the_chart_runs_the_image_on_simulated_nodes_upgrades_and_uninstalls_cleanly() {
    testenv::shared_with_pods();
    let _turn = TURN.lock().await;
    let shared = testenv::shared_with_pods();

    // The image, pushed to a registry on loopback.
    let built = image::build(root(), &target_dir().join("image")).expect("the image builds");
    let registry = image::Registry::start(&shared.dir.join("registry.log")).unwrap();
    let repository = format!("{}/tooljet-operator", registry.addr);
    let pushed = image::push(&built, &repository).unwrap();
    assert!(pushed.ends_with(&built.digest), "{pushed}");
    let version = env!("CARGO_PKG_VERSION");
    let image_ref = format!("{repository}:{version}");

    let chart = root().join("charts/tooljet-operator");
    let chart = chart.to_str().unwrap();
    let repo_value = format!("image.repository={repository}");
    let tag_value = format!("image.tag={version}");
    helm(&[
        "install",
        RELEASE,
        chart,
        "--namespace",
        NS,
        "--create-namespace",
        "--set",
        &repo_value,
        "--set",
        &tag_value,
        // Helm itself waits for the Deployment's pods to be Ready.
        "--wait",
        "--timeout",
        "3m",
    ]);
    let selector =
        format!("app.kubernetes.io/name=tooljet-operator,app.kubernetes.io/instance={RELEASE}");
    let pods = until(ROLL, "2 operator pods Running", || {
        running_pods(NS, &selector, 2)
    })
    .await;
    for pod in &pods {
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["image"], image_ref.as_str());
        // The chart's pod spec as scheduled: nonroot, as the image.
        assert_eq!(
            pod["spec"]["securityContext"]["runAsNonRoot"], true,
            "{pod}"
        );
    }
    // What the pods would pull is the image built here.
    let served = Command::new(testenv::Binary::Crane.require().unwrap())
        .args(["digest", &image_ref])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&served.stdout).trim(),
        built.digest,
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    // The webhook configurations and the admission policies are installed.
    for kind in [
        "validatingwebhookconfiguration",
        "mutatingwebhookconfiguration",
    ] {
        support::kubectl(&["get", kind, config::CONFIGURATION_NAME]).unwrap();
    }
    for policy in [
        config::POLICY_NAME,
        config::APP_POLICY_NAME,
        config::CONFIG_POLICY_NAME,
        config::GATE_POLICY_NAME,
    ] {
        support::kubectl(&["get", "validatingadmissionpolicy", policy]).unwrap();
        support::kubectl(&["get", "validatingadmissionpolicybinding", policy]).unwrap();
    }
    let manifest = helm(&["get", "manifest", RELEASE, "--namespace", NS]);

    // An upgrade that changes the pod template rolls the pods: a new ReplicaSet, Running pods.
    let before = replica_sets(NS, RELEASE);
    assert_eq!(before.len(), 1, "{before:?}");
    helm(&[
        "upgrade",
        RELEASE,
        chart,
        "--namespace",
        NS,
        "--reuse-values",
        "--set",
        "logging.level=debug",
        "--wait",
        "--timeout",
        "3m",
    ]);
    rolled_out(NS, RELEASE);
    let after = replica_sets(NS, RELEASE);
    let new: Vec<&String> = after.difference(&before).collect();
    assert_eq!(new.len(), 1, "before {before:?}, after {after:?}");
    let pods = until(ROLL, "the upgraded pods Running", || {
        running_pods(NS, &selector, 2)
    })
    .await;
    for pod in &pods {
        let owner = &pod["metadata"]["ownerReferences"][0]["name"];
        assert_eq!(
            owner,
            new[0].as_str(),
            "a pod of the old ReplicaSet is left"
        );
        // The changed value reaches the pod (RUST_LOG).
        assert!(
            pod["spec"]["containers"][0]
                .to_string()
                .contains("\"debug\""),
            "{pod}"
        );
    }

    // Uninstall leaves nothing of the release but the CRDs (Helm keeps crds/ by design).
    helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NS,
        "--wait",
        "--timeout",
        "3m",
    ]);
    let mut checked = 0;
    for doc in manifest.split("\n---\n") {
        let Ok(value) = serde_yaml::from_str::<Value>(doc) else {
            continue;
        };
        let (Some(kind), Some(name)) = (value["kind"].as_str(), value["metadata"]["name"].as_str())
        else {
            continue;
        };
        let mut args = vec!["get".to_string(), kind.to_lowercase(), name.to_string()];
        if let Some(ns) = value["metadata"]["namespace"].as_str() {
            args.extend(["--namespace".into(), ns.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = support::kubectl(&args)
            .err()
            .unwrap_or_else(|| panic!("{kind} {name} survived helm uninstall"));
        assert!(err.to_string().contains("NotFound"), "{kind} {name}: {err}");
        checked += 1;
    }
    assert!(checked >= 15, "{checked} objects checked");
    until(ROLL, "the operator's pods and ReplicaSets gone", || {
        let left = support::kubectl(&[
            "get",
            "deployments,replicasets,pods",
            "--namespace",
            NS,
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "name",
        ])
        .ok()?;
        left.trim().is_empty().then_some(())
    })
    .await;
    let releases = support::kubectl(&[
        "get",
        "secrets",
        "--namespace",
        NS,
        "-l",
        "owner=helm",
        "-o",
        "name",
    ])
    .unwrap();
    assert!(
        releases.trim().is_empty(),
        "helm release records left: {releases}"
    );
    for crd in [
        "tooljetapps.tooljet.io",
        "appversions.tooljet.io",
        "environmentconfigs.tooljet.io",
    ] {
        support::kubectl(&["get", "crd", crd]).unwrap();
    }
    drop(registry);
}

/// The environment a ToolJet container of `deployment` starts with, computed by Kubernetes' rules
/// from the Deployment and the Secrets as the apiserver holds them.
fn effective_env(ns: &str, deployment: &str) -> tooljet_operator::effective::Effective {
    use tooljet_operator::effective::{NameRules, SourceKind, container_env, sources};
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(kubectl_json(&[
        "get",
        "deployment",
        deployment,
        "--namespace",
        ns,
    ]))
    .unwrap();
    let container = d.spec.unwrap().template.spec.unwrap().containers.remove(0);
    let mut sources_read: BTreeMap<(SourceKind, String), BTreeMap<String, Vec<u8>>> =
        BTreeMap::new();
    // The examples' workloads read Secrets only; one that does not exist is left out.
    for (kind, name) in sources(&container) {
        if kind != SourceKind::Secret {
            continue;
        }
        if let Ok(text) =
            support::kubectl(&["get", "secret", name, "--namespace", ns, "-o", "json"])
        {
            let s: k8s_openapi::api::core::v1::Secret = serde_json::from_str(&text).unwrap();
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            sources_read.insert((SourceKind::Secret, name.to_string()), data);
        }
    }
    container_env(&container, NameRules::Relaxed, |kind, name| {
        sources_read.get(&(kind, name.to_string()))
    })
}

/// What each stage's ToolJet server must read, written out from examples/ by hand: the CRM app's
/// entries over the workspace's (LOG_LEVEL), its data sources' credentials as secret constants,
/// and nothing of another stage.
fn expected_env(stage: &str) -> BTreeMap<String, String> {
    let pick = |dev: &str, staging: &str, prod: &str| {
        match stage {
            "development" => dev,
            "staging" => staging,
            _ => prod,
        }
        .to_string()
    };
    let global = |name: &str| format!("TOOLJET_GLOBAL_CONSTANTS__{stage}__{name}");
    let secret = |name: &str| format!("TOOLJET_SECRET_CONSTANTS__{stage}__{name}");
    BTreeMap::from([
        (
            global("API_BASE_URL"),
            pick(
                "https://api.dev.acme.example",
                "https://api.staging.acme.example",
                "https://api.acme.example",
            ),
        ),
        (global("LOG_LEVEL"), pick("debug", "info", "warn")),
        (global("BETA_FEATURES"), pick("true", "true", "false")),
        (global("SUPPORT_EMAIL"), "support@acme.example".into()),
        (
            global("ENVIRONMENT_BANNER"),
            pick("DEVELOPMENT", "STAGING", "PRODUCTION"),
        ),
        (
            secret("STRIPE_KEY"),
            pick(
                "sk_test_development",
                "sk_test_staging",
                "sk_live_production",
            ),
        ),
        (
            secret("CRM_DB_PASSWORD"),
            pick(
                "dev-only-password",
                "staging-password-change-me",
                "production-password-change-me",
            ),
        ),
        (
            secret("CRM_API_BEARER_TOKEN"),
            pick(
                "dev-token-0001",
                "staging-token-0002",
                "production-token-0003",
            ),
        ),
        (
            "TOOLJET_HOST".into(),
            format!("https://tooljet-{stage}.acme.example"),
        ),
    ])
}

fn as_text(e: &tooljet_operator::effective::Effective) -> BTreeMap<String, String> {
    e.vars
        .iter()
        .map(|(k, v)| {
            let value = v.value.as_deref().map(String::from_utf8_lossy);
            (k.clone(), value.unwrap_or_default().into_owned())
        })
        .collect()
}

/// The examples (app, configs, ToolJet Deployments) in a namespace of their own: every stage's
/// pods come up with its config hash, and each ToolJet container's environment, computed by
/// Kubernetes' rules from what the apiserver holds, is exactly its stage's configuration with
/// the app's entries winning; changing staging's configuration gives tooljet-staging a new
/// ReplicaSet (and the new value) and leaves development's and production's alone.
#[tokio::test]
async fn a_stage_config_change_rolls_that_stage_pods_only() {
    testenv::shared_with_pods();
    let _turn = TURN.lock().await;
    let (_client, ns) = support::operator_namespace("rollout").await;
    let examples = root().join("examples");
    let dir = testenv::shared_with_pods()
        .dir
        .join(format!("examples-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    for file in [
        "secrets.yaml",
        "deployments.yaml",
        "app.yaml",
        "environment-configs.yaml",
        "workspace-configs.yaml",
    ] {
        let text = std::fs::read_to_string(examples.join(file)).unwrap();
        let text = text.replace("namespace: acme-workspace", &format!("namespace: {ns}"));
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        support::kubectl(&["apply", "-f", path.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("applying examples/{file}: {e}"));
    }
    let stages = ["development", "staging", "production"];
    let hash = |deployment: &str| {
        support::kubectl(&[
            "get",
            "deployment",
            deployment,
            "--namespace",
            &ns,
            "-o",
            "jsonpath={.spec.template.metadata.annotations.tooljet\\.io/config-hash}",
        ])
        .unwrap()
    };
    for stage in stages {
        let deployment = format!("tooljet-{stage}");
        until(WAIT * 3, &format!("{deployment} stamped"), || {
            Some(()).filter(|_| !hash(&deployment).trim().is_empty())
        })
        .await;
        rolled_out(&ns, &deployment);
    }
    for stage in stages {
        let deployment = format!("tooljet-{stage}");
        let env = until(WAIT * 3, &format!("{deployment}'s environment"), || {
            let env = effective_env(&ns, &deployment);
            (env.blocking.is_empty() && as_text(&env) == expected_env(stage)).then_some(env)
        })
        .await;
        assert!(env.shadowed.is_empty(), "{deployment}: {:?}", env.shadowed);
    }
    let replicas = |stage: &str| if stage == "production" { 2 } else { 1 };
    let mut before = vec![];
    for stage in stages {
        let selector = format!("app.kubernetes.io/name=tooljet,tooljet.io/environment={stage}");
        until(ROLL, &format!("{stage}'s pods Running"), || {
            running_pods(&ns, &selector, replicas(stage))
        })
        .await;
        let deployment = format!("tooljet-{stage}");
        before.push((replica_sets(&ns, &deployment), hash(&deployment)));
    }

    // Staging's LOG_LEVEL changes.
    support::kubectl(&[
        "patch",
        "environmentconfig",
        "crm-staging",
        "--namespace",
        &ns,
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/constants/1/name","value":"LOG_LEVEL"},{"op":"replace","path":"/spec/constants/1/value","value":"trace"}]"#,
    ])
    .unwrap();
    let staging_hash = until(WAIT * 3, "staging's new config hash stamped", || {
        let h = hash("tooljet-staging");
        (h != before[1].1).then_some(h)
    })
    .await;
    rolled_out(&ns, "tooljet-staging");
    let mut expected = expected_env("staging");
    expected.insert(
        "TOOLJET_GLOBAL_CONSTANTS__staging__LOG_LEVEL".into(),
        "trace".into(),
    );
    assert_eq!(as_text(&effective_env(&ns, "tooljet-staging")), expected);
    let after = replica_sets(&ns, "tooljet-staging");
    let new: Vec<&String> = after.difference(&before[1].0).collect();
    assert_eq!(
        new.len(),
        1,
        "staging: before {:?}, after {after:?}",
        before[1].0
    );
    let pods = until(ROLL, "staging's new pod Running", || {
        running_pods(
            &ns,
            "app.kubernetes.io/name=tooljet,tooljet.io/environment=staging",
            1,
        )
    })
    .await;
    assert_eq!(
        pods[0]["metadata"]["ownerReferences"][0]["name"],
        new[0].as_str()
    );
    assert_eq!(
        pods[0]["metadata"]["annotations"]["tooljet.io/config-hash"],
        staging_hash.as_str()
    );
    // Give any (wrong) reaction time to show, then: the other stages did not roll.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (i, stage) in stages.iter().enumerate().filter(|(_, s)| **s != "staging") {
        let deployment = format!("tooljet-{stage}");
        assert_eq!(
            (replica_sets(&ns, &deployment), hash(&deployment)),
            before[i],
            "{deployment} rolled although only staging's configuration changed"
        );
    }
}
