//! The workload for N apps, what the operator must make of it (computed independently with the
//! installation's hash key), and the bulk writes that put it in a namespace.

use std::{collections::BTreeMap, time::Duration, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt, stream};
use kube::{
    Api, Client, Resource,
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

    /// A forced server-side apply of `body` to the status of `name`, answered with the object's
    /// metadata only, as the operator asks (`controller::METADATA_ONLY`).
    pub async fn apply_status(
        self,
        client: &Client,
        ns: &str,
        name: &str,
        manager: &str,
        body: &Value,
    ) -> Result<()> {
        let request = tooljet_operator::controller::metadata_only_status_apply(
            DynamicObject::url_path(&self.resource(), Some(ns)),
            name,
            manager,
            body,
        )?;
        client.request::<Value>(request).await?;
        Ok(())
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

/// AppVersion definition sizes (KiB), one drawn per version by its position: real ToolJet
/// apps, as the exports in `kubectl-tooljet/tests/fixtures/` grown by
/// `testenv::definitions::realistic` (median 40 KiB, mean 72 KiB, one in 20 at 400 KiB).
pub const DEFINITION_KIB: [usize; 20] = [
    4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 40, 44, 48, 56, 64, 80, 100, 150, 200, 400,
];

/// Data source kinds, as ToolJet names them, drawn in turn.
const DATA_SOURCE_KINDS: [&str; 6] = [
    "postgresql",
    "restapi",
    "mysql",
    "mongodb",
    "graphql",
    "redis",
];

/// How the workload's definitions are sized.
#[derive(Clone, Copy, Debug)]
pub enum Definitions {
    /// [`DEFINITION_KIB`], drawn by position.
    Realistic,
    /// Every definition of this many KiB (the size sweep).
    Uniform(usize),
}

/// N apps x 3 environments, and what the operator must produce from them.
pub struct Workload {
    pub apps: usize,
    /// The referenced Secrets (credentials), one per app and stage.
    pub secrets: Vec<Value>,
    pub tooljetapps: Vec<Value>,
    pub configs: Vec<Value>,
    /// The versions without their definition (`spec.definition` is added when one is written,
    /// see [`Workload::version`]): the definitions are shared, so N = 5000 does not hold 700 MB of
    /// JSON trees.
    pub versions: Vec<Value>,
    /// Per version, its index into `definitions`.
    definition_of: Vec<usize>,
    definitions: Vec<Value>,
    pub outputs: Vec<Output>,
    /// Serialized bytes of every version's definition, summed.
    pub definition_bytes: u64,
}

/// A deterministic spread of `i` over `0..n` (so neighbouring apps differ).
fn spread(i: usize, salt: usize, n: usize) -> usize {
    (i.wrapping_mul(2654435761)
        .wrapping_add(salt.wrapping_mul(40503))
        >> 7)
        % n
}

impl Workload {
    /// Per app and stage, an EnvironmentConfig of a real workspace's shape: 3-8 data sources
    /// of 5-15 options each, 2-3 of them from the stage's Secret; 20-50 constants, 2-3 of them
    /// `Secret` ones from the same Secret, and `GEMINI_API_KEY` (a Global constant one of the
    /// exports references). Per app a ToolJetApp and 2 AppVersions in development whose
    /// definitions are real ToolJet exports grown to [`DEFINITION_KIB`].
    pub fn new(
        key: &materialize::HashKey,
        apps: usize,
        definitions: Definitions,
    ) -> Result<Workload> {
        let sizes: Vec<usize> = match definitions {
            Definitions::Realistic => DEFINITION_KIB.to_vec(),
            Definitions::Uniform(kib) => vec![kib],
        };
        let mut defs = vec![];
        for kib in &sizes {
            for seed in 0..3 {
                defs.push(testenv::definitions::realistic(kib * 1024, seed));
            }
        }
        let def_bytes: Vec<u64> = defs
            .iter()
            .map(|d| serde_json::to_vec(d).map(|b| b.len() as u64).unwrap_or(0))
            .collect();
        let mut w = Workload {
            apps,
            secrets: vec![],
            tooljetapps: vec![],
            configs: vec![],
            versions: vec![],
            definition_of: vec![],
            definitions: defs,
            outputs: vec![],
            definition_bytes: 0,
        };
        for i in 0..apps {
            let app = format!("app-{i}");
            w.tooljetapps.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": app }, "spec": {} }));
            let mut by_stage = BTreeMap::new();
            for (s, stage) in STAGES.into_iter().enumerate() {
                let creds = format!("creds-{i}-{stage}");
                let mut secret_values: BTreeMap<String, String> = BTreeMap::new();
                let mut data_sources = vec![];
                for d in 0..3 + spread(i, s * 10 + 1, 6) {
                    let kind = DATA_SOURCE_KINDS[(i + d) % DATA_SOURCE_KINDS.len()];
                    let options_n = 5 + spread(i, s * 100 + d * 7 + 2, 11);
                    let secrets_n = 2 + spread(i, s * 100 + d * 7 + 3, 2);
                    let mut options = serde_json::Map::new();
                    for o in 0..options_n - secrets_n {
                        let value = match o {
                            0 => json!(format!("{kind}-{d}.{stage}.app-{i}.internal")),
                            1 => json!(5432 + d),
                            2 => json!(o % 2 == 0),
                            _ => json!(format!("option-{o}-{d}-{i}-{stage}")),
                        };
                        options.insert(format!("opt{o}"), value);
                    }
                    let mut secret_options = serde_json::Map::new();
                    for o in 0..secrets_n {
                        let k = format!("ds{d}-secret{o}");
                        secret_values.insert(k.clone(), format!("{k}-{i}-{stage}-value"));
                        secret_options.insert(
                            format!("secret{o}"),
                            json!({ "secretKeyRef": { "name": creds, "key": k } }),
                        );
                    }
                    data_sources.push(json!({ "name": format!("{kind}-{d}"), "kind": kind,
                        "options": options, "secretOptions": secret_options }));
                }
                let constants_n = 20 + spread(i, s * 10 + 4, 31);
                let secret_constants = 2 + spread(i, s * 10 + 5, 2);
                let mut constants: Vec<Value> = (0..constants_n - secret_constants - 1)
                    .map(|k| json!({ "name": format!("C{k}"), "type": "Global", "value": format!("value-{k}-{i}-{stage}") }))
                    .collect();
                constants.push(json!({ "name": "GEMINI_API_KEY", "type": "Global", "value": format!("gemini-{i}-{stage}") }));
                for k in 0..secret_constants {
                    let key = format!("s{k}");
                    secret_values.insert(key.clone(), format!("secret-{k}-{i}-{stage}"));
                    constants.push(json!({ "name": format!("S{k}"), "type": "Secret", "valueFrom": { "secretKeyRef": { "name": creds, "key": key } } }));
                }
                w.secrets.push(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": creds }, "stringData": secret_values }));
                let spec = json!({
                    "app": app, "environment": stage,
                    "dataSources": data_sources,
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
                let size = spread(i, v, sizes.len());
                let definition = size * 3 + (i + v) % 3;
                w.definition_bytes += def_bytes[definition];
                w.definition_of.push(definition);
                w.versions.push(json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": name },
                    "spec": { "app": app, "versionName": format!("v{v}"), "environment": "development" } }));
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

    /// Version `k` with its definition.
    pub fn version(&self, k: usize) -> Value {
        let mut v = self.versions[k].clone();
        v["spec"]["definition"] = self.definitions[self.definition_of[k]].clone();
        v
    }

    /// How many objects the workload applies (Secrets, apps, configs, versions).
    pub fn inputs_len(&self) -> usize {
        self.secrets.len() + self.tooljetapps.len() + self.configs.len() + self.versions.len()
    }

    /// The ToolJet objects only (the owners of the Secrets and the holders of a status), made
    /// one at a time.
    pub fn sources(&self) -> impl Iterator<Item = Value> + '_ {
        self.tooljetapps
            .iter()
            .chain(&self.configs)
            .cloned()
            .chain((0..self.versions.len()).map(|k| self.version(k)))
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

/// Attempts per object when the apiserver could not call a webhook in time (an overloaded
/// control plane: at N=5000 on 2 cores its watch cache fell thousands of revisions behind, and
/// the webhook's consistent reads waited past the 5 s timeout). A person would apply again.
const WEBHOOK_ATTEMPTS: usize = 5;

/// Server-side applies `objects` into `ns`, `concurrency` at once; returns the time it took. An
/// apply the apiserver failed because it could not call a webhook is tried again (up to
/// [`WEBHOOK_ATTEMPTS`] times, 2 s apart), and how many were is printed.
pub async fn apply_all(
    client: &Client,
    ns: &str,
    objects: impl Iterator<Item = Value>,
    concurrency: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let apply = PatchParams::apply("bench").force();
    let retried = std::sync::atomic::AtomicUsize::new(0);
    stream::iter(objects)
        .map(|obj| {
            let (apply, retried) = (apply.clone(), &retried);
            async move {
                let kind = Kind::parse(obj["kind"].as_str().unwrap_or_default())?;
                let name = obj["metadata"]["name"]
                    .as_str()
                    .context("an object without a name")?;
                let api = kind.api(client, ns);
                for attempt in 1.. {
                    match api.patch(name, &apply, &Patch::Apply(&obj)).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e))
                            if attempt < WEBHOOK_ATTEMPTS
                                && e.message.contains("failed calling webhook") =>
                        {
                            retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("applying {} {name}", kind.name())));
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let retried = retried.into_inner();
    if retried > 0 {
        println!("   {retried} applies into {ns} failed calling a webhook and were applied again");
    }
    Ok(started.elapsed())
}
