//! Promotion windows, with Argo CD sync-window semantics.
//!
//! A window is a 5-field cron schedule (minute hour day-of-month month day-of-week), a duration and
//! an IANA time zone (default UTC). Each time the schedule fires, the window is active for
//! `duration` of absolute time: on `[start, start + duration)`.
//!
//! **Schedule.** `*`, lists (`1,15`), ranges (`1-5`), steps (`*/15`, `1-5/2`, and `5/15` meaning
//! `5-max/15`), month names `JAN`..`DEC` and weekday names `SUN`..`SAT` (any case); 0 and 7 are
//! Sunday. As in cron (and robfig/cron, which Argo CD uses), when both day-of-month and day-of-week
//! are restricted (neither is `*`) a day matches if EITHER matches; otherwise both must. The macros
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight` and `@hourly` are accepted;
//! anything else (6 fields, `@reboot`, `@every`, `L`, `W`, `#`, `?`, out-of-range values,
//! backwards ranges) is refused with an error naming the field, the token and the fix. A
//! schedule that can never fire (`0 0 31 2 *`) is refused too.
//!
//! **Duration.** Go style: hours, minutes and seconds (`62h`, `1h30m`, `90m`, `45s`), more than 0
//! and at most 31 days (744h). A duration longer than the interval between starts is fine: the
//! occurrences overlap and the window stays active.
//!
//! **Time zone and DST.** The schedule fires in the local wall-clock time of the zone: it fires at
//! the first instant at which the zone's clock reads the scheduled time or later. So a start that
//! falls in a spring-forward gap fires at the first instant after the gap (02:30 on the day Berlin
//! jumps from 02:00 to 03:00 fires at 03:00 CEST), and a start that the clock reads twice when it
//! falls back fires once, at the earlier instant (02:30 CEST, not 02:30 CET). An hourly schedule
//! therefore fires once during a repeated hour and leaves a one-hour hole after it.
//!
//! **The gate.** No windows: open. Any active Deny window: closed (deny wins). If at least one Allow
//! window exists: open only while some Allow window is active and no Deny window is. The state can
//! only change at the start or end of an occurrence, so [`window_state`] enumerates those boundaries
//! instead of stepping through time. Occurrences of one window are enumerated a day at a time: the
//! fires of one day that chain (the gap between consecutive fires is at most the duration) form one
//! interval, so `* * * * *` costs one interval per day, not 1440; only days where the UTC offset
//! changes within such a chain are enumerated fire by fire. `next_open`/`next_close` look ahead
//! [`HORIZON_DAYS`] days (about two years) and are `None` when the state does not change in that
//! time.

use std::collections::VecDeque;
use std::fmt;
use std::iter::Peekable;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, SecondsFormat,
    TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// How far [`window_state`] looks ahead for the next change of state.
pub const HORIZON_DAYS: i64 = 731;

/// The longest duration a window may have.
pub const MAX_DURATION: TimeDelta = TimeDelta::days(31);

/// How far a start may be from the wall clock reading at the same instant, at most: the largest
/// UTC offset change at a DST transition, with room to spare.
const OFFSET_SLACK: TimeDelta = TimeDelta::hours(3);

/// One of the five fields of a cron schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl CronField {
    const ALL: [CronField; 5] = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    /// The field's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        }
    }

    /// Smallest and largest value (day-of-week allows 7 for Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            CronField::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }

    /// The first value a name stands for (JAN = 1, SUN = 0).
    fn name_base(self) -> u32 {
        if self == CronField::Month { 1 } else { 0 }
    }

    fn allowed(self) -> String {
        let (min, max) = self.bounds();
        match self {
            CronField::Month => format!("{min}-{max} or JAN-DEC"),
            CronField::DayOfWeek => format!("{min}-{max} (0 and 7 are Sunday) or SUN-SAT"),
            _ => format!("{min}-{max}"),
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a cron schedule was refused: the field (if one is to blame), the token, the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    field: Option<CronField>,
    token: String,
    problem: String,
    fix: String,
}

impl ScheduleError {
    fn new(field: Option<CronField>, token: &str, problem: String, fix: String) -> Self {
        ScheduleError {
            field,
            token: token.to_string(),
            problem,
            fix,
        }
    }

    /// The offending token.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(
                f,
                "{field} field {:?}: {}; {}",
                self.token, self.problem, self.fix
            ),
            None => write!(f, "{:?}: {}; {}", self.token, self.problem, self.fix),
        }
    }
}

impl std::error::Error for ScheduleError {}

/// A parsed 5-field cron schedule, evaluated in local wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    source: String,
    /// Bit sets: bit `v` set when value `v` matches.
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    dom_restricted: bool,
    dow_restricted: bool,
    /// Minutes of the day (hour * 60 + minute) at which the schedule fires on a matching day, sorted.
    times: Vec<u16>,
}

impl Schedule {
    /// Parses a 5-field cron schedule or one of the supported `@` macros.
    pub fn parse(source: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = source.trim();
        let fields = five_fields(source, expand_macro(trimmed)?)?;
        let mut bits = [0u64; 5];
        for (slot, (field, text)) in bits.iter_mut().zip(CronField::ALL.into_iter().zip(&fields)) {
            *slot = parse_field(field, text)?;
        }
        let [minutes, hours, days_of_month, months, mut days_of_week] = bits;
        // 7 is Sunday, as 0 is.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        let unrestricted = |text: &str| text == "*" || text == "*/1";
        let schedule = Schedule {
            source: trimmed.to_string(),
            days_of_month,
            months,
            days_of_week,
            dom_restricted: !unrestricted(fields[2]),
            dow_restricted: !unrestricted(fields[4]),
            times: fire_times(hours, minutes),
        };
        schedule.check_days_exist(&fields)?;
        Ok(schedule)
    }

