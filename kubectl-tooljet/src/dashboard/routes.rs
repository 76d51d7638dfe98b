//! The dashboard's routes: pages (GET) and actions (POST), each made with the viewer's own
//! credentials ([`Access`]) after the [`Guard`] let the request in.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use axum::{
    Extension, Form, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use kube::{ResourceExt, api::DynamicObject};
use serde::Deserialize;
use tooljet_operator::{
    api::{
        APPROVED_AT_ANNOTATION, APPROVED_BY_ANNOTATION, APPROVED_GENERATION_ANNOTATION, AppVersion,
        Approval, PromotionPolicy, ToolJetApp,
    },
    gate,
    lifecycle::Pipeline,
};

use super::{
    access::{Access, Acting, Guard, Refusal, SESSION_COOKIE, same_secret},
    html::{self, Answer, ApprovalView, ApprovalsState, CalendarRow, Confirm, Frame, VersionExtra},
    live,
};
use crate::{
    diff,
    error::{Error, Result},
    history,
    lifecycle::{self, Outcome},
    status,
};

pub struct Server {
    pub access: Access,
    pub guard: Guard,
    /// The namespace the index lists (unless every namespace).
    pub default_namespace: String,
    pub all_namespaces: bool,
}

/// Who is asking, as the guard established it.
#[derive(Clone)]
pub struct Viewer {
    /// The laptop token, or the viewer's bearer token (never logged, never rendered).
    pub credential: String,
    /// The viewer's CSRF token (their CSRF cookie's value), which every form carries.
    pub csrf: String,
}

type Shared = Arc<Server>;

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<()> {
    let app = router(state);
    match tls {
        None => axum::serve(listener, app)
            .await
            .map_err(|e| Error::Api(format!("serving the dashboard: {e}"))),
        Some(config) => serve_tls(listener, app, config).await,
    }
}

/// At most this many HTTPS connections at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 512;

/// HTTPS: each connection's TLS handshake (bounded in time), then HTTP/2 or HTTP/1.1 as ALPN
/// agreed (HTTP/2 lets a browser keep many tabs' live updates on one connection), with hyper's
/// header-read timeout.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
) -> Result<()> {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto,
        service::TowerToHyperService,
    };
    use std::time::Duration;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Api(format!("the dashboard's connection limit: {e}")))?;
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // Out of file descriptors, typically: wait rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, builder) = (acceptor.clone(), builder.clone());
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            if let Ok(Ok(tls)) = handshake.await {
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            }
        });
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/ns/{ns}/apps/{app}", get(board))
        .route("/ns/{ns}/apps/{app}/rollback", post(rollback))
        .route("/ns/{ns}/versions/{version}", get(version))
        .route("/ns/{ns}/versions/{version}/promote", post(promote))
        .route("/ns/{ns}/versions/{version}/approve", post(approve))
        .route("/ns/{ns}/versions/{version}/release", post(release))
        .route("/ns/{ns}/calendar", get(calendar))
        .route("/events", get(live::events))
        .route("/static/dashboard.js", get(script))
        .route("/static/dashboard.css", get(style))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Every request: the Host, the token or credential, the origin of a write; then the headers
/// that keep the pages out of frames, caches and referrers.
async fn guard(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    let g = &s.guard;
    let host = match g.host(req.headers()) {
        Ok(h) => h.to_string(),
        Err(r) => return refused(&r),
    };
    if g.url_token_matches(req.uri().query()) {
        // The token leaves the address bar (and the history) for an HttpOnly cookie.
        let mut back = Redirect::to(req.uri().path()).into_response();
        if let Some(c) = g
            .token_cookie()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            back.headers_mut().insert(header::SET_COOKIE, c);
        }
        return secure(back);
    }
    if let Err(r) = g.check_origin(req.method(), req.headers(), &host) {
        return refused(&r);
    }
    let signing_in = g.forwarding() && req.uri().path() == "/login";
    let credential = match g.credential(req.headers()) {
        Ok(c) => c,
        Err(_) if signing_in => String::new(),
        Err(_) if g.forwarding() => return secure(Redirect::to("/login").into_response()),
        Err(r) => return refused(&r),
    };
    let (csrf, set_csrf) = match g.csrf(req.headers()) {
        Ok(c) => c,
        Err(e) => return Failure::Cluster(e).into_response(),
    };
    req.extensions_mut().insert(Viewer { credential, csrf });
    let mut resp = next.run(req).await;
    if let Some(c) = set_csrf.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    secure(resp)
}

fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the
        // origin check must refuse. The token never stays in an address to leak anyway.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (k, v) in set {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

fn refused(r: &Refusal) -> Response {
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN);
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Refused</title></head><body><h1>Refused</h1><p role=\"alert\">{}</p></body></html>",
        html::esc(&r.message())
    );
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

/// A page that could not be shown: the cluster's own words, with the status they map to; or a
/// request the guard's checks turn away.
enum Failure {
    Cluster(Error),
    Refused(Refusal),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Cluster(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let e = match self {
            Failure::Refused(r) => return refused(&r),
            Failure::Cluster(e) => e,
        };
        if let Error::Unauthenticated(why) = &e {
            return signed_out(why);
        }
        let status = match &e {
            Error::Usage(_) => StatusCode::BAD_REQUEST,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Api(_) | Error::Unauthenticated(_) | Error::ChecksFailed => {
                StatusCode::BAD_GATEWAY
            }
        };
        let body = html::page(
            &Frame {
                title: "Cannot show this",
                acting_as: "you",
                live: None,
                namespace: "default",
            },
            &format!(
                "<h1>Cannot show this</h1>\n<p class=\"alert\" role=\"alert\">{}</p>\n<p><a href=\"/\">Apps</a></p>",
                html::esc(&e.to_string())
            ),
        );
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// A name from the URL must be a Kubernetes object name (a DNS subdomain) before it goes into an
/// apiserver path.
pub fn valid_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{what} {name:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"
        )))
    }
}

/// The apiserver no longer accepts the viewer's token: the pasted one is forgotten, and the
/// page says to sign in again.
fn signed_out(why: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in again</title></head><body><h1>Sign in again</h1><p role=\"alert\">{}</p><p><a href=\"/login\">Sign in</a></p></body></html>",
        html::esc(why)
    );
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0");
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    if let Ok(c) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

type Page = std::result::Result<Response, Failure>;

impl Server {
    pub(super) async fn cluster(&self, viewer: &Viewer, ns: &str) -> Result<Acting> {
        valid_name("namespace", ns)?;
        self.access.cluster(&viewer.credential, ns).await
    }

