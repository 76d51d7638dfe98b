//! The admission webhook's HTTP layer: TLS, decoding AdmissionReviews and encoding the answers,
//! and the admission metrics. It decides nothing: [`super::server`] gathers facts and applies
//! the pure [`super::reviews`] and [`super::gates`].
//!
//! The port answers whoever can reach it (a NetworkPolicy in the chart narrows that, off by
//! default), so every caller is bounded: connections, header and request time, body size, reviews
//! in flight; a body that is not an AdmissionReview gets a 4xx without reaching the rules; and
//! metric labels come from closed sets, never from the request.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{StatusCode, header::CONTENT_LENGTH},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
};
use hyper::server::conn::{http1, http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use kube::{
    api::DynamicObject,
    core::admission::{
        AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND,
    },
};
use serde_json::error::Category;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    certs::ReloadingResolver,
    server::{WebhookState, review, stamp},
};
use crate::metrics::{
    AdmissionKind, AdmissionLabels, AdmissionOperation, AdmissionResult, Metrics, Webhook,
    WebhookLabels,
};

/// The largest body accepted. An AdmissionReview carries `object` and `oldObject`, each at most
/// the apiserver's request limit (3 MiB), plus the request's metadata: 8 MiB holds the largest
/// legitimate review with room to spare, and is all a caller can make us buffer per request.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Time for a TLS handshake, so a connection that never completes one does not hold its slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time for an HTTP/1 request's headers. hyper starts the clock when it waits for the next
/// request, so this also closes idle keep-alive connections; the apiserver then reconnects.
/// (HTTP/2 has no such bound in hyper: see [`H2_KEEP_ALIVE_INTERVAL`].)
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a request is served, body and decision included, when the caller does not say how
/// long it waits. The apiserver does say it (see [`apiserver_wait`]); with its default of 5 s
/// (the chart's and the generated configurations' `timeoutSeconds`), that bound is what applies.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the decision leaves of the apiserver's wait for the answer to travel back. The apiserver
/// rounds the wait it announces *up* to whole seconds, so its own deadline can be nearly a second
/// before the announced one: the decision ends this much before the announced deadline (at most
/// half of it), and a review that is not decided by then is refused with a message that says why
/// ([`too_slow`]), rather than left to fail in the apiserver as "context deadline exceeded".
pub const ANSWER_MARGIN: Duration = Duration::from_millis(1250);

/// Connections served at once; further ones wait in the listen backlog until one ends. The
/// apiserver needs a few (HTTP/2 multiplexes its reviews); the bound caps memory and descriptors.
pub const MAX_CONNECTIONS: usize = 256;

/// Reviews read and decided at once, across connections. Further requests wait, within
/// [`REQUEST_TIMEOUT`].
pub const MAX_IN_FLIGHT: usize = 16;

/// The bodies of the reviews in flight, in bytes of their declared lengths: a review is parsed
/// into trees several times its size (the object and the stored one, then each as its kind), so
/// the count alone would let sixteen reviews of 1 MiB definitions take hundreds of MiB. A review
/// counts at least [`MIN_REVIEW_COST`] and at most the whole budget (one larger, or of unknown
/// length, is decided alone). Small reviews, the common case, are bounded by the count only.
pub const MAX_IN_FLIGHT_BYTES: usize = 4 * 1024 * 1024;

/// What the smallest review counts against [`MAX_IN_FLIGHT_BYTES`].
pub const MIN_REVIEW_COST: usize = 64 * 1024;

/// The unit of the byte budget's semaphore.
const BUDGET_UNIT: usize = 1024;

/// HTTP/2 streams per connection (hyper's default is 200).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// HTTP/2 pings on a quiet connection, so a peer that vanished (no FIN) frees its slot: HTTP/2
/// has no header timeout to do it.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// `/validate` and `/mutate`, bounded.
pub fn router(state: Arc<WebhookState>) -> Router {
    let routes = Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .with_state(state);
    bounded(routes, REQUEST_TIMEOUT)
}

