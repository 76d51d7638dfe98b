//! Objects read from a watch without their `managedFields`.
//!
//! Server-side apply records, per field manager, every field it owns as a free-form JSON tree
//! (`metadata.managedFields[].fieldsV1`). The operator never reads it, and it is most of the JSON
//! of an object whose spec and status have many list entries. k8s-openapi's `ObjectMeta` parses it
//! into `serde_json::Value` trees that [`crate::cache::watch::strip`] then drops, at a cost in start-up
//! CPU that docs/benchmarks.md measures. [`Lean`] reads an object through a mirror of `ObjectMeta` that has no such
//! field, so the parser skips it without allocating anything.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time},
};
use kube::Resource;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

use crate::api::{
    AppVersion, AppVersionSpec, AppVersionStatus, Approval, ApprovalSpec, EnvironmentConfig,
    EnvironmentConfigSpec, EnvironmentConfigStatus, Notification, NotificationSpec,
    NotificationStatus, PromotionPolicy, PromotionPolicySpec, PromotionPolicyStatus, ToolJetApp,
    ToolJetAppSpec, ToolJetAppStatus,
};

/// `ObjectMeta` as the API serves it, less `managedFields` (an unknown field here, skipped).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<Meta> for ObjectMeta {
    fn from(m: Meta) -> ObjectMeta {
        ObjectMeta {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

/// A kind that can be put together from a lean reading of its JSON object.
pub trait Parts: Resource + Sized {
    /// The object's top-level fields that the operator reads, `metadata` as `Meta`
    /// (`apiVersion` and `kind` are known from the type and skipped).
    type Lean: DeserializeOwned;
    fn assemble(lean: Self::Lean) -> Self;
}

/// `K`, deserialised without `managedFields` (for a watch: `Api<Lean<K>>`).
#[derive(Clone, Debug)]
pub struct Lean<K>(pub K);

impl<'de, K: Parts> Deserialize<'de> for Lean<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::Lean::deserialize(deserializer).map(|lean| Lean(K::assemble(lean)))
    }
}

impl<K: Resource> Resource for Lean<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// Every object `params` selects, listed in pages of `page` objects and read lean: a page is read
/// whole before it is parsed, so `page` bounds what one read holds (see
/// [`crate::cache::VERSION_PAGE`] for AppVersions).
pub async fn list_paged<K>(
    api: &kube::Api<Lean<K>>,
    params: &kube::api::ListParams,
    page: u32,
) -> kube::Result<Vec<K>>
where
    K: Parts + Clone + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut params = params.clone().limit(page);
    let mut objects = vec![];
    loop {
        let list = api.list(&params).await?;
        objects.extend(list.items.into_iter().map(|Lean(o)| o));
        match list.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(objects),
        }
    }
}

/// A custom resource with a status.
#[derive(Deserialize)]
pub struct WithStatus<S, T> {
    #[serde(default)]
    metadata: Meta,
    spec: S,
    status: Option<T>,
}

macro_rules! with_status {
    ($($kind:ty: $spec:ty, $status:ty;)*) => {$(
        impl Parts for $kind {
            type Lean = WithStatus<$spec, $status>;
            fn assemble(lean: Self::Lean) -> Self {
                Self { metadata: lean.metadata.into(), spec: lean.spec, status: lean.status }
            }
        }
    )*};
}

with_status! {
    EnvironmentConfig: EnvironmentConfigSpec, EnvironmentConfigStatus;
    ToolJetApp: ToolJetAppSpec, ToolJetAppStatus;
    PromotionPolicy: PromotionPolicySpec, PromotionPolicyStatus;
    Notification: NotificationSpec, NotificationStatus;
}

/// An AppVersion's spec less `definition`: serde skips a field the struct does not name without
/// building it, so a definition (up to [`crate::webhook::limits::MAX_DEFINITION_BYTES`]) is never
/// allocated. All the operator needs of it, the names it references, is stamped at admission
/// ([`crate::api::REFERENCES_ANNOTATION`]). A version read this way has `spec.definition: None`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionSpecParts {
    app: String,
    version_name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "crate::api::default_environment")]
    environment: String,
    #[serde(default)]
    requires: Option<crate::api::Requirements>,
}

