//! Notification: sends the lifecycle events of the apps it covers to its endpoint, in time order,
//! at least once (see [`crate::notify`]). A reconcile is the usual pipeline: gather (caches) ->
//! decide (pure: the events after the status's cursor) -> deliver (one POST per event, the cursor
//! advanced in status after each success; a failure backs off and blocks later events) -> report
//! (conditions, a Warning Event when delivery starts failing, metrics).
//!
//! Only the leader delivers (every write and every POST is fenced by [`Context::may_write`]).
//! An app's events are taken once the statuses they come from are current (the app and its
//! versions have recorded their generation) and [`SETTLE`] old; an entry that still arrives late (a relist,
//! a skewed clock) is sent if it is within the cursor's horizon ([`HORIZON`]), and counted as
//! too late otherwise. A pass sends at most [`PASS_EVENTS`] events for at most [`PASS_TIME`].

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    core::{Selector, SelectorExt},
    runtime::{
        Controller,
        controller::{self, Action},
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{info, instrument, warn};

use super::{
    AtStep, Context, Error, MANAGER, Settings, Step, condition, new_failure, publish, set_condition,
};
use crate::{
    api::{
        AppVersion, DeliveredEvent, LifecycleEvent, Notification, NotificationStatus, ToolJetApp,
        conditions,
    },
    cache::{Hubs, Lookups, triggers},
    gate,
    notify::{self, Cursor, Event, Sources, cursor::HORIZON, events::seconds, payload, send},
};

pub const CONTROLLER: &str = "notification";
/// How old an event must be before it is sent: the time a history entry takes from its stamp
/// to the cache.
pub const SETTLE: TimeDelta = TimeDelta::seconds(2);
/// While the endpoint's Secret is missing: when to look again (Secrets are not watched).
const ENDPOINT_RECHECK: Duration = Duration::from_secs(10);

/// The controller and its triggers: its own spec, and in its namespace the apps' labels,
/// pipelines and release histories, the versions' promotions, Approvals and policies.
pub fn controller(
    settings: &Settings,
    hubs: &mut Hubs,
    notifications: Store<Notification>,
) -> Controller<Notification> {
    let main = triggers::changes(hubs.notifications.subscribe(), triggers::generation);
    let apps = triggers::changes(hubs.apps.subscribe(), app_trigger);
    let versions = triggers::changes(hubs.versions.subscribe(), version_trigger);
    let approvals = triggers::all(hubs.approvals.subscribe());
    let policies = triggers::changes(hubs.policies.subscribe(), triggers::generation);
    Controller::for_shared_stream(main, notifications.clone())
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .watches_shared_stream(apps, covering(notifications.clone()))
        .watches_shared_stream(versions, in_namespace(notifications.clone()))
        .watches_shared_stream(approvals, in_namespace(notifications.clone()))
        .watches_shared_stream(policies, in_namespace(notifications))
}

/// At most this many events are sent in one pass, and no more are started after [`PASS_TIME`];
/// the pass then comes back at once, letting the other Notifications have the worker.
const PASS_EVENTS: usize = 20;
const PASS_TIME: Duration = Duration::from_secs(30);

/// What of an app its events come from: labels and pipeline (coverage, approvals needed), its
/// release history, and whether its status caught up with its spec.
fn app_trigger(app: &ToolJetApp) -> impl std::hash::Hash + use<> {
    let history = app.status.as_ref().map(|s| {
        (
            s.observed_generation,
            s.release_history.len(),
            s.release_history.last().map(|r| r.at.0.as_second()),
        )
    });
    (
        app.labels().clone(),
        app.spec.environments.clone(),
        app.metadata.generation,
        history,
    )
}

/// What of a version its events come from: its promotions, and whether its status caught up.
fn version_trigger(v: &AppVersion) -> impl std::hash::Hash + use<> {
    let history = v.status.as_ref().map(|s| {
        (
            s.observed_generation,
            s.promotions.len(),
            s.promotions.last().map(|p| p.at.0.as_second()),
        )
    });
    (v.metadata.generation, history)
}

/// Maps an app to the Notifications of its namespace that select it (or whose selector cannot
/// be read: they report it). An app whose labels no longer match has no events to send there.
fn covering(
    notifications: Store<Notification>,
) -> impl Fn(Arc<ToolJetApp>) -> Vec<ObjectRef<Notification>> + Send + Sync + 'static {
    move |app| {
        let ns = app.namespace();
        notifications
            .state()
            .iter()
            .filter(|n| n.namespace() == ns && selects(n, &app))
            .map(|n| ObjectRef::from(&**n))
            .collect()
    }
}

/// Whether `n` covers `app` (true when its selector cannot be read).
fn selects(n: &Notification, app: &ToolJetApp) -> bool {
    match &n.spec.app_selector {
        None => true,
        Some(s) => Selector::try_from(s.clone()).map_or(true, |s| s.matches(app.labels())),
    }
}

