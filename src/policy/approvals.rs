//! Approval counting: which Approvals count toward a promotion into a guarded stage.
//!
//! An approval counts when it is for the version and stage being promoted, is not being deleted
//! (revoked), comes from a person who has not approved already, and, under separation of duties,
//! not from the version's creator, its last editor or the promoter. Several policies guarding the
//! same app and stage combine strictly: the highest `required`, and separation of duties if any
//! asks for it.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};

/// One Approval object, as facts (the approver and time are the webhook's stamps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalFact {
    pub name: String,
    pub approver: String,
    pub version: String,
    pub environment: String,
    pub created: Option<DateTime<Utc>>,
    /// Has a deletion timestamp: it is being revoked.
    pub deleting: bool,
}

/// What the policies guarding a stage require.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    pub required: u32,
    pub separation_of_duties: bool,
    /// The policies that contribute, sorted.
    pub policies: Vec<String>,
}

impl Requirement {
    /// The strictest combination of `(policy name, required, separation of duties)`: the highest
    /// `required`, separation of duties if any policy asks for it. `None` when no policy guards.
    pub fn combine<I, S>(policies: I) -> Option<Requirement>
    where
        I: IntoIterator<Item = (S, u32, bool)>,
        S: Into<String>,
    {
        let mut combined: Option<Requirement> = None;
        for (name, required, sod) in policies {
            let r = combined.get_or_insert_with(Requirement::default);
            r.required = r.required.max(required);
            r.separation_of_duties |= sod;
            r.policies.push(name.into());
        }
        if let Some(r) = &mut combined {
            r.policies.sort();
            r.policies.dedup();
        }
        combined
    }
}

/// The people who may not approve under separation of duties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excluded {
    pub creator: Option<String>,
    pub last_editor: Option<String>,
    /// Everyone who edited the version (its last editor too).
    pub editors: Vec<String>,
    pub promoter: Option<String>,
}

/// A role that separation of duties keeps from approving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Creator,
    LastEditor,
    Editor,
    Promoter,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Creator => "created the version",
            Role::LastEditor => "last edited the version",
            Role::Editor => "edited the version",
            Role::Promoter => "is the promoter",
        })
    }
}

/// Why an approval does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoredReason {
    /// The same person already has a counted approval (named).
    Duplicate { counted: String },
    /// Being deleted.
    Revoked,
    /// For another version.
    OtherVersion { version: String },
    /// For another stage.
    OtherEnvironment { environment: String },
    /// Separation of duties: the approver holds these roles.
    SeparationOfDuties { roles: Vec<Role> },
}

/// An approval that does not count, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub approval: String,
    pub approver: String,
    pub reason: IgnoredReason,
}

impl Ignored {
    /// Whether it concerns the version and stage counted (the others are noise in a denial).
    pub fn is_relevant(&self) -> bool {
        !matches!(
            self.reason,
            IgnoredReason::OtherVersion { .. } | IgnoredReason::OtherEnvironment { .. }
        )
    }
}

impl fmt::Display for Ignored {
    /// `bob's approval does not count: bob created the version (separation of duties)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = &self.approver;
        write!(f, "{who}'s approval {} does not count: ", self.approval)?;
        match &self.reason {
            IgnoredReason::Duplicate { counted } => write!(f, "{who} already approved ({counted})"),
            IgnoredReason::Revoked => write!(f, "it is being deleted (revoked)"),
            IgnoredReason::OtherVersion { version } => write!(f, "it is for version {version}"),
            IgnoredReason::OtherEnvironment { environment } => {
                write!(f, "it is for environment {environment}")
            }
            IgnoredReason::SeparationOfDuties { roles } => {
                let roles: Vec<String> = roles.iter().map(ToString::to_string).collect();
                write!(f, "{who} {} (separation of duties)", roles.join(" and "))
            }
        }
    }
}

/// The result of counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub version: String,
    pub environment: String,
    pub required: u32,
    /// Distinct approvers whose approval counts, sorted.
    pub approvers: Vec<String>,
    /// Approvals that do not count, in input order.
    pub ignored: Vec<Ignored>,
}

impl Tally {
    pub fn counted(&self) -> u32 {
        u32::try_from(self.approvers.len()).unwrap_or(u32::MAX)
    }

    pub fn missing(&self) -> u32 {
        self.required.saturating_sub(self.counted())
    }

    pub fn satisfied(&self) -> bool {
        self.missing() == 0
    }

