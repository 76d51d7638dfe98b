//! What the operator keeps in memory of each EnvironmentConfig.
//!
//! Every controller and the admission webhook read a cached config's metadata, its key (app and
//! environment) and its status; only the EnvironmentConfig reconcile, when it materialises, and
//! the explanation of a configuration that cannot be materialised read its data sources and
//! constants. Typed, those are most of a cached config: every name, value, option and Secret
//! reference a string of its own. A [`CachedConfig`] keeps them as compact JSON compressed with
//! LZ4 (one allocation), and [`CachedConfig::spec`] reads them back. A config's entries repeat
//! their keys (`secretKeyRef`, `name`, `key`, option names) and their Secret's name: the
//! benchmark's 3000 configs at N=1000 pack 15.1 MB of JSON into 3.3 MB (docs/benchmarks.md).
//!
//! And only while they may be needed: a config whose status reports it materialised at its
//! generation ([`materialised_as_is`]) keeps no entries, only the names of the Secrets they
//! reference (what a rotation finds it by). That is every config of a converged installation,
//! so a restarted operator holds none. Materialising such a config again (a referenced Secret
//! rotated, its Secret edited or deleted) reads it from the API once ([`Entries::NotKept`]).

use std::borrow::Cow;

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::lean::Lean;
use crate::api::{
    Constant, DataSource, EnvironmentConfig, EnvironmentConfigSpec, EnvironmentConfigStatus,
};

/// An EnvironmentConfig as cached: metadata, key and status as they are, data sources and
/// constants packed while they may be needed. Built from the object ([`CachedConfig::from`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CachedConfig {
    pub metadata: ObjectMeta,
    /// `spec.app` and `spec.environment`.
    pub spec: ConfigScope,
    /// The Secrets its data sources and constants reference, by name, sorted.
    referenced: Box<[Box<str>]>,
    /// `spec.dataSources` and `spec.constants`, as JSON compressed with LZ4 (its length
    /// first); `None` when the status reports them materialised ([`materialised_as_is`]).
    entries: Option<Box<[u8]>>,
    pub status: Option<EnvironmentConfigStatus>,
}

/// Whether the status of a config with `metadata` reports its spec as it is materialised: Ready
/// with reason Materialized, at its generation. Such a config's Secret holds what its entries
/// make (the reconcile checks that before trusting it), so the entries are not kept.
pub fn materialised_as_is(metadata: &ObjectMeta, status: Option<&EnvironmentConfigStatus>) -> bool {
    status.is_some_and(|status| {
        metadata.generation.is_some()
            && status.observed_generation == metadata.generation
            && status.conditions.iter().any(|c| {
                c.type_ == crate::api::conditions::READY
                    && c.status == "True"
                    && c.reason == crate::api::conditions::MATERIALIZED
            })
    })
}

/// The part of a config's spec that says what it configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigScope {
    /// The stage (`spec.environment`).
    pub environment: String,
    /// The app (`spec.app`); `None` for a workspace-wide config.
    pub app: Option<String>,
}

/// The packed part of a spec, written from borrowed entries and read back as owned ones.
#[derive(Serialize)]
struct EntriesRef<'a> {
    d: &'a [DataSource],
    c: &'a [Constant],
}

#[derive(Deserialize)]
struct PackedEntries {
    d: Vec<DataSource>,
    c: Vec<Constant>,
}

impl From<EnvironmentConfig> for CachedConfig {
    fn from(cfg: EnvironmentConfig) -> CachedConfig {
        let EnvironmentConfig {
            metadata,
            spec,
            status,
        } = cfg;
        let referenced = crate::materialize::referenced_secrets(&spec)
            .into_iter()
            .map(String::into_boxed_str)
            .collect();
        let entries = (!materialised_as_is(&metadata, status.as_ref())).then(|| {
            pack(
                &serde_json::to_vec(&EntriesRef {
                    d: &spec.data_sources,
                    c: &spec.constants,
                })
                // Serialising typed values to a Vec does not fail (string keys, no I/O); were
                // it to, the empty entries would fail to read back, never read as a spec
                // without entries.
                .unwrap_or_default(),
            )
        });
        CachedConfig {
            metadata,
            spec: ConfigScope {
                environment: spec.environment,
                app: spec.app,
            },
            referenced,
            entries,
            status,
        }
    }
}

/// JSON as kept: compressed, its length first.
fn pack(json: &[u8]) -> Box<[u8]> {
    lz4_flex::compress_prepend_size(json).into_boxed_slice()
}

