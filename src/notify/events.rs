//! The lifecycle events of the apps a Notification covers, derived from what the API stores:
//! a version's creation and promotion history, the apps' release histories, Approvals, and the
//! Deny windows of the PromotionPolicies selecting the apps (their boundaries computed from the
//! schedule). Pure: the same objects give the same events with the same ids, after a restart too.
//!
//! Times are whole seconds (what `metav1.Time` keeps), so an event's time read back from a
//! status compares equal to the one derived again.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, TimeDelta, Utc};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::{
    api::{
        APPROVED_AT_ANNOTATION, APPROVED_BY_ANNOTATION, AppVersion, Approval,
        CREATED_BY_ANNOTATION, LifecycleEvent, PromotionPolicy, ToolJetApp,
    },
    gate,
    lifecycle::Pipeline,
    policy::{self, Window, WindowKind},
};

/// The most window boundaries one window yields in one derivation (a bound on the work after a
/// long outage with a window that starts every minute).
const MAX_BOUNDARIES: usize = 2000;

/// What events are derived from: the covered apps of one namespace and what concerns them.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub namespace: String,
    /// The covered apps (selected by the Notification, not being deleted).
    pub apps: Vec<Arc<ToolJetApp>>,
    /// The versions of the covered apps.
    pub versions: Vec<Arc<AppVersion>>,
    /// The Approvals of those versions.
    pub approvals: Vec<Arc<Approval>>,
    /// The PromotionPolicies of the namespace.
    pub policies: Vec<Arc<PromotionPolicy>>,
}

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Stable: a hash of the namespace, the kind and UID of the object it comes from, and the
    /// entry's identity. The idempotency key.
    pub id: String,
    pub kind: LifecycleEvent,
    /// When it happened (whole seconds).
    pub at: DateTime<Utc>,
    pub namespace: String,
    /// The object it is about: `tooljetapps/APP`, or `promotionpolicies/POLICY` for a freeze.
    pub source: String,
    /// What within the source: the version, or the policy's window (`windows[0]`).
    pub subject: String,
    pub facts: Facts,
    /// The order among events of the same second (see [`Order`]).
    pub order: Order,
}

/// The order of events within one second, the precision Kubernetes keeps of a time: the
/// lifecycle's. A version's promotion into the stage at `position` of its pipeline, then the
/// approval it needs, then approvals for the next stage, then the next promotion; releases after
/// the promotions, in the order of the release history; a freeze ends first and starts last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    pub position: usize,
    pub step: u8,
    /// The entry's index in its history (an Approval's: the nanoseconds of its stamp).
    pub index: usize,
}

impl Order {
    fn at(position: usize, step: u8, index: usize) -> Order {
        Order {
            position,
            step,
            index,
        }
    }
}

/// What an event says: names, stages, who, when. Never a value or a definition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The app (or, for a freeze, every covered app the policy selects).
    pub apps: Vec<String>,
    /// The AppVersion (metadata.name).
    pub version: Option<String>,
    /// The stage entered, approved for, or released in; for a freeze, none (see `environments`).
    pub environment: Option<String>,
    /// The stage left (a promotion).
    pub from: Option<String>,
    /// The stage that requires approvals next (approval needed).
    pub approval_for: Option<String>,
    /// Who did it, as the admission webhook recorded it.
    pub by: Option<String>,
    /// A break-glass override's reason, or why the operator rolled back.
    pub reason: Option<String>,
    /// Made by the operator (an automatic rollback).
    pub automatic: bool,
    /// Approvals counted and required for `approval_for` (or `environment` of an Approval).
    pub approvals: Option<(u32, u32)>,
    /// The stages a freeze closes.
    pub environments: Vec<String>,
    /// The window of a freeze, in words.
    pub window: Option<String>,
    /// When a freeze that starts ends.
    pub until: Option<DateTime<Utc>>,
}

