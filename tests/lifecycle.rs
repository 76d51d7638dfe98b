//! The version lifecycle against the real kube-apiserver, with the operator running: promotion
//! switches a version's resolved config, release and rollback are recorded, workloads named in
//! `spec.rollout` restart exactly when their stage's configuration changes, and a Secret merely
//! named and labelled like a stage configuration never configures a version.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret, events::v1::Event};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use tooljet_operator::api::{AppVersion, EnvironmentConfig, ToolJetApp};

const WAIT: Duration = Duration::from_secs(20);
const CANARY: &str = "canary-91ab-lifecycle";

struct Fixture {
    client: Client,
    ns: String,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let (client, ns) = support::operator_namespace(prefix).await;
        Fixture { client, ns }
    }

    async fn apply(&self, api_version: &str, kind: &str, plural: &str, name: &str, body: Value) {
        let mut obj = body;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(name);
        let gvk = kube::api::GroupVersionKind::gvk(
            api_version.split_once('/').map(|(g, _)| g).unwrap_or(""),
            api_version.rsplit('/').next().unwrap(),
            kind,
        );
        let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        api.patch(
            name,
            &PatchParams::apply("test-user").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    }

    /// What `kubectl patch ... --type merge -p` does.
    async fn merge_patch<K>(&self, name: &str, patch: Value)
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.ns);
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn config(&self, env: &str, api_url: &str, extra: &[(&str, &str)]) {
        let mut constants = vec![
            json!({ "name": "API_URL", "type": "Global", "value": api_url }),
            json!({ "name": "DB_PASSWORD", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "creds", "key": env } } }),
        ];
        for (k, v) in extra {
            constants.push(json!({ "name": k, "type": "Global", "value": v }));
        }
        let spec = json!({ "spec": {
            "app": "crm", "environment": env,
            "dataSources": [{ "name": "crm-db", "kind": "postgresql", "options": { "host": format!("db.{env}") } }],
            "constants": constants,
        }});
        self.apply(
            "tooljet.io/v1alpha1",
            "EnvironmentConfig",
            "environmentconfigs",
            &format!("crm-{env}"),
            spec,
        )
        .await;
    }

    async fn setup(&self) {
        self.apply(
            "v1",
            "Secret",
            "secrets",
            "creds",
            json!({ "stringData": { "development": "dev-pw", "staging": CANARY, "production": "prod-pw" } }),
        )
        .await;
        for env in ["development", "staging", "production"] {
            self.config(env, &format!("https://{env}.example"), &[])
                .await;
        }
        self.apply(
            "tooljet.io/v1alpha1",
            "ToolJetApp",
            "tooljetapps",
            "crm",
            json!({ "spec": { "environments": ["development", "staging", "production"] } }),
        )
        .await;
    }

    async fn version(&self, name: &str, requires: Value) {
        let body = json!({ "spec": {
            "app": "crm", "versionName": name, "environment": "development", "requires": requires,
            "definition": { "queries": [{ "url": "{{constants.API_URL}}/customers" }] },
        }});
        self.apply(
            "tooljet.io/v1alpha1",
            "AppVersion",
            "appversions",
            name,
            body,
        )
        .await;
    }

    async fn resolved(
        &self,
        version: &str,
        what: &str,
        pred: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        self.secret_text(&format!("tooljet-version.{version}"), what, pred)
            .await
    }

    /// Secret `name`'s data as text, once `pred` holds of it.
    async fn secret_text(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let name = name.to_string();
        support::eventually(WAIT, what, || {
            let api = api.clone();
            let name = name.clone();
            let pred = &pred;
            async move {
                let s = api.get_opt(&name).await.unwrap()?;
                let data: BTreeMap<String, String> = s
                    .data?
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                    .collect();
                pred(&data).then_some(data)
            }
        })
        .await
    }

    async fn version_status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&AppVersion) -> bool,
    ) -> AppVersion {
        let api: Api<AppVersion> = Api::namespaced(self.client.clone(), &self.ns);
        support::eventually(WAIT, what, || {
            let api = api.clone();
            let pred = &pred;
            async move {
                let v = api.get(name).await.unwrap();
                pred(&v).then_some(v)
            }
        })
        .await
    }

    async fn app_status(&self, what: &str, pred: impl Fn(&ToolJetApp) -> bool) -> ToolJetApp {
        let api: Api<ToolJetApp> = Api::namespaced(self.client.clone(), &self.ns);
        support::eventually(WAIT, what, || {
            let api = api.clone();
            let pred = &pred;
            async move {
                let a = api.get("crm").await.unwrap();
                pred(&a).then_some(a)
            }
        })
        .await
    }

    async fn promote(&self, version: &str, to: &str) {
        self.merge_patch::<AppVersion>(version, json!({ "spec": { "environment": to } }))
            .await;
        self.version_status(version, &format!("{version} observed in {to}"), |v| {
            v.status.as_ref().and_then(|s| s.environment.as_deref()) == Some(to)
        })
        .await;
    }

    async fn release(&self, version: &str) {
        self.merge_patch::<ToolJetApp>(
            "crm",
            json!({ "spec": { "release": { "version": version } } }),
        )
        .await;
    }
}

