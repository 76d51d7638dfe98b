//! The delivery cursor a Notification's status holds: the time of the last event delivered and
//! the ids delivered at exactly that time (events of the same second are told apart by id).
//! Everything after it waits, oldest first; a failure blocks what follows (ordered delivery).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::events::{Event, seconds};
use crate::{api::NotificationStatus, gate};

/// The first retry's wait.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

/// What was delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub through: DateTime<Utc>,
    pub ids: Vec<String>,
}

impl Cursor {
    /// The cursor a status holds; a new Notification's starts at its creation (no history is
    /// sent).
    pub fn of(status: Option<&NotificationStatus>, created: DateTime<Utc>) -> Cursor {
        match status.and_then(|s| s.delivered_through.as_ref().map(|t| (s, t))) {
            Some((s, t)) => Cursor {
                through: seconds(gate::to_chrono(t.0)),
                ids: s.delivered_ids.clone(),
            },
            None => Cursor {
                through: seconds(created),
                ids: vec![],
            },
        }
    }

    /// Whether `e` was delivered.
    pub fn covers(&self, e: &Event) -> bool {
        e.at < self.through || (e.at == self.through && self.ids.contains(&e.id))
    }

    /// The events of `events` (in delivery order) not delivered yet.
    pub fn pending<'a>(&self, events: &'a [Event]) -> Vec<&'a Event> {
        events.iter().filter(|e| !self.covers(e)).collect()
    }

    /// The cursor once `e` is delivered.
    pub fn advance(&mut self, e: &Event) {
        if e.at > self.through {
            self.through = e.at;
            self.ids.clear();
        }
        if e.at == self.through && !self.ids.contains(&e.id) {
            self.ids.push(e.id.clone());
        }
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
        Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, s).unwrap()
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

    #[test]
    fn a_new_notification_starts_at_its_creation() {
        let c = Cursor::of(None, at(5) + chrono::TimeDelta::milliseconds(300));
        assert_eq!((c.through, c.ids.len()), (at(5), 0));
        let events = [event("a", 4), event("b", 5), event("c", 6)];
        let pending: Vec<&str> = c.pending(&events).iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            pending,
            ["b", "c"],
            "history before the creation is not sent"
        );
    }

    #[test]
    fn events_of_the_same_second_are_told_apart_by_id() {
        let events = [event("a", 1), event("b", 2), event("c", 2), event("d", 3)];
        let mut c = Cursor::of(None, at(0));
        c.advance(&events[0]);
        c.advance(&events[1]);
        assert_eq!((c.through, c.ids.clone()), (at(2), vec!["b".to_string()]));
        let pending: Vec<&str> = c.pending(&events).iter().map(|e| e.id.as_str()).collect();
        assert_eq!(pending, ["c", "d"]);
        c.advance(&events[2]);
        c.advance(&events[3]);
        assert!(c.pending(&events).is_empty());
        assert_eq!(c.ids, ["d"], "a later time starts a new tie list");
    }

    #[test]
    fn the_status_round_trip_keeps_the_cursor() {
        let mut c = Cursor::of(None, at(0));
        c.advance(&event("a", 7));
        let status = NotificationStatus {
            delivered_through: Some(gate::to_time(c.through)),
            delivered_ids: c.ids.clone(),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        let back: NotificationStatus = serde_json::from_value(json).unwrap();
        assert_eq!(Cursor::of(Some(&back), at(0)), c);
    }

    #[test]
    fn retries_back_off_from_a_second_doubling_to_five_minutes() {
        let waits: Vec<u64> = [1, 2, 3, 4, 9, 10, 40]
            .map(|f| backoff(f).as_secs())
            .to_vec();
        assert_eq!(waits, [1, 2, 4, 8, 256, 300, 300]);
    }
}