/// Every event of `sources` whose time is within `[from, until]`, in delivery order: by time,
/// then in the lifecycle's order ([`Order`]), then by id.
pub fn derive(sources: &Sources, from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Event> {
    derive_kinds(sources, from, until, &[])
}

/// [`derive`], of the kinds `kinds` only (all when empty). What no kind asks for is not
/// computed (a Notification without freeze events computes no window boundary), nor is a
/// history entry before `from`; the Approvals are grouped once.
pub fn derive_kinds(
    sources: &Sources,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    kinds: &[LifecycleEvent],
) -> Vec<Event> {
    use LifecycleEvent::*;
    let wants = |k: &[LifecycleEvent]| kinds.is_empty() || k.iter().any(|k| kinds.contains(k));
    let given = Given::of(sources);
    let mut versions: BTreeMap<&str, Vec<&Arc<AppVersion>>> = BTreeMap::new();
    for v in &sources.versions {
        versions.entry(v.spec.app.as_str()).or_default().push(v);
    }
    let mut events = vec![];
    for app in &sources.apps {
        if wants(&[Released, RolledBack]) {
            events.extend(releases(sources, app, from));
        }
        let name = app.name_any();
        for v in versions.get(name.as_str()).into_iter().flatten() {
            if wants(&[Promoted]) {
                events.extend(promotions(sources, app, v, from));
            }
            if wants(&[ApprovalNeeded]) {
                events.extend(approvals_needed(sources, &given, app, v, from));
            }
        }
    }
    if wants(&[Approved]) {
        events.extend(approvals(sources, &given, from));
    }
    events.retain(|e| from <= e.at && e.at <= until && wants(&[e.kind]));
    if wants(&[FreezeStarted, FreezeEnded]) {
        for policy in &sources.policies {
            events.extend(freezes(sources, policy, from, until));
        }
    }
    events.retain(|e| wants(&[e.kind]));
    events.sort_by(|a, b| (a.at, a.order, &a.id).cmp(&(b.at, b.order, &b.id)));
    events
}

/// When each Approval was given (as precisely as known), by version and stage, oldest first:
/// grouped once per derivation rather than scanned for every event.
struct Given<'a>(BTreeMap<(&'a str, &'a str), Vec<DateTime<Utc>>>);

impl<'a> Given<'a> {
    fn of(sources: &'a Sources) -> Given<'a> {
        let mut by: BTreeMap<(&str, &str), Vec<DateTime<Utc>>> = BTreeMap::new();
        for a in &sources.approvals {
            if let Some(t) = approved_at(a) {
                let key = (a.spec.version.as_str(), a.spec.environment.as_str());
                by.entry(key).or_default().push(t);
            }
        }
        for times in by.values_mut() {
            times.sort();
        }
        Given(by)
    }

    /// The Approvals of `version` for `stage` given at or before `at` (an approval given in the
    /// second a version entered its stage, but after, counts for the approvals that follow
    /// only).
    fn counted(&self, version: &str, stage: &str, at: DateTime<Utc>) -> u32 {
        let n = self
            .0
            .get(&(version, stage))
            .map_or(0, |times| times.partition_point(|t| *t <= at));
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Steps of [`Order`] at one position.
const ENTERED: u8 = 0;
const NEEDS_APPROVAL: u8 = 1;
const APPROVED: u8 = 2;
const RELEASED: u8 = 3;

/// The stable id of an event: its parts hashed (128 bits, hex).
fn id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update(p.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many times each identity was seen in one history: two entries of one second alike in
/// everything (v3, v4, v3 released within a second) are told apart by their occurrence. The
/// count is of equal entries, not the index in the history, so trimming the history's oldest
/// entries leaves the ids of the rest unchanged; the first occurrence adds nothing (the ids of
/// the events delivered before this count existed stay the same).
#[derive(Default)]
struct Occurrences(BTreeMap<Vec<String>, usize>);

impl Occurrences {
    fn next(&mut self, parts: &[&str]) -> Option<String> {
        let key = parts.iter().map(|p| p.to_string()).collect();
        let n = self.0.entry(key).or_default();
        *n += 1;
        (*n > 1).then(|| format!("#{}", *n - 1))
    }
}

/// A time as events carry it: whole seconds.
pub fn seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    seconds(gate::to_chrono(t.0))
}

/// An event of `app` about `version` (its subject).
fn app_event(
    sources: &Sources,
    app: &ToolJetApp,
    (kind, at, order): (LifecycleEvent, DateTime<Utc>, Order),
    id: String,
    version: &str,
) -> Event {
    Event {
        id,
        kind,
        at,
        order,
        namespace: sources.namespace.clone(),
        source: format!("tooljetapps/{}", app.name_any()),
        subject: version.to_string(),
        facts: Facts {
            apps: vec![app.name_any()],
            version: Some(version.to_string()),
            ..Default::default()
        },
    }
}

/// Released and RolledBack: the app's release history.
fn releases<'a>(
    sources: &'a Sources,
    app: &'a ToolJetApp,
    from: DateTime<Utc>,
) -> impl Iterator<Item = Event> + 'a {
    let history = app.status.iter().flat_map(|s| &s.release_history);
    let pipeline = Pipeline::of(app);
    let last = pipeline.last().to_string();
    let position = pipeline.index(&last).unwrap_or_default();
    let uid = app.uid().unwrap_or_default();
    let mut seen = Occurrences::default();
    // Entries of one second are all before `from` or none: skipping keeps the occurrences.
    let recent = history
        .enumerate()
        .filter(move |(_, r)| time(&r.at) >= from);
    recent.map(move |(index, r)| {
        let at = time(&r.at);
        let kind = if r.rollback || r.automatic {
            LifecycleEvent::RolledBack
        } else {
            LifecycleEvent::Released
        };
        let second = at.timestamp().to_string();
        let mut parts = vec![
            sources.namespace.as_str(),
            "ToolJetApp",
            &uid,
            "release",
            &second,
            &r.version,
        ];
        let occurrence = seen.next(&parts);
        parts.extend(occurrence.as_deref());
        let key = id(&parts);
        let order = Order::at(position, RELEASED, index);
        let mut e = app_event(sources, app, (kind, at, order), key, &r.version);
        e.facts.environment = Some(last.clone());
        e.facts.by = r.by.clone();
        e.facts.reason = r.reason.clone().or_else(|| r.override_reason.clone());
        e.facts.automatic = r.automatic;
        e
    })
}

/// Promoted: the version's promotion history.
fn promotions<'a>(
    sources: &'a Sources,
    app: &'a ToolJetApp,
    v: &'a AppVersion,
    from: DateTime<Utc>,
) -> impl Iterator<Item = Event> + 'a {
    let uid = v.uid().unwrap_or_default();
    let history = v.status.iter().flat_map(|s| &s.promotions);
    let pipeline = Pipeline::of(app);
    let mut seen = Occurrences::default();
    let recent = history
        .enumerate()
        .filter(move |(_, p)| time(&p.at) >= from);
    recent.map(move |(index, p)| {
        let at = time(&p.at);
        let second = at.timestamp().to_string();
        let mut parts = vec![
            sources.namespace.as_str(),
            "AppVersion",
            &uid,
            "promotion",
            &second,
            &p.from,
            &p.to,
        ];
        let occurrence = seen.next(&parts);
        parts.extend(occurrence.as_deref());
        let key = id(&parts);
        let order = Order::at(pipeline.index(&p.to).unwrap_or_default(), ENTERED, index);
        let mut e = app_event(
            sources,
            app,
            (LifecycleEvent::Promoted, at, order),
            key,
            &v.name_any(),
        );
        e.facts.environment = Some(p.to.clone());
        e.facts.from = Some(p.from.clone());
        e.facts.by = p.by.clone();
        e.facts.reason = p.override_reason.clone();
        e
    })
}

