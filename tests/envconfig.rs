//! The EnvironmentConfig controller against the real kube-apiserver, with the operator binary
//! running: materialisation, rotation, drift, missing references, conflicts, deletion, and no
//! secret value anywhere it does not belong.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret, api::events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tooljet_operator::api::EnvironmentConfig;

/// A value that must never appear in logs, Events or status.
const CANARY: &str = "canary-5d1f0e-never-log-me";
const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    client: Client,
    ns: String,
}

impl Fixture {
    async fn new(prefix: &str) -> Fixture {
        let (client, ns) = support::operator_namespace(prefix).await;
        Fixture { client, ns }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn configs(&self) -> Api<EnvironmentConfig> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let string_data: BTreeMap<&str, &str> = data.iter().copied().collect();
        let secret: Secret = serde_json::from_value(
            json!({ "metadata": { "name": name }, "stringData": string_data }),
        )
        .unwrap();
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("test-user").force(),
                &Patch::Apply(&with_kind(secret)),
            )
            .await
            .unwrap();
    }

    async fn apply_config(&self, name: &str, spec: Value) {
        let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig", "metadata": { "name": name }, "spec": spec });
        self.configs()
            .patch(
                name,
                &PatchParams::apply("test-user").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap();
    }

    /// The materialised Secret's data once `pred` holds.
    async fn wait_secret(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Secret {
        let api = self.secrets();
        support::eventually(WAIT, what, || {
            let api = api.clone();
            let pred = &pred;
            async move {
                let s = api.get_opt(name).await.unwrap()?;
                pred(&text(&s)).then_some(s)
            }
        })
        .await
    }

    /// The config's Ready condition once its reason is `reason`.
    async fn wait_ready(&self, name: &str, reason: &str) -> (String, String) {
        let api = self.configs();
        support::eventually(WAIT, &format!("{name} Ready reason {reason}"), || {
            let api = api.clone();
            async move {
                let cfg = api.get(name).await.unwrap();
                let gen_ok = cfg.status.as_ref()?.observed_generation == cfg.metadata.generation;
                let ready = cfg
                    .status?
                    .conditions
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                (gen_ok && ready.reason == reason).then_some((ready.status, ready.message))
            }
        })
        .await
    }

    /// No canary in the operator's log, this namespace's Events, or any config's status.
    async fn assert_no_leak(&self) {
        let log = std::fs::read_to_string(support::shared_operator()).unwrap();
        assert!(
            !log.contains(CANARY),
            "the operator log contains a secret value"
        );
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        for e in events.list(&ListParams::default()).await.unwrap() {
            let text = serde_json::to_string(&e).unwrap();
            assert!(
                !text.contains(CANARY),
                "an Event contains a secret value: {text}"
            );
        }
        for cfg in self.configs().list(&ListParams::default()).await.unwrap() {
            let status = serde_json::to_string(&cfg.status).unwrap();
            assert!(
                !status.contains(CANARY),
                "a status contains a secret value: {status}"
            );
        }
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }
}

fn with_kind(secret: Secret) -> Value {
    let mut v = serde_json::to_value(secret).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn text(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

fn crm_spec(environment: &str) -> Value {
    json!({
        "environment": environment,
        "app": "crm",
        "dataSources": [
            {
                "name": "crm-db", "kind": "postgresql",
                "options": { "host": format!("db.{environment}"), "port": 5432, "ssl": true },
                "secretOptions": { "password": { "secretKeyRef": { "name": "creds", "key": "pg" } } },
            },
            { "name": "crm-api", "kind": "restapi", "options": { "url": "https://api" } },
        ],
        "constants": [
            { "name": "API_URL", "type": "Global", "value": format!("https://{environment}.example") },
            { "name": "STRIPE_KEY", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "stripe" } } },
        ],
    })
}

#[tokio::test]
async fn apply_materialises_exact_keys_and_values_and_status() {
    let f = Fixture::new("materialise").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_test_1")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;

    let secret = f
        .wait_secret("tooljet.staging.crm", "the materialised Secret", |d| {
            !d.is_empty()
        })
        .await;
    let data = text(&secret);
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        [
            "TOOLJET_GLOBAL_CONSTANTS__staging__API_URL",
            "TOOLJET_SECRET_CONSTANTS__staging__STRIPE_KEY",
            "datasources.json"
        ]
    );
    assert_eq!(
        data["TOOLJET_GLOBAL_CONSTANTS__staging__API_URL"],
        "https://staging.example"
    );
    assert_eq!(
        data["TOOLJET_SECRET_CONSTANTS__staging__STRIPE_KEY"],
        "sk_test_1"
    );
    let doc: Value = serde_json::from_str(&data["datasources.json"]).unwrap();
    assert_eq!(
        doc,
        json!({
            "crm-api": { "kind": "restapi", "options": { "url": "https://api" } },
            "crm-db": { "kind": "postgresql", "options": { "host": "db.staging", "port": 5432, "ssl": true, "password": CANARY } },
        })
    );
    assert_eq!(
        secret.labels()["app.kubernetes.io/managed-by"],
        "tooljet-operator"
    );
    let cfg = f.configs().get("crm-staging").await.unwrap();
    let owner = &secret.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("EnvironmentConfig", "crm-staging", Some(true))
    );

    let (status, message) = f.wait_ready("crm-staging", "Materialized").await;
    assert_eq!(status, "True");
    assert!(message.contains("tooljet.staging.crm"));
    let cfg_status = f
        .configs()
        .get("crm-staging")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        cfg_status.secret_name.as_deref(),
        Some("tooljet.staging.crm")
    );
    assert_eq!(
        cfg_status.hash.as_deref(),
        Some(secret.annotations()["tooljet.io/config-hash"].as_str())
    );
    assert_eq!(
        (cfg_status.constant_count, cfg_status.data_source_count),
        (Some(2), Some(2))
    );
    assert!(cfg.uid().is_some());
    assert!(
        !f.events("Materialized").await.is_empty(),
        "a Materialized Event is published"
    );
    f.assert_no_leak().await;
}

