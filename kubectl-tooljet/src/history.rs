//! `history APP|VERSION`: promotions and releases — who, when, from, to — oldest first, from
//! the statuses the operator keeps (AppVersion `status.promotions`, ToolJetApp
//! `status.releaseHistory`, both stamped from the requesting user by the admission webhook).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;
use tooljet_operator::api::{AppVersion, ToolJetApp};

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
    /// promotion, release or rollback.
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
                sort: Some(p.at.clone()),
            });
        }
    }
    let mut previous: Option<String> = None;
    for r in app.status.iter().flat_map(|s| &s.release_history) {
        let entry = Entry {
            at: output::time(&r.at),
            kind: if r.rollback { "rollback" } else { "release" },
            app: app_name.clone(),
            version: r.version.clone(),
            from: previous.clone(),
            to: Some(r.version.clone()),
            by: r.by.clone(),
            override_reason: r.override_reason.clone(),
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
        output::table(
            &["time", "event", "version", "from", "to", "by", "note"],
            list.iter().map(|e| {
                [
                    e.at.clone(),
                    e.kind.to_string(),
                    e.version.clone(),
                    e.from.clone().unwrap_or_else(|| "-".into()),
                    e.to.clone().unwrap_or_else(|| "-".into()),
                    e.by.clone().unwrap_or_else(|| "-".into()),
                    e.override_reason
                        .as_ref()
                        .map(|r| format!("override: {r}"))
                        .unwrap_or_default(),
                ]
            }),
        )
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
}
