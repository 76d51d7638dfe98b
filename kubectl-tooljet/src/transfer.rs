//! ToolJet app exports <-> tooljet.io objects. Pure: JSON in, objects out (and back), so the
//! mapping is tested without a cluster.
//!
//! A ToolJet export ("Export app") is `{tooljet_version, app: [{definition: {appV2: {...}}}],
//! tooljet_database}`. `appV2` carries the app (`name`), its versions (`appVersions`,
//! `editingVersion`), `components`, `pages`, `events`, `dataQueries`, `dataSources`, the
//! workspace's `appEnvironments` (`name`, `priority`, `enabled`) and `dataSourceOptions` (one per
//! data source and environment, `options: {key: {value, encrypted}}`; encrypted ones carry a
//! `credential_id` instead of a value).
//!
//! Import gives a ToolJetApp (pipeline = enabled environments by priority), one AppVersion in the
//! first stage whose `spec.definition` is the export's `app[0].definition`, kept exactly, and one
//! EnvironmentConfig per stage with that stage's options of every user data source. Export puts
//! the definition back and replaces the chosen stage's options with the cluster's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use tooljet_operator::api::{
    AppVersion, AppVersionSpec, DataSource, EnvironmentConfig, EnvironmentConfigSpec, Requirements,
    SecretKeySelector, SecretValueSource, ToolJetApp, ToolJetAppSpec,
};
use tooljet_operator::lifecycle::{References, constants::is_constant_name};

/// Data source kinds ToolJet creates for every app itself; they need no configuration.
pub const INTERNAL_KINDS: [&str; 4] = ["tooljetdb", "runjs", "runpy", "workflows"];

/// The export's version of ToolJet, kept on the AppVersion so an export can say where it came from.
pub const SOURCE_VERSION_ANNOTATION: &str = "import.tooljet.io/tooljet-version";

/// What the user chose on the command line.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// metadata.name of the ToolJetApp (default: the app's name, as a DNS label).
    pub app: Option<String>,
    /// metadata.name of the AppVersion (default: `<app>-<version name>`).
    pub version: Option<String>,
}

/// The objects an export becomes, and the Secrets the user must create.
#[derive(Clone, Debug)]
pub struct Imported {
    pub app: ToolJetApp,
    pub version: AppVersion,
    pub configs: Vec<EnvironmentConfig>,
    /// Secret name -> keys the EnvironmentConfigs reference (values never leave ToolJet).
    pub secrets: BTreeMap<String, BTreeSet<String>>,
    /// Things the user should know (renamed data sources, skipped ToolJet Database tables, ...).
    pub notes: Vec<String>,
}

/// The Secret that holds the encrypted options of `app` in `stage`.
pub fn secret_name(app: &str, stage: &str) -> String {
    format!("{app}-{stage}-datasources")
}

/// The key of an encrypted option in that Secret.
pub fn secret_key(data_source: &str, option: &str) -> String {
    format!("{data_source}.{}", sanitize_key(option))
}

/// Reads an export into objects. Errors name what is missing or invalid.
pub fn import(export: &Value, opts: &ImportOptions) -> Result<Imported, String> {
    let parts = ExportParts::read(export)?;
    let mut notes = Vec::new();
    let plan = Plan::of(&parts, opts, &mut notes)?;
    let (configs, secrets) = stage_configs(&parts, &plan);
    notes.extend(left_to_the_user(&parts, &plan.requires));
    Ok(Imported {
        app: app_object(&parts, &plan),
        version: version_object(&parts, plan),
        configs,
        secrets,
        notes,
    })
}

/// The parts of a ToolJet export that import reads.
struct ExportParts<'a> {
    /// The whole export (`tooljet_version`, `tooljet_database`).
    export: &'a Value,
    /// `app[0].definition`, kept exactly as the version's definition.
    definition: &'a Value,
    /// `app[0].definition.appV2`.
    app_v2: &'a Map<String, Value>,
}

impl<'a> ExportParts<'a> {
    /// Finds the app's definition in an export, or says which part of the expected shape is
    /// missing.
    fn read(export: &'a Value) -> Result<Self, String> {
        let entry = export
            .get("app")
            .and_then(Value::as_array)
            .and_then(|apps| apps.first())
            .ok_or("not a ToolJet app export: no app[0] (expected {tooljet_version, app: [{definition: {appV2: ...}}]})")?;
        let definition = entry
            .get("definition")
            .filter(|d| d.is_object())
            .ok_or("not a ToolJet app export: app[0].definition is missing")?;
        let app_v2 = definition
            .get("appV2")
            .and_then(Value::as_object)
            .ok_or("app[0].definition.appV2 is missing: exports before ToolJet 2.x are not supported; re-export the app")?;
        Ok(ExportParts {
            export,
            definition,
            app_v2,
        })
    }
}

/// What an export becomes, decided before any object is built.
struct Plan {
    /// metadata.name of the ToolJetApp.
    app: String,
    /// The pipeline, first stage first.
    environments: Vec<Environment>,
    /// spec.versionName of the AppVersion.
    version_name: String,
    /// metadata.name of the AppVersion.
    version_object: String,
    /// The user's data sources, each configured in every stage.
    data_sources: Vec<UserDataSource>,
    /// The AppVersion's spec.requires.
    requires: Requirements,
}