/// When the decision of a request must be made by, set by [`limit`] from what the apiserver
/// waits ([`decision_deadline`]) and read by [`admit`].
#[derive(Clone, Copy, Debug)]
struct Deadline {
    arrived: tokio::time::Instant,
    at: tokio::time::Instant,
    /// What the apiserver announced it waits (or [`REQUEST_TIMEOUT`]), for the refusal's message.
    waited: Duration,
}

/// How long the apiserver waits for the answer to `uri`: it sends a webhook call with the query
/// parameter `timeout` (Go's duration syntax, e.g. `5s`: the webhook's `timeoutSeconds`, or less
/// when the request being admitted has less time left, rounded up to a second). Capped at
/// [`REQUEST_TIMEOUT`], which also applies when there is none or it cannot be read.
pub fn apiserver_wait(uri: &axum::http::Uri) -> Duration {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(go_duration)
        .filter(|d| !d.is_zero())
        .map_or(REQUEST_TIMEOUT, |d| d.min(REQUEST_TIMEOUT))
}

/// A duration in Go's `time.Duration.String()` syntax, as the apiserver writes one: a sequence of
/// decimal numbers each with a unit (`h`, `m`, `s`, `ms`, `us`, `µs`, `ns`), e.g. `5s`, `1m0s`,
/// `1.5s`. `None` for anything else, or a negative one.
fn go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// When a decision must be made by, for a request that arrived at `arrived` and that the
/// apiserver waits `waited` for: [`ANSWER_MARGIN`] before the end of the wait, or half-way
/// through a wait shorter than twice the margin.
fn decision_deadline(arrived: tokio::time::Instant, waited: Duration) -> Deadline {
    let budget = waited.saturating_sub(ANSWER_MARGIN).max(waited / 2);
    Deadline {
        arrived,
        at: arrived + budget,
        waited,
    }
}

/// What the [`limit`] middleware shares across requests.
#[derive(Clone)]
struct Limits {
    in_flight: Arc<Semaphore>,
    /// [`MAX_IN_FLIGHT_BYTES`], in [`BUDGET_UNIT`]s.
    bytes: Arc<Semaphore>,
    request_timeout: Duration,
}

/// What a request counts against [`MAX_IN_FLIGHT_BYTES`], in [`BUDGET_UNIT`]s.
fn review_cost(declared: Option<u64>) -> u32 {
    let bytes = declared
        .map_or(MAX_IN_FLIGHT_BYTES, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
        .clamp(MIN_REVIEW_COST, MAX_IN_FLIGHT_BYTES);
    u32::try_from(bytes.div_ceil(BUDGET_UNIT)).expect("the budget fits in u32 units")
}

/// Bounds every route of `routes`: body size, reviews in flight, time per request.
fn bounded(routes: Router, request_timeout: Duration) -> Router {
    let limits = Limits {
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        bytes: Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES / BUDGET_UNIT)),
        request_timeout,
    };
    routes
        .layer(middleware::from_fn_with_state(limits, limit))
        // Read by the `Bytes` extraction in `read`; axum's default (2 MB) is too small for a
        // review of a large object.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// Waits for a slot among [`MAX_IN_FLIGHT`] and for its body's share of [`MAX_IN_FLIGHT_BYTES`],
