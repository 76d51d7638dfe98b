//! The delivery cursor a Notification's status holds: `through`, the time of the newest event
//! delivered, and the ids of the events delivered within [`KEEP`] of it.
//!
//! An event is sent when it is not older than `through - HORIZON` and its id is not in the set,
//! so an event that reaches the cache late (a watch relist, an apiserver restart, an Approval
//! stamped by a webhook replica whose clock is behind) is still sent once, as long as it is at
//! most [`HORIZON`] behind the cursor. One found later than that (but within [`KEEP`]) is not
//! sent: it is recorded in the set and counted (`tooLate`), so a person can see it happened.
//! What is sent goes oldest first; a failure blocks what follows.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::events::{Event, seconds};
use crate::{
    api::{DeliveredId, NotificationStatus},
    gate,
};

/// The largest lag (an entry reaching the cache late) or clock skew (between the webhook
/// replicas that stamp Approvals, and this one) tolerated: an event at most this far behind the
/// cursor is still sent.
pub const HORIZON: TimeDelta = TimeDelta::minutes(10);
/// How long an id is kept behind the cursor: twice the horizon, so an event found too late is
/// recognised (and counted once) rather than merely absent.
pub const KEEP: TimeDelta = TimeDelta::minutes(20);
/// The most ids kept. At the cap the oldest ids go first, and the cursor treats every event at
/// or before the oldest id kept as delivered: the horizon shrinks rather than an event being
/// sent twice in a loop (it takes over 1000 events within 20 minutes for one Notification).
pub const MAX_IDS: usize = 1000;

/// The first retry's wait.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// What was delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The time of the newest event delivered (at first, the Notification's creation).
    pub through: DateTime<Utc>,
    /// Events before it are never sent: a new Notification sends no history.
    pub since: DateTime<Utc>,
    /// The ids delivered (or given up as too late) within [`KEEP`] of `through`, oldest first.
    pub ids: Vec<(String, DateTime<Utc>)>,
}

/// What a cursor makes of the events derived from [`Cursor::from`] on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Triage<'a> {
    /// Not delivered yet, in the order given.
    pub pending: Vec<&'a Event>,
    /// Not delivered, and found more than [`HORIZON`] behind the cursor: never sent.
    pub too_late: Vec<&'a Event>,
}

impl Cursor {
    /// The cursor a status holds; a new Notification's starts at its creation (no history is
    /// sent).
    pub fn of(status: Option<&NotificationStatus>, created: DateTime<Utc>) -> Cursor {
        let since = seconds(created);
        match status.and_then(|s| s.delivered_through.as_ref().map(|t| (s, t))) {
            Some((s, t)) => Cursor {
                through: seconds(gate::to_chrono(t.0)),
                since,
                ids: s
                    .recently_delivered
                    .iter()
                    .map(|d| (d.id.clone(), seconds(gate::to_chrono(d.at.0))))
                    .collect(),
            },
            None => Cursor {
                through: since,
                since,
                ids: vec![],
            },
        }
    }

    /// The ids as the status holds them.
    pub fn recently_delivered(&self) -> Vec<DeliveredId> {
        self.ids
            .iter()
            .map(|(id, at)| DeliveredId {
                id: id.clone(),
                at: gate::to_time(*at),
            })
            .collect()
    }

    /// The earliest time an event that matters to this cursor can have: derive from here.
    pub fn from(&self) -> DateTime<Utc> {
        (self.through - KEEP).max(self.since)
    }

    /// Every event at or before this time counts as delivered: older than the horizon, before
    /// the creation, or (the set at its cap) at or before the oldest id kept.
    fn floor(&self) -> DateTime<Utc> {
        let full = self
            .ids
            .first()
            .filter(|_| self.ids.len() >= MAX_IDS)
            .map(|(_, at)| *at);
        let horizon = self.through - HORIZON - TimeDelta::seconds(1);
        let before = self.since - TimeDelta::seconds(1);
        [Some(horizon), Some(before), full]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(before)
    }

    /// Whether `id` was delivered (or given up) within [`KEEP`] of the cursor.
    pub fn holds(&self, id: &str) -> bool {
        self.ids.iter().any(|(i, _)| i == id)
    }

    /// Whether `e` was delivered (or given up as too late).
    pub fn covers(&self, e: &Event) -> bool {
        e.at <= self.floor() || self.holds(&e.id)
    }

    /// The events of `events` (in delivery order) not delivered yet.
    pub fn pending<'a>(&self, events: &'a [Event]) -> Vec<&'a Event> {
        self.triage(events).pending
    }

    /// Sorts `events` into those to send and those found too late.
    pub fn triage<'a>(&self, events: &'a [Event]) -> Triage<'a> {
        let floor = self.floor();
        let mut triage = Triage::default();
        for e in events.iter().filter(|e| !self.holds(&e.id)) {
            if e.at > floor {
                triage.pending.push(e);
            } else if e.at >= self.since && e.at >= self.through - KEEP && !self.at_cap(e) {
                triage.too_late.push(e);
            }
        }
        triage
    }

    /// Whether `e` is covered only by the cap.
    fn at_cap(&self, e: &Event) -> bool {
        self.ids.len() >= MAX_IDS && self.ids.first().is_some_and(|(_, at)| e.at <= *at)
    }

    /// The cursor once `e` is delivered (or given up).
    pub fn advance(&mut self, e: &Event) {
        self.through = self.through.max(e.at);
        if !self.holds(&e.id) {
            let i = self.ids.partition_point(|(_, at)| *at <= e.at);
            self.ids.insert(i, (e.id.clone(), e.at));
        }
        let keep = self.through - KEEP;
        self.ids.retain(|(_, at)| *at >= keep);
        let excess = self.ids.len().saturating_sub(MAX_IDS);
        self.ids.drain(..excess);
    }
}

