//! Pure materialisation: EnvironmentConfig specs and the data of the Secrets they reference in,
//! the data of the Secret ToolJet consumes out. No client, no clock, no I/O.
//!
//! Keys follow ToolJet's own env-var convention: `TOOLJET_GLOBAL_CONSTANTS__<environment>__<NAME>`
//! and `TOOLJET_SECRET_CONSTANTS__<environment>__<NAME>`. A data source's secret option is a
//! Secret constant too ([`option_constant`]), and the data source's options hold
//! `{{secrets.NAME}}` in its place: the form ToolJet resolves at query time. A stage
//! configuration's Secret also holds `datasources.json` (data source name -> kind and options in
//! that form, no credential), which the operator and `kubectl tooljet export` read and no workload
//! takes in: what a workload reads is [`workload`], constants only.
//!
//! The content hashes users can read (status, the `tooljet.io/config-hash` annotations) are keyed
//! with the installation's [`HashKey`]: a plain digest of a low-entropy secret value could be
//! guessed offline by hashing candidates; a keyed one cannot without the key.

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::{
    ConstantType, DataSource, EnvironmentConfigSpec, SecretKeySelector, SecretValueSource,
};
use crate::lifecycle::{
    References,
    constants::{MAX_CONSTANT_VALUE, option_constant},
};

/// The key of the data-source document in a materialised Secret.
pub const DATASOURCES_KEY: &str = "datasources.json";

/// The data of the Secrets a spec references: Secret name -> key -> value.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// The per-installation key of the content hashes (HMAC-SHA256). Every replica of one
/// installation uses the same key, so hashes agree between replicas and across restarts (no
/// rewrites), while nobody without the key can test a guessed secret value against a hash.
///
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct HashKey {
    /// HMAC keyed once; each hash starts from a clone of it.
    mac: Hmac<Sha256>,
}

/// Why bytes are not a usable [`HashKey`]. Carries the length only, never the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a content-hash key must be {} bytes, found {len}", HashKey::LEN)]
pub struct InvalidHashKey {
    pub len: usize,
}

impl HashKey {
    /// The key length: 256 bits, SHA-256's output size.
    pub const LEN: usize = 32;

    /// The key made of exactly [`HashKey::LEN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<HashKey, InvalidHashKey> {
        let invalid = InvalidHashKey { len: bytes.len() };
        if bytes.len() != Self::LEN {
            return Err(invalid);
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| invalid)?;
        Ok(HashKey { mac })
    }

    /// HMAC-SHA256 over `parts`, each length-prefixed so no two lists collide.
    pub fn mac<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
        let mut h = self.mac.clone();
        for part in parts {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into_bytes().into()
    }
}

/// The version of what [`materialize`] and [`merge_layers`] make of their inputs. A stage
/// configuration's Secret records (HMAC'd) the inputs it was made from and this format
/// ([`crate::cache::secret::inputs_annotation`]); a restarted operator trusts the Secret without
/// materialising it again only when both match. Bump it with any change that would turn the same
/// inputs into other Secret data (`the_output_format_is_pinned` fails until it is).
pub const FORMAT: u32 = 2;

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

/// A materialised configuration: the Secret data and a hash of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Materialized {
    pub data: BTreeMap<String, Vec<u8>>,
    /// HMAC-SHA256 (hex) over every key and value, keyed with the installation's [`HashKey`].
    pub hash: String,
    pub data_sources: usize,
    pub constants: usize,
}

impl Materialized {
    /// The constants alone, hashed with `key`: what a Secret that a workload may take in holds
    /// (`datasources.json` is nothing ToolJet reads from its environment). The counts are kept.
    pub fn constants_only(&self, key: &HashKey) -> Materialized {
        let data: BTreeMap<String, Vec<u8>> = self
            .data
            .iter()
            .filter(|(k, _)| k.as_str() != DATASOURCES_KEY)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Materialized {
            hash: hash(key, &data),
            data,
            data_sources: self.data_sources,
            constants: self.constants,
        }
    }
}

/// Why a reference could not be resolved. Names only, never values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unresolved {
    /// The Secret does not exist.
    SecretNotFound {
        secret: String,
        key: String,
        used_by: String,
    },
    /// The Secret exists but lacks the key.
    KeyNotFound {
        secret: String,
        key: String,
        used_by: String,
    },
    /// The value is not UTF-8 text, which a data source option in JSON must be.
    NotText {
        secret: String,
        key: String,
        used_by: String,
    },
    /// A secret option's constant name is already another entry's.
    NameTaken {
        name: String,
        used_by: String,
        taken_by: String,
    },
    /// A value read from a Secret is longer than ToolJet accepts for a constant.
    TooLong { name: String, len: usize },
}

