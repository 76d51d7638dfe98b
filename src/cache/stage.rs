//! A stage's configuration as the caches hold it: the merged layers a version resolves to, and
//! why a configuration a version needs is missing.

use std::collections::BTreeMap;

use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use super::{
    config::CachedConfig,
    lookups::Lookups,
    ownership::{Controlled, is_stage_config},
    secret::ManagedSecret,
};
use crate::api::conditions;
use crate::materialize::{HashKey, Materialized, merge_layers, secret_name};

/// The merged configuration of (app, environment) from the materialised stage Secrets, workspace
/// first, hashed with `key`: the constants, and the data source document with the data sources'
/// names only (what the caches keep: [`ManagedSecret::layer`]). Reads only the caches. A Secret of a stage's name is a layer only
/// when [`is_stage_config`] says so; any other is ignored, its content never read.
pub fn resolve(
    key: &HashKey,
    managed: &Store<ManagedSecret>,
    configs: &Store<CachedConfig>,
    ns: &str,
    app: &str,
    environment: &str,
) -> Materialized {
    let layers: Vec<BTreeMap<String, Vec<u8>>> = [None, Some(app)]
        .into_iter()
        .filter_map(|scope| {
            let secret =
                managed.get(&ObjectRef::new(&secret_name(scope, environment)).within(ns))?;
            let owner = secret
                .controller()
                .and_then(|(name, _)| configs.get(&ObjectRef::new(name).within(ns)));
            is_stage_config(&*secret, owner.as_deref(), ns, scope, environment).then_some(secret)
        })
        .map(|s| s.layer().unwrap_or_default())
        .collect();
    merge_layers(key, &layers.iter().collect::<Vec<_>>())
}

/// Why configuration `c` cannot be materialised (its Ready message: the missing Secret or key
/// and the command that creates it), when that is so; a configuration refused as a second one
/// for its stage (reason Conflict) is not counted. What [`explain_missing`] tells, and so what a
/// version's status depends on of its stage's configurations.
pub fn unmaterialisable(c: &CachedConfig) -> Option<&str> {
    let ready = c
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY)?;
    (ready.status == "False" && ready.reason != conditions::CONFLICT)
        .then_some(ready.message.as_str())
}

/// `missing` ([`crate::materialize::missing_requirements`]) as phrases, each one that an
/// EnvironmentConfig of (app or workspace, stage) declares but that is not in the stage's
/// configuration because the config cannot be materialised told as such: the config, and its
/// Ready message (which names the missing Secret or key and the command that creates it). Reads
/// only the caches.
pub fn explain_missing(
    lookups: &Lookups,
    ns: &str,
    app: &str,
    stage: &str,
    missing: Vec<crate::materialize::Missing>,
) -> Vec<String> {
    use crate::materialize::Missing;
    if missing.is_empty() {
        return vec![];
    }
    let broken: Vec<(String, crate::api::EnvironmentConfigSpec, String)> = lookups
        .configs_for(ns, Some(app), stage)
        .into_iter()
        .chain(lookups.configs_for(ns, None, stage))
        .filter_map(|c| {
            let why = unmaterialisable(&c)?.to_string();
            // Kept: a config that cannot be materialised never reports itself materialised.
            match c.spec().ok()? {
                crate::cache::config::Entries::Kept(spec) => Some((c.name_any(), spec, why)),
                crate::cache::config::Entries::NotKept => None,
            }
        })
        .collect();
    missing
        .into_iter()
        .map(|missing| {
            let declared_by = broken.iter().find(|(_, spec, _)| match &missing {
                Missing::DataSource(name) => spec.data_sources.iter().any(|d| &d.name == name),
                Missing::Secret(name) => {
                    spec.constants.iter().any(|c| &c.name == name)
                        || spec.data_sources.iter().any(|d| {
                            d.secret_options
                                .keys()
                                .any(|o| crate::lifecycle::constants::option_constant(&d.name, o) == *name)
                        })
                }
                Missing::Constant(name) => spec.constants.iter().any(|c| &c.name == name),
            });
            let phrase = missing.to_string();
            match declared_by {
                Some((config, _, message)) => format!(
                    "{phrase} (declared by EnvironmentConfig {config}, which cannot be materialised: {message})"
                ),
                None => phrase,
            }
        })
        .collect()
}