/// Whether `a`'s rollout is in sync (condition RolloutReady True).
fn rollout_ready(a: &ToolJetApp) -> bool {
    a.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "RolloutReady"))
        .is_some_and(|c| c.status == "True")
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == t)
}

#[tokio::test]
async fn promotion_switches_the_resolved_config_and_is_recorded() {
    let f = Fixture::new("promote").await;
    f.setup().await;
    f.version(
        "crm-v1",
        json!({ "dataSources": ["crm-db"], "constants": ["API_URL"] }),
    )
    .await;

    let dev = f
        .resolved("crm-v1", "development config", |d| {
            d.get("TOOLJET_GLOBAL_CONSTANTS__development__API_URL")
                .map(String::as_str)
                == Some("https://development.example")
        })
        .await;
    assert_eq!(
        dev["TOOLJET_SECRET_CONSTANTS__development__DB_PASSWORD"],
        "dev-pw"
    );

    f.promote("crm-v1", "staging").await;
    let staging = f
        .resolved("crm-v1", "staging config", |d| {
            d.contains_key("TOOLJET_GLOBAL_CONSTANTS__staging__API_URL")
        })
        .await;
    assert_eq!(
        staging["TOOLJET_GLOBAL_CONSTANTS__staging__API_URL"],
        "https://staging.example"
    );
    assert_eq!(
        staging["TOOLJET_SECRET_CONSTANTS__staging__DB_PASSWORD"],
        CANARY
    );
    assert!(
        !staging.keys().any(|k| k.contains("__development__")),
        "nothing of development is left"
    );
    assert!(
        !staging.contains_key("datasources.json"),
        "a Secret a workload may take in holds only what ToolJet reads"
    );

    f.promote("crm-v1", "production").await;
    f.resolved("crm-v1", "production config", |d| {
        d.get("TOOLJET_GLOBAL_CONSTANTS__production__API_URL")
            .map(String::as_str)
            == Some("https://production.example")
    })
    .await;

    // A change of the stage's configuration follows.
    f.config("production", "https://new.production.example", &[])
        .await;
    f.resolved("crm-v1", "the changed production config", |d| {
        d.get("TOOLJET_GLOBAL_CONSTANTS__production__API_URL")
            .map(String::as_str)
            == Some("https://new.production.example")
    })
    .await;

    let v = f
        .version_status("crm-v1", "status for production", |v| {
            v.status.as_ref().is_some_and(|s| {
                s.promotions.len() == 2
                    && s.resolved_config
                        .as_ref()
                        .is_some_and(|r| r.environment == "production")
            })
        })
        .await;
    let status = v.status.unwrap();
    let steps: Vec<(&str, &str)> = status
        .promotions
        .iter()
        .map(|p| (p.from.as_str(), p.to.as_str()))
        .collect();
    assert_eq!(
        steps,
        [("development", "staging"), ("staging", "production")]
    );
    assert_eq!(
        condition(&status.conditions, "ConfigResolved")
            .unwrap()
            .status,
        "True"
    );
    assert_eq!(
        status.resolved_config.as_ref().unwrap().secret_name,
        "tooljet-version.crm-v1"
    );
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains(CANARY), "status holds no secret value");
    let log = std::fs::read_to_string(support::shared_operator()).unwrap();
    assert!(
        !log.contains(CANARY),
        "the operator log holds no secret value"
    );
}

