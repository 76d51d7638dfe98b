use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{SecretValueSource, schema};

/// Routes the lifecycle events of the selected apps to an HTTP endpoint: approvals needed and
/// given, promotions, releases, rollbacks, freezes starting and ending.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tooljet.io",
    version = "v1alpha1",
    kind = "Notification",
    plural = "notifications",
    shortname = "tjnotify",
    category = "tooljet",
    namespaced,
    status = "NotificationStatus",
    doc = "Sends the lifecycle events of the selected apps (approval needed, approved, promoted, released, rolled \
           back, freeze started and ended) to an HTTP endpoint, as CloudEvents 1.0 or a Slack-compatible payload, \
           in time order and at least once. The endpoint's URL is read from a Secret of the namespace. Creating \
           or changing one needs verb configure on resource tooljetapps (it reveals who did what).",
    printcolumn(
        name = "Format",
        type_ = "string",
        json_path = ".spec.endpoint.format",
        description = "CloudEvents or Slack"
    ),
    printcolumn(
        name = "Last",
        type_ = "string",
        json_path = ".status.lastDelivered.type",
        description = "The type of the last event delivered"
    ),
    printcolumn(
        name = "Through",
        type_ = "date",
        json_path = ".status.deliveredThrough",
        description = "The time of the last event delivered"
    ),
    printcolumn(
        name = "Failures",
        type_ = "integer",
        json_path = ".status.failures",
        description = "Consecutive failed deliveries"
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
pub struct NotificationSpec {
    /// The ToolJetApps (same namespace) whose events it sends, by label. Absent or `{}`: every
    /// app of the namespace, including apps created later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_selector: Option<LabelSelector>,

    /// The event types to send. Empty or absent: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::event_types")]
    pub events: Vec<LifecycleEvent>,

    /// Where and how to send them.
    pub endpoint: NotificationEndpoint,
}

/// A lifecycle event type.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub enum LifecycleEvent {
    /// A version entered a stage whose next stage requires approvals (a PromotionPolicy
    /// selecting the app with `approvals.required` > 0 guards it).
    ApprovalNeeded,
    /// An Approval was created.
    Approved,
    /// A version was promoted (an entry of its promotion history).
    Promoted,
    /// A version was released (an entry of the app's release history).
    Released,
    /// A version released before was released again, by a person or by the operator's
    /// automatic rollback.
    RolledBack,
    /// A Deny window of a PromotionPolicy selecting a covered app began.
    FreezeStarted,
    /// That window ended.
    FreezeEnded,
}

impl LifecycleEvent {
    /// Every type, in declaration order.
    pub const ALL: [LifecycleEvent; 7] = [
        LifecycleEvent::ApprovalNeeded,
        LifecycleEvent::Approved,
        LifecycleEvent::Promoted,
        LifecycleEvent::Released,
        LifecycleEvent::RolledBack,
        LifecycleEvent::FreezeStarted,
        LifecycleEvent::FreezeEnded,
    ];

    /// The name, as in the spec and the status (`ApprovalNeeded`).
    pub fn name(self) -> &'static str {
        match self {
            LifecycleEvent::ApprovalNeeded => "ApprovalNeeded",
            LifecycleEvent::Approved => "Approved",
            LifecycleEvent::Promoted => "Promoted",
            LifecycleEvent::Released => "Released",
            LifecycleEvent::RolledBack => "RolledBack",
            LifecycleEvent::FreezeStarted => "FreezeStarted",
            LifecycleEvent::FreezeEnded => "FreezeEnded",
        }
    }
}

/// An HTTP endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEndpoint {
    /// `CloudEvents` (CloudEvents 1.0, structured JSON) or `Slack` (an incoming webhook's
    /// `{"text": ...}`).
    pub format: PayloadFormat,

    /// The URL (`http://` or `https://`), from a key of a Secret in this namespace: a webhook
    /// URL is a credential.
    pub url_from: SecretValueSource,

    /// How long one delivery may take (1-60 s, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<u32>,
}

impl NotificationEndpoint {
    /// The delivery timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.timeout_seconds.unwrap_or(10).clamp(1, 60)))
    }
}

/// The shape of a payload.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    CloudEvents,
    Slack,
}

/// Observed state of a Notification: the delivery cursor and the last outcome.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NotificationStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The time of the newest event delivered (at first, the Notification's creation). An event
    /// up to 10 minutes older that `recentlyDelivered` does not list is still sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_through: Option<Time>,

    /// The events delivered (or given up as too late) within 20 minutes of `deliveredThrough`,
    /// oldest first, at most 1000.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recently_delivered: Vec<DeliveredId>,

    /// Events found more than 10 minutes behind `deliveredThrough` (their entry reached the API
    /// late, or a clock was that far off), and therefore not sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub too_late: u32,

    /// The last event delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered: Option<DeliveredEvent>,

    /// Events waiting to be delivered.
    #[serde(default)]
    pub pending: u32,

    /// The last failed delivery, without the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,

    /// Consecutive failed deliveries (0 after a success).
    #[serde(default)]
    pub failures: u32,

    /// When the failed delivery is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,

    /// `Ready`: the endpoint's Secret resolves to a URL and the last delivery succeeded
    /// (reasons `Failing`, `Rejected` when the endpoint refuses the event, `EndpointMissing`,
    /// `InvalidURL`, `InvalidSelector`); `Delivering`: whether events wait (`Pending`,
    /// `UpToDate`, or the same failure reasons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An event delivered, by id.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredId {
    /// Its id (the idempotency key sent with it).
    pub id: String,
    /// When it happened.
    pub at: Time,
}

/// An event delivered.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredEvent {
    /// Its id (the idempotency key sent with it).
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub type_: LifecycleEvent,
    /// When it happened.
    pub at: Time,
}
