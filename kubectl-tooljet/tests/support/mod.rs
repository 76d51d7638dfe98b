//! The plugin's integration environment: this test binary's control plane (testenv), the CRDs,
//! the operator running in-process with its admission webhook, the webhook configurations,
//! admission policies and user roles, and a workspace per test. A small copy of the operator
//! crate's tests/support (test helpers of another crate cannot be imported).
#![allow(dead_code)]

pub mod web;

use std::{
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::{core::v1::Namespace, rbac::v1::RoleBinding},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{conditions, wait::await_condition},
};
use serde_json::{Value, json};
use tooljet_operator::{
    api::{AppVersion, EnvironmentConfig},
    controller::Settings,
    leader::Leadership,
    operator::{self, Options, WebhookOptions},
    webhook::{
        access, certs,
        config::{self, Endpoint},
    },
};

pub const WAIT: Duration = Duration::from_secs(30);

pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(&testenv::shared().kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// The result of one run of the real binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }
}

/// Runs `kubectl-tooljet ARGS` against this binary's control plane.
pub fn cli(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-tooljet"))
        .args(args)
        .env("KUBECONFIG", &testenv::shared().kubeconfig)
        .env("NO_COLOR", "1")
        .output()
        .expect("the plugin binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `WAIT` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    v
}

static OPERATOR: OnceLock<()> = OnceLock::new();
static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The operator (in-process, on a thread and runtime of its own) with its webhook, and the
/// admission configuration, policies and roles pointing at it. Once per test binary.
pub async fn environment() {
    READY
        .get_or_init(|| async {
            let admin = client().await;
            let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
            let apply = PatchParams::apply("kubectl-tooljet-tests").force();
            for crd in tooljet_operator::api::crds() {
                let name = crd.name_any();
                crds.patch(&name, &apply, &Patch::Apply(&crd))
                    .await
                    .unwrap();
                tokio::time::timeout(
                    WAIT,
                    await_condition(crds.clone(), &name, conditions::is_crd_established()),
                )
                .await
                .unwrap()
                .unwrap();
            }
            let ns: Namespace =
                serde_json::from_value(json!({ "metadata": { "name": "tooljet-system" } }))
                    .unwrap();
            let _ = Api::<Namespace>::all(admin.clone())
                .create(&PostParams::default(), &ns)
                .await;

            let addr = format!("127.0.0.1:{}", free_port());
            let endpoint = Endpoint::Url(format!("https://{addr}"));
            config::install(&admin, &endpoint, "kubectl-tooljet-tests")
                .await
                .unwrap();

            OPERATOR.get_or_init(|| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    rt.block_on(async move {
                        let options = Options {
                            settings: Settings {
                                concurrency: 4,
                                instance: "kubectl-tooljet-tests".into(),
                                allow_local_endpoints: false,
                            },
                            namespace: "tooljet-system".into(),
                            health_addr: None,
                            liveness: Default::default(),
                            webhook: Some(WebhookOptions {
                                addr: addr.parse().unwrap(),
                                certs: certs::Source::SelfManaged {
                                    namespace: "tooljet-system".into(),
                                    secret: "tooljet-operator-webhook-tls".into(),
                                    hosts: vec!["127.0.0.1".into()],
                                    configurations: vec![config::CONFIGURATION_NAME.into()],
                                },
                                access_review_ttl: access::DEFAULT_TTL,
                            }),
                            heap: None,
                        };
                        if let Err(e) =
                            operator::run(client().await, options, Leadership::always()).await
                        {
                            eprintln!("the in-process operator stopped: {e:#}");
                        }
                    });
                });
            });

            // Serving: the webhook judges (and refuses) a version of a missing app.
            eventually("the webhook answers", || {
                let admin = admin.clone();
                async move {
                    let api: Api<AppVersion> = Api::namespaced(admin, "default");
                    let probe: AppVersion = serde_json::from_value(json!({
                        "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion",
                        "metadata": { "name": "probe" },
                        "spec": { "app": "no-such-app", "versionName": "probe" },
                    }))
                    .unwrap();
                    let dry = PostParams {
                        dry_run: true,
                        ..Default::default()
                    };
                    match api.create(&dry, &probe).await {
                        Err(kube::Error::Api(s)) if s.message.contains("does not exist") => {
                            Some(())
                        }
                        _ => None,
                    }
                }
            })
            .await;
        })
        .await;
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh namespace with roles bound: bob promotes (and develops), carol releases.
pub async fn workspace(prefix: &str) -> (Client, String) {
    environment().await;
    let admin = client().await;
    let name = format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &name);
    for (user, role) in [
        ("bob", "tooljet-promoter"),
        ("bob", "tooljet-developer"),
        ("carol", "tooljet-release-manager"),
    ] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": { "name": format!("{user}-{role}") },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io" }],
        }))
        .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }
    (admin, name)
}