/// Maps an object to the Notifications of its namespace (a scan: there are few).
fn in_namespace<K: ResourceExt>(
    notifications: Store<Notification>,
) -> impl Fn(Arc<K>) -> Vec<ObjectRef<Notification>> + Send + Sync + 'static {
    move |obj| {
        let ns = obj.namespace();
        notifications
            .state()
            .iter()
            .filter(|n| n.namespace() == ns)
            .map(|n| ObjectRef::from(&**n))
            .collect()
    }
}

#[instrument(skip_all, fields(kind = "Notification", namespace = n.namespace().unwrap_or_default(), name = n.name_any()))]
pub async fn reconcile(n: Arc<Notification>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _pass = ctx.metrics.reconcile(CONTROLLER);
    ctx.wait_for_caches().await;
    ctx.may_write()?;
    if n.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = n.namespace().ok_or(Error::NoNamespace)?;
    let now = clock();
    // Gather (caches).
    let sources = match gather(&ctx.lookups, &ns, &n) {
        Ok(sources) => sources,
        Err(problem) => {
            let outcome = Outcome::Unusable(conditions::INVALID_SELECTOR, problem);
            let status = settled_status(&n, outcome, 0);
            report(&ctx, &n, &status).await;
            write_status(&ctx, &n, &status).await?;
            return Ok(Action::await_change());
        }
    };
    // Decide (pure).
    let plan = plan(&n, &sources, now);
    if plan.events.is_empty() {
        let n = given_up(&ctx, &n, &plan.too_late);
        // Ready only once the endpoint resolves: checked on a spec change, and until it does.
        if !endpoint_checked(&n)
            && let Err((reason, why)) = endpoint_url(&ctx, &n).await?
        {
            let status = settled_status(&n, Outcome::Unusable(reason, why), plan.held);
            report(&ctx, &n, &status).await;
            write_status(&ctx, &n, &status).await?;
            return Ok(Action::requeue(ENDPOINT_RECHECK));
        }
        let status = settled_status(&n, plan.outcome(), plan.held);
        write_status(&ctx, &n, &status).await?;
        return Ok(plan.wake_action(now));
    }
    // Deliver, and report.
    deliver(&ctx, &n, plan, now).await
}

pub fn error_policy(n: Arc<Notification>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.error_action(CONTROLLER, &*n, error)
}

/// The covered apps of the namespace and what their events come from; an unreadable selector
/// is a problem to report.
fn gather(lookups: &Lookups, ns: &str, n: &Notification) -> Result<Sources, String> {
    let selector = match &n.spec.app_selector {
        Some(s) => Some(Selector::try_from(s.clone()).map_err(|e| {
            format!("spec.appSelector: {e}; use In, NotIn, Exists or DoesNotExist")
        })?),
        None => None,
    };
    let apps: Vec<_> = super::policy::apps_in(lookups, ns)
        .into_iter()
        .filter(|a| selector.as_ref().is_none_or(|s| s.matches(a.labels())))
        .collect();
    let versions: Vec<_> = apps
        .iter()
        .flat_map(|a| lookups.versions_of(ns, &a.name_any()))
        .collect();
    let approvals = versions
        .iter()
        .flat_map(|v| lookups.approvals_of(ns, &v.name_any()))
        .collect();
    Ok(Sources {
        namespace: ns.to_string(),
        apps,
        versions,
        approvals,
        policies: lookups.policies_in(ns),
    })
}

/// What a pass found to deliver.
struct Plan {
    /// The Notification's generation the plan was made from.
    generation: Option<i64>,
    /// Events not delivered yet that may be sent now, oldest first.
    events: Vec<Event>,
    /// Events found more than [`notify::cursor::HORIZON`] behind the cursor: never sent.
    too_late: Vec<Event>,
    /// Events that wait: newer than [`SETTLE`] (or stamped ahead of this clock), or behind a
    /// status that is not current.
    held: usize,
    /// Why events wait, when they do.
    waiting: Option<String>,
    /// When there is something new to look at without any object changing.
    wake: Option<DateTime<Utc>>,
}

impl Plan {
    fn outcome(&self) -> Outcome {
        match &self.waiting {
            Some(why) => Outcome::Waiting(why.clone()),
            None => Outcome::UpToDate,
        }
    }

    fn wake_action(&self, now: DateTime<Utc>) -> Action {
        super::policy::at_transition(self.wake, now)
    }
}

