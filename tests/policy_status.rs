//! Promotion policies as the operator reports them, against the real kube-apiserver with the
//! operator and its webhook: a policy's own status (open now, when that changes, the apps it
//! selects), each app's stage gates, and each version's approvals for its next stage as
//! approvers approve (through the webhook, impersonated) and revoke.

mod support;

use chrono::{DateTime, Timelike, Utc};
use kube::{Api, Client, api::DeleteParams};
use serde_json::{Value, json};
use support::admission::{WAIT, Workspace};
use tooljet_operator::api::{AppVersion, PromotionPolicy, ToolJetApp};

/// A daily cron schedule starting `offset` from now (whole minutes, UTC).
fn daily_at(offset: chrono::TimeDelta) -> (String, DateTime<Utc>) {
    let now = tooljet_operator::gate::to_chrono(k8s_openapi::jiff::Timestamp::now());
    let start = (now + offset)
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    (format!("{} {} * * *", start.minute(), start.hour()), start)
}

fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    tooljet_operator::gate::to_chrono(t.0)
}

async fn policy(w: &Workspace, name: &str, spec: Value) {
    w.create(&w.admin, "PromotionPolicy", name, spec)
        .await
        .unwrap_or_else(|e| panic!("creating PromotionPolicy {name}: {e}"));
}

/// Waits until `name`'s object of kind `K` satisfies `check`, and returns what it found.
async fn until<K, T>(w: &Workspace, name: &str, what: &str, check: impl Fn(&K) -> Option<T>) -> T
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(w.admin.clone(), &w.ns);
    support::eventually(WAIT, what, || {
        let api = api.clone();
        let check = &check;
        async move {
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|o| check(&o))
        }
    })
    .await
}

/// Binds `user` to the shipped `tooljet-approver` ClusterRole in the workspace.
async fn approver(w: &Workspace, user: &str) -> Client {
    w.bind(user, "tooljet-approver").await;
    support::client_as(user, &["tooljet-users"]).await
}

#[tokio::test]
async fn a_deny_window_open_now_closes_the_policy_and_the_apps_gate_until_it_ends() {
    let w = Workspace::new("pstatus-deny").await;
    let (schedule, start) = daily_at(-chrono::TimeDelta::minutes(2));
    policy(
        &w,
        "freeze",
        json!({ "environments": ["production"],
                "windows": [{ "kind": "Deny", "schedule": schedule, "duration": "1h", "description": "release freeze" }] }),
    )
    .await;
    let reopens = start + chrono::TimeDelta::hours(1);

    let status = until(
        &w,
        "freeze",
        "the policy's status",
        |p: &PromotionPolicy| p.status.clone().filter(|s| s.open.is_some()),
    )
    .await;
    assert_eq!(status.open, Some(false));
    assert_eq!(status.next_open.as_ref().map(time), Some(reopens));
    assert_eq!(status.next_close, None);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Evaluated")
    );

    let gate = until(&w, "crm", "crm's production gate", |a: &ToolJetApp| {
        a.status.as_ref()?.gates.first().cloned()
    })
    .await;
    assert_eq!(
        (
            gate.environment.as_str(),
            gate.policies.as_slice(),
            gate.open
        ),
        ("production", &["freeze".to_string()][..], false)
    );
    assert_eq!(gate.next_open.as_ref().map(time), Some(reopens));
    let closed_by = gate.closed_by.unwrap_or_default();
    assert!(
        closed_by.contains("closed by Deny window") && closed_by.contains("release freeze"),
        "{closed_by}"
    );
}

