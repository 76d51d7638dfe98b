//! The bodies sent: CloudEvents 1.0 in structured JSON mode, or a Slack-compatible incoming
//! webhook payload (`{"text": ...}`). They carry what [`Facts`] holds (names, stages, who, when)
//! and nothing else: no Secret value and no definition content can reach them.

use chrono::SecondsFormat;
use serde_json::{Map, Value, json};

use super::events::{Event, Facts};
use crate::api::{LifecycleEvent, PayloadFormat};

/// A body and its content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// The body of `e` in `format`.
pub fn build(format: PayloadFormat, e: &Event) -> Payload {
    let (content_type, value) = match format {
        PayloadFormat::CloudEvents => ("application/cloudevents+json", cloud_event(e)),
        PayloadFormat::Slack => ("application/json", json!({ "text": text(e) })),
    };
    Payload {
        content_type,
        body: serde_json::to_vec(&value).unwrap_or_default(),
    }
}

/// The CloudEvents `type` of a kind: `io.tooljet.operator.promoted`.
pub fn cloud_event_type(kind: LifecycleEvent) -> &'static str {
    match kind {
        LifecycleEvent::ApprovalNeeded => "io.tooljet.operator.approval-needed",
        LifecycleEvent::Approved => "io.tooljet.operator.approved",
        LifecycleEvent::Promoted => "io.tooljet.operator.promoted",
        LifecycleEvent::Released => "io.tooljet.operator.released",
        LifecycleEvent::RolledBack => "io.tooljet.operator.rolled-back",
        LifecycleEvent::FreezeStarted => "io.tooljet.operator.freeze-started",
        LifecycleEvent::FreezeEnded => "io.tooljet.operator.freeze-ended",
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A CloudEvent 1.0, structured mode.
fn cloud_event(e: &Event) -> Value {
    json!({
        "specversion": "1.0",
        "id": e.id,
        "source": format!("/apis/tooljet.io/namespaces/{}/{}", e.namespace, e.source),
        "type": cloud_event_type(e.kind),
        "time": rfc3339(e.at),
        "subject": e.subject,
        "datacontenttype": "application/json",
        "data": data(e),
    })
}

/// The event's facts as a JSON object, absent facts left out.
fn data(e: &Event) -> Value {
    let f = &e.facts;
    let mut m = Map::new();
    m.insert("namespace".into(), json!(e.namespace));
    m.insert("event".into(), json!(e.kind.name()));
    match f.apps.as_slice() {
        [one] if f.environments.is_empty() => m.insert("app".into(), json!(one)),
        many => m.insert("apps".into(), json!(many)),
    };
    let optional = [
        ("version", &f.version),
        ("environment", &f.environment),
        ("from", &f.from),
        ("approvalFor", &f.approval_for),
        ("by", &f.by),
        ("reason", &f.reason),
        ("window", &f.window),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            m.insert(key.into(), json!(v));
        }
    }
    if f.automatic {
        m.insert("automatic".into(), json!(true));
    }
    if let Some((counted, required)) = f.approvals {
        m.insert(
            "approvals".into(),
            json!({ "counted": counted, "required": required, "summary": format!("{counted}/{required}") }),
        );
    }
    if !f.environments.is_empty() {
        m.insert("environments".into(), json!(f.environments));
    }
    if let Some(until) = f.until {
        m.insert("until".into(), json!(rfc3339(until)));
    }
    Value::Object(m)
}

/// One line for a chat channel.
pub fn text(e: &Event) -> String {
    let f = &e.facts;
    let app = f.apps.join(", ");
    let version = f.version.as_deref().unwrap_or("?");
    let stage = f.environment.as_deref().unwrap_or("?");
    let by = by(f);
    let line = match e.kind {
        LifecycleEvent::ApprovalNeeded => format!(
            "{app}: {version} entered {stage}{by}; entering {} needs approvals ({})",
            f.approval_for.as_deref().unwrap_or("?"),
            approvals(f)
        ),
        LifecycleEvent::Approved => format!(
            "{app}: {version} approved for {stage}{by} ({})",
            approvals(f)
        ),
        LifecycleEvent::Promoted => format!(
            "{app}: {version} promoted from {} to {stage}{by}{}",
            f.from.as_deref().unwrap_or("?"),
            reason(f, "override")
        ),
        LifecycleEvent::Released => {
            format!("{app}: {version} released{by}{}", reason(f, "override"))
        }
        LifecycleEvent::RolledBack if f.automatic => format!(
            "{app}: rolled back to {version} automatically{}",
            reason(f, "reason")
        ),
        LifecycleEvent::RolledBack => {
            format!(
                "{app}: rolled back to {version}{by}{}",
                reason(f, "override")
            )
        }
        LifecycleEvent::FreezeStarted => format!(
            "Freeze started: {} closes {} of {app}{}",
            f.window.as_deref().unwrap_or("a Deny window"),
            f.environments.join(", "),
            f.until
                .map(|t| format!(" until {}", rfc3339(t)))
                .unwrap_or_default()
        ),
        LifecycleEvent::FreezeEnded => format!(
            "Freeze ended: {} no longer closes {} of {app}",
            f.window.as_deref().unwrap_or("a Deny window"),
            f.environments.join(", ")
        ),
    };
    let text = format!(
        "[{}] {line} (namespace {}, {})",
        e.kind.name(),
        e.namespace,
        rfc3339(e.at)
    );
    // The templates hold none of `&`, `<`, `>`: escaping the line escapes every value in it.
    slack_escaped(&text)
}

