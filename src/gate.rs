//! The gate on entering a stage of an app: the PromotionPolicies that guard it, gathered from
//! the caches and evaluated with [`crate::policy`]. The admission webhook judges promotions,
//! releases and Approvals with it; the controllers report it in status.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kube::{ResourceExt, core::SelectorExt};

use crate::{
    api::{
        APPROVED_BY_ANNOTATION, APPROVED_GENERATION_ANNOTATION, AppVersion, Approval,
        CREATED_BY_ANNOTATION, LAST_EDITED_BY_ANNOTATION, PromotionPolicy, ToolJetApp,
        WindowKind as ApiWindowKind,
    },
    cache::Lookups,
    policy::{self, ApprovalFact, Excluded, Requirement, Tally, Window, WindowKind, WindowSpec},
};

/// Every policy guarding one stage of one app, combined strictly: the highest `required`,
/// separation of duties if any asks for it, every window. (What an app's status reports of it
/// is [`crate::api::StageGate`].)
#[derive(Debug, Default)]
pub struct StageGuard {
    pub stage: String,
    /// The guarding policies' names, sorted.
    pub policies: Vec<String>,
    /// Approvals required (`None`: no guarding policy requires any).
    pub requirement: Option<Requirement>,
    pub windows: Vec<Window>,
    /// What could not be evaluated (an invalid window or selector of a stored policy): the stage
    /// stays closed until it is fixed (fail closed).
    pub invalid: Vec<String>,
}

/// Whether the stage is open now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub open: bool,
    pub next_open: Option<DateTime<Utc>>,
    pub next_close: Option<DateTime<Utc>>,
    /// While closed: why, and until when.
    pub closed: Option<String>,
}

impl StageGuard {
    /// The windows' verdict at `now`.
    pub fn windows_at(&self, now: DateTime<Utc>) -> WindowState {
        if !self.invalid.is_empty() {
            return WindowState {
                open: false,
                next_open: None,
                next_close: None,
                closed: Some(format!(
                    "closed because a guarding policy cannot be evaluated ({}); fix the policy",
                    self.invalid.join("; ")
                )),
            };
        }
        let gate = policy::window_state(&self.windows, now);
        WindowState {
            open: gate.open,
            next_open: gate.next_open,
            next_close: gate.next_close,
            closed: (!gate.open).then(|| gate.describe()),
        }
    }

    /// The approvals that count for `version` entering this stage, promoted by `promoter`, from
    /// the cached Approvals.
    pub fn tally(
        &self,
        lookups: &Lookups,
        version: &AppVersion,
        promoter: Option<&str>,
    ) -> Option<Tally> {
        let ns = version.namespace().unwrap_or_default();
        self.tally_of(
            approval_facts(lookups.approvals_of(&ns, &version.name_any()), version),
            version,
            promoter,
        )
    }

    /// The same from `facts` gathered elsewhere (the webhook reads them from the API).
    pub fn tally_of(
        &self,
        facts: Vec<ApprovalFact>,
        version: &AppVersion,
        promoter: Option<&str>,
    ) -> Option<Tally> {
        let requirement = self.requirement.as_ref()?;
        let a = version.annotations();
        let excluded = Excluded {
            creator: a.get(CREATED_BY_ANNOTATION).cloned(),
            last_editor: a.get(LAST_EDITED_BY_ANNOTATION).cloned(),
            editors: crate::lifecycle::stamps::editors_of(version),
            promoter: promoter.map(str::to_string),
        };
        Some(policy::count(
            requirement,
            &facts,
            &version.name_any(),
            &self.stage,
            &excluded,
        ))
    }
}

