//! The Secrets the operator materialises: how they look, when they are up to date, how they are
//! written, and which ones are the operator's. Shared by the EnvironmentConfig and AppVersion
//! controllers.
//!
//! A Secret is the operator's by its controller ownerReference UID, never by label or name: anyone
//! who may create Secrets can copy a label or pick a name, while a UID is assigned by the
//! apiserver. Also here: the installation's content-hash key, kept in a Secret of the operator's
//! namespace so that every replica, and every restart, hashes alike.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use tracing::info;

use super::{
    APP_LABEL, AtStep, Context, ENVIRONMENT_LABEL, Error, HASH_ANNOTATION, KIND_LABEL, MANAGER,
    Step,
};
use crate::{
    api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    cache::{ManagedSecret, controlled_by},
    materialize::{HashKey, InvalidHashKey, Materialized},
};

/// The Secret, in the operator's namespace, that holds the installation's content-hash key.
pub const HASH_KEY_SECRET: &str = "tooljet-operator-hash-key";
/// The data key of the hash key in [`HASH_KEY_SECRET`].
pub const HASH_KEY_DATA: &str = "key";

/// Why a Secret was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    Created,
    Updated,
    /// Someone edited the Secret; its content is restored.
    DriftReverted,
}

use crate::lifecycle::names::app_label_value;

/// A managed Secret holding `m`, controlled by `owner`.
pub fn managed_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    kind: &str,
    environment: &str,
    app: Option<&str>,
    m: &Materialized,
) -> Secret {
    holding(
        managed_metadata(owner, name, kind, environment, app, &m.hash),
        m,
    )
}

/// An Opaque Secret with `metadata` holding `m`'s data.
pub fn holding(metadata: ObjectMeta, m: &Materialized) -> Secret {
    Secret {
        metadata,
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

/// The metadata of a managed Secret with content hash `hash`, controlled by `owner`: its name,
/// the operator's labels, the hash annotation and the controller ownerReference.
pub fn managed_metadata<K: Resource<DynamicType = ()>>(
    owner: &K,
    name: &str,
    kind: &str,
    environment: &str,
    app: Option<&str>,
    hash: &str,
) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (KIND_LABEL.to_string(), kind.to_string()),
        (ENVIRONMENT_LABEL.to_string(), environment.to_string()),
    ]);
    if let Some(app) = app {
        labels.insert(APP_LABEL.to_string(), app_label_value(app));
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels),
        annotations: Some(BTreeMap::from([(
            HASH_ANNOTATION.to_string(),
            hash.to_string(),
        )])),
        owner_references: Some(vec![
            owner
                .controller_owner_ref(&())
                .expect("a stored object has a uid"),
        ]),
        ..Default::default()
    }
}

/// The write `existing` needs to become `desired`, if any.
pub fn change(existing: Option<&ManagedSecret>, desired: &Secret) -> Option<SecretWrite> {
    match existing {
        Some(existing) if existing.holds(desired) => None,
        Some(existing)
            if existing.hash()
                == desired
                    .annotations()
                    .get(HASH_ANNOTATION)
                    .map(String::as_str) =>
        {
            Some(SecretWrite::DriftReverted)
        }
        Some(_) => Some(SecretWrite::Updated),
        None => Some(SecretWrite::Created),
    }
}

/// What [`sync`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The Secret is ours and now holds the desired content; `Some` when it was written.
    Ours(Option<SecretWrite>),
    /// A Secret of that name exists that the owner does not control (by UID): left alone.
    Taken,
}