impl Unresolved {
    /// The condition reason for a set of problems: a missing Secret outranks a missing key.
    pub fn reason(problems: &[Unresolved]) -> &'static str {
        if problems
            .iter()
            .any(|p| matches!(p, Unresolved::SecretNotFound { .. }))
        {
            "SecretNotFound"
        } else if problems
            .iter()
            .any(|p| matches!(p, Unresolved::KeyNotFound { .. }))
        {
            "KeyNotFound"
        } else if problems
            .iter()
            .any(|p| matches!(p, Unresolved::NameTaken { .. }))
        {
            "NameConflict"
        } else {
            "InvalidSecretValue"
        }
    }

    /// The commands that create the missing Secrets and keys in namespace `ns`: one per Secret,
    /// each value read from a file the user writes (`<file>`), so no value lands in a shell's
    /// history or a process list.
    pub fn fixes(problems: &[Unresolved], ns: &str) -> Vec<String> {
        let mut absent: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut lacking: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for p in problems {
            match p {
                Unresolved::SecretNotFound { secret, key, .. } => {
                    absent.entry(secret).or_default().insert(key);
                }
                Unresolved::KeyNotFound { secret, key, .. } => {
                    lacking.entry(secret).or_default().insert(key);
                }
                _ => {}
            }
        }
        let create = absent.into_iter().map(|(secret, keys)| {
            let files: Vec<String> = keys
                .iter()
                .map(|k| format!("--from-file={k}=<file>"))
                .collect();
            format!(
                "kubectl -n {ns} create secret generic {secret} {} (each <file> holding the value)",
                files.join(" ")
            )
        });
        let add = lacking.into_iter().map(|(secret, keys)| {
            let data: Vec<String> = keys.iter().map(|k| format!("\"{k}\":\"<value>\"")).collect();
            format!(
                "kubectl -n {ns} patch secret {secret} --type merge --patch-file <file> (<file> holding {{\"stringData\":{{{}}}}})",
                data.join(",")
            )
        });
        create.chain(add).collect()
    }

    /// One sentence per problem, for conditions and Events.
    pub fn describe(problems: &[Unresolved]) -> String {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::SecretNotFound {
                secret,
                key,
                used_by,
            } => {
                write!(
                    f,
                    "Secret {secret} not found (its key {key} is referenced by {used_by}); create it in this namespace"
                )
            }
            Unresolved::KeyNotFound {
                secret,
                key,
                used_by,
            } => {
                write!(
                    f,
                    "key {key} not found in Secret {secret} (referenced by {used_by}); add the key or fix the reference"
                )
            }
            Unresolved::NotText {
                secret,
                key,
                used_by,
            } => write!(
                f,
                "key {key} of Secret {secret} is not UTF-8 text (referenced by {used_by}); data source options must be text"
            ),
            Unresolved::NameTaken {
                name,
                used_by,
                taken_by,
            } => write!(
                f,
                "{used_by} is carried as secret constant {name}, which {taken_by} already is; rename the data source or the constant"
            ),
            Unresolved::TooLong { name, len } => write!(
                f,
                "the value of constant {name} has {len} bytes; ToolJet accepts at most {MAX_CONSTANT_VALUE}: shorten it in its Secret"
            ),
        }
    }
}

/// The names of the Secrets a spec references, sorted and unique.
pub fn referenced_secrets(spec: &EnvironmentConfigSpec) -> BTreeSet<String> {
    let from_sources = spec.data_sources.iter().flat_map(|ds| {
        ds.secret_options
            .values()
            .map(|s| s.secret_key_ref.name.clone())
    });
    let from_constants = spec
        .constants
        .iter()
        .filter_map(|c| c.value_from.as_ref().map(|s| s.secret_key_ref.name.clone()));
    from_sources.chain(from_constants).collect()
}

/// The env-var key of a constant, as ToolJet reads it.
pub fn constant_key(environment: &str, kind: ConstantType, name: &str) -> String {
    let prefix = match kind {
        ConstantType::Global => "TOOLJET_GLOBAL_CONSTANTS",
        ConstantType::Secret => "TOOLJET_SECRET_CONSTANTS",
    };
    format!("{prefix}__{environment}__{name}")
}

/// Merges `layers` (lowest precedence first: workspace-wide, then app-scoped) for `environment`,
/// hashed with `key`. Entries of a later layer replace entries of the same name of an earlier one.
/// Every problem is reported, not just the first.
pub fn materialize(
    key: &HashKey,
    environment: &str,
    layers: &[&EnvironmentConfigSpec],
    secrets: &SecretData,
) -> Result<Materialized, Vec<Unresolved>> {
    let mut m = Materializing::new(secrets);
    m.resolve_constants(layers);
    m.resolve_data_sources(layers);
    m.check_value_lengths();
    if !m.problems.is_empty() {
        return Err(m.problems.into_iter().collect());
    }
    Ok(m.into_materialized(key, environment))
}

/// One run of [`materialize`]: the Secrets it reads, what it has resolved so far and every
/// problem it has met.
struct Materializing<'a> {
    secrets: &'a SecretData,
    problems: BTreeSet<Unresolved>,
    /// Constant name -> type and value.
    constants: BTreeMap<&'a str, (ConstantType, Vec<u8>)>,
    /// Data source name -> its entry of the data source document.
    sources: BTreeMap<&'a str, Value>,
    /// The Secret constants that secret options become: name -> (the option, as named in
    /// problems), value.
    option_secrets: BTreeMap<String, (String, Vec<u8>)>,
}

impl<'a> Materializing<'a> {
    fn new(secrets: &'a SecretData) -> Self {
        Materializing {
            secrets,
            problems: BTreeSet::new(),
            constants: BTreeMap::new(),
            sources: BTreeMap::new(),
            option_secrets: BTreeMap::new(),
        }
    }

    /// The value `r` refers to; `None` when its Secret or key is missing, a problem recorded
    /// against `used_by`.
    fn lookup(&mut self, r: &SecretKeySelector, used_by: &dyn Fn() -> String) -> Option<Vec<u8>> {
        let Some(data) = self.secrets.get(&r.name) else {
            self.problems.insert(Unresolved::SecretNotFound {
                secret: r.name.clone(),
                key: r.key.clone(),
                used_by: used_by(),
            });
            return None;
        };
        match data.get(&r.key) {
            Some(v) => Some(v.clone()),
            None => {
                self.problems.insert(Unresolved::KeyNotFound {
                    secret: r.name.clone(),
                    key: r.key.clone(),
                    used_by: used_by(),
                });
                None
            }
        }
    }

