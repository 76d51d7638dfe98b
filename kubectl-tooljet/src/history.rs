//! `history APP|VERSION`: promotions and releases — who, when, from, to, and how the
//! verification of the workloads they reached ended — oldest first, from the statuses the
//! operator keeps (AppVersion `status.promotions`, ToolJetApp `status.releaseHistory`, both
//! stamped from the requesting user by the admission webhook; automatic rollbacks are the
//! operator's own).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;
use tooljet_operator::api::{AppVersion, ReleaseRecord, ToolJetApp, VerificationPhase};

use crate::{
    cluster::Cluster,
    error::{Error, Result},
    output::{self, Format},
};

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// RFC 3339, UTC.
    pub at: String,
    /// promotion, release, rollback or automatic rollback.
    pub kind: &'static str,
    pub app: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The reason given for passing a closed promotion window (break-glass override).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// Why the operator made it (automatic rollbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How the verification of the workloads it reached ended: Verified or Failed (absent while
    /// it runs, or when the stage has no rollout workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationPhase>,
    #[serde(skip)]
    sort: Option<Time>,
}

/// Every promotion of `versions` (of `app`) and every release of `app`, oldest first; with
/// `only`, just that version's. Pure.
pub fn entries(app: &ToolJetApp, versions: &[AppVersion], only: Option<&str>) -> Vec<Entry> {
    let app_name = app.name_any();
    let mut out = Vec::new();
    for v in versions.iter().filter(|v| v.spec.app == app_name) {
        if only.is_some_and(|o| o != v.name_any()) {
            continue;
        }
        for p in v.status.iter().flat_map(|s| &s.promotions) {
            out.push(Entry {
                at: output::time(&p.at),
                kind: "promotion",
                app: app_name.clone(),
                version: v.name_any(),
                from: Some(p.from.clone()),
                to: Some(p.to.clone()),
                by: p.by.clone(),
                override_reason: p.override_reason.clone(),
                reason: None,
                verification: p.verification,
                sort: Some(p.at.clone()),
            });
        }
    }
    let mut previous: Option<String> = None;
    for r in app.status.iter().flat_map(|s| &s.release_history) {
        let entry = Entry {
            at: output::time(&r.at),
            kind: release_kind(r),
            app: app_name.clone(),
            version: r.version.clone(),
            from: previous.clone(),
            to: Some(r.version.clone()),
            by: r.by.clone(),
            override_reason: r.override_reason.clone(),
            reason: r.reason.clone(),
            verification: r.verification,
            sort: Some(r.at.clone()),
        };
        previous = Some(r.version.clone());
        if only.is_none_or(|o| o == r.version) {
            out.push(entry);
        }
    }
    // Stable: equal times keep promotions before the releases they led to.
    out.sort_by(|a, b| a.sort.cmp(&b.sort));
    out
}

/// What a release record was: the operator's automatic rollback, a rollback, or a release.
fn release_kind(r: &ReleaseRecord) -> &'static str {
    match (r.automatic, r.rollback) {
        (true, _) => "automatic rollback",
        (false, true) => "rollback",
        (false, false) => "release",
    }
}

/// The entries as a table, one line each.
pub fn render(list: &[Entry]) -> String {
    output::table(
        &[
            "time",
            "event",
            "version",
            "from",
            "to",
            "by",
            "verification",
            "note",
        ],
        list.iter().map(|e| {
            [
                e.at.clone(),
                e.kind.to_string(),
                e.version.clone(),
                e.from.clone().unwrap_or_else(|| "-".into()),
                e.to.clone().unwrap_or_else(|| "-".into()),
                e.by.clone().unwrap_or_else(|| "-".into()),
                e.verification.map(output::phase).unwrap_or("-").to_string(),
                note(e),
            ]
        }),
    )
}

/// The override reason and why the operator made it, when given.
fn note(e: &Entry) -> String {
    let overridden = e.override_reason.as_ref().map(|r| format!("override: {r}"));
    // The event column already says it is an automatic rollback.
    let why = e.reason.as_deref().map(|r| {
        r.strip_prefix("automatic rollback: ")
            .unwrap_or(r)
            .to_string()
    });
    [overridden, why]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}