/// and runs the request, all within the time the apiserver waits for it (at most the timeout):
/// a request that waits or sends its body until then is answered 503 and dropped. A request that
/// is read but decided slowly is refused by [`admit`] before that, at its [`Deadline`].
async fn limit(State(limits): State<Limits>, mut request: Request, next: Next) -> Response {
    let cost = review_cost(declared_length(&request));
    let waited = apiserver_wait(request.uri()).min(limits.request_timeout);
    request
        .extensions_mut()
        .insert(decision_deadline(tokio::time::Instant::now(), waited));
    let work = async {
        // The semaphores are never closed, so acquiring only waits.
        let Ok(_slot) = limits.in_flight.acquire().await else {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        };
        let Ok(_share) = limits.bytes.acquire_many(cost).await else {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        };
        next.run(request).await
    };
    match tokio::time::timeout(waited, work).await {
        Ok(response) => response,
        Err(_) => {
            warn!(
                timeout = ?waited,
                "admission request abandoned: not answered in time"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the admission review was not answered within {}s",
                    waited.as_secs_f64()
                ),
            )
                .into_response()
        }
    }
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
    // The protocol is the one ALPN negotiated, not sniffed from the first bytes: sniffing has no
    // timeout, so a client that sent a few bytes and stalled would hold its connection forever.
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the webhook to {addr}"))?;
    info!(%addr, "admission webhook listening");
    loop {
        // A slot first, then accept: at the bound, new connections wait in the backlog.
        let slot = connections
            .clone()
            .acquire_owned()
            .await
            .context("the webhook's connection semaphore is closed")?;
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let (h1, h2) = (h1.clone(), h2.clone());
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let io = TokioIo::new(tls);
            let served = if negotiated_h2 {
                h2.serve_connection(io, service).await
            } else {
                h1.serve_connection(io, service).await
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

/// Why a request gets no decision. The text goes back to the caller and into the log: it says
/// what is wrong and where, never what the body contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the body is larger than {} MiB", MAX_BODY_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("the body could not be read")]
    Unreadable,
    #[error("the body is not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error(
        "the body is not an AdmissionReview: a field is missing or has the wrong type \
         (line {line}, column {column})"
    )]
    NotAReview { line: usize, column: usize },
    #[error("the body is not an admission.k8s.io/v1 AdmissionReview")]
    WrongType,
    #[error("the AdmissionReview carries no request")]
    NoRequest,
    #[error("the AdmissionReview's request has no uid")]
    NoUid,
}

impl Invalid {
    pub fn status(self) -> StatusCode {
        match self {
            Invalid::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Decodes an `admission.k8s.io/v1` AdmissionReview body into its request.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, Invalid> {
    // serde's messages quote the offending values, so only the category and position are kept.
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            Category::Data => Invalid::NotAReview { line, column },
            Category::Syntax | Category::Eof | Category::Io => Invalid::NotJson { line, column },
        }
    })?;
    if review.types.api_version != META_API_VERSION_V1 || review.types.kind != META_KIND {
        return Err(Invalid::WrongType);
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| Invalid::NoRequest)?;
    // The uid is what the answer is matched by: without one, no answer can be valid.
    if request.uid.is_empty() {
        return Err(Invalid::NoUid);
    }
    Ok(request)
}

/// The body, bounded: a declared length over [`MAX_BODY_BYTES`] is refused before a byte is
/// read; an undeclared one (chunked, HTTP/2) is cut off at the bound by [`DefaultBodyLimit`].
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

async fn read(request: Request) -> Result<Bytes, Invalid> {
    let declared = declared_length(&request);
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(Invalid::TooLarge);
    }
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Invalid::TooLarge
            } else {
                Invalid::Unreadable
            }
        })
}