/// The one way a managed Secret is written: from the cache, or (not cached) created with one
/// POST; a 409 means a Secret of that name exists (another writer's, or the cache lags), which is
/// read and judged. It is ours only when its controller ownerReference is `owner_uid`; then it is
/// applied when it differs. Anything else is never adopted, overwritten or deleted.
pub async fn sync(
    ctx: &Context,
    controller: &'static str,
    api: &Api<Secret>,
    owner_uid: Option<&str>,
    succeeds: impl Fn(&ManagedSecret) -> bool,
    desired: &Secret,
) -> Result<Synced, Error> {
    let name = desired.name_any();
    let ns = desired.namespace().unwrap_or_default();
    let existing = match ctx
        .managed_secrets
        .get(&kube::runtime::reflector::ObjectRef::new(&name).within(&ns))
    {
        Some(cached) => Some(cached),
        None if create_secret(ctx, controller, api, desired).await? => {
            return Ok(Synced::Ours(Some(SecretWrite::Created)));
        }
        // Judged as the cache would hold it.
        None => api
            .get_opt(&name)
            .await
            .at(Step::ReadSecret)?
            .map(|secret| std::sync::Arc::new(ManagedSecret::from(secret))),
    };
    match existing {
        // Its controller is on its way out and `desired`'s owner replaces it: the Secret is
        // handed over (its owners replaced, then its content written), so a finalizer on the old
        // owner cannot keep a stage on the old values.
        Some(existing) if !controlled_by(&*existing, owner_uid) && succeeds(&existing) => {
            take_over(ctx, controller, api, &existing, desired).await?;
            Ok(Synced::Ours(
                ensure_secret(ctx, controller, api, None, desired).await?,
            ))
        }
        Some(existing) if !controlled_by(&*existing, owner_uid) => Ok(Synced::Taken),
        existing => Ok(Synced::Ours(
            ensure_secret(ctx, controller, api, existing.as_deref(), desired).await?,
        )),
    }
}

/// Replaces `existing`'s ownerReferences with `desired`'s (a merge patch replaces the list whole,
/// whoever wrote it), on the version read: a Secret changed meanwhile is judged again.
async fn take_over(
    ctx: &Context,
    controller: &'static str,
    api: &Api<Secret>,
    existing: &ManagedSecret,
    desired: &Secret,
) -> Result<(), Error> {
    ctx.may_write()?;
    let patch = serde_json::json!({ "metadata": {
        "resourceVersion": existing.resource_version(),
        "ownerReferences": desired.metadata.owner_references,
    } });
    api.patch(
        existing.name(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .at(Step::ApplySecret)?;
    ctx.metrics.wrote(controller, "secret");
    tracing::info!(secret = %existing.name(), "took over the Secret from an owner being deleted");
    Ok(())
}

/// Writes `desired` when `existing` differs; returns what changed.
async fn ensure_secret(
    ctx: &Context,
    controller: &'static str,
    api: &Api<Secret>,
    existing: Option<&ManagedSecret>,
    desired: &Secret,
) -> Result<Option<SecretWrite>, Error> {
    let change = change(existing, desired);
    if change.is_some() {
        ctx.may_write()?;
        let written = apply_secret(api, desired).await?;
        ctx.echoes.record(&written);
        ctx.metrics.wrote(controller, "secret");
        ctx.metrics.materializations.inc();
    }
    Ok(change)
}

/// Creates `desired` (POST) when no Secret of its name exists. Returns whether it did; `false`
/// means one exists (409), which the caller reads and judges: nothing that exists is touched here.
async fn create_secret(
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
        Ok(created) => {
            ctx.echoes.record(&created);
            ctx.metrics.wrote(controller, "secret");
            ctx.metrics.materializations.inc();
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(source) => Err(Error::Kube {
            step: Step::CreateSecret,
            source,
        }),
    }
}

/// Server-side apply; keys another writer added are then removed, so the Secret holds exactly the
/// materialised data. Returns the Secret as written last.
async fn apply_secret(api: &Api<Secret>, desired: &Secret) -> Result<Secret, Error> {
    let name = desired.name_any();
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
        .at(Step::ApplySecret)?;
    let wanted = desired.data.as_ref();
    let foreign: serde_json::Map<String, serde_json::Value> = applied
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| !wanted.is_some_and(|w| w.contains_key(*k)))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    if foreign.is_empty() {
        return Ok(applied);
    }
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    api.patch(&name, &params, &Patch::Merge(json!({ "data": foreign })))
        .await
        .at(Step::RemoveForeignKeys)
}

/// Why the content-hash key could not be had. Names the Secret and the step, never the key.
#[derive(Debug, thiserror::Error)]
pub enum HashKeyError {
    #[error("reading Secret {namespace}/{HASH_KEY_SECRET} (the content-hash key) failed: {source}")]
    Read {
        namespace: String,
        source: kube::Error,
    },
    #[error(
        "creating Secret {namespace}/{HASH_KEY_SECRET} (the content-hash key) failed: {source}; \
         the namespace must exist (--namespace) and the operator needs get and create on Secrets there"
    )]
    Create {
        namespace: String,
        source: kube::Error,
    },
    #[error("the system's random number generator failed while generating the content-hash key")]
    Random,
    #[error(
        "Secret {namespace}/{HASH_KEY_SECRET} has no usable key `{HASH_KEY_DATA}` ({reason}); \
         delete it and restart the operator, which generates a new one (every content hash then changes once)"
    )]
    Invalid { namespace: String, reason: String },
}