pub async fn run(cluster: &Cluster, name: &str, format: Format) -> Result<()> {
    // An app of that name first; otherwise a version.
    let (app, only) = match cluster.apps().get_opt(name).await {
        Ok(Some(app)) => (app, None),
        Ok(None) => match cluster.versions_lean().get_opt(name).await {
            Ok(Some(tooljet_operator::cache::lean::Lean(v))) => {
                (cluster.app(&v.spec.app).await?, Some(name))
            }
            Ok(None) => {
                return Err(Error::NotFound(format!(
                    "no ToolJetApp or AppVersion named {name} in namespace {}",
                    cluster.namespace
                )));
            }
            Err(e) => return Err(Error::kube(format!("reading AppVersion {name}"), e)),
        },
        Err(e) => return Err(Error::kube(format!("reading ToolJetApp {name}"), e)),
    };
    let versions = cluster.list_versions(&cluster.namespace).await?;
    let list = entries(&app, &versions, only);
    output::print(format, &list, |list| {
        if list.is_empty() {
            return format!("No promotions or releases of {name} yet.\n");
        }
        render(list)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn t(secs: i64) -> String {
        output::time(&Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
        ))
    }

    #[test]
    fn promotions_and_releases_interleave_by_time_and_releases_say_what_they_replaced() {
        let app: ToolJetApp = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": "crm" },
            "spec": { "environments": ["a", "b"] },
            "status": { "releaseHistory": [
                { "version": "v1", "at": t(10), "by": "carol" },
                { "version": "v2", "at": t(30), "by": "carol" },
                { "version": "v1", "at": t(40), "rollback": true, "overrideReason": "incident 42" },
            ] },
        }))
        .unwrap();
        let v2: AppVersion = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": "v2" },
            "spec": { "app": "crm", "versionName": "v2", "environment": "b" },
            "status": { "promotions": [{ "from": "a", "to": "b", "at": t(20), "by": "bob" }] },
        }))
        .unwrap();
        let all = entries(&app, std::slice::from_ref(&v2), None);
        let kinds: Vec<_> = all.iter().map(|e| (e.kind, e.version.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("release", "v1"),
                ("promotion", "v2"),
                ("release", "v2"),
                ("rollback", "v1")
            ]
        );
        assert_eq!(all[1].by.as_deref(), Some("bob"));
        assert_eq!(all[3].from.as_deref(), Some("v2"));
        assert_eq!(all[3].override_reason.as_deref(), Some("incident 42"));
        assert_eq!(all[0].at, "2023-11-14T22:13:30Z");

        let only = entries(&app, &[v2], Some("v2"));
        let kinds: Vec<_> = only.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["promotion", "release"]);
    }

    #[test]
    fn automatic_rollbacks_say_why_and_each_event_how_its_verification_ended() {
        let app: ToolJetApp = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "ToolJetApp", "metadata": { "name": "crm" },
            "spec": { "environments": ["staging", "production"] },
            "status": { "releaseHistory": [
                { "version": "v1", "at": t(10), "by": "carol", "verification": "Verified" },
                { "version": "v2", "at": t(30), "by": "carol", "verification": "Failed" },
                { "version": "v1", "at": t(40), "by": "system:serviceaccount:tooljet:tooljet-operator",
                  "rollback": true, "automatic": true, "verification": "Verified",
                  "reason": "automatic rollback: the release of v2 failed verification (Deployment web: ProgressDeadlineExceeded: x)" },
                { "version": "v3", "at": t(50), "by": "carol" },
            ] },
        }))
        .unwrap();
        let v2: AppVersion = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": "v2" },
            "spec": { "app": "crm", "versionName": "v2", "environment": "production" },
            "status": { "promotions": [
                { "from": "staging", "to": "production", "at": t(20), "by": "bob", "verification": "Verified" },
            ] },
        }))
        .unwrap();
        let all = entries(&app, &[v2], None);
        let seen: Vec<_> = all
            .iter()
            .map(|e| (e.kind, e.version.as_str(), e.verification))
            .collect();
        assert_eq!(
            seen,
            [
                ("release", "v1", Some(VerificationPhase::Verified)),
                ("promotion", "v2", Some(VerificationPhase::Verified)),
                ("release", "v2", Some(VerificationPhase::Failed)),
                (
                    "automatic rollback",
                    "v1",
                    Some(VerificationPhase::Verified)
                ),
                ("release", "v3", None),
            ]
        );
        assert_eq!(all[3].from.as_deref(), Some("v2"));
        assert!(
            all[3]
                .reason
                .as_deref()
                .unwrap()
                .contains("ProgressDeadlineExceeded")
        );

        let doc = serde_json::to_value(&all).unwrap();
        assert_eq!(doc[2]["verification"], "Failed");
        assert_eq!(doc[3]["kind"], "automatic rollback");
        assert!(doc[4].get("verification").is_none() && doc[4].get("reason").is_none());

        assert_eq!(
            render(&all),
            "\
TIME                   EVENT                VERSION   FROM      TO           BY                                               VERIFICATION   NOTE
2023-11-14T22:13:30Z   release              v1        -         v1           carol                                            Verified
2023-11-14T22:13:40Z   promotion            v2        staging   production   bob                                              Verified
2023-11-14T22:13:50Z   release              v2        v1        v2           carol                                            Failed
2023-11-14T22:14:00Z   automatic rollback   v1        v2        v1           system:serviceaccount:tooljet:tooljet-operator   Verified       the release of v2 failed verification (Deployment web: ProgressDeadlineExceeded: x)
2023-11-14T22:14:10Z   release              v3        v1        v3           carol                                            -
"
        );
    }

    #[test]
    fn the_note_holds_the_override_and_the_reason() {
        let mut e = Entry {
            at: t(0),
            kind: "rollback",
            app: "crm".into(),
            version: "v1".into(),
            from: None,
            to: None,
            by: None,
            override_reason: Some("incident 42".into()),
            reason: None,
            verification: None,
            sort: None,
        };
        assert_eq!(note(&e), "override: incident 42");
        e.reason = Some("automatic rollback: the release of v2 failed verification (x)".into());
        assert_eq!(
            note(&e),
            "override: incident 42; the release of v2 failed verification (x)"
        );
    }
}
