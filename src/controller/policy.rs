//! PromotionPolicy: reports what the policy does now (whether its windows are open, when that
//! changes) and which apps it guards. Enforcement is the admission webhook's; this controller only
//! writes the policy's status, and wakes itself exactly when a window opens or closes.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::ObjectRef,
    },
};
use tracing::{instrument, warn};

use super::{
    Context, Error, Settings, apply_status, condition, new_failure, publish, set_condition,
};
use crate::{
    api::{GuardedApp, PromotionPolicy, PromotionPolicyStatus, ToolJetApp, conditions},
    cache::Lookups,
    cache::{Hubs, triggers},
    gate,
};

/// How many apps a policy's status lists (`selectedApps` counts them all).
pub const LISTED_APPS: usize = 100;
/// The earliest a window transition requeues (a transition due now, or just past).
const MIN_WAIT: Duration = Duration::from_secs(1);
/// The latest: a transition further away is rechecked daily (the recheck writes nothing).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The controller and its triggers: its own kind (spec changes) and the apps of its namespace
/// (what it selects and guards: labels, pipeline, creation and deletion).
pub fn controller(
    ctx: &Context,
    settings: &Settings,
    hubs: &mut Hubs,
) -> Controller<PromotionPolicy> {
    let lookups = &ctx.lookups;
    let main = triggers::changes(hubs.policies.subscribe(), triggers::generation);
    let apps = triggers::changes(hubs.apps.subscribe(), selection_trigger);
    let by_app = lookups.clone();
    Controller::for_shared_stream(main, lookups.policies.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .watches_shared_stream(apps, move |app: Arc<ToolJetApp>| {
            by_app
                .policies_in(&app.namespace().unwrap_or_default())
                .iter()
                .map(|p| ObjectRef::from(&**p))
                .collect::<Vec<_>>()
        })
}

/// What of an app decides whether a policy selects it and which of its stages it guards.
fn selection_trigger(
    app: &ToolJetApp,
) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
    (app.labels().clone(), app.spec.environments.clone())
}