/// The installation's content-hash key, read from Secret [`HASH_KEY_SECRET`] in `namespace`, or
/// generated (32 bytes from the system's CSPRNG) and stored there when there is none. Replicas
/// race safely: the first create wins, a loser (409) reads the winner's key. The Secret is
/// immutable, so the key cannot be edited in place (which would silently change every hash).
pub async fn load_or_create_hash_key(
    client: &Client,
    namespace: &str,
) -> Result<HashKey, HashKeyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |source| HashKeyError::Read {
        namespace: namespace.to_string(),
        source,
    };
    if let Some(existing) = api.get_opt(HASH_KEY_SECRET).await.map_err(read)? {
        return key_from_secret(&existing, namespace);
    }
    let mut bytes = [0u8; HashKey::LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| HashKeyError::Random)?;
    let secret = hash_key_secret(namespace, &bytes);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, &secret).await {
        Ok(_) => {
            info!(
                namespace,
                secret = HASH_KEY_SECRET,
                "generated the content-hash key"
            );
            key_from_data(&bytes, namespace)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // Another replica created it first: use its key.
            let winner = api.get(HASH_KEY_SECRET).await.map_err(read)?;
            key_from_secret(&winner, namespace)
        }
        Err(source) => Err(HashKeyError::Create {
            namespace: namespace.to_string(),
            source,
        }),
    }
}

