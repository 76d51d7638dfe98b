//! Promotion policies: the pure parts (window arithmetic, approval counting).
//!
//! A PromotionPolicy guards stages of the apps it selects. Entering a guarded stage (and, for the
//! last stage, release and rollback) is refused:
//! - while the stage is closed by its windows ([`window`]): no windows = open; any active Deny
//!   window closes it (deny wins); if any Allow window exists, it is open only while one is active.
//!   Windows are 5-field cron schedules in an IANA time zone with a duration, as Argo CD sync
//!   windows;
//! - until enough distinct valid approvers approved the version for the stage ([`approvals`]):
//!   duplicates, revoked approvals and, under separation of duties, the version's creator, its last
//!   editor and the promoter do not count.
//!
//! Several policies guarding the same app and stage combine strictly: the highest `required`,
//! separation of duties if any asks for it, and every window. Everything here is I/O-free; the
//! clock is passed in.

pub mod approvals;
pub mod window;

pub use approvals::{
    ApprovalFact, Excluded, Ignored, IgnoredReason, Requirement, Role, Tally, count,
};
pub use window::{
    ActiveWindow, CronField, Reason, Schedule, ScheduleError, Window, WindowError, WindowKind,
    WindowSpec, WindowState, window_state,
};