#[tokio::test]
async fn an_allow_window_closed_now_shows_in_the_apps_gate_with_its_next_opening() {
    let w = Workspace::new("pstatus-allow").await;
    let (schedule, start) = daily_at(chrono::TimeDelta::hours(3));
    policy(
        &w,
        "office-hours",
        json!({ "environments": ["staging"],
                "windows": [{ "kind": "Allow", "schedule": schedule, "duration": "1h" }] }),
    )
    .await;
    let gate = until(&w, "crm", "crm's staging gate", |a: &ToolJetApp| {
        a.status.as_ref()?.gates.first().cloned()
    })
    .await;
    assert_eq!((gate.environment.as_str(), gate.open), ("staging", false));
    assert_eq!(gate.next_open.as_ref().map(time), Some(start));
    let closed_by = gate.closed_by.unwrap_or_default();
    assert!(closed_by.contains("no Allow window is open"), "{closed_by}");

    let status = until(
        &w,
        "office-hours",
        "the policy's status",
        |p: &PromotionPolicy| p.status.clone().filter(|s| s.open.is_some()),
    )
    .await;
    assert_eq!(status.open, Some(false));
    assert_eq!(status.next_open.as_ref().map(time), Some(start));
}

#[tokio::test]
async fn a_policy_lists_the_apps_its_selector_selects_and_their_gates_require_approvals() {
    let w = Workspace::new("pstatus-select").await;
    w.merge(
        &w.admin,
        "ToolJetApp",
        "crm",
        json!({ "metadata": { "labels": { "tier": "critical" } } }),
    )
    .await
    .unwrap();
    w.create(
        &w.admin,
        "ToolJetApp",
        "blog",
        json!({ "environments": ["development", "production"] }),
    )
    .await
    .unwrap();
    policy(
        &w,
        "critical",
        json!({ "appSelector": { "matchLabels": { "tier": "critical" } },
                "environments": ["production"], "approvals": { "required": 2 } }),
    )
    .await;

    let apps = |p: &PromotionPolicy| {
        let s = p.status.as_ref()?;
        let listed: Vec<(String, Vec<String>)> = s
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.environments.clone()))
            .collect();
        Some((s.selected_apps, listed))
    };
    until(
        &w,
        "critical",
        "the policy lists crm only",
        |p: &PromotionPolicy| {
            apps(p).filter(|(n, l)| *n == 1 && *l == [("crm".into(), vec!["production".into()])])
        },
    )
    .await;
    let gate = until(&w, "crm", "crm's production gate", |a: &ToolJetApp| {
        a.status.as_ref()?.gates.first().cloned()
    })
    .await;
    assert_eq!(
        (
            gate.environment.as_str(),
            gate.required_approvals,
            gate.open,
            gate.closed_by
        ),
        ("production", 2, true, None)
    );
    let blog: Api<ToolJetApp> = Api::namespaced(w.admin.clone(), &w.ns);
    let blog = blog.get("blog").await.unwrap();
    assert!(
        blog.status.as_ref().is_none_or(|s| s.gates.is_empty()),
        "an app the policy does not select has no gate: {:?}",
        blog.status
    );

    // Labelling blog selects it: the policy and blog's own status follow.
    w.merge(
        &w.admin,
        "ToolJetApp",
        "blog",
        json!({ "metadata": { "labels": { "tier": "critical" } } }),
    )
    .await
    .unwrap();
    until(
        &w,
        "critical",
        "the policy lists blog too",
        |p: &PromotionPolicy| apps(p).filter(|(n, _)| *n == 2),
    )
    .await;
    until(&w, "blog", "blog's production gate", |a: &ToolJetApp| {
        a.status
            .as_ref()?
            .gates
            .first()
            .filter(|g| g.environment == "production" && g.required_approvals == 2)
            .cloned()
    })
    .await;
}