/// Of `approvals`, those of `version` that approve its current content: owned by this version
/// (by UID, so a deleted version's approvals never count for a new one of the same name) and
/// stamped with its current generation (an edit after approval voids it).
pub fn approval_facts<A: std::borrow::Borrow<Approval>>(
    approvals: impl IntoIterator<Item = A>,
    version: &AppVersion,
) -> Vec<ApprovalFact> {
    let uid = version.uid().unwrap_or_default();
    let generation = version.metadata.generation.unwrap_or_default().to_string();
    let name = version.name_any();
    approvals
        .into_iter()
        .filter(|a| {
            let a = a.borrow();
            a.spec.version == name
                && a.owner_references()
                    .iter()
                    .any(|o| o.kind == "AppVersion" && o.uid == uid)
                && a.annotations().get(APPROVED_GENERATION_ANNOTATION) == Some(&generation)
        })
        .filter_map(|a| {
            let a = a.borrow();
            Some(ApprovalFact {
                name: a.name_any(),
                approver: a.annotations().get(APPROVED_BY_ANNOTATION)?.clone(),
                version: a.spec.version.clone(),
                environment: a.spec.environment.clone(),
                created: a
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| to_chrono(t.0)),
                deleting: a.metadata.deletion_timestamp.is_some(),
            })
        })
        .collect()
}

/// Whether `policy` selects `app` (an absent or empty selector selects every app).
pub fn selects(policy: &PromotionPolicy, app: &ToolJetApp) -> Result<bool, String> {
    let Some(selector) = &policy.spec.app_selector else {
        return Ok(true);
    };
    let selector = kube::core::Selector::try_from(selector.clone())
        .map_err(|e| format!("spec.appSelector: {e}"))?;
    Ok(selector.matches(app.labels()))
}

/// The windows of a policy, parsed; an error names the field (`spec.windows[1].schedule: ...`).
pub fn windows_of(policy: &PromotionPolicy) -> Result<Vec<Window>, String> {
    let name = policy.name_any();
    policy
        .spec
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let label = w
                .description
                .clone()
                .unwrap_or_else(|| format!("windows[{i}]"));
            Window::parse(&WindowSpec {
                kind: match w.kind {
                    ApiWindowKind::Allow => WindowKind::Allow,
                    ApiWindowKind::Deny => WindowKind::Deny,
                },
                schedule: w.schedule.clone(),
                duration: w.duration.clone(),
                time_zone: w.time_zone.clone(),
                description: Some(format!("{label} of PromotionPolicy {name}")),
            })
            .map_err(|e| format!("spec.windows[{i}].{}: {e}", e.field()))
        })
        .collect()
}

/// What is wrong with a policy's spec beyond its schema: each problem names its field.
pub fn problems(policy: &PromotionPolicy) -> Vec<String> {
    let mut problems = vec![];
    if let Some(selector) = &policy.spec.app_selector
        && let Err(e) = kube::core::Selector::try_from(selector.clone())
    {
        problems.push(format!(
            "spec.appSelector: {e}; use In, NotIn, Exists or DoesNotExist"
        ));
    }
    if let Err(e) = windows_of(policy) {
        problems.push(e);
    }
    problems
}

/// The gate on `stage` of `app`, `None` when no policy guards it.
pub fn stage_gate(lookups: &Lookups, app: &ToolJetApp, stage: &str) -> Option<StageGuard> {
    let ns = app.namespace().unwrap_or_default();
    stage_gate_among(&lookups.policies_in(&ns), app, stage)
}

/// [`stage_gate`] over given policies.
pub fn stage_gate_among(
    policies: &[Arc<PromotionPolicy>],
    app: &ToolJetApp,
    stage: &str,
) -> Option<StageGuard> {
    if !app.spec.environments.iter().any(|s| s == stage) {
        return None;
    }
    let mut gate = StageGuard {
        stage: stage.to_string(),
        ..Default::default()
    };
    let mut requirements = vec![];
    for p in policies {
        if p.metadata.deletion_timestamp.is_some()
            || !p.spec.environments.iter().any(|s| s == stage)
        {
            continue;
        }
        let name = p.name_any();
        match selects(p, app) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                gate.policies.push(name.clone());
                gate.invalid.push(format!("PromotionPolicy {name}: {e}"));
                continue;
            }
        }
        gate.policies.push(name.clone());
        if let Some(a) = &p.spec.approvals {
            requirements.push((name.clone(), a.required, a.separation_of_duties));
        }
        match windows_of(p) {
            Ok(windows) => gate.windows.extend(windows),
            Err(e) => gate.invalid.push(format!("PromotionPolicy {name}: {e}")),
        }
    }
    if gate.policies.is_empty() {
        return None;
    }
    gate.policies.sort();
    gate.requirement = Requirement::combine(requirements);
    Some(gate)
}

