//! The admission webhook's vocabulary: the operations it judges, the accesses (verbs on
//! `environments` and `tooljetapps`) a request may need, the facts the server gathers for a
//! request ([`Facts`]), what every review starts from (`Review`), and the verdict. The rules
//! that use them: [`super::needs`] (which accesses a request needs), [`super::reviews`] and
//! [`super::gates`] (the verdicts), [`super::mutations`] (the stamps the mutating webhook
//! writes).

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::GROUP;
use crate::lifecycle::Pipeline;

/// The one `tooljet.io/` annotation users may set, guarded by RBAC (verb `unprotect` on
/// `tooljetapps`): `disabled` lets an app with versions past its first stage be deleted.
pub const DELETION_PROTECTION_ANNOTATION: &str = "tooljet.io/deletion-protection";

/// The denial for a request that lacks the object(s) its operation carries.
pub const MALFORMED: &str =
    "malformed admission request: the object or old object its operation needs is missing";

/// Verb on `environments` (name = stage): move a version into the stage.
pub const PROMOTE: &str = "promote";
/// Verb on `environments` (name = last stage): set, change or remove an app's release.
pub const RELEASE: &str = "release";
/// Verb on `environments` (name = stage): create, change or delete the stage's configuration;
/// and on `tooljetapps` (name = app): change an app's pipeline or rollout.
pub const CONFIGURE: &str = "configure";
/// Verb on `tooljetapps` (name = app): switch an app's deletion protection off.
pub const UNPROTECT: &str = "unprotect";
/// Verb on `environments` (name = stage): approve versions entering the stage (create or
/// delete an Approval).
pub const APPROVE: &str = "approve";
/// Verb on `environments` (name = stage): promote or release through a closed promotion window
/// (break-glass), with `tooljet.io/override-reason` in the same request.
pub const OVERRIDE: &str = "override";

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// A permission the requester needs, asked of the apiserver as a SubjectAccessReview.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub verb: &'static str,
    /// API group; empty for the core group.
    pub group: &'static str,
    pub resource: &'static str,
    /// The object's name; `None`: every object of the resource in the namespace.
    pub name: Option<String>,
}

impl Access {
    /// `verb` on the virtual resource `environments` named `stage`.
    pub fn environment(verb: &'static str, stage: &str) -> Access {
        Access {
            verb,
            group: GROUP,
            resource: "environments",
            name: Some(stage.to_string()),
        }
    }

    /// `verb` on the ToolJetApp `name`.
    pub fn app(verb: &'static str, name: &str) -> Access {
        Access {
            verb,
            group: GROUP,
            resource: "tooljetapps",
            name: Some(name.to_string()),
        }
    }

    /// `configure` on every ToolJetApp of the namespace (no name: a selector can match apps
    /// created later).
    pub fn configure_apps() -> Access {
        Access {
            verb: CONFIGURE,
            group: GROUP,
            resource: "tooljetapps",
            name: None,
        }
    }

    /// `update` on the PromotionPolicy `name`: what RBAC asks of editing it.
    pub fn edit_policy(name: &str) -> Access {
        Access {
            verb: "update",
            group: GROUP,
            resource: "promotionpolicies",
            name: Some(name.to_string()),
        }
    }

    /// `delete` on the tooljet.io object `name` of `resource` (e.g. `appversions`).
    pub fn delete(resource: &'static str, name: &str) -> Access {
        Access {
            verb: "delete",
            group: GROUP,
            resource,
            name: Some(name.to_string()),
        }
    }

    /// Reading the Secret `name`.
    pub fn read_secret(name: &str) -> Access {
        Access {
            verb: "get",
            group: "",
            resource: "secrets",
            name: Some(name.to_string()),
        }
    }

    /// Patching the Deployment `name`, or every Deployment of the namespace.
    pub fn patch_deployment(name: Option<&str>) -> Access {
        Access {
            verb: "patch",
            group: "apps",
            resource: "deployments",
            name: name.map(str::to_string),
        }
    }

    /// `verb promote on resource environments named staging (group tooljet.io)`.
    pub fn describe(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match &self.name {
            Some(name) => format!(
                "verb {} on resource {} named {name} (group {group})",
                self.verb, self.resource
            ),
            None => format!(
                "verb {} on every object of resource {} (group {group})",
                self.verb, self.resource
            ),
        }
    }
}

/// A version of the app, as the rules need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionFact {
    pub name: String,
    pub version_name: String,
    pub environment: String,
}

/// The app a request concerns: its pipeline and its versions (the version under review excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFact {
    pub name: String,
    pub environments: Vec<String>,
    pub versions: Vec<VersionFact>,
    /// Stage -> what failed, for each stage whose workloads failed their last verification
    /// (the app's status): no version is promoted out of it.
    pub failed_stages: BTreeMap<String, String>,
}

