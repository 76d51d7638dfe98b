use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{matches, patterns, schema};

/// One version of a ToolJet app. Created and edited in the first stage of the app's pipeline,
/// then promoted one stage at a time by changing `spec.environment`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tooljet.io",
    version = "v1alpha1",
    kind = "AppVersion",
    plural = "appversions",
    shortname = "tjv",
    category = "tooljet",
    namespaced,
    status = "AppVersionStatus",
    doc = "One version of a ToolJet app. Created, edited, renamed and deleted only in the first stage of the \
           app's pipeline (development); promoted one stage at a time by changing spec.environment.",
    selectable = ".spec.app",
    selectable = ".spec.environment",
    selectable = ".spec.versionName",
    printcolumn(
        name = "App",
        type_ = "string",
        json_path = ".spec.app",
        description = "The ToolJetApp this is a version of"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.versionName",
        description = "The version's display name"
    ),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment",
        description = "The stage the version is in"
    ),
    printcolumn(
        name = "Approvals",
        type_ = "string",
        json_path = ".status.approvals.summary",
        description = "Approvals for the next stage, when a policy requires them",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AppVersionSpec {
    /// Name of the ToolJetApp (same namespace) this is a version of. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = matches(patterns::DNS_SUBDOMAIN, "spec.app must be the metadata.name of a ToolJetApp (lowercase letters, digits, '-' and '.')"),
        validation = Rule::new("self == oldSelf")
            .message("spec.app is immutable: a version cannot move to another app; create a new AppVersion for that app instead")
    )]
    pub app: String,

    /// Display name of the version, unique within the app (1-25 characters). Changing it is a
    /// rename, allowed only in the first stage.
    #[schemars(length(min = 1, max = 25))]
    #[x_kube(validation = Rule::new("self.trim() == self && self.trim() != ''")
        .message("spec.versionName must not be blank or start or end with white space; e.g. v4 or 2024.06-hotfix"))]
    pub version_name: String,

    /// What changed in this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub description: Option<String>,

    /// The stage of the app's pipeline the version is in. New versions start in the first stage;
    /// promotion moves it to the next stage only.
    #[serde(default = "default_environment")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = matches(patterns::DNS_LABEL, "spec.environment must be a stage name of the app's pipeline (a DNS label such as development, staging or production)"))]
    pub environment: String,

    /// The app definition (pages, queries, components), free-form JSON kept exactly as given.
    /// `{{constants.NAME}}` and `{{secrets.NAME}}` references in it are resolved against the
    /// stage's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::preserve_unknown_object")]
    pub definition: Option<serde_json::Value>,

    /// Data sources and constants the version needs in every stage it enters, beyond those
    /// referenced in the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Requirements>,
}

pub fn default_environment() -> String {
    super::DEFAULT_PIPELINE[0].to_string()
}

/// Names a version needs in its stage's configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// Data source names (EnvironmentConfig spec.dataSources[].name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::name_set")]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$'))")
        .message("spec.requires.dataSources: each name must be a data source name (letters, digits, '-', '_' and '.')"))]
    pub data_sources: Vec<String>,

    /// Constant names (EnvironmentConfig spec.constants[].name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::name_set")]
    #[x_kube(validation = Rule::new("self.all(n, size(n) <= 50 && n.matches('^[a-zA-Z_][a-zA-Z0-9_]*$'))")
        .message("spec.requires.constants: each name must be a constant name (letters, digits and '_', not starting with a digit, at most 50 characters)"))]
    pub constants: Vec<String>,
}

/// Observed state of an AppVersion.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppVersionStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The stage the operator last resolved configuration for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,

    /// The most recent promotions, newest last (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<Promotion>,

    /// Approvals for the next stage, when a PromotionPolicy requires them there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<StageApprovals>,

    /// The Secret holding the merged data sources and constants of the current stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_config: Option<ResolvedConfig>,

    /// `Ready`, `ConfigResolved` (every required data source and constant exists in the stage),
    /// `Released` (this is the app's released version) and `Verified` (its stage's workloads
    /// passed their last verification; a version is not promoted out of a stage that failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// One promotion of a version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The stage it left.
    pub from: String,
    /// The stage it entered.
    pub to: String,
    /// When.
    pub at: Time,
    /// Who promoted it (the requesting user, as the admission webhook recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Set when the promotion passed a closed promotion window by break-glass override: the
    /// reason given (`tooljet.io/override-reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// How the verification of the stage it entered ended (absent while it runs, or when that
    /// stage has no rollout workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<super::VerificationPhase>,
}

/// The approvals of a version for the stage after the one it is in, as a guarding policy counts
/// them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StageApprovals {
    /// The stage the version may enter next.
    pub environment: String,
    /// Distinct approvals required by the policies guarding it.
    pub required: u32,
    /// The approvers that count, sorted.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// `2/2`: counted of required.
    pub summary: String,
}

/// The resolved-config Secret of a version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedConfig {
    /// Name of the Secret (same namespace).
    pub secret_name: String,
    /// SHA-256 of the Secret's content (never the values).
    pub hash: String,
    /// The stage whose values it holds.
    pub environment: String,
}