/// The events of `n`'s status's cursor not delivered yet (pure): from the horizon behind it to
/// now, and up to [`HORIZON`] ahead (held until their time: a webhook replica's clock ahead of
/// this one's stamps them in the future).
fn plan(n: &Notification, sources: &Sources, now: DateTime<Utc>) -> Plan {
    let cursor = Cursor::of(n.status.as_ref(), created(n));
    let wanted = |e: &Event| n.spec.events.is_empty() || n.spec.events.contains(&e.kind);
    // A freeze's boundaries come from this clock: those ahead are the wake-up, not events.
    let freeze = |e: &Event| {
        matches!(
            e.kind,
            LifecycleEvent::FreezeStarted | LifecycleEvent::FreezeEnded
        )
    };
    let until = seconds(now) + HORIZON;
    let derived: Vec<Event> =
        notify::events::derive_kinds(sources, cursor.from(), until, &n.spec.events)
            .into_iter()
            .filter(|e| wanted(e) && !(freeze(e) && e.at > now))
            .collect();
    let triage = cursor.triage(&derived);
    let too_late: Vec<Event> = triage.too_late.into_iter().cloned().collect();
    let pending = triage.pending.into_iter().cloned();
    let boundary = notify::events::next_boundary(sources, now).map(|t| t + SETTLE);
    // Held: too new, or of an app whose status (or a version's) lags. Other apps go on.
    let lagging = unsettled(sources);
    let behind = |e: &Event| {
        e.source
            .strip_prefix("tooljetapps/")
            .and_then(|app| lagging.get(app))
    };
    let (after, held): (Vec<Event>, Vec<Event>) =
        pending.partition(|e| e.at <= now - SETTLE && behind(e).is_none());
    let settling = || {
        format!(
            "{} event(s) wait until they are {}s old",
            held.len(),
            SETTLE.num_seconds()
        )
    };
    let waiting = (!held.is_empty()).then(|| {
        held.iter()
            .find_map(behind)
            .cloned()
            .unwrap_or_else(settling)
    });
    // Each held event's time to settle, at least SETTLE from now, at most HORIZON.
    let retry = held
        .iter()
        .map(|e| (e.at + SETTLE).clamp(now + SETTLE, now + HORIZON))
        .min();
    Plan {
        generation: n.metadata.generation,
        events: after,
        too_late,
        held: held.len(),
        waiting,
        wake: [boundary, retry].into_iter().flatten().min(),
    }
}

/// The covered apps whose status, or one of whose versions' status, has not recorded its
/// generation yet (their history may be about to grow with an entry of the past), with why.
/// Only their events wait: an app that stays behind longer than [`HORIZON`] may lose entries
/// stamped that long ago (counted as too late). (Apps being deleted are not covered.)
fn unsettled(sources: &Sources) -> BTreeMap<String, String> {
    let behind = |generation: Option<i64>, observed: Option<i64>| observed < generation;
    let mut lagging = BTreeMap::new();
    // A version being deleted records nothing more (and its deletion mark bumps its generation).
    for v in sources.versions.iter().filter(|v| {
        v.metadata.deletion_timestamp.is_none()
            && behind(
                v.metadata.generation,
                v.status.as_ref().and_then(|s| s.observed_generation),
            )
    }) {
        lagging.entry(v.spec.app.clone()).or_insert_with(|| {
            format!(
                "waiting for AppVersion {}'s status to record generation {}",
                v.name_any(),
                v.metadata.generation.unwrap_or_default()
            )
        });
    }
    for a in sources.apps.iter().filter(|a| {
        behind(
            a.metadata.generation,
            a.status.as_ref().and_then(|s| s.observed_generation),
        )
    }) {
        lagging.insert(
            a.name_any(),
            format!(
                "waiting for ToolJetApp {}'s status to record generation {}",
                a.name_any(),
                a.metadata.generation.unwrap_or_default()
            ),
        );
    }
    lagging
}

/// `n` with the events found too late recorded in its status (so they are counted once):
/// their ids kept with the delivered ones, `tooLate` counted up. Pure.
fn with_too_late(n: &Notification, too_late: &[Event]) -> Notification {
    let mut cursor = Cursor::of(n.status.as_ref(), created(n));
    let new: Vec<&Event> = too_late.iter().filter(|e| !cursor.holds(&e.id)).collect();
    if new.is_empty() {
        return n.clone();
    }
    for e in &new {
        cursor.advance(e);
    }
    let mut with = n.clone();
    let status = with.status.get_or_insert_with(Default::default);
    status.delivered_through = Some(gate::to_time(cursor.through));
    status.recently_delivered = cursor.recently_delivered();
    let count = u32::try_from(new.len()).unwrap_or(u32::MAX);
    status.too_late = status.too_late.saturating_add(count);
    with
}

/// [`with_too_late`], logged and counted.
fn given_up(ctx: &Context, n: &Notification, too_late: &[Event]) -> Notification {
    let with = with_too_late(n, too_late);
    let before = n.status.as_ref().map_or(0, |s| s.too_late);
    if with.status.as_ref().map_or(0, |s| s.too_late) > before {
        for e in too_late {
            ctx.metrics.notified(e.kind.name(), "too_late");
            warn!(id = %e.id, event = e.kind.name(), at = %e.at, horizon_minutes = HORIZON.num_minutes(), "event found beyond the horizon behind the cursor; not sent");
        }
    }
    with
}