    /// Refuses a schedule whose restricted days of the month exist in none of its months (then
    /// it never fires). `fields` are the schedule's five fields, for the message.
    fn check_days_exist(&self, fields: &[&str]) -> Result<(), ScheduleError> {
        if self.dom_restricted && !self.dow_restricted {
            // Longest length of each month (February has 29 days in leap years).
            const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let possible = (1..=12u32)
                .filter(|m| self.months & (1 << m) != 0)
                .any(|m| (1..=LONGEST[m as usize - 1]).any(|d| self.days_of_month & (1 << d) != 0));
            if !possible {
                return Err(ScheduleError::new(
                    Some(CronField::DayOfMonth),
                    fields[2],
                    format!("none of these days exists in month(s) {:?}", fields[3]),
                    "pick days that exist in the chosen months, or the schedule never fires".into(),
                ));
            }
        }
        Ok(())
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the schedule fires on this (local) day at all.
    pub fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.dom_restricted && self.dow_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// Whether the schedule fires at this local wall-clock minute.
    pub fn matches(&self, t: NaiveDateTime) -> bool {
        t.second() == 0
            && t.nanosecond() == 0
            && self.day_matches(t.date())
            && self.times.binary_search(&minute_of_day(t.time())).is_ok()
    }

    /// The first local wall-clock time at or after `t` at which the schedule fires. Every schedule
    /// that parses fires within ten years (February 29 at worst); the bound keeps the search finite.
    pub fn next_at_or_after(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut date = t.date();
        // Round up to a whole minute.
        let exact = t.second() == 0 && t.nanosecond() == 0;
        let mut from = minute_of_day(t.time()) + u16::from(!exact);
        let last_year = date.year() + 10;
        while date.year() <= last_year {
            if self.months & (1 << date.month()) == 0 {
                date = first_of_next_month(date)?;
                from = 0;
                continue;
            }
            if self.day_matches(date) {
                let i = self.times.partition_point(|&m| m < from);
                if let Some(&m) = self.times.get(i) {
                    return Some(at_minute(date, m));
                }
            }
            date = date.succ_opt()?;
            from = 0;
        }
        None
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The 5-field schedule a supported `@` macro stands for; anything else as it is.
fn expand_macro(trimmed: &str) -> Result<&str, ScheduleError> {
    let Some(name) = trimmed.strip_prefix('@') else {
        return Ok(trimmed);
    };
    match name.to_ascii_lowercase().as_str() {
        "yearly" | "annually" => Ok("0 0 1 1 *"),
        "monthly" => Ok("0 0 1 * *"),
        "weekly" => Ok("0 0 * * 0"),
        "daily" | "midnight" => Ok("0 0 * * *"),
        "hourly" => Ok("0 * * * *"),
        _ => Err(ScheduleError::new(
            None,
            trimmed,
            "this macro is not supported".into(),
            "use a 5-field schedule (minute hour day-of-month month day-of-week) or one of \
             @yearly, @monthly, @weekly, @daily, @hourly"
                .into(),
        )),
    }
}

/// The five fields of `expanded` (the schedule `source`, macros expanded), or why there are not
/// five.
fn five_fields<'a>(source: &str, expanded: &'a str) -> Result<Vec<&'a str>, ScheduleError> {
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    if fields.len() != 5 {
        let fix = if fields.len() > 5 {
            "remove the extra fields (seconds and years are not supported), e.g. \"0 18 * * 5\""
        } else {
            "give all five fields, with * for those that match everything, e.g. \"0 18 * * 5\""
        };
        return Err(ScheduleError::new(
            None,
            source,
            format!(
                "a schedule has 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ),
            fix.into(),
        ));
    }
    Ok(fields)
}

/// Minutes of the day (hour * 60 + minute) of every hour and minute set in the bit sets, sorted.
fn fire_times(hours: u64, minutes: u64) -> Vec<u16> {
    (0u16..24)
        .filter(|h| hours & (1 << h) != 0)
        .flat_map(|h| {
            (0u16..60)
                .filter(move |m| minutes & (1 << m) != 0)
                .map(move |m| h * 60 + m)
        })
        .collect()
}

fn parse_field(field: CronField, text: &str) -> Result<u64, ScheduleError> {
    let (min, max) = field.bounds();
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let step = match step {
            None => 1,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if n >= 1 && n <= max && s.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(ScheduleError::new(
                        Some(field),
                        item,
                        format!("the step {s:?} is not a number from 1 to {max}"),
                        "write a step as */N or LOW-HIGH/N, e.g. */15".into(),
                    ));
                }
            },
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (low, high) = (value(field, item, a)?, value(field, item, b)?);
            if low > high {
                return Err(ScheduleError::new(
                    Some(field),
                    item,
                    "the range runs backwards".into(),
                    format!(
                        "write ranges low-high; to wrap around, list two ranges (e.g. {}-{},{}-{})",
                        high, max, min, low
                    ),
                ));
            }
            (low, high)
        } else {
            let v = value(field, item, range)?;
            // `5/15` means from 5 to the end, every 15 (as in robfig/cron and Vixie cron).
            if step > 1 || item.contains('/') {
                (v, max)
            } else {
                (v, v)
            }
        };
        for v in (low..=high).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn value(field: CronField, item: &str, token: &str) -> Result<u32, ScheduleError> {
    let (min, max) = field.bounds();
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(ScheduleError::new(
                Some(field),
                item,
                format!("{token} is out of range"),
                format!("use {}", field.allowed()),
            )),
        };
    }
    if let Some(i) = field
        .names()
        .iter()
        .position(|n| n.eq_ignore_ascii_case(token))
    {
        return Ok(field.name_base() + i as u32);
    }
    Err(ScheduleError::new(
        Some(field),
        item,
        format!("{token:?} is not a value"),
        format!(
            "use *, a value ({}), a list a,b, a range a-b or a step */n",
            field.allowed()
        ),
    ))
}

fn minute_of_day(t: NaiveTime) -> u16 {
    (t.hour() * 60 + t.minute()) as u16
}

