//! The HTTPS admission server: decodes AdmissionReviews, gathers the facts the rules need (from
//! the caches, plus SubjectAccessReviews for promotions and releases), applies the pure rules and
//! encodes the answer. Fails closed: anything it cannot decide is denied with the reason.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use axum::{
    Router, body::Bytes, extract::State, http::StatusCode, response::IntoResponse, routing::post,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use k8s_openapi::{
    api::{
        authentication::v1::UserInfo,
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        core::v1::{Namespace, Secret},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, PostParams},
    core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    runtime::reflector::{ObjectRef, Store},
};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    certs::ReloadingResolver,
    rules::{self, AppFact, DELETION_PROTECTION_ANNOTATION, Facts, Op, Verdict, VersionFact},
};
use crate::{
    api::{AppVersion, GROUP, ToolJetApp},
    controller::{Readiness, appversion},
    materialize::missing_requirements,
    metrics::{AdmissionLabels, Metrics, WebhookLabels},
};

/// What the handlers share.
pub struct WebhookState {
    pub client: Client,
    pub versions: Store<AppVersion>,
    pub apps: Store<ToolJetApp>,
    pub managed_secrets: Store<Secret>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .with_state(state)
}

/// Serves `router` over TLS on `addr` with the (reloadable) certificate of `resolver`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    resolver: Arc<ReloadingResolver>,
) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the webhook to {addr}"))?;
    info!(%addr, "admission webhook listening");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

/// Decodes an AdmissionReview body into its request.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|e| format!("the AdmissionReview carries no request: {e}"))
}

fn respond(response: AdmissionResponse) -> axum::response::Response {
    (StatusCode::OK, axum::Json(response.into_review())).into_response()
}

async fn validate(State(state): State<Arc<WebhookState>>, body: Bytes) -> axum::response::Response {
    let started = Instant::now();
    let (response, kind, operation) = match decode(&body) {
        Err(reason) => (
            AdmissionResponse::invalid(reason),
            String::new(),
            String::new(),
        ),
        Ok(req) => {
            let response = review(&state, &req).await;
            (
                response,
                req.kind.kind.clone(),
                format!("{:?}", req.operation).to_uppercase(),
            )
        }
    };
    record(
        &state.metrics,
        "validate",
        kind,
        operation,
        &response,
        started,
    );
    respond(response)
}

async fn mutate(State(state): State<Arc<WebhookState>>, body: Bytes) -> axum::response::Response {
    let started = Instant::now();
    let (response, kind, operation) = match decode(&body) {
        Err(reason) => (
            AdmissionResponse::invalid(reason),
            String::new(),
            String::new(),
        ),
        Ok(req) => {
            let response = stamp(&req);
            (
                response,
                req.kind.kind.clone(),
                format!("{:?}", req.operation).to_uppercase(),
            )
        }
    };
    record(
        &state.metrics,
        "mutate",
        kind,
        operation,
        &response,
        started,
    );
    respond(response)
}

fn record(
    metrics: &Metrics,
    webhook: &'static str,
    kind: String,
    operation: String,
    response: &AdmissionResponse,
    started: Instant,
) {
    let result = if response.allowed {
        "allowed"
    } else {
        "denied"
    };
    metrics
        .admission_requests
        .get_or_create(&AdmissionLabels {
            webhook,
            kind,
            operation,
            result,
        })
        .inc();
    metrics
        .admission_duration
        .get_or_create(&WebhookLabels { webhook })
        .observe(started.elapsed().as_secs_f64());
}

fn typed<K: DeserializeOwned>(obj: &Option<DynamicObject>) -> Result<Option<K>, String> {
    obj.as_ref()
        .map(|o| {
            let value = serde_json::to_value(o).map_err(|e| e.to_string())?;
            serde_json::from_value(value).map_err(|e| format!("cannot decode the object: {e}"))
        })
        .transpose()
}

fn op(operation: &Operation) -> Option<Op> {
    match operation {
        Operation::Create => Some(Op::Create),
        Operation::Update => Some(Op::Update),
        Operation::Delete => Some(Op::Delete),
        Operation::Connect => None,
    }
}

/// The stamp of who promoted or released (mutating webhook).
pub fn stamp(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let user = req.user_info.username.as_deref().unwrap_or("unknown");
    let now = Timestamp::now().to_string();
    let patch = match (req.kind.kind.as_str(), &req.operation) {
        ("AppVersion", Operation::Update) => match (
            typed::<AppVersion>(&req.old_object),
            typed::<AppVersion>(&req.object),
        ) {
            (Ok(Some(old)), Ok(Some(new))) => rules::mutation_for_version(&old, &new, user, &now),
            (Err(e), _) | (_, Err(e)) => return response.deny(e),
            _ => None,
        },
        ("ToolJetApp", Operation::Create | Operation::Update) => {
            match (
                typed::<ToolJetApp>(&req.old_object),
                typed::<ToolJetApp>(&req.object),
            ) {
                (Ok(old), Ok(Some(new))) => rules::mutation_for_app(old.as_ref(), &new, user, &now),
                (Err(e), _) | (_, Err(e)) => return response.deny(e),
                _ => None,
            }
        }
        _ => None,
    };
    match patch {
        Some(patch) => response
            .with_patch(patch)
            .unwrap_or_else(|e| AdmissionResponse::invalid(e.to_string())),
        None => response,
    }
}

