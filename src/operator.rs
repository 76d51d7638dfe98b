//! The operator process: caches, controllers, admission webhook, health and metrics, wired
//! together. Every replica keeps the caches and serves the webhook; only the leader reconciles.
//! Every task runs in one `JoinSet`: the process ends (and the pod restarts) when any of them
//! ends, except the controllers' graceful shutdown on SIGTERM.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, routing::get};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::{
        events::{Recorder, Reporter},
        reflector::Store,
        watcher,
    },
};
use tokio::task::JoinSet;
use tracing::info;

use crate::{
    api::{EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Notification},
    cache::{CachedConfig, Echoes, Hubs, Lean, Lookups, ManagedSecret, Readiness, RefIndex, watch},
    controller::{
        self, Context, MANAGER, Settings, app, appversion, envconfig, notification, policy,
    },
    leader::Leadership,
    materialize::HashKey,
    metrics::Metrics,
    webhook::{access, certs, http, server},
};

/// The admission webhook's listener and certificate.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub addr: SocketAddr,
    pub certs: certs::Source,
    /// How long an allowing SubjectAccessReview answer is reused (see `webhook::access`).
    pub access_review_ttl: Duration,
}

/// Everything the process needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    pub settings: Settings,
    /// The operator's own namespace: the content-hash key Secret lives there.
    pub namespace: String,
    /// `/metrics`, `/healthz`, `/readyz` (plain HTTP).
    pub health_addr: Option<SocketAddr>,
    /// How `/healthz` judges the replica.
    pub liveness: Liveness,
    pub webhook: Option<WebhookOptions>,
    /// How `/metrics` reads the allocator's figures (`tooljet_operator_heap_*_bytes`); the
    /// binary's allocator knows them, a library user's may not.
    pub heap: Option<crate::metrics::HeapReader>,
}

/// How `/healthz` (the liveness probe) judges the replica.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// Liveness fails once the replica has been unready (caches not synced, webhook certificate
    /// not loaded) for longer than this, so that a replica that cannot become ready is restarted
    /// instead of sitting unready forever.
    pub ready_deadline: Duration,
}

/// Long enough for the initial lists of a large cluster and for the certificate retries' longest
/// wait, short enough that a stuck replica does not wait for an operator to notice.
pub const DEFAULT_READY_DEADLINE: Duration = Duration::from_secs(300);

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            ready_deadline: DEFAULT_READY_DEADLINE,
        }
    }
}

/// Runs until SIGTERM / Ctrl-C (graceful) or until a component fails.
pub async fn run(client: Client, options: Options, leadership: Arc<Leadership>) -> Result<()> {
    // The content-hash key first: every hash this process computes or checks (reconciles and
    // admission reviews) uses it, so nothing that hashes may start without it.
    let hash_key = Arc::new(
        controller::secrets::load_or_create_hash_key(&client, &options.namespace)
            .await
            .context("loading the installation's content-hash key")?,
    );
    let metrics = Arc::new(Metrics::with_heap(options.heap));
    metrics.prime(
        &controller::CONTROLLERS,
        controller::Step::WriteStatus.label(),
    );
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    let lists = watch::Lists::probe(&client).await;
    let caches = Caches::watch(&client, lists);
    let resolver = Arc::new(certs::ReloadingResolver::default());
    if let Some(webhook) = &options.webhook {
        serve_webhook(
            &mut tasks, &client, webhook, &caches, &hash_key, &metrics, &resolver,
        );
    }
    if let Some(addr) = options.health_addr {
        let health = Health {
            metrics: metrics.clone(),
            readiness: caches.readiness.clone(),
            resolver: options.webhook.as_ref().map(|_| resolver.clone()),
            liveness: options.liveness,
            unready_since: Mutex::new(Some(Instant::now())),
        };
        serve_health(&mut tasks, addr, health).await?;
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(options.settings.instance.clone()),
            },
        ),
        managed_secrets: caches.managed_secrets.clone(),
        refs: Arc::new(RefIndex::default()),
        readiness: caches.readiness.clone(),
        lookups: caches.lookups.clone(),
        metrics,
        leadership: leadership.clone(),
        hash_key,
        echoes: Arc::new(Echoes::default()),
        unstamped: Arc::default(),
        sharing: Arc::default(),
        written: Arc::default(),
        statuses: Arc::default(),
        http: crate::notify::send::Sender::new(options.settings.allow_local_endpoints),
        lists,
    });
    run_controllers(&mut tasks, &options.settings, caches, ctx, &leadership);
    supervise(tasks).await
}

/// Every kind's cache, and the hubs that hand their changes to the controllers (subscribe, then
/// run them).
struct Caches {
    readiness: Arc<Readiness>,
    lookups: Lookups,
    managed_secrets: Store<ManagedSecret>,
    notifications: Store<Notification>,
    hubs: Hubs,
}

