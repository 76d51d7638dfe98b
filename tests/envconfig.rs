//! The EnvironmentConfig controller against the real kube-apiserver, with the operator binary
//! running: materialisation, rotation, drift, missing references, conflicts, deletion, ownership
//! by UID (never by label), keyed content hashes, and no secret value anywhere it does not belong.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret, api::events::v1::Event};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tooljet_operator::{
    api::EnvironmentConfig,
    materialize::{self, HashKey},
};

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

    /// A Secret created by someone else that copies the operator's labels.
    async fn put_labelled_secret(&self, name: &str, data: &[(&str, &str)]) {
        let string_data: BTreeMap<&str, &str> = data.iter().copied().collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name, "labels": {
                "app.kubernetes.io/managed-by": "tooljet-operator",
                "tooljet.io/kind": "environment-config",
                "tooljet.io/environment": "staging",
                "tooljet.io/app": "crm",
            } },
            "stringData": string_data,
        });
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("test-user").force(),
                &Patch::Apply(&secret),
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
            "TOOLJET_SECRET_CONSTANTS__staging__CRM_DB_PASSWORD",
            "TOOLJET_SECRET_CONSTANTS__staging__STRIPE_KEY",
            "datasources.json"
        ]
    );
    // The data source's secret option is a secret constant of the stage ...
    assert_eq!(
        data["TOOLJET_SECRET_CONSTANTS__staging__CRM_DB_PASSWORD"],
        CANARY
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
            // ... and the option holds the reference ToolJet resolves, no credential.
            "crm-db": { "kind": "postgresql", "options": { "host": "db.staging", "port": 5432, "ssl": true, "password": "{{secrets.CRM_DB_PASSWORD}}" } },
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
        // API_URL, STRIPE_KEY and crm-db's password.
        (cfg_status.constant_count, cfg_status.data_source_count),
        (Some(3), Some(2))
    );
    assert!(cfg.uid().is_some());
    assert!(
        f.events("Materialized").await.is_empty(),
        "a routine materialisation publishes no Event (the status says it)"
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
    // Once its status reports it materialised, the operator's cache keeps none of the config's
    // entries (`cache::config`): the rotation reads the config from the API again.
    f.wait_ready("crm-dev", "Materialized").await;

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
        message.contains("Secret tooljet.staging.crm")
            && message.contains("not owned by this EnvironmentConfig"),
        "{message}"
    );
    let kept = text(&f.secrets().get("tooljet.staging.crm").await.unwrap());
    assert_eq!(
        kept,
        BTreeMap::from([("mine".to_string(), "do-not-touch".to_string())])
    );
}

#[tokio::test]
async fn a_secret_that_only_carries_the_managed_by_label_is_never_adopted_overwritten_or_deleted() {
    let f = Fixture::new("label").await;
    f.put_labelled_secret("tooljet.staging.crm", &[("mine", "do-not-touch")])
        .await;
    let planted = f.secrets().get("tooljet.staging.crm").await.unwrap();
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;

    let (status, message) = f.wait_ready("crm-staging", "Conflict").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("Secret tooljet.staging.crm")
            && message.contains("not owned by this EnvironmentConfig")
            && message.contains("delete or rename"),
        "{message}"
    );
    // A spec change reconciles again: still hands off.
    let mut spec = crm_spec("staging");
    spec["constants"][0]["value"] = json!("https://changed.example");
    f.apply_config("crm-staging", spec).await;
    f.wait_ready("crm-staging", "Conflict").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = f.secrets().get("tooljet.staging.crm").await.unwrap();
    assert_eq!(after.uid(), planted.uid(), "not deleted and recreated");
    assert_eq!(after.data, planted.data, "not overwritten");
    assert!(after.owner_references().is_empty(), "not adopted");
    assert!(
        f.configs()
            .get("crm-staging")
            .await
            .unwrap()
            .status
            .unwrap()
            .hash
            .is_none(),
        "nothing was materialised"
    );
    f.assert_no_leak().await;
}

#[tokio::test]
async fn deleting_a_clashing_labelled_secret_lets_the_config_materialise() {
    let f = Fixture::new("unblock").await;
    f.put_labelled_secret("tooljet.staging.crm", &[("mine", "do-not-touch")])
        .await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;
    f.wait_ready("crm-staging", "Conflict").await;

    f.secrets()
        .delete("tooljet.staging.crm", &DeleteParams::default())
        .await
        .unwrap();
    // Event-driven (the deletion triggers the config), well before the 60 s recheck.
    f.wait_ready("crm-staging", "Materialized").await;
    let secret = f
        .wait_secret("tooljet.staging.crm", "the config's own Secret", |d| {
            d.contains_key("TOOLJET_GLOBAL_CONSTANTS__staging__API_URL")
        })
        .await;
    let cfg = f.configs().get("crm-staging").await.unwrap();
    assert_eq!(
        secret.owner_references()[0].uid,
        cfg.uid().unwrap(),
        "controlled by the config"
    );
    assert!(!text(&secret).contains_key("mine"));
    f.assert_no_leak().await;
}