#[tokio::test]
async fn rotation_of_a_referenced_secret_is_rematerialised() {
    let f = Fixture::new("rotate").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_old")])
        .await;
    f.apply_config("crm-dev", crm_spec("development")).await;
    f.wait_secret("tooljet.development.crm", "first materialisation", |d| {
        d.get("TOOLJET_SECRET_CONSTANTS__development__STRIPE_KEY")
            .map(String::as_str)
            == Some("sk_old")
    })
    .await;

    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_rotated")])
        .await;
    f.wait_secret("tooljet.development.crm", "the rotated value", |d| {
        d.get("TOOLJET_SECRET_CONSTANTS__development__STRIPE_KEY")
            .map(String::as_str)
            == Some("sk_rotated")
    })
    .await;

    // A spec change follows too.
    let mut spec = crm_spec("development");
    spec["constants"][0]["value"] = json!("https://changed.example");
    f.apply_config("crm-dev", spec).await;
    f.wait_secret("tooljet.development.crm", "the edited constant", |d| {
        d.get("TOOLJET_GLOBAL_CONSTANTS__development__API_URL")
            .map(String::as_str)
            == Some("https://changed.example")
    })
    .await;
    f.assert_no_leak().await;
}

#[tokio::test]
async fn edits_and_deletion_of_the_materialised_secret_are_reverted() {
    let f = Fixture::new("drift").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-prod", crm_spec("production")).await;
    let original = text(
        &f.wait_secret("tooljet.production.crm", "materialisation", |d| {
            !d.is_empty()
        })
        .await,
    );

    // An outside edit: one value changed, one key added (a JSON merge patch, as `kubectl patch` does).
    let patch = json!({ "data": {
        "TOOLJET_SECRET_CONSTANTS__production__STRIPE_KEY": ByteString(b"tampered".to_vec()),
        "EXTRA": ByteString(b"x".to_vec()),
    }});
    f.secrets()
        .patch(
            "tooljet.production.crm",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    f.wait_secret("tooljet.production.crm", "the edit reverted", |d| {
        *d == original
    })
    .await;
    assert!(
        !f.events("DriftReverted").await.is_empty(),
        "a DriftReverted Event is published"
    );

    f.secrets()
        .delete("tooljet.production.crm", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_secret(
        "tooljet.production.crm",
        "the deleted Secret recreated",
        |d| *d == original,
    )
    .await;
    f.assert_no_leak().await;
}

#[tokio::test]
async fn a_missing_secret_or_key_is_named_and_the_last_good_secret_is_kept() {
    let f = Fixture::new("missing").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_good")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;
    let good = text(
        &f.wait_secret("tooljet.staging.crm", "materialisation", |d| !d.is_empty())
            .await,
    );

    // Remove a key the config references.
    let secret: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "creds" }, "stringData": { "pg": CANARY } }),
    )
    .unwrap();
    f.secrets()
        .replace("creds", &PostParams::default(), &{
            let mut s = secret;
            s.metadata.resource_version =
                f.secrets().get("creds").await.unwrap().resource_version();
            s
        })
        .await
        .unwrap();
    let (status, message) = f.wait_ready("crm-staging", "KeyNotFound").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("key stripe not found in Secret creds")
            && message.contains("constants[STRIPE_KEY]"),
        "{message}"
    );
    assert_eq!(
        text(&f.secrets().get("tooljet.staging.crm").await.unwrap()),
        good,
        "the last good Secret is kept"
    );

    // Reference a Secret that does not exist.
    let mut spec = crm_spec("staging");
    spec["dataSources"][0]["secretOptions"]["password"]["secretKeyRef"]["name"] = json!("absent");
    f.apply_config("crm-staging", spec).await;
    let (_, message) = f.wait_ready("crm-staging", "SecretNotFound").await;
    assert!(
        message.contains("Secret absent not found")
            && message.contains("dataSources[crm-db].secretOptions.password"),
        "{message}"
    );
    assert_eq!(
        text(&f.secrets().get("tooljet.staging.crm").await.unwrap()),
        good
    );
    assert!(
        !f.events("SecretNotFound").await.is_empty(),
        "a Warning Event is published"
    );

    // Creating the Secret resolves it, event-driven.
    f.put_secret("absent", &[("pg", CANARY)]).await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_good")])
        .await;
    f.wait_ready("crm-staging", "Materialized").await;
    f.assert_no_leak().await;
}