/// Whether the status says the endpoint of the current spec resolved.
fn endpoint_checked(n: &Notification) -> bool {
    let Some(status) = &n.status else {
        return false;
    };
    status.observed_generation == n.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.status == "True")
}

/// The time now.
fn clock() -> DateTime<Utc> {
    gate::to_chrono(k8s_openapi::jiff::Timestamp::now())
}

fn created(n: &Notification) -> DateTime<Utc> {
    n.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| gate::to_chrono(t.0))
        .unwrap_or_else(clock)
}

/// How a pass ended, for the conditions.
enum Outcome {
    UpToDate,
    Waiting(String),
    /// A delivery failed: `reason` `Failing`, or `Rejected` when the endpoint refuses the event.
    Failing {
        reason: &'static str,
        error: String,
        next: DateTime<Utc>,
    },
    /// Nothing can be sent: `EndpointMissing`, `InvalidURL` or `InvalidSelector`, and why.
    Unusable(&'static str, String),
}

/// Ready's message when it is true.
fn ready_message(status: &NotificationStatus) -> &'static str {
    if status.last_delivered.is_some() {
        "the endpoint took the last event"
    } else {
        "the endpoint resolves; no event yet"
    }
}

/// The status for `outcome` with `pending` events waiting, the cursor and last delivery kept.
fn settled_status(n: &Notification, outcome: Outcome, pending: usize) -> NotificationStatus {
    let mut status = n.status.clone().unwrap_or_default();
    let generation = n.metadata.generation;
    status.observed_generation = generation;
    status.pending = u32::try_from(pending).unwrap_or(u32::MAX);
    let (ready, delivering) = match outcome {
        Outcome::UpToDate => (
            condition(
                conditions::READY,
                true,
                conditions::READY_REASON,
                ready_message(&status),
                generation,
            ),
            condition(
                conditions::DELIVERING,
                false,
                conditions::UP_TO_DATE,
                "every event so far is delivered",
                generation,
            ),
        ),
        Outcome::Waiting(why) => (
            ready_unless_failing(&status, generation),
            condition(
                conditions::DELIVERING,
                true,
                conditions::PENDING,
                why,
                generation,
            ),
        ),
        Outcome::Failing {
            reason,
            error,
            next,
        } => {
            status.last_error = Some(error.clone());
            status.next_attempt_at = Some(gate::to_time(next));
            let attempt = format!(
                "{pending} event(s) wait; attempt {} failed; next attempt at {}",
                status.failures,
                next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            (
                condition(conditions::READY, false, reason, error, generation),
                condition(conditions::DELIVERING, false, reason, attempt, generation),
            )
        }
        Outcome::Unusable(reason, why) => (
            condition(conditions::READY, false, reason, why.clone(), generation),
            condition(conditions::DELIVERING, false, reason, why, generation),
        ),
    };
    set_condition(&mut status.conditions, ready);
    set_condition(&mut status.conditions, delivering);
    status
}

/// Ready as it stands while events wait: failing if the last attempt failed.
fn ready_unless_failing(
    status: &NotificationStatus,
    generation: Option<i64>,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let failing = status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::READY && c.status == "False")
        .map(|c| c.reason.as_str())
        .filter(|r| [conditions::FAILING, conditions::REJECTED].contains(r));
    match &status.last_error {
        Some(error) if status.failures > 0 => condition(
            conditions::READY,
            false,
            failing.unwrap_or(conditions::FAILING),
            error.clone(),
            generation,
        ),
        _ => condition(
            conditions::READY,
            true,
            conditions::READY_REASON,
            ready_message(status),
            generation,
        ),
    }
}

/// The status after `e` was delivered: the cursor advanced, failures reset.
fn delivered_status(
    n: &Notification,
    e: &Event,
    cursor: &Cursor,
    pending: usize,
) -> NotificationStatus {
    let mut status = n.status.clone().unwrap_or_default();
    status.delivered_through = Some(gate::to_time(cursor.through));
    status.recently_delivered = cursor.recently_delivered();
    status.last_delivered = Some(DeliveredEvent {
        id: e.id.clone(),
        type_: e.kind,
        at: gate::to_time(e.at),
    });
    status.failures = 0;
    status.last_error = None;
    status.next_attempt_at = None;
    let mut with = n.clone();
    with.status = Some(status);
    let outcome = if pending == 0 {
        Outcome::UpToDate
    } else {
        Outcome::Waiting(format!("{pending} event(s) being delivered"))
    };
    settled_status(&with, outcome, pending)
}