/// The Secret that stores a new key (pure).
fn hash_key_secret(namespace: &str, key: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(HASH_KEY_SECRET.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_string(),
                    "tooljet-operator".to_string(),
                ),
                (
                    "app.kubernetes.io/component".to_string(),
                    "content-hash-key".to_string(),
                ),
            ])),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            HASH_KEY_DATA.to_string(),
            ByteString(key.to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The key stored in `secret` (pure).
fn key_from_secret(secret: &Secret, namespace: &str) -> Result<HashKey, HashKeyError> {
    match secret.data.as_ref().and_then(|d| d.get(HASH_KEY_DATA)) {
        Some(bytes) => key_from_data(&bytes.0, namespace),
        None => Err(HashKeyError::Invalid {
            namespace: namespace.to_string(),
            reason: "the key is missing".into(),
        }),
    }
}

fn key_from_data(bytes: &[u8], namespace: &str) -> Result<HashKey, HashKeyError> {
    HashKey::new(bytes).map_err(|e: InvalidHashKey| HashKeyError::Invalid {
        namespace: namespace.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EnvironmentConfig, EnvironmentConfigSpec};
    use crate::materialize::{SecretData, materialize};

    fn key() -> HashKey {
        HashKey::new(&[3; HashKey::LEN]).unwrap()
    }

    /// `s` as the cache holds it.
    fn cached(s: &Secret) -> ManagedSecret {
        ManagedSecret::from(s.clone())
    }

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
        let m = materialize(&key(), "staging", &[&cfg.spec], &SecretData::new()).unwrap();
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
        assert_eq!(change(Some(&cached(&s)), &s), None);
        assert_eq!(change(None, &s), Some(SecretWrite::Created));
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
        assert_eq!(
            change(Some(&cached(&edited)), &desired),
            Some(SecretWrite::DriftReverted)
        );
        let mut relabelled = desired.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(MANAGED_BY_LABEL);
        assert_eq!(
            change(Some(&cached(&relabelled)), &desired),
            Some(SecretWrite::DriftReverted)
        );
        let mut older = desired.clone();
        older
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(HASH_ANNOTATION.into(), "old".into());
        assert_eq!(
            change(Some(&cached(&older)), &desired),
            Some(SecretWrite::Updated)
        );
    }

    #[test]
    fn long_app_names_get_a_bounded_unique_label_value() {
        assert_eq!(app_label_value("crm"), "crm");
        let a = app_label_value(&"a".repeat(100));
        let b = app_label_value(&format!("{}b", "a".repeat(99)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }

    fn owned(uid: &str, controller: Option<bool>) -> Secret {
        let mut s = desired();
        s.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "tooljet.io/v1alpha1".into(),
                kind: "EnvironmentConfig".into(),
                name: "crm-staging".into(),
                uid: uid.into(),
                controller,
                block_owner_deletion: None,
            },
        ]);
        s
    }

    #[test]
    fn the_managed_by_label_alone_does_not_make_a_secret_ours() {
        let mut labelled = desired();
        labelled.metadata.owner_references = None;
        assert_eq!(labelled.labels()[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert!(!controlled_by(&labelled, Some("u1")));
    }

    #[test]
    fn only_a_controller_reference_with_the_owners_uid_makes_a_secret_ours() {
        assert!(controlled_by(&owned("u1", Some(true)), Some("u1")));
        assert!(
            !controlled_by(&owned("u2", Some(true)), Some("u1")),
            "another object's Secret"
        );
        assert!(
            !controlled_by(&owned("u1", None), Some("u1")),
            "an owner that is not the controller"
        );
        assert!(
            !controlled_by(&owned("u1", Some(false)), Some("u1")),
            "an owner that is not the controller"
        );
        assert!(
            !controlled_by(&owned("u1", Some(true)), None),
            "an object without a uid owns nothing"
        );
    }

    #[test]
    fn a_stored_hash_key_reads_back_and_a_bad_one_is_named_without_its_bytes() {
        let stored = hash_key_secret("tooljet-system", &[9; HashKey::LEN]);
        assert_eq!(stored.immutable, Some(true));
        assert_eq!(stored.name_any(), HASH_KEY_SECRET);
        let read = key_from_secret(&stored, "tooljet-system").unwrap();
        let data = BTreeMap::from([("A".to_string(), b"1".to_vec())]);
        assert_eq!(
            crate::materialize::hash(&read, &data),
            crate::materialize::hash(&HashKey::new(&[9; HashKey::LEN]).unwrap(), &data)
        );

        let short = hash_key_secret("tooljet-system", b"sixteen-byte-key");
        let error = key_from_secret(&short, "tooljet-system")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tooljet-system/tooljet-operator-hash-key")
                && error.contains("must be 32 bytes, found 16")
                && error.contains("delete it"),
            "{error}"
        );
        assert!(!error.contains("sixteen"), "{error}");
        let mut empty = stored;
        empty.data = None;
        assert!(
            key_from_secret(&empty, "tooljet-system")
                .unwrap_err()
                .to_string()
                .contains("the key is missing")
        );
    }
}
