//! The operator process: caches, controllers, admission webhook, health and metrics, wired
//! together. Every replica keeps the caches and serves the webhook; only the leader reconciles.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::StatusCode, routing::get};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        events::{Recorder, Reporter},
        watcher,
    },
};
use tracing::{info, warn};

use crate::{
    api::{AppVersion, EnvironmentConfig, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ToolJetApp},
    controller::{self, Context, MANAGER, RefIndex, Settings, app, appversion, envconfig},
    leader::Leadership,
    metrics::Metrics,
    state::{self, Echoes, Readiness},
    webhook::{certs, http, server},
};

/// The admission webhook's listener and certificate.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub addr: SocketAddr,
    pub certs: certs::Source,
}

/// Everything the process needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    pub settings: Settings,
    /// The operator's own namespace: the content-hash key Secret lives there.
    pub namespace: String,
    /// `/metrics`, `/healthz`, `/readyz` (plain HTTP).
    pub health_addr: Option<SocketAddr>,
    pub webhook: Option<WebhookOptions>,
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
    let settings = options.settings.clone();
    let metrics = Arc::new(Metrics::default());
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(settings.instance.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);

    let readiness = Readiness::new(&[
        "managed Secrets",
        "EnvironmentConfigs",
        "AppVersions",
        "ToolJetApps",
    ]);
    // One watch and one cache per kind, shared by the controllers and the webhook.
    let (managed_secrets, mut managed_hub) = state::watch(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        readiness.clone(),
        "managed Secrets",
    );
    // Metadata only, and not the operator's own Secrets: enough to notice a rotation.
    let referenced_stream = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}!={MANAGED_BY_VALUE}")),
    )
    .default_backoff()
    .modify(state::strip)
    .touched_objects();
    let any = || watcher::Config::default().any_semantic();
    let (configs, mut config_hub) = state::watch(
        Api::<EnvironmentConfig>::all(client.clone()),
        any(),
        readiness.clone(),
        "EnvironmentConfigs",
    );
    let (versions, mut version_hub) = state::watch(
        Api::<AppVersion>::all(client.clone()),
        any(),
        readiness.clone(),
        "AppVersions",
    );
    let (apps, mut app_hub) = state::watch(
        Api::<ToolJetApp>::all(client.clone()),
        any(),
        readiness.clone(),
        "ToolJetApps",
    );

    // The webhook and the health endpoints, on every replica.
    let resolver = Arc::new(certs::ReloadingResolver::default());
    if let Some(webhook) = &options.webhook {
        let state = Arc::new(server::WebhookState {
            client: client.clone(),
            versions: versions.clone(),
            apps: apps.clone(),
            configs: configs.clone(),
            managed_secrets: managed_secrets.clone(),
            hash_key: hash_key.clone(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
        });
        let cert_client = client.clone();
        let source = webhook.certs.clone();
        let cert_resolver = resolver.clone();
        tokio::spawn(async move {
            if let Err(e) = certs::run(cert_client, source, cert_resolver).await {
                tracing::error!(error = %format!("{e:#}"), "webhook certificate unavailable; the webhook cannot serve");
            }
        });
        let addr = webhook.addr;
        let router = http::router(state);
        let serving = resolver.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, router, serving).await {
                tracing::error!(error = %format!("{e:#}"), "admission webhook stopped");
                std::process::exit(1);
            }
        });
    }
    if let Some(addr) = options.health_addr {
        let health = Arc::new(Health {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            resolver: options.webhook.as_ref().map(|_| resolver.clone()),
        });
        let listener = tokio::net::TcpListener::bind(addr).await?;
        info!(%addr, "serving /metrics, /healthz and /readyz");
        tokio::spawn(async move {
            let app = Router::new()
                .route("/metrics", get(metrics_text))
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(ready))
                .with_state(health);
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "health server stopped");
            }
        });
    }

    let refs = Arc::new(RefIndex::default());
    let echoes = Arc::new(Echoes::default());
    let envconfigs = envconfig::controller(
        &settings,
        configs.clone(),
        (
            state::changes(config_hub.subscribe(), state::generation),
            state::changes(config_hub.subscribe(), envconfig::key_of),
        ),
        (refs.clone(), echoes.clone()),
        state::forgetting(managed_hub.subscribe(), echoes.clone()),
        referenced_stream,
    );
    let version_controller = appversion::controller(
        &settings,
        versions.clone(),
        state::changes(version_hub.subscribe(), state::generation),
        echoes.clone(),
        state::all(managed_hub.subscribe()),
        state::changes(app_hub.subscribe(), appversion::app_facts),
    );
    let app_controller = app::controller(
        client.clone(),
        &settings,
        apps.clone(),
        state::changes(app_hub.subscribe(), state::generation),
        state::changes(version_hub.subscribe(), app::version_facts),
        state::all(managed_hub.subscribe()),
    );
    for hub in [
        tokio::spawn(managed_hub.run()),
        tokio::spawn(config_hub.run()),
        tokio::spawn(version_hub.run()),
        tokio::spawn(app_hub.run()),
    ] {
        drop(hub);
    }
    let ctx = Arc::new(Context {
        client,
        recorder,
        managed_secrets,
        refs,
        readiness,
        configs,
        versions,
        apps,
        metrics,
        leadership: leadership.clone(),
        hash_key,
        echoes,
    });

    // When this replica becomes the leader, everything is reconciled once.
    let all = || leadership.acquisitions();
    tokio::join!(
        envconfigs
            .reconcile_all_on(all())
            .shutdown_on_signal()
            .run(envconfig::reconcile, envconfig::error_policy, ctx.clone())
            .for_each(drain),
        version_controller
            .reconcile_all_on(all())
            .shutdown_on_signal()
            .run(appversion::reconcile, appversion::error_policy, ctx.clone())
            .for_each(drain),
        app_controller
            .reconcile_all_on(all())
            .shutdown_on_signal()
            .run(app::reconcile, app::error_policy, ctx)
            .for_each(drain),
    );
    Ok(())
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
    if !health.readiness.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "caches not synced");
    }
    if health.resolver.as_ref().is_some_and(|r| !r.is_loaded()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook certificate not loaded",
        );
    }
    (StatusCode::OK, "ok")
}