/// An enabled environment of the export, and the stage it becomes.
struct Environment {
    priority: i64,
    /// Its id in the export (empty in the default pipeline).
    id: String,
    stage: String,
}

/// A data source of the user's (not one ToolJet creates itself).
struct UserDataSource {
    /// Its id in the export.
    id: String,
    /// Its name as EnvironmentConfigs accept it.
    name: String,
    /// Its kind as the export names it.
    kind: String,
}

impl Plan {
    /// Decides, in this order (so the first error is the same), the app's name, the pipeline,
    /// the version, the data sources and the requirements. Renames are noted in `notes`.
    fn of(
        parts: &ExportParts,
        opts: &ImportOptions,
        notes: &mut Vec<String>,
    ) -> Result<Plan, String> {
        let app = app_name(parts.app_v2, opts)?;
        let environments = pipeline(parts.app_v2, notes)?;
        let (version_name, version_object) = version_names(parts.app_v2, &app, opts)?;
        let data_sources = user_data_sources(parts.app_v2, notes)?;
        let requires = requirements(parts, &data_sources);
        Ok(Plan {
            app,
            environments,
            version_name,
            version_object,
            data_sources,
            requires,
        })
    }

    /// The stage names, first stage first.
    fn stages(&self) -> Vec<String> {
        self.environments.iter().map(|e| e.stage.clone()).collect()
    }
}

/// metadata.name of the ToolJetApp: `--app`, else the app's name as a DNS label.
fn app_name(app_v2: &Map<String, Value>, opts: &ImportOptions) -> Result<String, String> {
    match &opts.app {
        Some(name) => dns_name(name, "--app"),
        None => {
            let name = str_field(app_v2, "name").ok_or("appV2.name is missing; pass --app NAME")?;
            dns_label(name).ok_or_else(|| {
                format!("the app name {name:?} has no letters or digits; pass --app NAME")
            })
        }
    }
}

/// The pipeline: enabled environments by priority (the default pipeline when the export lists
/// none); 2-10 stages, unique as stage names.
fn pipeline(
    app_v2: &Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<Vec<Environment>, String> {
    let mut envs: Vec<Environment> = Vec::new();
    for env in array_field(app_v2, "appEnvironments") {
        if env.get("enabled").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let name = env
            .get("name")
            .and_then(Value::as_str)
            .ok_or("an appEnvironments entry has no name")?;
        let stage = dns_label(name)
            .ok_or_else(|| format!("environment {name:?} cannot become a stage name"))?;
        if stage != name {
            notes.push(format!("environment {name:?} becomes stage {stage:?}"));
        }
        let id = env.get("id").and_then(Value::as_str).unwrap_or_default();
        let priority = env
            .get("priority")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX);
        envs.push(Environment {
            priority,
            id: id.to_string(),
            stage,
        });
    }
    envs.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then_with(|| a.stage.cmp(&b.stage))
    });
    if envs.is_empty() {
        notes.push(
            "the export lists no environments; using the default pipeline development, staging, production".into(),
        );
        envs = tooljet_operator::api::DEFAULT_PIPELINE
            .iter()
            .enumerate()
            .map(|(i, s)| Environment {
                priority: i as i64,
                id: String::new(),
                stage: s.to_string(),
            })
            .collect();
    }
    let stages: Vec<String> = envs.iter().map(|e| e.stage.clone()).collect();
    if stages.len() < 2 || stages.len() > 10 {
        return Err(format!(
            "the export's pipeline {stages:?} has {} enabled environments; a ToolJetApp needs 2-10",
            stages.len()
        ));
    }
    if stages.iter().collect::<BTreeSet<_>>().len() != stages.len() {
        return Err(format!(
            "the export's environments {stages:?} are not unique as stage names"
        ));
    }
    Ok(envs)
}

/// The version: the one being edited, else the last one. Its name (spec.versionName, at most
/// 25 characters) and its object's name (`--version`, else `<app>-<version name>`).
fn version_names(
    app_v2: &Map<String, Value>,
    app_name: &str,
    opts: &ImportOptions,
) -> Result<(String, String), String> {
    let versions = array_field(app_v2, "appVersions");
    let editing_id = app_v2
        .get("editingVersion")
        .and_then(|v| v.get("id"))
        .and_then(Value::as_str);
    let version = versions
        .iter()
        .find(|v| v.get("id").and_then(Value::as_str) == editing_id && editing_id.is_some())
        .or(versions.last())
        .or(app_v2.get("editingVersion"));
    let version_name = version
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("v1")
        .trim()
        .to_string();
    let version_name: String = version_name.chars().take(25).collect();
    let version_object = match &opts.version {
        Some(name) => dns_name(name, "--version")?,
        None => dns_name(
            &format!(
                "{app_name}-{}",
                dns_label(&version_name).unwrap_or("v1".into())
            ),
            "the version name",
        )?,
    };
    Ok((version_name, version_object))
}