#[tokio::test]
async fn two_configs_for_the_same_key_conflict_on_both_and_the_secret_is_left_alone() {
    let f = Fixture::new("conflict").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-dev-a", crm_spec("development")).await;
    let before = f
        .wait_secret("tooljet.development.crm", "materialisation", |d| {
            !d.is_empty()
        })
        .await;
    f.wait_ready("crm-dev-a", "Materialized").await;

    let mut other = crm_spec("development");
    other["constants"][0]["value"] = json!("https://other.example");
    f.apply_config("crm-dev-b", other).await;
    let (_, a) = f.wait_ready("crm-dev-a", "Conflict").await;
    let (_, b) = f.wait_ready("crm-dev-b", "Conflict").await;
    assert!(a.contains("crm-dev-b"), "{a}");
    assert!(b.contains("crm-dev-a"), "{b}");
    let after = f.secrets().get("tooljet.development.crm").await.unwrap();
    assert_eq!(
        after.data, before.data,
        "the materialised Secret is left as it was"
    );

    f.configs()
        .delete("crm-dev-b", &DeleteParams::default())
        .await
        .unwrap();
    f.wait_ready("crm-dev-a", "Materialized").await;
    f.assert_no_leak().await;
}

#[tokio::test]
async fn an_unmanaged_secret_of_the_same_name_is_never_overwritten() {
    let f = Fixture::new("taken").await;
    f.put_secret("tooljet.staging.crm", &[("mine", "do-not-touch")])
        .await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;
    let (_, message) = f.wait_ready("crm-staging", "Conflict").await;
    assert!(
        message.contains("not managed by tooljet-operator"),
        "{message}"
    );
    let kept = text(&f.secrets().get("tooljet.staging.crm").await.unwrap());
    assert_eq!(
        kept,
        BTreeMap::from([("mine".to_string(), "do-not-touch".to_string())])
    );
}

#[tokio::test]
async fn deleting_a_config_removes_its_secret_and_nothing_else() {
    let f = Fixture::new("delete").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;
    f.apply_config("workspace-staging", json!({ "environment": "staging", "constants": [{ "name": "SUPPORT", "type": "Global", "value": "help@acme" }] }))
        .await;
    f.wait_secret("tooljet.staging.crm", "app materialisation", |d| {
        !d.is_empty()
    })
    .await;
    let workspace = f
        .wait_secret("tooljet.staging", "workspace materialisation", |d| {
            !d.is_empty()
        })
        .await;
    assert_eq!(
        text(&workspace)["TOOLJET_GLOBAL_CONSTANTS__staging__SUPPORT"],
        "help@acme"
    );

    f.configs()
        .delete("crm-staging", &DeleteParams::default())
        .await
        .unwrap();
    let secrets = f.secrets();
    // kube-controller-manager's garbage collector picks up new CRDs on its 30 s discovery resync.
    support::eventually(
        Duration::from_secs(90),
        "garbage collection of the materialised Secret",
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("tooljet.staging.crm")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        f.secrets().get_opt("creds").await.unwrap().is_some(),
        "the referenced Secret stays"
    );
    assert!(
        f.secrets()
            .get_opt("tooljet.staging")
            .await
            .unwrap()
            .is_some(),
        "other configs' Secrets stay"
    );
    f.assert_no_leak().await;
}

#[tokio::test]
async fn moving_a_config_to_another_environment_moves_its_secret() {
    let f = Fixture::new("rekey").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm", crm_spec("staging")).await;
    f.wait_secret("tooljet.staging.crm", "materialisation", |d| !d.is_empty())
        .await;
    f.wait_ready("crm", "Materialized").await;
    f.apply_config("crm", crm_spec("production")).await;
    f.wait_secret(
        "tooljet.production.crm",
        "materialisation in production",
        |d| d.contains_key("TOOLJET_GLOBAL_CONSTANTS__production__API_URL"),
    )
    .await;
    let secrets = f.secrets();
    support::eventually(WAIT, "the old environment's Secret removed", || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("tooljet.staging.crm")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
}
