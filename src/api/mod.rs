//! The `tooljet.io/v1alpha1` API: ToolJetApp, AppVersion and EnvironmentConfig; PromotionPolicy and
//! Approval for the gates on entering a stage; Notification for telling people about them.
//!
//! Validation that needs no other object lives in the schema and in CEL rules
//! (`x-kubernetes-validations`), so the apiserver rejects bad input before anything is stored;
//! rules that need other objects (the app's pipeline, RBAC) live in the admission webhook.

// Repeated `printcolumn(name = .., type_ = ..)` entries are distinct columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

mod app;
pub mod conditions;
mod envconfig;
mod notification;
mod policy;
pub mod schema;
mod version;

pub use app::*;
pub use envconfig::*;
pub use notification::*;
pub use policy::*;
pub use version::*;

use kube::{CustomResourceExt, KubeSchema, core::Rule};
use serde::{Deserialize, Serialize};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The API group of every kind.
pub const GROUP: &str = "tooljet.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The default pipeline, as ToolJet ships it.
pub const DEFAULT_PIPELINE: [&str; 3] = ["development", "staging", "production"];

/// Label on every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tooljet-operator";
/// Labels of a managed Secret: which controller wrote it (a `*_SECRET_KIND`), and for which
/// environment and app.
pub const KIND_LABEL: &str = "tooljet.io/kind";
pub const ENVIRONMENT_LABEL: &str = "tooljet.io/environment";
pub const APP_LABEL: &str = "tooljet.io/app";
/// Annotation with the content hash of a managed Secret.
pub const HASH_ANNOTATION: &str = "tooljet.io/config-hash";
/// Pod-template annotation of a rollout workload serving the last stage of apps with a release:
/// `app=version` for each, sorted, comma-separated. A release or rollback changes it, so the
/// workload rolls out a new ReplicaSet that the release's verification follows; a pod reads it
/// through the downward API.
pub const RELEASE_ANNOTATION: &str = "tooljet.io/release";
/// Annotation of a stage configuration's Secret: what it was made from (the config's UID and
/// generation, each referenced Secret's resourceVersion, [`crate::materialize::FORMAT`]), bound to
/// its content by an HMAC with the installation's key. See [`crate::cache::secret::inputs_annotation`].
pub const INPUTS_ANNOTATION: &str = "tooljet.io/inputs";
/// `tooljet.io/kind` of a stage configuration's Secret (an EnvironmentConfig's).
pub const STAGE_SECRET_KIND: &str = "environment-config";
/// `tooljet.io/kind` of a version's resolved Secret (an AppVersion's).
pub const RESOLVED_SECRET_KIND: &str = "resolved-config";
/// `tooljet.io/kind` of a rollout workload's Secret (a Deployment's: what its ToolJet container
/// takes in).
pub const WORKLOAD_SECRET_KIND: &str = "workload-config";

/// The three kinds of Secret the operator writes, by their `tooljet.io/kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A stage configuration's Secret ([`STAGE_SECRET_KIND`]).
    Stage,
    /// A version's resolved Secret ([`RESOLVED_SECRET_KIND`]).
    Resolved,
    /// A rollout workload's Secret ([`WORKLOAD_SECRET_KIND`]).
    Workload,
}

impl SecretKind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            SecretKind::Stage => STAGE_SECRET_KIND,
            SecretKind::Resolved => RESOLVED_SECRET_KIND,
            SecretKind::Workload => WORKLOAD_SECRET_KIND,
        }
    }

    /// The kind a label value names; `None` for a value the operator never writes.
    pub fn of_label(value: &str) -> Option<SecretKind> {
        [
            SecretKind::Stage,
            SecretKind::Resolved,
            SecretKind::Workload,
        ]
        .into_iter()
        .find(|k| k.label() == value)
    }
}
/// Annotations the admission webhook stamps from the request's userInfo (users cannot set them):
/// who moved a version into its current stage, and when.
pub const PROMOTED_BY_ANNOTATION: &str = "tooljet.io/promoted-by";
pub const PROMOTED_AT_ANNOTATION: &str = "tooljet.io/promoted-at";
pub const PROMOTED_FROM_ANNOTATION: &str = "tooljet.io/promoted-from";
/// Who set the app's current `spec.release.version`, when, and which version that was.
pub const RELEASED_BY_ANNOTATION: &str = "tooljet.io/released-by";
pub const RELEASED_AT_ANNOTATION: &str = "tooljet.io/released-at";
pub const RELEASED_VERSION_ANNOTATION: &str = "tooljet.io/released-version";
/// The stages a version has been in, in order, comma-separated (`development,staging`). Stamped
/// by the mutating webhook on create and on every promotion; the ValidatingAdmissionPolicy reads
/// it to enforce the stage rules of any pipeline when the webhook is unavailable.
pub const STAGES_ANNOTATION: &str = "tooljet.io/stages";
/// Who created a version and who last edited its spec (stamped by the mutating webhook): the
/// facts separation of duties is judged on.
pub const CREATED_BY_ANNOTATION: &str = "tooljet.io/created-by";
pub const LAST_EDITED_BY_ANNOTATION: &str = "tooljet.io/last-edited-by";
/// Everyone who changed a version's spec after creating it, as a JSON array of user names in the
/// order of their first edit (at most [`MAX_EDITORS`]). Stamped by the mutating webhook; with
/// separation of duties none of them may approve the version (nor its creator or promoter).
pub const EDITORS_ANNOTATION: &str = "tooljet.io/edited-by";
/// The most people [`EDITORS_ANNOTATION`] records; one more is refused (create a new version).
pub const MAX_EDITORS: usize = 32;
/// The `{{constants.X}}` and `{{secrets.X}}` names a version's `spec.definition` references, as
/// compact JSON (`{"constants":["A"],"secrets":["B"]}`). Stamped by the mutating webhook from the
/// request on create and on every change of the definition, and checked by the validating webhook
/// against the definition it judges: the controllers read a version's references from it, so the
/// operator never holds or parses a stored definition. See [`crate::lifecycle::References`].
pub const REFERENCES_ANNOTATION: &str = "tooljet.io/references";
/// Who approved (an Approval), when, and the version's `metadata.generation` approved: an
/// approval counts only for the content it saw.
pub const APPROVED_BY_ANNOTATION: &str = "tooljet.io/approved-by";
pub const APPROVED_AT_ANNOTATION: &str = "tooljet.io/approved-at";
pub const APPROVED_GENERATION_ANNOTATION: &str = "tooljet.io/approved-generation";
/// Break-glass: set by a user in the same request as a promotion or release to pass a closed
/// window (needs verb `override`). The mutating webhook consumes it into the three `overridden-`
/// stamps below, so a reason never outlives its request.
pub const OVERRIDE_REASON_ANNOTATION: &str = "tooljet.io/override-reason";
pub const OVERRIDDEN_BY_ANNOTATION: &str = "tooljet.io/overridden-by";
pub const OVERRIDDEN_AT_ANNOTATION: &str = "tooljet.io/overridden-at";
pub const OVERRIDDEN_REASON_ANNOTATION: &str = "tooljet.io/overridden-reason";
/// Prefix of every annotation the operator owns.
pub const ANNOTATION_PREFIX: &str = "tooljet.io/";

