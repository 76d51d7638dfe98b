//! What the operator keeps in memory of each EnvironmentConfig.
//!
//! Every controller and the admission webhook read a cached config's metadata, its key (app and
//! environment) and its status; only the EnvironmentConfig reconcile, when it checks or
//! materialises, reads its data sources and constants. Typed, those are most of a cached config:
//! every name, value, option and Secret reference a string of its own. A [`CachedConfig`] keeps
//! them as the compact JSON they came in (one allocation), and [`CachedConfig::spec`] reads them
//! back (the saving is measured in docs/benchmarks.md).

use std::borrow::Cow;

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::lean::Lean;
use crate::api::{
    Constant, DataSource, EnvironmentConfig, EnvironmentConfigSpec, EnvironmentConfigStatus,
};

/// An EnvironmentConfig as cached: metadata, key and status as they are, data sources and
/// constants packed. Built from the object ([`CachedConfig::from`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CachedConfig {
    pub metadata: ObjectMeta,
    /// `spec.app` and `spec.environment`.
    pub spec: ConfigScope,
    /// `spec.dataSources` and `spec.constants`, as JSON.
    entries: Box<[u8]>,
    pub status: Option<EnvironmentConfigStatus>,
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
struct Entries {
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
        let entries = serde_json::to_vec(&EntriesRef {
            d: &spec.data_sources,
            c: &spec.constants,
        })
        // Serialising typed values to a Vec does not fail (string keys, no I/O); were it to,
        // the empty entries would fail to read back, never read as a spec without entries.
        .unwrap_or_default()
        .into_boxed_slice();
        CachedConfig {
            metadata,
            spec: ConfigScope {
                environment: spec.environment,
                app: spec.app,
            },
            entries,
            status,
        }
    }
}

/// The packed entries of a cached config could not be read back: a defect here, never the
/// user's input. Says where, not what: the text is never put in a message or a log.
#[derive(Debug, thiserror::Error)]
#[error(
    "its cached data sources and constants could not be read back ({category:?} error at byte {column})"
)]
pub struct UnreadableSpec {
    category: serde_json::error::Category,
    column: usize,
}

impl CachedConfig {
    /// The whole spec, its data sources and constants unpacked. An error only if the packed
    /// entries cannot be read back: the caller fails the reconcile rather than act on a partial
    /// spec.
    pub fn spec(&self) -> Result<EnvironmentConfigSpec, UnreadableSpec> {
        let Entries { d, c } =
            serde_json::from_slice(&self.entries).map_err(|e| UnreadableSpec {
                category: e.classify(),
                column: e.column(),
            })?;
        Ok(EnvironmentConfigSpec {
            environment: self.spec.environment.clone(),
            app: self.spec.app.clone(),
            data_sources: d,
            constants: c,
        })
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
        assert_eq!(cached.spec().unwrap(), cfg.spec);
        assert_eq!(cached.spec.app.as_deref(), Some("crm"));
        assert_eq!(cached.spec.environment, "staging");
        assert_eq!(cached.metadata, cfg.metadata);
        assert_eq!(cached.status, cfg.status);
    }

    #[test]
    fn entries_that_cannot_be_read_back_are_an_error_that_shows_no_value() {
        let mut cached = CachedConfig::from(config());
        cached.entries = br#"{"d":[],"c":[{"name":"API_URL","value":"s3cr3t"#.to_vec().into();
        let error = cached.spec().unwrap_err().to_string();
        assert!(error.contains("could not be read back"), "{error}");
        assert!(
            !error.contains("s3cr3t") && !error.contains("API_URL"),
            "{error}"
        );
    }

    #[test]
    fn a_workspace_wide_config_without_entries_reads_back() {
        let mut cfg = config();
        cfg.spec.app = None;
        cfg.spec.data_sources.clear();
        cfg.spec.constants.clear();
        assert_eq!(CachedConfig::from(cfg.clone()).spec().unwrap(), cfg.spec);
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