#[tokio::test]
async fn a_versions_approvals_for_the_next_stage_count_approvals_in_and_revocations_out() {
    let w = Workspace::new("pstatus-approvals").await;
    let dave = approver(&w, "dave").await;
    policy(
        &w,
        "prod-gate",
        json!({ "environments": ["production"],
                "approvals": { "required": 2, "separationOfDuties": true } }),
    )
    .await;
    let summary = |want: &'static str| {
        move |v: &AppVersion| {
            v.status
                .as_ref()?
                .approvals
                .clone()
                .filter(|a| a.summary == want)
        }
    };
    let none = until(&w, "v-stg", "v-stg shows 0/2", summary("0/2")).await;
    assert_eq!(
        (
            none.environment.as_str(),
            none.required,
            none.approvers.len()
        ),
        ("production", 2, 0)
    );

    // Through the webhook, which stamps the approver and the owner reference (retried while
    // the webhook's caches and RBAC catch up with the binding and the policy).
    let generation = w
        .get("AppVersion", "v-stg")
        .await
        .and_then(|v| v.metadata.generation);
    let body = json!({ "version": "v-stg", "environment": "production", "generation": generation,
                       "comment": "QA sign-off" });
    support::eventually(WAIT, "dave's approval is admitted", || {
        let (w, dave, body) = (&w, &dave, body.clone());
        async move {
            match w.create(dave, "Approval", "by-dave", body).await {
                Ok(_) => Some(()),
                Err(e) => {
                    eprintln!("approval not admitted yet: {e}");
                    None
                }
            }
        }
    })
    .await;
    let one = until(&w, "v-stg", "v-stg shows 1/2", summary("1/2")).await;
    assert_eq!(one.approvers, ["dave"]);
    // The version in development is not guarded next (staging): it shows nothing.
    let dev: Api<AppVersion> = Api::namespaced(w.admin.clone(), &w.ns);
    assert_eq!(
        dev.get("v-dev")
            .await
            .unwrap()
            .status
            .and_then(|s| s.approvals),
        None
    );

    w.api(&dave, "Approval")
        .delete("by-dave", &DeleteParams::default())
        .await
        .unwrap();
    until(
        &w,
        "v-stg",
        "v-stg back at 0/2 after the revocation",
        summary("0/2"),
    )
    .await;
}

#[tokio::test]
async fn a_policy_that_changes_no_gate_rewrites_no_status() {
    let w = Workspace::new("pstatus-idle").await;
    let (schedule, _) = daily_at(-chrono::TimeDelta::minutes(2));
    policy(
        &w,
        "freeze",
        json!({ "environments": ["production"], "approvals": { "required": 1 },
                "windows": [{ "kind": "Deny", "schedule": schedule, "duration": "1h" }] }),
    )
    .await;
    let policy_rv = until(
        &w,
        "freeze",
        "the policy's status",
        |p: &PromotionPolicy| {
            p.status
                .as_ref()?
                .open
                .and(p.metadata.resource_version.clone())
        },
    )
    .await;
    let app_rv = until(&w, "crm", "crm's gate", |a: &ToolJetApp| {
        (!a.status.as_ref()?.gates.is_empty()).then(|| a.metadata.resource_version.clone())?
    })
    .await;
    let version_rv = until(&w, "v-stg", "v-stg's approvals", |v: &AppVersion| {
        v.status
            .as_ref()?
            .approvals
            .as_ref()
            .and(v.metadata.resource_version.clone())
    })
    .await;

    // A policy on a stage crm does not have: every app and version of the namespace is
    // reconciled again, and none has anything new to say.
    policy(
        &w,
        "qa-only",
        json!({ "environments": ["qa"], "approvals": { "required": 1 } }),
    )
    .await;
    until(
        &w,
        "qa-only",
        "the new policy's status",
        |p: &PromotionPolicy| {
            p.status
                .as_ref()
                .filter(|s| s.selected_apps == 1)
                .map(|_| ())
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let get = |kind: &'static str, name: &'static str| {
        let w = &w;
        async move {
            w.get(kind, name)
                .await
                .and_then(|o| o.metadata.resource_version)
                .unwrap_or_default()
        }
    };
    assert_eq!(get("PromotionPolicy", "freeze").await, policy_rv);
    assert_eq!(get("ToolJetApp", "crm").await, app_rv);
    assert_eq!(get("AppVersion", "v-stg").await, version_rv);
}
