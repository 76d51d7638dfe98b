//! The rules of promotion policies, pure like [`super::reviews`]: the gate on entering a stage
//! (required approvals, promotion windows, break-glass override), Approvals (who may approve
//! what, immutability, revocation) and changes to PromotionPolicies (only those who may
//! configure every stage a policy guards). The server computes the counts and the window state
//! with [`crate::policy`] and puts them in [`GateFacts`]; these functions turn them into verdicts.

use kube::ResourceExt;

use super::{metadata::*, needs::*, vocabulary::*};
use crate::api::{
    APPROVED_AT_ANNOTATION, APPROVED_BY_ANNOTATION, APPROVED_GENERATION_ANNOTATION, Approval,
    OVERRIDE_REASON_ANNOTATION, PromotionPolicy,
};

use Verdict::{Allow, Deny};

/// The gate on entering `stage`: `what` says what is refused ("AppVersion v cannot be promoted
/// to production"). Approvals are judged for promotions (`approvals_apply`), never passed by an
/// override; a closed window passes only with an override reason in the request and verb
/// `override` on the stage.
pub fn judge(
    what: &str,
    stage: &str,
    approvals_apply: bool,
    override_reason: Option<&str>,
    user: &str,
    ns: &str,
    facts: &Facts,
) -> Option<Verdict> {
    let override_access = Access::environment(OVERRIDE, stage);
    if override_reason.is_some() && !facts.may(&override_access) {
        return Some(forbidden(
            user,
            &format!("override the promotion windows of {stage}"),
            "a break-glass override (annotation tooljet.io/override-reason)",
            &override_access,
            ns,
            "remove the annotation and wait for the window to open, or ask an admin (e.g. tooljet-admin)",
        ));
    }
    let gate = facts.gate.as_ref()?;
    let policies = gate.policies.join(", ");
    if approvals_apply && let Some((false, tally)) = &gate.approvals {
        return Some(Deny(format!(
            "{what}: PromotionPolicy {policies} requires approvals: {tally}. Approvers (verb approve on \
             environments/{stage}) create an Approval with spec.version and spec.environment: {stage} \
             (kubectl tooljet approve); an override does not replace approvals"
        )));
    }
    if let Some(closed) = &gate.closed
        && override_reason.is_none()
    {
        return Some(Deny(format!(
            "{what}: {stage} is {closed} (PromotionPolicy {policies}). Wait until it opens, or, in an emergency, a \
             user with verb override on environments/{stage} sets annotation {OVERRIDE_REASON_ANNOTATION} with \
             the reason in the same request"
        )));
    }
    None
}

/// The owner reference an Approval carries to its version (set by the mutating webhook).
fn owner_uid(a: &Approval) -> Option<&str> {
    a.owner_references()
        .iter()
        .find(|o| o.kind == "AppVersion" && o.name == a.spec.version)
        .map(|o| o.uid.as_str())
}

/// The rules for an Approval request. `facts.approved`: its version, as stored (`None`: no such
/// version); `facts.gate`: the gate on the stage it approves entry to.
pub fn review_approval(
    op: Op,
    old: Option<&Approval>,
    new: Option<&Approval>,
    user: &str,
    facts: &Facts,
) -> Verdict {
    let Some(r) = Review::of(old, new, user, facts) else {
        return Deny(MALFORMED.into());
    };
    match (op, old, new) {
        (Op::Create, _, Some(new)) => review_approval_create(&r, new),
        (Op::Update, Some(old), Some(new)) => review_approval_update(&r.name, old, new),
        (Op::Delete, Some(old), _) => review_approval_delete(&r, old),
        _ => Deny(MALFORMED.into()),
    }
}