/// The live apps of a namespace, in no particular order. A scan of the app cache: the callers
/// are policy reconciles and policy changes, both rare.
pub(crate) fn apps_in(lookups: &Lookups, ns: &str) -> Vec<Arc<ToolJetApp>> {
    lookups
        .apps
        .state()
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(ns) && a.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The requeue for the next window transition at `next`: clamped to [1 s, 1 day]; `None` (no
/// requeue) when nothing changes within the windows' horizon.
pub(crate) fn until(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    let wait = (next? - now).to_std().unwrap_or_default();
    Some(wait.clamp(MIN_WAIT, MAX_WAIT))
}

/// `Action` for a requeue at the next transition, else waiting for a change.
pub(crate) fn at_transition(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    until(next, now).map_or_else(Action::await_change, Action::requeue)
}

#[instrument(skip_all, fields(kind = "PromotionPolicy", namespace = policy.namespace().unwrap_or_default(), name = policy.name_any()))]
pub async fn reconcile(policy: Arc<PromotionPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _pass = ctx.metrics.reconcile("promotionpolicy");
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    if policy.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Gather (caches and the clock).
    let apps = apps_in(&ctx.lookups, &ns);
    let now = gate::to_chrono(Timestamp::now());
    // Decide (pure).
    let (status, next) = desired_status(&policy, &apps, now);
    // Apply.
    apply_status(
        &ctx,
        "promotionpolicy",
        &*policy,
        policy.status.as_ref(),
        &status,
    )
    .await?;
    // Report.
    let old = policy.status.as_ref().map(|s| s.conditions.as_slice());
    if let Some(after) = new_failure(old, &status.conditions, conditions::READY) {
        warn!(reason = %after.reason, message = %after.message, "policy cannot be evaluated");
        publish(
            &ctx.recorder,
            &*policy,
            EventType::Warning,
            &after.reason,
            "Evaluate",
            after.message.clone(),
        )
        .await;
    }
    Ok(at_transition(next, now))
}

/// The status at `now` (pure), and when it changes by itself next (a window transition).
fn desired_status(
    policy: &PromotionPolicy,
    apps: &[Arc<ToolJetApp>],
    now: DateTime<Utc>,
) -> (PromotionPolicyStatus, Option<DateTime<Utc>>) {
    let mut status = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    status.observed_generation = generation;

    // The policy's own windows (an unparsable one keeps the stages closed: fail closed).
    let (windows, next) = match gate::windows_of(policy) {
        Ok(windows) => {
            let g = crate::policy::window_state(&windows, now);
            status.open = Some(g.open);
            status.next_open = g.next_open.map(gate::to_time);
            status.next_close = g.next_close.map(gate::to_time);
            (g.describe(), g.next_open.or(g.next_close))
        }
        Err(_) => {
            status.open = Some(false);
            status.next_open = None;
            status.next_close = None;
            ("closed".to_string(), None)
        }
    };

    // The apps it selects (an unreadable selector selects every app: the webhook fails closed
    // on each of them), with their stages it guards.
    let guarded = &policy.spec.environments;
    let selected: Vec<GuardedApp> = apps
        .iter()
        .filter(|a| gate::selects(policy, a).unwrap_or(true))
        .map(|a| GuardedApp {
            name: a.name_any(),
            environments: a
                .spec
                .environments
                .iter()
                .filter(|s| guarded.contains(s))
                .cloned()
                .collect(),
        })
        .collect();
    status.selected_apps = u32::try_from(selected.len()).unwrap_or(u32::MAX);
    let count = selected.len();
    status.apps = selected;
    status.apps.sort_by(|a, b| a.name.cmp(&b.name));
    status.apps.truncate(LISTED_APPS);

    let problems = gate::problems(policy);
    let ready = match problems.first() {
        Some(first) => {
            let reason = if first.starts_with("spec.appSelector") {
                conditions::INVALID_SELECTOR
            } else {
                conditions::INVALID_WINDOW
            };
            condition(
                conditions::READY,
                false,
                reason,
                format!(
                    "{}; the stages it guards stay closed to promotions until it is fixed",
                    problems.join("; ")
                ),
                generation,
            )
        }
        None => condition(
            conditions::READY,
            true,
            conditions::EVALUATED,
            format!(
                "guards {} of {count} app{}; windows: {windows}",
                guarded.join(", "),
                if count == 1 { "" } else { "s" }
            ),
            generation,
        ),
    };
    set_condition(&mut status.conditions, ready);
    (status, next)
}

pub fn error_policy(policy: Arc<PromotionPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_action("promotionpolicy", &*policy, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ApprovalRequirement, PromotionPolicySpec, PromotionWindow, ToolJetAppSpec, WindowKind,
    };
    use chrono::TimeZone;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use std::collections::BTreeMap;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        // A Wednesday.
        Utc.with_ymd_and_hms(2026, 3, 4, h, m, 0).unwrap()
    }

    fn app(name: &str, tier: Option<&str>, pipeline: &[&str]) -> Arc<ToolJetApp> {
        let mut a = ToolJetApp::new(
            name,
            ToolJetAppSpec {
                display_name: None,
                environments: pipeline.iter().map(|s| s.to_string()).collect(),
                release: None,
                rollout: vec![],
                verification: None,
            },
        );
        a.metadata.namespace = Some("ns".into());
        a.metadata.labels = tier.map(|t| BTreeMap::from([("tier".to_string(), t.to_string())]));
        Arc::new(a)
    }

    fn window(kind: WindowKind, schedule: &str, duration: &str) -> PromotionWindow {
        PromotionWindow {
            kind,
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: None,
            description: Some("freeze".into()),
        }
    }

    fn policy(selector: Option<LabelSelector>, windows: Vec<PromotionWindow>) -> PromotionPolicy {
        let mut p = PromotionPolicy::new(
            "prod-gate",
            PromotionPolicySpec {
                app_selector: selector,
                environments: vec!["production".into()],
                approvals: Some(ApprovalRequirement {
                    required: 2,
                    separation_of_duties: true,
                }),
                windows,
            },
        );
        p.metadata.namespace = Some("ns".into());
        p.metadata.generation = Some(3);
        p
    }

    fn critical() -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "critical".into())])),
            match_expressions: None,
        })
    }

    fn ready(s: &PromotionPolicyStatus) -> (&str, &str, &str) {
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn an_active_deny_window_closes_the_policy_until_it_ends() {
        let p = policy(None, vec![window(WindowKind::Deny, "0 9 * * *", "2h")]);
        let (s, next) = desired_status(&p, &[], at(10, 0));
        assert_eq!(s.open, Some(false));
        assert_eq!(s.next_open, Some(gate::to_time(at(11, 0))));
        assert_eq!(s.next_close, None);
        assert_eq!(next, Some(at(11, 0)));
        assert_eq!(s.observed_generation, Some(3));
        let (status, reason, message) = ready(&s);
        assert_eq!((status, reason), ("True", "Evaluated"));
        assert!(message.contains("closed by Deny window"), "{message}");

        let (s, next) = desired_status(&p, &[], at(12, 0));
        assert_eq!(s.open, Some(true));
        assert_eq!(
            s.next_close,
            Some(gate::to_time(at(9, 0) + chrono::TimeDelta::days(1)))
        );
        assert_eq!(next, Some(at(9, 0) + chrono::TimeDelta::days(1)));
    }

    #[test]
    fn a_policy_without_windows_is_open_and_never_requeues() {
        let (s, next) = desired_status(&policy(None, vec![]), &[], at(10, 0));
        assert_eq!(
            (s.open, s.next_open, s.next_close, next),
            (Some(true), None, None, None)
        );
    }

    #[test]
    fn an_always_active_deny_window_never_requeues() {
        let p = policy(None, vec![window(WindowKind::Deny, "* * * * *", "2h")]);
        let (s, next) = desired_status(&p, &[], at(10, 0));
        assert_eq!((s.open, s.next_open, next), (Some(false), None, None));
    }

    #[test]
    fn selected_apps_list_their_guarded_stages_sorted() {
        let apps = [
            app("web", Some("critical"), &["dev", "production"]),
            app(
                "crm",
                Some("critical"),
                &["development", "staging", "production"],
            ),
            app("blog", None, &["development", "production"]),
            app("lab", Some("critical"), &["dev", "qa"]),
        ];
        let (s, _) = desired_status(&policy(critical(), vec![]), &apps, at(10, 0));
        assert_eq!(s.selected_apps, 3);
        let listed: Vec<(&str, Vec<&str>)> = s
            .apps
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.environments.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("crm", vec!["production"]),
                ("lab", vec![]),
                ("web", vec!["production"])
            ]
        );
        assert!(ready(&s).2.starts_with("guards production of 3 apps"));

        let (s, _) = desired_status(&policy(None, vec![]), &apps, at(10, 0));
        assert_eq!(s.selected_apps, 4, "no selector: every app");
    }

    #[test]
    fn the_listed_apps_are_bounded_but_all_counted() {
        let apps: Vec<_> = (0..150)
            .map(|i| app(&format!("app-{i:03}"), None, &["production"]))
            .collect();
        let (s, _) = desired_status(&policy(None, vec![]), &apps, at(10, 0));
        assert_eq!(s.selected_apps, 150);
        assert_eq!(s.apps.len(), LISTED_APPS);
        assert_eq!(s.apps[0].name, "app-000");
    }

    #[test]
    fn an_invalid_window_names_its_field_and_keeps_the_stages_closed() {
        let p = policy(None, vec![window(WindowKind::Allow, "0 25 * * *", "1h")]);
        let (s, next) = desired_status(&p, &[], at(10, 0));
        let (status, reason, message) = ready(&s);
        assert_eq!((status, reason), ("False", "InvalidWindow"));
        assert!(message.contains("spec.windows[0].schedule"), "{message}");
        assert_eq!((s.open, next), (Some(false), None));
    }

    #[test]
    fn an_invalid_selector_names_its_field_and_selects_every_app() {
        let bad = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Matches".into(),
                values: Some(vec!["x".into()]),
            }]),
        };
        let apps = [app("crm", None, &["production"])];
        let (s, _) = desired_status(&policy(Some(bad), vec![]), &apps, at(10, 0));
        let (status, reason, message) = ready(&s);
        assert_eq!((status, reason), ("False", "InvalidSelector"));
        assert!(message.contains("spec.appSelector"), "{message}");
        assert_eq!(s.selected_apps, 1);
    }

    #[test]
    fn an_unchanged_policy_keeps_its_status_and_transition_time() {
        let p = policy(None, vec![window(WindowKind::Deny, "0 9 * * *", "2h")]);
        let (first, _) = desired_status(&p, &[], at(10, 0));
        let mut p2 = p.clone();
        p2.status = Some(first.clone());
        let (again, _) = desired_status(&p2, &[], at(10, 30));
        assert_eq!(
            again, first,
            "nothing changed between transitions: no write"
        );
    }

    #[test]
    fn requeues_are_clamped_between_a_second_and_a_day() {
        let now = at(10, 0);
        assert_eq!(until(None, now), None);
        assert_eq!(
            until(Some(now - chrono::TimeDelta::seconds(5)), now),
            Some(MIN_WAIT)
        );
        assert_eq!(
            until(Some(now + chrono::TimeDelta::minutes(30)), now),
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            until(Some(now + chrono::TimeDelta::days(40)), now),
            Some(MAX_WAIT)
        );
    }
}