/// The stages a version entered, with when and by whom: its creation (the first stage), then
/// each promotion.
fn entries(app: &ToolJetApp, v: &AppVersion) -> Vec<(DateTime<Utc>, String, Option<String>)> {
    let mut entries = vec![];
    if let Some(created) = &v.metadata.creation_timestamp {
        entries.push((
            time(created),
            Pipeline::of(app).first().to_string(),
            v.annotations().get(CREATED_BY_ANNOTATION).cloned(),
        ));
    }
    for p in v.status.iter().flat_map(|s| &s.promotions) {
        entries.push((time(&p.at), p.to.clone(), p.by.clone()));
    }
    entries
}

/// The approvals the policies selecting `app` require to enter `stage` (0: none).
fn required(sources: &Sources, app: &ToolJetApp, stage: &str) -> u32 {
    gate::stage_gate_among(&sources.policies, app, stage)
        .and_then(|g| g.requirement)
        .map_or(0, |r| r.required)
}

/// ApprovalNeeded: each stage the version entered whose next stage requires approvals.
fn approvals_needed(
    sources: &Sources,
    given: &Given,
    app: &ToolJetApp,
    v: &AppVersion,
    from: DateTime<Utc>,
) -> Vec<Event> {
    let uid = v.uid().unwrap_or_default();
    let pipeline = Pipeline::of(app);
    entries(app, v)
        .into_iter()
        .filter(|(at, _, _)| *at >= from)
        .filter_map(|(at, stage, by)| {
            let next = pipeline.next(&stage)?;
            let needed = required(sources, app, next);
            (needed > 0).then(|| {
                let key = id(&[
                    &sources.namespace,
                    "AppVersion",
                    &uid,
                    "entered",
                    &at.timestamp().to_string(),
                    &stage,
                ]);
                let position = pipeline.index(&stage).unwrap_or_default();
                let order = Order::at(position, NEEDS_APPROVAL, 0);
                let mut e = app_event(
                    sources,
                    app,
                    (LifecycleEvent::ApprovalNeeded, at, order),
                    key,
                    &v.name_any(),
                );
                e.facts.environment = Some(stage);
                e.facts.approval_for = Some(next.to_string());
                e.facts.by = by;
                e.facts.approvals = Some((given.counted(&v.name_any(), next, at), needed));
                e
            })
        })
        .collect()
}

