//! The operator's connection to the apiserver.
//!
//! kube's own client speaks HTTP/1.1 only, so every request in flight holds a TLS connection of
//! its own, and hyper keeps each one open 90 s after its last use. While the operator converges
//! with dozens of reconciles in flight that is dozens of connections, each with its buffers
//! (docs/benchmarks.md counts them). This client offers HTTP/2 first, as client-go does: every
//! request and watch shares one connection, which pings the apiserver when it goes quiet and is
//! dropped when the pings go unanswered. A server that does not take HTTP/2 gets HTTP/1.1, as
//! before.
//!
//! The layers above the connection are kube's own: the base URI, retries of 429/503/504, the
//! credentials (refreshed tokens included) and extra headers such as impersonation. A
//! configuration that goes through a proxy gets kube's client unchanged, since it alone knows
//! how to tunnel.

use std::time::Duration;

use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use kube::{
    Client, Config,
    client::{ConfigExt, retry::RetryPolicy},
};
use tower::{BoxError, ServiceBuilder, retry::RetryLayer};

/// How much of a response the apiserver may send ahead of what the operator has read, per
/// request, and over the connection (hyper's defaults: 2 MiB and 5 MiB), so that data waiting to
/// be read stays small. At a millisecond's round trip these still allow 256 MiB/s a request.
/// Whether they lower a restart's RSS peak is not established: 65.0 MiB with hyper's windows
/// (one run), 60.2 and 74.5 with these (two runs; docs/benchmarks.md).
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How long the shared connection may be quiet before the client pings the apiserver
/// (client-go's HTTP2_READ_IDLE_TIMEOUT_SECONDS default).
pub const PING_AFTER: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped and every request on it
/// fails (client-go's HTTP2_PING_TIMEOUT_SECONDS default); the next request connects again.
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for `config` that multiplexes its requests over one HTTP/2 connection when the
/// apiserver offers HTTP/2.
///
/// `config.read_timeout` is not applied on this path: a timeout on reads of a connection every
/// watch shares would cut them all; the pings find a dead connection instead.
pub fn client(config: Config) -> kube::Result<Client> {
    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(config.connect_timeout);
    tcp.set_nodelay(true);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    let tls = match &config.tls_server_name {
        Some(name) => tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            name.clone().try_into().map_err(|e| {
                kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
            })?,
        )),
        None => tls,
    };
    let connector = tls.enable_all_versions().wrap_connector(tcp);
    let transport = HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_AFTER)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(Client::new(service, config.default_namespace))
}

/// [`client`] for the configuration kube infers: in-cluster, or `$KUBECONFIG`.
pub async fn infer() -> kube::Result<Client> {
    client(Config::infer().await.map_err(kube::Error::InferConfig)?)
}
