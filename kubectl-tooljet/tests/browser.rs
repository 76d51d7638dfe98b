//! The dashboard in a real browser (headless Chromium over WebDriver): what a QA engineer, a
//! product manager and a promoter see and do, against the local control plane with the operator
//! and its admission webhook. The board's screenshot (target/screenshots/, and docs/images/ with
//! `UPDATE_SCREENSHOTS=1`) is the one README shows.

mod support;

use std::time::Duration;

use fantoccini::{Client, Locator};
use k8s_openapi::{api::rbac::v1::RoleBinding, jiff::Timestamp};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use serde_json::json;
use support::{
    cli, crm,
    web::{Browser, dashboard},
};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the element at `css` shows `text` (the page may be swapped in live meanwhile).
async fn until_text(c: &Client, css: &str, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if t.contains(text) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = c.source().await.unwrap_or_default();
    panic!("{css} did not show {text:?} within {WAIT:?}; last: {last:?}; page: {page}");
}

/// Opens `url` and waits for the page's text to hold `text`, reloading (as a person would)
/// while the operator has not reported yet.
async fn open_until(c: &Client, url: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.goto(url).await.unwrap();
        let body = c
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not show {text:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

fn policies(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("tooljet.io", "v1alpha1", "PromotionPolicy"),
            "promotionpolicies",
        ),
    )
}

#[tokio::test]
async fn people_approve_promote_and_see_refusals_and_live_changes_in_the_browser() {
    let (admin, ns) = crm("browser").await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "dana-approver" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tooljet-approver" },
        "subjects": [{ "kind": "User", "name": "dana", "apiGroup": "rbac.authorization.k8s.io" }],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // Staging needs QA's approval; production is frozen from a minute ago for two hours.
    let started = Timestamp::now() - std::time::Duration::from_secs(60);
    let at = started.to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
    let schedule = format!("{} {} * * *", at.minute(), at.hour());
    for (name, spec) in [
        (
            "qa-gate",
            json!({ "environments": ["staging"], "approvals": { "required": 1 } }),
        ),
        (
            "release-freeze",
            json!({ "environments": ["production"], "windows": [{ "kind": "Deny", "schedule": schedule,
                    "duration": "2h", "description": "browser-test freeze" }] }),
        ),
    ] {
        let policy: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tooljet.io/v1alpha1", "kind": "PromotionPolicy",
            "metadata": { "name": name }, "spec": spec,
        }))
        .unwrap();
        policies(admin.clone(), &ns)
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
    }
    let bob_d = dashboard(&["-n", &ns, "--as", "bob"]);
    let dana_d = dashboard(&["-n", &ns, "--as", "dana"]);
    let browser = Browser::start().await;
    let c = &browser.client;

    // dana (QA), on her own dashboard (localhost: cookies are per host, not per port).
    let dana_base = dana_d.base.replace("127.0.0.1", "localhost");
    c.goto(&dana_d.url.replace("127.0.0.1", "localhost"))
        .await
        .unwrap();
    assert_eq!(
        c.find(Locator::Id("acting-as"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "dana"
    );
    let board = format!("/ns/{ns}/apps/crm");
    open_until(
        c,
        &format!("{dana_base}{board}"),
        "Approvals for staging: 0/1",
    )
    .await;
    c.find(Locator::Css("#version-v1 form.approve input[name=comment]"))
        .await
        .unwrap()
        .send_keys("QA sign-off, ticket 42")
        .await
        .unwrap();
    click(c, "#version-v1 form.approve button").await;
    until_text(c, "#outcome", "approval/v1-staging-dana created").await;

    // bob (promoter): the approval counts; the dry run's answer first, then the promotion.
    c.goto(&bob_d.url).await.unwrap();
    let bob_board = format!("{}{board}", bob_d.base);
    open_until(c, &bob_board, "Approvals for staging: 1/1 (dana)").await;
    click(c, "#version-v1 form[action$='/promote'] button").await;
    until_text(c, "#dry-run", "can be promoted development -> staging").await;
    click(c, "#confirm").await;
    until_text(
        c,
        "#outcome",
        "appversion/v1 promoted development -> staging",
    )
    .await;

    // v2 has no approval: the webhook's refusal, as the cluster worded it.
    c.goto(&bob_board).await.unwrap();
    click(c, "#version-v2 form[action$='/promote'] button").await;
    let refused = until_text(c, "#outcome", "Promote v2 to staging").await;
    assert!(refused.contains("approval"), "{refused}");

    // Production is frozen: the gate says until when, and a promotion is refused with the
    // window's description.
    open_until(c, &bob_board, "closed until").await;
    let gate = until_text(
        c,
        "section[aria-labelledby='stage-production'] .gate",
        "closed until",
    )
    .await;
    assert!(gate.contains("release-freeze"), "{gate}");
    click(c, "#version-v1 form[action$='/promote'] button").await;
    let frozen = until_text(c, "#outcome", "Promote v1 to production").await;
    assert!(frozen.contains("browser-test freeze"), "{frozen}");

    // Live: dana approves v2 and bob promotes it with kubectl; bob's open board follows without
    // a reload (a marker set on the page survives).
    c.goto(&bob_board).await.unwrap();
    c.execute("window.__stayed = 42; return null;", vec![])
        .await
        .unwrap();
    cli(&[
        "-n", &ns, "--as", "dana", "approve", "v2", "--to", "staging",
    ])
    .ok();
    cli(&["-n", &ns, "--as", "bob", "promote", "v2"]).ok();
    until_text(c, "section[aria-labelledby='stage-staging']", "v2").await;
    let stayed = c.execute("return window.__stayed;", vec![]).await.unwrap();
    assert_eq!(stayed, json!(42), "the board changed without a reload");

    let png = c.screenshot().await.unwrap();
    save_screenshot("dashboard-board.png", &png);

    // The version page and the calendar, as bob reads them.
    c.goto(&format!("{}/ns/{ns}/versions/v1", bob_d.base))
        .await
        .unwrap();
    until_text(c, "main", "dana").await;
    save_screenshot("dashboard-version.png", &c.screenshot().await.unwrap());
    c.goto(&format!("{}/ns/{ns}/calendar", bob_d.base))
        .await
        .unwrap();
    until_text(c, "main", "browser-test freeze").await;
    save_screenshot("dashboard-calendar.png", &c.screenshot().await.unwrap());
    browser.close().await;
}

/// Writes a screenshot under target/screenshots/ and, with UPDATE_SCREENSHOTS=1, docs/images/.
fn save_screenshot(name: &str, png: &[u8]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![root.join("target/screenshots")];
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        dirs.push(root.join("docs/images"));
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}