/// Data sources: the user's, by id (internal ones stay in the definition only), each name
/// unique once made acceptable to EnvironmentConfigs.
fn user_data_sources(
    app_v2: &Map<String, Value>,
    notes: &mut Vec<String>,
) -> Result<Vec<UserDataSource>, String> {
    let mut user_sources = Vec::new();
    let mut seen = BTreeSet::new();
    for ds in array_field(app_v2, "dataSources") {
        if is_internal(ds) {
            continue;
        }
        let original = ds.get("name").and_then(Value::as_str).unwrap_or_default();
        let name = data_source_name(original).ok_or_else(|| {
            format!("data source {original:?} has no letters or digits in its name")
        })?;
        if name != original {
            notes.push(format!(
                "data source {original:?} is named {name:?} in the EnvironmentConfigs"
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!(
                "two data sources are named {name:?}; rename one in ToolJet and export again"
            ));
        }
        let kind = ds
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let id = ds
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        user_sources.push(UserDataSource { id, name, kind });
    }
    Ok(user_sources)
}

/// Requirements: data sources the queries use, constants and secrets the definition names.
fn requirements(parts: &ExportParts, user_sources: &[UserDataSource]) -> Requirements {
    let mut required_sources = BTreeSet::new();
    for query in array_field(parts.app_v2, "dataQueries") {
        let id = query.get("dataSourceId").and_then(Value::as_str);
        if let Some(ds) = user_sources.iter().find(|ds| Some(ds.id.as_str()) == id) {
            required_sources.insert(ds.name.clone());
        }
    }
    // What the operator reads of the definition (one scanner: the version is stamped with it).
    let references = References::of(Some(parts.definition));
    let constants: BTreeSet<String> = references
        .constants
        .into_iter()
        .chain(references.secrets)
        .collect();
    Requirements {
        data_sources: required_sources.into_iter().collect(),
        constants: constants.into_iter().collect(),
    }
}

/// One EnvironmentConfig per stage, and the Secrets (name -> keys) they reference.
fn stage_configs(
    parts: &ExportParts,
    plan: &Plan,
) -> (Vec<EnvironmentConfig>, BTreeMap<String, BTreeSet<String>>) {
    let options = array_field(parts.app_v2, "dataSourceOptions");
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut configs = Vec::new();
    for env in &plan.environments {
        let mut data_sources = Vec::new();
        for ds in &plan.data_sources {
            let found = options.iter().find(|o| {
                o.get("dataSourceId").and_then(Value::as_str) == Some(ds.id.as_str())
                    && o.get("environmentId").and_then(Value::as_str) == Some(env.id.as_str())
            });
            data_sources.push(stage_data_source(
                &plan.app,
                &env.stage,
                ds,
                found,
                &mut secrets,
            ));
        }
        let mut config = EnvironmentConfig::new(
            &format!("{}-{}", plan.app, env.stage),
            EnvironmentConfigSpec {
                environment: env.stage.clone(),
                app: Some(plan.app.clone()),
                data_sources,
                constants: vec![],
            },
        );
        config.metadata.labels = Some(labels(&plan.app));
        configs.push(config);
    }
    (configs, secrets)
}

/// Data source `ds` in `stage`, from its `dataSourceOptions` entry (`found`): encrypted options
/// and secret constant references become secret options read from the stage's Secret (their
/// keys recorded in `secrets`), the others plain options.
fn stage_data_source(
    app_name: &str,
    stage: &str,
    ds: &UserDataSource,
    found: Option<&Value>,
    secrets: &mut BTreeMap<String, BTreeSet<String>>,
) -> DataSource {
    let mut plain = BTreeMap::new();
    let mut secret = BTreeMap::new();
    if let Some(Value::Object(opts)) = found.and_then(|o| o.get("options")) {
        for (key, option) in opts {
            let encrypted = option
                .get("encrypted")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let reference = option
                .get("value")
                .and_then(Value::as_str)
                .is_some_and(is_secret_reference);
            if encrypted || reference {
                let secret_name = secret_name(app_name, stage);
                let secret_key = secret_key(&ds.name, key);
                secrets
                    .entry(secret_name.clone())
                    .or_default()
                    .insert(secret_key.clone());
                secret.insert(
                    key.clone(),
                    SecretValueSource {
                        secret_key_ref: SecretKeySelector {
                            name: secret_name,
                            key: secret_key,
                        },
                    },
                );
            } else if let Some(obj) = option.as_object().filter(|o| o.contains_key("encrypted")) {
                plain.insert(
                    key.clone(),
                    obj.get("value").cloned().unwrap_or(Value::Null),
                );
            } else {
                // Exports before per-option encryption flags: the value itself.
                plain.insert(key.clone(), option.clone());
            }
        }
    }
    DataSource {
        name: ds.name.clone(),
        kind: kind_name(&ds.kind),
        options: plain,
        secret_options: secret,
    }
}

/// Notes on what import leaves to the user: the constants and secrets the definition uses, and
/// the ToolJet Database tables it does not import.
fn left_to_the_user(parts: &ExportParts, requires: &Requirements) -> Vec<String> {
    let mut notes = Vec::new();
    if !requires.constants.is_empty() {
        notes.push(format!(
            "the definition uses constants/secrets {}: add them to each stage's EnvironmentConfig (spec.constants; \
             type Global for {{{{constants.X}}}}, type Secret with valueFrom for {{{{secrets.X}}}})",
            requires.constants.join(", ")
        ));
    }
    if parts
        .export
        .get("tooljet_database")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        notes.push(
            "the export carries ToolJet Database tables (tooljet_database): they are not part of an app version and are not imported"
                .into(),
        );
    }
    notes
}