#[tokio::test]
async fn release_release_another_and_roll_back() {
    let f = Fixture::new("release").await;
    f.setup().await;
    for v in ["crm-v1", "crm-v2", "crm-v3"] {
        f.version(v, json!({})).await;
    }
    for v in ["crm-v1", "crm-v2"] {
        f.promote(v, "staging").await;
        f.promote(v, "production").await;
    }
    f.promote("crm-v3", "staging").await;

    f.release("crm-v1").await;
    f.app_status("crm-v1 released", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.released_version.as_deref())
            == Some("crm-v1")
    })
    .await;
    f.release("crm-v2").await;
    f.app_status("crm-v2 released", |a| {
        a.status
            .as_ref()
            .and_then(|s| s.released_version.as_deref())
            == Some("crm-v2")
    })
    .await;
    f.release("crm-v1").await;
    let app = f
        .app_status("rolled back to crm-v1", |a| {
            a.status.as_ref().is_some_and(|s| {
                s.released_version.as_deref() == Some("crm-v1") && s.release_history.len() == 3
            })
        })
        .await;
    let history: Vec<(String, bool)> = app
        .status
        .as_ref()
        .unwrap()
        .release_history
        .iter()
        .map(|r| (r.version.clone(), r.rollback))
        .collect();
    assert_eq!(
        history,
        [
            ("crm-v1".into(), false),
            ("crm-v2".into(), false),
            ("crm-v1".into(), true)
        ]
    );
    let listed = support::kubectl(&["get", "tjapp", "crm", "-n", &f.ns]).unwrap();
    assert!(
        listed.lines().nth(1).unwrap().contains("crm-v1"),
        "`kubectl get tjapp` shows the released version:\n{listed}"
    );

    // The released version says so; the others do not.
    f.version_status("crm-v1", "crm-v1 Released", |v| {
        v.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Released"))
            .is_some_and(|c| c.status == "True")
    })
    .await;
    f.version_status("crm-v2", "crm-v2 not Released", |v| {
        v.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Released"))
            .is_some_and(|c| c.status == "False")
    })
    .await;

    // Releasing a staging version is refused in status; the release stays.
    f.release("crm-v3").await;
    let app = f
        .app_status("Ready=False for a staging release", |a| {
            a.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|c| c.reason == "ReleaseVersionNotInLastStage")
        })
        .await;
    let status = app.status.unwrap();
    assert_eq!(
        status.released_version.as_deref(),
        Some("crm-v1"),
        "the previous release stays in effect"
    );
    assert!(
        condition(&status.conditions, "Ready")
            .unwrap()
            .message
            .contains("promote it to production first")
    );
    let environments: Vec<(String, Vec<String>)> = status
        .environments
        .iter()
        .map(|e| (e.name.clone(), e.versions.clone()))
        .collect();
    assert_eq!(
        environments,
        [
            ("development".into(), vec![]),
            ("staging".into(), vec!["crm-v3".into()]),
            ("production".into(), vec!["crm-v1".into(), "crm-v2".into()]),
        ]
    );
}