impl AppFact {
    pub fn pipeline(&self) -> Pipeline<'_> {
        Pipeline::new(&self.environments)
    }
}

/// What the handler looked up for the request.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The ToolJetApp (for an AppVersion: `spec.app`; for a ToolJetApp: itself, as stored).
    pub app: Option<AppFact>,
    /// The namespace is being deleted (its contents go with it, whatever their stage).
    pub namespace_terminating: bool,
    /// The SubjectAccessReview answers for the accesses the request needs. Not asked: refused.
    pub granted: BTreeMap<Access, bool>,
    /// For a promotion: what the target stage's configuration lacks of what the version needs.
    pub missing_in_target: Vec<String>,
    /// For an EnvironmentConfig: another live config with the same (app-or-workspace, stage).
    pub rival: Option<String>,
    /// For a promotion or a release: the gate on the stage entered, when a PromotionPolicy
    /// guards it. For an Approval: the gate on the stage it approves entry to.
    pub gate: Option<GateFacts>,
    /// For an Approval: the version it names, as stored.
    pub approved: Option<ApprovedVersion>,
    /// For a ToolJetApp update that changes its labels or pipeline: the PromotionPolicies whose
    /// guard of it changes, each with the stages it lists ([`crate::gate::guards_changed`]).
    pub guards_changed: Vec<(String, Vec<String>)>,
}

impl Facts {
    /// Whether the requester holds `access`.
    pub fn may(&self, access: &Access) -> bool {
        self.granted.get(access) == Some(&true)
    }
}

/// What every review starts from: the object the request concerns (the new one, else the old),
/// its name and namespace, the requester and the facts.
pub(super) struct Review<'a, K> {
    pub subject: &'a K,
    pub name: String,
    pub ns: String,
    pub user: &'a str,
    pub facts: &'a Facts,
}

impl<'a, K: ResourceExt> Review<'a, K> {
    /// `None` when the request carries neither object (it is malformed: [`MALFORMED`]).
    pub fn of(
        old: Option<&'a K>,
        new: Option<&'a K>,
        user: &'a str,
        facts: &'a Facts,
    ) -> Option<Self> {
        let subject = new.or(old)?;
        Some(Review {
            subject,
            name: subject.name_any(),
            ns: subject.namespace().unwrap_or_default(),
            user,
            facts,
        })
    }
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
}

/// The denial for a missing permission: who, what, the access it needs, and whom to ask.
pub(super) fn forbidden(
    user: &str,
    what: &str,
    needs: &str,
    access: &Access,
    ns: &str,
    ask: &str,
) -> Verdict {
    Deny(format!(
        "user {user} may not {what}: {needs} needs {} in namespace {ns}; {ask}",
        access.describe()
    ))
}

pub(super) const NOT_STAMPED: &str = "tooljet-operator's mutating webhook did not run, or the stamp was altered; check that \
     MutatingWebhookConfiguration tooljet-operator is installed";

/// The gate on one stage of one app, as the server found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateFacts {
    /// The PromotionPolicies guarding the stage (sorted).
    pub policies: Vec<String>,
    /// When approvals are required: whether enough count, and the tally for a denial.
    pub approvals: Option<(bool, String)>,
    /// While the windows close the stage (or a guarding policy cannot be evaluated): why, and
    /// when it opens.
    pub closed: Option<String>,
    /// Separation of duties applies: the version's creator and last editor may not approve.
    pub separation_of_duties: bool,
}

impl GateFacts {
    /// Both gates at once: every policy of either, closed if either is closed, approvals
    /// satisfied only if both are.
    pub fn stricter(a: Option<GateFacts>, b: Option<GateFacts>) -> Option<GateFacts> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let mut policies = a.policies;
                policies.extend(b.policies);
                policies.sort();
                policies.dedup();
                let approvals = match (a.approvals, b.approvals) {
                    (Some((false, t)), _) | (_, Some((false, t))) => Some((false, t)),
                    (Some(x), _) | (None, Some(x)) => Some(x),
                    (None, None) => None,
                };
                Some(GateFacts {
                    policies,
                    approvals,
                    closed: a.closed.or(b.closed),
                    separation_of_duties: a.separation_of_duties || b.separation_of_duties,
                })
            }
            (a, b) => a.or(b),
        }
    }
}

/// The AppVersion an Approval names, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovedVersion {
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub stage: String,
    /// The stage after it in the app's pipeline (`None`: it is in the last stage).
    pub next_stage: Option<String>,
    pub app: String,
    pub creator: Option<String>,
    pub last_editor: Option<String>,
    /// Everyone who edited it ([`crate::lifecycle::stamps::editors_of`]).
    pub editors: Vec<String>,
    /// Being deleted.
    pub deleting: bool,
}

use Verdict::Deny;