/// Sends the plan's events in order, from the cursor of the Notification as stored (the cache
/// may not hold this process's last write yet).
async fn deliver(
    ctx: &Context,
    cached: &Notification,
    plan: Plan,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let api: Api<Notification> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let Some(n) = api
        .get_opt(&cached.name_any())
        .await
        .at(Step::ReadNotification)?
    else {
        return Ok(Action::await_change());
    };
    if n.metadata.generation != plan.generation {
        // The spec changed since the plan: plan again from it.
        return Ok(Action::requeue(Duration::ZERO));
    }
    let n = given_up(ctx, &n, &plan.too_late);
    let cursor = Cursor::of(n.status.as_ref(), created(&n));
    let events: Vec<&Event> = cursor.pending(&plan.events);
    let waiting = events.len() + plan.held;
    if let Some(next) = next_attempt(&n).filter(|t| *t > now) {
        let status = n.status.as_ref();
        let error = status.and_then(|s| s.last_error.clone());
        let reason = status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::READY))
            .map(|c| c.reason.as_str())
            .filter(|r| *r == conditions::REJECTED)
            .map_or(conditions::FAILING, |_| conditions::REJECTED);
        let outcome = Outcome::Failing {
            reason,
            error: error.unwrap_or_default(),
            next,
        };
        write_status(ctx, &n, &settled_status(&n, outcome, waiting)).await?;
        return Ok(Action::requeue((next - now).to_std().unwrap_or_default()));
    }
    let url = match endpoint_url(ctx, &n).await? {
        Ok(url) => url,
        Err((reason, why)) => {
            let status = settled_status(&n, Outcome::Unusable(reason, why), waiting);
            report(ctx, &n, &status).await;
            write_status(ctx, &n, &status).await?;
            return Ok(Action::requeue(ENDPOINT_RECHECK));
        }
    };
    let pending: Vec<Event> = events.into_iter().cloned().collect();
    let (n, stopped) = send_in_order(ctx, n, &url, &pending, cursor, waiting).await?;
    if let Some(wait) = stopped {
        return Ok(Action::requeue(wait));
    }
    // What waits for the statuses or to settle (also when another pass delivered the rest).
    write_status(ctx, &n, &settled_status(&n, plan.outcome(), plan.held)).await?;
    Ok(plan.wake_action(now))
}

/// POSTs `events` in order, advancing the cursor in status after each success; stops at the
/// first failure and returns the wait before the next attempt, or once the pass's budget
/// ([`PASS_EVENTS`], [`PASS_TIME`]) is spent, to come back at once (a slow endpoint does not
/// hold a worker for its whole backlog). Returns the object as stored.
async fn send_in_order(
    ctx: &Context,
    mut n: Notification,
    url: &str,
    events: &[Event],
    mut cursor: Cursor,
    waiting: usize,
) -> Result<(Notification, Option<Duration>), Error> {
    let started = std::time::Instant::now();
    for (i, e) in events.iter().enumerate() {
        if i >= PASS_EVENTS || started.elapsed() >= PASS_TIME {
            return Ok((n, Some(Duration::ZERO)));
        }
        ctx.may_write()?;
        let body = payload::build(n.spec.endpoint.format, e);
        let sent = ctx
            .http
            .post(url, &body, &e.id, n.spec.endpoint.timeout())
            .await;
        ctx.may_write()?;
        if let Err(failure) = sent {
            ctx.metrics.notified(e.kind.name(), failure.label());
            let (status, wait) = failed_status(&n, &failure, waiting - i, clock());
            warn!(id = %e.id, event = e.kind.name(), failures = status.failures, error = status.last_error.as_deref().unwrap_or_default(), "delivery failed");
            report(ctx, &n, &status).await;
            let n = write_status(ctx, &n, &status).await?;
            return Ok((n, Some(wait)));
        }
        ctx.metrics.notified(e.kind.name(), "delivered");
        info!(id = %e.id, event = e.kind.name(), at = %e.at, "delivered");
        cursor.advance(e);
        let status = delivered_status(&n, e, &cursor, waiting - i - 1);
        n = write_status(ctx, &n, &status).await?;
    }
    Ok((n, None))
}

/// The wait before the next attempt after `failures` consecutive failures: what the endpoint
/// asked for (`Retry-After` on 429 or 503), else the backoff; at most the longest backoff.
fn retry_wait(failure: &send::Failure, failures: u32) -> Duration {
    match failure.retry_after() {
        Some(after) => after.clamp(Duration::from_secs(1), notify::cursor::LONGEST_RETRY),
        None => notify::backoff(failures),
    }
}

/// The status after a failed attempt at `now` (one more failure, the error, the next
/// attempt), and the wait before that attempt.
fn failed_status(
    n: &Notification,
    failure: &send::Failure,
    pending: usize,
    now: DateTime<Utc>,
) -> (NotificationStatus, Duration) {
    let mut with = n.clone();
    let status = with.status.get_or_insert_with(Default::default);
    status.failures = status.failures.saturating_add(1);
    let wait = retry_wait(failure, status.failures);
    let outcome = Outcome::Failing {
        reason: if failure.rejected() {
            conditions::REJECTED
        } else {
            conditions::FAILING
        },
        error: failure.describe(&secret_ref(n)),
        next: now + TimeDelta::from_std(wait).unwrap_or_default(),
    };
    (settled_status(&with, outcome, pending), wait)
}