/// Slack's escaping of message text: `&`, `<` and `>` as entities, so a value (a reason, a
/// window's description) cannot mention `<!channel>` or make a link.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn by(f: &Facts) -> String {
    f.by.as_deref()
        .map(|b| format!(" by {b}"))
        .unwrap_or_default()
}

fn approvals(f: &Facts) -> String {
    f.approvals
        .map(|(c, r)| format!("{c}/{r}"))
        .unwrap_or_else(|| "?".into())
}

fn reason(f: &Facts, label: &str) -> String {
    f.reason
        .as_deref()
        .map(|r| format!(" ({label}: {r})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::notify::events::{derive, tests as fixtures};

    const CANARY: &str = "CANARY-d41d8cd98f";

    fn events() -> Vec<Event> {
        let mut s = fixtures::sources();
        // What no payload may carry: a definition, a description, other annotations.
        let mut v = fixtures::version();
        v.spec.definition = Some(json!({ "queries": [{ "options": { "password": CANARY } }] }));
        v.spec.description = Some(CANARY.into());
        v.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("note".into(), CANARY.into());
        s.versions = vec![Arc::new(v)];
        derive(&s, fixtures::at(0, 0, 0), fixtures::at(23, 0, 0))
    }

    fn json_of(p: &Payload) -> Value {
        serde_json::from_slice(&p.body).unwrap()
    }

    #[test]
    fn a_cloud_event_is_structured_json_with_the_required_attributes() {
        let events = events();
        let promoted = events
            .iter()
            .find(|e| {
                e.kind == LifecycleEvent::Promoted
                    && e.facts.environment.as_deref() == Some("production")
            })
            .unwrap();
        let p = build(PayloadFormat::CloudEvents, promoted);
        assert_eq!(p.content_type, "application/cloudevents+json");
        let ce = json_of(&p);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], promoted.id.as_str());
        assert_eq!(
            ce["source"],
            "/apis/tooljet.io/namespaces/acme/tooljetapps/crm"
        );
        assert_eq!(ce["type"], "io.tooljet.operator.promoted");
        assert_eq!(ce["time"], "2026-12-01T10:30:00Z");
        assert_eq!(ce["subject"], "crm-v4");
        assert_eq!(
            ce["data"],
            json!({ "namespace": "acme", "event": "Promoted", "app": "crm", "version": "crm-v4",
                    "environment": "production", "from": "staging", "by": "bob" })
        );
        let freeze = events
            .iter()
            .find(|e| e.kind == LifecycleEvent::FreezeStarted)
            .unwrap();
        let ce = json_of(&build(PayloadFormat::CloudEvents, freeze));
        assert_eq!(
            ce["source"],
            "/apis/tooljet.io/namespaces/acme/promotionpolicies/prod-gate"
        );
        assert_eq!(ce["type"], "io.tooljet.operator.freeze-started");
        assert_eq!(ce["data"]["apps"], json!(["crm"]));
        assert_eq!(ce["data"]["environments"], json!(["production"]));
        assert_eq!(ce["data"]["until"], "2026-12-01T13:00:00Z");
    }

    #[test]
    fn a_slack_payload_is_one_line_of_text() {
        let events = events();
        let texts: Vec<String> = events
            .iter()
            .map(|e| {
                let p = build(PayloadFormat::Slack, e);
                assert_eq!(p.content_type, "application/json");
                let v = json_of(&p);
                assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
                v["text"].as_str().unwrap().to_string()
            })
            .collect();
        assert!(texts.contains(&"[ApprovalNeeded] crm: crm-v4 entered staging by bob; entering production needs approvals (0/2) (namespace acme, 2026-12-01T10:10:00Z)".to_string()), "{texts:#?}");
        assert!(texts.iter().any(|t| {
            t.starts_with("[Approved] crm: crm-v4 approved for production by erin (2/2)")
        }));
        assert!(texts.iter().any(|t| t.starts_with("[RolledBack] crm: rolled back to crm-v3 automatically (reason: Deployment tooljet-production: ProgressDeadlineExceeded)")));
        assert!(texts.iter().any(|t| t.starts_with("[FreezeStarted] Freeze started: Deny window \"lunch freeze of PromotionPolicy prod-gate\"")), "{texts:#?}");
    }

    #[test]
    fn slack_text_escapes_what_would_mention_or_link() {
        let mut e = events().remove(0);
        e.facts.reason = Some("<!channel> see <https://evil.example|docs> & more".into());
        e.facts.by = Some("<@U123>".into());
        e.kind = LifecycleEvent::Promoted;
        let v = json_of(&build(PayloadFormat::Slack, &e));
        let text = v["text"].as_str().unwrap();
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(
            text.contains("by &lt;@U123&gt;")
                && text
                    .contains("&lt;!channel&gt; see &lt;https://evil.example|docs&gt; &amp; more"),
            "{text}"
        );
    }

    #[test]
    fn no_payload_carries_a_definition_a_description_or_another_annotation() {
        let events = events();
        assert_eq!(events.len(), 10, "{events:#?}");
        for e in &events {
            for format in [PayloadFormat::CloudEvents, PayloadFormat::Slack] {
                let body = String::from_utf8(build(format, e).body).unwrap();
                assert!(!body.contains(CANARY), "{body}");
                assert!(!body.contains("queries"), "{body}");
            }
        }
    }
}