/// A new Approval: of a version that exists and is not being deleted, for the stage right after
/// the version's, of the generation the approver reviewed, by someone who may approve for the
/// stage (and, under separation of duties, did not create or edit the version), and stamped by
/// the mutating webhook.
fn review_approval_create(r: &Review<Approval>, new: &Approval) -> Verdict {
    let (name, ns, version) = (&r.name, &r.ns, &r.subject.spec.version);
    let Some(v) = &r.facts.approved else {
        return Deny(format!(
            "Approval {name}: AppVersion {version} does not exist in namespace {ns}; approve an existing \
             version (kubectl get appversions -n {ns})"
        ));
    };
    if v.deleting {
        return Deny(format!(
            "Approval {name}: AppVersion {version} is being deleted"
        ));
    }
    approved_for_another_stage(r, v)
        .or_else(|| generation_not_reviewed(r, new, v))
        .or_else(|| approving_not_permitted(r))
        .or_else(|| approver_edited_version(r, v))
        .unwrap_or_else(|| approval_stamps(r, new, v))
}

/// An approval is for the stage right after the one the version is in.
fn approved_for_another_stage(r: &Review<Approval>, v: &ApprovedVersion) -> Option<Verdict> {
    let (name, version, stage) = (
        &r.name,
        &r.subject.spec.version,
        &r.subject.spec.environment,
    );
    if v.next_stage.as_deref() == Some(stage.as_str()) {
        return None;
    }
    let fix = match &v.next_stage {
        Some(next) => format!("approve it for {next}, the stage after {}", v.stage),
        None => format!(
            "it is in {}, the last stage: there is nothing to approve",
            v.stage
        ),
    };
    Some(Deny(format!(
        "Approval {name}: AppVersion {version} is in {}, so it cannot be approved for {stage}: an \
         approval is for the stage right after the one the version is in; {fix}",
        v.stage
    )))
}

/// An approval names the generation of the version that was reviewed (spec.generation), and it
/// is the version's generation now.
fn generation_not_reviewed(
    r: &Review<Approval>,
    new: &Approval,
    v: &ApprovedVersion,
) -> Option<Verdict> {
    let (name, version) = (&r.name, &r.subject.spec.version);
    match new.spec.generation {
        None => Some(Deny(format!(
            "Approval {name}: spec.generation is required: set it to the metadata.generation of \
             AppVersion {version} you reviewed (it is {} now; kubectl tooljet status shows it, and \
             kubectl tooljet approve sets it)",
            v.generation
        ))),
        Some(reviewed) if reviewed != v.generation => {
            let by = v
                .last_editor
                .as_deref()
                .map(|e| format!(", last edited by {e}"))
                .unwrap_or_default();
            Some(Deny(format!(
                "Approval {name}: it approves generation {reviewed} of AppVersion {version}, which is at \
                 generation {} now{by}; review what changed and approve generation {}",
                v.generation, v.generation
            )))
        }
        Some(_) => None,
    }
}

/// Approving needs `approve` on the stage.
fn approving_not_permitted(r: &Review<Approval>) -> Option<Verdict> {
    let (version, stage) = (&r.subject.spec.version, &r.subject.spec.environment);
    let access = Access::environment(APPROVE, stage);
    (!r.facts.may(&access)).then(|| {
        forbidden(
            r.user,
            &format!("approve AppVersion {version} for {stage}"),
            "approving",
            &access,
            &r.ns,
            "ask an admin for a role that grants it (e.g. tooljet-approver)",
        )
    })
}

/// Under separation of duties (a guarding policy requires it), the version's creator, last
/// editor and other editors may not approve it.
fn approver_edited_version(r: &Review<Approval>, v: &ApprovedVersion) -> Option<Verdict> {
    let (name, user, version) = (&r.name, r.user, &r.subject.spec.version);
    let gate = r.facts.gate.as_ref().filter(|g| g.separation_of_duties)?;
    let role = if v.creator.as_deref() == Some(user) {
        Some("created")
    } else if v.last_editor.as_deref() == Some(user) {
        Some("last edited")
    } else if v.editors.iter().any(|e| e == user) {
        Some("edited")
    } else {
        None
    };
    role.map(|role| {
        Deny(format!(
            "Approval {name}: user {user} {role} AppVersion {version} and may not approve it: \
             PromotionPolicy {} requires separation of duties; ask another approver",
            gate.policies.join(", ")
        ))
    })
}