/// One admission review end to end: read and decode the body, let `decide` answer a valid
/// review by its [`Deadline`] (a review not decided by then is refused: [`too_slow`]), count the
/// answer and encode it. Anything else is answered 4xx with the reason and counted as
/// `invalid`; it never reaches `decide`.
async fn admit<F, Fut>(metrics: &Metrics, webhook: Webhook, request: Request, decide: F) -> Response
where
    F: FnOnce(AdmissionRequest<DynamicObject>) -> Fut,
    Fut: Future<Output = AdmissionResponse>,
{
    let deadline = request
        .extensions()
        .get::<Deadline>()
        .copied()
        .unwrap_or_else(|| decision_deadline(tokio::time::Instant::now(), REQUEST_TIMEOUT));
    let body = read(request).await;
    // Timed from here: the histogram measures deciding a review, not receiving it.
    let started = Instant::now();
    let decoded = body.and_then(|body| decode(&body));
    let req = match decoded {
        Ok(req) => req,
        Err(invalid) => {
            debug!(webhook = webhook.as_str(), reason = %invalid, "admission request refused");
            record(metrics, AdmissionLabels::invalid(webhook), started);
            return (invalid.status(), invalid.to_string()).into_response();
        }
    };
    let kind = AdmissionKind::of(&req.kind.group, &req.kind.kind);
    let operation = AdmissionOperation::from(&req.operation);
    let subject = Subject::of(&req);
    let unanswered = AdmissionResponse::from(&req);
    let (response, result) = match tokio::time::timeout_at(deadline.at, decide(req)).await {
        Ok(response) if response.allowed => (response, AdmissionResult::Allowed),
        Ok(response) => (response, AdmissionResult::Denied),
        Err(_) => {
            let message = too_slow(&subject, deadline.arrived.elapsed(), deadline.waited);
            warn!(
                webhook = webhook.as_str(),
                kind = %subject.kind,
                namespace = %subject.namespace,
                name = %subject.name,
                operation = %subject.operation,
                waited = ?deadline.waited,
                "admission review refused: not decided before the apiserver stops waiting"
            );
            (
                refuse_unavailable(unanswered, message),
                AdmissionResult::Timeout,
            )
        }
    };
    let labels = AdmissionLabels {
        webhook,
        kind,
        operation,
        result,
    };
    record(metrics, labels, started);
    respond(response)
}

/// What a refusal names of the object under review. Kind, namespace and name are the apiserver's
/// (the object's name is never a value); for a generated name not yet assigned, `name` says so.
struct Subject {
    kind: String,
    namespace: String,
    name: String,
    operation: &'static str,
}

impl Subject {
    fn of(req: &AdmissionRequest<DynamicObject>) -> Subject {
        Subject {
            kind: req.kind.kind.clone(),
            namespace: req.namespace.clone().unwrap_or_default(),
            name: if req.name.is_empty() {
                "(name not yet generated)".into()
            } else {
                req.name.clone()
            },
            operation: AdmissionOperation::from(&req.operation).as_str(),
        }
    }
}

/// The refusal of a review that was not decided in time: the object, the time spent against what
/// the apiserver waits, the likely cause and what to do. Nothing was changed.
fn too_slow(subject: &Subject, spent: Duration, waited: Duration) -> String {
    let Subject {
        kind,
        namespace,
        name,
        operation,
    } = subject;
    let object = if namespace.is_empty() {
        name.clone()
    } else {
        format!("{namespace}/{name}")
    };
    format!(
        "{kind} {object}: tooljet-operator could not decide this {operation} in {:.1}s of the {}s \
         the API server waits for it (its checks read from the API server, which answered too \
         slowly: it is likely overloaded). Nothing was changed; retry the request, and if it \
         keeps failing, look at the API server's load and the operator's logs",
        spent.as_secs_f64(),
        waited.as_secs_f64(),
    )
}

/// `response` turned into a refusal with `message`, as 503 Service Unavailable: the request was
/// not judged, so it is not "forbidden".
fn refuse_unavailable(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut refused = response.deny(message);
    refused.result.code = StatusCode::SERVICE_UNAVAILABLE.as_u16();
    refused.result.reason = "ServiceUnavailable".into();
    refused
}

fn respond(response: AdmissionResponse) -> Response {
    (StatusCode::OK, axum::Json(response.into_review())).into_response()
}

async fn validate(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let shared = &state;
    admit(
        &state.metrics,
        Webhook::Validate,
        request,
        |mut req| async move { review(shared, &mut req).await },
    )
    .await
}