    /// Constants: the last layer that defines a name wins (its type included).
    fn resolve_constants(&mut self, layers: &[&'a EnvironmentConfigSpec]) {
        for layer in layers {
            for c in &layer.constants {
                let value = match (c.type_, &c.value, &c.value_from) {
                    (ConstantType::Global, Some(v), _) => Some(v.clone().into_bytes()),
                    (_, _, Some(src)) => {
                        self.lookup(&src.secret_key_ref, &|| format!("constants[{}]", c.name))
                    }
                    // The schema makes every other shape impossible; skip rather than guess.
                    _ => None,
                };
                if let Some(v) = value {
                    self.constants.insert(&c.name, (c.type_, v));
                } else {
                    self.constants.remove(c.name.as_str());
                }
            }
        }
    }

    /// Data sources: the last layer that defines a name wins, as a whole. Each secret option
    /// becomes a Secret constant of the stage (ToolJet resolves `{{secrets.NAME}}` in a data
    /// source's options at query time, for the environment the query runs in); the option itself
    /// holds that reference, so the data source document carries no credential.
    ///
    /// Runs after [`Materializing::resolve_constants`]: a secret option's constant may share a
    /// name only with a Secret constant of the same value.
    fn resolve_data_sources(&mut self, layers: &[&'a EnvironmentConfigSpec]) {
        let mut winners: BTreeMap<&str, &DataSource> = BTreeMap::new();
        for layer in layers {
            for ds in &layer.data_sources {
                winners.insert(&ds.name, ds);
            }
        }
        for (name, ds) in &winners {
            let entry = self.data_source_entry(ds);
            self.sources.insert(name, entry);
        }
    }

    /// A data source's entry of the document: its kind, and its options with each secret option
    /// replaced by `{{secrets.<its constant>}}` (the value carried as that constant).
    fn data_source_entry(&mut self, ds: &DataSource) -> Value {
        let mut options: Map<String, Value> = ds
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (option, src) in &ds.secret_options {
            let constant = option_constant(&ds.name, option);
            options.insert(
                option.clone(),
                Value::String(format!("{{{{secrets.{constant}}}}}")),
            );
            self.carry_secret_option(ds, option, src, constant);
        }
        let mut entry = Map::new();
        entry.insert("kind".into(), Value::String(ds.kind.clone()));
        entry.insert("options".into(), Value::Object(options));
        Value::Object(entry)
    }

    /// Carries the value of secret option `option` of `ds` as Secret constant `constant`, unless
    /// it is missing, not text, or the name is taken (each a problem). A Secret constant of that
    /// name and value already carries it.
    fn carry_secret_option(
        &mut self,
        ds: &DataSource,
        option: &str,
        src: &SecretValueSource,
        constant: String,
    ) {
        let used_by = || format!("dataSources[{}].secretOptions.{option}", ds.name);
        let Some(bytes) = self.lookup(&src.secret_key_ref, &used_by) else {
            return;
        };
        if std::str::from_utf8(&bytes).is_err() {
            self.problems.insert(Unresolved::NotText {
                secret: src.secret_key_ref.name.clone(),
                key: src.secret_key_ref.key.clone(),
                used_by: used_by(),
            });
            return;
        }
        if let Some(taken_by) = self.taken_by(&constant, &bytes) {
            self.problems.insert(Unresolved::NameTaken {
                name: constant.clone(),
                used_by: used_by(),
                taken_by,
            });
            return;
        }
        if !self.constants.contains_key(constant.as_str()) {
            self.option_secrets.insert(constant, (used_by(), bytes));
        }
    }

    /// What already holds constant name `constant` with something other than secret value
    /// `bytes`. One name, one value: the name may be shared only with the same secret value.
    fn taken_by(&self, constant: &str, bytes: &[u8]) -> Option<String> {
        match (
            self.option_secrets.get(constant),
            self.constants.get(constant),
        ) {
            (Some((other, value)), _) if value.as_slice() != bytes => Some(other.clone()),
            (_, Some((ConstantType::Global, _))) => Some(format!("Global constants[{constant}]")),
            (_, Some((ConstantType::Secret, value))) if value.as_slice() != bytes => {
                Some(format!("constants[{constant}] (with another value)"))
            }
            _ => None,
        }
    }

    /// ToolJet's limit on a constant's value, for values read from Secrets (inline values are
    /// held to it by the schema).
    fn check_value_lengths(&mut self) {
        for (name, (_, value)) in &self.constants {
            if value.len() > MAX_CONSTANT_VALUE {
                self.problems.insert(Unresolved::TooLong {
                    name: name.to_string(),
                    len: value.len(),
                });
            }
        }
        for (name, (_, value)) in &self.option_secrets {
            if value.len() > MAX_CONSTANT_VALUE {
                self.problems.insert(Unresolved::TooLong {
                    name: name.clone(),
                    len: value.len(),
                });
            }
        }
    }

    /// The Secret data (every constant under its key for `environment`, and the data source
    /// document) and its hash with `key`.
    fn into_materialized(self, key: &HashKey, environment: &str) -> Materialized {
        let mut data = BTreeMap::new();
        for (name, (kind, value)) in &self.constants {
            data.insert(constant_key(environment, *kind, name), value.clone());
        }
        for (name, (_, value)) in &self.option_secrets {
            data.insert(
                constant_key(environment, ConstantType::Secret, name),
                value.clone(),
            );
        }
        let document: Map<String, Value> = self
            .sources
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        // serde_json's Map is ordered by key here (no preserve_order feature): deterministic bytes.
        data.insert(
            DATASOURCES_KEY.to_string(),
            serde_json::to_vec(&Value::Object(document)).expect("JSON values serialize"),
        );
        Materialized {
            hash: hash(key, &data),
            data,
            data_sources: self.sources.len(),
            constants: self.constants.len() + self.option_secrets.len(),
        }
    }
}

/// Two apps a workload serves that give one of its constants different values, or one name
/// both as a Global and as a Secret constant (ToolJet's lookup by name does not tell them apart,
/// so a Global one could resolve, in the browser, to the other's secret).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Clash {
    /// The variable, e.g. `TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL`.
    pub key: String,
    /// The apps that disagree, sorted.
    pub apps: Vec<String>,
    /// The apps give the name different types (Global in one, Secret in another).
    pub types_differ: bool,
}

impl std::fmt::Display for Clash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, env, name) = parse_constant_key(&self.key)
            .map(|(k, e, n)| {
                let kind = match k {
                    ConstantType::Global => "constant",
                    ConstantType::Secret => "secret constant",
                };
                (kind, e, n)
            })
            .unwrap_or(("variable", "", &self.key));
        let apps = self.apps.join(" and ");
        if self.types_differ {
            write!(
                f,
                "constant {name} of {env} is a Global constant in one and a Secret constant in another of apps {apps}"
            )
        } else {
            write!(f, "{kind} {name} of {env} differs between apps {apps}")
        }
    }
}

