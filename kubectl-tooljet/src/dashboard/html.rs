//! The dashboard's pages as HTML: pure functions from the models the plugin already builds
//! ([`AppBoard`], history [`Entry`]s, a [`Diff`]) to markup. Every value from the cluster goes
//! through [`esc`]; the pages read without JavaScript, and forms post back to the server.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    diff::Diff,
    history::Entry,
    status::{AppBoard, Gate, VersionState},
};

/// HTML-escapes text for element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value (names are DNS labels, but stay safe).
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What every page shows around its content.
pub struct Frame<'a> {
    pub title: &'a str,
    /// Who the apiserver says the server acts as.
    pub acting_as: &'a str,
    /// The namespace whose objects the live updates follow (none: no live updates).
    pub live: Option<&'a str>,
    /// The namespace the navigation links point at.
    pub namespace: &'a str,
}

/// A whole page: header, navigation, and `body` inside `<main>`.
pub fn page(frame: &Frame, body: &str) -> String {
    let live = frame
        .live
        .map(|ns| format!(r#" data-live="/events?ns={}""#, esc(&url(ns))))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · ToolJet environments</title>
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body>
<header>
<a class="brand" href="/">ToolJet environments</a>
<nav aria-label="Sections"><a href="/">Apps</a> <a href="/ns/{ns}/calendar">Freeze calendar</a></nav>
<p class="who">Acting as <strong id="acting-as">{who}</strong>, with your own Kubernetes access</p>
</header>
<main id="main"{live}>
{body}
</main>
<p id="live-status" class="live" role="status" aria-live="polite"></p>
</body>
</html>
"#,
        title = esc(frame.title),
        ns = esc(&url(frame.namespace)),
        who = esc(frame.acting_as),
    )
}

/// The hidden field every form carries (checked by the server with the request's origin).
fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

/// The list of apps: one row each, linking to its board.
pub fn index(boards: &[AppBoard], scope: &str, namespace: &str) -> String {
    let mut out = format!(
        r#"<h1>Apps in {}</h1>
<form method="get" action="/" class="namespace"><label>Namespace <input name="ns" value="{}" required></label> <button type="submit">Show</button></form>
"#,
        esc(scope),
        esc(namespace)
    );
    if boards.is_empty() {
        out.push_str(
            "<p>No ToolJetApps here yet. A platform engineer imports one with <code>kubectl tooljet import FILE.json --apply</code>.</p>\n",
        );
        return out;
    }
    out.push_str(
        "<table class=\"apps\">\n<thead><tr><th scope=\"col\">App</th><th scope=\"col\">Namespace</th><th scope=\"col\">Pipeline</th><th scope=\"col\">Released</th><th scope=\"col\">Ready</th></tr></thead>\n<tbody>\n",
    );
    for b in boards {
        let pipeline: Vec<String> = b
            .stages
            .iter()
            .map(|s| format!("{} ({})", esc(&s.name), s.versions.len()))
            .collect();
        let _ = writeln!(
            out,
            r#"<tr><th scope="row"><a href="/ns/{ns_url}/apps/{app_url}">{app}</a></th><td>{ns}</td><td>{pipeline}</td><td>{release}</td><td>{ready}</td></tr>"#,
            ns_url = esc(&url(&b.namespace)),
            app_url = esc(&url(&b.app)),
            app = esc(b.display_name.as_deref().unwrap_or(&b.app)),
            ns = esc(&b.namespace),
            pipeline = pipeline.join(" → "),
            release = esc(b.released_version.as_deref().unwrap_or("none")),
            ready = readiness_badge(&b.ready.status),
        );
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

fn readiness_badge(status: &str) -> String {
    let (class, text) = match status {
        "True" => ("ok", "ready"),
        "False" => ("bad", "not ready"),
        _ => ("wait", "pending"),
    };
    format!(r#"<span class="badge {class}">{text}</span>"#)
}

/// One approval of a version for a stage, as the version page and the board show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalView {
    pub stage: String,
    pub approver: String,
    /// The generation the approver reviewed (none for Approvals stored before it existed).
    pub generation: Option<i64>,
    pub at: Option<String>,
    pub comment: Option<String>,
    /// Whether it counts: it names the version's current generation.
    pub counts: bool,
}

/// Where a version stands with the approvals its next stage requires.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ApprovalsState {
    /// No policy requires approvals to enter the next stage (or there is none).
    #[default]
    NotRequired,
    /// The viewer may not list Approvals.
    Hidden,
    /// As the operator counts them.
    Counted {
        counted: u32,
        required: u32,
        approvers: Vec<String>,
        /// Why approvals of this version do not count (separation of duties).
        not_counted: Vec<String>,
    },
}

/// What the board knows about one version beyond its [`VersionState`].
#[derive(Debug, Clone, Default)]
pub struct VersionExtra {
    pub generation: i64,
    /// The stage after the version's (none in the last stage or off the pipeline).
    pub next: Option<String>,
    /// Approvals of the version for its next stage.
    pub approvals: ApprovalsState,
}

/// An app's board: the pipeline left to right, each stage's gates, verification and versions,
/// with the actions a person can take on each version.
pub fn board(b: &AppBoard, extras: &BTreeMap<String, VersionExtra>, csrf: &str) -> String {
    let mut out = String::new();
    let title = b.display_name.as_deref().unwrap_or(&b.app);
    let _ = writeln!(
        out,
        r#"<h1>{}</h1>
<p class="meta">ToolJetApp <code>{}</code> in namespace <code>{}</code> · {} · released: <strong id="released">{}</strong>{}</p>"#,
        esc(title),
        esc(&b.app),
        esc(&b.namespace),
        readiness_badge(&b.ready.status),
        esc(b.released_version.as_deref().unwrap_or("none")),
        match (&b.release, &b.released_version) {
            (Some(r), Some(d)) if r != d => format!(" (release set to {}, not yet live)", esc(r)),
            (Some(r), None) => format!(" (release set to {}, not yet live)", esc(r)),
            _ => String::new(),
        }
    );
    if !b.ready.message.is_empty() {
        let _ = writeln!(out, r#"<p class="why">{}</p>"#, esc(&b.ready.message));
    }
    if let Some(r) = &b.automatic_rollback {
        let _ = writeln!(
            out,
            r#"<p class="alert" role="alert">Rolling back automatically from {} to {} ({}), decided {}</p>"#,
            esc(&r.from),
            esc(&r.to),
            esc(&r.reason),
            esc(&r.at)
        );
    }
    out.push_str("<div class=\"pipeline\">\n");
    let last = b.stages.last().map(|s| s.name.as_str());
    for stage in &b.stages {
        let _ = writeln!(
            out,
            r#"<section class="stage" aria-labelledby="stage-{id}"><h2 id="stage-{id}">{name}</h2>"#,
            id = esc(&stage.name),
            name = esc(&stage.name)
        );
        for g in &stage.gates {
            out.push_str(&gate_line(g));
        }
        if let Some(v) = &stage.verification {
            let _ = writeln!(
                out,
                r#"<p class="verification {}">Workloads {} {}: {}</p>"#,
                esc(&format!("{:?}", v.phase).to_lowercase()),
                esc(&format!("{:?}", v.phase)),
                esc(&v.progress),
                esc(&v.message)
            );
        }
        let versions: Vec<&VersionState> = b
            .versions
            .iter()
            .filter(|v| v.stage == stage.name)
            .collect();
        if versions.is_empty() {
            out.push_str("<p class=\"empty\">No version here.</p>\n");
        }
        for v in versions {
            let x = extras.get(&v.name).cloned().unwrap_or_default();
            out.push_str(&version_card(b, v, &x, stage, last, csrf));
        }
        out.push_str("</section>\n");
    }
    out.push_str("</div>\n");
    if b.released_version.is_some() {
        let _ = writeln!(
            out,
            r#"<form method="post" action="/ns/{ns}/apps/{app}/rollback" class="rollback">{csrf}<button type="submit">Roll back to the previous release…</button></form>"#,
            ns = esc(&url(&b.namespace)),
            app = esc(&url(&b.app)),
            csrf = csrf_field(csrf),
        );
    }
    out
}

/// A gate into a stage: its policy, approvals needed, and whether its windows are open.
fn gate_line(g: &Gate) -> String {
    let window = match (g.open, &g.next_open, &g.next_close) {
        (Some(true), _, Some(until)) => format!("open until {}", esc(until)),
        (Some(true), _, None) => "open".into(),
        (Some(false), Some(until), _) => format!("closed until {}", esc(until)),
        (Some(false), None, _) => "closed".into(),
        (None, _, _) => "window state not reported yet".into(),
    };
    let approvals = if g.approvals_required > 0 {
        format!(", {} approval(s) required", g.approvals_required)
    } else {
        String::new()
    };
    format!(
        "<p class=\"gate\">Gate <code>{}</code>: {window}{approvals}</p>\n",
        esc(&g.policy)
    )
}

fn version_card(
    b: &AppBoard,
    v: &VersionState,
    x: &VersionExtra,
    stage: &crate::status::Stage,
    last: Option<&str>,
    csrf: &str,
) -> String {
    let ns = esc(&url(&b.namespace));
    let name = esc(&url(&v.name));
    let mut out = format!(
        r#"<article class="version" id="version-{id}" aria-label="Version {label}">
<h3><a href="/ns/{ns}/versions/{name}">{label}</a></h3>
<p>{version_name} · generation {generation} · {ready}{released}</p>
"#,
        id = esc(&v.name),
        label = esc(&v.name),
        version_name = esc(&v.version_name),
        generation = x.generation,
        ready = readiness_badge(&v.ready.status),
        released = if v.released {
            r#" · <span class="badge ok">released</span>"#
        } else {
            ""
        },
    );
    if let Some(missing) = &v.missing {
        let _ = writeln!(out, r#"<p class="why">Missing: {}</p>"#, esc(missing));
    }
    if let Some(next) = x.next.as_deref() {
        let required = b
            .stages
            .iter()
            .find(|s| s.name == next)
            .and_then(|s| s.gates.iter().map(|g| g.approvals_required).max())
            .unwrap_or(0);
        if required > 0 || matches!(x.approvals, ApprovalsState::Counted { .. }) {
            out.push_str(&approvals_line(next, required, &x.approvals));
            let _ = writeln!(
                out,
                r#"<form method="post" action="/ns/{ns}/versions/{name}/approve" class="approve">{csrf}<input type="hidden" name="stage" value="{next}"><input type="hidden" name="generation" value="{generation}"><label>Comment <input name="comment" maxlength="1000"></label> <button type="submit">Approve generation {generation} for {next}</button></form>"#,
                csrf = csrf_field(csrf),
                next = esc(next),
                generation = x.generation,
            );
        }
        let _ = writeln!(
            out,
            r#"<form method="post" action="/ns/{ns}/versions/{name}/promote">{csrf}<input type="hidden" name="to" value="{next}"><button type="submit">Promote to {next}…</button></form>"#,
            csrf = csrf_field(csrf),
            next = esc(next),
        );
    } else if Some(stage.name.as_str()) == last && !v.released {
        let _ = writeln!(
            out,
            r#"<form method="post" action="/ns/{ns}/versions/{name}/release">{csrf}<button type="submit">Release to end users…</button></form>"#,
            csrf = csrf_field(csrf),
        );
    }
    out.push_str("</article>\n");
    out
}

/// A version's page: what it is, its approvals with the generation each approver reviewed, its
/// history, and how its stage's configuration differs from the next stage's.
pub fn version_page(
    ns: &str,
    v: &VersionState,
    generation: i64,
    app: &str,
    approvals: Option<&[ApprovalView]>,
    history: &[Entry],
    diff: std::result::Result<Option<&Diff>, &str>,
) -> String {
    let mut out = format!(
        r#"<h1>Version {name}</h1>
<p class="meta">{version_name} of app <a href="/ns/{ns_url}/apps/{app_url}">{app}</a> · in <strong>{stage}</strong> · generation {generation} · {ready}</p>
"#,
        name = esc(&v.name),
        version_name = esc(&v.version_name),
        ns_url = esc(&url(ns)),
        app_url = esc(&url(app)),
        app = esc(app),
        stage = esc(&v.stage),
        ready = readiness_badge(&v.ready.status),
    );
    if !v.ready.message.is_empty() {
        let _ = writeln!(out, r#"<p class="why">{}</p>"#, esc(&v.ready.message));
    }
    out.push_str("<h2>Approvals</h2>\n");
    match approvals {
        None => out.push_str(
            "<p>Not shown: the cluster does not let you list Approvals (or does not serve them).</p>\n",
        ),
        Some([]) => out.push_str("<p>None.</p>\n"),
        Some(approvals) => out.push_str(&approvals_table(approvals, generation)),
    }
    out.push_str("<h2>History</h2>\n");
    if history.is_empty() {
        out.push_str("<p>No promotion or release yet.</p>\n");
    } else {
        out.push_str("<ol class=\"history\">\n");
        for e in history {
            let _ = writeln!(out, "<li>{}</li>", history_line(e));
        }
        out.push_str("</ol>\n");
    }
    match diff {
        Ok(Some(d)) => out.push_str(&diff_table(d)),
        Ok(None) => {}
        Err(why) => {
            let _ = writeln!(
                out,
                "<h2>Configuration</h2>\n<p>Not shown: the cluster does not let you read the stage configurations ({}).</p>",
                esc(why)
            );
        }
    }
    out
}

/// `Approvals for production: 1/2 (dana)`, as the operator counts them, and why others do not
/// count.
fn approvals_line(next: &str, required: u32, state: &ApprovalsState) -> String {
    match state {
        ApprovalsState::Hidden => format!(
            "<p class=\"approvals\">Approvals for {}: {required} required (you may not list Approvals)</p>\n",
            esc(next)
        ),
        ApprovalsState::NotRequired => String::new(),
        ApprovalsState::Counted {
            counted,
            required,
            approvers,
            not_counted,
        } => {
            let who = if approvers.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = approvers.iter().map(|a| esc(a)).collect();
                format!(" ({})", names.join(", "))
            };
            let mut out = format!(
                "<p class=\"approvals\">Approvals for {}: <strong>{counted}/{required}</strong>{who}</p>\n",
                esc(next)
            );
            for why in not_counted {
                let _ = writeln!(out, "<p class=\"why\">{}</p>", esc(why));
            }
            out
        }
    }
}

fn approvals_table(approvals: &[ApprovalView], generation: i64) -> String {
    let mut out = String::new();
    out.push_str("<table><thead><tr><th scope=\"col\">Stage</th><th scope=\"col\">Approver</th><th scope=\"col\">Generation reviewed</th><th scope=\"col\">When</th><th scope=\"col\">Comment</th><th scope=\"col\">Counts</th></tr></thead><tbody>\n");
    for a in approvals {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.stage),
            esc(&a.approver),
            a.generation
                .map(|g| g.to_string())
                .unwrap_or_else(|| "unknown".into()),
            esc(a.at.as_deref().unwrap_or("")),
            esc(a.comment.as_deref().unwrap_or("")),
            if a.counts {
                "yes".to_string()
            } else {
                format!("no: the version is now at generation {generation}")
            },
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

fn history_line(e: &Entry) -> String {
    let mut line = format!("<time>{}</time> {}", esc(&e.at), esc(e.kind));
    match (&e.from, &e.to) {
        (Some(f), Some(t)) => {
            let _ = write!(line, " {} → {}", esc(f), esc(t));
        }
        (None, Some(t)) => {
            let _ = write!(line, " → {}", esc(t));
        }
        _ => {}
    }
    let _ = write!(line, " of {}", esc(&e.version));
    if let Some(by) = &e.by {
        let _ = write!(line, " by {}", esc(by));
    }
    if let Some(r) = &e.override_reason {
        let _ = write!(line, " (override: {})", esc(r));
    }
    if let Some(r) = &e.reason {
        let _ = write!(line, " ({})", esc(r));
    }
    if let Some(v) = e.verification {
        let _ = write!(line, " · {}", esc(crate::output::phase(v)));
    }
    line
}

/// Data sources and constants of two stages, by name and hash (never values).
fn diff_table(d: &Diff) -> String {
    let [a, b] = &d.stages;
    let mut out = format!(
        "<h2>Configuration: {} and {}</h2>\n<p>By name and content hash; values are never read.</p>\n",
        esc(a),
        esc(b)
    );
    if d.entries.is_empty() {
        out.push_str("<p>Neither stage has data sources or constants.</p>\n");
        return out;
    }
    let _ = writeln!(
        out,
        "<table><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Name</th><th scope=\"col\">State</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>",
        esc(a),
        esc(b)
    );
    for e in &d.entries {
        let state = match e.state {
            "missingInA" => format!("missing in {a}"),
            "missingInB" => format!("missing in {b}"),
            s => s.to_string(),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(e.kind),
            esc(&e.name),
            esc(&state),
            esc(e.hash_a.as_deref().unwrap_or("-")),
            esc(e.hash_b.as_deref().unwrap_or("-")),
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

/// One policy on the freeze calendar.
pub struct CalendarRow {
    pub policy: String,
    pub environments: Vec<String>,
    pub apps: Vec<String>,
    pub open: Option<bool>,
    pub next_open: Option<String>,
    pub next_close: Option<String>,
    /// Each window in words: `Deny 0 18 * * 5 for 62h (Europe/Berlin): weekend freeze`.
    pub windows: Vec<String>,
    pub approvals_required: u32,
}

/// The freeze calendar: each policy, whether its stages are open now, its next open and close.
pub fn calendar(ns: &str, rows: &[CalendarRow]) -> String {
    let mut out = format!("<h1>Freeze calendar of {}</h1>\n", esc(ns));
    if rows.is_empty() {
        out.push_str("<p>No PromotionPolicy in this namespace: every stage is always open.</p>\n");
        return out;
    }
    out.push_str("<table class=\"calendar\"><thead><tr><th scope=\"col\">Policy</th><th scope=\"col\">Guards</th><th scope=\"col\">Apps</th><th scope=\"col\">Now</th><th scope=\"col\">Next opens</th><th scope=\"col\">Next closes</th><th scope=\"col\">Windows</th><th scope=\"col\">Approvals</th></tr></thead><tbody>\n");
    for r in rows {
        let now = match r.open {
            Some(true) => r#"<span class="badge ok">open</span>"#,
            Some(false) => r#"<span class="badge bad">closed</span>"#,
            None => r#"<span class="badge wait">not reported</span>"#,
        };
        let windows: Vec<String> = r.windows.iter().map(|w| esc(w)).collect();
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{now}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.policy),
            esc(&r.environments.join(", ")),
            esc(&r.apps.join(", ")),
            esc(r.next_open.as_deref().unwrap_or("-")),
            esc(r.next_close.as_deref().unwrap_or("-")),
            windows.join("<br>"),
            r.approvals_required,
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

/// The answer to an action: done, or refused with the cluster's own words.
pub enum Answer<'a> {
    Done(&'a str),
    Refused { what: &'a str, why: &'a str },
}

/// The page after an action: its outcome and a way back.
pub fn answer(answer: &Answer, back: &str) -> String {
    let body = match answer {
        Answer::Done(message) => format!(
            r#"<h1>Done</h1>
<p class="done" role="status" id="outcome">{}</p>"#,
            esc(message)
        ),
        Answer::Refused { what, why } => format!(
            r#"<h1>Refused</h1>
<p class="alert" role="alert" id="outcome"><strong>{}</strong>: {}</p>"#,
            esc(what),
            esc(why)
        ),
    };
    format!("{body}\n<p><a href=\"{}\">Back</a></p>\n", esc(back))
}

/// An action the apiserver's dry run allowed, to confirm.
pub struct Confirm<'a> {
    pub title: &'a str,
    /// What the apiserver's dry run answered.
    pub dry_run: &'a str,
    /// Where the form posts.
    pub action: &'a str,
    pub fields: &'a [(&'a str, &'a str)],
    /// Where "Cancel" goes.
    pub back: &'a str,
}

/// The confirmation of an action the apiserver's dry run allowed: what it said, and the button.
pub fn confirm(c: &Confirm, csrf: &str) -> String {
    let Confirm {
        title,
        dry_run,
        action,
        fields,
        back,
    } = c;
    let mut hidden = csrf_field(csrf);
    for (k, v) in fields.iter() {
        let _ = write!(
            hidden,
            r#"<input type="hidden" name="{}" value="{}">"#,
            esc(k),
            esc(v)
        );
    }
    format!(
        r#"<h1>{title}</h1>
<p class="done" role="status" id="dry-run">The cluster's dry run: {dry}</p>
<form method="post" action="{action}">{hidden}<input type="hidden" name="confirm" value="1"><button type="submit" id="confirm">{title}</button></form>
<p><a href="{back}">Cancel</a></p>
"#,
        title = esc(title),
        dry = esc(dry_run),
        action = esc(action),
        back = esc(back),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped_everywhere() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let page = answer(
            &Answer::Refused {
                what: "promote <x>",
                why: "denied: <script>alert(1)</script>",
            },
            "/",
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }

    #[test]
    fn urls_encode_everything_but_unreserved_characters() {
        assert_eq!(url("crm-v2.a_b~"), "crm-v2.a_b~");
        assert_eq!(url("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