/// A new Approval is stamped with who approved which generation when, is owned by the version it
/// approves, and carries no other `tooljet.io/` annotation.
fn approval_stamps(r: &Review<Approval>, new: &Approval, v: &ApprovedVersion) -> Verdict {
    let (name, user) = (&r.name, r.user);
    let a = new.annotations();
    let stamp_ok = a.get(APPROVED_BY_ANNOTATION).map(String::as_str) == Some(user)
        && a.get(APPROVED_GENERATION_ANNOTATION) == Some(&v.generation.to_string())
        && a.get(APPROVED_AT_ANNOTATION)
            .is_some_and(|t| t.parse::<k8s_openapi::jiff::Timestamp>().is_ok())
        && owner_uid(new) == Some(v.uid.as_str());
    if !stamp_ok {
        return Deny(format!(
            "Approval {name}: it is not stamped with who approved which version ({NOT_STAMPED})"
        ));
    }
    forgery_rule(
        "Approval",
        name,
        None::<&Approval>,
        new,
        &[
            APPROVED_BY_ANNOTATION,
            APPROVED_AT_ANNOTATION,
            APPROVED_GENERATION_ANNOTATION,
        ],
    )
    .unwrap_or(Allow)
}

/// An Approval is immutable: its spec, its owner (its version) and its stamps.
fn review_approval_update(name: &str, old: &Approval, new: &Approval) -> Verdict {
    if old.spec != new.spec {
        return Deny(format!(
            "Approval {name} is immutable: delete it (revoke) and create a new one"
        ));
    }
    if old.owner_references() != new.owner_references() {
        return Deny(format!(
            "Approval {name}: metadata.ownerReferences ties it to its version and cannot change"
        ));
    }
    forgery_rule("Approval", name, Some(old), new, &[]).unwrap_or(Allow)
}

/// Revoking an Approval needs `approve` on its stage, unless its version is gone or going.
fn review_approval_delete(r: &Review<Approval>, old: &Approval) -> Verdict {
    let (name, version, stage) = (
        &r.name,
        &r.subject.spec.version,
        &r.subject.spec.environment,
    );
    // Its version is gone or going: the garbage collector (or the namespace's deletion)
    // removes what approved nothing any more.
    let version_gone = match &r.facts.approved {
        None => true,
        Some(v) => v.deleting || owner_uid(old) != Some(v.uid.as_str()),
    };
    if r.facts.namespace_terminating || version_gone {
        return Allow;
    }
    let access = Access::environment(APPROVE, stage);
    if r.facts.may(&access) {
        Allow
    } else {
        forbidden(
            r.user,
            &format!("revoke Approval {name} of AppVersion {version} for {stage}"),
            "revoking an approval",
            &access,
            &r.ns,
            "ask an approver of the stage",
        )
    }
}