/// When an Approval was given, as precisely as known: the webhook's stamp, else its creation.
fn approved_at(a: &Approval) -> Option<DateTime<Utc>> {
    let stamped = a
        .annotations()
        .get(APPROVED_AT_ANNOTATION)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(gate::to_chrono);
    stamped.or_else(|| a.metadata.creation_timestamp.as_ref().map(time))
}

/// Approved: every Approval of a covered version.
fn approvals(sources: &Sources, given: &Given, from: DateTime<Utc>) -> Vec<Event> {
    let apps: BTreeMap<String, &Arc<ToolJetApp>> =
        sources.apps.iter().map(|a| (a.name_any(), a)).collect();
    let versions: BTreeMap<String, &Arc<AppVersion>> =
        sources.versions.iter().map(|v| (v.name_any(), v)).collect();
    sources
        .approvals
        .iter()
        .filter_map(|a| {
            let v = versions.get(&a.spec.version)?;
            let app = apps.get(&v.spec.app)?;
            let precise = approved_at(a)?;
            let at = seconds(precise);
            if at < from {
                return None;
            }
            let key = id(&[&sources.namespace, "Approval", &a.uid().unwrap_or_default()]);
            let stage = &a.spec.environment;
            let position = Pipeline::of(app).index(stage).unwrap_or(1);
            // Approvals of one second in the order given.
            let nanos = precise.timestamp_subsec_nanos() as usize;
            let order = Order::at(position.saturating_sub(1), APPROVED, nanos);
            let mut e = app_event(
                sources,
                app,
                (LifecycleEvent::Approved, at, order),
                key,
                &v.name_any(),
            );
            e.facts.environment = Some(stage.clone());
            e.facts.by = a.annotations().get(APPROVED_BY_ANNOTATION).cloned();
            e.facts.approvals = Some((
                given.counted(&v.name_any(), stage, precise),
                required(sources, app, stage),
            ));
            Some(e)
        })
        .collect()
}