async fn mutate(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let shared = &state;
    admit(
        &state.metrics,
        Webhook::Mutate,
        request,
        |mut req| async move { stamp(shared, &mut req).await },
    )
    .await
}

fn record(metrics: &Metrics, labels: AdmissionLabels, started: Instant) {
    let webhook = labels.webhook;
    metrics.admission_requests.get_or_create(&labels).inc();
    metrics
        .admission_duration
        .get_or_create(&WebhookLabels { webhook })
        .observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;

    #[test]
    fn a_review_counts_its_declared_length_within_the_budget() {
        let units = |bytes: usize| (bytes / BUDGET_UNIT) as u32;
        assert_eq!(review_cost(Some(100)), units(MIN_REVIEW_COST));
        assert_eq!(review_cost(Some(1024 * 1024)), units(1024 * 1024));
        assert_eq!(review_cost(Some(1024 * 1024 + 1)), units(1024 * 1024) + 1);
        // Larger than the budget, or of unknown length: decided alone, never refused for it.
        assert_eq!(review_cost(Some(u64::MAX)), units(MAX_IN_FLIGHT_BYTES));
        assert_eq!(review_cost(None), units(MAX_IN_FLIGHT_BYTES));
        const { assert!(MAX_IN_FLIGHT_BYTES / MIN_REVIEW_COST >= MAX_IN_FLIGHT) };
    }

    fn review_json(group: &str, kind: &str, operation: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": group, "version": "v1alpha1", "kind": kind },
                "resource": { "group": group, "version": "v1alpha1", "resource": "appversions" },
                "name": "v", "namespace": "ns", "operation": operation,
                "userInfo": { "username": "alice" },
                "object": { "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": "v" } },
                "oldObject": null,
            },
        })
    }

    fn bytes(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[test]
    fn a_v1_review_with_a_request_decodes() {
        let req = decode(&bytes(&review_json("tooljet.io", "AppVersion", "CREATE"))).unwrap();
        assert_eq!(req.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(req.kind.kind, "AppVersion");
    }

    #[test]
    fn anything_but_a_v1_review_with_a_request_and_uid_is_invalid() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = review_json("tooljet.io", "AppVersion", "CREATE");
            f(&mut v);
            bytes(&v)
        };
        // (what, body, whether the error is the expected one)
        type Case = (&'static str, Vec<u8>, fn(Invalid) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", vec![], |e| matches!(e, Invalid::NotJson { .. })),
            ("not JSON", b"hello".to_vec(), |e| {
                matches!(e, Invalid::NotJson { .. })
            }),
            ("truncated", b"{\"apiVersion\":".to_vec(), |e| {
                matches!(e, Invalid::NotJson { .. })
            }),
            ("a JSON array", b"[]".to_vec(), |e| {
                matches!(e, Invalid::NotAReview { .. })
            }),
            (
                "v1beta1",
                with(&|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
                |e| e == Invalid::WrongType,
            ),
            (
                "another kind",
                with(&|v| v["kind"] = json!("ConversionReview")),
                |e| e == Invalid::WrongType,
            ),
            (
                "no apiVersion",
                with(&|v| {
                    v.as_object_mut().unwrap().remove("apiVersion");
                }),
                |e| matches!(e, Invalid::NotAReview { .. }),
            ),
            (
                "no request",
                with(&|v| {
                    v.as_object_mut().unwrap().remove("request");
                }),
                |e| e == Invalid::NoRequest,
            ),
            (
                "a null request",
                with(&|v| v["request"] = Value::Null),
                |e| e == Invalid::NoRequest,
            ),
            (
                "no uid",
                with(&|v| {
                    v["request"].as_object_mut().unwrap().remove("uid");
                }),
                |e| matches!(e, Invalid::NotAReview { .. }),
            ),
            (
                "an empty uid",
                with(&|v| v["request"]["uid"] = json!("")),
                |e| e == Invalid::NoUid,
            ),
            (
                "an unknown operation",
                with(&|v| v["request"]["operation"] = json!("PATCH")),
                |e| matches!(e, Invalid::NotAReview { .. }),
            ),
        ];
        for (case, body, expected) in cases {
            match decode(&body) {
                Ok(_) => panic!("{case}: decoded"),
                Err(e) => {
                    assert!(expected(e), "{case}: {e:?}");
                    assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{case}");
                }
            }
        }
    }

    #[test]
    fn reasons_never_quote_the_body() {
        let canary = "canary-7f3a9c";
        let mut bodies = vec![
            canary.as_bytes().to_vec(),
            format!("{{\"{canary}\": ").into_bytes(),
        ];
        for (path, value) in [
            ("apiVersion", json!(canary)),
            ("kind", json!(canary)),
            ("request", json!(canary)),
        ] {
            let mut v = review_json("tooljet.io", "AppVersion", "CREATE");
            v[path] = value;
            bodies.push(bytes(&v));
        }
        for (field, value) in [
            ("operation", json!(canary)),
            ("uid", json!([canary])),
            ("kind", json!(canary)),
            ("userInfo", json!({ "username": [canary] })),
        ] {
            let mut v = review_json("tooljet.io", "AppVersion", "CREATE");
            v["request"][field] = value;
            bodies.push(bytes(&v));
        }
        for body in bodies {
            let reason = decode(&body).map(|_| ()).unwrap_err().to_string();
            assert!(!reason.contains(canary), "{reason}");
        }
    }

    /// The real layering and `admit`, with a decision that counts its calls.
    fn app(
        metrics: Arc<Metrics>,
        decided: Arc<AtomicUsize>,
        decision: fn(&AdmissionRequest<DynamicObject>) -> Option<AdmissionResponse>,
        request_timeout: Duration,
    ) -> Router {
        let handler = move |webhook: Webhook| {
            let (metrics, decided) = (metrics.clone(), decided.clone());
            move |request: Request| {
                let (metrics, decided) = (metrics.clone(), decided.clone());
                async move {
                    admit(&metrics, webhook, request, |req| async move {
                        decided.fetch_add(1, Ordering::SeqCst);
                        match decision(&req) {
                            Some(response) => response,
                            // A decision that never comes.
                            None => std::future::pending().await,
                        }
                    })
                    .await
                }
            }
        };
        let routes = Router::new()
            .route("/validate", post(handler(Webhook::Validate)))
            .route("/mutate", post(handler(Webhook::Mutate)));
        bounded(routes, request_timeout)
    }

    fn allow(req: &AdmissionRequest<DynamicObject>) -> Option<AdmissionResponse> {
        Some(AdmissionResponse::from(req))
    }

    fn deny(req: &AdmissionRequest<DynamicObject>) -> Option<AdmissionResponse> {
        Some(AdmissionResponse::from(req).deny("no"))
    }

    fn never(_: &AdmissionRequest<DynamicObject>) -> Option<AdmissionResponse> {
        None
    }

    async fn call(
        app: Router,
        path: &str,
        request: axum::http::request::Builder,
        body: Body,
    ) -> (StatusCode, String, String) {
        let response = app
            .oneshot(request.method("POST").uri(path).body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn series(
        metrics: &Metrics,
        webhook: &str,
        kind: &str,
        operation: &str,
        result: &str,
    ) -> String {
        let wanted = format!(
            "tooljet_operator_admission_requests_total{{webhook=\"{webhook}\",kind=\"{kind}\",operation=\"{operation}\",result=\"{result}\"}} "
        );
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&wanted).map(str::to_string))
            .unwrap_or_else(|| "absent".into())
    }

    #[tokio::test]
    async fn a_valid_review_is_decided_and_counted_under_its_kind() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), deny, REQUEST_TIMEOUT);
        let body = bytes(&review_json("tooljet.io", "AppVersion", "UPDATE"));
        let (status, content_type, text) = call(
            app,
            "/validate",
            axum::http::Request::builder(),
            Body::from(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["response"]["allowed"], json!(false));
        assert_eq!(
            answer["response"]["uid"],
            json!("705ab4f5-6393-11e8-b7cc-42010a800002")
        );
        assert_eq!(decided.load(Ordering::SeqCst), 1);
        assert_eq!(
            series(&metrics, "validate", "AppVersion", "UPDATE", "denied"),
            "1"
        );
    }

    #[tokio::test]
    async fn an_unknown_kind_is_counted_as_other() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), allow, REQUEST_TIMEOUT);
        let body = bytes(&review_json("tooljet.io", "Canary-7f3a9c", "CREATE"));
        let (status, _, _) = call(
            app,
            "/mutate",
            axum::http::Request::builder(),
            Body::from(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            series(&metrics, "mutate", "other", "CREATE", "allowed"),
            "1"
        );
        assert!(!metrics.render().contains("Canary"));
    }

    #[tokio::test]
    async fn a_body_that_is_not_a_review_gets_400_and_is_never_decided() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), allow, REQUEST_TIMEOUT);
        for body in [
            "canary-7f3a9c".to_string(),
            json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview" }).to_string(),
            json!({ "kind": "canary-7f3a9c" }).to_string(),
        ] {
            let (status, content_type, text) = call(
                app.clone(),
                "/validate",
                axum::http::Request::builder(),
                Body::from(body),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert!(content_type.starts_with("text/plain"), "{content_type}");
            assert!(!text.contains("canary"), "{text}");
        }
        assert_eq!(decided.load(Ordering::SeqCst), 0);
        assert_eq!(
            series(&metrics, "validate", "other", "other", "invalid"),
            "3"
        );
        assert!(!metrics.render().contains("canary"));
    }

    #[tokio::test]
    async fn a_declared_oversized_body_gets_413_before_it_is_read() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), allow, REQUEST_TIMEOUT);
        let request =
            axum::http::Request::builder().header(CONTENT_LENGTH, (MAX_BODY_BYTES + 1).to_string());
        // The body never ends: only the declared length can have refused it.
        let endless =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let (status, _, text) = call(app, "/validate", request, endless).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        assert_eq!(text, "the body is larger than 8 MiB");
        assert_eq!(decided.load(Ordering::SeqCst), 0);
        assert_eq!(
            series(&metrics, "validate", "other", "other", "invalid"),
            "1"
        );
    }

    #[tokio::test]
    async fn an_undeclared_oversized_body_is_cut_off_with_413() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), allow, REQUEST_TIMEOUT);
        let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
        let chunks = (0..MAX_BODY_BYTES / chunk.len() + 1)
            .map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (status, _, _) = call(app, "/mutate", axum::http::Request::builder(), body).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(decided.load(Ordering::SeqCst), 0);
        assert_eq!(series(&metrics, "mutate", "other", "other", "invalid"), "1");
    }

    #[tokio::test]
    async fn a_body_at_the_bound_is_read() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), allow, REQUEST_TIMEOUT);
        let mut body = bytes(&review_json("tooljet.io", "ToolJetApp", "DELETE"));
        // Trailing whitespace is valid JSON: the largest accepted body.
        body.resize(MAX_BODY_BYTES, b' ');
        let request = axum::http::Request::builder().header(CONTENT_LENGTH, body.len().to_string());
        let (status, _, _) = call(app, "/validate", request, Body::from(body)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            series(&metrics, "validate", "ToolJetApp", "DELETE", "allowed"),
            "1"
        );
    }

    #[test]
    fn the_wait_the_apiserver_announces_is_read_and_capped() {
        let wait = |uri: &str| apiserver_wait(&uri.parse().unwrap());
        // As the apiserver's REST client writes it (Go's Duration.String()).
        assert_eq!(wait("/validate?timeout=5s"), Duration::from_secs(5));
        assert_eq!(wait("/validate?timeout=1s"), Duration::from_secs(1));
        assert_eq!(
            wait("/mutate?a=b&timeout=2.5s"),
            Duration::from_millis(2500)
        );
        assert_eq!(wait("/validate?timeout=1m0s"), REQUEST_TIMEOUT);
        assert_eq!(wait("/validate?timeout=1h2m3.5s"), REQUEST_TIMEOUT);
        assert_eq!(wait("/validate?timeout=750ms"), Duration::from_millis(750));
        // None, unreadable, zero or negative: the webhook's own bound.
        for uri in [
            "/validate",
            "/validate?timeout=",
            "/validate?timeout=5",
            "/validate?timeout=s",
            "/validate?timeout=5x",
            "/validate?timeout=-5s",
            "/validate?timeout=0s",
        ] {
            assert_eq!(wait(uri), REQUEST_TIMEOUT, "{uri}");
        }
    }

    #[test]
    fn a_decision_ends_a_margin_before_the_wait_or_half_way_through_a_short_one() {
        let now = tokio::time::Instant::now();
        let budget = |waited: Duration| decision_deadline(now, waited).at - now;
        assert_eq!(budget(Duration::from_secs(5)), Duration::from_millis(3750));
        assert_eq!(budget(Duration::from_secs(10)), Duration::from_millis(8750));
        assert_eq!(budget(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(budget(Duration::from_secs(1)), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_not_decided_before_the_apiserver_stops_waiting_is_refused_with_why() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        // The decision never comes, as when the checks' reads from the apiserver hang.
        let app = app(metrics.clone(), decided.clone(), never, REQUEST_TIMEOUT);
        let body = bytes(&review_json("tooljet.io", "AppVersion", "CREATE"));
        let started = tokio::time::Instant::now();
        let (status, _, text) = call(
            app,
            "/validate?timeout=5s",
            axum::http::Request::builder(),
            Body::from(body),
        )
        .await;
        // Answered, as an AdmissionReview the apiserver accepts (its uid), before it stops waiting.
        assert_eq!(started.elapsed(), Duration::from_millis(3750));
        assert_eq!(status, StatusCode::OK);
        let answer: Value = serde_json::from_str(&text).unwrap();
        let response = &answer["response"];
        assert_eq!(
            response["uid"],
            json!("705ab4f5-6393-11e8-b7cc-42010a800002")
        );
        assert_eq!(response["allowed"], json!(false));
        assert_eq!(response["status"]["code"], json!(503));
        assert_eq!(response["status"]["reason"], json!("ServiceUnavailable"));
        assert_eq!(
            response["status"]["message"],
            json!(
                "AppVersion ns/v: tooljet-operator could not decide this CREATE in 3.8s of the 5s \
                 the API server waits for it (its checks read from the API server, which answered \
                 too slowly: it is likely overloaded). Nothing was changed; retry the request, and \
                 if it keeps failing, look at the API server's load and the operator's logs"
            )
        );
        assert_eq!(decided.load(Ordering::SeqCst), 1);
        assert_eq!(
            series(&metrics, "validate", "AppVersion", "CREATE", "timeout"),
            "1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_sent_before_the_apiserver_stops_waiting_gets_503() {
        let (metrics, decided) = (Arc::new(Metrics::default()), Arc::new(AtomicUsize::new(0)));
        let app = app(metrics.clone(), decided.clone(), allow, REQUEST_TIMEOUT);
        // The body never ends: no review to answer, so the bound on the request answers.
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let started = tokio::time::Instant::now();
        let (status, _, text) = call(
            app,
            "/validate?timeout=2s",
            axum::http::Request::builder(),
            stalled,
        )
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text, "the admission review was not answered within 2s");
        assert_eq!(decided.load(Ordering::SeqCst), 0);
    }
}