impl Parts for AppVersion {
    type Lean = WithStatus<VersionSpecParts, AppVersionStatus>;
    fn assemble(lean: Self::Lean) -> Self {
        let VersionSpecParts {
            app,
            version_name,
            description,
            environment,
            requires,
        } = lean.spec;
        AppVersion {
            metadata: lean.metadata.into(),
            spec: AppVersionSpec {
                app,
                version_name,
                description,
                environment,
                definition: None,
                requires,
            },
            status: lean.status,
        }
    }
}

/// A custom resource without status.
#[derive(Deserialize)]
pub struct SpecOnly<S> {
    #[serde(default)]
    metadata: Meta,
    spec: S,
}

impl Parts for Approval {
    type Lean = SpecOnly<ApprovalSpec>;
    fn assemble(lean: Self::Lean) -> Self {
        Approval {
            metadata: lean.metadata.into(),
            spec: lean.spec,
        }
    }
}

/// What a [`crate::cache::secret::ManagedSecret`] is made from: a Secret's metadata and data (its `type`, and
/// `stringData`, which the API never serves, are not read).
#[derive(Deserialize)]
pub struct SecretParts {
    #[serde(default)]
    metadata: Meta,
    data: Option<BTreeMap<String, ByteString>>,
}

impl Parts for Secret {
    type Lean = SecretParts;
    fn assemble(lean: Self::Lean) -> Self {
        Secret {
            metadata: lean.metadata.into(),
            data: lean.data,
            ..Secret::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn managed_fields() -> serde_json::Value {
        json!([{ "manager": "kubectl", "operation": "Apply", "apiVersion": "tooljet.io/v1alpha1",
                 "fieldsType": "FieldsV1", "fieldsV1": { "f:spec": { "f:environment": {} } } }])
    }

    #[test]
    fn reads_every_field_but_managed_fields() {
        let object = json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "EnvironmentConfig",
            "metadata": {
                "name": "crm-staging", "namespace": "team", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "labels": { "a": "b" }, "annotations": { "c": "d" },
                "finalizers": ["f"], "creationTimestamp": "2026-01-02T03:04:05Z",
                "ownerReferences": [{ "apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-0" }],
                "managedFields": managed_fields(),
            },
            "spec": { "environment": "staging", "app": "crm" },
            "status": { "observedGeneration": 3 },
        });
        let full: EnvironmentConfig = serde_json::from_value(object.clone()).unwrap();
        let Lean(lean) = serde_json::from_value::<Lean<EnvironmentConfig>>(object).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        assert_eq!(lean.metadata.managed_fields, None);
        let mut expected = full;
        expected.metadata.managed_fields = None;
        assert_eq!(
            serde_json::to_value(&lean).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
        assert_eq!(lean.metadata.owner_references.unwrap()[0].uid, "u-0");
    }

    #[test]
    fn a_version_is_read_without_its_definition() {
        let object = json!({
            "metadata": { "name": "v1", "annotations": { "tooljet.io/references": "{}" } },
            "spec": { "app": "crm", "versionName": "v1", "environment": "staging",
                      "description": "d", "requires": { "constants": ["A"] },
                      "definition": { "pages": [{ "deep": [[[["{{constants.X}}"]]]] }], "big": "x".repeat(4096) } },
            "status": { "environment": "staging" },
        });
        let full: AppVersion = serde_json::from_value(object.clone()).unwrap();
        let Lean(lean) = serde_json::from_value::<Lean<AppVersion>>(object).unwrap();
        assert_eq!(lean.spec.definition, None);
        let mut expected = full;
        expected.spec.definition = None;
        assert_eq!(
            serde_json::to_value(&lean).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
        // Malformed elsewhere still fails: only the definition is skipped.
        assert!(
            serde_json::from_value::<Lean<AppVersion>>(json!({ "spec": { "app": 1 } })).is_err()
        );
    }

    #[test]
    fn an_object_without_status_or_data_reads() {
        let Lean(version) = serde_json::from_value::<Lean<AppVersion>>(json!({
            "metadata": { "name": "v1", "managedFields": managed_fields() },
            "spec": { "app": "crm", "versionName": "v1", "environment": "development" },
        }))
        .unwrap();
        assert_eq!(version.status, None);
        assert_eq!(version.spec.version_name, "v1");

        let Lean(secret) = serde_json::from_value::<Lean<Secret>>(json!({
            "metadata": { "name": "s", "namespace": "team", "managedFields": managed_fields() },
        }))
        .unwrap();
        assert_eq!(kube::ResourceExt::name_any(&secret), "s");
        assert_eq!(secret.metadata.managed_fields, None);
        assert_eq!(secret.data, None);
    }
}
