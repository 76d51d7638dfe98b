//! The chart's opt-in dashboard as the cluster would run it: rendered by the real helm, its
//! objects accepted by the real apiserver, no privilege of its own anywhere in the chart, and the
//! plugin binary started with exactly the Deployment's arguments and the chart's certificate,
//! reached over HTTPS with a viewer's token.

mod support;

use std::{process::Command, sync::Arc};

use k8s_openapi::api::{
    apps::v1::Deployment,
    authentication::v1::TokenRequest,
    core::v1::{Secret, Service, ServiceAccount},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::{crm, web::encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RELEASE: &str = "t";

/// `helm template` of the chart with the dashboard on (and `extra` arguments), as JSON
/// documents.
fn render(namespace: &str, extra: &[&str]) -> Vec<Value> {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tooljet-operator");
    let out = Command::new(testenv::Binary::Helm.require().unwrap())
        .args(["template", RELEASE, chart, "--namespace", namespace])
        .args(["--set", "dashboard.enabled=true"])
        .args(extra)
        .env("KUBECONFIG", &testenv::shared().kubeconfig)
        .env("HELM_CACHE_HOME", testenv::shared().dir.join("helm-cache"))
        .env(
            "HELM_CONFIG_HOME",
            testenv::shared().dir.join("helm-config"),
        )
        .env("HELM_DATA_HOME", testenv::shared().dir.join("helm-data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the chart"))
}

#[tokio::test]
async fn the_charts_dashboard_has_no_privileges_and_serves_https_with_the_viewers_token() {
    let (admin, ns) = crm("chart-dash").await;
    let docs = render(&ns, &[]);
    let name = "t-tooljet-operator-dashboard";

    // Nothing of its own: no token mounted, no binding names its ServiceAccount.
    let sa = find(&docs, "ServiceAccount", name);
    assert_eq!(sa["automountServiceAccountToken"], json!(false));
    let deployment = find(&docs, "Deployment", name);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], json!(false));
    assert_eq!(pod["serviceAccountName"], name);
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        assert!(!subjects.iter().any(|s| s["name"] == name), "{binding}");
    }
    let sources = &pod["volumes"][0]["projected"]["sources"];
    assert!(
        !sources.to_string().contains("serviceAccountToken"),
        "{sources}"
    );
    // Its pods are not the operator's: the operator's selector does not match them.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let operator = find(&docs, "Deployment", "t-tooljet-operator");
    let selector = operator["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        !selector.iter().all(|(k, v)| labels[k] == *v),
        "the operator's selector {selector:?} matches the dashboard's pods {labels}"
    );

    // The apiserver accepts its objects.
    let apply = PatchParams::apply("chart-test").force();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .patch(name, &apply, &Patch::Apply(sa))
        .await
        .unwrap();
    let tls_name = format!("{name}-tls");
    let tls = find(&docs, "Secret", &tls_name);
    let secret: Secret = Api::<Secret>::namespaced(admin.clone(), &ns)
        .patch(&tls_name, &apply, &Patch::Apply(tls))
        .await
        .unwrap();
    Api::<Service>::namespaced(admin.clone(), &ns)
        .patch(name, &apply, &Patch::Apply(find(&docs, "Service", name)))
        .await
        .unwrap();
    Api::<Deployment>::namespaced(admin.clone(), &ns)
        .patch(name, &apply, &Patch::Apply(deployment))
        .await
        .unwrap();

    // An upgrade keeps the certificate (helm reads the stored Secret: `--dry-run=server` lets
    // `helm template` look it up); new host names make a new one that names them.
    let stored_cert = |docs: &[Value]| {
        find(docs, "Secret", &tls_name)["data"]["tls.crt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let applied = stored_cert(&docs);
    let upgraded = render(&ns, &["--dry-run=server"]);
    assert_eq!(
        stored_cert(&upgraded),
        applied,
        "an upgrade keeps the certificate"
    );
    let renamed = render(
        &ns,
        &[
            "--dry-run=server",
            "--set",
            "dashboard.hosts[0]=tooljet.example.com",
        ],
    );
    assert_ne!(
        stored_cert(&renamed),
        applied,
        "new names, a new certificate"
    );
    let names = &find(&renamed, "Secret", &tls_name)["metadata"]["annotations"]["tooljet.io/names"];
    assert!(
        names.as_str().unwrap().ends_with(",tooljet.example.com"),
        "{names}"
    );

    // The binary with the Deployment's arguments and the chart's certificate (listening on
    // loopback here instead of the pod's address; the apiserver's address from the kubeconfig
    // instead of the pod's environment, credentials stripped).
    let data = secret.data.unwrap();
    let dir = testenv::shared().dir.join(format!("{ns}-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &data["tls.crt"].0).unwrap();
    std::fs::write(dir.join("tls.key"), &data["tls.key"].0).unwrap();
    let container = &pod["containers"][0];
    assert_eq!(
        container["command"],
        json!(["/usr/local/bin/kubectl-tooljet"])
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .map(|a| match a.as_str() {
            "--address=0.0.0.0" => "--address=127.0.0.1".to_string(),
            "--port=8443" => format!("--port={port}"),
            "--tls-cert=/tls/tls.crt" => format!("--tls-cert={}", dir.join("tls.crt").display()),
            "--tls-key=/tls/tls.key" => format!("--tls-key={}", dir.join("tls.key").display()),
            _ => a,
        })
        .collect();
    assert!(args.contains(&"--forward-token".to_string()), "{args:?}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-tooljet"))
        .args(&args)
        .env("KUBECONFIG", &testenv::shared().kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert!(line.contains("https://"), "{line}");

    // A viewer's token (a ServiceAccount bound to the approver role), pasted on the sign-in
    // page over HTTPS: a Secure cookie, then pages as that viewer.
    let sa_api: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let viewer: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": "pm" } })).unwrap();
    sa_api
        .create(&PostParams::default(), &viewer)
        .await
        .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "pm-approver" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tooljet-approver" },
        "subjects": [{ "kind": "ServiceAccount", "name": "pm", "namespace": ns }],
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let req: TokenRequest = serde_json::from_value(json!({ "spec": {} })).unwrap();
    let token = sa_api
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            "pm",
            &PostParams::default(),
            &req,
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let host = format!("{name}.{ns}.svc");
    let origin = format!("https://{host}");
    let signed = https(
        &host,
        port,
        &data["tls.crt"].0,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\ntoken={}",
            6 + encode(&token).len(),
            encode(&token)
        ),
    )
    .await;
    assert!(signed.starts_with("HTTP/1.1 303"), "{signed}");
    let cookie_line = signed
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(
        cookie_line.contains("Secure") && cookie_line.contains("HttpOnly"),
        "{cookie_line}"
    );
    let cookie = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap();
    let page = https(
        &host,
        port,
        &data["tls.crt"].0,
        &format!("GET /ns/{ns}/apps/crm HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains(&format!("system:serviceaccount:{ns}:pm")),
        "{page}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// One HTTPS request to 127.0.0.1:`port`, trusting only `cert_pem` for `host`.
async fn https(host: &str, port: u16, cert_pem: &[u8], request: &str) -> String {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the chart's certificate is valid for the Service's name");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}