/// The packed entries of a cached config could not be read back: a defect here, never the
/// user's input. Says where, not what: the text is never put in a message or a log.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableSpec {
    #[error("its cached data sources and constants could not be unpacked ({0})")]
    Unpack(#[from] lz4_flex::block::DecompressError),
    #[error(
        "its cached data sources and constants could not be read back ({category:?} error at byte {column})"
    )]
    Json {
        category: serde_json::error::Category,
        column: usize,
    },
}

/// A cached config's data sources and constants, as far as the cache holds them.
#[derive(Debug, PartialEq)]
pub enum Entries {
    /// The whole spec, its data sources and constants unpacked.
    Kept(EnvironmentConfigSpec),
    /// Not kept: the status reports them materialised ([`materialised_as_is`]); read the
    /// config from the API when they are needed.
    NotKept,
}

impl CachedConfig {
    /// The whole spec, when its entries are kept. An error only if the packed entries cannot be
    /// read back: the caller fails the reconcile rather than act on a partial spec.
    pub fn spec(&self) -> Result<Entries, UnreadableSpec> {
        let Some(entries) = &self.entries else {
            return Ok(Entries::NotKept);
        };
        let json = lz4_flex::decompress_size_prepended(entries)?;
        let packed: PackedEntries =
            serde_json::from_slice(&json).map_err(|e| UnreadableSpec::Json {
                category: e.classify(),
                column: e.column(),
            })?;
        Ok(Entries::Kept(EnvironmentConfigSpec {
            environment: self.spec.environment.clone(),
            app: self.spec.app.clone(),
            data_sources: packed.d,
            constants: packed.c,
        }))
    }

    /// The names of the Secrets its data sources and constants reference
    /// ([`crate::materialize::referenced_secrets`]), kept whether or not the entries are.
    pub fn referenced(&self) -> std::collections::BTreeSet<String> {
        self.referenced.iter().map(|s| s.to_string()).collect()
    }
}

/// Read from an EnvironmentConfig's JSON, as [`Lean`] reads it (kube's controller asks its kind
/// for `Deserialize`).
impl<'de> Deserialize<'de> for CachedConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Lean::<EnvironmentConfig>::deserialize(deserializer).map(|Lean(cfg)| cfg.into())
    }
}