/// Label on the CRDs, so `kubectl wait crd -l app.kubernetes.io/part-of=tooljet-operator` finds them.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";

/// CEL regular expressions shared by the rules.
pub(crate) mod patterns {
    /// RFC 1123 label: stage names (they become parts of env-var names and resource names).
    pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    /// RFC 1123 subdomain: names of Kubernetes objects (apps, versions, Secrets, Deployments).
    pub const DNS_SUBDOMAIN: &str =
        "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
    /// ToolJet constant names.
    pub const CONSTANT_NAME: &str = "^[a-zA-Z_][a-zA-Z0-9_]*$";
    /// Data source names.
    pub const DATA_SOURCE_NAME: &str = "^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$";
    /// Keys of a Secret's data.
    pub const SECRET_KEY: &str = "^[-._a-zA-Z0-9]+$";
}

/// A CEL rule that `self` (a string) matches `pattern`, with a message for users.
pub(crate) fn matches(pattern: &str, message: &str) -> Rule {
    let literal = pattern.replace('\\', "\\\\").replace('\'', "\\'");
    Rule::new(format!("self.matches('{literal}')")).message(message)
}

/// A key of a Secret in the same namespace. Values are only ever referenced, never inlined.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct SecretKeySelector {
    /// Name of the Secret, in the same namespace as the referring object.
    #[x_kube(validation = matches(patterns::DNS_SUBDOMAIN, "secretKeyRef.name must be the name of a Secret in this namespace: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[x_kube(validation = matches(patterns::SECRET_KEY, "secretKeyRef.key must be a key of the Secret's data: letters, digits, '-', '_' and '.'"))]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where a secret value comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretValueSource {
    /// The key of a Secret in the same namespace that holds the value.
    pub secret_key_ref: SecretKeySelector,
}

/// Every CRD of the API, in a stable order, labelled as part of tooljet-operator, with schema
/// descriptions reflowed (doc comments wrap at 100 columns; `kubectl explain` wraps on its own).
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        ToolJetApp::crd(),
        AppVersion::crd(),
        EnvironmentConfig::crd(),
        PromotionPolicy::crd(),
        Approval::crd(),
        Notification::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let mut value = serde_json::to_value(crd).expect("a CRD serializes");
        tidy_schema(&mut value);
        let mut crd: CustomResourceDefinition =
            serde_json::from_value(value).expect("a tidied CRD deserializes");
        crd.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(PART_OF_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
        crd
    })
    .collect()
}

/// The CRD as YAML, the form committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let value = serde_json::to_value(crd).expect("a CRD serializes");
    let body = serde_yaml::to_string(&value).expect("JSON converts to YAML");
    format!("# Generated by `cargo xtask crdgen` from src/api/. Do not edit.\n{body}")
}

/// Drops the integer formats schemars emits (`uint32`, ... make the apiserver warn) and joins the
/// lines of each description paragraph.
fn tidy_schema(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("type").and_then(|t| t.as_str()) == Some("integer") {
                map.remove("format");
            }
            if let Some(serde_json::Value::String(d)) = map.get_mut("description") {
                *d = reflow(d);
            }
            map.values_mut().for_each(tidy_schema);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy_schema),
        _ => {}
    }
}

fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|para| para.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The file name of a CRD under `crds/`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!(
        "{}.yaml",
        crd.metadata.name.as_deref().expect("CRDs are named")
    )
}