impl Caches {
    /// One watch and one cache per kind, shared by the controllers and the webhook.
    fn watch(client: &Client, lists: watch::Lists) -> Caches {
        let readiness = Readiness::new(&[
            "managed Secrets",
            "EnvironmentConfigs",
            "AppVersions",
            "ToolJetApps",
            "PromotionPolicies",
            "Approvals",
            "Notifications",
            envconfig::REFERENCED_SECRETS,
        ]);
        let any = || lists.of(watcher::Config::default().any_semantic());
        let (managed_secrets, managed_hub) = watch::watch_as(
            Api::<Lean<Secret>>::all(client.clone()),
            lists.of(watcher::Config::default()
                .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))),
            readiness.clone(),
            "managed Secrets",
            |Lean(secret)| ManagedSecret::from(secret),
        );
        let (configs, mut config_hub) = watch::watch_projected(
            client,
            any(),
            readiness.clone(),
            "EnvironmentConfigs",
            CachedConfig::from as fn(EnvironmentConfig) -> CachedConfig,
        );
        // Read without their definitions (`cache::lean::VersionSpecParts`), one at a time or in small
        // pages (`Lists::versions`).
        let (versions, mut version_hub) =
            watch::watch(client, lists.versions(), readiness.clone(), "AppVersions");
        let (apps, mut app_hub) = watch::watch(client, any(), readiness.clone(), "ToolJetApps");
        let (policies, mut policy_hub) =
            watch::watch(client, any(), readiness.clone(), "PromotionPolicies");
        let (approvals, mut approval_hub) =
            watch::watch(client, any(), readiness.clone(), "Approvals");
        let (notifications, notification_hub) =
            watch::watch(client, any(), readiness.clone(), "Notifications");
        let lookups = Lookups::new(
            (&configs, &mut config_hub),
            (&versions, &mut version_hub),
            (&apps, &mut app_hub),
            (&policies, &mut policy_hub),
            (&approvals, &mut approval_hub),
        );
        Caches {
            readiness,
            lookups,
            managed_secrets,
            notifications,
            hubs: Hubs {
                managed: managed_hub,
                configs: config_hub,
                versions: version_hub,
                apps: app_hub,
                policies: policy_hub,
                approvals: approval_hub,
                notifications: notification_hub,
            },
        }
    }
}

/// The admission webhook and its certificate, on every replica.
fn serve_webhook(
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
    client: &Client,
    webhook: &WebhookOptions,
    caches: &Caches,
    hash_key: &Arc<HashKey>,
    metrics: &Arc<Metrics>,
    resolver: &Arc<certs::ReloadingResolver>,
) {
    let state = Arc::new(server::WebhookState {
        client: client.clone(),
        lookups: caches.lookups.clone(),
        managed_secrets: caches.managed_secrets.clone(),
        hash_key: hash_key.clone(),
        readiness: caches.readiness.clone(),
        metrics: metrics.clone(),
        allowed: access::Allowed::new(webhook.access_review_ttl),
    });
    let (client, source, cert_resolver) = (client.clone(), webhook.certs.clone(), resolver.clone());
    tasks.spawn(async move {
        let result = certs::run(client, source, cert_resolver)
            .await
            .context("the webhook certificate is unavailable; the webhook cannot serve");
        ("webhook certificate", result)
    });
    let (addr, router, serving) = (webhook.addr, http::router(state), resolver.clone());
    tasks.spawn(async move {
        let result = http::serve(addr, router, serving).await;
        ("admission webhook", result)
    });
}