#[tokio::test]
async fn rollout_restarts_only_the_workloads_whose_stage_changed() {
    let f = Fixture::new("rollout").await;
    f.setup().await;
    for env in ["staging", "production"] {
        let deployment = json!({
            "metadata": { "labels": { "app.kubernetes.io/name": "tooljet", "tooljet.io/environment": env } },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": format!("tooljet-{env}") } },
                "template": {
                    "metadata": { "labels": { "app": format!("tooljet-{env}") } },
                    "spec": { "containers": [{ "name": "tooljet", "image": "tooljet/tooljet:ee-lts-latest",
                        "envFrom": [{ "secretRef": { "name": format!("tooljet.{env}.crm") } }] }] },
                },
            },
        });
        f.apply(
            "apps/v1",
            "Deployment",
            "deployments",
            &format!("tooljet-{env}"),
            deployment,
        )
        .await;
    }
    f.merge_patch::<ToolJetApp>(
        "crm",
        json!({ "spec": { "rollout": [
            { "environment": "staging", "deployments": ["tooljet-staging"] },
            { "environment": "production", "selector": { "matchLabels": { "tooljet.io/environment": "production" } } },
        ] } }),
    )
    .await;

    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    let hash_of = |name: &'static str| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(name).await.unwrap();
            let hash = d
                .spec?
                .template
                .metadata?
                .annotations?
                .get("tooljet.io/config-hash")
                .cloned();
            hash.map(|h| (h, d.metadata.generation.unwrap()))
        }
    };
    let (staging_hash, staging_gen) =
        support::eventually(WAIT, "staging stamped", || hash_of("tooljet-staging")).await;
    let (production_hash, production_gen) =
        support::eventually(WAIT, "production stamped", || hash_of("tooljet-production")).await;

    // Change staging's constants: staging restarts (new hash), production does not.
    f.config("staging", "https://staging.example", &[("FEATURE_X", "on")])
        .await;
    let (new_staging_hash, new_staging_gen) =
        support::eventually(WAIT, "staging re-stamped", || {
            let fut = hash_of("tooljet-staging");
            let old = staging_hash.clone();
            async move { fut.await.filter(|(h, _)| *h != old) }
        })
        .await;
    assert_eq!(
        new_staging_gen,
        staging_gen + 1,
        "one new pod template for staging"
    );
    assert_ne!(new_staging_hash, staging_hash);
    // Give production every chance to be (wrongly) touched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (still, gen_now) = hash_of("tooljet-production").await.unwrap();
    assert_eq!(
        (still, gen_now),
        (production_hash, production_gen),
        "production's pod template is untouched"
    );

    let app = f.app_status("rollout condition", rollout_ready).await;
    assert!(app.status.is_some());
}

