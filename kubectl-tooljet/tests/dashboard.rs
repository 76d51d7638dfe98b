//! `kubectl tooljet dashboard` from the outside: the real binary on loopback, reached over HTTP
//! as a browser would (Host, cookies, Origin, forms), against the local control plane with the
//! operator and its admission webhook. What a person sees in a real browser is in browser.rs.

mod support;

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{Secret, ServiceAccount},
    rbac::v1::RoleBinding,
};
use kube::{
    Api, Client,
    api::{DynamicObject, PostParams},
};
use serde_json::json;
use support::{
    CANARY, crm, eventually, stage_of,
    web::{Viewer, csrf_of, dashboard, encode, request},
};

const SECRET_CANARY: &str = "canary-9c4d-dashboard-secret";

async fn bind(admin: &Client, ns: &str, user: &str, role: &str) {
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": format!("{}-{role}", user.replace(':', "-")) },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
        "subjects": [{ "kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io" }],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Staging needs one approval (PromotionPolicy `qa-gate`).
async fn qa_gate(admin: &Client, ns: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", "PromotionPolicy"),
            "promotionpolicies",
        ),
    );
    let policy: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tooljet.io/v1alpha1", "kind": "PromotionPolicy",
        "metadata": { "name": "qa-gate" },
        "spec": { "environments": ["staging"], "approvals": { "required": 1 } },
    }))
    .unwrap();
    api.create(&PostParams::default(), &policy).await.unwrap();
}

/// A Secret holding a canary, referenced by staging's configuration: the dashboard must show
/// neither it nor any plain option value (the crm fixture's production host holds CANARY).
async fn secret_reference(admin: &Client, ns: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "crm-staging-credentials" },
        "stringData": { "password": SECRET_CANARY },
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    support::apply(
        admin,
        ns,
        "EnvironmentConfig",
        "crm-staging",
        json!({ "app": "crm", "environment": "staging",
                "dataSources": [{ "name": "crm-db", "kind": "postgresql", "options": { "host": "db.staging" },
                                  "secretOptions": { "password": { "secretKeyRef": { "name": "crm-staging-credentials", "key": "password" } } } }],
                "constants": [{ "name": "API_URL", "type": "Global", "value": "https://staging.example" }] }),
    )
    .await;
}

fn assert_no_value(what: &str, body: &str) {
    for canary in [CANARY, SECRET_CANARY] {
        assert!(
            !body.contains(canary),
            "{what} shows a configuration value ({canary}): {body}"
        );
    }
}

