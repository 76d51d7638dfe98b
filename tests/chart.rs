//! The Helm chart installed with the real helm into the real apiserver; the operator, run out of
//! cluster as the chart's ServiceAccount (impersonation), does its whole job with exactly the
//! chart's RBAC: not one 403 in its log.

mod support;

use std::{path::Path, process::Command, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    apps::v1::Deployment,
    core::v1::Secret,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::admission::{WAIT, wait_ok};
use tooljet_operator::{
    api::{AppVersion, ToolJetApp},
    webhook::config::{self, Endpoint},
};

const NS: &str = "tooljet-system";
const SA: &str = "system:serviceaccount:tooljet-system:tooljet-operator";

fn helm(args: &[&str]) -> String {
    let out = Command::new(testenv::Binary::Helm.require().unwrap())
        .env("KUBECONFIG", &testenv::shared().kubeconfig)
        .env("HELM_CACHE_HOME", testenv::shared().dir.join("helm-cache"))
        .env(
            "HELM_CONFIG_HOME",
            testenv::shared().dir.join("helm-config"),
        )
        .env("HELM_DATA_HOME", testenv::shared().dir.join("helm-data"))
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

/// A kubeconfig that authenticates as the admin and acts as the chart's ServiceAccount.
fn impersonating_kubeconfig() -> std::path::PathBuf {
    let shared = testenv::shared();
    let text = std::fs::read_to_string(&shared.kubeconfig).unwrap();
    let text = text.replace(
        "    client-key:",
        &format!("    as: {SA}\n    as-groups: [system:serviceaccounts, system:serviceaccounts:{NS}, system:authenticated]\n    client-key:"),
    );
    let path = shared.dir.join("operator-as-serviceaccount.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_chart_installs_and_its_rbac_is_all_the_operator_needs() {
    let webhook_port = support::free_port();
    let webhook_url = format!("https://127.0.0.1:{webhook_port}");
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/tooljet-operator");
    helm(&[
        "install",
        "tooljet-operator",
        chart.to_str().unwrap(),
        "--namespace",
        NS,
        "--create-namespace",
        "--set",
        &format!("webhook.url={webhook_url}"),
    ]);

    // Every object the chart renders exists.
    let manifest = helm(&["get", "manifest", "tooljet-operator", "--namespace", NS]);
    let mut objects = 0;
    for doc in manifest.split("\n---\n") {
        let Ok(value) = serde_yaml::from_str::<serde_json::Value>(doc) else {
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
        support::kubectl(&args)
            .unwrap_or_else(|e| panic!("{kind} {name} from the chart is missing: {e}"));
        objects += 1;
    }
    assert!(objects >= 15, "{objects} objects");
    for crd in [
        "tooljetapps.tooljet.io",
        "appversions.tooljet.io",
        "environmentconfigs.tooljet.io",
    ] {
        support::kubectl(&["get", "crd", crd]).unwrap();
    }

    // The chart's webhook rules are the ones the operator's code defines.
    let client = support::client().await;
    let installed = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get("tooljet-operator")
        .await
        .unwrap();
    let expected = config::validating(&Endpoint::Url(webhook_url.clone()), None);
    let rules = |c: &ValidatingWebhookConfiguration| {
        c.webhooks
            .iter()
            .flatten()
            .map(|w| {
                (
                    w.name.clone(),
                    w.rules.clone(),
                    w.failure_policy.clone(),
                    w.client_config.url.clone(),
                    w.match_conditions.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rules(&installed), rules(&expected));
    let installed = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("tooljet-operator")
        .await
        .unwrap();
    let expected = config::mutating(&Endpoint::Url(webhook_url.clone()), None);
    let mutating = |c: &MutatingWebhookConfiguration| {
        c.webhooks
            .iter()
            .flatten()
            .map(|w| (w.name.clone(), w.rules.clone(), w.match_conditions.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(mutating(&installed), mutating(&expected));

    // The operator, as the chart's ServiceAccount, with the chart's arguments.
    let health = format!("127.0.0.1:{}", support::free_port());
    let kubeconfig = impersonating_kubeconfig();
    let addr = format!("127.0.0.1:{webhook_port}");
    let mut operator = {
        let args = [
            "--namespace",
            NS,
            "--leader-elect",
            "--lease-name",
            "tooljet-operator",
            "--webhook-addr",
            &addr,
            "--webhook-host",
            "127.0.0.1",
            "--webhook-secret",
            "tooljet-operator-webhook-tls",
            "--webhook-configuration",
            "tooljet-operator",
            "--health-addr",
            &health,
        ];
        support::Operator::start_with_kubeconfig("chart-rbac", &args, &kubeconfig)
    };
    wait_ok(&health, "/readyz", Duration::from_secs(60)).await;

    // The lifecycle: configs, versions, promotion, release, rollout, rotation, drift, deletion.
    let ns = support::namespace(&client, "chart").await;
    let apply = PatchParams::apply("test-user").force();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .patch("creds", &apply, &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "creds" }, "stringData": { "k": "v1" } })))
        .await
        .unwrap();
    let dynamic = |kind: &str, plural: &str| -> Api<kube::api::DynamicObject> {
        let ar = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", kind),
            plural,
        );
        Api::namespaced_with(client.clone(), &ns, &ar)
    };
    let obj = |kind: &str, name: &str, spec: serde_json::Value| json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "tooljet-production" },
        "spec": { "selector": { "matchLabels": { "app": "t" } }, "template": { "metadata": { "labels": { "app": "t" } },
        "spec": { "containers": [{ "name": "t", "image": "tooljet/tooljet" }] } } } });
    deployments
        .patch("tooljet-production", &apply, &Patch::Apply(&deployment))
        .await
        .unwrap();
    let apps = dynamic("ToolJetApp", "tooljetapps");
    let configs = dynamic("EnvironmentConfig", "environmentconfigs");
    let versions = dynamic("AppVersion", "appversions");
    apps.patch("crm", &apply, &Patch::Apply(obj("ToolJetApp", "crm", json!({ "rollout": [{ "environment": "production", "deployments": ["tooljet-production"] }] }))))
        .await
        .unwrap();
    for env in ["development", "staging", "production"] {
        let spec = json!({ "app": "crm", "environment": env, "constants": [
            { "name": "A", "type": "Global", "value": env },
            { "name": "S", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "k" } } } ] });
        configs
            .patch(
                &format!("crm-{env}"),
                &apply,
                &Patch::Apply(obj("EnvironmentConfig", &format!("crm-{env}"), spec)),
            )
            .await
            .unwrap();
    }
    let typed_apps: Api<ToolJetApp> = Api::namespaced(client.clone(), &ns);
    let typed_versions: Api<AppVersion> = Api::namespaced(client.clone(), &ns);
    support::eventually(WAIT, "the webhook sees app crm", || {
        let versions = versions.clone();
        let body = obj(
            "AppVersion",
            "crm-v1",
            json!({ "app": "crm", "versionName": "v1" }),
        );
        async move {
            versions
                .patch(
                    "crm-v1",
                    &PatchParams::apply("test-user").force(),
                    &Patch::Apply(body),
                )
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    for to in ["staging", "production"] {
        versions
            .patch(
                "crm-v1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "environment": to } })),
            )
            .await
            .unwrap();
    }
    apps.patch(
        "crm",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "release": { "version": "crm-v1" } } })),
    )
    .await
    .unwrap();
    support::eventually(WAIT, "released and resolved", || {
        let (apps, versions) = (typed_apps.clone(), typed_versions.clone());
        async move {
            let released =
                apps.get("crm").await.ok()?.status?.released_version == Some("crm-v1".into());
            let resolved = versions
                .get("crm-v1")
                .await
                .ok()?
                .status?
                .resolved_config?
                .environment
                == "production";
            (released && resolved).then_some(())
        }
    })
    .await;
    secrets
        .patch("creds", &apply, &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "creds" }, "stringData": { "k": "v2" } })))
        .await
        .unwrap();
    // Drift: delete the materialised Secret (once it is there: it is written asynchronously).
    support::eventually(WAIT, "the materialised production Secret", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("tooljet.production.crm")
                .await
                .ok()?
                .map(|_| ())
        }
    })
    .await;
    secrets
        .delete("tooljet.production.crm", &DeleteParams::default())
        .await
        .unwrap();
    support::eventually(WAIT, "rotation and drift repaired", || {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get_opt("tooljet.production.crm").await.ok()??;
            (s.data?.get("TOOLJET_SECRET_CONSTANTS__production__S")?.0 == b"v2").then_some(())
        }
    })
    .await;
    support::eventually(WAIT, "rollout stamped", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("tooljet-production").await.ok()?;
            d.spec?
                .template
                .metadata?
                .annotations?
                .get("tooljet.io/config-hash")
                .map(|_| ())
        }
    })
    .await;
    configs
        .patch(
            "crm-production",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "environment": "staging2" } })),
        )
        .await
        .unwrap();
    support::eventually(WAIT, "the moved config's old Secret deleted", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("tooljet.production.crm")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    // A denied request exercises the webhook's namespace lookup too.
    assert!(
        versions
            .delete("crm-v1", &DeleteParams::default())
            .await
            .is_err()
    );

    // The lease and the webhook certificate are where the chart's Role allows.
    support::kubectl(&["get", "lease", "tooljet-operator", "--namespace", NS]).unwrap();
    support::kubectl(&[
        "get",
        "secret",
        "tooljet-operator-webhook-tls",
        "--namespace",
        NS,
    ])
    .unwrap();

    operator.stop();
    let log = operator.log_text();
    for forbidden in ["code: 403", "reason: \"Forbidden\"", "is forbidden: User"] {
        assert!(
            !log.contains(forbidden),
            "the operator hit RBAC limits ({forbidden}):\n{}",
            log.lines()
                .filter(|l| l.contains("403") || l.contains("orbidden"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