/// The ToolJetApp: the pipeline, displayed under the export's app name.
fn app_object(parts: &ExportParts, plan: &Plan) -> ToolJetApp {
    let mut app = ToolJetApp::new(
        &plan.app,
        ToolJetAppSpec {
            display_name: str_field(parts.app_v2, "name").map(|n| n.chars().take(255).collect()),
            environments: plan.stages(),
            release: None,
            rollout: vec![],
            verification: None,
        },
    );
    app.metadata.labels = Some(labels(&plan.app));
    app
}

/// The AppVersion, in the first stage: the export's definition, kept exactly, its requirements,
/// and the export's ToolJet version as an annotation.
fn version_object(parts: &ExportParts, plan: Plan) -> AppVersion {
    let mut version = AppVersion::new(
        &plan.version_object,
        AppVersionSpec {
            app: plan.app.clone(),
            version_name: plan.version_name,
            description: Some(format!(
                "imported from a ToolJet export of {:?}",
                str_field(parts.app_v2, "name").unwrap_or(&plan.app)
            ))
            .map(|d| d.chars().take(1000).collect()),
            environment: plan.environments[0].stage.clone(),
            definition: Some(parts.definition.clone()),
            requires: Some(plan.requires),
        },
    );
    version.metadata.labels = Some(labels(&plan.app));
    if let Some(v) = parts.export.get("tooljet_version").and_then(Value::as_str) {
        version.metadata.annotations =
            Some([(SOURCE_VERSION_ANNOTATION.to_string(), v.to_string())].into());
    }
    version
}

/// A ToolJet export of `version` whose data source options are, in every environment, that
/// stage's configuration from `configs` (the EnvironmentConfigs of the app and the workspace, of
/// any stage; per stage, app entries win), in the form ToolJet resolves: plain options as their
/// literal value, secret options as `{"value": "{{secrets.NAME}}", "encrypted": false}`, NAME
/// being the secret constant the operator materialises for the option
/// ([`tooljet_operator::lifecycle::constants::option_constant`]). Imported into ToolJet, an option
/// resolves, in each environment's ToolJet server, to that stage's value; the file holds no
/// credential. `stage` must configure every data source; an environment that configures none
/// keeps the plain options the definition was imported with, its secret options referenced.
pub fn export(
    version: &AppVersion,
    app: Option<&ToolJetApp>,
    stage: &str,
    configs: &[EnvironmentConfig],
) -> Result<Value, String> {
    let mut definition = exportable_definition(version)?;
    let configured = configured_per_stage(configs);
    let app_v2 = definition
        .get_mut("appV2")
        .and_then(Value::as_object_mut)
        .ok_or("spec.definition.appV2 is not an object")?;
    put_names(app_v2, version, app);
    let mut missing = put_options(app_v2, &configured, stage);
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(format!(
            "stage {stage} has no configuration for data source(s) {}; add them to the stage's EnvironmentConfig or export another stage",
            missing.join(", ")
        ));
    }
    Ok(export_file(version, definition))
}

/// Per stage, data source name -> its configuration.
type Configured<'a> = BTreeMap<&'a str, BTreeMap<String, &'a DataSource>>;

/// A copy of the version's definition, which must hold an `appV2` object.
fn exportable_definition(version: &AppVersion) -> Result<Value, String> {
    let name = version.metadata.name.as_deref().unwrap_or_default();
    version
        .spec
        .definition
        .clone()
        .filter(|d| d.get("appV2").is_some_and(Value::is_object))
        .ok_or_else(|| {
            format!(
                "AppVersion {name} has no ToolJet definition (spec.definition.appV2); only versions created by `kubectl tooljet import` or holding an appV2 definition can be exported"
            )
        })
}

/// Per stage, data source name -> its configuration; workspace-wide first, then the app's.
fn configured_per_stage(configs: &[EnvironmentConfig]) -> Configured<'_> {
    let mut ordered: Vec<&EnvironmentConfig> = configs.iter().collect();
    ordered.sort_by_key(|c| c.spec.app.is_some());
    let mut effective: Configured = BTreeMap::new();
    for config in ordered {
        let stage_sources = effective.entry(&config.spec.environment).or_default();
        for ds in &config.spec.data_sources {
            stage_sources.insert(ds.name.clone(), ds);
        }
    }
    effective
}

/// The cluster's names in the definition: the version's display name and, given the app, the
/// app's.
fn put_names(app_v2: &mut Map<String, Value>, version: &AppVersion, app: Option<&ToolJetApp>) {
    // The version's display name may have been changed (a rename in the first stage).
    let rename = |v: &mut Value| {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("name".into(), json!(version.spec.version_name));
        }
    };
    app_v2
        .get_mut("appVersions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .for_each(rename);
    app_v2
        .get_mut("editingVersion")
        .into_iter()
        .for_each(rename);
    if let Some(display) = app.and_then(|a| a.spec.display_name.clone()) {
        app_v2.insert("name".into(), json!(display));
    }
}

