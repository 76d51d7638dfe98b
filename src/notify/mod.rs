//! Notifications: the lifecycle events of the apps a `Notification` covers, derived from durable
//! state, and their delivery to an HTTP endpoint.
//!
//! ```text
//!  caches (apps, versions, Approvals, PromotionPolicies)
//!        │  events.rs: each history entry, Approval and Deny-window boundary is an event with
//!        ▼  a stable id (a hash of where it comes from), sorted by time
//!  cursor.rs: the Notification's status says what was delivered (the newest time, and the
//!        │    ids of the last 20 minutes); what it does not hold within 10 minutes behind the
//!        │    newest time (the horizon) waits, oldest first
//!        ▼
//!  payload.rs: CloudEvents 1.0 or Slack JSON (names, stages, who, when; never a value)
//!        │
//!        ▼
//!  send.rs: one POST; the controller (controller/notification.rs) advances the cursor in
//!           status after each success, or backs off and retries the same event
//! ```
//!
//! Nothing is held only in memory: a restarted operator derives the same events with the same
//! ids and sends again from the cursor (at least once, in order).

pub mod cursor;
pub mod events;
pub mod payload;
pub mod send;

pub use cursor::{Cursor, backoff};
pub use events::{Event, Sources, derive};