fn at_minute(date: NaiveDate, minute: u16) -> NaiveDateTime {
    date.and_time(NaiveTime::MIN) + TimeDelta::minutes(i64::from(minute))
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

/// Parses a Go-style duration (`62h`, `1h30m`, `90m`, `45s`): more than 0, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<TimeDelta, String> {
    const FIX: &str = "write hours, minutes and seconds as in Go, e.g. 62h, 1h30m, 90m";
    let mut seconds: i64 = 0;
    let mut digits = String::new();
    let mut parts = 0;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            'd' => return Err(format!("days are not a unit; use hours (1d = 24h): {FIX}")),
            _ => return Err(format!("unexpected {c:?}; {FIX}")),
        };
        if digits.is_empty() || digits.len() > 9 {
            return Err(format!("each unit needs a whole number before it; {FIX}"));
        }
        let n: i64 = digits.parse().map_err(|_| format!("not a number; {FIX}"))?;
        seconds = seconds.saturating_add(n.saturating_mul(unit));
        digits.clear();
        parts += 1;
    }
    if !digits.is_empty() {
        return Err(format!("a number needs a unit (h, m or s); {FIX}"));
    }
    if parts == 0 {
        return Err(format!("empty; {FIX}"));
    }
    let d = TimeDelta::seconds(seconds);
    if d <= TimeDelta::zero() {
        return Err("must be longer than 0; e.g. 1h".into());
    }
    if d > MAX_DURATION {
        return Err(format!(
            "is longer than the maximum of {}; split a longer freeze into several windows",
            format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Formats a duration the way it is written in a spec: `62h`, `1h30m`, `45s`.
pub fn format_duration(d: TimeDelta) -> String {
    let total = d.num_seconds();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || out.is_empty() {
        out += &format!("{s}s");
    }
    out
}

/// Allow windows open the gate while they are active; Deny windows close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Allow,
    Deny,
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WindowKind::Allow => "Allow",
            WindowKind::Deny => "Deny",
        })
    }
}

/// A window as written in a PromotionPolicy (plain owned input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub schedule: String,
    pub duration: String,
    /// IANA name; `None` or empty = UTC.
    pub time_zone: Option<String>,
    pub description: Option<String>,
}

/// Why a window spec was refused. [`WindowError::field`] names the spec field, so the webhook can
/// point at `spec.windows[i].<field>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("schedule: {source}")]
    Schedule { source: ScheduleError },
    #[error("duration {duration:?}: {problem}")]
    Duration { duration: String, problem: String },
    #[error(
        "timeZone {zone:?} is not an IANA time zone name; use a name such as Europe/Berlin or \
         America/New_York (case matters), or leave it out for UTC"
    )]
    TimeZone { zone: String },
}

impl WindowError {
    /// The field of the window spec at fault: `schedule`, `duration` or `timeZone`.
    pub fn field(&self) -> &'static str {
        match self {
            WindowError::Schedule { .. } => "schedule",
            WindowError::Duration { .. } => "duration",
            WindowError::TimeZone { .. } => "timeZone",
        }
    }
}

/// A validated window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    kind: WindowKind,
    schedule: Schedule,
    duration: TimeDelta,
    zone: Tz,
    description: Option<String>,
    /// Runs of the day's fire times (first, last minute of day) in which consecutive fires are at
    /// most `duration` apart, so their occurrences form one interval.
    chains: Vec<(u16, u16)>,
}

type Interval = (DateTime<Utc>, DateTime<Utc>);

impl Window {
    /// Validates a window spec.
    pub fn parse(spec: &WindowSpec) -> Result<Window, WindowError> {
        let schedule =
            Schedule::parse(&spec.schedule).map_err(|source| WindowError::Schedule { source })?;
        let duration = parse_duration(&spec.duration).map_err(|problem| WindowError::Duration {
            duration: spec.duration.clone(),
            problem,
        })?;
        let zone = match spec.time_zone.as_deref().map(str::trim) {
            None | Some("") => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| WindowError::TimeZone {
                zone: name.to_string(),
            })?,
        };
        let mut chains: Vec<(u16, u16)> = Vec::new();
        for &m in &schedule.times {
            match chains.last_mut() {
                Some((_, last)) if TimeDelta::minutes(i64::from(m - *last)) <= duration => {
                    *last = m
                }
                _ => chains.push((m, m)),
            }
        }
        Ok(Window {
            kind: spec.kind,
            schedule,
            duration,
            zone,
            description: spec.description.clone().filter(|d| !d.trim().is_empty()),
            chains,
        })
    }

    pub fn kind(&self) -> WindowKind {
        self.kind
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn duration(&self) -> TimeDelta {
        self.duration
    }

    pub fn time_zone(&self) -> Tz {
        self.zone
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The first start strictly after `t`.
    pub fn next_start_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut cursor = t.with_timezone(&self.zone).naive_local() - OFFSET_SLACK;
        loop {
            let fire = self.schedule.next_at_or_after(cursor)?;
            let start = resolve(self.zone, fire);
            if start > t {
                return Some(start);
            }
            cursor = fire + TimeDelta::minutes(1);
        }
    }

    /// Whether an occurrence is active at `t`: one started in `(t - duration, t]`.
    pub fn is_active(&self, t: DateTime<Utc>) -> bool {
        self.next_start_after(t - self.duration)
            .is_some_and(|start| start <= t)
    }

    /// The occurrence intervals of one local day, appended in order.
    fn day_intervals(&self, day: NaiveDate, out: &mut VecDeque<Interval>) {
        if !self.schedule.day_matches(day) {
            return;
        }
        let offset = |u: DateTime<Utc>| {
            self.zone
                .offset_from_utc_datetime(&u.naive_utc())
                .fix()
                .local_minus_utc()
        };
        for &(first, last) in &self.chains {
            let start = resolve(self.zone, at_minute(day, first));
            let end = resolve(self.zone, at_minute(day, last));
            if offset(start) == offset(end) {
                out.push_back((start, end + self.duration));
                continue;
            }
            // The offset changes inside the chain: the gaps between fires are not the local ones.
            let mut pending = None;
            for &m in self
                .schedule
                .times
                .iter()
                .filter(|&&m| first <= m && m <= last)
            {
                let s = resolve(self.zone, at_minute(day, m));
                if let Some(done) = absorb(&mut pending, (s, s + self.duration)) {
                    out.push_back(done);
                }
            }
            out.extend(pending);
        }
    }
}

impl fmt::Display for Window {
    /// `Deny window "weekend freeze" (0 18 * * 5, 62h, Europe/Berlin)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} window ", self.kind)?;
        if let Some(d) = &self.description {
            write!(f, "{d:?} ")?;
        }
        write!(
            f,
            "({}, {}, {})",
            self.schedule,
            format_duration(self.duration),
            self.zone.name()
        )
    }
}