    async fn page(&self, cluster: &Acting, title: &str, live: bool, body: &str) -> Response {
        let who = cluster.user.clone().unwrap_or_else(|| "you".into());
        let ns = cluster.namespace.clone();
        let frame = Frame {
            title,
            acting_as: &who,
            live: live.then_some(ns.as_str()),
            namespace: &ns,
        };
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html::page(&frame, body),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct IndexQuery {
    /// Another namespace than the one the dashboard started in.
    ns: Option<String>,
}

async fn index(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<IndexQuery>,
) -> Page {
    let chosen = q.ns.filter(|n| !n.is_empty());
    let all = s.all_namespaces && chosen.is_none();
    let ns = chosen.unwrap_or_else(|| s.default_namespace.clone());
    let mut cluster = s.cluster(&v, &ns).await?;
    cluster.all_namespaces = all;
    let apps = cluster.list_apps().await?;
    let boards = status::boards(&cluster, &apps).await?;
    let scope = if all {
        "every namespace".to_string()
    } else {
        format!("namespace {ns}")
    };
    let body = html::index(&boards, &scope, &ns);
    Ok(s.page(&cluster, "Apps", !all, &body).await)
}

async fn board(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path((ns, app)): Path<(String, String)>,
) -> Page {
    valid_name("app", &app)?;
    let cluster = s.cluster(&v, &ns).await?;
    let app = cluster.app(&app).await?;
    let versions = cluster.list_versions(&ns).await?;
    let approvals = cluster.list_approvals(&ns).await?;
    let policies = cluster.list_policies(&ns).await?;
    let b = status::board(&app, &versions, approvals.as_deref(), &policies);
    let pipeline = Pipeline::of(&app);
    let typed = approvals.as_deref().map(typed_approvals);
    let policies: Vec<Arc<PromotionPolicy>> = policies.into_iter().map(Arc::new).collect();
    let extras: BTreeMap<String, VersionExtra> = versions
        .iter()
        .filter(|x| x.spec.app == app.name_any())
        .map(|x| {
            let next = pipeline.next(&x.spec.environment).map(str::to_string);
            let approvals = match (&typed, next.as_deref()) {
                (_, None) => ApprovalsState::NotRequired,
                (None, Some(_)) => ApprovalsState::Hidden,
                (Some(all), Some(next)) => tally(&policies, &app, next, all, x),
            };
            (
                x.name_any(),
                VersionExtra {
                    generation: x.metadata.generation.unwrap_or_default(),
                    next,
                    approvals,
                },
            )
        })
        .collect();
    let body = html::board(&b, &extras, &v.csrf);
    let title = b.display_name.clone().unwrap_or_else(|| b.app.clone());
    Ok(s.page(&cluster, &title, true, &body).await)
}

/// The namespace's Approvals, typed (those that do not parse are left out).
fn typed_approvals(all: &[DynamicObject]) -> Vec<Approval> {
    all.iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// The approvals that count for `version` entering `stage`, by the operator's own rules (the
/// webhook's count without a promoter: owned by this version, of its current generation, not
/// revoked, one per person, separation of duties).
fn tally(
    policies: &[Arc<PromotionPolicy>],
    app: &ToolJetApp,
    stage: &str,
    approvals: &[Approval],
    version: &AppVersion,
) -> ApprovalsState {
    let Some(tally) = gate::stage_gate_among(policies, app, stage)
        .and_then(|g| g.tally_of(gate::approval_facts(approvals, version), version, None))
        .filter(|t| t.required > 0)
    else {
        return ApprovalsState::NotRequired;
    };
    ApprovalsState::Counted {
        counted: tally.counted(),
        required: tally.required,
        approvers: tally.approvers.clone(),
        not_counted: tally
            .ignored
            .iter()
            .filter(|i| i.is_relevant())
            .map(|i| i.to_string())
            .collect(),
    }
}

/// Every approval of `version` as the version page lists it; `counts` when the operator would
/// count it (its generation, owned by this version, not revoked, not excluded by separation of
/// duties under the policies guarding its stage).
fn approval_views(
    approvals: &[Approval],
    policies: &[Arc<PromotionPolicy>],
    app: &ToolJetApp,
    version: &AppVersion,
) -> Vec<ApprovalView> {
    let name = version.name_any();
    let facts = gate::approval_facts(approvals, version);
    // Those separation of duties excludes, counted once per stage the version has approvals for.
    let mut stages: Vec<&str> = approvals
        .iter()
        .filter(|a| a.spec.version == name)
        .map(|a| a.spec.environment.as_str())
        .collect();
    stages.sort();
    stages.dedup();
    let excluded: BTreeSet<String> = stages
        .into_iter()
        .filter_map(|stage| gate::stage_gate_among(policies, app, stage))
        .filter_map(|g| g.tally_of(facts.clone(), version, None))
        .flat_map(|t| t.ignored.into_iter())
        .filter(|i| i.is_relevant())
        .map(|i| i.approval)
        .collect();
    let mut out: Vec<ApprovalView> = approvals
        .iter()
        .filter(|a| a.spec.version == name)
        .map(|a| {
            let annotations = a.annotations();
            let reviewed = annotations
                .get(APPROVED_GENERATION_ANNOTATION)
                .and_then(|g| g.parse().ok())
                .or(a.spec.generation);
            let excluded = excluded.contains(&a.name_any());
            ApprovalView {
                stage: a.spec.environment.clone(),
                approver: annotations
                    .get(APPROVED_BY_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| a.name_any()),
                generation: reviewed,
                at: annotations.get(APPROVED_AT_ANNOTATION).map(|t| seconds(t)),
                comment: a.spec.comment.clone(),
                counts: facts.iter().any(|f| f.name == a.name_any()) && !excluded,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.stage, &a.at).cmp(&(&b.stage, &b.at)));
    out
}

/// An RFC 3339 time to the second, as the rest of the plugin shows times (unparsable: as is).
fn seconds(t: &str) -> String {
    t.parse()
        .map(|ts| crate::output::time(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts)))
        .unwrap_or_else(|_| t.to_string())
}

async fn version(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path((ns, name)): Path<(String, String)>,
) -> Page {
    valid_name("version", &name)?;
    let cluster = s.cluster(&v, &ns).await?;
    let version: AppVersion = cluster.version(&name).await?;
    let app = cluster.app(&version.spec.app).await?;
    let approvals = cluster.list_approvals(&ns).await?;
    let generation = version.metadata.generation.unwrap_or_default();
    let one = std::slice::from_ref(&version);
    let b = status::board(&app, one, approvals.as_deref(), &[]);
    let state = b.versions.first().ok_or_else(|| {
        Error::NotFound(format!(
            "AppVersion {name} is not a version of app {}",
            app.name_any()
        ))
    })?;
    let policies: Vec<Arc<PromotionPolicy>> = cluster
        .list_policies(&ns)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect();
    let views = approvals
        .as_deref()
        .map(typed_approvals)
        .map(|all| approval_views(&all, &policies, &app, &version));
    let history = history::entries(&app, one, Some(&name));
    let stage = &version.spec.environment;
    // Approvers may not read stage configurations: the page then says so instead of failing.
    let d = match Pipeline::of(&app).next(stage) {
        Some(next) => match cluster.list_configs(&ns).await {
            Ok(configs) => Ok(Some(diff::diff(
                &ns,
                &configs,
                stage,
                next,
                Some(&app.name_any()),
            ))),
            Err(Error::Denied(why)) => Err(why),
            Err(e) => return Err(e.into()),
        },
        None => Ok(None),
    };
    let body = html::version_page(
        &ns,
        state,
        generation,
        &app.name_any(),
        views.as_deref(),
        &history,
        d.as_ref().map(Option::as_ref).map_err(String::as_str),
    );
    Ok(s.page(&cluster, &format!("Version {name}"), true, &body)
        .await)
}

async fn calendar(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path(ns): Path<String>,
) -> Page {
    let cluster = s.cluster(&v, &ns).await?;
    let policies = cluster.list_policies(&ns).await?;
    let rows: Vec<CalendarRow> = policies
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            CalendarRow {
                policy: p.name_any(),
                environments: p.spec.environments.clone(),
                apps: status.apps.iter().map(|a| a.name.clone()).collect(),
                open: status.open,
                next_open: status.next_open.as_ref().map(crate::output::time),
                next_close: status.next_close.as_ref().map(crate::output::time),
                windows: p
                    .spec
                    .windows
                    .iter()
                    .map(|w| {
                        format!(
                            "{:?} from {} for {} ({}){}",
                            w.kind,
                            w.schedule,
                            w.duration,
                            w.time_zone.as_deref().unwrap_or("UTC"),
                            w.description
                                .as_deref()
                                .map(|d| format!(": {d}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect(),
                approvals_required: p.spec.approvals.as_ref().map(|a| a.required).unwrap_or(0),
            }
        })
        .collect();
    Ok(s.page(
        &cluster,
        "Freeze calendar",
        true,
        &html::calendar(&ns, &rows),
    )
    .await)
}

/// What an action's form carries.
#[derive(Deserialize, Debug, Default)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    /// The stage to promote to, or the version to roll back to (pinned by the confirmation).
    to: Option<String>,
    /// The stage an approval is for.
    stage: Option<String>,
    /// The generation on screen when approving.
    generation: Option<i64>,
    comment: Option<String>,
    /// Set by the confirmation page: do it (otherwise: the dry run first).
    confirm: Option<String>,
    /// The release shown by the confirmation page ("" for none): a release or rollback only
    /// happens if it is still the release.
    current: Option<String>,
}

impl ActionForm {
    fn confirmed(&self) -> bool {
        self.confirm.as_deref() == Some("1")
    }

    /// The release the person was shown, when the confirmation pinned it.
    fn seen(&self) -> Option<Option<&str>> {
        self.current
            .as_deref()
            .map(|c| (!c.is_empty()).then_some(c))
    }
}

impl Server {
    /// Whether the form carries the viewer's CSRF token.
    fn csrf_ok(&self, v: &Viewer, form: &ActionForm) -> bool {
        !v.csrf.is_empty() && same_secret(&form.csrf, &v.csrf)
    }

    /// What every action starts with: the form's CSRF token, then the viewer's cluster.
    async fn acting(
        &self,
        v: &Viewer,
        form: &ActionForm,
        ns: &str,
    ) -> std::result::Result<Acting, Failure> {
        if !self.csrf_ok(v, form) {
            return Err(Failure::Refused(Refusal::ForeignOrigin));
        }
        Ok(self.cluster(v, ns).await?)
    }

    /// The page after an action: its outcome, or the refusal in the cluster's words.
    async fn answered(
        &self,
        cluster: &Acting,
        what: &str,
        done: Result<Outcome>,
        back: &str,
    ) -> Response {
        let (status, body) = match &done {
            Ok(o) => {
                let back = format!("/ns/{}/apps/{}", html::url(&o.namespace), html::url(&o.app));
                (
                    StatusCode::OK,
                    html::answer(&Answer::Done(&o.message), &back),
                )
            }
            Err(e) => (
                refusal_status(e),
                html::answer(
                    &Answer::Refused {
                        what,
                        why: &e.to_string(),
                    },
                    back,
                ),
            ),
        };
        let title = if done.is_ok() { "Done" } else { "Refused" };
        let mut resp = self.page(cluster, title, false, &body).await;
        *resp.status_mut() = status;
        resp
    }

    /// The dry run's answer with a button to do it, or its refusal.
    async fn confirmation(
        &self,
        cluster: &Acting,
        v: &Viewer,
        what: &str,
        dry: Result<Outcome>,
        action: &str,
        back: &str,
    ) -> Response {
        match dry {
            Ok(o) => {
                let to = o.to.clone().unwrap_or_default();
                let version = o.version.clone();
                let current = o.from.clone().unwrap_or_default();
                let pinned: Vec<(&str, &str)> = match o.action {
                    "rollback" => vec![("to", version.as_str()), ("current", current.as_str())],
                    "release" => vec![("current", current.as_str())],
                    "promote" => vec![("to", to.as_str())],
                    _ => vec![],
                };
                let body = html::confirm(
                    &Confirm {
                        title: what,
                        dry_run: &o.message,
                        action,
                        fields: &pinned,
                        back,
                    },
                    &v.csrf,
                );
                self.page(cluster, what, false, &body).await
            }
            Err(e) => self.answered(cluster, what, Err(e), back).await,
        }
    }
}

fn refusal_status(e: &Error) -> StatusCode {
    match e {
        Error::Denied(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Usage(_) => StatusCode::CONFLICT,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Api(_) | Error::ChecksFailed => StatusCode::BAD_GATEWAY,
    }
}

async fn promote(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Page {
    let cluster = s.acting(&v, &form, &ns).await?;
    let back = format!("/ns/{}/versions/{}", html::url(&ns), html::url(&name));
    let what = match &form.to {
        Some(to) => format!("Promote {name} to {to}"),
        None => format!("Promote {name}"),
    };
    if !form.confirmed() {
        let dry = lifecycle::promote(&cluster, &name, form.to.clone(), true).await;
        let action = format!("{back}/promote");
        return Ok(s
            .confirmation(&cluster, &v, &what, dry, &action, &back)
            .await);
    }
    let done = lifecycle::promote(&cluster, &name, form.to.clone(), false).await;
    Ok(s.answered(&cluster, &what, done, &back).await)
}

async fn approve(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Page {
    let cluster = s.acting(&v, &form, &ns).await?;
    let back = format!("/ns/{}/versions/{}", html::url(&ns), html::url(&name));
    let Some(stage) = form.stage.clone() else {
        return Err(Error::Usage("the approval names no stage".into()).into());
    };
    let comment = form.comment.clone().filter(|c| !c.trim().is_empty());
    let what = format!("Approve {name} for {stage}");
    let done = lifecycle::approve(&cluster, &name, &stage, comment, form.generation).await;
    Ok(s.answered(&cluster, &what, done, &back).await)
}

async fn release(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Page {
    let cluster = s.acting(&v, &form, &ns).await?;
    let back = format!("/ns/{}/versions/{}", html::url(&ns), html::url(&name));
    let what = format!("Release {name}");
    if !form.confirmed() {
        let dry = lifecycle::release(&cluster, &name, true, None).await;
        let action = format!("{back}/release");
        return Ok(s
            .confirmation(&cluster, &v, &what, dry, &action, &back)
            .await);
    }
    let done = lifecycle::release(&cluster, &name, false, form.seen()).await;
    Ok(s.answered(&cluster, &what, done, &back).await)
}

async fn rollback(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Path((ns, app)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Page {
    let cluster = s.acting(&v, &form, &ns).await?;
    let back = format!("/ns/{}/apps/{}", html::url(&ns), html::url(&app));
    if !form.confirmed() {
        let dry = lifecycle::rollback(&cluster, Some(&app), None, true, None).await;
        let what = match &dry {
            Ok(o) => format!("Roll {app} back to {}", o.version),
            Err(_) => format!("Roll {app} back"),
        };
        let action = format!("{back}/rollback");
        return Ok(s
            .confirmation(&cluster, &v, &what, dry, &action, &back)
            .await);
    }
    let what = format!(
        "Roll {app} back to {}",
        form.to.as_deref().unwrap_or("the previous release")
    );
    let done = lifecycle::rollback(&cluster, Some(&app), form.to.clone(), false, form.seen()).await;
    Ok(s.answered(&cluster, &what, done, &back).await)
}

/// The in-cluster sign-in page: paste a token (as the Kubernetes Dashboard and Headlamp offer),
/// kept in an HttpOnly cookie and sent to the apiserver only.
async fn login_page(State(s): State<Shared>) -> Response {
    if !s.guard.forwarding() {
        return Redirect::to("/").into_response();
    }
    let body = r#"<h1>Sign in</h1>
<p>This dashboard acts with your own Kubernetes identity. If an authenticating proxy does not sign you in, paste a token the cluster accepts (for example from <code>kubectl create token</code> or your OIDC login).</p>
<form method="post" action="/login"><label>Token <input type="password" name="token" autocomplete="off" required></label> <button type="submit">Sign in</button></form>
"#;
    let frame = Frame {
        title: "Sign in",
        acting_as: "nobody yet",
        live: None,
        namespace: &s.default_namespace,
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html::page(&frame, body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(s): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    let valid = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    if !s.guard.forwarding() || !valid {
        return Redirect::to("/login").into_response();
    }
    let mut resp = Redirect::to("/").into_response();
    if let Ok(c) = HeaderValue::from_str(&s.guard.session_cookie(Some(token))) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// Forgets a pasted token (in the cluster).
async fn logout(
    State(s): State<Shared>,
    Extension(v): Extension<Viewer>,
    Form(form): Form<ActionForm>,
) -> Response {
    if !s.csrf_ok(&v, &form) {
        return refused(&Refusal::ForeignOrigin);
    }
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(c) = HeaderValue::from_str(&s.guard.session_cookie(None)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("dashboard.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("dashboard.css"),
    )
        .into_response()
}