impl Resource for CachedConfig {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        EnvironmentConfig::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        EnvironmentConfig::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        EnvironmentConfig::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        EnvironmentConfig::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> EnvironmentConfig {
        serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
            "metadata": { "name": "crm-staging", "namespace": "team", "uid": "u-1", "generation": 2 },
            "spec": {
                "app": "crm", "environment": "staging",
                "dataSources": [{
                    "name": "db", "kind": "postgresql",
                    "options": { "host": "db.internal", "port": 5432, "ssl": { "mode": "require" }, "tags": ["a", 1, null] },
                    "secretOptions": { "password": { "secretKeyRef": { "name": "creds", "key": "pw" } } },
                }],
                "constants": [
                    { "name": "API_URL", "type": "Global", "value": "https://x \"quoted\" \u{e9}" },
                    { "name": "TOKEN", "type": "Secret", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "token" } } },
                ],
            },
            "status": { "observedGeneration": 2, "hash": "abc" },
        }))
        .unwrap()
    }

    #[test]
    fn the_spec_reads_back_exactly() {
        let cfg = config();
        let cached = CachedConfig::from(cfg.clone());
        assert_eq!(cached.spec().unwrap(), Entries::Kept(cfg.spec));
        assert_eq!(cached.spec.app.as_deref(), Some("crm"));
        assert_eq!(cached.spec.environment, "staging");
        assert_eq!(cached.metadata, cfg.metadata);
        assert_eq!(cached.status, cfg.status);
    }

    #[test]
    fn entries_that_cannot_be_read_back_are_an_error_that_shows_no_value() {
        let mut cached = CachedConfig::from(config());
        cached.entries = Some(pack(br#"{"d":[],"c":[{"name":"API_URL","value":"s3cr3t"#));
        let error = cached.spec().unwrap_err().to_string();
        assert!(error.contains("could not be read back"), "{error}");
        assert!(
            !error.contains("s3cr3t") && !error.contains("API_URL"),
            "{error}"
        );
        // Bytes that do not unpack (cut short) are an error too, naming no value either.
        let mut bytes = pack(br#"{"d":[],"c":[{"name":"API_URL","value":"s3cr3t"}]}"#).into_vec();
        bytes.truncate(bytes.len() - 4);
        cached.entries = Some(bytes.into());
        let error = cached.spec().unwrap_err().to_string();
        assert!(error.contains("could not be unpacked"), "{error}");
        assert!(
            !error.contains("s3cr3t") && !error.contains("API_URL"),
            "{error}"
        );
    }

    #[test]
    fn kept_entries_take_a_fraction_of_their_json() {
        // A workspace's shape: 6 data sources of 10 options, 2 from a Secret; 35 constants.
        let mut cfg = config();
        let mut spec = serde_json::to_value(&cfg.spec).unwrap();
        spec["dataSources"] = (0..6)
            .map(|d| {
                let options: serde_json::Map<_, _> = (0..8)
                    .map(|o| (format!("option{o}"), json!(format!("value-{o}-of-source-{d}"))))
                    .collect();
                json!({ "name": format!("source-{d}"), "kind": "postgresql", "options": options,
                    "secretOptions": {
                        "password": { "secretKeyRef": { "name": "crm-staging-db", "key": format!("pw{d}") } },
                        "token": { "secretKeyRef": { "name": "crm-staging-db", "key": format!("t{d}") } } } })
            })
            .collect();
        spec["constants"] = (0..35)
            .map(|k| json!({ "name": format!("CONSTANT_{k}"), "type": "Global", "value": format!("https://api-{k}.example.com") }))
            .collect();
        cfg.spec = serde_json::from_value(spec).unwrap();
        let json = serde_json::to_vec(&EntriesRef {
            d: &cfg.spec.data_sources,
            c: &cfg.spec.constants,
        })
        .unwrap();
        let cached = CachedConfig::from(cfg.clone());
        let kept = cached.entries.as_ref().unwrap().len();
        assert!(kept * 2 < json.len(), "{kept} of {} bytes", json.len());
        assert_eq!(cached.spec().unwrap(), Entries::Kept(cfg.spec));
    }

    #[test]
    fn a_workspace_wide_config_without_entries_reads_back() {
        let mut cfg = config();
        cfg.spec.app = None;
        cfg.spec.data_sources.clear();
        cfg.spec.constants.clear();
        assert_eq!(
            CachedConfig::from(cfg.clone()).spec().unwrap(),
            Entries::Kept(cfg.spec)
        );
    }

    /// `config()`'s status, reporting it materialised at `generation`.
    fn materialised_at(generation: i64) -> EnvironmentConfig {
        let mut cfg = config();
        cfg.status = Some(serde_json::from_value(json!({
            "observedGeneration": generation, "hash": "abc",
            "conditions": [{ "type": "Ready", "status": "True", "reason": "Materialized",
                "message": "materialised into Secret tooljet.staging.crm",
                "lastTransitionTime": "2026-12-07T00:00:00Z", "observedGeneration": generation }],
        }))
        .unwrap());
        cfg
    }

    #[test]
    fn a_config_materialised_at_its_generation_keeps_only_the_names_of_its_secrets() {
        let cached = CachedConfig::from(materialised_at(2));
        assert_eq!(cached.spec().unwrap(), Entries::NotKept);
        assert_eq!(cached.referenced(), ["creds".to_string()].into());
        // Anything else keeps the entries: another generation, not Ready, another reason.
        let mut others = vec![materialised_at(1)];
        for (field, value) in [("status", "False"), ("reason", "SecretNotFound")] {
            let mut cfg = materialised_at(2);
            let mut status = serde_json::to_value(cfg.status.take()).unwrap();
            status["conditions"][0][field] = json!(value);
            cfg.status = serde_json::from_value(status).unwrap();
            others.push(cfg);
        }
        for cfg in others {
            let cached = CachedConfig::from(cfg.clone());
            assert_eq!(
                cached.spec().unwrap(),
                Entries::Kept(cfg.spec),
                "{:?}",
                cfg.status
            );
            assert_eq!(cached.referenced(), ["creds".to_string()].into());
        }
    }

    #[test]
    fn it_is_read_from_json_like_the_kind_and_names_the_kind() {
        let json = serde_json::to_string(&config()).unwrap();
        let cached: CachedConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(cached, CachedConfig::from(config()));
        assert_eq!(CachedConfig::kind(&()), "EnvironmentConfig");
        assert_eq!(CachedConfig::api_version(&()), "tooljet.io/v1alpha1");
        assert_eq!(CachedConfig::plural(&()), "environmentconfigs");
    }
}
