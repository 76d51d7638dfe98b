//! The workload for N apps, what the operator must make of it (computed independently with the
//! installation's hash key), and the bulk writes that put it in a namespace.

use std::{collections::BTreeMap, time::Duration, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt, stream};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::{Value, json};
use tooljet_operator::{
    api::EnvironmentConfigSpec,
    materialize::{self, SecretData},
};

pub const STAGES: [&str; 3] = ["development", "staging", "production"];
/// Per app: 3 EnvironmentConfigs, 2 AppVersions, 1 ToolJetApp, and the 5 Secrets the operator
/// writes for them (3 materialised, 2 resolved).
pub const MANAGED_PER_APP: usize = 11;

/// The kinds the benchmark writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ToolJetApp,
    EnvironmentConfig,
    AppVersion,
}

impl Kind {
    pub const SOURCES: [Kind; 3] = [Kind::EnvironmentConfig, Kind::AppVersion, Kind::ToolJetApp];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ToolJetApp => "ToolJetApp",
            Kind::EnvironmentConfig => "EnvironmentConfig",
            Kind::AppVersion => "AppVersion",
        }
    }

    fn parse(kind: &str) -> Result<Kind> {
        Ok(match kind {
            "Secret" => Kind::Secret,
            "ToolJetApp" => Kind::ToolJetApp,
            "EnvironmentConfig" => Kind::EnvironmentConfig,
            "AppVersion" => Kind::AppVersion,
            other => bail!("unexpected kind {other}"),
        })
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Secret => "v1",
            _ => "tooljet.io/v1alpha1",
        }
    }

    fn resource(self) -> ApiResource {
        let (group, version, plural) = match self {
            Kind::Secret => ("", "v1", "secrets"),
            Kind::ToolJetApp => ("tooljet.io", "v1alpha1", "tooljetapps"),
            Kind::EnvironmentConfig => ("tooljet.io", "v1alpha1", "environmentconfigs"),
            Kind::AppVersion => ("tooljet.io", "v1alpha1", "appversions"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.name()),
            plural,
        )
    }

    pub fn api(self, client: &Client, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), ns, &self.resource())
    }
}

/// A Secret the operator must write, and what it is made of.
pub struct Output {
    /// The object it is written for (its controller).
    pub owner_kind: Kind,
    pub owner: String,
    pub secret: String,
    /// The `tooljet.io/kind` label the operator puts on it.
    pub kind_label: &'static str,
    pub environment: String,
    pub app: String,
    pub data: BTreeMap<String, Vec<u8>>,
    pub hash: String,
    pub constants: usize,
    pub data_sources: usize,
}

/// N apps x 3 environments, and what the operator must produce from them.
pub struct Workload {
    pub apps: usize,
    /// The referenced Secrets (credentials), one per app and stage.
    pub secrets: Vec<Value>,
    pub tooljetapps: Vec<Value>,
    pub configs: Vec<Value>,
    pub versions: Vec<Value>,
    pub outputs: Vec<Output>,
}

