//! Condition types and reasons, named once (status readers and tests match on them).

/// Condition types.
pub const READY: &str = "Ready";
pub const CONFIG_RESOLVED: &str = "ConfigResolved";
pub const RELEASED: &str = "Released";
pub const ROLLOUT_READY: &str = "RolloutReady";
pub const VERIFIED: &str = "Verified";
pub const DELIVERING: &str = "Delivering";

/// Reasons.
pub const APP_NOT_FOUND: &str = "AppNotFound";
pub const CONFLICT: &str = "Conflict";
pub const DELIVERED: &str = "Delivered";
pub const ENDPOINT_MISSING: &str = "EndpointMissing";
pub const FAILING: &str = "Failing";
pub const PENDING: &str = "Pending";
pub const UP_TO_DATE: &str = "UpToDate";
pub const DEPLOYMENT_NOT_FOUND: &str = "DeploymentNotFound";
pub const ENVIRONMENT_NOT_IN_PIPELINE: &str = "EnvironmentNotInPipeline";
pub const EVALUATED: &str = "Evaluated";
pub const INVALID_ROLLOUT: &str = "InvalidRollout";
pub const INVALID_SELECTOR: &str = "InvalidSelector";
pub const INVALID_URL: &str = "InvalidURL";
pub const REJECTED: &str = "Rejected";
pub const INVALID_WINDOW: &str = "InvalidWindow";
pub const MATERIALIZED: &str = "Materialized";
pub const PROGRESSING: &str = "Progressing";
pub const VERIFICATION_FAILED: &str = "VerificationFailed";
pub const MISSING_REQUIREMENTS: &str = "MissingRequirements";
pub const NO_RELEASE: &str = "NoRelease";
pub const NO_WORKLOADS: &str = "NoWorkloads";
pub const NOT_RELEASED: &str = "NotReleased";
pub const RESOLVED: &str = "Resolved";
pub const SECRET_EXISTS: &str = "SecretExists";
pub const SYNCED: &str = "Synced";
/// Reasons that are the same word as a condition type.
pub const RELEASED_REASON: &str = "Released";
pub const READY_REASON: &str = "Ready";
pub const VERIFIED_REASON: &str = "Verified";
