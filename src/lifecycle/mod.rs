//! The lifecycle's rules, written once: pure functions over the API types (no client, no clock)
//! that the controllers, the admission webhook and `kubectl tooljet` all call, so that no two
//! copies of a rule can disagree.
//!
//! | module | the rule |
//! |---|---|
//! | [`pipeline`] | an app's stages: first, last, next, where a stage is, whether a move is a promotion, what may be released |
//! | [`references`] | the `{{constants.X}}` / `{{secrets.X}}` names an app definition uses |
//! | [`constants`] | what ToolJet accepts as a constant, and the constant a secret data source option becomes |
//! | [`history`] | how a status history records an entry and stays bounded |
//! | [`names`] | which version already holds a `versionName`; an app's name as a label value |
//! | [`stamps`] | reading what the webhook stamped: stages, editors, who moved a version and when, an override |
//!
//! # Glossary
//!
//! - **app** (ToolJetApp): one ToolJet application and its **pipeline**, the ordered **stages**
//!   (`spec.environments`, e.g. development -> staging -> production).
//! - **version** (AppVersion): one version of an app's definition; it is in one stage at a time.
//!   It is created, edited, renamed and deleted only in the **first stage**.
//! - **promotion**: a version moving to the **next stage** (`spec.environment`, one stage
//!   forward). Nothing else about it changes in the same request.
//! - **release**: the version end users get (`ToolJetApp.spec.release`); it is in the **last
//!   stage**. A **rollback** is a release of an earlier version still in the last stage.
//! - **configuration** (EnvironmentConfig): a stage's data sources and constants, for one app or
//!   for the whole workspace (no `spec.app`). In the Secrets the operator merges (a version's
//!   resolved Secret, a workload's Secret) an app entry wins over a workspace entry of the same
//!   name; a container that takes both stage Secrets with `envFrom` gets the later source's.
//! - **constant**: a ToolJet constant, Global (read in the browser) or Secret (server-side only);
//!   a **reference** is a `{{constants.X}}` or `{{secrets.X}}` in a definition.
//! - **gate**: what guards entry to a stage: the PromotionPolicies that list it, their
//!   approvals (Approval objects, pinned to the generation reviewed) and windows. Computed as
//!   `gate::StageGuard`, reported in `ToolJetApp.status.gates[]` (`api::StageGate`); whether its
//!   windows let promotions pass now is a **window state** (`policy::WindowState`).
//! - **stamp**: a `tooljet.io/*` annotation only the admission webhook writes (who created,
//!   edited, promoted, released, approved; the references of a definition).
//! - **facts** (the webhook's word only): what the webhook reads from the caches and the API to
//!   judge one request (`webhook::vocabulary::Facts`).
//! - **trigger** (the controllers' word): the part of an object whose change wakes a controller
//!   (`cache::triggers`; e.g. `appversion::config_trigger`).

pub mod constants;
pub mod history;
pub mod names;
pub mod pipeline;
pub mod references;
pub mod stamps;

pub use pipeline::{Move, Pipeline, ReleaseCheck};
pub use references::References;