#[tokio::test]
async fn only_the_printed_link_from_the_dashboards_own_pages_gets_in() {
    let (admin, ns) = crm("dash-guard").await;
    let d = dashboard(&["-n", &ns, "--as", "bob"]);
    assert!(d.url.contains("?token="), "{}", d.url);

    // No token, a foreign Host (DNS rebinding), a wrong cookie: refused before any API call.
    let bare = request(&d.host, "GET", "/", &[("Host", &d.host)], "").await;
    assert_eq!(bare.status, 401, "{bare:?}");
    assert!(bare.body.contains("needs the link"), "{}", bare.body);
    let path = &d.url[d.base.len()..];
    let port = d.host.rsplit(':').next().unwrap();
    let rebound = format!("evil.example:{port}");
    let foreign = request(&d.host, "GET", path, &[("Host", &rebound)], "").await;
    assert_eq!(foreign.status, 400, "{foreign:?}");
    let forged = request(
        &d.host,
        "GET",
        "/",
        &[
            ("Host", &d.host),
            ("Cookie", "tooljet_dashboard=0123; tooljet_dashboard_1=0123"),
        ],
        "",
    )
    .await;
    assert_eq!(forged.status, 401);

    // The token URL: a cookie (HttpOnly, SameSite=Strict) and the address without the token.
    let first = request(&d.host, "GET", path, &[("Host", &d.host)], "").await;
    assert_eq!(first.status, 303);
    assert_eq!(first.header("location"), Some("/"));
    let cookie = first.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let bob = Viewer::of(&d).await;
    let index = bob.get("/").await;
    assert_eq!(index.status, 200, "{index:?}");
    assert!(
        index
            .body
            .contains("Acting as <strong id=\"acting-as\">bob</strong>"),
        "{}",
        index.body
    );
    assert!(index.body.contains("/ns/") && index.body.contains("crm"));
    let csp = index.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(index.header("referrer-policy"), Some("same-origin"));

    // A write from another origin, or without the page's CSRF token, changes nothing.
    let promote = format!("/ns/{ns}/versions/v1/promote");
    let csrf = bob.csrf(&format!("/ns/{ns}/apps/crm")).await;
    let body = format!("csrf={csrf}&to=staging&confirm=1");
    let cross = request(
        &d.host,
        "POST",
        &promote,
        &[
            ("Host", &d.host),
            ("Cookie", &bob.cookies()),
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &body,
    )
    .await;
    assert_eq!(cross.status, 403, "{cross:?}");
    let no_csrf = bob
        .post(
            &promote,
            &[("csrf", "x"), ("to", "staging"), ("confirm", "1")],
        )
        .await;
    assert_eq!(no_csrf.status, 403, "{no_csrf:?}");
    assert_eq!(stage_of(&admin, &ns, "v1").await, "development");
}

#[tokio::test]
async fn an_approver_approves_then_the_promoter_promotes_each_with_their_own_access() {
    let (admin, ns) = crm("dash-approve").await;
    bind(&admin, &ns, "dana", "tooljet-approver").await;
    qa_gate(&admin, &ns).await;
    secret_reference(&admin, &ns).await;
    let bob_d = dashboard(&["-n", &ns, "--as", "bob"]);
    let dana_d = dashboard(&["-n", &ns, "--as", "dana"]);
    let (bob, dana) = (Viewer::of(&bob_d).await, Viewer::of(&dana_d).await);
    let board = format!("/ns/{ns}/apps/crm");

    // The gate on the board, as the operator reports it.
    let page = eventually("the gate and its approvals on the board", || async {
        let page = dana.get(&board).await;
        (page
            .body
            .contains("Approvals for staging: <strong>0/1</strong>")
            && page.body.contains("Gate <code>qa-gate</code>"))
        .then_some(page)
    })
    .await;
    assert_no_value("the board", &page.body);

    // Without the approval: the dry run's refusal, in the webhook's words.
    let csrf = csrf_of(&bob.get(&board).await.body);
    let refused = bob
        .post(
            &format!("/ns/{ns}/versions/v1/promote"),
            &[("csrf", &csrf), ("to", "staging")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("Refused"), "{}", refused.body);
    assert!(
        refused.body.contains("approval"),
        "the webhook's text: {}",
        refused.body
    );
    assert!(!refused.body.contains("id=\"confirm\""));

    // dana approves generation 1 (the one on her screen).
    let csrf = csrf_of(&page.body);
    let approved = dana
        .post(
            &format!("/ns/{ns}/versions/v1/approve"),
            &[
                ("csrf", &csrf),
                ("stage", "staging"),
                ("generation", "1"),
                ("comment", "QA ok"),
            ],
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert!(
        approved.body.contains("approval/v1-staging-dana created"),
        "{}",
        approved.body
    );
    // bob may not approve (no approve verb): RBAC's refusal, shown as is.
    let csrf_b = csrf_of(&bob.get(&board).await.body);
    let not_bob = bob
        .post(
            &format!("/ns/{ns}/versions/v1/approve"),
            &[("csrf", &csrf_b), ("stage", "staging"), ("generation", "1")],
        )
        .await;
    assert_eq!(not_bob.status, 403, "{}", not_bob.body);

    // bob: the dry run first (nothing changes), then the promotion.
    let promote = format!("/ns/{ns}/versions/v1/promote");
    let dry = eventually("the dry run allows the approved promotion", || async {
        let page = bob
            .post(&promote, &[("csrf", &csrf_b), ("to", "staging")])
            .await;
        (page.status == 200).then_some(page)
    })
    .await;
    assert!(
        dry.body
            .contains("can be promoted development -&gt; staging"),
        "{}",
        dry.body
    );
    assert!(dry.body.contains("id=\"confirm\""));
    assert_eq!(stage_of(&admin, &ns, "v1").await, "development");
    let done = bob
        .post(
            &promote,
            &[("csrf", &csrf_b), ("to", "staging"), ("confirm", "1")],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body
            .contains("appversion/v1 promoted development -&gt; staging"),
        "{}",
        done.body
    );
    assert_eq!(stage_of(&admin, &ns, "v1").await, "staging");

    // The version page: the history (once the operator records it), the configuration by hash,
    // and dana's approval with the generation she reviewed, which no longer counts (the
    // promotion made generation 2).
    let version = eventually("the promotion in the version's history", || async {
        let page = bob.get(&format!("/ns/{ns}/versions/v1")).await;
        page.body.contains("by bob").then_some(page)
    })
    .await;
    for needle in [
        "promotion development → staging of v1 by bob",
        "Configuration: staging and production",
    ] {
        assert!(version.body.contains(needle), "{needle}: {}", version.body);
    }
    for needle in [
        "<td>dana</td><td>1</td>",
        "QA ok",
        "no: the version is now at generation 2",
    ] {
        assert!(version.body.contains(needle), "{needle}: {}", version.body);
    }
    let calendar = bob.get(&format!("/ns/{ns}/calendar")).await;
    assert!(calendar.body.contains("qa-gate"), "{}", calendar.body);
    for (what, path) in [
        ("the index", "/".to_string()),
        ("the board", board.clone()),
        ("the version page", format!("/ns/{ns}/versions/v1")),
        ("the calendar", format!("/ns/{ns}/calendar")),
    ] {
        let page = bob.get(&path).await;
        assert_no_value(what, &page.body);
    }
    // dana approves v2's generation 1; a developer then edits v2. Her approval no longer counts
    // (the operator's own count shows it), and approving the new generation replaces it.
    let approve_v2 = format!("/ns/{ns}/versions/v2/approve");
    let first = dana
        .post(
            &approve_v2,
            &[("csrf", &csrf), ("stage", "staging"), ("generation", "1")],
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    support::apply(
        &admin,
        &ns,
        "AppVersion",
        "v2",
        json!({ "app": "crm", "versionName": "v2", "requires": { "dataSources": ["crm-db"] },
                "definition": { "queries": [{ "url": "{{constants.API_URL}}/customers?edited=1" }] } }),
    )
    .await;
    eventually("the edit voids dana's approval on the board", || async {
        let page = dana.get(&board).await;
        (page
            .body
            .contains("Approvals for staging: <strong>0/1</strong>")
            && page.body.contains("Approve generation 2 for staging"))
        .then_some(())
    })
    .await;
    let again = dana
        .post(
            &approve_v2,
            &[("csrf", &csrf), ("stage", "staging"), ("generation", "2")],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(
        again
            .body
            .contains("it replaces your approval of generation 1"),
        "{}",
        again.body
    );
    eventually("the new approval counts", || async {
        let page = dana.get(&board).await;
        page.body
            .contains("Approvals for staging: <strong>1/1</strong> (dana)")
            .then_some(())
    })
    .await;
    let twice = dana
        .post(
            &approve_v2,
            &[("csrf", &csrf), ("stage", "staging"), ("generation", "2")],
        )
        .await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert!(
        twice.body.contains("already approved v2 generation 2"),
        "{}",
        twice.body
    );

    // dana may not read stage configurations: her version page says so instead of failing.
    let hers = dana.get(&format!("/ns/{ns}/versions/v2")).await;
    assert_eq!(hers.status, 200, "{}", hers.body);
    assert!(
        hers.body
            .contains("does not let you read the stage configurations"),
        "{}",
        hers.body
    );
}

/// In the cluster the dashboard forwards each viewer's own token: nothing of its own.
#[tokio::test]
async fn with_forward_token_each_viewer_acts_with_their_own_token_and_nothing_else() {
    let (admin, ns) = crm("dash-forward").await;
    let sa_api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    for name in ["qa", "nobody"] {
        let sa: ServiceAccount =
            serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
        sa_api.create(&PostParams::default(), &sa).await.unwrap();
    }
    bind(
        &admin,
        &ns,
        &format!("system:serviceaccount:{ns}:qa"),
        "tooljet-approver",
    )
    .await;
    qa_gate(&admin, &ns).await;
    let token = |name: &'static str| {
        let sa_api = sa_api.clone();
        async move {
            let req: TokenRequest =
                serde_json::from_value(json!({ "spec": { "expirationSeconds": 3600 } })).unwrap();
            let answer: TokenRequest = sa_api
                .create_subresource("token", name, &PostParams::default(), &req)
                .await
                .unwrap();
            answer.status.unwrap().token
        }
    };
    let (qa, nobody) = (token("qa").await, token("nobody").await);
    let d = dashboard(&["-n", &ns, "--forward-token"]);
    assert!(!d.url.contains("token="), "{}", d.url);

    // No credential: the sign-in page, never the kubeconfig's identity.
    let bare = request(&d.host, "GET", "/", &[("Host", &d.host)], "").await;
    assert_eq!(bare.status, 303);
    assert_eq!(bare.header("location"), Some("/login"));
    let login = request(&d.host, "GET", "/login", &[("Host", &d.host)], "").await;
    assert!(login.body.contains("name=\"token\""), "{}", login.body);

    // A token with no grants sees the apiserver's refusal: the server adds no access.
    let auth = format!("Bearer {nobody}");
    let denied = request(
        &d.host,
        "GET",
        "/",
        &[("Host", &d.host), ("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(
        denied.body.contains("forbidden") || denied.body.contains("cannot list"),
        "{}",
        denied.body
    );

    // qa, through a proxy's Authorization header.
    let auth = format!("Bearer {qa}");
    let page = eventually("qa's board with the gate", || async {
        let page = request(
            &d.host,
            "GET",
            &format!("/ns/{ns}/apps/crm"),
            &[("Host", &d.host), ("Authorization", &auth)],
            "",
        )
        .await;
        page.body.contains("0/1").then_some(page)
    })
    .await;
    let who = format!("system:serviceaccount:{ns}:qa");
    assert!(page.body.contains(&who), "{}", page.body);
    // The CSRF cookie the page set goes back with the form, as a browser sends it.
    let csrf_cookie = page
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("the first page sets the CSRF cookie")
        .to_string();
    let body = format!(
        "csrf={}&stage=staging&generation=1",
        encode(&csrf_of(&page.body))
    );
    let origin = format!("http://{}", d.host);
    let approve = format!("/ns/{ns}/versions/v1/approve");
    let post = |cookie: &'static str| {
        let (d, auth, origin, body, approve, csrf_cookie) =
            (&d, &auth, &origin, &body, &approve, &csrf_cookie);
        async move {
            let cookie = if cookie.is_empty() {
                ""
            } else {
                csrf_cookie.as_str()
            };
            request(
                &d.host,
                "POST",
                approve,
                &[
                    ("Host", &d.host),
                    ("Authorization", auth),
                    ("Cookie", cookie),
                    ("Origin", origin),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                body,
            )
            .await
        }
    };
    let without = post("").await;
    assert_eq!(
        without.status, 403,
        "no CSRF cookie, no change: {}",
        without.body
    );
    let approved = post("with").await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let approvals: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &ns,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", "Approval"),
            "approvals",
        ),
    );
    let list = approvals.list(&Default::default()).await.unwrap();
    let stamped: Vec<_> = list
        .items
        .iter()
        .filter_map(|a| {
            a.metadata
                .annotations
                .as_ref()?
                .get("tooljet.io/approved-by")
                .cloned()
        })
        .collect();
    assert_eq!(
        stamped,
        vec![who],
        "the webhook stamped the viewer, not the server"
    );

    // A pasted token: an HttpOnly cookie, then the same identity.
    let signed = request(
        &d.host,
        "POST",
        "/login",
        &[
            ("Host", &d.host),
            ("Origin", &origin),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("token={}", encode(&qa)),
    )
    .await;
    assert_eq!(signed.status, 303, "{signed:?}");
    let cookie = signed
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let index = request(
        &d.host,
        "GET",
        "/",
        &[("Host", &d.host), ("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(index.status, 200, "{}", index.body);
}

#[tokio::test]
async fn a_release_manager_releases_and_rolls_back_after_the_servers_dry_run() {
    let (admin, ns) = crm("dash-release").await;
    for v in ["v1", "v2"] {
        for _ in 0..2 {
            support::cli(&["-n", &ns, "--as", "bob", "promote", v]).ok();
        }
    }
    let d = dashboard(&["-n", &ns, "--as", "carol"]);
    let carol = Viewer::of(&d).await;
    let board = format!("/ns/{ns}/apps/crm");
    let page = eventually("both versions in production on the board", || async {
        let page = carol.get(&board).await;
        (page.body.matches("Release to end users").count() == 2).then_some(page)
    })
    .await;
    let csrf = csrf_of(&page.body);
    let apps: Api<tooljet_operator::api::ToolJetApp> = Api::namespaced(admin.clone(), &ns);
    for v in ["v1", "v2"] {
        let release = format!("/ns/{ns}/versions/{v}/release");
        let dry = carol.post(&release, &[("csrf", &csrf)]).await;
        assert_eq!(dry.status, 200, "{}", dry.body);
        assert!(
            dry.body.contains(&format!("can be released {v}")),
            "{}",
            dry.body
        );
        let done = carol
            .post(&release, &[("csrf", &csrf), ("confirm", "1")])
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
        assert!(
            done.body.contains(&format!("tooljetapp/crm released {v}")),
            "{}",
            done.body
        );
        assert_eq!(apps.get("crm").await.unwrap().released(), Some(v));
    }
    // The rollback's dry run names the release it goes back to; the confirmation pins it.
    let rollback = format!("/ns/{ns}/apps/crm/rollback");
    let dry = carol.post(&rollback, &[("csrf", &csrf)]).await;
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert!(dry.body.contains("Roll crm back to v1"), "{}", dry.body);
    assert!(dry.body.contains(r#"name="to" value="v1""#), "{}", dry.body);
    let done = carol
        .post(
            &rollback,
            &[("csrf", &csrf), ("to", "v1"), ("confirm", "1")],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body.contains("rolled back to v1 (was v2)"),
        "{}",
        done.body
    );
    assert_eq!(apps.get("crm").await.unwrap().released(), Some("v1"));
    // A confirmation pins the release it was shown: if someone releases meanwhile, nothing
    // changes and the page says so.
    let dry = carol.post(&rollback, &[("csrf", &csrf)]).await;
    assert!(
        dry.body.contains(r#"name="current" value="v1""#),
        "{}",
        dry.body
    );
    support::cli(&["-n", &ns, "--as", "carol", "release", "v2"]).ok();
    let stale = carol
        .post(
            &rollback,
            &[
                ("csrf", &csrf),
                ("to", "v2"),
                ("current", "v1"),
                ("confirm", "1"),
            ],
        )
        .await;
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert!(
        stale.body.contains("was changed meanwhile (it is now v2)"),
        "{}",
        stale.body
    );
    assert_eq!(apps.get("crm").await.unwrap().released(), Some("v2"));

    // bob may not release: the refusal, and nothing changes.
    let bob_d = dashboard(&["-n", &ns, "--as", "bob"]);
    let bob = Viewer::of(&bob_d).await;
    let bob_csrf = csrf_of(&bob.get(&board).await.body);
    let refused = bob
        .post(
            &format!("/ns/{ns}/versions/v1/release"),
            &[("csrf", &bob_csrf), ("confirm", "1")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(apps.get("crm").await.unwrap().released(), Some("v2"));
}
