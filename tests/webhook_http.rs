//! The webhook's HTTPS endpoint as any pod that reaches it could call it: bodies that are not
//! AdmissionReviews, oversized bodies, stalled clients and reviews of kinds the webhook does not
//! know. Each is answered or cut off within its bound, counted under closed label values, and
//! leaves the operator healthy.

mod support;

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::Api;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use support::admission::{env, http_get};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tooljet_operator::webhook::{
    config,
    http::{HEADER_READ_TIMEOUT, MAX_BODY_BYTES, REQUEST_TIMEOUT, TLS_HANDSHAKE_TIMEOUT},
};

const CANARY: &str = "Canary7f3a9c";

/// The webhook's `host:port`.
async fn webhook_addr() -> String {
    env()
        .await
        .webhook_url
        .strip_prefix("https://")
        .unwrap()
        .to_string()
}

/// A TLS connection to the webhook that trusts only the operator's CA (the caBundle it put in
/// the webhook configuration) and offers no ALPN, so it speaks HTTP/1.1.
async fn connect() -> TlsStream<TcpStream> {
    connect_with_alpn(vec![]).await
}

async fn connect_with_alpn(alpn: Vec<Vec<u8>>) -> TlsStream<TcpStream> {
    let addr = webhook_addr().await;
    let configuration = Api::<ValidatingWebhookConfiguration>::all(support::client().await)
        .get(config::CONFIGURATION_NAME)
        .await
        .unwrap();
    let ca = configuration.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("the operator set the caBundle");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca.0) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn;
    let host = addr.rsplit_once(':').unwrap().0.to_string();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(host).unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes (or resets) the connection: what arrived before.
async fn read_all(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some(Answer {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// POSTs `body` to `path` on a connection of its own and reads the answer.
async fn post(path: &str, body: &[u8]) -> Answer {
    let mut tls = connect().await;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let raw = tokio::time::timeout(REQUEST_TIMEOUT * 3, read_all(&mut tls))
        .await
        .expect("the webhook answers");
    parse(&raw).unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
}

async fn metrics() -> String {
    let (code, body) = http_get(&env().await.health, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    body
}

/// The sum of `tooljet_operator_admission_requests_total` over the series with all of `labels`.
fn admissions(metrics: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("tooljet_operator_admission_requests_total{"))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Every label value of the admission counter is one of the closed set.
fn assert_closed_label_values(metrics: &str) {
    let allowed = [
        ("webhook", &["validate", "mutate"][..]),
        (
            "kind",
            &["AppVersion", "ToolJetApp", "EnvironmentConfig", "other"][..],
        ),
        (
            "operation",
            &["CREATE", "UPDATE", "DELETE", "CONNECT", "other"][..],
        ),
        ("result", &["allowed", "denied", "invalid", "timeout"][..]),
    ];
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("tooljet_operator_admission_requests_total{"))
    {
        let labels = line.split_once('{').unwrap().1.split_once('}').unwrap().0;
        for pair in labels.split(',') {
            let (name, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            let (_, values) = allowed
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("unexpected label {name} in {line}"));
            assert!(values.contains(&value), "{name}={value} in {line}");
        }
    }
}

fn review(uid: &str, group: &str, version: &str, kind: &str, resource: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": group, "version": version, "kind": kind },
            "resource": { "group": group, "version": version, "resource": resource },
            "name": "x", "namespace": "default", "operation": "CREATE",
            "userInfo": { "username": "mallory" },
            "object": { "apiVersion": "v1", "kind": kind, "metadata": { "name": "x", "namespace": "default" } },
            "oldObject": null,
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_body_that_is_not_an_admission_review_gets_400_and_is_never_counted_as_its_kind() {
    let before = metrics().await;
    // It names AppVersion, but it is no AdmissionReview: nothing in it may be trusted.
    let pretends = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": { "uid": "u", "kind": { "group": "tooljet.io", "version": "v1alpha1", "kind": "AppVersion" },
                     "operation": CANARY },
    }))
    .unwrap();
    for body in [CANARY.as_bytes().to_vec(), pretends] {
        let answer = post("/validate", &body).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(
            answer.content_type.starts_with("text/plain"),
            "{}",
            answer.content_type
        );
        assert!(!answer.body.contains(CANARY), "{}", answer.body);
    }
    let after = metrics().await;
    let app_versions = [("kind", "AppVersion")];
    assert_eq!(
        admissions(&after, &app_versions),
        admissions(&before, &app_versions),
        "{after}"
    );
    let invalid = [
        ("webhook", "validate"),
        ("kind", "other"),
        ("operation", "other"),
        ("result", "invalid"),
    ];
    assert!(admissions(&after, &invalid) >= admissions(&before, &invalid) + 2);
    assert!(!after.contains(CANARY));
}

