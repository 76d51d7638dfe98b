use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{
    CustomResource, KubeSchema,
    core::{Selector, SelectorExt},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DEFAULT_PIPELINE, matches, patterns, schema};

/// A ToolJet application and its environment pipeline. Versions of the app are AppVersions; the
/// version live for end users is `spec.release.version`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tooljet.io",
    version = "v1alpha1",
    kind = "ToolJetApp",
    plural = "tooljetapps",
    shortname = "tjapp",
    category = "tooljet",
    namespaced,
    status = "ToolJetAppStatus",
    doc = "A ToolJet application and its environment pipeline (development -> staging -> production by default). \
           Its versions are AppVersions; spec.release.version is the version live for end users.",
    printcolumn(
        name = "Environments",
        type_ = "string",
        json_path = ".spec.environments",
        description = "The ordered environment pipeline"
    ),
    printcolumn(
        name = "Released",
        type_ = "string",
        json_path = ".status.releasedVersion",
        description = "The AppVersion live for end users"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status",
        description = "Whether every stage's workloads passed their last verification"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.rollout) || self.rollout.all(r, r.environment in self.environments)")
    .message("spec.rollout[].environment must name a stage of spec.environments; add the stage to the pipeline or fix the name")
    .field_path(".rollout"))]
#[serde(rename_all = "camelCase")]
pub struct ToolJetAppSpec {
    /// Human-readable name of the application, as shown in ToolJet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub display_name: Option<String>,

    /// The ordered environment pipeline. Versions are created and edited in the first stage,
    /// promoted one stage at a time, and released from the last. 2-10 unique DNS-label names;
    /// defaults to [development, staging, production].
    #[serde(default = "default_pipeline")]
    #[schemars(schema_with = "schema::pipeline")]
    #[x_kube(
        validation = Rule::new("self.all(e, e.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))")
            .message("spec.environments: every stage must be a DNS label (lowercase letters, digits and '-', e.g. qa)"),
        validation = Rule::new("self.all(e, self.exists_one(o, o == e))")
            .message("spec.environments: stage names must be unique; remove the duplicate stage")
    )]
    pub environments: Vec<String>,

    /// The release: which AppVersion end users get. Rollback is pointing it at an older version
    /// that is in the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,

    /// Workloads that consume an environment's configuration. The operator stamps that
    /// environment's config hash on their pod template so they restart when its values change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["environment".into()]))]
    pub rollout: Vec<RolloutTarget>,

    /// How a stage's rollout workloads are verified after a release, a rollback, a promotion
    /// into the stage or a change of its configuration, and whether a release that fails is
    /// rolled back automatically. Defaults: 600 s, no automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// How a stage's workloads are verified, and what a failed release does.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// How long the stage's workloads have to become available with what changed (every
    /// Deployment's new ReplicaSet fully available) before the verification fails. 10-86400;
    /// default 600. A Deployment reporting ProgressDeadlineExceeded fails it sooner.
    #[serde(default = "default_verification_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: u32,

    /// Release the previous release again when a release fails verification (recorded as
    /// automatic in the release history, allowed through a deny window). A rollback that fails
    /// verification is not rolled back: the operator stops and reports. Default false.
    #[serde(default)]
    pub auto_rollback: bool,
}

/// The verification timeout when none is set: 10 minutes (the Deployment default progress
/// deadline).
pub const DEFAULT_VERIFICATION_TIMEOUT: u32 = 600;

fn default_verification_timeout() -> u32 {
    DEFAULT_VERIFICATION_TIMEOUT
}

impl Verification {
    /// The timeout as a duration.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.into())
    }
}

impl Default for Verification {
    fn default() -> Verification {
        Verification {
            timeout_seconds: DEFAULT_VERIFICATION_TIMEOUT,
            auto_rollback: false,
        }
    }
}

impl ToolJetApp {
    /// The released version, if any.
    pub fn released(&self) -> Option<&str> {
        self.spec.release.as_ref().map(|r| r.version.as_str())
    }