/// The wait before retrying after `failures` consecutive failures: 1 s, doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(LONGEST_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::LifecycleEvent, notify::events::Facts};
    use chrono::TimeZone;

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap() + TimeDelta::seconds(s.into())
    }

    fn event(id: &str, s: u32) -> Event {
        Event {
            id: id.into(),
            kind: LifecycleEvent::Promoted,
            at: at(s),
            namespace: "ns".into(),
            source: "tooljetapps/crm".into(),
            subject: "crm-v4".into(),
            facts: Facts::default(),
            order: Default::default(),
        }
    }

    fn ids<'a>(events: &[&'a Event]) -> Vec<&'a str> {
        events.iter().map(|e| e.id.as_str()).collect()
    }

    /// The cursor after delivering `events` in turn, from a Notification created at `at(0)`.
    fn delivered(events: &[Event]) -> Cursor {
        let mut c = Cursor::of(None, at(0));
        for e in events {
            c.advance(e);
        }
        c
    }

    #[test]
    fn a_new_notification_starts_at_its_creation() {
        let c = Cursor::of(None, at(5) + TimeDelta::milliseconds(300));
        assert_eq!((c.through, c.ids.len()), (at(5), 0));
        let events = [event("a", 4), event("b", 5), event("c", 6)];
        let triage = c.triage(&events);
        assert_eq!(
            ids(&triage.pending),
            ["b", "c"],
            "history before the creation is not sent"
        );
        assert!(triage.too_late.is_empty(), "nor counted");
    }

    #[test]
    fn events_of_the_same_second_are_told_apart_by_id() {
        let events = [event("a", 1), event("b", 2), event("c", 2), event("d", 3)];
        let mut c = delivered(&events[..2]);
        assert_eq!(c.through, at(2));
        assert_eq!(ids(&c.pending(&events)), ["c", "d"]);
        c.advance(&events[2]);
        c.advance(&events[3]);
        assert!(c.pending(&events).is_empty());
    }

    #[test]
    fn a_late_event_inside_the_horizon_is_sent_once() {
        let mut c = delivered(&[event("a", 100), event("c", 400)]);
        // "b" reaches the cache five minutes behind the cursor (a relist, a skewed stamp).
        let events = [event("a", 100), event("b", 200), event("c", 400)];
        assert_eq!(ids(&c.pending(&events)), ["b"]);
        c.advance(&events[1]);
        assert_eq!(c.through, at(400), "the cursor does not move back");
        assert!(c.pending(&events).is_empty(), "sent once");
    }

    #[test]
    fn a_late_event_beyond_the_horizon_is_not_sent_but_counted_once() {
        // "b" turns up 16 minutes behind the cursor: beyond the horizon, within what is kept.
        let mut c = delivered(&[event("a", 700), event("c", 1960)]);
        let events = [event("a", 700), event("b", 1000), event("c", 1960)];
        let triage = c.triage(&events);
        assert!(triage.pending.is_empty());
        assert_eq!(ids(&triage.too_late), ["b"]);
        c.advance(triage.too_late[0]);
        assert_eq!(c.triage(&events), Triage::default(), "counted once");
    }

    #[test]
    fn ids_older_than_twice_the_horizon_are_dropped() {
        let c = delivered(&[event("a", 10), event("b", 20 * 60 + 11)]);
        assert_eq!(c.ids.len(), 1);
        assert_eq!(c.from(), at(11));
    }

    #[test]
    fn at_the_cap_the_oldest_ids_go_and_nothing_older_is_sent_again() {
        let events: Vec<Event> = (0..=MAX_IDS as u32)
            .map(|i| event(&format!("e{i}"), 10 + i / 2))
            .collect();
        let c = delivered(&events);
        assert_eq!(c.ids.len(), MAX_IDS);
        assert!(
            c.pending(&events).is_empty(),
            "the evicted ids count as delivered"
        );
        assert_eq!(c.triage(&events), Triage::default(), "and are not too late");
    }

    #[test]
    fn an_event_in_the_future_waits_for_its_time() {
        let c = delivered(&[event("a", 100)]);
        let events = [event("a", 100), event("b", 5000)];
        assert_eq!(
            ids(&c.pending(&events)),
            ["b"],
            "the caller holds it until it settles"
        );
    }

    #[test]
    fn the_status_round_trip_keeps_the_cursor_across_a_restart() {
        let c = delivered(&[event("a", 7), event("b", 7), event("c", 9)]);
        let status = NotificationStatus {
            delivered_through: Some(gate::to_time(c.through)),
            recently_delivered: c.recently_delivered(),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        let back: NotificationStatus = serde_json::from_value(json).unwrap();
        let restarted = Cursor::of(Some(&back), at(0));
        assert_eq!(restarted, c);
        let events = [
            event("a", 7),
            event("b", 7),
            event("late", 8),
            event("c", 9),
        ];
        assert_eq!(ids(&restarted.pending(&events)), ["late"]);
    }

    #[test]
    fn retries_back_off_from_a_second_doubling_to_five_minutes() {
        let waits: Vec<u64> = [1, 2, 3, 4, 9, 10, 40]
            .map(|f| backoff(f).as_secs())
            .to_vec();
        assert_eq!(waits, [1, 2, 4, 8, 256, 300, 300]);
    }
}