/// Replaces the options of every user data source's `dataSourceOptions` entry with its
/// environment's configuration (see [`export`]). Returns the data sources `stage` does not
/// configure (their options emptied), possibly repeated.
fn put_options(
    app_v2: &mut Map<String, Value>,
    configured: &Configured,
    stage: &str,
) -> Vec<String> {
    let env_stages = environment_stages(app_v2);
    let sources = user_data_source_names(app_v2);
    let mut missing = Vec::new();
    for entry in app_v2
        .get_mut("dataSourceOptions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(obj) = entry.as_object_mut() else {
            continue;
        };
        let Some(ds_name) = obj
            .get("dataSourceId")
            .and_then(Value::as_str)
            .and_then(|id| sources.get(id))
        else {
            continue; // an internal data source: nothing to configure
        };
        let entry_stage = obj
            .get("environmentId")
            .and_then(Value::as_str)
            .and_then(|id| env_stages.get(id));
        let stage_configured = entry_stage
            .and_then(|s| configured.get(s.as_str()))
            .and_then(|sources| sources.get(ds_name));
        let options = match stage_configured {
            Some(ds) => Some(tooljet_options(ds)),
            None if entry_stage.map(String::as_str) == Some(stage) => {
                missing.push(ds_name.clone());
                Some(Map::new())
            }
            None => obj
                .get("options")
                .and_then(Value::as_object)
                .map(|o| referenced_encrypted(ds_name, o)),
        };
        obj.insert(
            "options".into(),
            options.map(Value::Object).unwrap_or(Value::Null),
        );
    }
    missing
}

/// Environment id -> stage name.
fn environment_stages(app_v2: &Map<String, Value>) -> BTreeMap<String, String> {
    array_field(app_v2, "appEnvironments")
        .iter()
        .filter_map(|e| {
            let id = e.get("id")?.as_str()?.to_string();
            let stage = dns_label(e.get("name")?.as_str()?)?;
            Some((id, stage))
        })
        .collect()
}

/// User data source id -> its name in EnvironmentConfigs.
fn user_data_source_names(app_v2: &Map<String, Value>) -> BTreeMap<String, String> {
    array_field(app_v2, "dataSources")
        .iter()
        .filter(|ds| !is_internal(ds))
        .filter_map(|ds| {
            let id = ds.get("id")?.as_str()?.to_string();
            let name = data_source_name(ds.get("name")?.as_str()?)?;
            Some((id, name))
        })
        .collect()
}

/// The export file around `definition`: `app[0]` named as the imported app was, no ToolJet
/// Database tables, and the ToolJet version the import came from.
fn export_file(version: &AppVersion, definition: Value) -> Value {
    let mut app_entry = Map::new();
    app_entry.insert("definition".into(), definition);
    if let Some(a) = version
        .spec
        .definition
        .as_ref()
        .and_then(|d| d.get("appV2"))
        .and_then(|a| a.get("name"))
    {
        app_entry.insert("appName".into(), a.clone());
    }
    let source = version
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE_VERSION_ANNOTATION))
        .cloned();
    let mut out = Map::new();
    out.insert("tooljet_database".into(), json!([]));
    out.insert("app".into(), json!([Value::Object(app_entry)]));
    if let Some(v) = source {
        out.insert("tooljet_version".into(), json!(v));
    }
    Value::Object(out)
}

/// A data source's options in ToolJet's `{key: {value, encrypted}}` form; each secret option a
/// reference to its secret constant.
fn tooljet_options(ds: &DataSource) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in &ds.options {
        out.insert(k.clone(), json!({ "value": v, "encrypted": false }));
    }
    for k in ds.secret_options.keys() {
        out.insert(k.clone(), secret_reference(&ds.name, k));
    }
    out
}

/// `{"value": "{{secrets.NAME}}", "encrypted": false}` for option `option` of `data_source`.
/// Not encrypted: ToolJet's import keeps a plain option's value and creates an encrypted one
/// empty, and a reference is no credential.
fn secret_reference(data_source: &str, option: &str) -> Value {
    let name = tooljet_operator::lifecycle::constants::option_constant(data_source, option);
    json!({ "value": format!("{{{{secrets.{name}}}}}"), "encrypted": false })
}

/// Whether a plain option's value is exactly a secret constant reference (`{{secrets.NAME}}`).
fn is_secret_reference(value: &str) -> bool {
    value
        .strip_prefix("{{secrets.")
        .and_then(|rest| rest.strip_suffix("}}"))
        .is_some_and(is_constant_name)
}

