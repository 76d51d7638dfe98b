use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{matches, patterns, schema};

/// Gates on entering stages: required approvals and promotion windows (freezes). Set by
/// workspace admins; enforced by the admission webhook on promotions, releases and rollbacks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tooljet.io",
    version = "v1alpha1",
    kind = "PromotionPolicy",
    plural = "promotionpolicies",
    shortname = "tjpolicy",
    category = "tooljet",
    namespaced,
    status = "PromotionPolicyStatus",
    doc = "Gates on entering stages of the selected apps' pipelines: a number of distinct approvals (Approval \
           objects), with separation of duties, and promotion windows (freezes) as Argo CD sync windows: a Deny \
           window closes the stage, and if any Allow window exists the stage is open only inside one. For the last \
           stage the windows also gate releases and rollbacks.",
    printcolumn(
        name = "Environments",
        type_ = "string",
        json_path = ".spec.environments",
        description = "The stages it guards"
    ),
    printcolumn(
        name = "Approvals",
        type_ = "integer",
        json_path = ".spec.approvals.required",
        description = "Distinct approvals required to enter a guarded stage"
    ),
    printcolumn(
        name = "Open",
        type_ = "boolean",
        json_path = ".status.open",
        description = "Whether the windows let promotions into the guarded stages now"
    ),
    printcolumn(
        name = "Apps",
        type_ = "integer",
        json_path = ".status.selectedApps",
        description = "Number of apps selected"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.approvals) || (has(self.windows) && size(self.windows) > 0)")
    .message("a PromotionPolicy must require approvals (spec.approvals) or define windows (spec.windows), or it guards nothing"))]
#[serde(rename_all = "camelCase")]
pub struct PromotionPolicySpec {
    /// The ToolJetApps (same namespace) it applies to, by label. Absent or `{}`: every app of
    /// the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_selector: Option<LabelSelector>,

    /// The stages it guards: promoting into them and, for an app's last stage, releasing and
    /// rolling back. A stage that is not in an app's pipeline guards nothing for that app.
    #[schemars(schema_with = "schema::stage_set")]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
        .message("spec.environments: every stage must be a DNS label (lowercase letters, digits and '-', e.g. production)"))]
    pub environments: Vec<String>,

    /// Approvals required before a version may enter a guarded stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalRequirement>,

    /// When the guarded stages are open. Deny wins; if any Allow window exists, the stages are
    /// open only while one is active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub windows: Vec<PromotionWindow>,
}

/// How many approvals, from whom.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequirement {
    /// Distinct approvers needed (1-10).
    #[schemars(range(min = 1, max = 10))]
    pub required: u32,

    /// The version's creator, its last editor and the person promoting it may not approve it.
    #[serde(default)]
    pub separation_of_duties: bool,
}

/// Whether a window opens or closes the guarded stages.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    Allow,
    Deny,
}

/// A recurring window: it starts at every time `schedule` matches (in `timeZone`) and lasts
/// `duration`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PromotionWindow {
    /// `Allow` (promotions only inside such windows) or `Deny` (no promotions inside).
    pub kind: WindowKind,
    /// When the window starts: a 5-field cron expression (minute hour day-of-month month
    /// day-of-week), e.g. `0 18 * * 5` for Fridays at 18:00.
    #[schemars(length(min = 9, max = 100))]
    pub schedule: String,
    /// How long it lasts from each start, e.g. `62h` or `1h30m`.
    #[schemars(length(min = 2, max = 20))]
    pub duration: String,
    /// IANA time zone of the schedule, e.g. `Europe/Berlin`. Default: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// What it is for, shown in denials (e.g. `weekend freeze`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
}

/// Observed state of a PromotionPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromotionPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Whether this policy's windows let promotions into the guarded stages now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<bool>,

    /// When the guarded stages open next (while closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_open: Option<Time>,

    /// When the guarded stages close next (while open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_close: Option<Time>,

    /// Number of apps selected.
    #[serde(default)]
    pub selected_apps: u32,

    /// The selected apps and the stages guarded in each, sorted by app (at most 100; see
    /// `selectedApps` for the count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<GuardedApp>,

    /// `Ready`: the windows parse and the status is current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// An app a policy selects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GuardedApp {
    /// The ToolJetApp.
    pub name: String,
    /// Its stages this policy guards (those of spec.environments in its pipeline).
    #[serde(default)]
    pub environments: Vec<String>,
}

/// One person's approval of one version for one stage. Immutable; deleting it revokes it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tooljet.io",
    version = "v1alpha1",
    kind = "Approval",
    plural = "approvals",
    shortname = "tjapproval",
    category = "tooljet",
    namespaced,
    doc = "One person's approval of an AppVersion entering a stage (spec.environment). Created while the version is \
           in the stage just before; who approved and when are recorded by the admission webhook. Immutable; \
           deleting it revokes it. Deleted with its version.",
    selectable = ".spec.version",
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.version",
        description = "The AppVersion approved"
    ),
    printcolumn(
        name = "Environment",
        type_ = "string",
        json_path = ".spec.environment",
        description = "The stage it may enter"
    ),
    printcolumn(
        name = "Approver",
        type_ = "string",
        json_path = ".metadata.annotations.tooljet\\.io/approved-by",
        description = "Who approved (recorded by the admission webhook)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf")
    .message("an Approval is immutable: delete it (revoke) and create a new one"))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// The AppVersion (metadata.name, same namespace) approved.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = matches(patterns::DNS_SUBDOMAIN, "spec.version must be the metadata.name of an AppVersion (lowercase letters, digits, '-' and '.')"))]
    pub version: String,

    /// The stage the version may enter: the one after the stage it is in.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = matches(patterns::DNS_LABEL, "spec.environment must be a stage name (a DNS label such as production)"))]
    pub environment: String,

    /// Why, e.g. a ticket or the QA sign-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub comment: Option<String>,

    /// The `metadata.generation` of the AppVersion the approver reviewed (`kubectl tooljet
    /// status` shows it). Required on create: the webhook refuses an Approval of any other
    /// generation than the version's as stored, so an edit made just before approving is never
    /// approved unseen. Optional in the schema only for Approvals stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub generation: Option<i64>,
}