/// `/metrics`, `/healthz` and `/readyz`.
async fn serve_health(
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
    addr: SocketAddr,
    health: Health,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health endpoints to {addr}"))?;
    info!(%addr, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(Arc::new(health));
    tasks.spawn(async move {
        let result = axum::serve(listener, app)
            .await
            .context("the health endpoints stopped");
        ("health endpoints", result)
    });
    Ok(())
}

/// The five controllers, each subscribed to the changes it reacts to, and the hubs that feed
/// them. When this replica becomes the leader, everything is reconciled once.
fn run_controllers(
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
    settings: &Settings,
    caches: Caches,
    ctx: Arc<Context>,
    leadership: &Arc<Leadership>,
) {
    let mut hubs = caches.hubs;
    let notifications = notification::controller(settings, &mut hubs, caches.notifications);
    let envconfigs = envconfig::controller(&ctx, settings, &mut hubs);
    let versions = appversion::controller(&ctx, settings, &mut hubs);
    let apps = app::controller(&ctx, settings, &mut hubs);
    let policies = policy::controller(&ctx, settings, &mut hubs);
    let Hubs {
        managed,
        configs,
        versions: version_hub,
        apps: app_hub,
        policies: policy_hub,
        approvals,
        notifications: notification_hub,
    } = hubs;
    tasks.spawn(hub("watch of managed Secrets", managed.run()));
    tasks.spawn(hub("watch of EnvironmentConfigs", configs.run()));
    tasks.spawn(hub("watch of AppVersions", version_hub.run()));
    tasks.spawn(hub("watch of ToolJetApps", app_hub.run()));
    tasks.spawn(hub("watch of PromotionPolicies", policy_hub.run()));
    tasks.spawn(hub("watch of Approvals", approvals.run()));
    tasks.spawn(hub("watch of Notifications", notification_hub.run()));
    let leadership = leadership.clone();
    tasks.spawn(async move {
        let all = || leadership.acquisitions();
        tokio::join!(
            envconfigs
                .reconcile_all_on(all())
                .shutdown_on_signal()
                .run(envconfig::reconcile, envconfig::error_policy, ctx.clone())
                .for_each(drain),
            versions
                .reconcile_all_on(all())
                .shutdown_on_signal()
                .run(appversion::reconcile, appversion::error_policy, ctx.clone())
                .for_each(drain),
            apps.reconcile_all_on(all())
                .shutdown_on_signal()
                .run(app::reconcile, app::error_policy, ctx.clone())
                .for_each(drain),
            policies
                .reconcile_all_on(all())
                .shutdown_on_signal()
                .run(policy::reconcile, policy::error_policy, ctx.clone())
                .for_each(drain),
            notifications
                .reconcile_all_on(all())
                .shutdown_on_signal()
                .run(notification::reconcile, notification::error_policy, ctx)
                .for_each(drain),
        );
        (CONTROLLERS, Ok(()))
    });
}

/// The name of the task that ends on SIGTERM / Ctrl-C (the controllers shut down gracefully).
const CONTROLLERS: &str = "controllers";

async fn hub(
    name: &'static str,
    run: impl std::future::Future<Output = ()>,
) -> (&'static str, Result<()>) {
    run.await;
    (name, Err(anyhow::anyhow!("the watch ended")))
}

/// Waits for the first task to end: the controllers after a shutdown signal (a clean exit);
/// anything else ending is a failure of the process (the pod restarts).
async fn supervise(mut tasks: JoinSet<(&'static str, Result<()>)>) -> Result<()> {
    let outcome = match tasks.join_next().await {
        Some(Ok((CONTROLLERS, Ok(())))) => Ok(()),
        Some(Ok((name, Ok(())))) => Err(anyhow::anyhow!("{name} ended unexpectedly")),
        Some(Ok((name, Err(e)))) => Err(e.context(format!("{name} failed"))),
        Some(Err(e)) => Err(anyhow::anyhow!("a task panicked or was cancelled: {e}")),
        None => Ok(()),
    };
    tasks.abort_all();
    outcome
}

/// Consumes a controller's result stream; reconcile errors are logged by the error policies.
async fn drain<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "controller stream");
    }
}

struct Health {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    resolver: Option<Arc<certs::ReloadingResolver>>,
    liveness: Liveness,
    /// Since when the replica has been seen unready (from the start until it first is ready).
    unready_since: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether the replica is ready, and if not why and for how long it has been seen unready.
    fn observe(&self) -> Result<(), (&'static str, Duration)> {
        let why = if !self.readiness.is_ready() {
            Some("caches not synced")
        } else if self.resolver.as_ref().is_some_and(|r| !r.is_loaded()) {
            Some("webhook certificate not loaded")
        } else {
            None
        };
        let mut since = self.unready_since.lock().expect("lock");
        match why {
            None => {
                *since = None;
                Ok(())
            }
            Some(why) => Err((why, since.get_or_insert_with(Instant::now).elapsed())),
        }
    }
}

async fn metrics_text(
    State(health): State<Arc<Health>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(),
    )
}

/// Ready when the caches are synced and, with a webhook, its certificate is loaded.
async fn ready(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    match health.observe() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err((why, _)) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Alive while the process runs, unless it has been unready for longer than the ready deadline:
/// a replica whose caches or certificate never come (a stuck start) is restarted by the kubelet.
async fn live(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.observe() {
        Err((why, unready)) if unready > health.liveness.ready_deadline => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unready for {}s (longer than the ready deadline of {}s): {why}",
                unready.as_secs(),
                health.liveness.ready_deadline.as_secs()
            ),
        ),
        _ => (StatusCode::OK, "ok".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ready_deadline: Duration) -> (Arc<Health>, Arc<Readiness>) {
        let readiness = Readiness::new(&["a cache"]);
        let health = Health {
            metrics: Arc::new(Metrics::default()),
            readiness: readiness.clone(),
            resolver: None,
            liveness: Liveness { ready_deadline },
            unready_since: Mutex::new(Some(Instant::now())),
        };
        (Arc::new(health), readiness)
    }

    #[tokio::test]
    async fn liveness_fails_once_unready_for_longer_than_the_deadline_and_recovers() {
        let (patient, _) = health(Duration::from_secs(300));
        assert_eq!(live(State(patient.clone())).await.0, StatusCode::OK);
        assert_eq!(
            ready(State(patient)).await,
            (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
        );

        let (stuck, readiness) = health(Duration::ZERO);
        let (code, why) = live(State(stuck.clone())).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("caches not synced"), "{why}");
        readiness.listed("a cache");
        assert_eq!(live(State(stuck.clone())).await.0, StatusCode::OK);
        assert_eq!(ready(State(stuck)).await.0, StatusCode::OK);
    }
}
