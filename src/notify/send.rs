//! One delivery: a POST of a payload to the endpoint with the event's id as `Idempotency-Key`,
//! within the endpoint's timeout. A failure is described coarsely (refused, timed out, TLS, DNS,
//! the status answered) and never with the URL or an address (the URL is a credential): the
//! caller names the Secret it came from.
//!
//! Whoever can write that Secret chooses where events go, so the client refuses the addresses
//! that reach the operator's own pod or node rather than the world: loopback, link-local (the
//! cloud metadata service at 169.254.169.254) and unspecified, checked after DNS resolution
//! (a name that resolves there is refused too) unless the operator runs with
//! `--notifications-allow-local-endpoints`.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::Full;
use hyper::{Method, Request, StatusCode, Uri, body::Bytes};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{
            HttpConnector,
            dns::{GaiResolver, Name},
        },
    },
    rt::TokioExecutor,
};

use super::payload::Payload;

type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, Full<Bytes>>;

/// The HTTP(S) client of every delivery, and whether it may reach local addresses.
#[derive(Clone)]
pub struct Sender {
    client: HttpClient,
    allow_local: bool,
}

impl Sender {
    /// A client for `http://` and `https://` endpoints, trusting the system's roots. Without
    /// any (a minimal image), HTTPS endpoints fail their handshake and say so in the
    /// Notification's status; plain HTTP still works. `allow_local`: also loopback and
    /// link-local addresses.
    pub fn new(allow_local: bool) -> Sender {
        Sender {
            client: client(allow_local),
            allow_local,
        }
    }

    /// POSTs `payload` to `url` with `Idempotency-Key: id`; a 2xx answer is success.
    pub async fn post(
        &self,
        url: &str,
        payload: &Payload,
        id: &str,
        timeout: Duration,
    ) -> Result<(), Failure> {
        post(&self.client, self.allow_local, url, payload, id, timeout).await
    }
}

fn client(allow_local: bool) -> HttpClient {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
        .unwrap_or_else(|_| {
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        });
    let mut http = HttpConnector::new_with_resolver(Resolver {
        gai: GaiResolver::new(),
        allow_local,
    });
    http.enforce_http(false);
    let https = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Whether `ip` reaches this pod or node (or the cloud's metadata service) rather than another
/// host: loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10) or unspecified.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_local(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unspecified(),
        },
    }
}

/// The system's resolver, keeping only the addresses [`is_local`] allows.
#[derive(Clone)]
pub struct Resolver {
    gai: GaiResolver,
    allow_local: bool,
}

/// A name resolved only to local addresses, refused.
#[derive(Debug)]
struct LocalAddress;

impl std::fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the endpoint resolves to a loopback or link-local address")
    }
}

impl std::error::Error for LocalAddress {}

type Addresses = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for Resolver {
    type Response = Addresses;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addresses, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.gai.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_local = self.allow_local;
        let lookup = self.gai.call(name);
        Box::pin(async move {
            let all: Vec<SocketAddr> = lookup.await?.collect();
            let kept: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow_local || !is_local(a.ip()))
                .collect();
            if kept.is_empty() && !all.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    LocalAddress,
                ));
            }
            Ok(kept.into_iter())
        })
    }
}

/// Why a delivery failed, in words that never contain the URL or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The Secret's value is not an `http://` or `https://` URL.
    InvalidUrl,
    /// The endpoint's address is loopback or link-local, and the operator does not allow those.
    LocalAddress,
    /// The endpoint answered with a status other than 2xx, with its `Retry-After` if it asked
    /// to wait (429, 503).
    Status(u16, Option<Duration>),
    /// No answer within the timeout.
    Timeout(Duration),
    /// The connection failed: `refused`, `timed out`, `TLS`, `DNS`, ... (never the address).
    Transport(&'static str),
}

impl Failure {
    /// A sentence about the endpoint whose URL is in `secret` (`name/key`).
    pub fn describe(&self, secret: &str) -> String {
        match self {
            Failure::InvalidUrl => format!(
                "Secret {secret} does not hold an http:// or https:// URL; put the endpoint's URL in that key"
            ),
            Failure::LocalAddress => format!(
                "the endpoint from Secret {secret} is a loopback or link-local address, which the operator refuses (unless started with --notifications-allow-local-endpoints)"
            ),
            Failure::Status(code, _) if self.rejected() => format!(
                "POST to the endpoint from Secret {secret} answered {code}: the endpoint refuses the event, and it is retried with backoff until it takes it; fix the endpoint, or recreate the Notification to skip what waits"
            ),
            Failure::Status(code, _) => {
                format!("POST to the endpoint from Secret {secret} answered {code}")
            }
            Failure::Timeout(t) => format!(
                "POST to the endpoint from Secret {secret} got no answer within {}s",
                t.as_secs()
            ),
            Failure::Transport(why) => {
                format!("POST to the endpoint from Secret {secret} failed: {why}")
            }
        }
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::InvalidUrl => "invalid_url",
            Failure::LocalAddress => "local_address",
            Failure::Status(..) if self.rejected() => "rejected",
            Failure::Status(..) => "status",
            Failure::Timeout(_) => "timeout",
            Failure::Transport(_) => "transport",
        }
    }

    /// Whether the endpoint refuses the event itself (a 4xx other than 408 and 429): retrying
    /// the same request is unlikely to help without a change at the endpoint.
    pub fn rejected(&self) -> bool {
        matches!(self, Failure::Status(code, _) if (400..500).contains(code) && *code != 408 && *code != 429)
    }

    /// How long the endpoint asked to wait before the next attempt (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status(_, after) => *after,
            _ => None,
        }
    }
}