    /// `crm-v4 has 1 of 2 required approvals for production (alice); 1 missing; bob's approval b1
    /// does not count: bob created the version (separation of duties)`
    pub fn describe(&self) -> String {
        let mut out = format!(
            "{} has {} of {} required approvals for {}",
            self.version,
            self.counted(),
            self.required,
            self.environment
        );
        if !self.approvers.is_empty() {
            out += &format!(" ({})", self.approvers.join(", "));
        }
        if !self.satisfied() {
            out += &format!("; {} missing", self.missing());
        }
        for ignored in self.ignored.iter().filter(|i| i.is_relevant()) {
            out += &format!("; {ignored}");
        }
        out
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Counts the approvals of `version` for `stage` under `req`.
pub fn count(
    req: &Requirement,
    approvals: &[ApprovalFact],
    version: &str,
    stage: &str,
    excluded: &Excluded,
) -> Tally {
    let mut ignored = Vec::new();
    let mut valid: Vec<&ApprovalFact> = Vec::new();
    for a in approvals {
        let reason = if a.version != version {
            Some(IgnoredReason::OtherVersion {
                version: a.version.clone(),
            })
        } else if a.environment != stage {
            Some(IgnoredReason::OtherEnvironment {
                environment: a.environment.clone(),
            })
        } else if a.deleting {
            Some(IgnoredReason::Revoked)
        } else {
            let mut roles: Vec<Role> = [
                (Role::Creator, &excluded.creator),
                (Role::LastEditor, &excluded.last_editor),
                (Role::Promoter, &excluded.promoter),
            ]
            .into_iter()
            .filter(|(_, who)| req.separation_of_duties && who.as_deref() == Some(&a.approver))
            .map(|(role, _)| role)
            .collect();
            if req.separation_of_duties
                && !roles.contains(&Role::LastEditor)
                && excluded.editors.contains(&a.approver)
            {
                roles.push(Role::Editor);
            }
            (!roles.is_empty()).then_some(IgnoredReason::SeparationOfDuties { roles })
        };
        match reason {
            Some(reason) => ignored.push(Ignored {
                approval: a.name.clone(),
                approver: a.approver.clone(),
                reason,
            }),
            None => valid.push(a),
        }
    }
    // The earliest approval of each person counts (unknown times last, then by name).
    valid.sort_by(|a, b| {
        (a.created.is_none(), a.created, &a.name).cmp(&(b.created.is_none(), b.created, &b.name))
    });
    let mut approvers = BTreeSet::new();
    let mut counted_as: Vec<(&str, &str)> = Vec::new();
    for a in valid {
        if approvers.insert(a.approver.clone()) {
            counted_as.push((&a.approver, &a.name));
        } else {
            let counted = counted_as
                .iter()
                .find(|(who, _)| *who == a.approver)
                .map(|(_, name)| name.to_string())
                .unwrap_or_default();
            ignored.push(Ignored {
                approval: a.name.clone(),
                approver: a.approver.clone(),
                reason: IgnoredReason::Duplicate { counted },
            });
        }
    }
    Tally {
        version: version.to_string(),
        environment: stage.to_string(),
        required: req.required,
        approvers: approvers.into_iter().collect(),
        ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(
        name: &str,
        approver: &str,
        version: &str,
        environment: &str,
        minute: u32,
    ) -> ApprovalFact {
        ApprovalFact {
            name: name.into(),
            approver: approver.into(),
            version: version.into(),
            environment: environment.into(),
            created: DateTime::parse_from_rfc3339(&format!("2026-11-27T10:{minute:02}:00Z"))
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            deleting: false,
        }
    }

    fn req(required: u32, sod: bool) -> Requirement {
        Requirement {
            required,
            separation_of_duties: sod,
            policies: vec!["p".into()],
        }
    }

    fn excluded(creator: &str, last_editor: &str, promoter: &str) -> Excluded {
        Excluded {
            creator: Some(creator.into()),
            last_editor: Some(last_editor.into()),
            editors: vec![last_editor.into()],
            promoter: Some(promoter.into()),
        }
    }

    const NOBODY: Excluded = Excluded {
        creator: None,
        last_editor: None,
        editors: Vec::new(),
        promoter: None,
    };

    #[test]
    fn two_distinct_approvers_satisfy_two_required() {
        let approvals = [
            approval("a", "alice", "v4", "production", 1),
            approval("b", "bob", "v4", "production", 2),
        ];
        let t = count(&req(2, true), &approvals, "v4", "production", &NOBODY);
        assert_eq!(t.approvers, ["alice", "bob"]);
        assert!(t.satisfied());
        assert_eq!(t.missing(), 0);
        assert_eq!(
            t.describe(),
            "v4 has 2 of 2 required approvals for production (alice, bob)"
        );
    }

    #[test]
    fn a_second_approval_by_the_same_person_does_not_count() {
        let approvals = [
            approval("a2", "alice", "v4", "production", 5),
            approval("a1", "alice", "v4", "production", 1),
        ];
        let t = count(&req(2, false), &approvals, "v4", "production", &NOBODY);
        assert_eq!(t.approvers, ["alice"]);
        assert_eq!(t.missing(), 1);
        assert_eq!(t.ignored.len(), 1);
        assert_eq!(t.ignored[0].approval, "a2");
        assert_eq!(
            t.ignored[0].reason,
            IgnoredReason::Duplicate {
                counted: "a1".into()
            }
        );
        assert_eq!(
            t.describe(),
            "v4 has 1 of 2 required approvals for production (alice); 1 missing; \
             alice's approval a2 does not count: alice already approved (a1)"
        );
    }

    #[test]
    fn a_revoked_approval_does_not_count() {
        let mut a = approval("a", "alice", "v4", "production", 1);
        a.deleting = true;
        let t = count(&req(1, false), &[a], "v4", "production", &NOBODY);
        assert!(!t.satisfied());
        assert_eq!(t.ignored[0].reason, IgnoredReason::Revoked);
    }

    #[test]
    fn approvals_for_another_version_or_stage_do_not_count_and_stay_out_of_the_denial() {
        let approvals = [
            approval("a", "alice", "v3", "production", 1),
            approval("b", "bob", "v4", "staging", 1),
        ];
        let t = count(&req(1, false), &approvals, "v4", "production", &NOBODY);
        assert_eq!(t.counted(), 0);
        assert_eq!(
            t.ignored[0].reason,
            IgnoredReason::OtherVersion {
                version: "v3".into()
            }
        );
        assert_eq!(
            t.ignored[1].reason,
            IgnoredReason::OtherEnvironment {
                environment: "staging".into()
            }
        );
        assert_eq!(
            t.describe(),
            "v4 has 0 of 1 required approvals for production; 1 missing"
        );
    }

    #[test]
    fn separation_of_duties_excludes_creator_last_editor_and_promoter() {
        for (who, role) in [
            ("carol", Role::Creator),
            ("erin", Role::LastEditor),
            ("pat", Role::Promoter),
        ] {
            let approvals = [approval("x", who, "v4", "production", 1)];
            let t = count(
                &req(1, true),
                &approvals,
                "v4",
                "production",
                &excluded("carol", "erin", "pat"),
            );
            assert_eq!(t.counted(), 0, "{who}");
            assert_eq!(
                t.ignored[0].reason,
                IgnoredReason::SeparationOfDuties { roles: vec![role] }
            );
        }
    }

    #[test]
    fn without_separation_of_duties_the_creator_may_approve() {
        let approvals = [approval("x", "carol", "v4", "production", 1)];
        let t = count(
            &req(1, false),
            &approvals,
            "v4",
            "production",
            &excluded("carol", "carol", "carol"),
        );
        assert!(t.satisfied());
    }

    #[test]
    fn a_denial_lists_every_role_an_excluded_approver_holds() {
        let approvals = [
            approval("a", "alice", "v4", "production", 1),
            approval("b", "bob", "v4", "production", 2),
        ];
        let t = count(
            &req(2, true),
            &approvals,
            "v4",
            "production",
            &excluded("bob", "bob", "pat"),
        );
        assert_eq!(
            t.describe(),
            "v4 has 1 of 2 required approvals for production (alice); 1 missing; \
             bob's approval b does not count: bob created the version and last edited the version \
             (separation of duties)"
        );
    }

    #[test]
    fn several_policies_combine_to_the_strictest() {
        let r = Requirement::combine([
            ("b-policy", 1, true),
            ("a-policy", 3, false),
            ("c", 2, false),
        ])
        .unwrap();
        assert_eq!(r.required, 3);
        assert!(r.separation_of_duties);
        assert_eq!(r.policies, ["a-policy", "b-policy", "c"]);
        assert_eq!(
            Requirement::combine(Vec::<(String, u32, bool)>::new()),
            None
        );
    }

    #[test]
    fn nothing_required_is_satisfied_with_no_approvals() {
        let t = count(&Requirement::default(), &[], "v4", "production", &NOBODY);
        assert!(t.satisfied());
    }
}