/// The validating decision.
pub async fn review(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let Some(op) = op(&req.operation) else {
        return response;
    };
    if !state.readiness.is_ready() {
        return response.deny("tooljet-operator is starting and has not synced its caches yet; retry in a few seconds");
    }
    let verdict = match req.kind.kind.as_str() {
        "AppVersion" => review_version(state, req, op).await,
        "ToolJetApp" => review_app(state, req, op).await,
        _ => Ok(Verdict::Allow),
    };
    match verdict {
        Ok(Verdict::Allow) => response,
        Ok(Verdict::Deny(message)) => {
            info!(kind = %req.kind.kind, name = %req.name, namespace = ?req.namespace, user = ?req.user_info.username, %message, "admission denied");
            response.deny(message)
        }
        Err(message) => {
            warn!(kind = %req.kind.kind, name = %req.name, %message, "admission could not be decided; denied");
            response.deny(message)
        }
    }
}

fn versions_of(
    state: &WebhookState,
    ns: &str,
    app: &str,
    except: Option<&str>,
) -> Vec<VersionFact> {
    state
        .versions
        .state()
        .into_iter()
        .filter(|v| {
            v.namespace().as_deref() == Some(ns)
                && v.spec.app == app
                && Some(v.name_any().as_str()) != except
        })
        .map(|v| VersionFact {
            name: v.name_any(),
            version_name: v.spec.version_name.clone(),
            environment: v.spec.environment.clone(),
        })
        .collect()
}

async fn review_version(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let old: Option<AppVersion> = typed(&req.old_object)?;
    let new: Option<AppVersion> = typed(&req.object)?;
    let subject = new
        .as_ref()
        .or(old.as_ref())
        .ok_or("the request carries no AppVersion")?;
    let ns = req.namespace.clone().unwrap_or_default();
    let user = req.user_info.username.clone().unwrap_or_default();
    let mut facts = Facts::default();
    if let Some(app) = state
        .apps
        .get(&ObjectRef::new(&subject.spec.app).within(&ns))
    {
        facts.app = Some(AppFact {
            name: app.name_any(),
            environments: app.spec.environments.clone(),
            versions: versions_of(state, &ns, &subject.spec.app, Some(&req.name)),
        });
    }
    if op == Op::Delete {
        facts.namespace_terminating = namespace_terminating(&state.client, &ns).await?;
    }
    if let (Some(old), Some(new)) = (&old, &new)
        && let Some((_, to)) = rules::promotion(old, new)
    {
        facts.permitted = Some(
            access(
                &state.client,
                &req.user_info,
                &ns,
                "promote",
                "environments",
                to,
            )
            .await?,
        );
        let resolved = appversion::resolve(&state.managed_secrets, &ns, &new.spec.app, to);
        let requires = new.spec.requires.clone().unwrap_or_default();
        facts.missing_in_target = missing_requirements(
            &requires.data_sources,
            &requires.constants,
            new.spec.definition.as_ref(),
            &resolved.data,
        );
    }
    Ok(rules::review_version(
        op,
        old.as_ref(),
        new.as_ref(),
        &user,
        &facts,
    ))
}

async fn review_app(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    op: Op,
) -> Result<Verdict, String> {
    let old: Option<ToolJetApp> = typed(&req.old_object)?;
    let new: Option<ToolJetApp> = typed(&req.object)?;
    let subject = old
        .as_ref()
        .or(new.as_ref())
        .ok_or("the request carries no ToolJetApp")?;
    let ns = req.namespace.clone().unwrap_or_default();
    let user = req.user_info.username.clone().unwrap_or_default();
    let mut facts = Facts {
        app: Some(AppFact {
            name: req.name.clone(),
            environments: subject.spec.environments.clone(),
            versions: versions_of(state, &ns, &req.name, None),
        }),
        ..Default::default()
    };
    if op == Op::Delete {
        facts.namespace_terminating = namespace_terminating(&state.client, &ns).await?;
    }
    if let Some(new) = &new {
        if rules::release(old.as_ref(), new).is_some() {
            let last = new.spec.environments.last().cloned().unwrap_or_default();
            facts.permitted = Some(
                access(
                    &state.client,
                    &req.user_info,
                    &ns,
                    "release",
                    "environments",
                    &last,
                )
                .await?,
            );
        }
        let before = old
            .as_ref()
            .and_then(|o| o.annotations().get(DELETION_PROTECTION_ANNOTATION));
        if new.annotations().get(DELETION_PROTECTION_ANNOTATION) != before {
            facts.may_unprotect = Some(
                access(
                    &state.client,
                    &req.user_info,
                    &ns,
                    "unprotect",
                    "tooljetapps",
                    &req.name,
                )
                .await?,
            );
        }
    }
    Ok(rules::review_app(
        op,
        old.as_ref(),
        new.as_ref(),
        &user,
        &facts,
    ))
}

async fn namespace_terminating(client: &Client, ns: &str) -> Result<bool, String> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(ns).await {
        Ok(found) => Ok(found.is_none_or(|n| n.metadata.deletion_timestamp.is_some())),
        Err(e) => Err(format!(
            "could not read namespace {ns} to check whether it is being deleted: {e}"
        )),
    }
}

/// Asks the apiserver whether the requesting user may `verb` the `resource` named `name`
/// (group tooljet.io) in `ns`.
async fn access(
    client: &Client,
    user: &UserInfo,
    ns: &str,
    verb: &str,
    resource: &str,
    name: &str,
) -> Result<bool, String> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_string()),
                group: Some(GROUP.to_string()),
                resource: Some(resource.to_string()),
                verb: Some(verb.to_string()),
                name: Some(name.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    match api.create(&PostParams::default(), &review).await {
        Ok(answer) => Ok(answer.status.is_some_and(|s| s.allowed)),
        Err(e) => Err(format!(
            "could not check permission to {verb} {resource}/{name}: {e}"
        )),
    }
}