/// One ToolJet server for every stage of crm ("single instance"), then also for hr's production:
/// its workload Secret holds every stage's constants under their own names; when hr gives a
/// constant of production another value than crm, both apps report the conflict, naming the
/// constant and the Deployment, and the Secret keeps what it held; once they agree, hr's
/// constants join.
#[tokio::test]
async fn a_shared_workload_serves_every_stage_and_reports_apps_that_disagree() {
    let f = Fixture::new("shared").await;
    f.setup().await;
    let deployment = json!({
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "tooljet" } },
            "template": {
                "metadata": { "labels": { "app": "tooljet" } },
                "spec": { "containers": [{ "name": "tooljet", "image": "tooljet/tooljet:ee-lts-latest",
                    "envFrom": [{ "secretRef": { "name": "tooljet-workload.tooljet" } }] }] },
            },
        },
    });
    f.apply(
        "apps/v1",
        "Deployment",
        "deployments",
        "tooljet",
        deployment.clone(),
    )
    .await;
    f.merge_patch::<ToolJetApp>(
        "crm",
        json!({ "spec": { "rollout": [
            { "environment": "development", "deployments": ["tooljet"] },
            { "environment": "staging", "deployments": ["tooljet"] },
            { "environment": "production", "deployments": ["tooljet"] },
        ] } }),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    let workload = |pred: fn(&BTreeMap<String, String>) -> bool, what: &'static str| {
        f.secret_text("tooljet-workload.tooljet", what, pred)
    };
    let all_stages = workload(|d| d.len() == 6, "every stage's constants").await;
    for env in ["development", "staging", "production"] {
        assert_eq!(
            all_stages[&format!("TOOLJET_GLOBAL_CONSTANTS__{env}__API_URL")],
            format!("https://{env}.example")
        );
        assert!(all_stages.contains_key(&format!("TOOLJET_SECRET_CONSTANTS__{env}__DB_PASSWORD")));
    }
    assert!(!all_stages.contains_key("datasources.json"));
    // Deleted, it comes back with the same content.
    secrets
        .delete("tooljet-workload.tooljet", &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restored = workload(|d| d.len() == 6, "the workload Secret restored").await;
    assert_eq!(restored, all_stages);

    // hr, on the same server for production, with another API_URL.
    f.apply(
        "tooljet.io/v1alpha1",
        "ToolJetApp",
        "tooljetapps",
        "hr",
        json!({ "spec": { "environments": ["development", "staging", "production"] } }),
    )
    .await;
    let hr_config = |api_url: &str| {
        json!({ "spec": { "app": "hr", "environment": "production", "constants": [
            { "name": "API_URL", "type": "Global", "value": api_url },
            { "name": "HR_ONLY", "type": "Global", "value": "yes" },
        ] } })
    };
    f.apply(
        "tooljet.io/v1alpha1",
        "EnvironmentConfig",
        "environmentconfigs",
        "hr-production",
        hr_config("https://hr.example"),
    )
    .await;
    f.merge_patch::<ToolJetApp>(
        "hr",
        json!({ "spec": { "rollout": [{ "environment": "production", "deployments": ["tooljet"] }] } }),
    )
    .await;
    for app in ["crm", "hr"] {
        let apps: Api<ToolJetApp> = Api::namespaced(f.client.clone(), &f.ns);
        let message = support::eventually(WAIT, "the conflict reported", || {
            let apps = apps.clone();
            async move {
                let a = apps.get(app).await.ok()?;
                let c = condition(&a.status?.conditions, "RolloutReady")?.clone();
                (c.reason == "Conflict").then_some(c.message)
            }
        })
        .await;
        assert!(
            message.contains("Deployment tooljet serves")
                && message
                    .contains("constant API_URL of production differs between apps crm and hr"),
            "{app}: {message}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept = workload(|_| true, "the workload Secret").await;
    assert_eq!(kept, all_stages, "a conflict leaves the workload as it was");

    // They agree: hr's constants join, the conflict clears.
    f.apply(
        "tooljet.io/v1alpha1",
        "EnvironmentConfig",
        "environmentconfigs",
        "hr-production",
        hr_config("https://production.example"),
    )
    .await;
    let joined = workload(
        |d| d.contains_key("TOOLJET_GLOBAL_CONSTANTS__production__HR_ONLY"),
        "hr's constants in the workload",
    )
    .await;
    assert_eq!(joined.len(), 7);
    f.app_status("the conflict cleared", rollout_ready).await;

    // hr is deleted: crm is woken and the server no longer reads hr's constants.
    Api::<ToolJetApp>::namespaced(f.client.clone(), &f.ns)
        .delete("hr", &Default::default())
        .await
        .unwrap();
    let without_hr = workload(
        |d| !d.contains_key("TOOLJET_GLOBAL_CONSTANTS__production__HR_ONLY"),
        "hr's constants gone with hr",
    )
    .await;
    assert_eq!(without_hr, all_stages);

    // The Deployment is deleted, orphaning its workload Secret, and created again: the new
    // Deployment's operator takes the Secret over.
    let deployments: Api<Deployment> = Api::namespaced(f.client.clone(), &f.ns);
    deployments
        .delete(
            "tooljet",
            &kube::api::DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    support::eventually(WAIT, "the old Deployment gone", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("tooljet")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    f.apply(
        "apps/v1",
        "Deployment",
        "deployments",
        "tooljet",
        deployment,
    )
    .await;
    let uid = deployments
        .get("tooljet")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    support::eventually(WAIT, "the workload Secret taken over", || {
        let (secrets, uid) = (secrets.clone(), uid.clone());
        async move {
            let s = secrets.get("tooljet-workload.tooljet").await.ok()?;
            s.metadata
                .owner_references?
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
                .then_some(())
        }
    })
    .await;
    f.app_status("the rollout in sync after the take-over", rollout_ready)
        .await;

    // Staging's DB_PASSWORD (the canary) went through the workload Secret, the conflict and the
    // take-over: no status, Event or log line holds it.
    let apps = Api::<ToolJetApp>::namespaced(f.client.clone(), &f.ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(!serde_json::to_string(&apps.items).unwrap().contains(CANARY));
    let events = Api::<Event>::namespaced(f.client.clone(), &f.ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(!events.items.is_empty(), "the conflict was published");
    assert!(
        !serde_json::to_string(&events.items)
            .unwrap()
            .contains(CANARY)
    );
    let log = std::fs::read_to_string(support::shared_operator()).unwrap();
    assert!(
        !log.contains(CANARY),
        "the operator log holds no secret value"
    );
}

#[tokio::test]
async fn a_missing_required_constant_is_named_in_config_resolved() {
    let f = Fixture::new("requires").await;
    f.setup().await;
    let body = json!({ "spec": {
        "app": "crm", "versionName": "v9", "environment": "development",
        "requires": { "constants": ["LOG_LEVEL"], "dataSources": ["crm-api"] },
        "definition": { "text": "{{constants.API_URL}} {{secrets.STRIPE_KEY}}" },
    }});
    f.apply(
        "tooljet.io/v1alpha1",
        "AppVersion",
        "appversions",
        "crm-v9",
        body,
    )
    .await;
    let v = f
        // Once the stage's configuration is materialised (the operator may see the version first).
        .version_status(
            "crm-v9",
            "ConfigResolved=False against the materialised development config",
            |v| {
                v.status
                    .as_ref()
                    .and_then(|s| condition(&s.conditions, "ConfigResolved"))
                    .is_some_and(|c| c.status == "False" && !c.message.contains("constant API_URL"))
            },
        )
        .await;
    let status = v.status.unwrap();
    let c = condition(&status.conditions, "ConfigResolved").unwrap();
    assert_eq!(c.reason, "MissingRequirements");
    for name in [
        "constant LOG_LEVEL",
        "data source crm-api",
        "secret STRIPE_KEY",
    ] {
        assert!(
            c.message.contains(name),
            "{name} missing from: {}",
            c.message
        );
    }
    assert!(
        !c.message.contains("API_URL"),
        "API_URL exists in development: {}",
        c.message
    );
    assert_eq!(
        condition(&status.conditions, "Ready").unwrap().status,
        "False"
    );

    // Adding it to the stage's configuration resolves it, event-driven.
    f.config(
        "development",
        "https://development.example",
        &[("LOG_LEVEL", "debug")],
    )
    .await;
    f.version_status(
        "crm-v9",
        "only the data source and secret still missing",
        |v| {
            v.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "ConfigResolved"))
                .is_some_and(|c| !c.message.contains("LOG_LEVEL") && c.message.contains("crm-api"))
        },
    )
    .await;
}

/// A value planted in Secrets named like stage configurations: it must never configure a version.
const FORGED: &str = "canary-forged-stage-3e7a";

#[tokio::test]
async fn a_labelled_secret_named_like_a_stage_configuration_is_never_used() {
    let f = Fixture::new("forged").await;
    f.setup().await;
    let configs: Api<EnvironmentConfig> = Api::namespaced(f.client.clone(), &f.ns);
    let app_config = configs.get("crm-staging").await.unwrap();
    let forged_data = json!({
        "TOOLJET_GLOBAL_CONSTANTS__staging__API_URL": FORGED,
        "TOOLJET_GLOBAL_CONSTANTS__staging__INJECTED": FORGED,
        "TOOLJET_GLOBAL_CONSTANTS__production__API_URL": FORGED,
        "TOOLJET_GLOBAL_CONSTANTS__production__INJECTED": FORGED,
        "datasources.json": json!({ "evil": { "kind": "restapi", "options": { "url": FORGED } } }).to_string(),
    });
    let labels = |env: &str| {
        json!({
            "app.kubernetes.io/managed-by": "tooljet-operator",
            "tooljet.io/kind": "environment-config",
            "tooljet.io/environment": env,
        })
    };
    // The workspace-wide staging name, labelled, and even controlled by a live config (of another
    // key: the app's), whose uid anyone who can read it can copy.
    f.apply(
        "v1",
        "Secret",
        "secrets",
        "tooljet.staging",
        json!({
            "metadata": { "labels": labels("staging"), "ownerReferences": [{
                "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
                "name": "crm-staging", "uid": app_config.metadata.uid, "controller": true,
            }] },
            "stringData": forged_data,
        }),
    )
    .await;
    // The workspace-wide production name, with the label only.
    f.apply(
        "v1",
        "Secret",
        "secrets",
        "tooljet.production",
        json!({ "metadata": { "labels": labels("production") }, "stringData": forged_data }),
    )
    .await;

    f.version(
        "crm-v1",
        json!({ "dataSources": ["crm-db"], "constants": ["API_URL"] }),
    )
    .await;
    f.resolved("crm-v1", "development config", |d| {
        d.contains_key("TOOLJET_GLOBAL_CONSTANTS__development__API_URL")
    })
    .await;
    for (stage, url) in [
        ("staging", "https://staging.example"),
        ("production", "https://production.example"),
    ] {
        f.promote("crm-v1", stage).await;
        let key = format!("TOOLJET_GLOBAL_CONSTANTS__{stage}__API_URL");
        f.resolved("crm-v1", &format!("the real {stage} config"), |d| {
            d.get(&key).map(String::as_str) == Some(url)
        })
        .await;
        // Give a wrong layer every chance to show up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let resolved = f
            .resolved("crm-v1", &format!("{stage} config, again"), |_| true)
            .await;
        assert_eq!(resolved[&key], url);
        assert!(
            !resolved.values().any(|v| v.contains(FORGED)),
            "a forged value reached the resolved config: {resolved:?}"
        );
        // Constants only: no data source document a forged layer could add to.
        assert!(!resolved.contains_key("datasources.json"), "{resolved:?}");
        assert_eq!(
            resolved.keys().filter(|k| k.contains("INJECTED")).count(),
            0
        );
    }

    let versions: Api<AppVersion> = Api::namespaced(f.client.clone(), &f.ns);
    let status = serde_json::to_string(&versions.get("crm-v1").await.unwrap().status).unwrap();
    assert!(!status.contains(FORGED), "{status}");
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    for e in events.list(&ListParams::default()).await.unwrap() {
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains(FORGED),
            "an Event holds a forged value: {text}"
        );
    }
    let log = std::fs::read_to_string(support::shared_operator()).unwrap();
    assert!(
        !log.contains(FORGED),
        "the operator log holds a forged value"
    );
    // And the planted Secrets are left as they are: never adopted, overwritten or deleted.
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), &f.ns);
    for name in ["tooljet.staging", "tooljet.production"] {
        let s = secrets.get(name).await.unwrap();
        let value = &s.data.unwrap()["TOOLJET_GLOBAL_CONSTANTS__staging__INJECTED"];
        assert_eq!(value.0, FORGED.as_bytes());
    }
}