/// The instant a local start fires at: the first instant whose wall clock reads `t` or later
/// (the earlier one when `t` is read twice; the end of the gap when `t` is skipped).
fn resolve(zone: Tz, t: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&t) {
        LocalResult::Single(x) => x.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => {
            // In a gap. Offsets lie within ±14h, so the wall clock reads before `t` at `lo` and
            // after it at `hi`; bisect (to the second) for the first instant reading `t` or later.
            let wall = |secs: i64| {
                DateTime::from_timestamp(secs, 0)
                    .map(|u| u.with_timezone(&zone).naive_local())
                    .unwrap_or(NaiveDateTime::MAX)
            };
            let mut lo = t.and_utc().timestamp() - 26 * 3600;
            let mut hi = t.and_utc().timestamp() + 26 * 3600;
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if wall(mid) >= t { hi = mid } else { lo = mid }
            }
            DateTime::from_timestamp(hi, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
        }
    }
}

/// Adds `raw` (starting no earlier than the pending interval) to `pending`; returns the pending
/// interval when `raw` does not touch it.
fn absorb(pending: &mut Option<Interval>, raw: Interval) -> Option<Interval> {
    match pending {
        Some(p) if raw.0 <= p.1 => {
            p.1 = p.1.max(raw.1);
            None
        }
        _ => pending.replace(raw),
    }
}

/// The merged occurrence intervals of one window, in order, lazily, for starts on the local days
/// from `first_day` to `last_day`.
struct Intervals<'a> {
    window: &'a Window,
    day: NaiveDate,
    last_day: NaiveDate,
    queue: VecDeque<Interval>,
    pending: Option<Interval>,
}

impl<'a> Intervals<'a> {
    /// Exact for every instant from `from` to `until` (the starts before `from - duration` are left out).
    fn new(window: &'a Window, from: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        let local_day = |t: DateTime<Utc>| t.with_timezone(&window.zone).date_naive();
        Intervals {
            window,
            day: local_day(from - window.duration - OFFSET_SLACK),
            last_day: local_day(until + OFFSET_SLACK),
            queue: VecDeque::new(),
            pending: None,
        }
    }
}

impl Iterator for Intervals<'_> {
    type Item = Interval;

    fn next(&mut self) -> Option<Interval> {
        loop {
            let Some(raw) = self.queue.pop_front() else {
                if self.day > self.last_day {
                    return self.pending.take();
                }
                if self.window.schedule.months & (1 << self.day.month()) == 0 {
                    self.day = first_of_next_month(self.day)?;
                    continue;
                }
                self.window.day_intervals(self.day, &mut self.queue);
                self.day = self.day.succ_opt()?;
                continue;
            };
            if let Some(done) = absorb(&mut self.pending, raw) {
                return Some(done);
            }
        }
    }
}

/// The union of several windows' intervals, in order.
struct Union<'a> {
    sources: Vec<Peekable<Intervals<'a>>>,
    pending: Option<Interval>,
}

impl Iterator for Union<'_> {
    type Item = Interval;

    fn next(&mut self) -> Option<Interval> {
        loop {
            let earliest = self
                .sources
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| s.peek().map(|iv| (iv.0, i)))
                .min();
            let Some(raw) = earliest.and_then(|(_, i)| self.sources[i].next()) else {
                return self.pending.take();
            };
            if let Some(done) = absorb(&mut self.pending, raw) {
                return Some(done);
            }
        }
    }
}

/// Walks a union forward in time.
struct Cursor<'a>(Peekable<Union<'a>>);

impl Cursor<'_> {
    /// The first interval that ends after `t` (it contains `t` if it starts at or before it).
    fn at(&mut self, t: DateTime<Utc>) -> Option<Interval> {
        while self.0.next_if(|iv| iv.1 <= t).is_some() {}
        self.0.peek().copied()
    }

    fn contains(&mut self, t: DateTime<Utc>) -> bool {
        self.at(t).is_some_and(|iv| iv.0 <= t)
    }
}

/// A window active at the time of the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveWindow {
    /// Index into the windows given to [`window_state`].
    pub index: usize,
    pub kind: WindowKind,
    /// `Deny window "weekend freeze" (0 18 * * 5, 62h, Europe/Berlin)`
    pub label: String,
    /// When this window stops being active; `None` if not within the horizon.
    pub until: Option<DateTime<Utc>>,
}

/// Why the gate is open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No Allow window exists and no Deny window is active (includes: no windows at all).
    Unrestricted,
    /// An Allow window is active and no Deny window is.
    InsideAllow,
    /// One or more Deny windows are active (the Deny entries of `active`).
    Denied,
    /// Allow windows exist but none is active.
    OutsideAllow,
}

/// The state of a stage's windows at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub open: bool,
    pub reason: Reason,
    /// Every window active now, Allow and Deny, in the order given.
    pub active: Vec<ActiveWindow>,
    /// When closed: when it opens next (`None` if not within the horizon).
    pub next_open: Option<DateTime<Utc>>,
    /// When open: when it closes next (`None` if not within the horizon).
    pub next_close: Option<DateTime<Utc>>,
}

impl WindowState {
    /// The active Deny windows that close the gate.
    pub fn closed_by(&self) -> impl Iterator<Item = &ActiveWindow> {
        self.active.iter().filter(|w| w.kind == WindowKind::Deny)
    }