    /// The verification settings, defaults filled in.
    pub fn verification(&self) -> Verification {
        self.spec.verification.clone().unwrap_or_default()
    }

    /// The last verification of `stage`'s workloads, if it has rollout workloads.
    pub fn verification_of(&self, stage: &str) -> Option<&StageVerification> {
        self.status
            .as_ref()?
            .verifications
            .iter()
            .find(|v| v.environment == stage)
    }
}

impl RolloutTarget {
    /// Whether this entry rolls out Deployment `name` (labelled `labels`): it names it, or its
    /// selector (when valid) matches it.
    pub fn takes(&self, name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.deployments.iter().any(|d| d == name)
            || self
                .parsed_selector()
                .ok()
                .flatten()
                .is_some_and(|s| s.matches(labels))
    }

    /// The selector as kube's [`Selector`], the same value used to match labels and to build the
    /// list query, so the two never disagree. `Ok(None)`: no selector. An error names the problem:
    /// an unknown operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values, or a
    /// selector that selects every Deployment.
    pub fn parsed_selector(&self) -> Result<Option<Selector>, String> {
        let Some(selector) = &self.selector else {
            return Ok(None);
        };
        for e in selector.match_expressions.iter().flatten() {
            let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
            match e.operator.as_str() {
                "In" | "NotIn" if !has_values => {
                    return Err(format!(
                        "matchExpressions key {} with operator {} needs at least one value",
                        e.key, e.operator
                    ));
                }
                "Exists" | "DoesNotExist" if has_values => {
                    return Err(format!(
                        "matchExpressions key {} with operator {} takes no values",
                        e.key, e.operator
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(format!(
                        "matchExpressions key {} has operator {other}; use In, NotIn, Exists or DoesNotExist \
                         (operators are case-sensitive)",
                        e.key
                    ));
                }
            }
        }
        let parsed = Selector::try_from(selector.clone()).map_err(|e| e.to_string())?;
        if parsed.selects_all() {
            return Err(
                "an empty selector selects every Deployment of the namespace; name the Deployments or give \
                 matchLabels"
                    .into(),
            );
        }
        Ok(Some(parsed))
    }
}

pub fn default_pipeline() -> Vec<String> {
    DEFAULT_PIPELINE.iter().map(|s| s.to_string()).collect()
}

/// Which AppVersion is live for end users.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    /// Name of an AppVersion of this app that is in the last stage of the pipeline.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = matches(patterns::DNS_SUBDOMAIN, "spec.release.version must be the metadata.name of an AppVersion (lowercase letters, digits, '-' and '.')"))]
    pub version: String,
}

/// The workloads that run with one environment's configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.deployments) > 0 || has(self.selector)")
    .message("spec.rollout[]: name the workloads with deployments, selector or both"))]
pub struct RolloutTarget {
    /// The stage whose configuration the workloads consume.
    #[schemars(length(min = 1, max = 63))]
    pub environment: String,

    /// Deployments (in this namespace) to restart when the stage's configuration changes.
    #[serde(default)]
    #[schemars(schema_with = "schema::deployment_names")]
    pub deployments: Vec<String>,

    /// Deployments (in this namespace) selected by label, restarted likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// How the workloads restart when the stage's configuration (or, in the last stage, the
    /// release) changes: `AllAtOnce` (default) or `OneAtATime` (by name, each fully available
    /// before the next starts; a workload that fails stops the rest).
    #[serde(default, skip_serializing_if = "RolloutStrategy::is_default")]
    pub strategy: RolloutStrategy,
}

/// How a stage's workloads restart.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Every workload at once.
    #[default]
    AllAtOnce,
    /// One workload at a time, by name, each fully available before the next.
    OneAtATime,
}

impl RolloutStrategy {
    fn is_default(&self) -> bool {
        *self == RolloutStrategy::AllAtOnce
    }
}

