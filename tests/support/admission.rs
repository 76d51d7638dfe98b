//! The admission webhook environment shared by the webhook test binaries: the operator with its
//! webhook, the admission configuration pointing at it, the user roles, and a workspace.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    authorization::v1::SubjectAccessReview,
    core::v1::Namespace,
    rbac::v1::{ClusterRole, Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tooljet_operator::webhook::config::{self, Endpoint};

use super as support;

pub const WAIT: Duration = Duration::from_secs(20);

/// The operator with its webhook, and the admission configuration pointing at it.
pub struct WebhookEnv {
    pub health: String,
    pub webhook_url: String,
}

static ENV: tokio::sync::OnceCell<Arc<WebhookEnv>> = tokio::sync::OnceCell::const_new();

/// Waits until `GET path` on `addr` answers 200.
pub async fn wait_ok(addr: &str, path: &str, timeout: Duration) {
    support::eventually(timeout, &format!("{path} on {addr}"), || async move {
        http_get(addr, path)
            .await
            .filter(|(code, _)| *code == 200)
            .map(|_| ())
    })
    .await;
}

pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

pub async fn env() -> Arc<WebhookEnv> {
    ENV.get_or_init(|| async {
        let client = support::client().await;
        support::install_crds(&client).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": "tooljet-system" } })).unwrap();
        let _ = namespaces.create(&PostParams::default(), &ns).await;

        let webhook_port = support::free_port();
        let health = format!("127.0.0.1:{}", support::free_port());
        let addr = format!("127.0.0.1:{webhook_port}");
        support::shared_operator_with(&[
            "--webhook-addr",
            &addr,
            "--webhook-host",
            "127.0.0.1",
            "--namespace",
            "tooljet-system",
            "--health-addr",
            &health,
            // The Notifications' receiver listens on loopback.
            "--notifications-allow-local-endpoints",
        ]);

        let endpoint = Endpoint::Url(format!("https://{addr}"));
        config::install(&client, &endpoint, "tests").await.unwrap();

        // Ready: caches synced and certificate loaded, and the caBundle is in place.
        wait_ok(&health, "/readyz", Duration::from_secs(60)).await;
        let validating_api = Api::<ValidatingWebhookConfiguration>::all(client.clone());
        let mutating_api = Api::<MutatingWebhookConfiguration>::all(client.clone());
        support::eventually(WAIT, "caBundle set by the operator", || {
            let (v, m) = (validating_api.clone(), mutating_api.clone());
            async move {
                let v = v.get(config::CONFIGURATION_NAME).await.ok()?;
                let m = m.get(config::CONFIGURATION_NAME).await.ok()?;
                let all = v
                    .webhooks?
                    .iter()
                    .all(|w| w.client_config.ca_bundle.is_some())
                    && m.webhooks?
                        .iter()
                        .all(|w| w.client_config.ca_bundle.is_some());
                all.then_some(())
            }
        })
        .await;
        Arc::new(WebhookEnv {
            health,
            webhook_url: format!("https://{addr}"),
        })
    })
    .await
    .clone()
}

pub fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(obj).unwrap();
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    v
}

pub fn ar(kind: &str) -> ApiResource {
    let plural = match kind {
        "AppVersion" => "appversions",
        "ToolJetApp" => "tooljetapps",
        "EnvironmentConfig" => "environmentconfigs",
        "PromotionPolicy" => "promotionpolicies",
        "Approval" => "approvals",
        "Notification" => "notifications",
        other => panic!("{other}"),
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("tooljet.io", "v1alpha1", kind),
        plural,
    )
}

/// A workspace: app crm (default pipeline), configs for every stage, and versions in each stage.
pub struct Workspace {
    pub ns: String,
    pub admin: Client,
    pub alice: Client,
    pub bob: Client,
    pub carol: Client,
    pub operator: Client,
}

impl Workspace {
    pub async fn new(prefix: &str) -> Workspace {
        env().await;
        let admin = support::client().await;
        let ns = support::namespace(&admin, prefix).await;
        let w = Workspace {
            alice: support::client_as("alice", &["developers"]).await,
            bob: support::client_as("bob", &["promoters"]).await,
            carol: support::client_as("carol", &["release-managers"]).await,
            operator: support::client_as(
                "system:serviceaccount:tooljet-system:tooljet-operator",
                &["system:serviceaccounts"],
            )
            .await,
            admin,
            ns,
        };
        for (user, role) in [
            ("alice", "tooljet-developer"),
            ("bob", "tooljet-promoter"),
            ("bob", "tooljet-developer"),
            ("carol", "tooljet-release-manager"),
        ] {
            w.bind(user, role).await;
        }
        w.create(
            &w.admin,
            "ToolJetApp",
            "crm",
            json!({ "environments": ["development", "staging", "production"] }),
        )
        .await
        .unwrap();
        for env in ["development", "staging", "production"] {
            w.create(
                &w.admin,
                "EnvironmentConfig",
                &format!("crm-{env}"),
                json!({ "app": "crm", "environment": env, "constants": [{ "name": "API_URL", "type": "Global", "value": format!("https://{env}") }] }),
            )
            .await
            .unwrap();
        }
        w.await_app("crm").await;
        for (name, target) in [
            ("v-dev", "development"),
            ("v-stg", "staging"),
            ("v-prod", "production"),
        ] {
            w.create(&w.admin, "AppVersion", name, json!({ "app": "crm", "versionName": name, "description": "d", "definition": { "pages": [] } }))
                .await
                .unwrap();
            for stage in ["staging", "production"] {
                if target == "development" || (target == "staging" && stage == "production") {
                    break;
                }
                w.promote(&w.admin, name, stage).await.unwrap();
            }
        }
        w
    }