fn next_attempt(n: &Notification) -> Option<DateTime<Utc>> {
    let s = n.status.as_ref()?;
    (s.failures > 0)
        .then_some(s.next_attempt_at.as_ref())
        .flatten()
        .map(|t| gate::to_chrono(t.0))
}

/// `name/key` of the endpoint's Secret.
fn secret_ref(n: &Notification) -> String {
    let r = &n.spec.endpoint.url_from.secret_key_ref;
    format!("{}/{}", r.name, r.key)
}

/// The endpoint's URL from its Secret, or why there is none (`EndpointMissing` with the command
/// that fixes it, or `InvalidURL`), never the value.
async fn endpoint_url(
    ctx: &Context,
    n: &Notification,
) -> Result<Result<String, (&'static str, String)>, Error> {
    let ns = n.namespace().unwrap_or_default();
    let r = &n.spec.endpoint.url_from.secret_key_ref;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&r.name)
        .await
        .at(Step::ReadEndpointSecret)?;
    let fix = format!(
        "kubectl -n {ns} create secret generic {} --from-file={}=<file> (the <file> holding the URL)",
        r.name, r.key
    );
    let missing = |why: String| Ok(Err((conditions::ENDPOINT_MISSING, why)));
    let Some(secret) = secret else {
        return missing(format!(
            "spec.endpoint.urlFrom: Secret {} not found; {fix}",
            r.name
        ));
    };
    let value = secret.data.as_ref().and_then(|d| d.get(&r.key));
    let url = match value.map(|v| String::from_utf8(v.0.clone())) {
        Some(Ok(url)) if !url.trim().is_empty() => url.trim().to_string(),
        _ => {
            return missing(format!(
                "spec.endpoint.urlFrom: Secret {} has no key {} holding a URL; {fix}",
                r.name, r.key
            ));
        }
    };
    Ok(match send::parse(&url) {
        Ok(_) => Ok(url),
        Err(failure) => Err((conditions::INVALID_URL, failure.describe(&secret_ref(n)))),
    })
}

/// Server-side applies the status, with the resourceVersion read as a precondition (a write
/// based on a stale read is refused and retried), unless it is already current. Returns the
/// object as stored.
async fn write_status(
    ctx: &Context,
    n: &Notification,
    status: &NotificationStatus,
) -> Result<Notification, Error> {
    if n.status.as_ref() == Some(status) {
        return Ok(n.clone());
    }
    ctx.may_write()?;
    let api: Api<Notification> =
        Api::namespaced(ctx.client.clone(), &n.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "tooljet.io/v1alpha1",
        "kind": "Notification",
        "metadata": { "name": n.name_any(), "resourceVersion": n.resource_version() },
        "status": status,
    });
    let written = api
        .patch_status(
            &n.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .at(Step::WriteStatus)?;
    ctx.metrics.wrote(CONTROLLER, "status");
    Ok(written)
}