/// Observed state of a ToolJetApp.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolJetAppStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The versions in each stage, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<EnvironmentVersions>,

    /// The AppVersion live for end users (the last valid spec.release.version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_version: Option<String>,

    /// The most recent releases and rollbacks, newest last (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release_history: Vec<ReleaseRecord>,

    /// The gates on entering each guarded stage (PromotionPolicies selecting the app).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<StageGate>,

    /// The last verification of each stage that has rollout workloads, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verifications: Vec<StageVerification>,

    /// The automatic rollback the operator is making: recorded here before it changes
    /// `spec.release`, so that the release it makes is known for automatic (and never rolled back
    /// itself), also after a restart. Cleared once that release is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_rollback: Option<AutomaticRollback>,

    /// `Ready`: the release points at a version in the last stage and every stage is consistent;
    /// `RolloutReady`: every rollout workload holds what it serves; `Verified`: no stage's
    /// workloads failed their last verification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// An automatic rollback under way.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AutomaticRollback {
    /// The release that failed verification.
    pub from: String,
    /// The release it goes back to.
    pub to: String,
    /// Why.
    pub reason: String,
    /// When the operator decided it.
    pub at: Time,
}

impl StageVerification {
    /// What it verifies, in words: `Release of crm-v2`, `Configuration`.
    pub fn about(&self) -> String {
        match &self.version {
            Some(version) => format!("{:?} of {version}", self.cause),
            None => format!("{:?}", self.cause),
        }
    }
}

/// What started a stage's verification.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationCause {
    /// A release (the last stage).
    Release,
    /// A release of a version released before (the last stage).
    Rollback,
    /// The operator's own rollback after a release failed verification (the last stage).
    AutomaticRollback,
    /// A version entered the stage.
    Promotion,
    /// The stage's configuration changed (its workloads restarted).
    Configuration,
}

/// Where a verification stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationPhase {
    /// Waiting for the workloads.
    Progressing,
    /// Every workload is available with what changed.
    Verified,
    /// A workload reported ProgressDeadlineExceeded, or the timeout passed first.
    Failed,
}

/// The last verification of one stage's rollout workloads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageVerification {
    /// The stage.
    pub environment: String,
    /// What started it.
    pub cause: VerificationCause,
    /// The version released, rolled back to or promoted (none for a configuration change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Progressing, Verified or Failed.
    pub phase: VerificationPhase,
    /// When it started.
    pub started_at: Time,
    /// When it was verified or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The Deployment waited for (Progressing) or that failed (Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Workloads available with what changed, of all: `1/3`.
    pub progress: String,
    /// What it waits for, what failed, or how long it took.
    pub message: String,
    /// A digest of what the stage's workloads were to carry when it started (their
    /// configuration hashes and release): the same change seen again (after a restart, or as
    /// one-at-a-time restarts go on) does not start it over.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
}

/// The versions of an app in one stage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentVersions {
    /// The stage.
    pub name: String,
    /// The AppVersions (metadata.name) in it, sorted.
    #[serde(default)]
    pub versions: Vec<String>,
}

/// The gate on entering one stage of an app: every PromotionPolicy selecting the app and
/// guarding the stage, combined strictly (the highest `required`, every window).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageGate {
    /// The stage.
    pub environment: String,
    /// The PromotionPolicies guarding it, sorted.
    pub policies: Vec<String>,
    /// Distinct approvals required to enter it (0: none).
    #[serde(default)]
    pub required_approvals: u32,
    /// Whether the windows let promotions (and, for the last stage, releases) in now.
    pub open: bool,
    /// While closed: when it opens next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_open: Option<Time>,
    /// While open and a window will close it: when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_close: Option<Time>,
    /// While closed: which window closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
}

/// One release or rollback.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRecord {
    /// The AppVersion released.
    pub version: String,
    /// When it was released.
    pub at: Time,
    /// Who released it (the requesting user, as the admission webhook recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Set when the release passed a closed promotion window by break-glass override: the reason
    /// given (`tooljet.io/override-reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// Whether this release went back to a version released before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Whether the operator made it: an automatic rollback after a release failed verification.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automatic: bool,
    /// Why the operator made it (automatic rollbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How its verification ended (absent while it runs, or when the last stage has no rollout
    /// workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationPhase>,
}
