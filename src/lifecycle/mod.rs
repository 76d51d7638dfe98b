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
//! | [`names`] | which version already holds a `versionName` |
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
//!   for the whole workspace (no `spec.app`). App entries win over workspace entries.
//! - **constant**: a ToolJet constant, Global (read in the browser) or Secret (server-side only);
//!   a **reference** is a `{{constants.X}}` or `{{secrets.X}}` in a definition.
//! - **gate**: what guards entry to a stage: the PromotionPolicies that list it, their
//!   approvals (Approval objects, pinned to the generation reviewed) and windows.
//! - **stamp**: a `tooljet.io/*` annotation only the admission webhook writes (who created,
//!   edited, promoted, released, approved; the references of a definition).

pub mod constants;
pub mod history;
pub mod names;
pub mod pipeline;
pub mod references;
pub mod stamps;

pub use pipeline::{Move, Pipeline, ReleaseCheck};
pub use references::References;