/// A Warning Event when Ready turns false or its message changes (once, not every retry). Its
/// note is the condition's message: the Secret's name and key, never the URL.
async fn report(ctx: &Context, n: &Notification, status: &NotificationStatus) {
    let old = n.status.as_ref().map(|s| s.conditions.as_slice());
    if let Some(after) = new_failure(old, &status.conditions, conditions::READY) {
        publish(
            &ctx.recorder,
            n,
            EventType::Warning,
            &after.reason,
            "Deliver",
            after.message.clone(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use crate::{
        api::{LifecycleEvent, NotificationSpec},
        notify::events::tests::{at, sources},
    };

    fn notification(events: &[LifecycleEvent], created: DateTime<Utc>) -> Notification {
        let spec: NotificationSpec = serde_json::from_value(serde_json::json!({
            "events": events.iter().map(|e| e.name()).collect::<Vec<_>>(),
            "endpoint": { "format": "CloudEvents", "urlFrom": { "secretKeyRef": { "name": "hook", "key": "url" } } },
        }))
        .unwrap();
        let mut n = Notification::new("team", spec);
        n.metadata.namespace = Some("acme".into());
        n.metadata.generation = Some(1);
        n.metadata.creation_timestamp = Some(gate::to_time(created));
        n
    }

    fn settled() -> Sources {
        let mut s = sources();
        for a in &mut s.apps {
            Arc::make_mut(a).metadata.generation = Some(1);
            Arc::make_mut(a)
                .status
                .as_mut()
                .unwrap()
                .observed_generation = Some(1);
        }
        s
    }

    fn kinds(plan: &Plan) -> Vec<LifecycleEvent> {
        plan.events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_plan_sends_the_wanted_events_after_the_cursor_and_wakes_at_the_next_freeze() {
        use LifecycleEvent::*;
        let n = notification(&[Released, RolledBack, FreezeStarted], at(10, 45, 0));
        let plan = plan(&n, &settled(), at(11, 30, 0));
        assert_eq!(kinds(&plan), [Released, RolledBack]);
        assert_eq!((plan.held, plan.waiting.as_deref()), (0, None));
        assert_eq!(plan.wake, Some(at(12, 0, 0) + SETTLE));

        let mut delivered = n.clone();
        let mut cursor = Cursor::of(None, at(10, 45, 0));
        cursor.advance(&plan.events[0]);
        delivered.status = Some(delivered_status(&n, &plan.events[0], &cursor, 1));
        assert_eq!(
            kinds(&super::plan(&delivered, &settled(), at(11, 30, 0))),
            [RolledBack]
        );
    }

    #[test]
    fn events_wait_while_a_status_lags_its_generation_or_they_are_too_new() {
        let n = notification(&[], at(10, 45, 0));
        let mut behind = settled();
        Arc::make_mut(&mut behind.apps[0]).metadata.generation = Some(2);
        let plan = plan(&n, &behind, at(11, 30, 0));
        assert!(plan.events.is_empty());
        assert_eq!(plan.held, 2);
        assert_eq!(
            plan.waiting.as_deref(),
            Some("waiting for ToolJetApp crm's status to record generation 2")
        );
        // A version lagging its generation holds them too, unless it is being deleted.
        let mut lagging = settled();
        Arc::make_mut(&mut lagging.versions[0]).metadata.generation = Some(3);
        assert!(super::plan(&n, &lagging, at(11, 30, 0)).events.is_empty());
        Arc::make_mut(&mut lagging.versions[0])
            .metadata
            .deletion_timestamp = Some(gate::to_time(at(11, 20, 0)));
        assert_eq!(super::plan(&n, &lagging, at(11, 30, 0)).events.len(), 2);

        let fresh = super::plan(&n, &settled(), at(11, 5, 1));
        assert_eq!(kinds(&fresh), [LifecycleEvent::Released]);
        assert_eq!(fresh.held, 1, "the rollback a second ago settles first");
        assert_eq!(fresh.wake, Some(at(11, 5, 1) + SETTLE));
    }

    #[test]
    fn conditions_say_what_waits_what_fails_and_what_is_missing() {
        let n = notification(&[], at(10, 0, 0));
        let up = settled_status(&n, Outcome::UpToDate, 0);
        assert_eq!(condition(&up, "Ready").0, "True");
        assert_eq!(
            condition(&up, "Ready").2,
            "the endpoint resolves; no event yet"
        );
        assert_eq!(condition(&up, "Delivering").1, "UpToDate");

        let failure = send::Failure::Status(500, None);
        let (failing, wait) = failed_status(&n, &failure, 3, at(10, 0, 0));
        assert_eq!((failing.failures, wait), (1, Duration::from_secs(1)));
        assert_eq!(
            failing.last_error.as_deref(),
            Some("POST to the endpoint from Secret hook/url answered 500")
        );
        assert_eq!(failing.next_attempt_at, Some(gate::to_time(at(10, 0, 1))));
        let (status, reason, message) = condition(&failing, "Delivering");
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Failing"));
        assert!(
            message.starts_with("3 event(s) wait; attempt 1 failed"),
            "{message}"
        );
        let mut again = n.clone();
        again.status = Some(failing);
        assert_eq!(
            failed_status(&again, &failure, 3, at(10, 0, 0)).0.failures,
            2
        );

        let missing = settled_status(
            &n,
            Outcome::Unusable(
                conditions::ENDPOINT_MISSING,
                "spec.endpoint.urlFrom: Secret hook not found".into(),
            ),
            2,
        );
        assert_eq!(condition(&missing, "Ready").1, "EndpointMissing");
        assert_eq!(missing.pending, 2);
    }

    fn condition(s: &NotificationStatus, t: &str) -> (String, String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn an_endpoint_refusing_the_event_is_rejected_and_a_retry_after_is_honoured() {
        let n = notification(&[], at(10, 0, 0));
        let (rejected, _) = failed_status(&n, &send::Failure::Status(404, None), 1, at(10, 0, 0));
        assert_eq!(condition(&rejected, "Ready").1, "Rejected");
        assert!(
            rejected
                .last_error
                .as_deref()
                .unwrap()
                .contains("recreate the Notification"),
            "{rejected:?}"
        );
        // While it waits for the next attempt, the reason stays.
        let mut waiting = n.clone();
        waiting.status = Some(rejected);
        let still = settled_status(&waiting, Outcome::Waiting("1 event(s) wait".into()), 1);
        assert_eq!(condition(&still, "Ready").1, "Rejected");

        let throttled = send::Failure::Status(429, Some(Duration::from_secs(42)));
        let (status, wait) = failed_status(&n, &throttled, 1, at(10, 0, 0));
        assert_eq!(wait, Duration::from_secs(42));
        assert_eq!(condition(&status, "Ready").1, "Failing");
        let forever = send::Failure::Status(503, Some(Duration::from_secs(86_400)));
        assert_eq!(
            retry_wait(&forever, 1),
            notify::cursor::LONGEST_RETRY,
            "at most the longest backoff"
        );
    }

    #[test]
    fn a_late_event_within_the_horizon_is_planned_and_one_beyond_is_recorded_once() {
        use LifecycleEvent::*;
        // Delivered through the rollback at 11:05; the release at 11:00 never arrived.
        let n = notification(&[Released, RolledBack], at(10, 45, 0));
        let all = plan(&n, &settled(), at(11, 30, 0));
        let mut cursor = Cursor::of(None, at(10, 45, 0));
        cursor.advance(&all.events[1]);
        let mut delivered = n.clone();
        delivered.status = Some(delivered_status(&n, &all.events[1], &cursor, 0));
        let late = plan(&delivered, &settled(), at(11, 30, 0));
        assert_eq!(kinds(&late), [Released], "five minutes behind: sent");

        // A rollback at 11:20 delivered: the release at 11:00 is 20 minutes behind.
        let mut s = settled();
        let mut app = (*s.apps[0]).clone();
        app.status.as_mut().unwrap().release_history[2].at = gate::to_time(at(11, 20, 0));
        s.apps[0] = Arc::new(app);
        let all = plan(&n, &s, at(11, 30, 0));
        let mut cursor = Cursor::of(None, at(10, 45, 0));
        cursor.advance(&all.events[1]);
        let mut delivered = n.clone();
        delivered.status = Some(delivered_status(&n, &all.events[1], &cursor, 0));
        let beyond = plan(&delivered, &s, at(11, 30, 0));
        assert!(beyond.events.is_empty());
        assert_eq!(beyond.too_late.len(), 1);
        let recorded = with_too_late(&delivered, &beyond.too_late);
        assert_eq!(recorded.status.as_ref().unwrap().too_late, 1);
        let again = plan(&recorded, &s, at(11, 30, 0));
        assert!(again.too_late.is_empty(), "counted once");
        assert_eq!(
            with_too_late(&recorded, &beyond.too_late).status,
            recorded.status
        );
    }

    #[test]
    fn an_app_whose_status_lags_holds_only_its_own_events() {
        let n = notification(&[LifecycleEvent::Released], at(10, 45, 0));
        let mut s = settled();
        let mut hr = (*s.apps[0]).clone();
        hr.metadata.name = Some("hr".into());
        hr.metadata.uid = Some("hr-uid".into());
        hr.metadata.generation = Some(2);
        s.apps.push(Arc::new(hr));
        let plan = plan(&n, &s, at(11, 30, 0));
        let apps: Vec<&str> = plan.events.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(apps, ["tooljetapps/crm"], "crm's release goes; hr's waits");
        assert_eq!(plan.held, 1);
        assert_eq!(
            plan.waiting.as_deref(),
            Some("waiting for ToolJetApp hr's status to record generation 2")
        );
    }

    #[test]
    fn an_app_wakes_only_the_notifications_selecting_it() {
        let app = sources().apps[0].clone();
        let mut n = notification(&[], at(10, 0, 0));
        assert!(selects(&n, &app), "no selector: every app");
        n.spec.app_selector = Some(LabelSelector {
            match_labels: Some([("team".to_string(), "billing".to_string())].into()),
            match_expressions: None,
        });
        assert!(!selects(&n, &app));
        let mut labelled = (*app).clone();
        labelled.metadata.labels = Some([("team".to_string(), "billing".to_string())].into());
        assert!(selects(&n, &labelled));
    }

    #[test]
    fn the_endpoint_is_checked_until_it_resolves_and_again_on_a_spec_change() {
        let mut n = notification(&[], at(10, 0, 0));
        assert!(!endpoint_checked(&n), "a new Notification is checked first");
        let missing = Outcome::Unusable(conditions::ENDPOINT_MISSING, "no Secret".into());
        n.status = Some(settled_status(&n, missing, 0));
        assert!(!endpoint_checked(&n), "checked again until it resolves");
        n.status = Some(settled_status(&n, Outcome::UpToDate, 0));
        assert!(endpoint_checked(&n));
        n.metadata.generation = Some(2);
        assert!(!endpoint_checked(&n), "a spec change checks again");
    }

    #[test]
    fn an_event_stamped_ahead_of_this_clock_is_held_and_woken_for() {
        let n = notification(&[LifecycleEvent::Released], at(10, 45, 0));
        // The release at 11:00 seen at 10:58 (the stamping clock two minutes ahead).
        let plan = plan(&n, &settled(), at(10, 58, 0));
        assert!(plan.events.is_empty());
        assert_eq!(plan.held, 1);
        assert_eq!(plan.wake, Some(at(11, 0, 0) + SETTLE));
    }
}