#[tokio::test]
async fn a_secret_left_by_a_deleted_config_is_not_adopted_by_the_next_config() {
    let f = Fixture::new("successor").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_1")])
        .await;
    f.apply_config("crm-old", crm_spec("staging")).await;
    f.wait_ready("crm-old", "Materialized").await;
    // A finalizer holds the old Secret after its config is gone, as a slow garbage collector
    // would: the window in which the next config must not take it over.
    let hold = json!({ "metadata": { "finalizers": ["tooljet.io/test-hold"] } });
    f.secrets()
        .patch(
            "tooljet.staging.crm",
            &PatchParams::default(),
            &Patch::Merge(&hold),
        )
        .await
        .unwrap();
    let old = f.secrets().get("tooljet.staging.crm").await.unwrap();
    let old_owner = f.configs().get("crm-old").await.unwrap().uid().unwrap();

    f.configs()
        .delete("crm-old", &DeleteParams::default())
        .await
        .unwrap();
    f.apply_config("crm-new", crm_spec("staging")).await;
    let (_, message) = support::eventually(WAIT, "crm-new reports the old Secret", || {
        let configs = f.configs();
        async move {
            let ready = configs
                .get("crm-new")
                .await
                .unwrap()
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            ready
                .message
                .contains("not owned by this EnvironmentConfig")
                .then_some((ready.reason, ready.message))
        }
    })
    .await;
    assert!(message.contains("Secret tooljet.staging.crm"), "{message}");
    let held = f.secrets().get("tooljet.staging.crm").await.unwrap();
    assert_eq!(held.uid(), old.uid());
    assert_eq!(held.owner_references()[0].uid, old_owner, "not adopted");
    assert_eq!(held.data, old.data, "not overwritten");

    // Released, the old Secret goes (kube-controller-manager's garbage collector may need its
    // 30 s discovery resync for the CRD), and its deletion lets the new config materialise.
    let release = json!({ "metadata": { "finalizers": null } });
    f.secrets()
        .patch(
            "tooljet.staging.crm",
            &PatchParams::default(),
            &Patch::Merge(&release),
        )
        .await
        .unwrap();
    let secrets = f.secrets();
    let configs = f.configs();
    let new = support::eventually(
        Duration::from_secs(90),
        "the new config's own Secret",
        || {
            let (secrets, configs) = (secrets.clone(), configs.clone());
            async move {
                let s = secrets.get_opt("tooljet.staging.crm").await.unwrap()?;
                let cfg = configs.get("crm-new").await.unwrap();
                (s.owner_references().first()?.uid == cfg.uid()?).then_some(s)
            }
        },
    )
    .await;
    assert_ne!(
        new.uid(),
        old.uid(),
        "a new Secret, not the old one adopted"
    );
    f.wait_ready("crm-new", "Materialized").await;
    f.assert_no_leak().await;
}

/// The hash of the operator's first version: a plain SHA-256 of the length-prefixed content.
fn plain_sha256(data: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The installation's key, as the operator stored it.
async fn installation_key(client: &Client) -> Vec<u8> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "tooljet-system");
    let secret = secrets.get("tooljet-operator-hash-key").await.unwrap();
    assert_eq!(secret.immutable, Some(true));
    secret.data.unwrap()["key"].0.clone()
}

#[tokio::test]
async fn the_status_hash_is_keyed_with_the_installation_key_not_a_plain_digest() {
    let f = Fixture::new("keyed").await;
    f.put_secret("creds", &[("pg", CANARY), ("stripe", "1234")])
        .await;
    f.apply_config("crm-staging", crm_spec("staging")).await;
    f.wait_ready("crm-staging", "Materialized").await;
    let secret = f.secrets().get("tooljet.staging.crm").await.unwrap();
    let hash = f
        .configs()
        .get("crm-staging")
        .await
        .unwrap()
        .status
        .unwrap()
        .hash
        .unwrap();
    assert_eq!(hash, secret.annotations()["tooljet.io/config-hash"]);
    assert_ne!(
        hash,
        plain_sha256(&text(&secret)),
        "not guessable offline from the content"
    );

    let key = installation_key(&f.client).await;
    assert_eq!(key.len(), 32);
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    assert_eq!(
        hash,
        materialize::hash(&HashKey::new(&key).unwrap(), &data),
        "HMAC-SHA256 with the installation's key"
    );
    let log = std::fs::read_to_string(support::shared_operator()).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let base64 = serde_json::to_value(ByteString(key.clone())).unwrap();
    assert!(
        !log.contains(&hex) && !log.contains(base64.as_str().unwrap()),
        "the operator log holds the key"
    );
    f.assert_no_leak().await;
}

#[tokio::test]
async fn the_same_content_in_two_namespaces_has_the_same_hash() {
    let mut hashes = vec![];
    for prefix in ["same-a", "same-b"] {
        let f = Fixture::new(prefix).await;
        f.put_secret("creds", &[("pg", CANARY), ("stripe", "sk_same")])
            .await;
        f.apply_config("crm-staging", crm_spec("staging")).await;
        f.wait_ready("crm-staging", "Materialized").await;
        let cfg = f.configs().get("crm-staging").await.unwrap();
        hashes.push(cfg.status.unwrap().hash.unwrap());
    }
    assert_eq!(hashes[0], hashes[1], "one installation, one key");
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