/// `url` if it is an `http://` or `https://` URL with a host.
pub fn parse(url: &str) -> Result<Uri, Failure> {
    let uri: Uri = url.trim().parse().map_err(|_| Failure::InvalidUrl)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(Failure::InvalidUrl);
    }
    Ok(uri)
}

/// The address `uri` names literally (`http://127.0.0.1/`, `http://[::1]/`): the connector
/// resolves only names, so a literal is checked here.
fn literal(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

async fn post(
    client: &HttpClient,
    allow_local: bool,
    url: &str,
    payload: &Payload,
    id: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let uri = parse(url)?;
    if !allow_local && literal(&uri).is_some_and(is_local) {
        return Err(Failure::LocalAddress);
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(hyper::header::CONTENT_TYPE, payload.content_type)
        .header(hyper::header::USER_AGENT, "tooljet-operator")
        .header("Idempotency-Key", id)
        .body(Full::new(Bytes::from(payload.body.clone())))
        .map_err(|_| Failure::InvalidUrl)?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| Failure::Timeout(timeout))?
        .map_err(|e| classify(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let after = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
    .then(|| response.headers().get(hyper::header::RETRY_AFTER))
    .flatten()
    .and_then(|v| v.to_str().ok())
    .and_then(|v| {
        retry_after(
            v,
            crate::gate::to_chrono(k8s_openapi::jiff::Timestamp::now()),
        )
    });
    Err(Failure::Status(status.as_u16(), after))
}

/// A `Retry-After` value (seconds, or an HTTP date) as a wait from `now`.
fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.to_utc() - now).to_std().unwrap_or_default())
}

/// A connection failure in a word or two: what a person needs to look in the right place,
/// without the address (which the error's text may hold).
fn classify(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current = Some(error);
    let mut dns = false;
    while let Some(e) = current {
        if e.downcast_ref::<LocalAddress>().is_some() {
            return Failure::LocalAddress;
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Transport("TLS handshake failed");
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if inner.downcast_ref::<LocalAddress>().is_some() {
                    return Failure::LocalAddress;
                }
                if inner.downcast_ref::<rustls::Error>().is_some() {
                    return Failure::Transport("TLS handshake failed");
                }
            }
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return Failure::Transport("connection refused");
                }
                std::io::ErrorKind::TimedOut => return Failure::Transport("connection timed out"),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    return Failure::Transport("connection reset");
                }
                _ => {}
            }
        }
        dns |= e.to_string().starts_with("dns error");
        current = e.source();
    }
    Failure::Transport(if dns {
        "DNS lookup failed"
    } else {
        "connection failed"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        Payload {
            content_type: "application/json",
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn failures_name_the_secret_never_the_url() {
        for f in [
            Failure::InvalidUrl,
            Failure::LocalAddress,
            Failure::Status(500, None),
            Failure::Status(404, None),
            Failure::Timeout(Duration::from_secs(10)),
            Failure::Transport("connection refused"),
        ] {
            let text = f.describe("slack-webhook/url");
            assert!(text.contains("Secret slack-webhook/url"), "{text}");
        }
        assert_eq!(
            Failure::Status(500, None).describe("slack-webhook/url"),
            "POST to the endpoint from Secret slack-webhook/url answered 500"
        );
    }

    #[test]
    fn a_4xx_other_than_408_and_429_is_the_endpoint_refusing() {
        let rejected: Vec<u16> = [400, 401, 403, 404, 408, 410, 429, 500, 503]
            .into_iter()
            .filter(|c| Failure::Status(*c, None).rejected())
            .collect();
        assert_eq!(rejected, [400, 401, 403, 404, 410]);
        assert!(
            Failure::Status(404, None)
                .describe("hook/url")
                .contains("recreate the Notification")
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn loopback_link_local_and_unspecified_addresses_are_local() {
        let local = [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ];
        for ip in local {
            assert!(is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "192.168.1.1", "93.184.216.34", "2001:db8::1"] {
            assert!(!is_local(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_value_that_is_not_an_http_url_is_refused_before_sending() {
        for url in ["ftp://example.com/x", "not a url", "/relative", ""] {
            let got = Sender::new(false)
                .post(url, &payload(), "id", Duration::from_secs(1))
                .await;
            assert_eq!(got, Err(Failure::InvalidUrl), "{url}");
        }
    }

    #[tokio::test]
    async fn a_local_endpoint_is_refused_unless_allowed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::1]:{port}/"),
            format!("http://localhost:{port}/"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ] {
            let got = Sender::new(false)
                .post(&url, &payload(), "id", Duration::from_secs(2))
                .await;
            assert_eq!(got, Err(Failure::LocalAddress), "{url}");
        }
        // Allowed, it is tried (and refused by the closed port, in a word, no address).
        let url = format!("http://127.0.0.1:{port}/");
        let got = Sender::new(true)
            .post(&url, &payload(), "id", Duration::from_secs(2))
            .await;
        assert_eq!(got, Err(Failure::Transport("connection refused")));
    }
}