/// One (app, stage) a workload serves, and that stage's configuration for the app (workspace
/// entries overridden by the app's: [`merge_layers`]).
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub app: &'a str,
    pub stage: &'a str,
    pub config: &'a BTreeMap<String, Vec<u8>>,
}

/// What one workload reads: the constants of every (app, stage) it serves, and nothing else.
/// ToolJet has no app-scoped constant: one server has one value per (environment, name), so
/// two apps it serves that give a name different values are a [`Clash`], never settled by an
/// order. Stages do not clash (the stage is part of each variable's name), so one workload may
/// serve every stage.
pub fn workload(key: &HashKey, claims: &[Claim]) -> Result<Materialized, Vec<Clash>> {
    let mut data: BTreeMap<String, (Vec<u8>, &str)> = BTreeMap::new();
    // (environment, name) -> (type, app): one name is one constant, whatever its type.
    let mut names: BTreeMap<(&str, &str), (ConstantType, &str)> = BTreeMap::new();
    let mut clashes: BTreeMap<String, (BTreeSet<String>, bool)> = BTreeMap::new();
    let mut clash = |k: &str, apps: [&str; 2], types_differ: bool| {
        let entry = clashes.entry(k.to_string()).or_default();
        entry.0.extend(apps.map(str::to_string));
        entry.1 |= types_differ;
    };
    for claim in claims {
        for (k, v) in claim.config {
            let Some((kind, env, name)) = parse_constant_key(k) else {
                continue; // datasources.json: nothing ToolJet reads from its environment
            };
            if env != claim.stage {
                continue;
            }
            match names.get(&(env, name)) {
                Some((other, app)) if *other != kind => {
                    clash(k, [app, claim.app], true);
                    continue;
                }
                Some(_) => {}
                None => {
                    names.insert((env, name), (kind, claim.app));
                }
            }
            match data.get(k) {
                Some((existing, app)) if existing != v => clash(k, [app, claim.app], false),
                Some(_) => {}
                None => {
                    data.insert(k.clone(), (v.clone(), claim.app));
                }
            }
        }
    }
    if !clashes.is_empty() {
        return Err(clashes
            .into_iter()
            .map(|(key, (apps, types_differ))| Clash {
                key,
                apps: apps.into_iter().collect(),
                types_differ,
            })
            .collect());
    }
    let data: BTreeMap<String, Vec<u8>> = data.into_iter().map(|(k, (v, _))| (k, v)).collect();
    Ok(Materialized {
        hash: hash(key, &data),
        constants: data.len(),
        data_sources: 0,
        data,
    })
}

/// A constant key parsed back: (type, environment, name).
pub fn parse_constant_key(key: &str) -> Option<(ConstantType, &str, &str)> {
    let (kind, rest) = if let Some(rest) = key.strip_prefix("TOOLJET_GLOBAL_CONSTANTS__") {
        (ConstantType::Global, rest)
    } else {
        (
            ConstantType::Secret,
            key.strip_prefix("TOOLJET_SECRET_CONSTANTS__")?,
        )
    };
    // Stage names have no '_', so the first "__" ends the environment.
    let (environment, name) = rest.split_once("__")?;
    Some((kind, environment, name))
}

/// A data source document (`datasources.json`: name -> the data source) reduced to its names,
/// each mapped to `null`: what [`merge_layers`] and [`missing_requirements`] read of it, and what
/// the caches keep of it ([`crate::cache::secret`]). A document that is not a JSON object is kept
/// as it is (neither reads anything from it).
pub fn data_source_names(document: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<BTreeMap<String, serde::de::IgnoredAny>>(document) {
        Ok(names) => serde_json::to_vec(&names.keys().map(|n| (n, ())).collect::<BTreeMap<_, _>>())
            .expect("names serialize"),
        Err(_) => document.to_vec(),
    }
}

/// Merges materialised data (of the workspace-wide and the app's EnvironmentConfig, lowest
/// precedence first) into one configuration: a later layer's constant replaces an earlier one of
/// the same name (whatever its type), its data source replaces one of the same name. Hashed with
/// `key`, as [`materialize`] hashes.
pub fn merge_layers(key: &HashKey, layers: &[&BTreeMap<String, Vec<u8>>]) -> Materialized {
    let mut constants: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
    let mut sources: Map<String, Value> = Map::new();
    for layer in layers {
        for (key, value) in layer.iter() {
            if let Some((_, _, name)) = parse_constant_key(key) {
                constants.insert(name.to_string(), (key.clone(), value.clone()));
            }
        }
        if let Some(Value::Object(doc)) = layer
            .get(DATASOURCES_KEY)
            .and_then(|d| serde_json::from_slice(d).ok())
        {
            sources.extend(doc);
        }
    }
    let mut data: BTreeMap<String, Vec<u8>> = constants.values().cloned().collect();
    let data_sources = sources.len();
    data.insert(
        DATASOURCES_KEY.to_string(),
        serde_json::to_vec(&Value::Object(sources)).expect("JSON values serialize"),
    );
    Materialized {
        hash: hash(key, &data),
        data,
        data_sources,
        constants: constants.len(),
    }
}