    /// A sentence for a denial or a status message.
    pub fn describe(&self) -> String {
        let when = |t: Option<DateTime<Utc>>, at: &str, never: &str| match t {
            Some(t) => format!("{at} {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            None => format!("{never} within the next {HORIZON_DAYS} days"),
        };
        let closes = |t| when(t, "closes at", "does not close");
        let labels = |kind: WindowKind| {
            let labels: Vec<&str> = self
                .active
                .iter()
                .filter(|w| w.kind == kind)
                .map(|w| w.label.as_str())
                .collect();
            labels.join(" and ")
        };
        match self.reason {
            Reason::Unrestricted if self.next_close.is_none() => "open".to_string(),
            Reason::Unrestricted => format!("open; {}", closes(self.next_close)),
            Reason::InsideAllow => format!(
                "open in {}; {}",
                labels(WindowKind::Allow),
                closes(self.next_close)
            ),
            Reason::Denied => match self.next_open {
                Some(t) => format!(
                    "closed by {} until {}",
                    labels(WindowKind::Deny),
                    t.to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
                None => format!(
                    "closed by {}; does not open within the next {HORIZON_DAYS} days",
                    labels(WindowKind::Deny)
                ),
            },
            Reason::OutsideAllow => format!(
                "closed: no Allow window is open; {}",
                when(self.next_open, "the next opens at", "none opens")
            ),
        }
    }
}

impl fmt::Display for WindowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Whether promotions may pass at `now` under `windows`, why, and when that changes.
pub fn window_state(windows: &[Window], now: DateTime<Utc>) -> WindowState {
    let horizon = now + TimeDelta::days(HORIZON_DAYS);
    let (mut timeline, active) = Timeline::new(windows, now, horizon);
    let within = |t: Option<DateTime<Utc>>| t.filter(|t| *t <= horizon);

    let denied = timeline.deny.contains(now);
    let allowed = timeline.allow.contains(now);
    if !denied && (!timeline.has_allow || allowed) {
        return WindowState {
            open: true,
            reason: if timeline.has_allow {
                Reason::InsideAllow
            } else {
                Reason::Unrestricted
            },
            active,
            next_open: None,
            next_close: within(timeline.next_close(now)),
        };
    }
    WindowState {
        open: false,
        reason: if denied {
            Reason::Denied
        } else {
            Reason::OutsideAllow
        },
        active,
        next_open: within(timeline.next_open(now)),
        next_close: None,
    }
}

/// The Allow windows' and the Deny windows' intervals, each a union walked forward from the time
/// of the gate.
struct Timeline<'a> {
    allow: Cursor<'a>,
    deny: Cursor<'a>,
    /// Whether any Allow window exists: then the gate is open only inside one.
    has_allow: bool,
    horizon: DateTime<Utc>,
}

impl<'a> Timeline<'a> {
    /// The timeline of `windows` from `now` to `horizon`, and the windows active at `now`.
    fn new(
        windows: &'a [Window],
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> (Timeline<'a>, Vec<ActiveWindow>) {
        let mut active = Vec::new();
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for (index, window) in windows.iter().enumerate() {
            let mut intervals = Intervals::new(window, now, horizon).peekable();
            while intervals.next_if(|iv| iv.1 <= now).is_some() {}
            if let Some(&(start, end)) = intervals.peek()
                && start <= now
            {
                active.push(ActiveWindow {
                    index,
                    kind: window.kind,
                    label: window.to_string(),
                    until: (end <= horizon).then_some(end),
                });
            }
            match window.kind {
                WindowKind::Allow => allow.push(intervals),
                WindowKind::Deny => deny.push(intervals),
            }
        }
        let union = |sources| {
            Cursor(
                Union {
                    sources,
                    pending: None,
                }
                .peekable(),
            )
        };
        let timeline = Timeline {
            has_allow: !allow.is_empty(),
            allow: union(allow),
            deny: union(deny),
            horizon,
        };
        (timeline, active)
    }

    /// When the gate, open at `now`, closes: when the next Deny starts or the current Allow ends.
    fn next_close(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let deny_starts = self.deny.at(now).map(|iv| iv.0);
        let allow_ends = if self.has_allow {
            self.allow.at(now).map(|iv| iv.1)
        } else {
            None
        };
        match (deny_starts, allow_ends) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the gate, closed at `now`, opens: step over Deny intervals and gaps between Allow
    /// intervals until both agree (`None` past the horizon).
    fn next_open(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = now;
        loop {
            if t > self.horizon {
                return None;
            }
            if let Some((start, end)) = self.deny.at(t)
                && start <= t
            {
                t = end;
                continue;
            }
            if self.has_allow {
                match self.allow.at(t) {
                    None => return None,
                    Some((start, _)) if start > t => {
                        t = start;
                        continue;
                    }
                    Some(_) => {}
                }
            }
            return Some(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn window(kind: WindowKind, schedule: &str, duration: &str, zone: Option<&str>) -> Window {
        Window::parse(&WindowSpec {
            kind,
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: zone.map(Into::into),
            description: None,
        })
        .unwrap()
    }

    fn allow(schedule: &str, duration: &str, zone: Option<&str>) -> Window {
        window(WindowKind::Allow, schedule, duration, zone)
    }

    fn deny(schedule: &str, duration: &str, zone: Option<&str>) -> Window {
        window(WindowKind::Deny, schedule, duration, zone)
    }

    /// The definition, evaluated directly at one instant.
    fn open_by_definition(windows: &[Window], t: DateTime<Utc>) -> bool {
        let active = |kind| windows.iter().any(|w| w.kind == kind && w.is_active(t));
        let has_allow = windows.iter().any(|w| w.kind == WindowKind::Allow);
        !active(WindowKind::Deny) && (!has_allow || active(WindowKind::Allow))
    }

    #[test]
    fn schedules_in_the_cron_grammar_are_accepted() {
        for s in [
            "* * * * *",
            "0 18 * * 5",
            "*/15 9-17 * * MON-FRI",
            "1-5/2 0 1,15 * *",
            "0 0 1 jan,Jul *",
            "0 0 * * 7",
            "0 0 * * 0-7",
            "5/15 * * * *",
            "0 0 29 2 *",
            "59 23 31 DEC SUN",
            "@daily",
            "@Weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "@hourly",
            "@midnight",
            "  0 18 * * 5  ",
        ] {
            assert!(
                Schedule::parse(s).is_ok(),
                "{s} should parse: {:?}",
                Schedule::parse(s)
            );
        }
    }

    #[test]
    fn malformed_schedules_are_refused_naming_field_token_and_fix() {
        use CronField::*;
        for (s, field, token, fix) in [
            (
                "0 18 * * 5 2026",
                None,
                "0 18 * * 5 2026",
                "remove the extra fields",
            ),
            (
                "0 0 18 * * 5",
                None,
                "0 0 18 * * 5",
                "remove the extra fields",
            ),
            ("0 18 * *", None, "0 18 * *", "give all five fields"),
            ("", None, "", "give all five fields"),
            ("@reboot", None, "@reboot", "@daily"),
            ("@every 1h", None, "@every 1h", "@daily"),
            ("60 * * * *", Some(Minute), "60", "use 0-59"),
            ("0 24 * * *", Some(Hour), "24", "use 0-23"),
            ("0 0 0 * *", Some(DayOfMonth), "0", "use 1-31"),
            ("0 0 32 * *", Some(DayOfMonth), "32", "use 1-31"),
            ("0 0 * 13 *", Some(Month), "13", "JAN-DEC"),
            ("0 0 * * 8", Some(DayOfWeek), "8", "SUN-SAT"),
            ("0 0 * * FRIDAY", Some(DayOfWeek), "FRIDAY", "SUN-SAT"),
            (
                "0 0 * * FRI-MON",
                Some(DayOfWeek),
                "FRI-MON",
                "list two ranges",
            ),
            ("*/0 * * * *", Some(Minute), "*/0", "*/15"),
            ("*/x * * * *", Some(Minute), "*/x", "*/15"),
            ("*/60 * * * *", Some(Minute), "*/60", "*/15"),
            ("0 0 L * *", Some(DayOfMonth), "L", "a range a-b"),
            ("0 0 ? * 1", Some(DayOfMonth), "?", "a range a-b"),
            ("0 0 * * 5#3", Some(DayOfWeek), "5#3", "a range a-b"),
            ("1,,2 * * * *", Some(Minute), "", "a range a-b"),
            ("-5 * * * *", Some(Minute), "-5", "a range a-b"),
            ("0 0 30 2 *", Some(DayOfMonth), "30", "never fires"),
            ("0 0 31 APR,JUN *", Some(DayOfMonth), "31", "never fires"),
        ] {
            let err = Schedule::parse(s).expect_err(s);
            assert_eq!(err.field, field, "{s}: {err}");
            assert_eq!(err.token(), token, "{s}: {err}");
            assert!(err.to_string().contains(fix), "{s}: {err}");
        }
    }

    #[test]
    fn weekday_and_month_names_are_case_insensitive_and_seven_is_sunday() {
        let a = Schedule::parse("0 0 * jan-Mar sun,Sat").unwrap();
        let b = Schedule::parse("0 0 * 1-3 0,6").unwrap();
        let c = Schedule::parse("0 0 * 1-3 6-7").unwrap();
        assert_eq!((a.days_of_week, a.months), (b.days_of_week, b.months));
        assert_eq!(b.days_of_week, c.days_of_week);
    }

    #[test]
    fn a_day_matches_either_field_when_both_are_restricted() {
        // 2026-11-13 is a Friday; 2026-11-01 is a Sunday.
        let either = Schedule::parse("0 0 1 * 5").unwrap();
        assert!(either.day_matches(NaiveDate::from_ymd_opt(2026, 11, 13).unwrap()));
        assert!(either.day_matches(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()));
        assert!(!either.day_matches(NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()));
        let fridays = Schedule::parse("0 0 * * 5").unwrap();
        assert!(!fridays.day_matches(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()));
        let firsts = Schedule::parse("0 0 1 * *").unwrap();
        assert!(!firsts.day_matches(NaiveDate::from_ymd_opt(2026, 11, 13).unwrap()));
    }

    #[test]
    fn next_fire_is_found_in_local_time() {
        let s = Schedule::parse("*/15 9-17 * * MON-FRI").unwrap();
        // Friday 17:50 -> Monday 09:00.
        assert_eq!(
            s.next_at_or_after(local("2026-11-27 17:50")),
            Some(local("2026-11-30 09:00"))
        );
        assert_eq!(
            s.next_at_or_after(local("2026-11-30 09:00")),
            Some(local("2026-11-30 09:00"))
        );
        let mid = local("2026-11-30 09:00") + TimeDelta::seconds(1);
        assert_eq!(s.next_at_or_after(mid), Some(local("2026-11-30 09:15")));
        let leap = Schedule::parse("0 12 29 2 *").unwrap();
        assert_eq!(
            leap.next_at_or_after(local("2026-03-01 00:00")),
            Some(local("2028-02-29 12:00"))
        );
        let new_year = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            new_year.next_at_or_after(local("2026-12-31 23:59")),
            Some(local("2027-01-01 00:00"))
        );
        assert!(new_year.matches(local("2027-01-01 00:00")));
    }

    #[test]
    fn durations_are_go_style_positive_and_bounded() {
        for (text, minutes) in [
            ("62h", 62 * 60),
            ("1h30m", 90),
            ("90m", 90),
            ("744h", 744 * 60),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(TimeDelta::minutes(minutes)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("45s"), Ok(TimeDelta::seconds(45)));
        assert_eq!(format_duration(TimeDelta::minutes(90)), "1h30m");
        assert_eq!(format_duration(TimeDelta::hours(62)), "62h");
        for (text, says) in [
            ("", "empty"),
            ("0h", "longer than 0"),
            ("62", "needs a unit"),
            ("2d", "1d = 24h"),
            ("1.5h", "unexpected '.'"),
            ("745h", "maximum of 744h"),
            ("-1h", "unexpected '-'"),
            ("h", "whole number"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn window_errors_name_the_spec_field() {
        let spec = |schedule: &str, duration: &str, zone: Option<&str>| WindowSpec {
            kind: WindowKind::Deny,
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: zone.map(Into::into),
            description: None,
        };
        let err = Window::parse(&spec("0 25 * * *", "1h", None)).unwrap_err();
        assert_eq!(err.field(), "schedule");
        assert!(
            err.to_string()
                .contains("hour field \"25\": 25 is out of range; use 0-23"),
            "{err}"
        );
        let err = Window::parse(&spec("0 1 * * *", "1x", None)).unwrap_err();
        assert_eq!(err.field(), "duration");
        let err = Window::parse(&spec("0 1 * * *", "1h", Some("Europe/Berlinn"))).unwrap_err();
        assert_eq!(err.field(), "timeZone");
        assert!(
            err.to_string()
                .contains("\"Europe/Berlinn\" is not an IANA time zone"),
            "{err}"
        );
        let w = Window::parse(&spec("0 1 * * *", "1h", Some(""))).unwrap();
        assert_eq!(w.time_zone(), Tz::UTC);
    }

    #[test]
    fn a_weekend_freeze_runs_from_friday_evening_to_monday_morning_berlin_time() {
        let w = [deny("0 18 * * 5", "62h", Some("Europe/Berlin"))];
        // Friday 2026-11-27 18:00 CET = 17:00Z; + 62h = Monday 08:00 CET = 07:00Z.
        assert!(!w[0].is_active(utc("2026-11-27T16:59:59Z")));
        assert!(w[0].is_active(utc("2026-11-27T17:00:00Z")));
        assert!(w[0].is_active(utc("2026-11-30T06:59:59Z")));
        assert!(!w[0].is_active(utc("2026-11-30T07:00:00Z")));
        let g = window_state(&w, utc("2026-11-28T12:00:00Z"));
        assert!(!g.open);
        assert_eq!(g.reason, Reason::Denied);
        assert_eq!(g.next_open, Some(utc("2026-11-30T07:00:00Z")));
        assert_eq!(g.closed_by().count(), 1);
        let g = window_state(&w, utc("2026-11-30T07:00:00Z"));
        assert!(g.open);
        assert_eq!(g.next_close, Some(utc("2026-12-04T17:00:00Z")));
    }

    #[test]
    fn a_window_crosses_midnight() {
        let w = [allow("0 22 * * *", "4h", None)];
        let g = window_state(&w, utc("2026-11-28T01:00:00Z"));
        assert!(g.open);
        assert_eq!(g.reason, Reason::InsideAllow);
        assert_eq!(g.next_close, Some(utc("2026-11-28T02:00:00Z")));
        let g = window_state(&w, utc("2026-11-28T02:00:00Z"));
        assert!(!g.open);
        assert_eq!(g.reason, Reason::OutsideAllow);
        assert_eq!(g.next_open, Some(utc("2026-11-28T22:00:00Z")));
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_fires_when_the_gap_ends() {
        // Berlin 2026-03-29: 02:00 CET -> 03:00 CEST at 01:00Z.
        let berlin = deny("30 2 * * *", "1h", Some("Europe/Berlin"));
        assert_eq!(
            berlin.next_start_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            berlin.next_start_after(utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
        // New York 2026-03-08: 02:00 EST -> 03:00 EDT at 07:00Z.
        let ny = deny("30 2 * * *", "1h", Some("America/New_York"));
        assert_eq!(
            ny.next_start_after(utc("2026-03-07T12:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
        assert_eq!(
            ny.next_start_after(utc("2026-03-08T07:00:00Z")),
            Some(utc("2026-03-09T06:30:00Z"))
        );
        let g = window_state(&[ny], utc("2026-03-08T07:30:00Z"));
        assert!(!g.open);
        assert_eq!(g.next_open, Some(utc("2026-03-08T08:00:00Z")));
    }

    #[test]
    fn a_start_read_twice_when_clocks_fall_back_fires_once_at_the_earlier_instant() {
        // Berlin 2026-10-25: 03:00 CEST -> 02:00 CET at 01:00Z; 02:30 is read at 00:30Z and 01:30Z.
        let berlin = deny("30 2 * * *", "1h", Some("Europe/Berlin"));
        assert_eq!(
            berlin.next_start_after(utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            berlin.next_start_after(utc("2026-10-25T00:30:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        assert!(!berlin.is_active(utc("2026-10-25T01:45:00Z")));
        // New York 2026-11-01: 02:00 EDT -> 01:00 EST at 06:00Z; 01:30 is read at 05:30Z and 06:30Z.
        let ny = deny("30 1 * * *", "1h", Some("America/New_York"));
        assert_eq!(
            ny.next_start_after(utc("2026-10-31T12:00:00Z")),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        assert_eq!(
            ny.next_start_after(utc("2026-11-01T05:30:00Z")),
            Some(utc("2026-11-02T06:30:00Z"))
        );
        let g = window_state(&[ny], utc("2026-11-01T05:45:00Z"));
        assert_eq!(g.next_open, Some(utc("2026-11-01T06:30:00Z")));
    }

    #[test]
    fn an_hourly_window_leaves_a_hole_after_the_repeated_hour() {
        // Hourly for an hour in Berlin: fires 02:00 CEST (00:00Z), then 03:00 CET (02:00Z).
        let w = [deny("0 * * * *", "1h", Some("Europe/Berlin"))];
        let g = window_state(&w, utc("2026-10-24T12:00:00Z"));
        assert!(!g.open);
        assert_eq!(g.next_open, Some(utc("2026-10-25T01:00:00Z")));
        let g = window_state(&w, utc("2026-10-25T01:00:00Z"));
        assert!(g.open);
        assert_eq!(g.next_close, Some(utc("2026-10-25T02:00:00Z")));
        // In spring the chain stays unbroken across the gap: the next hole is in October.
        let g = window_state(&w, utc("2026-03-28T12:00:00Z"));
        assert_eq!(g.next_open, Some(utc("2026-10-25T01:00:00Z")));
    }

    #[test]
    fn deny_wins_over_an_overlapping_allow() {
        // Business hours allowed; Friday afternoons denied.
        let w = [
            allow("0 9 * * MON-FRI", "8h", None),
            deny("0 13 * * FRI", "11h", None),
        ];
        let g = window_state(&w, utc("2026-11-27T10:00:00Z"));
        assert!(g.open);
        assert_eq!(g.next_close, Some(utc("2026-11-27T13:00:00Z")));
        let g = window_state(&w, utc("2026-11-27T14:00:00Z"));
        assert!(!g.open);
        assert_eq!(g.reason, Reason::Denied);
        assert_eq!(g.active.len(), 2);
        assert_eq!(g.closed_by().map(|a| a.index).collect::<Vec<_>>(), [1]);
        // The deny ends at midnight, but the next Allow starts Monday 09:00.
        assert_eq!(g.next_open, Some(utc("2026-11-30T09:00:00Z")));
    }

    #[test]
    fn outside_every_allow_window_the_gate_opens_with_the_next_one() {
        let w = [
            allow("0 9 * * TUE", "2h", Some("America/New_York")),
            allow("0 10 * * MON", "1h", None),
        ];
        // Saturday.
        let g = window_state(&w, utc("2026-11-28T12:00:00Z"));
        assert!(!g.open);
        assert_eq!(g.reason, Reason::OutsideAllow);
        assert!(g.active.is_empty());
        assert_eq!(g.next_open, Some(utc("2026-11-30T10:00:00Z")));
        assert_eq!(
            g.describe(),
            "closed: no Allow window is open; the next opens at 2026-11-30T10:00:00Z"
        );
    }

    #[test]
    fn overlapping_denies_merge_and_the_gate_opens_when_the_last_ends() {
        let w = [
            deny("0 18 * * FRI", "62h", Some("Europe/Berlin")),
            deny("0 6 * * MON", "4h", Some("Europe/Berlin")),
            deny("0 9 * * MON", "2h", Some("Europe/Berlin")),
        ];
        let g = window_state(&w, utc("2026-11-28T12:00:00Z"));
        assert!(!g.open);
        // Monday 11:00 CET.
        assert_eq!(g.next_open, Some(utc("2026-11-30T10:00:00Z")));
        assert_eq!(g.active[0].until, Some(utc("2026-11-30T07:00:00Z")));
    }

    #[test]
    fn no_windows_means_always_open() {
        let g = window_state(&[], utc("2026-11-28T12:00:00Z"));
        assert!(g.open);
        assert_eq!(g.reason, Reason::Unrestricted);
        assert_eq!((g.next_open, g.next_close), (None, None));
        assert_eq!(g.describe(), "open");
    }

    #[test]
    fn an_inactive_deny_closes_the_gate_when_it_starts() {
        let g = window_state(
            &[deny("0 0 24 12 *", "48h", None)],
            utc("2026-11-28T12:00:00Z"),
        );
        assert!(g.open);
        assert_eq!(g.next_close, Some(utc("2026-12-24T00:00:00Z")));
        assert_eq!(g.describe(), "open; closes at 2026-12-24T00:00:00Z");
    }

    #[test]
    fn an_every_minute_deny_closes_for_good_without_enumerating_every_minute() {
        let w = [deny("* * * * *", "2h", Some("Europe/Berlin"))];
        let now = utc("2026-11-28T12:00:00Z");
        let g = window_state(&w, now);
        assert!(!g.open);
        assert_eq!(g.next_open, None);
        assert_eq!(g.active[0].until, None);
        assert!(
            g.describe()
                .ends_with("does not open within the next 731 days"),
            "{}",
            g.describe()
        );
        // One interval per day, not one per minute.
        let mut intervals = VecDeque::new();
        w[0].day_intervals(
            NaiveDate::from_ymd_opt(2026, 11, 28).unwrap(),
            &mut intervals,
        );
        assert_eq!(intervals.len(), 1);
        let every_minute_allow = [allow("* * * * *", "1m", None)];
        let g = window_state(&every_minute_allow, now);
        assert!(g.open);
        assert_eq!(g.next_close, None);
    }

    #[test]
    fn denials_name_the_window_and_when_it_opens() {
        let w = [Window::parse(&WindowSpec {
            kind: WindowKind::Deny,
            schedule: "0 18 * * 5".into(),
            duration: "62h".into(),
            time_zone: Some("Europe/Berlin".into()),
            description: Some("weekend freeze".into()),
        })
        .unwrap()];
        let g = window_state(&w, utc("2026-11-28T12:00:00Z"));
        assert_eq!(
            g.to_string(),
            "closed by Deny window \"weekend freeze\" (0 18 * * 5, 62h, Europe/Berlin) until 2026-11-30T07:00:00Z"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const SCHEDULES: [&str; 11] = [
            "* * * * *",
            "0 * * * *",
            "* 2 * * *",
            "0 18 * * 5",
            "*/20 * * * *",
            "30 2 * * *",
            "0 9-17 * * MON-FRI",
            "15 1 1,15 * SUN",
            "0 0 * * *",
            "45 23 * 3,10 *",
            "*/7 1-3 * * *",
        ];
        const ZONES: [&str; 4] = [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ];

        /// Berlin, New York and Lord Howe (30-minute shift) DST transitions in 2026.
        const DST_2026: [&str; 6] = [
            "2026-03-29T01:00:00Z",
            "2026-10-25T01:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-04-04T15:00:00Z",
            "2026-10-03T15:30:00Z",
        ];

        fn windows() -> impl Strategy<Value = Vec<Window>> {
            prop::collection::vec(
                (
                    any::<bool>(),
                    0..SCHEDULES.len(),
                    1u32..4000,
                    0..ZONES.len(),
                ),
                0..4,
            )
            .prop_map(|specs| {
                specs
                    .into_iter()
                    .map(|(is_allow, s, minutes, z)| {
                        let kind = if is_allow {
                            WindowKind::Allow
                        } else {
                            WindowKind::Deny
                        };
                        window(kind, SCHEDULES[s], &format!("{minutes}m"), Some(ZONES[z]))
                    })
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_gate_agrees_with_the_definition_now_and_at_its_next_change(
                windows in windows(),
                // Any time in 2026, or within two days of one of its DST transitions.
                secs in prop_oneof![
                    1_767_225_600i64..1_798_761_600i64,
                    (0..DST_2026.len(), -172_800i64..172_800).prop_map(|(i, off)| {
                        utc(DST_2026[i]).timestamp() + off
                    }),
                ],
            ) {
                let now = DateTime::from_timestamp(secs, 0).unwrap();
                let g = window_state(&windows, now);
                prop_assert_eq!(g.open, open_by_definition(&windows, now));
                let change = if g.open { g.next_close } else { g.next_open };
                if let Some(t) = change {
                    prop_assert!(t > now);
                    prop_assert_eq!(open_by_definition(&windows, t), !g.open);
                    prop_assert_eq!(open_by_definition(&windows, t - TimeDelta::seconds(1)), g.open);
                    // Unchanged in between (sampled).
                    for k in 1..8 {
                        let between = now + (t - now) * k / 8;
                        prop_assert_eq!(open_by_definition(&windows, between), g.open);
                    }
                }
            }
        }
    }
}