impl Workload {
    /// Per app and stage: an EnvironmentConfig with 10 constants (8 `Global`, 2 `Secret`) and 2
    /// data sources (PostgreSQL and REST API, each with a secret option), and the Secret they
    /// reference; per app a ToolJetApp and 2 AppVersions in development.
    pub fn new(key: &materialize::HashKey, apps: usize) -> Result<Workload> {
        let mut w = Workload {
            apps,
            secrets: vec![],
            tooljetapps: vec![],
            configs: vec![],
            versions: vec![],
            outputs: vec![],
        };
        for i in 0..apps {
            let app = format!("app-{i}");
            w.tooljetapps.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": app }, "spec": {} }));
            let mut by_stage = BTreeMap::new();
            for stage in STAGES {
                let creds = format!("creds-{i}-{stage}");
                let secret_values: BTreeMap<String, String> = [
                    ("db-password", format!("pw-{i}-{stage}")),
                    ("api-token", format!("tok-{i}-{stage}")),
                    ("s0", format!("secret-0-{i}-{stage}")),
                    ("s1", format!("secret-1-{i}-{stage}")),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                w.secrets.push(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": creds }, "stringData": secret_values }));
                let mut constants: Vec<Value> = (0..8)
                    .map(|k| json!({ "name": format!("C{k}"), "type": "Global", "value": format!("value-{k}-{i}-{stage}") }))
                    .collect();
                for k in 0..2 {
                    constants.push(json!({ "name": format!("S{k}"), "type": "Secret", "valueFrom": { "secretKeyRef": { "name": creds, "key": format!("s{k}") } } }));
                }
                let spec = json!({
                    "app": app, "environment": stage,
                    "dataSources": [
                        { "name": "db", "kind": "postgresql", "options": { "host": format!("db-{i}.{stage}.internal"), "port": 5432, "database": "app" },
                          "secretOptions": { "password": { "secretKeyRef": { "name": creds, "key": "db-password" } } } },
                        { "name": "api", "kind": "restapi", "options": { "url": format!("https://api.{stage}.example/{i}") },
                          "secretOptions": { "token": { "secretKeyRef": { "name": creds, "key": "api-token" } } } },
                    ],
                    "constants": constants,
                });
                let typed: EnvironmentConfigSpec = serde_json::from_value(spec.clone())?;
                let data: SecretData = [(
                    creds.clone(),
                    secret_values
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                        .collect(),
                )]
                .into();
                let m = materialize::materialize(key, stage, &[&typed], &data)
                    .map_err(|e| anyhow!("{e:?}"))?;
                by_stage.insert(stage, m.data.clone());
                let name = format!("{app}-{stage}");
                w.outputs.push(Output {
                    owner_kind: Kind::EnvironmentConfig,
                    owner: name.clone(),
                    secret: materialize::secret_name(Some(&app), stage),
                    kind_label: "environment-config",
                    environment: stage.to_string(),
                    app: app.clone(),
                    data: m.data,
                    hash: m.hash,
                    constants: m.constants,
                    data_sources: m.data_sources,
                });
                w.configs.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig", "metadata": { "name": name }, "spec": spec }));
            }
            for v in 1..=2 {
                let name = format!("{app}-v{v}");
                w.versions.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": name },
                    "spec": { "app": app, "versionName": format!("v{v}"), "environment": "development",
                              "definition": { "queries": [{ "url": "{{constants.C0}}/x", "auth": "{{secrets.S0}}" }] } } }));
                let resolved =
                    materialize::merge_layers(key, &[&by_stage["development"]]).constants_only(key);
                w.outputs.push(Output {
                    owner_kind: Kind::AppVersion,
                    owner: name.clone(),
                    secret: materialize::resolved_secret_name(&name),
                    kind_label: "resolved-config",
                    environment: "development".into(),
                    app: app.clone(),
                    data: resolved.data,
                    hash: resolved.hash,
                    constants: resolved.constants,
                    data_sources: resolved.data_sources,
                });
            }
        }
        Ok(w)
    }

    /// Everything to apply before the operator starts, referenced Secrets first.
    pub fn inputs(&self) -> Vec<Value> {
        self.secrets
            .iter()
            .chain(&self.tooljetapps)
            .chain(&self.configs)
            .chain(&self.versions)
            .cloned()
            .collect()
    }

    /// The ToolJet objects only (the owners of the Secrets and the holders of a status).
    pub fn sources(&self) -> Vec<Value> {
        self.tooljetapps
            .iter()
            .chain(&self.configs)
            .chain(&self.versions)
            .cloned()
            .collect()
    }

    /// Secret name -> the content hash the operator must write into it.
    pub fn expected(&self) -> BTreeMap<String, String> {
        self.outputs
            .iter()
            .map(|o| (o.secret.clone(), o.hash.clone()))
            .collect()
    }

    /// The names of the objects of `kind` that must report Ready.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        let objects = match kind {
            Kind::Secret => &self.secrets,
            Kind::ToolJetApp => &self.tooljetapps,
            Kind::EnvironmentConfig => &self.configs,
            Kind::AppVersion => &self.versions,
        };
        objects
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
            .collect()
    }

    /// Objects the operator reconciles or writes: [`MANAGED_PER_APP`] per app.
    pub fn managed_objects(&self) -> usize {
        self.apps * MANAGED_PER_APP
    }
}

/// Server-side applies `objects` into `ns`, `concurrency` at once; returns the time it took.
pub async fn apply_all(
    client: &Client,
    ns: &str,
    objects: &[Value],
    concurrency: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let apply = PatchParams::apply("bench").force();
    stream::iter(objects.iter())
        .map(|obj| {
            let apply = apply.clone();
            async move {
                let kind = Kind::parse(obj["kind"].as_str().unwrap_or_default())?;
                let name = obj["metadata"]["name"]
                    .as_str()
                    .context("an object without a name")?;
                kind.api(client, ns)
                    .patch(name, &apply, &Patch::Apply(obj))
                    .await
                    .with_context(|| format!("applying {} {name}", kind.name()))?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}
