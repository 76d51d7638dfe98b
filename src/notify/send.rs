//! One delivery: a POST of a payload to the endpoint with the event's id as `Idempotency-Key`,
//! within the endpoint's timeout. A failure is described without the URL (it is a credential):
//! the caller names the Secret it came from.

use std::{sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Method, Request, body::Bytes};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::payload::Payload;

/// The HTTP(S) client of every delivery.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for `http://` and `https://` endpoints, trusting the system's roots. Without any
/// (a minimal image), HTTPS endpoints fail their handshake and say so in the Notification's
/// status; plain HTTP still works.
pub fn client() -> HttpClient {
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
    let https = builder.https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(https)
}

/// Why a delivery failed, in words that never contain the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The Secret's value is not an `http://` or `https://` URL.
    InvalidUrl,
    /// The endpoint answered with a status other than 2xx.
    Status(u16),
    /// No answer within the timeout.
    Timeout(Duration),
    /// The connection failed (refused, reset, TLS).
    Transport(String),
}

impl Failure {
    /// A sentence about the endpoint whose URL is in `secret` (`name/key`).
    pub fn describe(&self, secret: &str) -> String {
        match self {
            Failure::InvalidUrl => format!(
                "Secret {secret} does not hold an http:// or https:// URL; put the endpoint's URL in that key"
            ),
            Failure::Status(code) => {
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
            Failure::Status(_) => "status",
            Failure::Timeout(_) => "timeout",
            Failure::Transport(_) => "transport",
        }
    }
}

/// POSTs `payload` to `url` with `Idempotency-Key: id`; a 2xx answer is success.
pub async fn post(
    client: &HttpClient,
    url: &str,
    payload: &Payload,
    id: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let uri: hyper::Uri = url.trim().parse().map_err(|_| Failure::InvalidUrl)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(Failure::InvalidUrl);
    }
    let host = uri.host().unwrap_or_default().to_string();
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
        .map_err(|e| Failure::Transport(scrubbed(&e, &[url.trim(), &host])))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Status(status.as_u16()))
    }
}

/// An error and its sources in words, with every occurrence of `secrets` (the URL, its host)
/// blanked.
fn scrubbed(error: &(dyn std::error::Error + 'static), secrets: &[&str]) -> String {
    let mut words = vec![];
    let mut current = Some(error);
    while let Some(e) = current {
        words.push(e.to_string());
        current = e.source();
    }
    let mut text = words.join(": ");
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(s, "<endpoint>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_secret_never_the_url() {
        let url = "https://hooks.example.com/services/T000/B000/CANARY";
        let io = std::io::Error::other(format!("could not reach {url}"));
        let words = scrubbed(&io, &[url, "hooks.example.com"]);
        assert!(
            !words.contains("CANARY") && !words.contains("example.com"),
            "{words}"
        );
        for f in [
            Failure::InvalidUrl,
            Failure::Status(500),
            Failure::Timeout(Duration::from_secs(10)),
            Failure::Transport(words),
        ] {
            let text = f.describe("slack-webhook/url");
            assert!(text.contains("Secret slack-webhook/url"), "{text}");
            assert!(!text.contains("CANARY"), "{text}");
        }
        assert_eq!(
            Failure::Status(500).describe("slack-webhook/url"),
            "POST to the endpoint from Secret slack-webhook/url answered 500"
        );
    }

    #[tokio::test]
    async fn a_value_that_is_not_an_http_url_is_refused_before_sending() {
        let payload = Payload {
            content_type: "application/json",
            body: b"{}".to_vec(),
        };
        for url in ["ftp://example.com/x", "not a url", "/relative", ""] {
            let got = post(&client(), url, &payload, "id", Duration::from_secs(1)).await;
            assert_eq!(got, Err(Failure::InvalidUrl), "{url}");
        }
    }
}