    /// Waits until the webhook's cache holds ToolJetApp `app`: a version of it is admitted (dry run).
    pub async fn await_app(&self, app: &str) {
        let probe = self.clone_admin();
        let ns = self.ns.clone();
        support::eventually(WAIT, &format!("the webhook sees app {app}"), || {
            let (probe, ns) = (probe.clone(), ns.clone());
            async move {
                let api: Api<DynamicObject> = Api::namespaced_with(probe, &ns, &ar("AppVersion"));
                let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": "AppVersion", "metadata": { "name": "probe" },
                                   "spec": { "app": app, "versionName": "probe" } });
                let dry = PostParams { dry_run: true, ..Default::default() };
                api.create(&dry, &serde_json::from_value(body).unwrap()).await.ok().map(|_| ())
            }
        })
        .await;
    }

    /// Binds `user` to the ClusterRole `role` in the workspace, and waits until the apiserver's
    /// authorizer grants what the role's first rule allows (its RBAC cache lags a new binding,
    /// so a request made at once could be refused by RBAC rather than by the rule under test).
    pub async fn bind(&self, user: &str, role: &str) {
        self.bind_to(user, "ClusterRole", role, &format!("{user}-{role}"))
            .await;
        let role = Api::<ClusterRole>::all(self.admin.clone())
            .get(role)
            .await
            .unwrap();
        let Some(rule) = role.rules.unwrap_or_default().into_iter().next() else {
            return;
        };
        let first = |v: &Option<Vec<String>>| v.as_ref().and_then(|v| v.first().cloned());
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": { "user": user, "resourceAttributes": {
                "namespace": self.ns, "group": first(&rule.api_groups).unwrap_or_default(),
                "resource": first(&rule.resources).unwrap_or_default(),
                "verb": rule.verbs.first().cloned().unwrap_or_default(),
                "name": first(&rule.resource_names).unwrap_or_default() } },
        }))
        .unwrap();
        let reviews: Api<SubjectAccessReview> = Api::all(self.admin.clone());
        support::eventually(
            WAIT,
            &format!(
                "{user}'s binding to {}",
                role.metadata.name.as_deref().unwrap_or_default()
            ),
            || {
                let (reviews, review) = (reviews.clone(), review.clone());
                async move {
                    let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
                    answer.status.filter(|s| s.allowed).map(|_| ())
                }
            },
        )
        .await;
    }

    /// Grants `user` a namespaced Role `name` with `rules`.
    pub async fn grant(&self, user: &str, name: &str, rules: Value) {
        let role: Role =
            serde_json::from_value(json!({ "metadata": { "name": name }, "rules": rules }))
                .unwrap();
        Api::<Role>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        self.bind_to(user, "Role", name, name).await;
    }

    async fn bind_to(&self, user: &str, kind: &str, role: &str, binding: &str) {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": { "name": binding },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role },
            "subjects": [{ "kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io" }],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(self.admin.clone(), &self.ns)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }

    pub fn clone_admin(&self) -> Client {
        self.admin.clone()
    }

    pub fn api(&self, client: &Client, kind: &str) -> Api<DynamicObject> {
        Api::namespaced_with(client.clone(), &self.ns, &ar(kind))
    }

    pub async fn create(
        &self,
        client: &Client,
        kind: &str,
        name: &str,
        spec: Value,
    ) -> Result<DynamicObject, String> {
        let body = json!({ "apiVersion": "tooljet.io/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
        self.api(client, kind)
            .create(
                &PostParams::default(),
                &serde_json::from_value(body).unwrap(),
            )
            .await
            .map_err(msg)
    }

    pub async fn merge(
        &self,
        client: &Client,
        kind: &str,
        name: &str,
        patch: Value,
    ) -> Result<DynamicObject, String> {
        self.api(client, kind)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(msg)
    }

    pub async fn promote(
        &self,
        client: &Client,
        name: &str,
        to: &str,
    ) -> Result<DynamicObject, String> {
        self.merge(
            client,
            "AppVersion",
            name,
            json!({ "spec": { "environment": to } }),
        )
        .await
    }

    pub async fn get(&self, kind: &str, name: &str) -> Option<DynamicObject> {
        self.api(&self.admin, kind).get_opt(name).await.unwrap()
    }
}

/// A merge patch that gives an object an owner the garbage collector finds gone (no such
/// ConfigMap).
pub fn gone_owner() -> Value {
    json!({ "metadata": { "ownerReferences": [{ "apiVersion": "v1", "kind": "ConfigMap", "name": "gone",
                                               "uid": "00000000-0000-0000-0000-000000000001" }] } })
}

pub fn msg(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => other.to_string(),
    }
}

pub fn denied(result: Result<DynamicObject, String>, expect: &str) {
    match result {
        Ok(obj) => panic!(
            "allowed, expected a denial mentioning {expect:?}: {}",
            obj.name_any()
        ),
        Err(m) => assert!(m.contains(expect), "denial {m:?} lacks {expect:?}"),
    }
}