/// Server-side applies a tooljet.io object as the admin.
pub async fn apply(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) {
    let plural = match kind {
        "ToolJetApp" => "tooljetapps",
        "AppVersion" => "appversions",
        "EnvironmentConfig" => "environmentconfigs",
        other => panic!("{other}"),
    };
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("tooljet.io", "v1alpha1", kind),
        plural,
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
    // The webhook reads apps from its cache: retry briefly while it has not seen a new one.
    eventually(&format!("applying {kind} {name}"), || {
        let (api, body) = (api.clone(), body.clone());
        async move {
            match api
                .patch(
                    name,
                    &PatchParams::apply("tests").force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => Some(()),
                Err(kube::Error::Api(s)) if s.message.contains("does not exist") => None,
                Err(e) => panic!("applying {kind} {name}: {e}"),
            }
        }
    })
    .await;
}

pub const CANARY: &str = "canary-5f1e-plugin";

/// App crm (default pipeline), a configuration per stage, versions v1 and v2 in development.
pub async fn crm(prefix: &str) -> (Client, String) {
    let (admin, ns) = workspace(prefix).await;
    apply(
        &admin,
        &ns,
        "ToolJetApp",
        "crm",
        json!({ "environments": ["development", "staging", "production"] }),
    )
    .await;
    for stage in ["development", "staging", "production"] {
        let host = if stage == "production" {
            format!("db.{CANARY}")
        } else {
            format!("db.{stage}")
        };
        apply(
            &admin,
            &ns,
            "EnvironmentConfig",
            &format!("crm-{stage}"),
            json!({ "app": "crm", "environment": stage,
                    "dataSources": [{ "name": "crm-db", "kind": "postgresql", "options": { "host": host } }],
                    "constants": [{ "name": "API_URL", "type": "Global", "value": format!("https://{stage}.example") }] }),
        )
        .await;
    }
    // Each stage materialised before anything is promoted into it.
    let configs = Api::<EnvironmentConfig>::namespaced(admin.clone(), &ns);
    for stage in ["development", "staging", "production"] {
        let name = format!("crm-{stage}");
        eventually(&format!("EnvironmentConfig {name} Ready"), || async {
            let c = configs.get(&name).await.ok()?;
            c.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
    }
    for v in ["v1", "v2"] {
        apply(
            &admin,
            &ns,
            "AppVersion",
            v,
            json!({ "app": "crm", "versionName": v, "requires": { "dataSources": ["crm-db"] },
                    "definition": { "queries": [{ "url": "{{constants.API_URL}}/customers" }] } }),
        )
        .await;
    }
    (admin, ns)
}

/// The stage `version` is in, as stored.
pub async fn stage_of(admin: &Client, ns: &str, version: &str) -> String {
    Api::<AppVersion>::namespaced(admin.clone(), ns)
        .get(version)
        .await
        .unwrap()
        .spec
        .environment
}