/// The rules for a PromotionPolicy request. `problems`: what the server found wrong with the
/// new spec's windows and selector (each naming its field).
pub fn review_policy(
    op: Op,
    old: Option<&PromotionPolicy>,
    new: Option<&PromotionPolicy>,
    user: &str,
    problems: &[String],
    facts: &Facts,
) -> Verdict {
    let Some(Review { name, ns, .. }) = Review::of(old, new, user, facts) else {
        return Deny(MALFORMED.into());
    };
    if op == Op::Delete && facts.namespace_terminating {
        return Allow;
    }
    if let Some(problem) = problems.first() {
        return Deny(format!("PromotionPolicy {name}: {problem}"));
    }
    for access in needed_for_policy(op, old, new) {
        if !facts.may(&access) {
            let stage = access.name.clone().unwrap_or_default();
            let what = match op {
                Op::Create => format!("create PromotionPolicy {name}"),
                Op::Update => format!("change PromotionPolicy {name}"),
                Op::Delete => format!("delete PromotionPolicy {name}"),
            };
            return forbidden(
                user,
                &what,
                &format!("a policy guarding {stage}"),
                &access,
                &ns,
                "ask an admin of every stage it guards (e.g. tooljet-admin)",
            );
        }
    }
    Allow
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::mutations::mutation_for_approval;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;
    use crate::api::{ApprovalRequirement, ApprovalSpec, PromotionPolicySpec};

    const USER: &str = "carol";

    fn version() -> ApprovedVersion {
        ApprovedVersion {
            name: "crm-v4".into(),
            uid: "uid-1".into(),
            generation: 3,
            stage: "staging".into(),
            next_stage: Some("production".into()),
            app: "crm".into(),
            creator: Some("alice".into()),
            last_editor: Some("bob".into()),
            editors: vec!["erin".into(), "bob".into()],
            deleting: false,
        }
    }

    fn approval(stage: &str, by: &str) -> Approval {
        let mut a = Approval::new(
            "crm-v4-production-carol",
            ApprovalSpec {
                version: "crm-v4".into(),
                environment: stage.into(),
                comment: Some("QA sign-off".into()),
                generation: Some(3),
            },
        );
        a.metadata.namespace = Some("acme".into());
        a.metadata.annotations = Some(BTreeMap::from([
            (APPROVED_BY_ANNOTATION.to_string(), by.to_string()),
            (
                APPROVED_AT_ANNOTATION.to_string(),
                "2026-11-27T10:00:00Z".to_string(),
            ),
            (APPROVED_GENERATION_ANNOTATION.to_string(), "3".to_string()),
        ]));
        a.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "tooljet.io/v1alpha1".into(),
            kind: "AppVersion".into(),
            name: "crm-v4".into(),
            uid: "uid-1".into(),
            ..Default::default()
        }]);
        a
    }

    #[test]
    fn an_approval_names_the_generation_reviewed_and_only_that_one_counts() {
        let a = approval("production", USER);
        assert_eq!(
            review_approval(Op::Create, None, Some(&a), USER, &facts(false)),
            Allow
        );
        // The version was edited after the approver looked at it.
        let mut stale = a.clone();
        stale.spec.generation = Some(2);
        match review_approval(Op::Create, None, Some(&stale), USER, &facts(false)) {
            Deny(m) => assert_eq!(
                m,
                "Approval crm-v4-production-carol: it approves generation 2 of AppVersion crm-v4, which is at \
                 generation 3 now, last edited by bob; review what changed and approve generation 3"
            ),
            Allow => panic!("a stale approval was admitted"),
        }
        // Naming none is refused, never filled in with the generation of the moment.
        let mut unnamed = a.clone();
        unnamed.spec.generation = None;
        match review_approval(Op::Create, None, Some(&unnamed), USER, &facts(false)) {
            Deny(m) => assert!(m.contains("spec.generation is required"), "{m}"),
            Allow => panic!("an approval without a generation was admitted"),
        }
        let patch =
            serde_json::to_string(&mutation_for_approval(&stale, &version(), USER, "t")).unwrap();
        assert!(
            patch.contains(r#"{"op":"replace","path":"/metadata/annotations/tooljet.io~1approved-generation","value":"2"}"#),
            "{patch}"
        );
    }

    fn facts(sod: bool) -> Facts {
        Facts {
            approved: Some(version()),
            gate: Some(GateFacts {
                policies: vec!["prod-gate".into()],
                approvals: Some((false, "0 of 2".into())),
                closed: None,
                separation_of_duties: sod,
            }),
            granted: [(Access::environment(APPROVE, "production"), true)].into(),
            ..Default::default()
        }
    }

    fn denied_with(v: Verdict, needle: &str) {
        match v {
            Deny(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            Allow => panic!("allowed; expected a denial mentioning {needle:?}"),
        }
    }

    #[test]
    fn an_approver_approves_a_version_for_the_next_stage() {
        let a = approval("production", USER);
        assert_eq!(
            review_approval(Op::Create, None, Some(&a), USER, &facts(true)),
            Allow
        );
    }

    #[test]
    fn an_approval_is_only_for_the_stage_right_after_the_versions() {
        let a = approval("staging", USER);
        let mut f = facts(false);
        f.granted
            .insert(Access::environment(APPROVE, "staging"), true);
        denied_with(
            review_approval(Op::Create, None, Some(&a), USER, &f),
            "approve it for production, the stage after staging",
        );
        let mut last = facts(false);
        last.approved.as_mut().unwrap().stage = "production".into();
        last.approved.as_mut().unwrap().next_stage = None;
        denied_with(
            review_approval(
                Op::Create,
                None,
                Some(&approval("production", USER)),
                USER,
                &last,
            ),
            "the last stage",
        );
    }

    #[test]
    fn approving_needs_the_approve_verb_on_the_stage() {
        let a = approval("production", USER);
        let mut f = facts(false);
        f.granted.clear();
        denied_with(
            review_approval(Op::Create, None, Some(&a), USER, &f),
            "verb approve on resource environments named production",
        );
    }

    #[test]
    fn separation_of_duties_refuses_the_creator_and_the_last_editor() {
        for (who, role) in [("alice", "created"), ("bob", "last edited")] {
            let a = approval("production", who);
            denied_with(
                review_approval(Op::Create, None, Some(&a), who, &facts(true)),
                &format!("user {who} {role} AppVersion crm-v4"),
            );
            assert_eq!(
                review_approval(Op::Create, None, Some(&a), who, &facts(false)),
                Allow,
                "without separation of duties {who} may approve"
            );
        }
    }

    #[test]
    fn an_approval_must_carry_the_webhooks_stamp() {
        let forged_by = approval("production", "dave");
        denied_with(
            review_approval(Op::Create, None, Some(&forged_by), USER, &facts(false)),
            "not stamped",
        );
        let mut stale = approval("production", USER);
        stale
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(APPROVED_GENERATION_ANNOTATION.into(), "2".into());
        denied_with(
            review_approval(Op::Create, None, Some(&stale), USER, &facts(false)),
            "not stamped",
        );
        let mut other_uid = approval("production", USER);
        other_uid.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-0".into();
        denied_with(
            review_approval(Op::Create, None, Some(&other_uid), USER, &facts(false)),
            "not stamped",
        );
    }

    #[test]
    fn approvals_are_immutable_and_keep_their_owner() {
        let a = approval("production", USER);
        let mut changed = a.clone();
        changed.spec.comment = Some("edited".into());
        denied_with(
            review_approval(Op::Update, Some(&a), Some(&changed), USER, &facts(false)),
            "immutable",
        );
        let mut orphaned = a.clone();
        orphaned.metadata.owner_references = None;
        denied_with(
            review_approval(Op::Update, Some(&a), Some(&orphaned), USER, &facts(false)),
            "ownerReferences",
        );
        let mut labelled = a.clone();
        labelled.metadata.labels = Some([("team".to_string(), "qa".to_string())].into());
        assert_eq!(
            review_approval(Op::Update, Some(&a), Some(&labelled), USER, &facts(false)),
            Allow
        );
    }

    #[test]
    fn revoking_needs_approve_unless_the_version_is_gone() {
        let a = approval("production", USER);
        let mut f = facts(false);
        f.granted.clear();
        denied_with(
            review_approval(Op::Delete, Some(&a), None, "gc", &f),
            "revoke Approval",
        );
        f.approved = None;
        assert_eq!(review_approval(Op::Delete, Some(&a), None, "gc", &f), Allow);
        let mut recreated = facts(false);
        recreated.granted.clear();
        recreated.approved.as_mut().unwrap().uid = "uid-2".into();
        assert_eq!(
            review_approval(Op::Delete, Some(&a), None, "gc", &recreated),
            Allow,
            "an approval of a deleted version whose name was reused approves nothing"
        );
    }

    #[test]
    fn missing_approvals_are_never_passed_by_an_override() {
        let mut f = facts(false);
        f.granted
            .insert(Access::environment(OVERRIDE, "production"), true);
        denied_with(
            judge(
                "promote",
                "production",
                true,
                Some("outage"),
                USER,
                "acme",
                &f,
            )
            .unwrap(),
            "an override does not replace approvals",
        );
    }

    #[test]
    fn a_closed_window_passes_only_with_an_override_by_someone_allowed() {
        let mut f = facts(false);
        f.gate.as_mut().unwrap().approvals = Some((true, "2 of 2".into()));
        f.gate.as_mut().unwrap().closed = Some("closed by Deny window \"freeze\"".into());
        denied_with(
            judge("promote", "production", true, None, USER, "acme", &f).unwrap(),
            "tooljet.io/override-reason",
        );
        denied_with(
            judge(
                "promote",
                "production",
                true,
                Some("outage"),
                USER,
                "acme",
                &f,
            )
            .unwrap(),
            "verb override on resource environments named production",
        );
        f.granted
            .insert(Access::environment(OVERRIDE, "production"), true);
        assert_eq!(
            judge(
                "promote",
                "production",
                true,
                Some("outage"),
                USER,
                "acme",
                &f
            ),
            None
        );
        // Releases are gated by windows, not approvals.
        f.gate.as_mut().unwrap().approvals = Some((false, "0 of 2".into()));
        assert_eq!(
            judge(
                "release",
                "production",
                false,
                Some("outage"),
                USER,
                "acme",
                &f
            ),
            None
        );
    }

    fn policy(stages: &[&str]) -> PromotionPolicy {
        let mut p = PromotionPolicy::new(
            "prod-gate",
            PromotionPolicySpec {
                app_selector: None,
                environments: stages.iter().map(|s| s.to_string()).collect(),
                approvals: Some(ApprovalRequirement {
                    required: 2,
                    separation_of_duties: true,
                }),
                windows: vec![],
            },
        );
        p.metadata.namespace = Some("acme".into());
        p
    }

    #[test]
    fn changing_a_policy_needs_configure_on_every_stage_before_and_after() {
        let old = policy(&["production"]);
        let new = policy(&["staging"]);
        let needed = needed_for_policy(Op::Update, Some(&old), Some(&new));
        assert_eq!(
            needed,
            vec![
                Access::environment(CONFIGURE, "production"),
                Access::environment(CONFIGURE, "staging"),
            ]
        );
        let f = Facts {
            granted: [(Access::environment(CONFIGURE, "staging"), true)].into(),
            ..Default::default()
        };
        denied_with(
            review_policy(Op::Update, Some(&old), Some(&new), USER, &[], &f),
            "verb configure on resource environments named production",
        );
        denied_with(
            review_policy(Op::Delete, Some(&old), None, USER, &[], &f),
            "delete PromotionPolicy prod-gate",
        );
        let mut relabelled = old.clone();
        relabelled.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        assert!(needed_for_policy(Op::Update, Some(&old), Some(&relabelled)).is_empty());
        assert_eq!(
            review_policy(Op::Update, Some(&old), Some(&relabelled), USER, &[], &f),
            Allow
        );
    }

    #[test]
    fn a_policy_with_a_bad_window_is_refused_with_the_field() {
        let new = policy(&["production"]);
        let f = Facts {
            granted: [(Access::environment(CONFIGURE, "production"), true)].into(),
            ..Default::default()
        };
        denied_with(
            review_policy(
                Op::Create,
                None,
                Some(&new),
                USER,
                &["spec.windows[0].schedule: bad".into()],
                &f,
            ),
            "PromotionPolicy prod-gate: spec.windows[0].schedule",
        );
        assert_eq!(
            review_policy(Op::Create, None, Some(&new), USER, &[], &f),
            Allow
        );
    }
}
