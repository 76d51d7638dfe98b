//! The Secrets the operator materialises: how they look, when they are up to date, how they are
//! written. Shared by the EnvironmentConfig and AppVersion controllers.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{APP_LABEL, Context, ENVIRONMENT_LABEL, Error, HASH_ANNOTATION, KIND_LABEL, MANAGER};
use crate::{
    api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    materialize::Materialized,
};

/// Why a Secret was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    /// Someone edited the Secret; its content is restored.
    DriftReverted,
}

/// The value of the `tooljet.io/app` label for an app: the name when it fits a label value (63
/// characters), else a prefix and a hash of the whole name.
pub fn app_label_value(app: &str) -> String {
    if app.len() <= 63 {
        return app.to_string();
    }
    let digest: String = Sha256::digest(app.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{digest}", app[..46].trim_end_matches(['.', '-']))
}

/// A managed Secret holding `m`, controlled by `owner`.
pub fn managed_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    kind: &str,
    environment: &str,
    app: Option<&str>,
    m: &Materialized,
) -> Secret {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (KIND_LABEL.to_string(), kind.to_string()),
        (ENVIRONMENT_LABEL.to_string(), environment.to_string()),
    ]);
    if let Some(app) = app {
        labels.insert(APP_LABEL.to_string(), app_label_value(app));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: owner.meta().namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.to_string(),
                m.hash.clone(),
            )])),
            owner_references: Some(vec![
                owner
                    .controller_owner_ref(&())
                    .expect("a stored object has a uid"),
            ]),
            ..Default::default()
        },
        data: Some(
            m.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Whether `existing` already holds exactly the desired data, our labels, hash and owner.
pub fn up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let labels_ok = desired
        .labels()
        .iter()
        .all(|(k, v)| existing.labels().get(k) == Some(v));
    existing.data == desired.data
        && labels_ok
        && existing.annotations().get(HASH_ANNOTATION) == desired.annotations().get(HASH_ANNOTATION)
        && existing.owner_references() == desired.owner_references()
}

/// The write `existing` needs to become `desired`, if any.
pub fn change(existing: Option<&Secret>, desired: &Secret) -> Option<Change> {
    match existing {
        Some(existing) if up_to_date(existing, desired) => None,
        Some(existing)
            if existing.annotations().get(HASH_ANNOTATION)
                == desired.annotations().get(HASH_ANNOTATION) =>
        {
            Some(Change::DriftReverted)
        }
        Some(_) => Some(Change::Updated),
        None => Some(Change::Created),
    }
}

/// Writes `desired` when `existing` differs; returns what changed.
pub async fn ensure_secret(
    ctx: &Context,
    controller: &'static str,
    api: &Api<Secret>,
    existing: Option<&Secret>,
    desired: &Secret,
) -> Result<Option<Change>, Error> {
    let change = change(existing, desired);
    if change.is_some() {
        ctx.may_write()?;
        apply_secret(api, desired).await?;
        ctx.metrics.wrote(controller, "secret");
        ctx.metrics.materializations.inc();
    }
    Ok(change)
}

/// Creates `desired` (POST) when no Secret of its name exists. Returns whether it did; `false`
/// means one exists (409), which the caller reads and judges: nothing that exists is touched here.
pub async fn create_secret(
    ctx: &Context,
    controller: &'static str,
    api: &Api<Secret>,
    desired: &Secret,
) -> Result<bool, Error> {
    ctx.may_write()?;
    let params = kube::api::PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, desired).await {
        Ok(_) => {
            ctx.metrics.wrote(controller, "secret");
            ctx.metrics.materializations.inc();
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Server-side apply; keys another writer added are then removed, so the Secret holds exactly the
/// materialised data.
async fn apply_secret(api: &Api<Secret>, desired: &Secret) -> Result<(), Error> {
    let name = desired.name_any();
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    let wanted = desired.data.as_ref();
    let foreign: serde_json::Map<String, serde_json::Value> = applied
        .data
        .unwrap_or_default()
        .into_keys()
        .filter(|k| !wanted.is_some_and(|w| w.contains_key(k)))
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    if !foreign.is_empty() {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        api.patch(&name, &params, &Patch::Merge(json!({ "data": foreign })))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EnvironmentConfig, EnvironmentConfigSpec};
    use crate::materialize::{SecretData, materialize};

    fn owner() -> EnvironmentConfig {
        let mut cfg = EnvironmentConfig::new(
            "crm-staging",
            EnvironmentConfigSpec {
                environment: "staging".into(),
                app: Some("crm".into()),
                data_sources: vec![],
                constants: vec![],
            },
        );
        cfg.metadata.namespace = Some("ns".into());
        cfg.metadata.uid = Some("u1".into());
        cfg
    }

    fn desired() -> Secret {
        let cfg = owner();
        let m = materialize("staging", &[&cfg.spec], &SecretData::new()).unwrap();
        managed_secret(
            &cfg,
            "tooljet.staging.crm",
            "environment-config",
            "staging",
            Some("crm"),
            &m,
        )
    }

    #[test]
    fn a_managed_secret_is_labelled_owned_and_hashed() {
        let s = desired();
        assert_eq!(s.labels()[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(s.labels()[KIND_LABEL], "environment-config");
        assert_eq!(s.labels()[APP_LABEL], "crm");
        assert_eq!(s.annotations()[HASH_ANNOTATION].len(), 64);
        let owner = &s.owner_references()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u1", Some(true)));
        assert_eq!(change(Some(&s), &s), None);
        assert_eq!(change(None, &s), Some(Change::Created));
    }

    #[test]
    fn edits_are_drift_and_new_content_is_an_update() {
        let desired = desired();
        let mut edited = desired.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("EXTRA".into(), ByteString(b"x".to_vec()));
        assert_eq!(change(Some(&edited), &desired), Some(Change::DriftReverted));
        let mut relabelled = desired.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(MANAGED_BY_LABEL);
        assert_eq!(
            change(Some(&relabelled), &desired),
            Some(Change::DriftReverted)
        );
        let mut older = desired.clone();
        older
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(HASH_ANNOTATION.into(), "old".into());
        assert_eq!(change(Some(&older), &desired), Some(Change::Updated));
    }

    #[test]
    fn long_app_names_get_a_bounded_unique_label_value() {
        assert_eq!(app_label_value("crm"), "crm");
        let a = app_label_value(&"a".repeat(100));
        let b = app_label_value(&format!("{}b", "a".repeat(99)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }
}