/// FreezeStarted and FreezeEnded: the boundaries of `policy`'s Deny windows within
/// `[from, until]`, when it selects a covered app and guards one of its stages.
fn freezes(
    sources: &Sources,
    policy: &PromotionPolicy,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<Event> {
    if policy.metadata.deletion_timestamp.is_some() {
        return vec![];
    }
    let apps: Vec<String> = sources
        .apps
        .iter()
        .filter(|a| gate::selects(policy, a).unwrap_or(false))
        .filter(|a| {
            a.spec
                .environments
                .iter()
                .any(|s| policy.spec.environments.contains(s))
        })
        .map(|a| a.name_any())
        .collect();
    let Ok(windows) = gate::windows_of(policy) else {
        return vec![];
    };
    if apps.is_empty() {
        return vec![];
    }
    let uid = policy.uid().unwrap_or_default();
    let mut events = vec![];
    for (i, w) in windows.iter().enumerate() {
        if w.kind() != WindowKind::Deny {
            continue;
        }
        for (at, starts, ends) in boundaries(w, from, until) {
            let (kind, edge, order) = if starts {
                let last = Order::at(usize::MAX, u8::MAX, 0);
                (LifecycleEvent::FreezeStarted, "start", last)
            } else {
                (LifecycleEvent::FreezeEnded, "end", Order::default())
            };
            let index = i.to_string();
            let key = id(&[
                &sources.namespace,
                "PromotionPolicy",
                &uid,
                &index,
                edge,
                &at.timestamp().to_string(),
            ]);
            events.push(Event {
                id: key,
                kind,
                at,
                order,
                namespace: sources.namespace.clone(),
                source: format!("promotionpolicies/{}", policy.name_any()),
                subject: format!("windows[{i}]"),
                facts: Facts {
                    apps: apps.clone(),
                    environments: policy.spec.environments.clone(),
                    window: Some(w.to_string()),
                    until: ends,
                    ..Default::default()
                },
            });
        }
    }
    events
}

/// The starts (`true`, with the end) and ends (`false`) of one Deny window within
/// `[from, until]`, in order. Occurrences that overlap are one freeze.
fn boundaries(
    w: &Window,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, bool, Option<DateTime<Utc>>)> {
    let one = std::slice::from_ref(w);
    let mut out = vec![];
    let mut t = from - TimeDelta::seconds(1);
    while out.len() < MAX_BOUNDARIES {
        let state = policy::window_state(one, t);
        let (next, starts) = if state.open {
            (state.next_close, true)
        } else {
            (state.next_open, false)
        };
        let Some(next) = next.filter(|n| *n <= until && *n > t) else {
            break;
        };
        let ends = starts
            .then(|| policy::window_state(one, next).next_open)
            .flatten();
        if next >= from {
            out.push((seconds(next), starts, ends.map(seconds)));
        }
        t = next;
    }
    out
}

/// The next boundary of a Deny window of the covered apps' policies after `now`: when the
/// derivation has something new without any object changing.
pub fn next_boundary(sources: &Sources, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    sources
        .policies
        .iter()
        .filter(|p| {
            sources
                .apps
                .iter()
                .any(|a| gate::selects(p, a).unwrap_or(false))
        })
        .filter_map(|p| gate::windows_of(p).ok())
        .flatten()
        .filter(|w| w.kind() == WindowKind::Deny)
        .filter_map(|w| {
            let state = policy::window_state(std::slice::from_ref(&w), now);
            if state.open {
                state.next_close
            } else {
                state.next_open
            }
        })
        .min()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{
        AppVersionSpec, AppVersionStatus, ApprovalRequirement, ApprovalSpec, Promotion,
        PromotionPolicySpec, PromotionWindow, ReleaseRecord, ToolJetAppSpec, ToolJetAppStatus,
        WindowKind as ApiWindowKind,
    };
    use chrono::TimeZone;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, s).unwrap()
    }

    fn t(h: u32, m: u32, s: u32) -> Time {
        gate::to_time(at(h, m, s))
    }

    pub fn app() -> ToolJetApp {
        let mut a = ToolJetApp::new(
            "crm",
            ToolJetAppSpec {
                display_name: None,
                environments: crate::api::default_pipeline(),
                release: None,
                rollout: vec![],
                verification: None,
            },
        );
        a.metadata.namespace = Some("acme".into());
        a.metadata.uid = Some("app-uid".into());
        a.status = Some(ToolJetAppStatus {
            release_history: vec![
                ReleaseRecord {
                    version: "crm-v3".into(),
                    at: t(9, 0, 0),
                    by: Some("carol".into()),
                    override_reason: None,
                    rollback: false,
                    automatic: false,
                    reason: None,
                    verification: None,
                },
                ReleaseRecord {
                    version: "crm-v4".into(),
                    at: t(11, 0, 0),
                    by: Some("carol".into()),
                    override_reason: None,
                    rollback: false,
                    automatic: false,
                    reason: None,
                    verification: None,
                },
                ReleaseRecord {
                    version: "crm-v3".into(),
                    at: t(11, 5, 0),
                    by: None,
                    override_reason: None,
                    rollback: true,
                    automatic: true,
                    reason: Some("Deployment tooljet-production: ProgressDeadlineExceeded".into()),
                    verification: None,
                },
            ],
            ..Default::default()
        });
        a
    }

    pub fn version() -> AppVersion {
        let mut v = AppVersion::new(
            "crm-v4",
            AppVersionSpec {
                app: "crm".into(),
                version_name: "v4".into(),
                description: None,
                environment: "production".into(),
                definition: None,
                requires: None,
            },
        );
        v.metadata.namespace = Some("acme".into());
        v.metadata.uid = Some("v4-uid".into());
        v.metadata.creation_timestamp = Some(t(10, 0, 0));
        v.metadata.annotations = Some([(CREATED_BY_ANNOTATION.into(), "alice".into())].into());
        v.status = Some(AppVersionStatus {
            promotions: vec![
                Promotion {
                    from: "development".into(),
                    to: "staging".into(),
                    at: t(10, 10, 0),
                    by: Some("bob".into()),
                    override_reason: None,
                    verification: None,
                },
                Promotion {
                    from: "staging".into(),
                    to: "production".into(),
                    at: t(10, 30, 0),
                    by: Some("bob".into()),
                    override_reason: None,
                    verification: None,
                },
            ],
            ..Default::default()
        });
        v
    }

    pub fn approval(name: &str, by: &str, when: &str) -> Approval {
        let mut a = Approval::new(
            name,
            ApprovalSpec {
                version: "crm-v4".into(),
                environment: "production".into(),
                comment: None,
                generation: Some(1),
            },
        );
        a.metadata.namespace = Some("acme".into());
        a.metadata.uid = Some(format!("{name}-uid"));
        a.metadata.annotations = Some(
            [
                (APPROVED_BY_ANNOTATION.to_string(), by.to_string()),
                (APPROVED_AT_ANNOTATION.to_string(), when.to_string()),
            ]
            .into(),
        );
        a
    }

    pub fn policy(windows: Vec<PromotionWindow>) -> PromotionPolicy {
        let mut p = PromotionPolicy::new(
            "prod-gate",
            PromotionPolicySpec {
                app_selector: None,
                environments: vec!["production".into()],
                approvals: Some(ApprovalRequirement {
                    required: 2,
                    separation_of_duties: false,
                }),
                windows,
            },
        );
        p.metadata.namespace = Some("acme".into());
        p.metadata.uid = Some("policy-uid".into());
        p
    }

    pub fn freeze() -> PromotionWindow {
        PromotionWindow {
            kind: ApiWindowKind::Deny,
            schedule: "0 12 * * *".into(),
            duration: "1h".into(),
            time_zone: None,
            description: Some("lunch freeze".into()),
        }
    }

    pub fn sources() -> Sources {
        Sources {
            namespace: "acme".into(),
            apps: vec![Arc::new(app())],
            versions: vec![Arc::new(version())],
            approvals: vec![
                Arc::new(approval("ok-dave", "dave", "2026-12-01T10:20:00.123456Z")),
                Arc::new(approval("ok-erin", "erin", "2026-12-01T10:25:00Z")),
            ],
            policies: vec![Arc::new(policy(vec![freeze()]))],
        }
    }

    fn kinds(events: &[Event]) -> Vec<(LifecycleEvent, DateTime<Utc>)> {
        events.iter().map(|e| (e.kind, e.at)).collect()
    }

    #[test]
    fn every_kind_is_derived_from_histories_approvals_and_windows_in_time_order() {
        use LifecycleEvent::*;
        let events = derive(&sources(), at(9, 30, 0), at(14, 0, 0));
        assert_eq!(
            kinds(&events),
            [
                (Promoted, at(10, 10, 0)),
                (ApprovalNeeded, at(10, 10, 0)),
                (Approved, at(10, 20, 0)),
                (Approved, at(10, 25, 0)),
                (Promoted, at(10, 30, 0)),
                (Released, at(11, 0, 0)),
                (RolledBack, at(11, 5, 0)),
                (FreezeStarted, at(12, 0, 0)),
                (FreezeEnded, at(13, 0, 0)),
            ],
            "{events:#?}"
        );
        // The version's creation entered development, whose next stage (staging) is unguarded;
        // the release at 9:00 is before the window asked for.
        let needed = &events[1];
        assert_eq!(needed.facts.environment.as_deref(), Some("staging"));
        assert_eq!(needed.facts.approval_for.as_deref(), Some("production"));
        assert_eq!(needed.facts.approvals, Some((0, 2)));
        assert_eq!(needed.facts.by.as_deref(), Some("bob"));
        let approved = &events[3];
        assert_eq!(approved.facts.by.as_deref(), Some("erin"));
        assert_eq!(approved.facts.approvals, Some((2, 2)));
        assert_eq!(approved.source, "tooljetapps/crm");
        assert_eq!(approved.subject, "crm-v4");
        let rollback = &events[6];
        assert!(rollback.facts.automatic);
        assert_eq!(
            rollback.facts.reason.as_deref(),
            Some("Deployment tooljet-production: ProgressDeadlineExceeded")
        );
        let started = &events[7];
        assert_eq!(started.source, "promotionpolicies/prod-gate");
        assert_eq!(started.subject, "windows[0]");
        assert_eq!(started.facts.until, Some(at(13, 0, 0)));
        assert_eq!(started.facts.apps, ["crm"]);
        assert_eq!(started.facts.environments, ["production"]);
    }

    #[test]
    fn ids_are_stable_distinct_and_times_whole_seconds() {
        let first = derive(&sources(), at(0, 0, 0), at(23, 0, 0));
        let again = derive(&sources(), at(0, 0, 0), at(23, 0, 0));
        assert_eq!(first, again, "the same objects give the same events");
        let mut ids: Vec<&str> = first.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), first.len(), "ids are distinct");
        assert!(first.iter().all(|e| e.at.timestamp_subsec_nanos() == 0));
        // The stamped 10:20:00.123456 counts as 10:20:00.
        assert!(first.iter().any(|e| e.at == at(10, 20, 0)));
        // Another namespace's identical objects are other events.
        let mut elsewhere = sources();
        elsewhere.namespace = "other".into();
        let other = derive(&elsewhere, at(0, 0, 0), at(23, 0, 0));
        assert!(other.iter().all(|e| !ids.contains(&e.id.as_str())));
    }

    #[test]
    fn no_approval_needed_without_a_requirement_and_no_freeze_for_unselected_apps() {
        let mut s = sources();
        let mut p = policy(vec![freeze()]);
        p.spec.approvals = None;
        p.spec.app_selector = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some([("tier".to_string(), "critical".to_string())].into()),
                match_expressions: None,
            },
        );
        s.policies = vec![Arc::new(p)];
        let events = derive(&s, at(0, 0, 0), at(23, 0, 0));
        assert!(events.iter().all(|e| !matches!(
            e.kind,
            LifecycleEvent::ApprovalNeeded
                | LifecycleEvent::FreezeStarted
                | LifecycleEvent::FreezeEnded
        )));
        assert_eq!(next_boundary(&s, at(11, 0, 0)), None);
        assert_eq!(next_boundary(&sources(), at(11, 0, 0)), Some(at(12, 0, 0)));
        assert_eq!(next_boundary(&sources(), at(12, 30, 0)), Some(at(13, 0, 0)));
    }

    #[test]
    fn deriving_some_kinds_gives_what_deriving_all_gives_of_them() {
        use LifecycleEvent::*;
        let all = derive(&sources(), at(0, 0, 0), at(23, 0, 0));
        for kinds in [
            vec![Released, RolledBack],
            vec![ApprovalNeeded],
            vec![Approved, FreezeEnded],
            vec![Promoted],
        ] {
            let some = derive_kinds(&sources(), at(0, 0, 0), at(23, 0, 0), &kinds);
            let expected: Vec<Event> = all
                .iter()
                .filter(|e| kinds.contains(&e.kind))
                .cloned()
                .collect();
            assert_eq!(some, expected, "{kinds:?}");
        }
        // From a time on, the facts (approvals counted) are those derived from the start.
        let later = derive(&sources(), at(10, 25, 0), at(23, 0, 0));
        let expected: Vec<Event> = all
            .iter()
            .filter(|e| e.at >= at(10, 25, 0))
            .cloned()
            .collect();
        assert_eq!(later, expected);
    }

    #[test]
    fn a_freeze_under_way_at_the_start_ends_without_starting_again() {
        let events = derive(&sources(), at(12, 30, 0), at(13, 30, 0));
        assert_eq!(
            kinds(&events),
            [(LifecycleEvent::FreezeEnded, at(13, 0, 0))]
        );
        let exactly = derive(&sources(), at(12, 0, 0), at(12, 0, 0));
        assert_eq!(
            kinds(&exactly),
            [(LifecycleEvent::FreezeStarted, at(12, 0, 0))]
        );
    }

    #[test]
    fn overlapping_occurrences_are_one_freeze() {
        let mut window = freeze();
        window.schedule = "*/10 12 * * *".into();
        window.duration = "15m".into();
        let mut s = sources();
        s.policies = vec![Arc::new(policy(vec![window]))];
        let events = derive(&s, at(11, 0, 0), at(14, 0, 0));
        let freezes: Vec<_> = kinds(&events)
            .into_iter()
            .filter(|(k, _)| {
                matches!(
                    k,
                    LifecycleEvent::FreezeStarted | LifecycleEvent::FreezeEnded
                )
            })
            .collect();
        assert_eq!(
            freezes,
            [
                (LifecycleEvent::FreezeStarted, at(12, 0, 0)),
                (LifecycleEvent::FreezeEnded, at(13, 5, 0))
            ]
        );
    }

    #[test]
    fn events_of_one_second_follow_the_lifecycle() {
        use LifecycleEvent::*;
        let second = t(10, 0, 0);
        let mut s = sources();
        let mut a = app();
        for r in &mut a.status.as_mut().unwrap().release_history {
            r.at = second.clone();
        }
        let mut v = version();
        for p in &mut v.status.as_mut().unwrap().promotions {
            p.at = second.clone();
        }
        s.apps = vec![Arc::new(a)];
        s.versions = vec![Arc::new(v)];
        s.approvals = vec![
            Arc::new(approval("ok-erin", "erin", "2026-12-01T10:00:00.7Z")),
            Arc::new(approval("ok-dave", "dave", "2026-12-01T10:00:00.5Z")),
        ];
        s.policies[0] = Arc::new(policy(vec![]));
        let events = derive(&s, at(10, 0, 0), at(10, 0, 0));
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                Promoted,
                ApprovalNeeded,
                Approved,
                Approved,
                Promoted,
                Released,
                Released,
                RolledBack
            ],
            "{events:#?}"
        );
        assert_eq!(
            events[1].facts.approvals,
            Some((0, 2)),
            "approvals come after"
        );
        assert_eq!(events[2].facts.by.as_deref(), Some("dave"));
        assert_eq!(events[3].facts.approvals, Some((2, 2)));
        let released: Vec<_> = events[5..]
            .iter()
            .map(|e| e.facts.version.clone().unwrap())
            .collect();
        assert_eq!(released, ["crm-v3", "crm-v4", "crm-v3"], "in history order");
        let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            events.len(),
            "v3 released twice in one second: two ids"
        );
    }
}