#[tokio::test]
async fn a_review_of_an_unknown_kind_is_counted_as_other_and_no_label_comes_from_the_request() {
    let before = metrics().await;
    for (path, webhook, body) in [
        (
            "/validate",
            "validate",
            review("uid-canary", "canary.example", "v1", CANARY, "canaries"),
        ),
        (
            "/mutate",
            "mutate",
            review("uid-pod", "", "v1", "Pod", "pods"),
        ),
    ] {
        let answer = post(path, &body).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let review: Value = serde_json::from_str(&answer.body).unwrap();
        assert!(review["response"]["uid"].is_string(), "{review}");
        let other = [
            ("webhook", webhook),
            ("kind", "other"),
            ("operation", "CREATE"),
        ];
        let after = metrics().await;
        assert!(
            admissions(&after, &other) > admissions(&before, &other),
            "{webhook}: not counted as other:\n{after}"
        );
    }
    let after = metrics().await;
    assert!(!after.contains(CANARY), "{after}");
    assert!(!after.contains("kind=\"Pod\""), "{after}");
    assert_closed_label_values(&after);
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_the_operator_stays_healthy() {
    let env = env().await;

    // Declared too large: refused from the headers, before the body is sent.
    let mut tls = connect().await;
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        MAX_BODY_BYTES + 1
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let raw = tokio::time::timeout(REQUEST_TIMEOUT * 3, read_all(&mut tls))
        .await
        .expect("the webhook answers");
    let answer = parse(&raw).expect("an HTTP answer");
    assert_eq!(answer.status, 413, "{}", answer.body);

    // Undeclared (chunked): cut off at the bound. The server may reset the connection while we
    // still write, before we can read its 413; either way it stops reading.
    let mut tls = connect().await;
    tls.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    let mut refused = false;
    for _ in 0..MAX_BODY_BYTES / chunk.len() + 2 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if tls.write_all(&framed).await.is_err() || tls.flush().await.is_err() {
            refused = true;
            break;
        }
    }
    let raw = tokio::time::timeout(REQUEST_TIMEOUT * 3, read_all(&mut tls))
        .await
        .expect("the webhook answers or closes");
    match parse(&raw) {
        Some(answer) => assert_eq!(answer.status, 413, "{}", answer.body),
        None => assert!(
            refused || raw.is_empty(),
            "neither a 413 nor a closed connection: {:?}",
            String::from_utf8_lossy(&raw)
        ),
    }

    // Still healthy, and still answering reviews.
    let (code, _) = http_get(&env.health, "/healthz").await.unwrap();
    assert_eq!(code, 200);
    let answer = post(
        "/validate",
        &review("uid-after", "canary.example", "v1", "Thing", "things"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_disconnected() {
    let mut tls = connect().await;
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let raw = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, read_all(&mut tls))
        .await
        .expect("the webhook closes a connection whose headers stall");
    assert!(parse(&raw).is_none(), "{:?}", String::from_utf8_lossy(&raw));
}

#[tokio::test]
async fn a_client_that_never_starts_tls_is_disconnected() {
    let mut tcp = TcpStream::connect(webhook_addr().await).await.unwrap();
    let raw = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT * 3, read_all(&mut tcp))
        .await
        .expect("the webhook closes a connection without a TLS handshake");
    assert!(raw.is_empty());
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_gets_503() {
    let mut tls = connect().await;
    tls.write_all(
        b"POST /validate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"apiVersion\":",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let raw = tokio::time::timeout(REQUEST_TIMEOUT * 3, read_all(&mut tls))
        .await
        .expect("the webhook answers a request whose body stalls");
    let answer = parse(&raw).expect("an HTTP answer");
    assert_eq!(answer.status, 503, "{}", answer.body);
}

/// The apiserver negotiates HTTP/2 by ALPN: the webhook then speaks it (answers the client
/// preface with its SETTINGS frame).
#[tokio::test]
async fn http2_is_served_when_alpn_chooses_it() {
    let mut tls = connect_with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    tls.flush().await.unwrap();
    let mut frame_header = [0u8; 9];
    tokio::time::timeout(REQUEST_TIMEOUT * 3, tls.read_exact(&mut frame_header))
        .await
        .expect("the webhook answers the HTTP/2 preface")
        .unwrap();
    assert_eq!(frame_header[3], 4, "not a SETTINGS frame: {frame_header:?}");
}
