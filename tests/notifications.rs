//! Notifications against the real kube-apiserver, the operator with its webhook, and a receiver
//! on loopback: every lifecycle event delivered once, in order; a failing endpoint retried and
//! reported without its URL; an operator killed mid-delivery loses nothing; no canary value in
//! any payload, status, Event or log; only who may configure every app creates a Notification.
//!
//! The tests run one at a time (one of them kills the shared operator, which serves the webhook).

mod support;

use std::time::Duration;

use chrono::Timelike;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Secret};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use support::{
    admission::{WAIT, Workspace, denied},
    receiver::{Answer, Received, Receiver, URL_TOKEN},
};

/// Held by each test: they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A value that must never leave the cluster's Secrets and definitions.
const CANARY: &str = "CANARY-7c1d52f9e0";

/// A workspace (app crm with versions in every stage), a canary Secret referenced by a
/// workspace-wide configuration of staging, the endpoint's Secret, and one second for the
/// history made so far to fall before the Notification's creation.
async fn workspace(prefix: &str, receiver: &Receiver) -> Workspace {
    let w = Workspace::new(prefix).await;
    let secrets: Api<Secret> = Api::namespaced(w.admin.clone(), &w.ns);
    for (name, key, value) in [
        ("crm-db", "password", CANARY),
        ("hook", "url", &receiver.url),
    ] {
        let secret: Secret = serde_json::from_value(
            json!({ "metadata": { "name": name }, "stringData": { key: value } }),
        )
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    w.create(
        &w.admin,
        "EnvironmentConfig",
        "shared-staging",
        json!({ "environment": "staging",
                "constants": [{ "name": "DB_PASSWORD", "type": "Secret",
                               "valueFrom": { "secretKeyRef": { "name": "crm-db", "key": "password" } } }] }),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w
}

/// Creates Notification `team-chat` (as the admin) sending `events` (all when empty) in `format`.
async fn notify(w: &Workspace, format: &str, events: &[&str]) {
    w.create(
        &w.admin,
        "Notification",
        "team-chat",
        json!({ "events": events,
                "endpoint": { "format": format, "urlFrom": { "secretKeyRef": { "name": "hook", "key": "url" } } } }),
    )
    .await
    .unwrap();
}

async fn status(w: &Workspace) -> Value {
    let n = w.get("Notification", "team-chat").await.unwrap();
    n.data["status"].clone()
}

async fn user(name: &str) -> kube::Client {
    support::client_as(name, &["tooljet-users"]).await
}

/// Retries `attempt` until it is allowed (the webhook's caches catch up with a new policy).
async fn until_allowed<T>(what: &str, attempt: impl AsyncFn() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..100 {
        match attempt().await {
            Ok(v) => return v,
            Err(m) => last = m,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: still refused: {last}");
}

async fn release(w: &Workspace, version: &str) {
    until_allowed(&format!("releasing {version}"), || {
        w.merge(
            &w.carol,
            "ToolJetApp",
            "crm",
            json!({ "spec": { "release": { "version": version } } }),
        )
    })
    .await;
}

/// The Events about the Notification, as text.
async fn events_text(w: &Workspace) -> String {
    let events: Api<CoreEvent> = Api::namespaced(w.admin.clone(), &w.ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    serde_json::to_string(&list.items).unwrap()
}

/// No canary and no URL token in what the receiver got (bodies), the Notification's status,
/// the namespace's Events, or the shared operator's logs.
async fn nothing_leaked(w: &Workspace, receiver: &Receiver, logs: &[std::path::PathBuf]) {
    for r in receiver.got() {
        assert!(!r.raw.contains(CANARY), "{}", r.raw);
        let body = r.body.to_string();
        assert!(
            !body.contains(CANARY) && !body.contains(URL_TOKEN),
            "{body}"
        );
        assert!(
            !body.contains("pages"),
            "a definition reached a payload: {body}"
        );
    }
    let status = status(w).await.to_string();
    assert!(
        !status.contains(CANARY) && !status.contains(URL_TOKEN),
        "{status}"
    );
    let events = events_text(w).await;
    assert!(
        !events.contains(CANARY) && !events.contains(URL_TOKEN),
        "{events}"
    );
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!text.contains(CANARY), "{} holds the canary", log.display());
        assert!(!text.contains(URL_TOKEN), "{} holds the URL", log.display());
    }
}

fn shared_log() -> std::path::PathBuf {
    support::shared_operator().to_path_buf()
}

#[tokio::test]
async fn every_lifecycle_event_reaches_the_endpoint_once_and_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    let w = workspace("notify-all", &receiver).await;
    w.bind("dave", "tooljet-approver").await;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "prod-gate",
        json!({ "environments": ["production"], "approvals": { "required": 1 } }),
    )
    .await
    .unwrap();
    notify(&w, "CloudEvents", &[]).await;

    // A version (with a canary in its definition) goes all the way, approved on the way.
    w.create(
        &w.alice,
        "AppVersion",
        "v-new",
        json!({ "app": "crm", "versionName": "v-new", "definition": { "pages": [{ "note": CANARY }] } }),
    )
    .await
    .unwrap();
    w.promote(&w.bob, "v-new", "staging").await.unwrap();
    let dave = user("dave").await;
    until_allowed("dave approves v-new", || async {
        let generation = w
            .get("AppVersion", "v-new")
            .await
            .and_then(|v| v.metadata.generation);
        w.create(
            &dave,
            "Approval",
            "v-new-dave",
            json!({ "version": "v-new", "environment": "production", "generation": generation }),
        )
        .await
    })
    .await;
    until_allowed("promoting v-new to production", || {
        w.promote(&w.bob, "v-new", "production")
    })
    .await;
    release(&w, "v-prod").await;
    release(&w, "v-new").await;
    release(&w, "v-prod").await;

    let expected = [
        "Promoted",
        "ApprovalNeeded",
        "Approved",
        "Promoted",
        "Released",
        "Released",
        "RolledBack",
    ];
    receiver
        .until(expected.len(), Duration::from_secs(60))
        .await;
    // Nothing more comes: each event once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = receiver.got();
    let kinds: Vec<String> = got.iter().map(Received::kind).collect();
    let seen: Vec<String> = got
        .iter()
        .map(|r| format!("{} {} {}", r.body["time"], r.body["type"], r.body["data"]))
        .collect();
    assert_eq!(kinds, expected, "{seen:#?}");
    let times: Vec<&str> = got
        .iter()
        .map(|r| r.body["time"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|t| t[0] <= t[1]),
        "in time order: {times:?}"
    );
    for r in &got {
        assert_eq!(r.content_type, "application/cloudevents+json");
        assert_eq!(
            r.key,
            r.body["id"].as_str().unwrap(),
            "Idempotency-Key is the id"
        );
        assert_eq!(r.body["specversion"], "1.0");
        assert_eq!(
            r.body["source"],
            format!("/apis/tooljet.io/namespaces/{}/tooljetapps/crm", w.ns)
        );
    }
    assert_eq!(got[1].body["data"]["approvalFor"], "production");
    assert_eq!(got[1].body["data"]["approvals"]["summary"], "0/1");
    assert_eq!(got[2].body["data"]["by"], "dave");
    assert_eq!(got[2].body["data"]["approvals"]["summary"], "1/1");
    assert_eq!(got[3].body["data"]["by"], "bob");
    assert_eq!(got[5].body["data"]["version"], "v-new");
    assert_eq!(got[6].body["data"]["by"], "carol");
    assert_eq!(got[6].body["type"], "io.tooljet.operator.rolled-back");

    let s = status(&w).await;
    assert_eq!(s["lastDelivered"]["id"], got[6].body["id"]);
    assert_eq!(s["lastDelivered"]["type"], "RolledBack");
    assert_eq!(s["failures"], 0);
    assert_eq!(s["pending"], 0);
    nothing_leaked(&w, &receiver, &[shared_log()]).await;
}

#[tokio::test]
async fn a_freeze_is_announced_when_it_starts_and_when_it_ends() {
    let _one = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    let w = workspace("notify-freeze", &receiver).await;
    // A Deny window of one minute starting at the next whole minute (the one after, when the
    // next is too close to set up in time).
    let now = tooljet_operator::gate::to_chrono(k8s_openapi::jiff::Timestamp::now());
    let lead = if now.second() > 45 { 2 } else { 1 };
    let start = now + chrono::TimeDelta::minutes(lead);
    let schedule = format!("{} {} * * *", start.minute(), start.hour());
    notify(&w, "Slack", &["FreezeStarted", "FreezeEnded"]).await;
    w.create(
        &w.admin,
        "PromotionPolicy",
        "lunch",
        json!({ "environments": ["production"],
                "windows": [{ "kind": "Deny", "schedule": schedule, "duration": "1m", "description": "lunch freeze" }] }),
    )
    .await
    .unwrap();

    let got = receiver
        .until(2, Duration::from_secs(60 * (lead as u64 + 2)))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.got().len(), 2, "{:#?}", receiver.got());
    assert_eq!(got[0].kind(), "FreezeStarted");
    assert_eq!(got[1].kind(), "FreezeEnded");
    let text = got[0].body["text"].as_str().unwrap();
    assert!(
        text.contains("lunch freeze of PromotionPolicy lunch")
            && text.contains("closes production of crm"),
        "{text}"
    );
    assert_eq!(got[0].content_type, "application/json");
    assert!(!got[0].key.is_empty() && got[0].key != got[1].key);
    nothing_leaked(&w, &receiver, &[shared_log()]).await;
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_backoff_and_reported_without_its_url() {
    let _one = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Fail(500));
    let w = workspace("notify-fail", &receiver).await;
    notify(&w, "Slack", &["Released"]).await;
    release(&w, "v-prod").await;

    let failing = support::eventually(WAIT, "two failed attempts in status", || async {
        let s = status(&w).await;
        (s["failures"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(
        failing["lastError"],
        "POST to the endpoint from Secret hook/url answered 500"
    );
    assert!(failing["nextAttemptAt"].is_string());
    assert_eq!(failing["pending"], 1);
    let ready = failing["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("Failing"))
    );
    let events = support::eventually(WAIT, "a Warning Event about the endpoint", || async {
        let text = events_text(&w).await;
        text.contains("answered 500").then_some(text)
    })
    .await;
    assert!(events.contains("\"Failing\""), "{events}");

    // The endpoint recovers: the same event (same key) arrives, and the status clears.
    receiver.answer(Answer::Ok);
    let recovered = support::eventually(
        Duration::from_secs(30),
        "the delivery after recovery",
        || async {
            let s = status(&w).await;
            (s["failures"] == 0 && s["lastDelivered"]["type"] == "Released").then_some(s)
        },
    )
    .await;
    assert!(recovered.get("lastError").is_none(), "{recovered}");
    let got = receiver.got();
    assert!(got.len() >= 3, "{got:#?}");
    assert!(
        got.iter()
            .all(|r| r.key == got[0].key && r.kind() == "Released")
    );
    nothing_leaked(&w, &receiver, &[shared_log()]).await;
}

#[tokio::test]
async fn an_operator_killed_mid_delivery_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    receiver.answer(Answer::Hang);
    let w = workspace("notify-restart", &receiver).await;
    notify(&w, "CloudEvents", &["Released", "RolledBack"]).await;
    release(&w, "v-prod").await;
    let hung = receiver.until(1, WAIT).await;

    // Killed while the endpoint holds the request: the cursor never moved.
    assert_eq!(status(&w).await.get("lastDelivered"), None);
    receiver.answer(Answer::Ok);
    let log = support::restart_shared_operator();
    let env = support::admission::env().await;
    support::admission::wait_ok(&env.health, "/readyz", Duration::from_secs(60)).await;
    // More happens after the restart.
    until_allowed("promoting v-stg to production", || {
        w.promote(&w.admin, "v-stg", "production")
    })
    .await;
    release(&w, "v-stg").await;
    release(&w, "v-prod").await;

    // A bound, not a measure: alone this takes seconds, but a clean-clone CI run (other test
    // binaries sharing the control plane and both cores) once needed more than 60 s.
    let got = support::eventually(
        Duration::from_secs(120),
        "every event after the restart",
        || async {
            let got = receiver.got();
            let last = got.last()?;
            (last.kind() == "RolledBack").then_some(got)
        },
    )
    .await;
    // The event held when the operator died is sent again with the same key; then the rest,
    // each once, in order.
    let mut keys: Vec<&str> = got.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys[0], hung[0].key);
    assert_eq!(keys[1], hung[0].key, "re-sent after the restart: {got:#?}");
    keys.dedup();
    let kinds: Vec<String> = got.iter().skip(1).map(Received::kind).collect();
    assert_eq!(kinds, ["Released", "Released", "RolledBack"], "{got:#?}");
    assert_eq!(keys.len(), 3, "nothing else is sent twice: {got:#?}");
    assert_eq!(got[2].body["data"]["version"], "v-stg");
    nothing_leaked(&w, &receiver, &[shared_log(), log]).await;
}

#[tokio::test]
async fn only_who_may_configure_every_app_creates_a_notification() {
    let _one = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    let w = workspace("notify-rbac", &receiver).await;
    // carol may update apps and create Notifications and read the Secret, but not configure.
    w.grant(
        "carol",
        "notifications-and-hook",
        json!([
            { "apiGroups": ["tooljet.io"], "resources": ["notifications"], "verbs": ["create", "get"] },
            { "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hook"], "verbs": ["get"] },
        ]),
    )
    .await;
    let spec = json!({ "endpoint": { "format": "Slack", "urlFrom": { "secretKeyRef": { "name": "hook", "key": "url" } } } });
    denied(
        w.create(&w.carol, "Notification", "team-chat", spec.clone())
            .await,
        &format!(
            "user carol may not create Notification team-chat: sending the events of the apps spec.appSelector \
             selects (who promoted, approved and released what; with no selector, every app of the namespace, \
             including apps created later) needs verb configure on every object of resource tooljetapps \
             (group tooljet.io) in namespace {}; ask a workspace admin",
            w.ns
        ),
    );
    // An environment admin configures every app; referencing a Secret they may not read is
    // refused, one they may read is not.
    w.bind("erin", "tooljet-environment-admin").await;
    let erin = user("erin").await;
    denied(
        w.create(&erin, "Notification", "team-chat", spec.clone())
            .await,
        "user erin may not reference Secret hook (key url) from Notification team-chat",
    );
    w.grant(
        "erin",
        "read-hook",
        json!([{ "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["hook"], "verbs": ["get"] }]),
    )
    .await;
    until_allowed("erin creates the Notification", || {
        w.create(&erin, "Notification", "team-chat", spec.clone())
    })
    .await;
}

/// Ready's status and reason and message.
fn ready_of(status: &Value) -> Option<(String, String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

#[tokio::test]
async fn a_notification_is_ready_only_once_its_endpoint_resolves() {
    let _one = ONE_AT_A_TIME.lock().await;
    let receiver = Receiver::start().await;
    let w = workspace("notify-ready", &receiver).await;
    w.create(
        &w.admin,
        "Notification",
        "team-chat",
        json!({ "endpoint": { "format": "CloudEvents",
                              "urlFrom": { "secretKeyRef": { "name": "later", "key": "url" } } } }),
    )
    .await
    .unwrap();
    let missing = support::eventually(WAIT, "Ready False, EndpointMissing", || async {
        ready_of(&status(&w).await).filter(|(s, _, _)| s == "False")
    })
    .await;
    assert_eq!(missing.1, "EndpointMissing", "{missing:?}");
    assert!(missing.2.contains("Secret later not found"), "{missing:?}");

    let secrets: Api<Secret> = Api::namespaced(w.admin.clone(), &w.ns);
    let later: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "later" }, "stringData": { "url": receiver.url } }),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &later)
        .await
        .unwrap();
    let ready = support::eventually(WAIT, "Ready True once the Secret exists", || async {
        ready_of(&status(&w).await).filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(ready.2, "the endpoint resolves; no event yet");
    assert!(receiver.got().is_empty());
}