/// Options as stored, every encrypted option (a credential reference) replaced by the reference
/// to its secret constant.
fn referenced_encrypted(data_source: &str, options: &Map<String, Value>) -> Map<String, Value> {
    options
        .iter()
        .map(|(k, v)| {
            let encrypted = v.get("encrypted").and_then(Value::as_bool).unwrap_or(false);
            let v = if encrypted {
                secret_reference(data_source, k)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// Whether ToolJet creates this data source itself (static, or an internal kind).
pub fn is_internal(ds: &Value) -> bool {
    let kind = ds.get("kind").and_then(Value::as_str).unwrap_or_default();
    ds.get("type").and_then(Value::as_str) == Some("static") || INTERNAL_KINDS.contains(&kind)
}

fn array_field<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    obj.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

fn labels(app: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/part-of".to_string(), app.to_string()),
        (
            "app.kubernetes.io/created-by".to_string(),
            "kubectl-tooljet".to_string(),
        ),
    ]
    .into()
}

/// A DNS label from free text: lowercase, runs of other characters become one '-', at most 63.
pub fn dns_label(text: &str) -> Option<String> {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.chars().take(63).collect();
    let out = out.trim_end_matches('-').to_string();
    (!out.is_empty()).then_some(out)
}

/// A name given by the user (or built from one) that must already be a DNS subdomain.
fn dns_name(name: &str, what: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{what} {name:?} is not a valid object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// A data source name as EnvironmentConfigs accept it: other characters become '_'.
pub fn data_source_name(name: &str) -> Option<String> {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let trimmed = mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    (!trimmed.is_empty()).then_some(trimmed)
}

fn sanitize_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A kind as the CRD accepts it (`^[a-z][a-z0-9_-]*$`).
fn kind_name(kind: &str) -> String {
    let k: String = kind
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if k.starts_with(|c: char| c.is_ascii_lowercase()) {
        k
    } else {
        format!("x{k}")
    }
}

/// The parts of an export that survive a round trip (ToolJet regenerates the rest on import:
/// see docs/plugin.md): per section, the entries without their regenerated fields.
pub fn comparable(export: &Value) -> Value {
    const REGENERATED: [&str; 8] = [
        "id",
        "createdAt",
        "updatedAt",
        "appVersionId",
        "organizationId",
        "credential_id",
        "slug",
        "userId",
    ];
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| !REGENERATED.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    let app_v2 = &export["app"][0]["definition"]["appV2"];
    let mut out = Map::new();
    for section in [
        "components",
        "pages",
        "events",
        "dataQueries",
        "dataSources",
    ] {
        out.insert(section.into(), strip(&app_v2[section]));
    }
    out.insert("name".into(), app_v2["name"].clone());
    out.insert(
        "versionNames".into(),
        json!(
            array_field(app_v2.as_object().unwrap_or(&Map::new()), "appVersions")
                .iter()
                .map(|v| v["name"].clone())
                .collect::<Vec<_>>()
        ),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The app and its first version as imported: the default pipeline, `app` named
    /// `display_name`, and version `app-v1` in development.
    fn assert_imported_as(imported: &Imported, app: &str, display_name: &str) {
        assert_eq!(
            imported.app.spec.environments,
            ["development", "staging", "production"]
        );
        assert_eq!(imported.app.metadata.name.as_deref(), Some(app));
        assert_eq!(
            imported.app.spec.display_name.as_deref(),
            Some(display_name)
        );
        assert_eq!(imported.version.spec.environment, "development");
        assert_eq!(
            imported.version.metadata.name.as_deref(),
            Some(format!("{app}-v1").as_str())
        );
    }

    const FIXTURES: [&str; 3] = [
        "base64-encoder-decoder.json",
        "business-intelligence-dashboard-postgresql.json",
        "ai-powered-code-explainer.json",
    ];

    #[test]
    fn the_pipeline_is_the_enabled_environments_by_priority() {
        let imported = import(
            &fixture("business-intelligence-dashboard-postgresql.json"),
            &Default::default(),
        )
        .unwrap();
        assert_imported_as(
            &imported,
            "business-intelligence-dashboard-postgresql",
            "Business intelligence dashboard (PostgreSQL)",
        );
        assert_eq!(imported.version.spec.version_name, "v1");
    }

    #[test]
    fn disabled_environments_are_left_out_and_priority_orders_the_rest() {
        let mut export = fixture("base64-encoder-decoder.json");
        let envs = export["app"][0]["definition"]["appV2"]["appEnvironments"]
            .as_array_mut()
            .unwrap();
        envs[1]["enabled"] = json!(false); // staging
        envs.reverse();
        let imported = import(&export, &Default::default()).unwrap();
        assert_eq!(
            imported.app.spec.environments,
            ["development", "production"]
        );
    }

    #[test]
    fn the_definition_is_kept_exactly() {
        for name in FIXTURES {
            let export = fixture(name);
            let imported = import(&export, &Default::default()).unwrap();
            assert_eq!(
                imported.version.spec.definition.as_ref(),
                Some(&export["app"][0]["definition"]),
                "{name}"
            );
        }
    }

    #[test]
    fn every_user_data_source_of_every_environment_is_in_that_stages_config() {
        let imported = import(
            &fixture("business-intelligence-dashboard-postgresql.json"),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(imported.configs.len(), 3);
        for config in &imported.configs {
            let stage = &config.spec.environment;
            assert_eq!(
                config.spec.app.as_deref(),
                Some("business-intelligence-dashboard-postgresql")
            );
            assert_eq!(
                config.metadata.name.as_deref().unwrap(),
                format!("business-intelligence-dashboard-postgresql-{stage}")
            );
            let names: Vec<_> = config
                .spec
                .data_sources
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            assert_eq!(
                names,
                ["business_analytics"],
                "internal data sources need no entry"
            );
            let ds = &config.spec.data_sources[0];
            assert_eq!(ds.kind, "postgresql");
            assert_eq!(ds.options["host"], json!("35.202.183.199"));
            assert_eq!(ds.options["port"], json!(5432));
            assert_eq!(ds.options["ssl_enabled"], json!(false));
            assert!(
                !ds.options.contains_key("password"),
                "an encrypted option is never a plain option"
            );
            let password = &ds.secret_options["password"].secret_key_ref;
            assert_eq!(
                password.name,
                format!("business-intelligence-dashboard-postgresql-{stage}-datasources")
            );
            assert_eq!(password.key, "business_analytics.password");
        }
        assert_eq!(imported.secrets.len(), 3);
        assert!(
            imported
                .secrets
                .values()
                .all(|keys| keys.iter().eq(["business_analytics.password"]))
        );
    }

    #[test]
    fn no_credential_reference_reaches_a_config() {
        let imported = import(
            &fixture("business-intelligence-dashboard-postgresql.json"),
            &Default::default(),
        )
        .unwrap();
        let configs = serde_json::to_string(&imported.configs).unwrap();
        assert!(!configs.contains("credential_id"));
        assert!(!configs.contains("465a9112"));
    }

    #[test]
    fn requirements_are_the_queries_user_data_sources() {
        let imported = import(
            &fixture("business-intelligence-dashboard-postgresql.json"),
            &Default::default(),
        )
        .unwrap();
        let requires = imported.version.spec.requires.unwrap();
        assert_eq!(requires.data_sources, ["business_analytics"]);
        assert!(requires.constants.is_empty());

        let imported =
            import(&fixture("base64-encoder-decoder.json"), &Default::default()).unwrap();
        assert!(
            imported
                .configs
                .iter()
                .all(|c| c.spec.data_sources.is_empty()),
            "runjs is internal"
        );
        assert_eq!(
            imported.version.spec.requires.unwrap(),
            Requirements::default()
        );
        assert!(imported.secrets.is_empty());
    }

    #[test]
    fn a_rest_api_app_needs_its_constant_and_no_data_source_configuration() {
        let export = fixture("ai-powered-code-explainer.json");
        let imported = import(&export, &Default::default()).unwrap();
        assert_imported_as(&imported, "ai-code-explainer", "AI Code Explainer");
        assert_eq!(
            imported.version.metadata.annotations.as_ref().unwrap()[SOURCE_VERSION_ANNOTATION],
            "3.0.15-cloud-lts"
        );
        // Both queries use ToolJet's own REST API data source (static): nothing to configure.
        let app_v2 = &export["app"][0]["definition"]["appV2"];
        for query in app_v2["dataQueries"].as_array().unwrap() {
            let ds = app_v2["dataSources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == query["dataSourceId"])
                .unwrap();
            assert_eq!(ds["kind"], "restapi");
            assert!(is_internal(ds), "{ds}");
        }
        assert_eq!(imported.configs.len(), 3);
        for (config, stage) in imported.configs.iter().zip(&imported.app.spec.environments) {
            assert_eq!(&config.spec.environment, stage);
            assert_eq!(config.spec.app.as_deref(), Some("ai-code-explainer"));
            assert!(config.spec.data_sources.is_empty(), "{stage}");
        }
        assert!(imported.secrets.is_empty());
        // The API key is a workspace constant, named in a URL and in a URL parameter.
        let requires = imported.version.spec.requires.unwrap();
        assert!(requires.data_sources.is_empty());
        assert_eq!(requires.constants, ["GEMINI_API_KEY"]);
        assert!(
            imported
                .notes
                .iter()
                .any(|n| n.contains("GEMINI_API_KEY") && n.contains("spec.constants")),
            "{:?}",
            imported.notes
        );
    }

    #[test]
    fn names_given_on_the_command_line_are_used_and_checked() {
        let export = fixture("base64-encoder-decoder.json");
        let opts = ImportOptions {
            app: Some("b64".into()),
            version: Some("b64-first".into()),
        };
        let imported = import(&export, &opts).unwrap();
        assert_eq!(imported.app.metadata.name.as_deref(), Some("b64"));
        assert_eq!(imported.version.metadata.name.as_deref(), Some("b64-first"));
        assert_eq!(imported.version.spec.app, "b64");
        let bad = ImportOptions {
            app: Some("Not Valid".into()),
            version: None,
        };
        assert!(import(&export, &bad).unwrap_err().contains("--app"));
    }

    #[test]
    fn a_file_that_is_not_an_export_is_refused_with_the_expected_shape() {
        let e = import(&json!({ "name": "x" }), &Default::default()).unwrap_err();
        assert!(e.contains("app[0]"), "{e}");
    }

    #[test]
    fn export_of_an_import_gives_back_the_original_app() {
        for name in FIXTURES {
            let original = fixture(name);
            let imported = import(&original, &Default::default()).unwrap();
            for stage in &imported.app.spec.environments {
                let configs: Vec<_> = imported
                    .configs
                    .iter()
                    .filter(|c| &c.spec.environment == stage)
                    .cloned()
                    .collect();
                let exported =
                    export(&imported.version, Some(&imported.app), stage, &configs).unwrap();
                assert_eq!(
                    comparable(&exported),
                    comparable(&original),
                    "{name} via {stage}"
                );
                assert_eq!(exported["tooljet_version"], original["tooljet_version"]);
                // Options: every plain option back, every encrypted one present and empty.
                let back = &exported["app"][0]["definition"]["appV2"]["dataSourceOptions"];
                let orig = &original["app"][0]["definition"]["appV2"]["dataSourceOptions"];
                assert_eq!(
                    back.as_array().unwrap().len(),
                    orig.as_array().unwrap().len()
                );
                for (b, o) in back
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(orig.as_array().unwrap())
                {
                    assert_eq!(b["dataSourceId"], o["dataSourceId"]);
                    let Some(o_opts) = o["options"].as_object() else {
                        assert!(b["options"].is_null() || b["options"] == json!({}), "{b}");
                        continue;
                    };
                    for (k, v) in o_opts {
                        if v["encrypted"] == json!(true) {
                            // The credential becomes a reference to the stage's secret constant.
                            let reference = b["options"][k]["value"].as_str().unwrap();
                            assert!(is_secret_reference(reference), "{reference}");
                            assert_eq!(b["options"][k]["encrypted"], json!(false));
                        } else {
                            assert_eq!(&b["options"][k], v, "{name} {stage} option {k}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn export_uses_the_stages_configuration_and_a_renamed_version() {
        let original = fixture("business-intelligence-dashboard-postgresql.json");
        let mut imported = import(&original, &Default::default()).unwrap();
        imported.version.spec.version_name = "v2-hotfix".into();
        let mut staging = imported.configs[1].clone();
        staging.spec.data_sources[0]
            .options
            .insert("host".into(), json!("db.staging.internal"));
        let exported = export(&imported.version, None, "staging", &[staging]).unwrap();
        let app_v2 = &exported["app"][0]["definition"]["appV2"];
        assert_eq!(app_v2["appVersions"][0]["name"], "v2-hotfix");
        assert_eq!(app_v2["editingVersion"]["name"], "v2-hotfix");
        let staging_id = "1071e258-9bd6-496c-a11c-9fe8670eedcc";
        let entry = app_v2["dataSourceOptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| {
                o["environmentId"] == staging_id
                    && o["dataSourceId"] == "737a1edf-9ced-46a6-9f05-b747f371ce5e"
            })
            .unwrap();
        assert_eq!(
            entry["options"]["host"],
            json!({ "value": "db.staging.internal", "encrypted": false })
        );
        assert!(
            !exported.to_string().contains("credential_id"),
            "no credential reference leaves the cluster"
        );
    }

    #[test]
    fn every_environment_gets_its_stages_options_and_references_import_back() {
        let original = fixture("business-intelligence-dashboard-postgresql.json");
        let mut imported = import(&original, &Default::default()).unwrap();
        for (config, host) in imported.configs.iter_mut().zip(["dev", "stg", "prd"]) {
            config.spec.data_sources[0]
                .options
                .insert("host".into(), json!(format!("{host}.db")));
        }
        let exported = export(
            &imported.version,
            Some(&imported.app),
            "production",
            &imported.configs,
        )
        .unwrap();
        let entries = exported["app"][0]["definition"]["appV2"]["dataSourceOptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["dataSourceId"] == "737a1edf-9ced-46a6-9f05-b747f371ce5e")
            .map(|o| (o["environmentId"].as_str().unwrap(), &o["options"]))
            .collect::<BTreeMap<_, _>>();
        for (env, host) in [
            ("5b7f33b3-b9a9-43b0-a9b2-82bb37fca4d4", "dev.db"),
            ("1071e258-9bd6-496c-a11c-9fe8670eedcc", "stg.db"),
            ("1841fd5c-f11a-4a1a-97b2-f2312316cb8d", "prd.db"),
        ] {
            assert_eq!(entries[env]["host"]["value"], host);
            assert_eq!(
                entries[env]["password"],
                json!({ "value": "{{secrets.BUSINESS_ANALYTICS_PASSWORD}}", "encrypted": false })
            );
        }
        let text = exported.to_string();
        assert!(!text.contains("credential_id") && !text.contains("\"encrypted\":true"));

        // Imported again, each reference is a secret option read from the stage's Secret.
        let again = import(&exported, &Default::default()).unwrap();
        for (a, b) in again.configs.iter().zip(&imported.configs) {
            assert_eq!(a.spec, b.spec);
        }
        assert_eq!(again.secrets, imported.secrets);
    }

    /// The walkthrough's app (examples/sales-dashboard) imports with a host per stage, and the
    /// Secrets it names are those examples/sales-dashboard/credentials.yaml creates.
    #[test]
    fn the_example_export_imports_with_a_host_and_a_credential_per_stage() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sales-dashboard");
        let export: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("export.json")).unwrap())
                .unwrap();
        let imported = import(&export, &Default::default()).unwrap();
        assert_eq!(
            imported.app.metadata.name.as_deref(),
            Some("sales-dashboard")
        );
        let hosts: Vec<_> = imported
            .configs
            .iter()
            .map(|c| c.spec.data_sources[0].options["host"].clone())
            .collect();
        assert_eq!(
            hosts,
            [
                json!("sales-dev.db.internal"),
                json!("sales-staging.db.internal"),
                json!("sales.db.internal")
            ]
        );
        let credentials = std::fs::read_to_string(dir.join("credentials.yaml")).unwrap();
        for (secret, keys) in &imported.secrets {
            assert!(credentials.contains(&format!("name: {secret}")), "{secret}");
            for key in keys {
                assert!(credentials.contains(&format!("{key}: ")), "{key}");
            }
        }
        assert_eq!(imported.secrets.len(), 3);
    }

    #[test]
    fn export_refuses_a_stage_without_the_data_source() {
        let imported = import(
            &fixture("business-intelligence-dashboard-postgresql.json"),
            &Default::default(),
        )
        .unwrap();
        let e = export(&imported.version, None, "production", &[]).unwrap_err();
        assert!(
            e.contains("business_analytics") && e.contains("production"),
            "{e}"
        );
    }

    #[test]
    fn names_become_dns_labels() {
        assert_eq!(
            dns_label("Business intelligence dashboard (PostgreSQL)").unwrap(),
            "business-intelligence-dashboard-postgresql"
        );
        assert_eq!(dns_label("  QA  ").unwrap(), "qa");
        assert_eq!(dns_label("!!!"), None);
        assert_eq!(data_source_name("My DB (prod)").unwrap(), "My_DB__prod");
    }
}