/// Something a version needs that its stage's configuration lacks; shown as `constant X`,
/// `data source X` or `secret X` (and ordered so).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Missing {
    /// A Global constant (`{{constants.X}}`), or a required constant of either type.
    Constant(String),
    DataSource(String),
    /// A Secret constant (`{{secrets.X}}`).
    Secret(String),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Constant(name) => write!(f, "constant {name}"),
            Missing::DataSource(name) => write!(f, "data source {name}"),
            Missing::Secret(name) => write!(f, "secret {name}"),
        }
    }
}

/// The names a version needs and the configuration of its stage lacks ([`Missing`]), sorted.
pub fn missing_requirements(
    required_sources: &[String],
    required_constants: &[String],
    references: &References,
    resolved: &BTreeMap<String, Vec<u8>>,
) -> Vec<Missing> {
    let mut globals = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for key in resolved.keys() {
        match parse_constant_key(key) {
            Some((ConstantType::Global, _, name)) => globals.insert(name.to_string()),
            Some((ConstantType::Secret, _, name)) => secrets.insert(name.to_string()),
            None => false,
        };
    }
    let sources: BTreeSet<String> = match resolved
        .get(DATASOURCES_KEY)
        .and_then(|d| serde_json::from_slice(d).ok())
    {
        Some(Value::Object(doc)) => doc.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    let References {
        constants: ref_constants,
        secrets: ref_secrets,
    } = references;

    let mut missing = BTreeSet::new();
    for s in required_sources.iter().filter(|s| !sources.contains(*s)) {
        missing.insert(Missing::DataSource(s.clone()));
    }
    for c in required_constants
        .iter()
        .filter(|c| !globals.contains(*c) && !secrets.contains(*c))
    {
        missing.insert(Missing::Constant(c.clone()));
    }
    for c in ref_constants.iter().filter(|c| !globals.contains(*c)) {
        missing.insert(Missing::Constant(c.clone()));
    }
    for c in ref_secrets.iter().filter(|c| !secrets.contains(*c)) {
        missing.insert(Missing::Secret(c.clone()));
    }
    missing.into_iter().collect()
}

/// HMAC-SHA256 (hex) with `key` over the keys and values, each length-prefixed so no two maps
/// collide. Keyed so that a hash users can read does not let them test guesses of a value.
pub fn hash(key: &HashKey, data: &BTreeMap<String, Vec<u8>>) -> String {
    hex(&key.mac(data.iter().flat_map(|(k, v)| [k.as_bytes(), v.as_slice()])))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the materialised Secret for (app-or-workspace, environment).
///
/// `tooljet.<environment>` workspace-wide, `tooljet.<environment>.<app>` for an app. Stage names
/// cannot contain dots, so no two keys share a name. A name that would exceed 253 characters is
/// shortened with a hash of the full name.
pub fn secret_name(app: Option<&str>, environment: &str) -> String {
    let full = match app {
        Some(app) => format!("tooljet.{environment}.{app}"),
        None => format!("tooljet.{environment}"),
    };
    bounded_name(full)
}

/// The name of a rollout Deployment's workload Secret: `tooljet-workload.<deployment>`.
pub fn workload_secret_name(deployment: &str) -> String {
    bounded_name(format!("tooljet-workload.{deployment}"))
}

/// The name of an AppVersion's resolved-config Secret.
pub fn resolved_secret_name(version: &str) -> String {
    bounded_name(format!("tooljet-version.{version}"))
}

fn bounded_name(full: String) -> String {
    if full.len() <= 253 {
        return full;
    }
    let digest = hex(&Sha256::digest(full.as_bytes()))[..16].to_string();
    let mut cut = full[..253 - 17].trim_end_matches(['.', '-']).to_string();
    cut.push('-');
    cut.push_str(&digest);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Constant, DataSource, SecretValueSource};
    use serde_json::json;

    fn key() -> HashKey {
        HashKey::new(&[7; HashKey::LEN]).unwrap()
    }

    fn secret_ref(name: &str, key: &str) -> SecretValueSource {
        SecretValueSource {
            secret_key_ref: SecretKeySelector {
                name: name.into(),
                key: key.into(),
            },
        }
    }

    fn global(name: &str, value: &str) -> Constant {
        Constant {
            name: name.into(),
            type_: ConstantType::Global,
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn secret_constant(name: &str, secret: &str, key: &str) -> Constant {
        Constant {
            name: name.into(),
            type_: ConstantType::Secret,
            value: None,
            value_from: Some(secret_ref(secret, key)),
        }
    }

    fn spec() -> EnvironmentConfigSpec {
        EnvironmentConfigSpec {
            environment: "staging".into(),
            app: Some("crm".into()),
            data_sources: vec![DataSource {
                name: "crm-db".into(),
                kind: "postgresql".into(),
                options: [
                    ("host".to_string(), json!("db.staging")),
                    ("port".to_string(), json!(5432)),
                ]
                .into(),
                secret_options: [("password".to_string(), secret_ref("creds", "pg"))].into(),
            }],
            constants: vec![
                global("API_URL", "https://staging"),
                secret_constant("STRIPE_KEY", "creds", "stripe"),
            ],
        }
    }

    fn secrets() -> SecretData {
        [(
            "creds".to_string(),
            [
                ("pg".to_string(), b"pg-pass".to_vec()),
                ("stripe".to_string(), b"sk_test".to_vec()),
            ]
            .into(),
        )]
        .into()
    }

    #[test]
    fn keys_follow_tooljets_env_var_convention() {
        let m = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        let keys: Vec<&str> = m.data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "TOOLJET_GLOBAL_CONSTANTS__staging__API_URL",
                "TOOLJET_SECRET_CONSTANTS__staging__CRM_DB_PASSWORD",
                "TOOLJET_SECRET_CONSTANTS__staging__STRIPE_KEY",
                "datasources.json"
            ]
        );
        assert_eq!(
            m.data["TOOLJET_SECRET_CONSTANTS__staging__CRM_DB_PASSWORD"],
            b"pg-pass"
        );
        assert_eq!(
            m.data["TOOLJET_GLOBAL_CONSTANTS__staging__API_URL"],
            b"https://staging"
        );
        assert_eq!(
            m.data["TOOLJET_SECRET_CONSTANTS__staging__STRIPE_KEY"],
            b"sk_test"
        );
        assert_eq!((m.constants, m.data_sources), (3, 1));
    }

    #[test]
    fn a_secret_option_is_a_secret_constant_and_the_document_holds_its_reference() {
        let m = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        let doc: Value = serde_json::from_slice(&m.data[DATASOURCES_KEY]).unwrap();
        assert_eq!(
            doc,
            json!({ "crm-db": { "kind": "postgresql", "options": { "host": "db.staging", "port": 5432, "password": "{{secrets.CRM_DB_PASSWORD}}" } } })
        );
        assert!(!String::from_utf8_lossy(&m.data[DATASOURCES_KEY]).contains("pg-pass"));
    }

    #[test]
    fn a_secret_option_whose_constant_name_is_taken_is_refused_by_name() {
        // The same name with the same secret value is one constant.
        let mut same = spec();
        same.constants
            .push(secret_constant("CRM_DB_PASSWORD", "creds", "pg"));
        let m = materialize(&key(), "staging", &[&same], &secrets()).unwrap();
        assert_eq!(
            m.data["TOOLJET_SECRET_CONSTANTS__staging__CRM_DB_PASSWORD"],
            b"pg-pass"
        );
        assert_eq!(m.constants, 3);
        // Another value, or a Global constant of that name, is refused.
        let mut other = spec();
        other
            .constants
            .push(secret_constant("CRM_DB_PASSWORD", "creds", "stripe"));
        let problems = materialize(&key(), "staging", &[&other], &secrets()).unwrap_err();
        assert_eq!(Unresolved::reason(&problems), "NameConflict");
        let text = Unresolved::describe(&problems);
        assert!(
            text.contains(
                "dataSources[crm-db].secretOptions.password is carried as secret constant CRM_DB_PASSWORD, which constants[CRM_DB_PASSWORD] (with another value) already is"
            ),
            "{text}"
        );
        let mut global = spec();
        global
            .constants
            .push(super::tests::global("CRM_DB_PASSWORD", "x"));
        let problems = materialize(&key(), "staging", &[&global], &secrets()).unwrap_err();
        assert!(Unresolved::describe(&problems).contains("Global constants[CRM_DB_PASSWORD]"));
    }

    #[test]
    fn a_value_longer_than_tooljet_accepts_is_refused_without_showing_it() {
        let mut data = secrets();
        data.get_mut("creds")
            .unwrap()
            .insert("stripe".into(), vec![b'x'; MAX_CONSTANT_VALUE + 1]);
        let problems = materialize(&key(), "staging", &[&spec()], &data).unwrap_err();
        assert_eq!(
            Unresolved::describe(&problems),
            "the value of constant STRIPE_KEY has 10001 bytes; ToolJet accepts at most 10000: shorten it in its Secret"
        );
    }

    #[test]
    fn a_workload_serves_every_stage_and_app_and_names_what_apps_disagree_on() {
        let config = |pairs: &[(&str, &str)]| -> BTreeMap<String, Vec<u8>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .chain([(DATASOURCES_KEY.to_string(), b"{}".to_vec())])
                .collect()
        };
        let crm_prod = config(&[
            ("TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL", "warn"),
            ("TOOLJET_SECRET_CONSTANTS__production__CRM_DB_PASSWORD", "p"),
        ]);
        let crm_staging = config(&[("TOOLJET_GLOBAL_CONSTANTS__staging__LOG_LEVEL", "info")]);
        let hr_prod = config(&[
            ("TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL", "warn"),
            ("TOOLJET_SECRET_CONSTANTS__production__HR_DB_PASSWORD", "q"),
        ]);
        let claim = |app, stage, config| Claim { app, stage, config };
        let m = workload(
            &key(),
            &[
                claim("crm", "production", &crm_prod),
                claim("crm", "staging", &crm_staging),
                claim("hr", "production", &hr_prod),
            ],
        )
        .unwrap();
        assert_eq!(
            m.data.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL",
                "TOOLJET_GLOBAL_CONSTANTS__staging__LOG_LEVEL",
                "TOOLJET_SECRET_CONSTANTS__production__CRM_DB_PASSWORD",
                "TOOLJET_SECRET_CONSTANTS__production__HR_DB_PASSWORD",
            ],
            "constants only: datasources.json is nothing ToolJet reads"
        );
        let hr_info = config(&[("TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL", "info")]);
        let clashes = workload(
            &key(),
            &[
                claim("hr", "production", &hr_info),
                claim("crm", "production", &crm_prod),
            ],
        )
        .unwrap_err();
        assert_eq!(
            clashes,
            vec![Clash {
                key: "TOOLJET_GLOBAL_CONSTANTS__production__LOG_LEVEL".into(),
                apps: vec!["crm".into(), "hr".into()],
                types_differ: false,
            }]
        );
        assert_eq!(
            clashes[0].to_string(),
            "constant LOG_LEVEL of production differs between apps crm and hr"
        );
        // One name as a Global constant in one app and a Secret one in another: ToolJet finds
        // constants by name, so {{constants.X}} could resolve, in the browser, to the secret.
        let hr_secret = config(&[("TOOLJET_SECRET_CONSTANTS__production__LOG_LEVEL", "s3cret")]);
        let clashes = workload(
            &key(),
            &[
                claim("crm", "production", &crm_prod),
                claim("hr", "production", &hr_secret),
            ],
        )
        .unwrap_err();
        assert_eq!(clashes.len(), 1);
        assert!(clashes[0].types_differ);
        assert_eq!(
            clashes[0].to_string(),
            "constant LOG_LEVEL of production is a Global constant in one and a Secret constant in another of apps crm and hr"
        );
    }

    /// What FORMAT 2 makes of `spec()`. A change that alters it changes what every stage
    /// configuration's Secret holds: bump [`FORMAT`], so that no restarted operator keeps a Secret
    /// made the old way (then pin the new output here).
    #[test]
    fn the_output_format_is_pinned() {
        let m = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        assert_eq!(
            (FORMAT, m.hash.as_str()),
            (
                2,
                "0d14a6366cd4b337377f78f276ef8fad385418c6e0bbda8029a3e8e2d72fa9be"
            ),
            "materialize's output changed: bump materialize::FORMAT and pin the new hash"
        );
    }

    #[test]
    fn hash_is_stable_and_changes_with_any_value() {
        let a = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        let b = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        assert_eq!(a.hash, b.hash);
        let mut rotated = secrets();
        rotated
            .get_mut("creds")
            .unwrap()
            .insert("pg".into(), b"new".to_vec());
        assert_ne!(
            materialize(&key(), "staging", &[&spec()], &rotated)
                .unwrap()
                .hash,
            a.hash
        );
        assert_eq!(a.hash.len(), 64);
    }

    #[test]
    fn the_hash_is_keyed_same_key_same_hash_other_key_other_hash() {
        let data = materialize(&key(), "staging", &[&spec()], &secrets())
            .unwrap()
            .data;
        let other = HashKey::new(&[8; HashKey::LEN]).unwrap();
        assert_eq!(hash(&key(), &data), hash(&key(), &data));
        assert_ne!(hash(&key(), &data), hash(&other, &data));
        assert_ne!(
            materialize(&key(), "staging", &[&spec()], &secrets())
                .unwrap()
                .hash,
            materialize(&other, "staging", &[&spec()], &secrets())
                .unwrap()
                .hash,
        );
    }

    #[test]
    fn the_hash_is_not_a_plain_digest_of_the_content() {
        let data: BTreeMap<String, Vec<u8>> = [("PIN".to_string(), b"1234".to_vec())].into();
        let mut plain = Sha256::new();
        plain.update(3u64.to_be_bytes());
        plain.update(b"PIN");
        plain.update(4u64.to_be_bytes());
        plain.update(b"1234");
        let keyed = hash(&key(), &data);
        assert_eq!(keyed.len(), 64);
        assert_ne!(keyed, hex(&plain.finalize()));
        assert_ne!(keyed, hex(&Sha256::digest(b"1234")));
    }

    #[test]
    fn a_hash_key_has_exactly_32_bytes_and_never_shows_them() {
        assert_eq!(
            HashKey::new(&[1; 31]).unwrap_err(),
            InvalidHashKey { len: 31 }
        );
        assert!(HashKey::new(&[1; 33]).is_err());
        let shown = format!("{:?}", HashKey::new(&[0xab; 32]).unwrap());
        assert_eq!(shown, "HashKey(<redacted>)");
    }

    #[test]
    fn every_missing_reference_is_reported_by_name_without_values() {
        let mut s = spec();
        s.constants.push(secret_constant("OTHER", "absent", "k"));
        let mut data = secrets();
        data.get_mut("creds").unwrap().remove("pg");
        let problems = materialize(&key(), "staging", &[&s], &data).unwrap_err();
        assert_eq!(
            problems,
            vec![
                Unresolved::SecretNotFound {
                    secret: "absent".into(),
                    key: "k".into(),
                    used_by: "constants[OTHER]".into()
                },
                Unresolved::KeyNotFound {
                    secret: "creds".into(),
                    key: "pg".into(),
                    used_by: "dataSources[crm-db].secretOptions.password".into()
                },
            ]
        );
        assert_eq!(Unresolved::reason(&problems), "SecretNotFound");
        let text = Unresolved::describe(&problems);
        assert!(
            text.contains("Secret absent not found")
                && text.contains("key pg not found in Secret creds")
        );
        assert!(!text.contains("sk_test"));
    }

    #[test]
    fn the_fix_for_missing_secrets_and_keys_is_a_command_per_secret() {
        let problems = vec![
            Unresolved::SecretNotFound {
                secret: "hr-staging-datasources".into(),
                key: "pg.password".into(),
                used_by: "dataSources[pg].secretOptions.password".into(),
            },
            Unresolved::SecretNotFound {
                secret: "hr-staging-datasources".into(),
                key: "pg.ssh_password".into(),
                used_by: "dataSources[pg].secretOptions.ssh_password".into(),
            },
            Unresolved::KeyNotFound {
                secret: "creds".into(),
                key: "stripe".into(),
                used_by: "constants[STRIPE_KEY]".into(),
            },
        ];
        assert_eq!(
            Unresolved::fixes(&problems, "acme"),
            vec![
                "kubectl -n acme create secret generic hr-staging-datasources --from-file=pg.password=<file> --from-file=pg.ssh_password=<file> (each <file> holding the value)",
                r#"kubectl -n acme patch secret creds --type merge --patch-file <file> (<file> holding {"stringData":{"stripe":"<value>"}})"#,
            ]
        );
    }

    #[test]
    fn binary_secret_values_are_fine_for_constants_but_not_for_data_source_options() {
        let mut data = secrets();
        data.get_mut("creds")
            .unwrap()
            .insert("stripe".into(), vec![0xff, 0x00]);
        assert!(materialize(&key(), "staging", &[&spec()], &data).is_ok());
        data.get_mut("creds")
            .unwrap()
            .insert("pg".into(), vec![0xff, 0x00]);
        let problems = materialize(&key(), "staging", &[&spec()], &data).unwrap_err();
        assert_eq!(Unresolved::reason(&problems), "InvalidSecretValue");
    }

    #[test]
    fn later_layers_override_earlier_ones_by_name() {
        let mut workspace = spec();
        workspace.app = None;
        workspace.constants = vec![
            global("API_URL", "https://workspace"),
            global("SUPPORT", "help@acme"),
        ];
        workspace.data_sources[0].kind = "mysql".into();
        let app = spec();
        let m = materialize(&key(), "staging", &[&workspace, &app], &secrets()).unwrap();
        assert_eq!(
            m.data["TOOLJET_GLOBAL_CONSTANTS__staging__API_URL"],
            b"https://staging"
        );
        assert_eq!(
            m.data["TOOLJET_GLOBAL_CONSTANTS__staging__SUPPORT"],
            b"help@acme"
        );
        let doc: Value = serde_json::from_slice(&m.data[DATASOURCES_KEY]).unwrap();
        assert_eq!(doc["crm-db"]["kind"], "postgresql");
        // API_URL, SUPPORT, STRIPE_KEY and the data source's CRM_DB_PASSWORD.
        assert_eq!(m.constants, 4);
    }

    #[test]
    fn an_override_may_change_a_constants_type() {
        let mut workspace = spec();
        workspace.constants = vec![global("STRIPE_KEY", "not-secret")];
        let m = materialize(&key(), "staging", &[&workspace, &spec()], &secrets()).unwrap();
        assert!(
            !m.data
                .contains_key("TOOLJET_GLOBAL_CONSTANTS__staging__STRIPE_KEY")
        );
        assert_eq!(
            m.data["TOOLJET_SECRET_CONSTANTS__staging__STRIPE_KEY"],
            b"sk_test"
        );
    }

    #[test]
    fn empty_config_still_has_a_datasources_document() {
        let empty = EnvironmentConfigSpec {
            environment: "development".into(),
            app: None,
            data_sources: vec![],
            constants: vec![],
        };
        let m = materialize(&key(), "development", &[&empty], &SecretData::new()).unwrap();
        assert_eq!(m.data[DATASOURCES_KEY], b"{}");
    }

    #[test]
    fn referenced_secrets_are_collected_once() {
        assert_eq!(
            referenced_secrets(&spec()).into_iter().collect::<Vec<_>>(),
            ["creds"]
        );
    }

    #[test]
    fn secret_names_are_unambiguous_and_bounded() {
        assert_eq!(secret_name(Some("crm"), "staging"), "tooljet.staging.crm");
        assert_eq!(secret_name(None, "staging"), "tooljet.staging");
        // "a-b" in "c" and "a" in "b-c" must not collide.
        assert_ne!(secret_name(Some("a-b"), "c"), secret_name(Some("c"), "a-b"));
        let long = "a".repeat(250);
        let name = secret_name(Some(&long), "production");
        assert!(name.len() <= 253, "{}", name.len());
        assert_ne!(name, secret_name(Some(&"a".repeat(249)), "production"));
    }

    #[test]
    fn constant_keys_parse_back() {
        assert_eq!(
            parse_constant_key("TOOLJET_SECRET_CONSTANTS__my-stage__A__B"),
            Some((ConstantType::Secret, "my-stage", "A__B"))
        );
        assert_eq!(parse_constant_key("datasources.json"), None);
    }

    #[test]
    fn merged_layers_let_the_app_override_the_workspace() {
        let ws = materialize(
            &key(),
            "staging",
            &[&EnvironmentConfigSpec {
                environment: "staging".into(),
                app: None,
                data_sources: vec![],
                constants: vec![global("STRIPE_KEY", "plain"), global("SUPPORT", "help")],
            }],
            &SecretData::new(),
        )
        .unwrap();
        let app = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        let merged = merge_layers(&key(), &[&ws.data, &app.data]);
        let direct = materialize(
            &key(),
            "staging",
            &[
                &EnvironmentConfigSpec {
                    environment: "staging".into(),
                    app: None,
                    data_sources: vec![],
                    constants: vec![global("STRIPE_KEY", "plain"), global("SUPPORT", "help")],
                },
                &spec(),
            ],
            &secrets(),
        )
        .unwrap();
        assert_eq!(
            merged, direct,
            "merging materialised layers equals materialising the layered specs"
        );
        assert!(
            !merged
                .data
                .contains_key("TOOLJET_GLOBAL_CONSTANTS__staging__STRIPE_KEY")
        );
    }

    #[test]
    fn missing_requirements_are_named_by_kind() {
        let m = materialize(&key(), "staging", &[&spec()], &secrets()).unwrap();
        let def = json!({ "a": "{{constants.API_URL}} {{secrets.STRIPE_KEY}} {{secrets.API_URL}} {{constants.GONE}}" });
        let missing = missing_requirements(
            &["crm-db".into(), "crm-api".into()],
            &["STRIPE_KEY".into(), "LOG_LEVEL".into()],
            &References::of(Some(&def)),
            &m.data,
        );
        assert_eq!(
            missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "constant GONE",
                "constant LOG_LEVEL",
                "data source crm-api",
                "secret API_URL"
            ]
        );
    }
}
