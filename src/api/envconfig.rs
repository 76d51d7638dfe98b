use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::{SecretValueSource, matches, patterns, schema};

/// One environment's data sources and constants, for one app or (without `spec.app`) for every
/// app of the namespace. The operator materialises it as a Secret that ToolJet consumes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tooljet.io",
    version = "v1alpha1",
    kind = "EnvironmentConfig",
    plural = "environmentconfigs",
    shortname = "tjenv",
    category = "tooljet",
    namespaced,
    status = "EnvironmentConfigStatus",
    doc = "One environment's data sources and constants, for one app (spec.app) or workspace-wide (no spec.app). \
           App-scoped entries override workspace-wide entries of the same name. The operator materialises it as a \
           Secret with ToolJet's TOOLJET_GLOBAL_CONSTANTS__<env>__<NAME> / TOOLJET_SECRET_CONSTANTS__<env>__<NAME> keys \
           (each data source secret option as secret constant <SOURCE>_<OPTION>) and a datasources.json document; \
           ToolJet workloads take in their workload Secret (tooljet-workload.<deployment>), constants only.",
    selectable = ".spec.environment",
    selectable = ".spec.app",
    printcolumn(
        name = "App",
        type_ = "string",
        json_path = ".spec.app",
        description = "The app it configures; empty = workspace-wide"
    ),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment",
        description = "The stage it configures"
    ),
    printcolumn(
        name = "Data sources",
        type_ = "integer",
        json_path = ".status.dataSourceCount",
        description = "Number of data sources materialised"
    ),
    printcolumn(
        name = "Constants",
        type_ = "integer",
        json_path = ".status.constantCount",
        description = "Number of constants materialised"
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
pub struct EnvironmentConfigSpec {
    /// The stage this configures (a stage name of the app's pipeline, e.g. development).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = matches(patterns::DNS_LABEL, "spec.environment must be a stage name (a DNS label such as development, staging or production)"))]
    pub environment: String,

    /// The ToolJetApp this configures. Absent: every app of the namespace (workspace-wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = matches(patterns::DNS_SUBDOMAIN, "spec.app must be the metadata.name of a ToolJetApp, or be left out for a workspace-wide configuration"))]
    pub app: Option<String>,

    /// Data sources, unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub data_sources: Vec<DataSource>,

    /// Constants, unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub constants: Vec<Constant>,
}

/// A data source's configuration in one environment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    /// The data source's name, as queries refer to it.
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = matches(patterns::DATA_SOURCE_NAME, "spec.dataSources[].name must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    pub name: String,

    /// The data source kind, as ToolJet names it (postgresql, mysql, restapi, graphql, ...).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = matches("^[a-z][a-z0-9_-]*$", "spec.dataSources[].kind must be a ToolJet data source kind in lowercase, e.g. postgresql or restapi"))]
    pub kind: String,

    /// Plain (non-secret) options: host, port, database, base URL, ... Values are any JSON
    /// (strings, numbers, booleans, lists, objects) and are kept as given. Credentials belong in
    /// secretOptions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::plain_options")]
    pub options: BTreeMap<String, serde_json::Value>,

    /// Secret options (passwords, tokens, keys), each read from a key of a Secret in the same
    /// namespace. Never an inline value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 50))]
    pub secret_options: BTreeMap<String, SecretValueSource>,
}

/// The kind of a constant, as in ToolJet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConstantType {
    /// A plain value, visible to app builders.
    Global,
    /// A secret value, read from a Secret and never shown.
    Secret,
}

/// A constant's value in one environment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.type != 'Global' || (has(self.value) && !has(self.valueFrom))")
        .message("spec.constants[]: a Global constant takes its value in value (1-10000 characters) and no valueFrom"),
    validation = Rule::new("self.type != 'Secret' || (has(self.valueFrom) && !has(self.value))")
        .message("spec.constants[]: a Secret constant must not have an inline value; put the value in a Secret and set valueFrom.secretKeyRef")
)]
pub struct Constant {
    /// The constant's name, as apps refer to it (`{{constants.NAME}}` or `{{secrets.NAME}}`):
    /// letters, digits and '_', not starting with a digit, at most 50 characters.
    #[schemars(length(min = 1, max = 50))]
    #[x_kube(validation = matches(patterns::CONSTANT_NAME, "spec.constants[].name must be letters, digits and '_' and not start with a digit, e.g. API_BASE_URL"))]
    pub name: String,

    /// Global (plain value) or Secret (from a Secret). Immutable once created.
    #[serde(rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spec.constants[].type is immutable: remove the constant and add it again under a new name to change its type"))]
    pub type_: ConstantType,

    /// The value of a Global constant (1-10000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10000))]
    pub value: Option<String>,

    /// Where the value of a Secret constant comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretValueSource>,
}

/// Observed state of an EnvironmentConfig. Names and hashes only, never values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentConfigStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The materialised Secret (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// SHA-256 of the materialised content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,

    /// How many data sources were materialised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source_count: Option<i32>,

    /// How many constants were materialised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant_count: Option<i32>,

    /// `Ready` with reasons Materialized, SecretNotFound, KeyNotFound or Conflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}