/// The PromotionPolicies that guard a stage of `app`'s pipeline, with the stages each guards
/// there. A policy whose selector cannot be evaluated counts as selecting (fail closed), as in
/// [`stage_gate_among`].
pub fn guarding(
    policies: &[Arc<PromotionPolicy>],
    app: &ToolJetApp,
) -> std::collections::BTreeMap<String, Vec<String>> {
    policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && selects(p, app).unwrap_or(true))
        .filter_map(|p| {
            let stages: Vec<String> = app
                .spec
                .environments
                .iter()
                .filter(|s| p.spec.environments.contains(s))
                .cloned()
                .collect();
            (!stages.is_empty()).then(|| (p.name_any(), stages))
        })
        .collect()
}

/// The policies whose guard of an app a change of its labels or pipeline adds, removes or
/// moves (`before` and `after` from [`guarding`]), each with every stage it lists: changing whom
/// a policy guards is editing what it does, so it needs what editing the policy needs.
pub fn guards_changed(
    policies: &[Arc<PromotionPolicy>],
    before: &ToolJetApp,
    after: &ToolJetApp,
) -> Vec<(String, Vec<String>)> {
    let (old, new) = (guarding(policies, before), guarding(policies, after));
    policies
        .iter()
        .filter(|p| {
            let name = p.name_any();
            old.get(&name) != new.get(&name)
        })
        .map(|p| (p.name_any(), p.spec.environments.clone()))
        .collect()
}

/// Converts Kubernetes' timestamp.
pub fn to_chrono(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(t.as_second(), t.subsec_nanosecond() as u32).unwrap_or_default()
}

/// And back.
pub fn to_time(t: DateTime<Utc>) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, spec: serde_json::Value) -> Arc<PromotionPolicy> {
        let mut p = PromotionPolicy::new(name, serde_json::from_value(spec).unwrap());
        p.metadata.namespace = Some("acme".into());
        Arc::new(p)
    }

    fn app(labels: &[(&str, &str)], stages: &[&str]) -> ToolJetApp {
        let mut a: ToolJetApp = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp",
            "metadata": { "name": "crm", "namespace": "acme" },
            "spec": { "environments": stages } }))
        .unwrap();
        a.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        a
    }

    #[test]
    fn a_guard_changes_with_the_labels_or_stages_that_decide_it() {
        let policies = [
            policy(
                "critical",
                json!({ "environments": ["production"], "appSelector": { "matchLabels": { "tier": "critical" } },
                        "approvals": { "required": 2 } }),
            ),
            policy(
                "everyone",
                json!({ "environments": ["staging", "production"], "approvals": { "required": 1 } }),
            ),
            policy(
                "broken",
                json!({ "environments": ["production"], "appSelector": { "matchExpressions": [{ "key": "a", "operator": "exists" }] },
                                     "approvals": { "required": 1 } }),
            ),
        ];
        let pipeline = ["development", "staging", "production"];
        let critical = app(&[("tier", "critical")], &pipeline);
        let plain = app(&[], &pipeline);
        assert_eq!(
            guarding(&policies, &critical).keys().collect::<Vec<_>>(),
            ["broken", "critical", "everyone"],
            "an invalid selector counts as selecting"
        );
        // Dropping or adding the label: the selected policy's guard changes, nothing else.
        let changed = guards_changed(&policies, &critical, &plain);
        assert_eq!(
            changed,
            [("critical".to_string(), vec!["production".to_string()])]
        );
        assert_eq!(guards_changed(&policies, &plain, &critical), changed);
        // Another label: nothing changes.
        assert!(guards_changed(&policies, &plain, &app(&[("team", "x")], &pipeline)).is_empty());
        // Renaming a guarded stage: every policy on it changes; renaming an unguarded one: none.
        let renamed = app(&[], &["development", "staging", "prod"]);
        let names: Vec<String> = guards_changed(&policies, &plain, &renamed)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["everyone", "broken"]);
        assert!(
            guards_changed(
                &policies,
                &plain,
                &app(&[], &["dev", "staging", "production"])
            )
            .is_empty()
        );
    }
}
